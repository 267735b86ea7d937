"""`make gpu-check` (bench/gpu_check.py) without a GPU: one line, exit 0, nothing written (exit 1 where nvidia-smi
lists a GPU that torch cannot use); its parts' bookkeeping, process groups and summary with fake parts (the real
ones need CUDA)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlperf_submission.bench import gpu_check


def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "visible_gpus", lambda: [])
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no GPU" in out
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build on a machine without a device
    assert "sees no CUDA device" in gpu_check.no_gpu()[0]


def test_a_gpu_that_torch_cannot_use_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only torch ...
    monkeypatch.setattr(gpu_check, "visible_gpus", lambda: ["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"])
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 1  # ... on a machine with a GPU
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "error: nvidia-smi lists 1 GPU(s) (GPU 0: NVIDIA H100" in out
    assert "built without CUDA" in out and list(tmp_path.iterdir()) == []


def test_each_part_is_passed_failed_timed_out_or_skipped_within_the_budget():
    def slow(limit):
        raise subprocess.TimeoutExpired("x", limit)

    def broken(limit):
        raise RuntimeError("exit 1: boom\nsecond line")

    limits = []
    assert gpu_check.run_part("a", lambda limit: limits.append(limit) or {"x": 1}, 90, 30)["status"] == "passed"
    assert limits == [30]  # never more than what is left of the budget
    timed = gpu_check.run_part("b", slow, 90, 500)
    assert timed["status"] == "timed out" and "90" in timed["detail"]
    failed = gpu_check.run_part("c", broken, 90, 500)
    assert failed["status"] == "failed" and failed["detail"] == "RuntimeError: exit 1: boom"
    assert gpu_check.run_part("d", broken, 90, 5)["status"] == "skipped"


def fake_parts(folder):
    env = {"gpu": "NVIDIA H200", "driver": "570.1", "torch_cuda": "12.8", "matmul_tflops": {"float32": 50.0,
                                                                                          "bfloat16": 700.0}}
    bench = {"peak_tflops": {"bf16": 700.0}, "ratios": [{"ratio": "ours / peer best", "group": "ResNet-50, 224 px",
                                                         "value": 1.4}],
             "rows": [{"group": "ResNet-50, 224 px", "name": "ours", "settings": "bf16, channels_last",
                       "samples_per_s": 3000.0, "step_s": 0.136, "peak_memory_mib": 20000.0, "mfu": 0.41}]}
    return [("environment", 60, lambda limit: env),
            ("resnet smoke, eager", 90, lambda limit: {"timed_s": 12.5, "status": "success", "checker_passed": True}),
            ("bench, GPU rows", 240, lambda limit: bench),
            ("bert smoke, torch.compile", 180,
             lambda limit: (_ for _ in ()).throw(RuntimeError("exit 1: no triton")))]


def test_the_summary_is_written_once_all_parts_ran(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "no_gpu", lambda: None)
    monkeypatch.setattr(gpu_check, "plan", fake_parts)
    out = tmp_path / "check"
    assert gpu_check.main(["--out", str(out)]) == 1  # one part failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check"]  # no temporary folder left
    report = json.loads((out / "gpu_check.json").read_text())
    assert [p["status"] for p in report["parts"]] == ["passed", "passed", "passed", "failed"]
    md = (out / "gpu_check.md").read_text()
    assert "| environment | passed |" in md and "gpu NVIDIA H200" in md and "bfloat16 700.0 TFLOP/s" in md
    assert "| ResNet-50, 224 px | ours | bf16, channels_last | 3,000 | 0.136 | 20,000 | 41.0% |" in md
    assert "| bert smoke, torch.compile | failed | 0 | RuntimeError: exit 1: no triton |" in md


HANGS = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(60)
"""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed child that nobody reaped yet is gone)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_part_past_its_limit_is_killed_with_its_children_and_the_others_results_stay(tmp_path, monkeypatch):
    """A part that hangs (and has started a child of its own) is killed as a group at its limit; the part
    after it still runs, and finds the report of the parts before it already written in the final folder."""
    monkeypatch.setattr(gpu_check, "no_gpu", lambda: None)
    out, pids = tmp_path / "check", tmp_path / "pids"
    seen = []

    def hangs(limit):
        return gpu_check.run_group([sys.executable, "-c", HANGS, str(pids)], limit, out / "hangs.out")

    def after(limit):
        seen.append([p["name"] for p in json.loads((out / "gpu_check.json").read_text())["parts"]])
        return {"ok": 1}

    monkeypatch.setattr(gpu_check, "plan", lambda folder: [("first", 5, lambda limit: {"x": 1}), ("hangs", 3, hangs),
                                                           ("after", 5, after)])
    started = time.time()
    assert gpu_check.main(["--out", str(out), "--budget", "40"]) == 1
    assert time.time() - started < 30
    assert seen == [["first", "hangs"]]  # written after every part, into the final folder
    report = json.loads((out / "gpu_check.json").read_text())
    assert [p["status"] for p in report["parts"]] == ["passed", "timed out", "passed"] and report["finished"]
    parent, child = map(int, pids.read_text().split())
    time.sleep(0.2)
    assert not alive(parent) and not alive(child)
    assert "(unfinished" not in (out / "gpu_check.md").read_text()


def test_out_is_replaced_only_when_it_is_a_gpu_check_folder(tmp_path):
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(gpu_check.UserError, match="not a gpu-check folder"):
        gpu_check.fresh_folder(other)
    assert (other / "keep.txt").exists()
    old = tmp_path / "check"
    old.mkdir()
    (old / "gpu_check.json").write_text("{}")
    (old / "bench.out").write_text("old")
    gpu_check.fresh_folder(old)
    assert list(old.iterdir()) == []


def test_run_group_gives_the_last_error_line_and_keeps_the_output(tmp_path):
    with pytest.raises(RuntimeError, match="exit 1: boom"):
        gpu_check.run_group([sys.executable, "-c", "import sys; print('out'); sys.exit('boom')"], 20,
                            tmp_path / "x.out")
    assert (tmp_path / "x.out").read_text() == "out\nboom\n"


def test_the_timed_region_is_read_from_the_log(tmp_path):
    log = tmp_path / "r.txt"
    log.write_text(':::MLLOG {"key": "run_start", "time_ms": 1000, "metadata": {}}\n'
                   ':::MLLOG {"key": "run_stop", "time_ms": 13500, "metadata": {"status": "success"}}\n')
    assert gpu_check.log_times(log) == {"timed_s": 12.5, "status": "success"}


def make_dry_run(*args: str, env: dict) -> str:
    root = Path(gpu_check.__file__).resolve().parents[1]
    return subprocess.run(["make", "-s", "-n", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_takes_variables_from_its_command_line_never_from_the_environment():
    """An OUT or PY in the shell's environment must not steer make (gpu-check replaces its OUT folder)."""
    stray = {"OUT": "/somewhere/else", "PY": "stray-python", "BUDGET": "1", "QUICK": "1"}
    assert make_dry_run("gpu-check", env=stray).split() == [".venv/bin/python", "-m",
                                                             "mlperf_submission.bench.gpu_check"]
    given = make_dry_run("gpu-check", "PY=python3", "BUDGET=450", "OUT=out/gpu", env=stray)
    assert given.split() == ["python3", "-m", "mlperf_submission.bench.gpu_check", "--out", "out/gpu",
                             "--budget", "450"]
    assert "--quick" not in make_dry_run("bench", env=stray)
