"""ResNet-50's computation, as the training loop runs it (closed/resnet/train.py; bench/cases.py times it too):
the model, LARS (or SGD) and the replica built on the device, the batch copied there, the micro-step and the
whole step, the untimed warm-up and the eval.
"""

from __future__ import annotations

import torch

from ...common import training
from ...common.data import imagenet
from ...common.runtime import distributed
from ...common.runtime.precision import autocast
from . import presets
from .model import ResNet50
from .optim import (
    LARS,
    param_groups,
    poly_schedule,
    reference_epsilon,
    sgd,
    smoothed_cross_entropy,
)


def resnet50(cfg: presets.ResNetConfig, *, zero_init_residual: bool = False) -> ResNet50:
    """A freshly initialised ResNet-50 of cfg's width and classes, on the host (the run logs its tensor names
    before `build` places it)."""
    return ResNet50(num_classes=cfg.num_classes, width=cfg.model_width, zero_init_residual=zero_init_residual)


def build(model: ResNet50, cfg: presets.ResNetConfig, dist: distributed.Dist, *, bn_replicas: int = 1):
    """-> (model, optimizer, replica, scaler) as a run trains them: `model` on the device in the configured
    memory format, batch-norm groups, LARS (or SGD) at learning rate 0 (the schedule sets it per step), the
    replica wrapper and the fp16 grad scaler."""
    model = dist.batch_norm_groups(model.to(dist.device, memory_format=memory_format(cfg)), bn_replicas)
    if cfg.opt_name == "lars":
        optimizer = LARS(param_groups(model, cfg.opt_weight_decay), lr=0.0, momentum=cfg.opt_momentum,
                         epsilon=reference_epsilon(cfg.lars_epsilon), foreach=cfg.optimizer_foreach)
    else:
        optimizer = sgd(model, 0.0, cfg.opt_momentum, cfg.opt_weight_decay, foreach=cfg.optimizer_foreach)
    replica = dist.replicate(model, optimizer, accumulation_steps=cfg.gradient_accumulation_steps)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.precision == "fp16")
    return replica.module, replica.optimizer, replica, scaler


def learning_rate(cfg: presets.ResNetConfig, step: int, warmup_steps: int, decay_steps: int) -> float:
    """The reference's polynomial schedule at optimizer step `step` (from 0); the steps from
    presets.schedule_steps."""
    return poly_schedule(step, base_lr=cfg.opt_base_learning_rate, end_lr=cfg.opt_end_learning_rate,
                         warmup_steps=warmup_steps, decay_steps=decay_steps,
                         power=cfg.opt_learning_rate_decay_poly_power)


def memory_format(cfg: presets.ResNetConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def to_device(x: torch.Tensor, y: torch.Tensor, cfg: presets.ResNetConfig, device: torch.device):
    """A loader's batch -> (images, labels) on the device, as the model takes them: uint8 ImageNet batches
    (N, H, W, 3) copied as bytes and normalised there (`imagenet.normalise`), float batches (synthetic data,
    already normalised) copied as they are; in the configured memory format. Asynchronous from pinned
    memory (the loader pins on CUDA)."""
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
            loss = smoothed_cross_entropy(model(x), y, cfg.label_smoothing)
        if first:
            replica.optimizer.zero_grad()
        scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
    return loss.detach()


def train_step(model, replica, optimizer, scaler, x: torch.Tensor, y: torch.Tensor, cfg: presets.ResNetConfig,
               lr: float) -> torch.Tensor:
    """One whole optimizer step on one micro-batch: `micro_step` then the update at `lr`, what the training
    loop does per micro-batch and per step. The warm-up runs this function; the bench times its two halves."""
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


def evaluate(model, val, cfg: presets.ResNetConfig, device, dist) -> float:
    """Top-1 accuracy over the whole eval set, each image once (every rank's shard, summed)."""
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
