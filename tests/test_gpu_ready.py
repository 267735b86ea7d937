"""The CUDA-path fixes of issue 16 that can be shown on a CPU: Horovod's CUDA build switches, each rank's own
dropout stream over identical weights, DDP gradients as bucket views, cuDNN's benchmark flag, the sampler's
permutation made before `run_start`, and the eager warm-up on CUDA (undone, as the compile warm-up is).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port

from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.closed.resnet import steps as resnet_steps
from mlperf_submission.closed.resnet.model import ResNet50
from mlperf_submission.closed.resnet.optim import LARS, param_groups
from mlperf_submission.common import training
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.runtime import distributed
from mlperf_submission.common.runtime.compile import needs_warm_up, undone
from mlperf_submission.common.runtime.horovod_build import gpu_env

TESTS = Path(__file__).resolve().parent


def test_horovod_gets_nccl_operations_where_torch_has_cuda_and_nothing_new_otherwise(tmp_path):
    nvcc = tmp_path / "cuda-12.8" / "bin" / "nvcc"
    assert gpu_env(None, None, {}) == {} and gpu_env(None, str(nvcc), {}) == {}  # CPU torch: gloo, as before
    assert gpu_env("12.8", str(nvcc), {}) == {"HOROVOD_GPU_OPERATIONS": "NCCL",
                                              "HOROVOD_CUDA_HOME": str((tmp_path / "cuda-12.8").resolve())}
    assert gpu_env("12.8", str(nvcc), {"HOROVOD_CUDA_HOME": "/opt/cuda"}) == {"HOROVOD_GPU_OPERATIONS": "NCCL"}
    assert gpu_env("12.8", None, {"HOROVOD_GPU_OPERATIONS": ""}) == {}  # the caller's own choice is kept
    with pytest.raises(UserError, match="no nvcc") as e:
        gpu_env("12.8", None, {})
    assert "\n" not in str(e.value)


def test_horovod_build_env_is_gloo_only_on_this_cpu_torch():
    from mlperf_submission.common.runtime.horovod_build import build_env

    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch")
    env = build_env(1)
    assert env["HOROVOD_WITH_GLOO"] == "1"
    assert env.get("HOROVOD_GPU_OPERATIONS") == os.environ.get("HOROVOD_GPU_OPERATIONS")


def test_rank_seed_keeps_rank_0_and_separates_the_others():
    assert training.rank_seed(5, 0) == 5
    seeds = {training.rank_seed(s, r) for s in range(4) for r in range(8)}
    assert len(seeds) == 32 and max(seeds) < 2**32  # no two (seed, rank) pairs share a stream


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out, port = tmp_path_factory.mktemp("seed"), str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    procs = [subprocess.Popen([sys.executable, str(TESTS / "seed_worker.py"), "--out", str(out)],
                              env=env | {"OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": str(r),
                                         "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return [json.loads((out / f"rank_{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_ranks_draw_their_own_dropout_masks_from_identical_weights(two_ranks):
    zero, one = two_ranks
    assert zero["built"] != one["built"]  # each rank's own seed reaches the initialisation too ...
    assert zero["replicated"] == one["replicated"] == zero["built"]  # ... which replicate() overwrites with rank 0's
    assert zero["mask"] != one["mask"]
    # Rank 0 draws what a single process seeded with the run's seed draws (the golden files depend on it).
    from seed_worker import CONFIG, SEED, checksum

    from mlperf_submission.closed.bert.model import BertForPretraining

    torch.manual_seed(SEED)
    assert checksum(BertForPretraining(CONFIG)) == zero["built"]


@pytest.mark.slow
def test_ddp_gradients_are_views_into_its_buckets(two_ranks):
    """Without gradient_as_bucket_view every parameter's gradient has its own storage (37 here); with it they
    share DDP's few buckets, in the first step and after zero_grad too."""
    for rank in two_ranks:
        assert all(n <= 2 for n in rank["grad_storages"]) and rank["params"] > 30, rank


