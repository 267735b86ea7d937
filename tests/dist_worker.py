"""One rank of the data-parallel checks in test_distributed.py (run by it, one process per rank).

    python tests/dist_worker.py --out result.json                                             # 1 rank
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_worker.py --out result.json

Trains the smoke-width ResNet-50 (LARS, poly schedule, label smoothing) for a few steps on fixed synthetic
images through the same pieces the train loops use (`distributed.init`, `train_sampler`,
`batch_norm_groups`, `DataParallel`) at a global batch of 8 and records the global mean loss of every
step: with batch-norm statistics over all ranks, over each rank's batch alone, over all ranks with 2
accumulation steps of 4, and over all ranks with gradients all-reduced after the backward pass instead of
during it. Then runs both benchmarks' eval on an eval set whose size the world size does
not divide. Rank 0 writes the results as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from mlperf_submission.closed.bert import steps as bert_steps
from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.closed.resnet import steps as resnet_steps
from mlperf_submission.closed.resnet.model import ResNet50
from mlperf_submission.closed.resnet.optim import LARS, param_groups, poly_schedule
from mlperf_submission.common.data.loader import loader
from mlperf_submission.common.data.synthetic import synthetic_images
from mlperf_submission.common.runtime import distributed

GLOBAL_BATCH = 8
STEPS = 5
GLOBAL_SAMPLES = 24  # 3 steps an epoch: steps 4 and 5 come from the second epoch's permutation
EVAL_SAMPLES = 11  # not divisible by 2 ranks


def loss_curve(dist: distributed.Dist, local_batch: int, bn_span: int, accumulation: int,
               reduce_in_backward: bool = True) -> list[float]:
    torch.manual_seed(0)  # the same initial weights everywhere; replicate() broadcasts rank 0's anyway
    images, labels = synthetic_images(GLOBAL_SAMPLES, num_classes=10, image_size=32, seed=0, split="train")
    data = torch.utils.data.TensorDataset(images, labels)
    sampler = distributed.train_sampler(data, dist, seed=5)
    batches = loader(data, local_batch, shuffle=False, workers=0, seed=5, drop_last=False, sampler=sampler)
    model = ResNet50(num_classes=10, width=8)
    model = dist.batch_norm_groups(model, distributed.bn_group_replicas(bn_span, local_batch, dist.world_size))
    optimizer = LARS(param_groups(model, 5e-5), lr=0.0, momentum=0.9)
    replica = dist.replicate(model, optimizer, accumulation_steps=accumulation,
                             reduce_in_backward=reduce_in_backward)
    model, optimizer = replica.module, replica.optimizer
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    curve, micro = [], 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y in batches:
            micro += 1
            with replica.micro_step(reduce=micro % accumulation == 0):
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
                (loss / accumulation).backward()
            if micro % accumulation:
                continue
            for group in optimizer.param_groups:
                group["lr"] = poly_schedule(len(curve), base_lr=2.0, end_lr=1e-4, warmup_steps=2, decay_steps=4,
                                            power=2.0)
            replica.reduce_gradients()
            replica.step(scaler)
            optimizer.zero_grad()
            curve.append(dist.all_reduce_sum(loss.detach().clone()).item() / dist.world_size)
            if len(curve) == STEPS:
                return curve
    raise AssertionError(f"only {len(curve)} steps")


def bn_group_error(dist: distributed.Dist, replicas: int = 2) -> float:
    """Batch norm over groups of `replicas` ranks: each rank's output, input gradient and running statistics
    against plain batch norm over its group's concatenated batches (any rank can make any rank's batch)."""

    def batch(r: int) -> torch.Tensor:
        return torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(r)) * (r + 1) + r

    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(4)
    torch.nn.init.uniform_(ref.weight)
    torch.nn.init.normal_(ref.bias)
    mine = dist.batch_norm_groups(torch.nn.Sequential(copy.deepcopy(ref)), replicas)
    x = batch(dist.rank).requires_grad_()
    y = mine(x)
    (y * batch(100 + dist.rank)).sum().backward()  # every rank's loss depends on the whole group's batch
    first = dist.rank - dist.rank % replicas
    xs = [batch(r).requires_grad_() for r in range(first, first + replicas)]
    y_ref = ref(torch.cat(xs))
    (y_ref * torch.cat([batch(100 + r) for r in range(first, first + replicas)])).sum().backward()
    own = dist.rank - first
    errors = [y - y_ref[3 * own:3 * own + 3], x.grad - xs[own].grad, mine[0].running_var - ref.running_var]
    return dist.all_reduce_sum(torch.stack([e.abs().max() for e in errors]).max()).item()


class Constant(torch.nn.Module):
    """Predicts class 0 for every image: top-1 is the share of label-0 samples."""

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()


def eval_checks(dist: distributed.Dist) -> dict:
    ids = torch.arange(EVAL_SAMPLES)
    shard = distributed.eval_shard(ids, dist)
    seen = dist.all_reduce_sum(torch.bincount(torch.tensor([int(i) for i in shard]), minlength=EVAL_SAMPLES))
    # ResNet's eval: label 0 for sample 0 only, so 1/11 only if each sample counts once.
    labels = (ids != 0).long()
    val = distributed.eval_shard(torch.utils.data.TensorDataset(torch.zeros(EVAL_SAMPLES, 3, 4, 4), labels), dist)
    cfg = resnet_presets.smoke()
    resnet_top1 = resnet_steps.evaluate(Constant(), loader(val, 4, shuffle=False, workers=0, seed=0, drop_last=False),
                                        cfg, dist.device, dist)

    # BERT's eval with a forward that scores sample 0 alone as correct, each sample one masked position.
    def forward(model, batch, cfg, device):
        return torch.zeros(()), (batch == 0).sum(), torch.tensor(len(batch))

    with mock.patch.object(bert_steps, "forward", forward):
        bert_accuracy = bert_steps.evaluate(torch.nn.Identity(), loader(shard, 4, shuffle=False, workers=0, seed=0,
                                                                        drop_last=False), None, dist.device, dist)
    return {"seen": seen.tolist(), "resnet_top1": resnet_top1, "bert_accuracy": bert_accuracy}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="torch")
    p.add_argument("--bn-groups", action="store_true", help="only the batch-norm group check (4 ranks)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    # float64: the curves then differ only by the order of sums (about 1e-14 at the first step). In float32
    # that rounding alone moves this tiny-batch run's curve by up to 0.1 within 3 steps (batch norm over 8
    # values at ResNet-50's 1x1 last stage, LARS at lr 2), which would hide the errors this is meant to catch.
    torch.set_default_dtype(torch.float64)
    dist = distributed.init("cpu", backend=args.backend, timeout_s=60)
    local = GLOBAL_BATCH // dist.world_size
    if args.bn_groups:
        error = bn_group_error(dist)
        if dist.is_main:
            args.out.write_text(json.dumps({"world_size": dist.world_size, "bn_group_error": error}))
        distributed.shutdown()  # leaving with live gloo groups can abort at exit
        return
    launcher = "horovodrun" if dist.backend == "horovod" else distributed.launch_from_env(os.environ).source
    result = {"world_size": dist.world_size, "launcher": launcher,
              "global_bn": loss_curve(dist, local, GLOBAL_BATCH, 1),
              "local_bn": loss_curve(dist, local, 0, 1),
              "accumulated": loss_curve(dist, local // 2, GLOBAL_BATCH // 2, 2),
              "explicit_reduce": loss_curve(dist, local, GLOBAL_BATCH, 1, reduce_in_backward=False),
              **eval_checks(dist)}
    if dist.is_main:
        args.out.write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main()
