"""Closed-division ResNet-50 v1.5: one MLPerf Training v1.1 run in one process (or one torchrun job).

    python -m mlperf_submission.closed.resnet.train --preset smoke --seed 1 --system systems/1xH200.json \
        --result-log out/result_0.txt [--data IMAGENET_DIR] [--set field=value ...]

Writes one MLPerf result log (a new file; never appended to) and prints progress for humans. With the
`smoke` preset it trains on built-in synthetic data: on an idle 2-core CPU (AMD EPYC, torch 2.13, fp32) one
run takes 6-10 s and reaches top-1 0.759 after 4 or 8 epochs at about 4,300 images/s (MEASUREMENTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mlperf_submission.closed.resnet import presets
from mlperf_submission.closed.resnet.model import ResNet50, mlperf_tensor_names
from mlperf_submission.closed.resnet.optim import LARS, param_groups, poly_schedule, reference_epsilon, sgd
from mlperf_submission.common import training
from mlperf_submission.common.cli import UserError, entry_point
from mlperf_submission.common.data.loader import loader
from mlperf_submission.common.data.synthetic import synthetic_images
from mlperf_submission.common.run import Run, dataset_files
from mlperf_submission.common.runtime import distributed
from mlperf_submission.common.runtime.compile import batch_sizes, compiled, needs_warm_up, undone
from mlperf_submission.common.runtime.precision import autocast

DIVISION = "closed"


def parse_args(argv: list[str] | None, *, prog: str = "python -m mlperf_submission.closed.resnet.train",
               registry=presets.PRESETS, description: str | None = __doc__) -> argparse.Namespace:
    return training.arguments(prog=prog, description=description, registry=registry, raw_description=True,
                              data_help="ImageNet folder (JPEG folders or tfds TFRecords)").parse_args(argv)


def resolve_config(args: argparse.Namespace, registry=presets.PRESETS,
                   validate=presets.validate_closed) -> presets.ResNetConfig:
    return training.resolve(args, registry, validate, real_dataset="imagenet",
                            synthetic_with_data="trains on synthetic data; with DATA, choose an ImageNet preset",
                            real_without_data="needs ImageNet: give DATA=<folder> (see `make data`)")


class SyntheticBatches(torch.utils.data.Dataset):
    """The built-in synthetic images, with the reference's random horizontal flip at train time."""

    def __init__(self, cfg: presets.ResNetConfig, split: str):
        n = cfg.synthetic_train_samples if split == "train" else cfg.synthetic_eval_samples
        self.images, self.labels = synthetic_images(n, num_classes=cfg.num_classes, image_size=cfg.image_size,
                                                    seed=cfg.synthetic_seed, split=split)
        self.flip = split == "train"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(2)
        return x, self.labels[i]


def checked_manifest(data: Path) -> dict:
    """The dataset's manifest from `make data`, verified against the folder, before any log is written."""
    from mlperf_submission.common.data import imagenet

    manifest_path = data / imagenet.MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserError(f"{data} has no {imagenet.MANIFEST_NAME}: check and index it first with "
                        f"`make data BENCH=resnet SRC={data}`")
    try:
        return imagenet.verify_manifest(data, manifest_path)
    except imagenet.ImageNetError as e:
        raise UserError(f"{e} (re-run `make data BENCH=resnet SRC={data}`)") from None


def datasets(cfg: presets.ResNetConfig, data: Path | None, manifest: dict | None):
    if cfg.dataset == "synthetic":
        return SyntheticBatches(cfg, "train"), SyntheticBatches(cfg, "val")
    from mlperf_submission.common.data import imagenet

    # Training batches in uint8: a quarter of float32's bytes through the workers' shared memory and to the
    # device, which normalises them (`to_device`); the pixels rounded to integers (COMPLIANCE.md). Eval stays
    # float32, the reference's eval pixels bit-exact: 50,000 images, a small share of the run's copies.
    augment = imagenet.train_transform(cfg.image_size, reduced_decode=cfg.reduced_decode, uint8=True)
    train = imagenet.ImageNet(data, "train", augment, manifest=manifest)
    val = imagenet.ImageNet(data, "val", imagenet.eval_transform(cfg.image_size), manifest=manifest)
    return train, val


