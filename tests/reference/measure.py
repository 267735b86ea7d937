"""Print every ResNet agreement figure against the reference outputs that tests/test_resnet_reference.py checks.

    .venv/bin/python tests/reference/measure.py

The figures go in COMPLIANCE.md; the functions are the tests' own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import test_resnet_reference as t  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    for case in t.LARS_META:
        print(f"LARS {case}: schedule max rel err {t.schedule_error(case):.1e}; tensors max rel err "
              f"{t.lars_trajectory_error(case, True):.1e} (foreach), {t.lars_trajectory_error(case, False):.1e} (loop)")
    for size in sorted(t.CROPS.files):
        print(f"crop {size}: KS " + ", ".join(f"{k} {v:.4f}" for k, v in t.crop_ks(size).items()))
    for name in t.EVAL_IMAGES:
        e = t.eval_error(name)
        print(f"eval {name}: {e.mean():.4f} grey levels mean abs, max {e.max():.4f}")
    per = []
    for name in t.EVAL_IMAGES:
        d = t.reduced_decode_change(name, 100)
        per.append(np.mean(d))
        reduced = sum(x > 0 for x in d)
        print(f"reduced decode {name}: {per[-1]:.3f} grey levels mean abs over 100 crops ({reduced} reduced)")
    print(f"reduced decode, all images: {np.mean(per):.3f}")
