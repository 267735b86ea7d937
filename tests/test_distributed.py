"""Data parallelism (common/runtime/distributed.py) on CPU: launch environments, batch-norm groups, and
2-process jobs (gloo, one thread each) launched by torchrun, by SLURM's variables and by hand.

The slow tests here take about 60 s together on an idle 2-core CPU; the Horovod ones are skipped where
Horovod is not installed (`make horovod`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import eval_accuracies, free_port, log_events, run_module
from torch import nn

from mlperf_submission.closed.resnet.train import main as resnet_main
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.runtime import distributed
from mlperf_submission.common.runtime.distributed import CrossReplicaBatchNorm, Launch, launch_from_env
from mlperf_submission.compliance.tools import check_log

TESTS = Path(__file__).resolve().parent
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two processes on two cores
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NUM_TASKS")
needs_horovod = pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                                   reason="Horovod is not installed (optional: `make horovod` builds it)")
# Loss curves of 2 ranks x batch 4 and of 1 rank x batch 8, in float64: they differ only by the order of
# sums, about 1e-14 at the first step, grown to at most ~5e-7 by the fifth through this tiny-batch run's
# sensitivity (tests/dist_worker.py). Any real mismatch (a shard or a batch-norm group wrong, gradients
# summed instead of averaged, an accumulation step reduced early) moves the loss by 1e-2 or more.
CURVE_TOLERANCE = 1e-5


def clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | ONE_THREAD | extra


def assert_logged_once(log: Path) -> None:
    """Rank 0 alone wrote the log: every key that a run logs once appears once, each eval once."""
    evs = log_events(log)
    repeated = {"weights_initialization", "block_start", "block_stop", "eval_start", "eval_stop", "eval_accuracy"}
    counts = Counter(e["key"] for e in evs if e["key"] not in repeated)
    assert all(n == 1 for n in counts.values()), counts
    evals = [point for point, _ in eval_accuracies(log)]
    assert len(evals) == len(set(evals)) > 0


def test_launch_from_env_reads_torchrun_then_an_srun_step():
    assert launch_from_env({}) == Launch()
    torchrun = launch_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n0",
                                "MASTER_PORT": "29500", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "0"})
    assert torchrun == Launch(rank=3, world_size=8, local_rank=1, init_method="env://", source="torchrun")
    slurm = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
             "SLURM_STEP_NODELIST": "gpu07", "SLURM_JOB_ID": "123456"}
    assert launch_from_env(slurm) == Launch(rank=9, world_size=16, local_rank=1,
                                            init_method="tcp://gpu07:23456", source="SLURM")
    given = slurm | {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "4000", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    assert launch_from_env(given).init_method == "tcp://10.0.0.1:4000"
    # A batch script's own process is not an srun step: one process, whatever the allocation.
    assert launch_from_env({"SLURM_NTASKS": "16", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}) == Launch()
    if shutil.which("scontrol") is None:
        with pytest.raises(UserError, match="MASTER_ADDR"):
            launch_from_env(slurm | {"SLURM_STEP_NODELIST": "gpu[07-08]"})


def test_backend_choice_errors_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="choose one of torch, horovod"):
        distributed.init("cpu", backend="mpi")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "horovod.torch", None)  # as if not installed
        with pytest.raises(UserError, match="make horovod"):
            distributed.init("cpu", backend="horovod")
    if importlib.util.find_spec("horovod") is not None:
        with pytest.raises(UserError, match="launch with horovodrun"):
            distributed.init("cpu", backend="horovod", env={})
    # From the command line: exit status 2 before any log is written.
    log = tmp_path / "r.txt"
    assert resnet_main(["--seed", "1", "--system", "1xH200", "--result-log", str(log),
                        "--set", "distributed_backend=horovod"]) == 2
    assert not list(tmp_path.iterdir())


def test_horovod_source_is_patched_to_cxx17_in_three_places_or_left_alone(tmp_path):
    from mlperf_submission.common.runtime.horovod_build import CXX17_PATCHES, patch_cxx17

    texts = {"CMakeLists.txt": "cmake_minimum_required(VERSION 3.13)\nset(CMAKE_CXX_STANDARD 14)\n",
             "horovod/torch/CMakeLists.txt": "if(NOT Pytorch_VERSION VERSION_LESS \"1.5.0\")\n"
                                             "    set(CMAKE_CXX_STANDARD 14)\nendif()\n",
             "third_party/gloo/CMakeLists.txt": 'set(CMAKE_CXX_FLAGS "${CMAKE_CXX_FLAGS} -std=c++11 -fPIC")\n'}
    for name, text in texts.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path, broken, ignore=shutil.ignore_patterns("broken"))
    (broken / "horovod/torch/CMakeLists.txt").write_text("set(CMAKE_CXX_STANDARD 17)\n")  # already changed
    with pytest.raises(UserError, match="exactly once"):
        patch_cxx17(broken)
    assert (broken / "CMakeLists.txt").read_text() == texts["CMakeLists.txt"]  # refused untouched
    patch_cxx17(tmp_path)
    for name, old, new in CXX17_PATCHES:
        assert (tmp_path / name).read_text() == texts[name].replace(old, new) != texts[name]


@pytest.mark.parametrize("span,local,world,replicas", [(0, 64, 1, 1), (64, 64, 2, 1), (128, 64, 2, 2),
                                                       (40, 20, 16, 2), (320, 20, 16, 16)])
def test_bn_span_is_whole_replicas(span, local, world, replicas):
    assert distributed.bn_group_replicas(span, local, world) == replicas


@pytest.mark.parametrize("span,local,world", [(32, 64, 2), (96, 64, 2), (60, 20, 16), (40, 320, 1)])
def test_bn_span_that_splits_a_replica_or_the_ranks_is_refused(span, local, world):
    with pytest.raises(UserError, match="model_bn_span"):
        distributed.bn_group_replicas(span, local, world)


def test_cross_replica_batch_norm_of_one_replica_is_batch_norm():
    """Group of one (the sum is the identity): forward, gradients, running statistics and eval as BatchNorm2d;
    the converted model keeps the very parameters, so an optimizer built before still holds them."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double()
    nn.init.uniform_(ref[1].weight)
    nn.init.normal_(ref[1].bias)
    model = copy.deepcopy(ref)
    weight = model[1].weight
    model = CrossReplicaBatchNorm.convert(model, lambda t: t)
    assert isinstance(model[1], CrossReplicaBatchNorm) and model[1].weight is weight
    for _ in range(3):
        x = torch.randn(5, 3, 6, 6, dtype=torch.float64, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        y, y2 = ref(x), model(x2)
        torch.testing.assert_close(y2, y)
        (y * y.roll(1, 0)).sum().backward()
        (y2 * y2.roll(1, 0)).sum().backward()
        torch.testing.assert_close(x2.grad, x.grad)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    for a, b in zip(model.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(model.eval()(x), ref.eval()(x))


def compare_curves(one: dict, two: dict) -> None:
    assert two["world_size"] == 2 and one["world_size"] == 1
    for name in ("global_bn", "accumulated", "explicit_reduce"):
        assert len(two[name]) == 5
        assert max(abs(a - b) for a, b in zip(one[name], two[name], strict=True)) < CURVE_TOLERANCE, name
    # Batch norm over each rank's 4 samples instead of all 8 must show (the test can see a wrong group).
    assert max(abs(a - b) for a, b in zip(one["global_bn"], two["local_bn"], strict=True)) > 100 * CURVE_TOLERANCE
    # Every eval sample once: 11 samples over 2 ranks, each benchmark's evaluate finds sample 0 of 11.
    assert two["seen"] == [1] * 11
    assert two["resnet_top1"] == two["bert_accuracy"] == 1 / 11


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one") / "result.json"
    proc = subprocess.run([sys.executable, str(TESTS / "dist_worker.py"), "--out", str(out)], env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_ranks_from_slurm_variables_train_like_one_rank_with_twice_the_batch(one_rank, tmp_path):
    """The 2 ranks meet through an srun step's variables (no torchrun), at the first node of the step."""
    out, port = tmp_path / "result.json", str(free_port())
    procs = [subprocess.Popen([sys.executable, str(TESTS / "dist_worker.py"), "--out", str(out)],
                              env=clean_env(SLURM_STEP_NUM_TASKS="2", SLURM_PROCID=str(r), SLURM_LOCALID=str(r),
                                            SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID="1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    two = json.loads(out.read_text())
    assert two["launcher"] == "SLURM"
    compare_curves(one_rank, two)


@pytest.mark.slow
@needs_horovod
def test_horovod_ranks_train_like_one_rank_with_twice_the_batch(one_rank, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([shutil.which("horovodrun", path=str(Path(sys.executable).parent)), "-np", "2",
                           "-H", "localhost:2", "--gloo", sys.executable, str(TESTS / "dist_worker.py"),
                           "--backend", "horovod", "--out", str(out)],
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    two = json.loads(out.read_text())
    assert two["launcher"] == "horovodrun"
    compare_curves(one_rank, two)


def bn_groups_of_two_of_four(launcher: list[str], tmp_path: Path, backend: str) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run([*launcher, str(TESTS / "dist_worker.py"), "--bn-groups", "--backend", backend,
                           "--out", str(out)],
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_batch_norm_over_process_subgroups_is_batch_norm_over_their_batches(tmp_path):
    """4 ranks, groups {0, 1} and {2, 3}: outputs, input gradients and running statistics as plain batch norm
    over the group's concatenated batches (float64, so to rounding)."""
    result = bn_groups_of_two_of_four([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node=4"], tmp_path, "torch")
    assert result["world_size"] == 4 and result["bn_group_error"] < 1e-10


@pytest.mark.slow
@needs_horovod
def test_horovod_batch_norm_over_process_sets(tmp_path):
    horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent))
    result = bn_groups_of_two_of_four([horovodrun, "-np", "4", "-H", "localhost:4", "--gloo", sys.executable],
                                      tmp_path, "horovod")
    assert result["world_size"] == 4 and result["bn_group_error"] < 1e-10


def two_rank_smoke_run(bench: str, seed: int, log, *overrides: str) -> subprocess.CompletedProcess:
    """A closed smoke run as a 2-process torchrun job; asserts that it exits 0."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = run_module("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                      f"mlperf_submission.closed.{bench}.train", "--preset", "smoke", "--seed", seed, "--system",
                      "1xH200", "--result-log", log, *sets, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_resnet_smoke_run_logs_once_and_passes(tmp_path):
    """torchrun, batch norm over both ranks' 64 images (model_bn_span 128): one log, from rank 0."""
    log = tmp_path / "result_0.txt"
    proc = two_rank_smoke_run("resnet", 14, log, "model_bn_span=128")  # a seed at the target by the first eval
    assert "2 rank(s)" in proc.stdout and "model_bn_span" in proc.stdout
    verdict = check_log(log)
    assert verdict.passed and not verdict.warnings, verdict.errors + verdict.warnings
    assert_logged_once(log)
    keys = [e["key"] for e in log_events(log)]
    assert keys.count("weights_initialization") == 161
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_two_process_bert_smoke_run_clipping_before_the_all_reduce_passes(tmp_path):
    """torchrun, gradients clipped per rank and then averaged (the explicit all-reduce), to the target."""
    log = tmp_path / "result_0.txt"
    proc = two_rank_smoke_run("bert", 4, log, "clip_before_allreduce=true")
    assert "2 rank(s)" in proc.stdout and "local batch 16" in proc.stdout and "run_stop: success" in proc.stdout
    verdict = check_log(log)
    assert verdict.passed and not verdict.warnings, verdict.errors + verdict.warnings
    assert_logged_once(log)
    evals = [samples for samples, _ in eval_accuracies(log)]
    assert evals == [1600 * (i + 1) for i in range(len(evals))]
    assert sum(e["key"] == "weights_initialization" for e in log_events(log)) == 398


@pytest.mark.slow
def test_killing_one_rank_ends_the_other_with_aborted_logged(tmp_path):
    """Two ranks started as torchrun would (its variables, by hand, so that no agent restarts or kills
    anything); rank 1 is killed once the clock runs; rank 0 ends within the collective timeout, run_stop
    `aborted` in a complete log."""
    log, port, timeout_s = tmp_path / "result_0.txt", str(free_port()), 20
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mlperf_submission.closed.resnet.train", "--preset", "smoke", "--seed", "3",
         "--system", "1xH200", "--result-log", str(log), "--set", f"distributed_timeout_s={timeout_s}"],
        env=clean_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(2)]
    partial = log.with_name(log.name + ".partial")
    deadline = time.time() + 240
    while not (partial.is_file() and "run_start" in partial.read_text()):
        assert time.time() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = procs[0].communicate(timeout=timeout_s + 30)
    procs[1].wait()
    assert time.time() - killed < timeout_s + 10
    assert procs[0].returncode != 0 and "remote worker" in err  # gloo's word for a lost peer
    stop = [e for e in log_events(log) if e["key"] == "run_stop"]
    assert [e["metadata"]["status"] for e in stop] == ["aborted"]


@pytest.mark.slow
@needs_horovod
def test_horovodrun_resnet_smoke_run_passes(tmp_path):
    log = tmp_path / "result_0.txt"
    proc = subprocess.run(
        [shutil.which("horovodrun", path=str(Path(sys.executable).parent)), "-np", "2", "-H", "localhost:2",
         "--gloo", sys.executable, "-m", "mlperf_submission.closed.resnet.train", "--preset", "smoke", "--seed", "2",
         "--system", "1xH200", "--result-log", str(log), "--set", "distributed_backend=horovod"],
        capture_output=True, text=True, env=clean_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 rank(s)" in proc.stdout and "run_stop: success" in proc.stdout
    verdict = check_log(log)
    assert verdict.passed and not verdict.warnings, verdict.errors + verdict.warnings
    assert_logged_once(log)