def test_cudnn_benchmark_is_set_for_cuda_and_left_alone_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    distributed.tune_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    distributed.tune_backends(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.parametrize("size,world", [(10, 1), (10, 3), (7, 4), (3, 5), (64, 8)])
def test_epoch_sampler_orders_as_torchs_distributed_sampler(size, world):
    """torch's order and padding; only the seed of each epoch is (seed, epoch) hashed, not seed + epoch."""
    data = list(range(size))
    for rank in range(world):
        ours = distributed.EpochSampler(size, world, rank, seed=11)
        for epoch in (1, 2, 0, 5):
            theirs = torch.utils.data.DistributedSampler(data, world, rank, shuffle=True,
                                                         seed=distributed.epoch_seed(11, epoch))
            theirs.set_epoch(0)
            ours.set_epoch(epoch)
            assert list(ours) == list(theirs) and len(ours) == len(theirs), (rank, epoch)


def test_no_two_runs_share_an_epoch_order():
    """Seeds 1-5 (what `SEEDS=1,2,3,4,5` asks for) over 8 epochs: 40 different orders. With seed + epoch,
    run s + 1's epoch e was run s's epoch e + 1."""
    orders = set()
    for seed in range(1, 6):
        sampler = distributed.EpochSampler(1000, 1, 0, seed=seed)
        for epoch in range(1, 9):
            sampler.set_epoch(epoch)
            orders.add(tuple(sampler))
    assert len(orders) == 40
    assert distributed.epoch_seed(2, 1) != distributed.epoch_seed(1, 2)


def test_first_epochs_permutation_is_made_at_construction_not_after_run_start(monkeypatch):
    calls = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: calls.append(a) or randperm(*a, **k))
    dist = distributed.Dist()
    sampler = distributed.train_sampler(list(range(1000)), dist, seed=3)
    assert len(calls) == 1 and sampler.permutations_made == 1  # in the untimed init
    # After run_start, both trainers: set_epoch(1), then iterate: no permutation work.
    sampler.set_epoch(1)
    batches = torch.utils.data.DataLoader(list(range(1000)), batch_size=100, sampler=sampler)
    assert sorted(int(i) for b in batches for i in b) == list(range(1000))
    assert len(calls) == 1 and sampler.permutations_made == 1
    sampler.set_epoch(2)  # a later epoch is a new permutation
    assert len(calls) == 2


def test_warm_up_runs_under_compile_and_on_cuda_only():
    assert needs_warm_up("inductor", torch.device("cpu")) and needs_warm_up("aot_eager", torch.device("cpu"))
    assert needs_warm_up("off", torch.device("cuda", 0))
    assert not needs_warm_up("off", torch.device("cpu"))
    with pytest.raises(ValueError, match="torch_compile must be one of off, inductor, aot_eager, not 'eager'"):
        needs_warm_up("eager", torch.device("cpu"))


def test_an_eager_warm_up_is_undone(one_thread):
    """ResNet's warm-up in eager mode (what a CUDA run without torch.compile now does), on the CPU: weights,
    batch-norm statistics, LARS momentum, gradients and the RNG are as before it."""
    cfg = resnet_presets.smoke()
    torch.manual_seed(0)
    model = ResNet50(num_classes=cfg.num_classes, width=cfg.model_width)
    optimizer = LARS(param_groups(model, cfg.opt_weight_decay), lr=0.0, momentum=cfg.opt_momentum)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    replica = distributed.Dist().replicate(model, optimizer)
    # A step first, so that there is momentum for the warm-up to disturb.
    x = torch.randn(4, 3, cfg.image_size, cfg.image_size)
    torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    training.update(replica, optimizer, scaler, 0.1)
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    with undone(model, optimizer, scaler):
        resnet_steps.warm_up(model, replica, optimizer, scaler, cfg, torch.device("cpu"), [4, 3], [2])
        assert any(not torch.equal(v, before[0][k]) for k, v in model.state_dict().items())  # it did change
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[0][k]), k
    for i, state in optimizer.state_dict()["state"].items():
        assert torch.equal(state["momentum_buffer"], before[1]["state"][i]["momentum_buffer"])
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_seeded_log_seeds_rank_0_with_the_run_seed(tmp_path):
    training.seeded_log(argparse.Namespace(seed=9, result_log=tmp_path / "r.txt"), distributed.Dist())
    drawn = torch.rand(3)
    torch.manual_seed(9)
    assert torch.equal(drawn, torch.rand(3))
