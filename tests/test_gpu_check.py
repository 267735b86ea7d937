"""`make gpu-check` (bench/gpu_check.py) without a GPU: one line, exit 0, nothing written; and its parts'
bookkeeping and summary with fake parts (the real ones need CUDA)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from mlperf_submission.bench import gpu_check


def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no GPU" in out
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build on a machine without a device
    assert "sees no CUDA device" in gpu_check.no_gpu_line()


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
    return [("environment", lambda limit: env),
            ("resnet smoke, eager", lambda limit: {"timed_s": 12.5, "status": "success", "checker_passed": True}),
            ("bench, GPU rows", lambda limit: bench),
            ("bert smoke, torch.compile", lambda limit: (_ for _ in ()).throw(RuntimeError("exit 1: no triton")))]


def test_the_summary_is_written_once_all_parts_ran(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "no_gpu_line", lambda: None)
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


def test_a_crash_while_writing_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "no_gpu_line", lambda: None)
    monkeypatch.setattr(gpu_check, "plan", fake_parts)

    def broken_write(folder, report):
        (folder / "gpu_check.json").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(gpu_check, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        gpu_check.main(["--out", str(tmp_path / "check")])
    assert list(tmp_path.iterdir()) == []


def test_the_timed_region_is_read_from_the_log(tmp_path):
    log = tmp_path / "r.txt"
    log.write_text(':::MLLOG {"key": "run_start", "time_ms": 1000, "metadata": {}}\n'
                   ':::MLLOG {"key": "run_stop", "time_ms": 13500, "metadata": {"status": "success"}}\n')
    assert gpu_check.log_times(log) == {"timed_s": 12.5, "status": "success"}
