"""Closed-division ResNet-50 v1.5: one MLPerf Training v1.1 run in one process (or one torchrun job).

    python -m mlperf_submission.closed.resnet.train --preset smoke --seed 1 --system systems/1xH200.json \
        --result-log out/result_0.txt [--data IMAGENET_DIR] [--set field=value ...]

Writes one MLPerf result log (a new file; never appended to) and prints progress for humans. With the
`smoke` preset it trains on built-in synthetic data: on an idle 2-core CPU (AMD EPYC, torch 2.13, fp32) one
run takes 6-10 s and reaches top-1 0.759 after 4 or 8 epochs at about 4,300 images/s (MEASUREMENTS.md).
The data are data.py's, the step and the eval steps.py's; the evals and blocks follow common/cadence.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import torch

from ...common import training
from ...common.cadence import Cadence
from ...common.cli import entry_point
from ...common.rehearsal import Rehearsal
from ...common.runtime import distributed
from ...common.runtime.compile import batch_sizes, compiled, needs_warm_up, undone
from . import data, presets, steps
from .model import mlperf_tensor_names

DIVISION = "closed"

BatchTransform: TypeAlias = Callable[[torch.Tensor, int], torch.Tensor]  # (images on the device, epoch) -> images
CountCheck: TypeAlias = Callable[[int, int, int], None]  # (train, eval, classes) -> None, or UserError


@dataclass(frozen=True)
class Variant:
    """What a division may change in this run (the open division's open/resnet/train.py; closed: the
    defaults): each training batch on the device (`transform_batch`, e.g. its resolution), each residual block
    started as the identity (`zero_init_residual`, model.py), and the rule the ImageNet counts must meet
    before any log is written (`check_counts`: the closed one; None only where a test trains a tiny folder)."""

    transform_batch: BatchTransform | None = None
    zero_init_residual: bool = False
    check_counts: CountCheck | None = presets.check_counts


def parse_args(argv: list[str] | None, *, prog: str = "python -m mlperf_submission.closed.resnet.train",
               registry=presets.PRESETS, description: str | None = __doc__) -> argparse.Namespace:
    return training.arguments(prog=prog, description=description, registry=registry, raw_description=True,
                              data_help="ImageNet folder (JPEG folders or tfds TFRecords)").parse_args(argv)


def resolve_config(args: argparse.Namespace, registry=presets.PRESETS,
                   validate=presets.validate_closed) -> presets.ResNetConfig:
    return training.resolve(args, registry, validate, real_dataset="imagenet",
                            synthetic_with_data="trains on synthetic data; with DATA, choose an ImageNet preset",
                            real_without_data="needs ImageNet: give DATA=<folder> (see `make data`)",
                            ipu_unsupported=presets.IPU_UNSUPPORTED)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return train(resolve_config(args), training.Invocation.from_args(args), division=DIVISION)


def train(cfg: presets.ResNetConfig, run_args: training.Invocation, *, division: str,
          variant: Variant = Variant()) -> int:
    """One run with a resolved config; the open division calls this with its own config and variant."""
    submission = training.submission(run_args, division=division, benchmark="resnet")
    dist, local_batch = training.ranks(cfg, cfg.global_batch_size)
    bn_replicas = distributed.bn_group_replicas(cfg.model_bn_span, local_batch, dist.world_size)
    cfg = dataclasses.replace(cfg, model_bn_span=local_batch * bn_replicas)  # logged as resolved
    training.announce("resnet", division, run_args, cfg, dist, local_batch)
    manifest = data.checked_manifest(run_args.data) if cfg.dataset == "imagenet" else None
    train_samples, eval_samples, classes = data.sample_counts(cfg, manifest)
    rehearsal = Rehearsal.from_args(run_args, cfg.gradient_accumulation_steps)  # rehearsal: None in a real run
    if manifest is not None and variant.check_counts is not None:
        check = rehearsal.relaxed(variant.check_counts) if rehearsal else variant.check_counts
        check(train_samples, eval_samples, classes)
    with training.begin_run(run_args, dist, submission, hyperparameters=presets.hyperparameters(cfg, train_samples),
                            train_samples=train_samples, eval_samples=eval_samples,
                            synthetic=cfg.dataset == "synthetic") as run:
        model = steps.resnet50(cfg, zero_init_residual=variant.zero_init_residual)
        run.weights_initialization(mlperf_tensor_names(model)[name] for name, _ in model.named_parameters())
        model, optimizer, replica, scaler = steps.build(model, cfg, dist, bn_replicas=bn_replicas)
        train_set, val_set = data.datasets(cfg, run_args.data, manifest)
        if (len(train_set), len(val_set)) != (train_samples, eval_samples):
            raise RuntimeError(f"{len(train_set)} / {len(val_set)} images loaded where {train_samples} / "
                               f"{eval_samples} were counted and logged")
        val_set = rehearsal.eval_slice(val_set) if rehearsal else val_set  # rehearsal: one bounded eval
        train_loader, sampler, val_loader = data.loaders(cfg, train_set, val_set, dist, run_args.seed, local_batch)
        if needs_warm_up(cfg.torch_compile, dist.device):  # compiled, or eager on CUDA (issue 16)
            plain, model = model, compiled(model, cfg.torch_compile)
            with undone(plain, optimizer, scaler):
                steps.warm_up(model, replica, optimizer, scaler, cfg, dist.device,
                              batch_sizes(len(train_loader.sampler), local_batch, drop_last=True),
                              batch_sizes(len(val_loader.dataset), local_batch, drop_last=False))
        loop = Loop(model, replica, optimizer, scaler, sampler, train_loader, val_loader,
                    *presets.schedule_steps(cfg, train_samples))
        evals = presets.eval_epochs(cfg)
        # Epochs from 1; the last eval at or after the schedule's end (or max_epochs) ends the run unconverged.
        cadence = Cadence(run, first=evals[0], every=cfg.eval_every, limit=evals[-1], target=cfg.target_accuracy,
                          origin=1)
        # ---- the timed region: run_start (run.start) to run_stop (run.stop); nothing is compiled inside ----
        run.start()
        cadence.start()
        epoch = timed_loop(loop, cfg, dist, cadence, variant.transform_batch, rehearsal)
        run.stop(cadence.status)
    if rehearsal and dist.is_main:
        rehearsal.write(local_batch, dist.world_size, dist.device)
    if dist.is_main:
        print(f"run_stop: {cadence.status} after {epoch} epochs", flush=True)
    distributed.shutdown()
    return 0


@dataclass
class Loop:
    """What the timed loop runs, all of it built in the untimed init."""

    model: torch.nn.Module
    replica: distributed.DataParallel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: distributed.EpochSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    warmup_steps: int  # of the learning-rate schedule (presets.schedule_steps)
    decay_steps: int


def timed_loop(loop: Loop, cfg: presets.ResNetConfig, dist: distributed.Dist, cadence: Cadence,
               transform_batch: BatchTransform | None, rehearsal: Rehearsal | None = None) -> int:
    """Training from run_start until the cadence ends the run, an epoch at a time: an optimizer step every
    gradient_accumulation_steps micro-batches (`training.step_bounds`; an epoch is whole steps), the cadence
    after each epoch. A rehearsal's loader ends when it stops; one eval then ends the run. -> the epochs
    trained."""
    evaluate = functools.partial(steps.evaluate, loop.model, loop.val_loader, cfg, dist.device, dist)
    step, epoch, lr = 0, 0, 0.0
    while True:
        epoch += 1
        loop.sampler.set_epoch(epoch)
        started, seen, loss_sum = time.time(), 0, torch.zeros((), device=dist.device)
        batches = loop.train_loader
        if rehearsal is not None:  # the micro-steps timed; the loader ends when the rehearsal stops
            batches = rehearsal.timed(batches, dist.device, lambda b: len(b[1]))
        for i, (x, y) in enumerate(batches):
            x, y = steps.to_device(x, y, cfg, dist.device)
            if transform_batch is not None:
                x = transform_batch(x, epoch)
            first, last = training.step_bounds(i, cfg.gradient_accumulation_steps)
            loss_sum += steps.micro_step(loop.model, loop.replica, loop.scaler, x, y, cfg, reduce=last, first=first)
            seen += y.numel()
            if last:
                lr = steps.learning_rate(cfg, step, loop.warmup_steps, loop.decay_steps)
                # An fp16 step skipped on overflow does not advance the schedule.
                step += training.update(loop.replica, loop.optimizer, loop.scaler, lr, zero_grad=False)
        elapsed = time.time() - started
        line = (f"epoch {epoch:3d}: loss {loss_sum.item() / (i + 1):.3f}, lr {lr:.4f}, "
                f"{seen * dist.world_size / elapsed:,.0f} images/s")
        if rehearsal is not None and rehearsal.stopped:
            done = cadence.final(epoch, evaluate)
        else:
            done = cadence.after(epoch, 1, evaluate)
        if cadence.accuracy is not None:
            line += f", top-1 {cadence.accuracy:.4f}"
        if dist.is_main:
            print(line, flush=True)
        if done:
            return epoch


if __name__ == "__main__":
    sys.exit(main())
