"""`make submit DIVISION=open` end to end for both benchmarks, on the open smoke presets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import log_events

from mlperf_submission.compliance.tools import PACKAGE_SUCCESS, check_log


def submit(*args):
    return subprocess.run([sys.executable, "-m", "mlperf_submission.compliance", "submit", "--division", "open", *args],
                          capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("bench, runs, extra", [
    ("resnet", 5, []),
    # Two layers instead of 24 keep ten runs short; the open division may change the model.
    ("bert", 10, ["--set", "num_hidden_layers=2"]),
])
def test_open_demo_submission_end_to_end(tmp_path, bench, runs, extra):
    out = tmp_path / "sub"
    seeds = ",".join(str(s) for s in range(1, runs + 1))
    proc = submit("--bench", bench, "--seeds", seeds, "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith(PACKAGE_SUCCESS)
    tree = out / "open" / "DEMO"
    assert json.loads((tree / "systems" / "demo-local.json").read_text())["division"] == "open"
    logs = sorted((tree / "results" / "demo-local" / bench).glob("result_*.txt"))
    assert len(logs) == runs
    for log in logs:
        assert check_log(log).passed
        lines = log_events(log)
        assert {"key": "submission_division", "value": "open"}.items() <= next(
            e for e in lines if e["key"] == "submission_division").items()
        assert lines[-1]["key"] == "run_stop" and lines[-1]["metadata"]["status"] == "success"
        if bench == "bert":  # sequences, not packs: the synthetic corpus has 32,000 and 512
            values = {e["key"]: e["value"] for e in lines}
            assert (values["train_samples"], values["eval_samples"]) == (32000, 512)
    assert f"| DEMO | open | demo-local | {bench} |" in (out / "score.md").read_text()
    page = (out / "report" / "index.html").read_text()
    assert "Time to result" in page and len(list((out / "report" / "plots").glob("*.png"))) >= 2
    code = tree / "benchmarks" / bench / "implementations" / "pytorch" / "open" / bench / "train.py"
    assert code.exists()
    readme = (tree / "benchmarks" / bench / "implementations" / "pytorch" / "README.md").read_text()
    assert "Open-division changes" in readme
    assert {"bert": "packing", "resnet": "zero_init_residual"}[bench] in readme.lower()
