"""Data-parallel training under torchrun (2 CPU processes, gloo): one log, from rank 0, that passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlperf_submission.compliance.tools import check_log


@pytest.mark.slow
def test_two_process_resnet_smoke_run_logs_once_and_passes(tmp_path):
    log = tmp_path / "result_0.txt"
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # two processes on two cores
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "mlperf_submission.closed.resnet.train", "--preset", "smoke", "--seed", "2", "--system", "1xH200",
         "--result-log", str(log)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stdout
    verdict = check_log(log)
    assert verdict.passed and not verdict.warnings, verdict.errors + verdict.warnings
    keys = [json.loads(ln.split(":::MLLOG ", 1)[1])["key"] for ln in log.read_text().splitlines()]
    assert keys.count("run_start") == 1 and keys.count("weights_initialization") == 161
    assert not list(tmp_path.glob("*.partial"))