def sample_counts(cfg: presets.ResNetConfig, manifest: dict | None) -> tuple[int, int, int]:
    """(train, eval, classes) as counted from the data: by `make data` (the manifest) for ImageNet."""
    if manifest is None:
        return cfg.synthetic_train_samples, cfg.synthetic_eval_samples, cfg.num_classes
    splits = manifest["splits"]
    if "train" not in splits or "val" not in splits:
        raise UserError("the dataset needs both a train and a val split: add the missing one and re-run "
                        "`make data BENCH=resnet SRC=...`")
    return splits["train"]["images"], splits["val"]["images"], splits["train"]["classes"]


def loaders(cfg, train_set, val_set, dist: distributed.Dist, seed: int, local_batch: int):
    # One seeded permutation per epoch over all ranks (one rank too), so R ranks x batch b train what one
    # rank x batch R*b would; whole global batches only (the reference drops the remainder); every eval
    # sample exactly once, counts summed afterwards.
    sampler = distributed.train_sampler(
        train_set, dist, seed, per_rank=presets.epoch_samples(cfg, len(train_set), dist.world_size))
    overlap = dict(prefetch_factor=cfg.prefetch_factor, pin_memory=cfg.pin_memory)
    train = loader(train_set, local_batch, shuffle=False, workers=cfg.data_workers, seed=seed + dist.rank,
                   drop_last=True, sampler=sampler, **overlap)
    val = loader(distributed.eval_shard(val_set, dist), local_batch, shuffle=False, workers=cfg.data_workers,
                 seed=seed, drop_last=False, **overlap)
    return train, sampler, val


def build(cfg: presets.ResNetConfig, dist: distributed.Dist, *, bn_replicas: int = 1,
          zero_init_residual: bool = False, on_model: Callable[[torch.nn.Module], None] | None = None):
    """-> (model, optimizer, replica, scaler) as a run trains them: ResNet-50 on the device in the configured
    memory format, batch-norm groups, LARS (or SGD) at learning rate 0 (the schedule sets it per step), the
    replica wrapper and the fp16 grad scaler. `on_model(model)` sees the freshly initialised model first
    (the run logs its tensor names there). The bench builds its step with this too."""
    model = ResNet50(num_classes=cfg.num_classes, width=cfg.model_width, zero_init_residual=zero_init_residual)
    if on_model is not None:
        on_model(model)
    model = dist.batch_norm_groups(model.to(dist.device, memory_format=memory_format(cfg)), bn_replicas)
    if cfg.opt_name == "lars":
        optimizer = LARS(param_groups(model, cfg.opt_weight_decay), lr=0.0, momentum=cfg.opt_momentum,
                         epsilon=reference_epsilon(cfg.lars_epsilon), foreach=cfg.optimizer_foreach)
    else:
        optimizer = sgd(model, 0.0, cfg.opt_momentum, cfg.opt_weight_decay, foreach=cfg.optimizer_foreach)
    replica = dist.replicate(model, optimizer, accumulation_steps=cfg.gradient_accumulation_steps)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.precision == "fp16")
    return replica.module, replica.optimizer, replica, scaler


