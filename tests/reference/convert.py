"""Copy what the ResNet equivalence tests need from the reference outputs into this folder, compactly.

    python tests/reference/convert.py ../shared/fixtures/reference

The source folder holds outputs of the MLPerf v1.1 TensorFlow reference code (see README.md here);
this keeps the numbers the tests read, exactly, in smaller files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EVAL_ROW_STEP = 4  # eval outputs: every 4th row of each 224 x 224 image (56 rows, 37,632 values per image)


def lars(src: Path) -> None:
    ref = json.loads((src / "lars_reference.json").read_text())
    meta, arrays = {}, {}
    for case, c in ref.items():
        meta[case] = {k: c[k] for k in ("hyperparameters", "decay_steps", "warmup_steps", "effective_epsilon",
                                        "skipped_from_lars")}
        meta[case]["tensors"] = list(c["init"])
        arrays[f"{case}/lr_per_step"] = np.array(c["lr_per_step"], dtype=np.float32)
        for i, name in enumerate(c["init"]):
            arrays[f"{case}/init/{i}"] = np.array(c["init"][name], dtype=np.float32)
            arrays[f"{case}/grads/{i}"] = np.stack([np.array(g[name], dtype=np.float32) for g in c["grads"]])
            arrays[f"{case}/after/{i}"] = np.stack([np.array(a[name], dtype=np.float32) for a in c["after_step"]])
    (HERE / "lars_reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.savez_compressed(HERE / "lars_reference.npz", **arrays)


def crops(src: Path) -> None:
    z = np.load(src / "tf_crop_windows.npz")
    np.savez_compressed(HERE / "tf_crop_windows.npz", **{k: z[k].astype(np.int16) for k in z.files})


def eval_preprocessing(src: Path) -> None:
    z = np.load(src / "tf_eval_preprocessing.npz")
    out = {"channel_means": z["channel_means"], "row_step": np.array(EVAL_ROW_STEP)}
    for k in z.files:
        if k.startswith("jpeg/"):
            out[k] = z[k]
        elif k.startswith("out/"):
            out[k] = z[k][::EVAL_ROW_STEP]
    np.savez_compressed(HERE / "tf_eval_preprocessing.npz", **out)


if __name__ == "__main__":
    source = Path(sys.argv[1])
    lars(source)
    crops(source)
    eval_preprocessing(source)