def memory_format(cfg: presets.ResNetConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def to_device(x: torch.Tensor, y: torch.Tensor, cfg: presets.ResNetConfig, device: torch.device):
    """A loader's batch -> (images, labels) on the device, as the model takes them: uint8 ImageNet batches
    (N, H, W, 3) copied as bytes and normalised there (`imagenet.normalise`), float batches (synthetic data,
    already normalised) copied as they are; in the configured memory format. Asynchronous from pinned
    memory (the loader pins on CUDA)."""
    from mlperf_submission.common.data import imagenet

    x = imagenet.normalise(x.to(device, non_blocking=True), memory_format(cfg))
    return x, y.to(device, non_blocking=True)


def micro_step(model, replica, scaler, x: torch.Tensor, y: torch.Tensor, cfg: presets.ResNetConfig, *,
               reduce: bool, first: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch on the device (loss scaled by the accumulation steps; the
    gradients reduced over ranks if `reduce`, the step's last micro-batch) -> its loss, detached.

    The step's `first` micro-batch drops the previous step's gradients (set to None) after its forward,
    just before its backward, rather than right after the update: the backward then allocates its gradients
    where the old ones just were, instead of the forward's activations taking that memory first and the
    backward mapping fresh pages. Same values; on the 2-core CPU (glibc malloc, batch 16, bf16) a step took
    0.73 s this way against 0.82 s zeroing after the update, timed in turns (MEASUREMENTS.md); the CUDA
    caching allocator reuses blocks either way. The gradients' memory is held through the forward."""
    with replica.micro_step(reduce=reduce):
        with autocast(cfg.precision, x.device):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
        if first:
            replica.optimizer.zero_grad()
        scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
    return loss.detach()


def train_step(model, replica, optimizer, scaler, x: torch.Tensor, y: torch.Tensor, cfg: presets.ResNetConfig,
               lr: float) -> torch.Tensor:
    """One whole optimizer step on one micro-batch: `micro_step` then the update at `lr`, what the training
    loop does per micro-batch and per step. The warm-up and the bench time this function."""
    loss = micro_step(model, replica, scaler, x, y, cfg, reduce=True, first=True)
    training.update(replica, optimizer, scaler, lr, zero_grad=False)
    return loss


def warm_up(model, replica, optimizer, scaler, cfg, device, train_sizes: list[int], eval_sizes: list[int]) -> None:
    """Untimed, on random images: one training step at learning rate 0 per training batch size and one eval
    forward per eval batch size, so that torch.compile compiles nothing inside the timed region. The caller
    undoes its effects (`compile.undone`)."""
    def images(n):
        return torch.randn(n, 3, cfg.image_size, cfg.image_size, device=device).contiguous(
            memory_format=memory_format(cfg))

    for n in train_sizes:
        train_step(model, replica, optimizer, scaler, images(n), torch.randint(cfg.num_classes, (n,), device=device),
                   cfg, 0.0)
    model.eval()
    with torch.no_grad(), autocast(cfg.precision, device):
        for n in eval_sizes:
            model(images(n))
    model.train()


def evaluate(model, val, cfg, device, dist) -> float:
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # correct, count
    with torch.no_grad(), autocast(cfg.precision, device):
        for x, y in val:
            x, y = to_device(x, y, cfg, device)
            totals[0] += (model(x).argmax(1) == y).sum()
            totals[1] += y.numel()
    dist.all_reduce_sum(totals)
    model.train()
    return (totals[0] / totals[1]).item()


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = resolve_config(args)
    return train(cfg, args, division=DIVISION, check_counts=presets.check_counts)


def train(cfg: presets.ResNetConfig, args: argparse.Namespace, *, division: str,
          train_batch: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
          zero_init_residual: bool = False,
          check_counts: Callable[[int, int, int], None] | None = None) -> int:
    """One run with a resolved config; the open division calls this with its own config, and may change each
    training batch on the device with `train_batch(images, epoch)` (e.g. its resolution) and start each
    residual block as the identity (`zero_init_residual`, see model.py). On ImageNet, `check_counts(train,
    eval, classes)` vets the dataset's counts before any log is written (the closed entry point passes
    `presets.check_counts`; a test of the real-data path on a tiny folder passes None)."""
    submission = training.submission(args, division=division, benchmark="resnet")
    dist, local_batch = training.ranks(cfg, cfg.global_batch_size)
    device = dist.device
    bn_replicas = distributed.bn_group_replicas(cfg.model_bn_span, local_batch, dist.world_size)
    cfg = dataclasses.replace(cfg, model_bn_span=local_batch * bn_replicas)  # logged as resolved
    training.announce("resnet", division, args, cfg, dist, local_batch)
    manifest = checked_manifest(args.data) if cfg.dataset == "imagenet" else None
    train_samples, eval_samples, classes = sample_counts(cfg, manifest)
    if manifest is not None and check_counts is not None:
        check_counts(train_samples, eval_samples, classes)
    log = training.seeded_log(args, dist)
    with Run(log, submission, seed=args.seed, hyperparameters=presets.hyperparameters(cfg, train_samples),
             train_samples=train_samples, eval_samples=eval_samples,
             data_files=dataset_files(args.data) if cfg.dataset != "synthetic" else None) as run:
        model, optimizer, replica, scaler = build(
            cfg, dist, bn_replicas=bn_replicas, zero_init_residual=zero_init_residual,
            on_model=lambda m: run.weights_initialization(mlperf_tensor_names(m)[name]
                                                          for name, _ in m.named_parameters()))
        train_set, val_set = datasets(cfg, args.data, manifest)
        if (len(train_set), len(val_set)) != (train_samples, eval_samples):
            raise RuntimeError(f"{len(train_set)} / {len(val_set)} images loaded where {train_samples} / "
                               f"{eval_samples} were counted and logged")
        train_loader, sampler, val_loader = loaders(cfg, train_set, val_set, dist, args.seed, local_batch)
        warmup_steps, decay_steps = presets.schedule_steps(cfg, train_samples)
        evals = presets.eval_epochs(cfg)
        if needs_warm_up(cfg.torch_compile, device):  # compiled, or eager on CUDA (issue 16)
            plain, model = model, compiled(model, cfg.torch_compile)
            with undone(plain, optimizer, scaler):
                warm_up(model, replica, optimizer, scaler, cfg, device,
                        batch_sizes(len(train_loader.sampler), local_batch, drop_last=True),
                        batch_sizes(len(val_loader.dataset), local_batch, drop_last=False))

        run.start()
        step, block_first, status = 0, 1, "aborted"
        run.block_start(first_epoch_num=1, epoch_count=evals[0])
        for epoch in range(1, evals[-1] + 1):
            sampler.set_epoch(epoch)
            started, seen, loss_sum = time.time(), 0, torch.zeros((), device=device)
            for i, (x, y) in enumerate(train_loader):
                x, y = to_device(x, y, cfg, device)
                if train_batch is not None:
                    x = train_batch(x, epoch)
                first = i % cfg.gradient_accumulation_steps == 0
                last = (i + 1) % cfg.gradient_accumulation_steps == 0  # every step whole: no partial last one
                loss_sum += micro_step(model, replica, scaler, x, y, cfg, reduce=last, first=first)
                seen += y.numel()
                if last:
                    lr = poly_schedule(step, base_lr=cfg.opt_base_learning_rate, end_lr=cfg.opt_end_learning_rate,
                                       warmup_steps=warmup_steps, decay_steps=decay_steps,
                                       power=cfg.opt_learning_rate_decay_poly_power)
                    # An fp16 step skipped on overflow does not advance the schedule.
                    step += training.update(replica, optimizer, scaler, lr, zero_grad=False)
            elapsed = time.time() - started
            line = (f"epoch {epoch:3d}: loss {loss_sum.item() / (i + 1):.3f}, lr {lr:.4f}, "
                    f"{seen * dist.world_size / elapsed:,.0f} images/s")
            if epoch in evals:
                run.eval_start(epoch)
                accuracy = evaluate(model, val_loader, cfg, device, dist)
                run.eval_stop(epoch, accuracy)
                run.block_stop(first_epoch_num=block_first)
                line += f", top-1 {accuracy:.4f}"
                if accuracy >= cfg.target_accuracy:
                    status = "success"
                elif epoch < evals[-1]:
                    block_first = epoch + 1
                    run.block_start(first_epoch_num=block_first, epoch_count=cfg.eval_every)
            if dist.is_main:
                print(line, flush=True)
            if status == "success":
                break
        # Unconverged at the first eval at or after the schedule's end: status stays "aborted".
        run.stop(status)
    if dist.is_main:
        print(f"run_stop: {status} after {epoch} epochs", flush=True)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
