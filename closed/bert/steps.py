"""BERT's computation, as every BERT loop runs it (closed/bert/train.py, closed/bert/ipu.py, closed/bert/phase1.py,
bench/cases.py): the LAMB optimizer and its learning rate, the forward with its loss, the micro-step and the
optimizer step, the eval, the phase-1 checkpoint load and the untimed warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch

from ...common import training
from ...common.cli import UserError
from ...common.runtime.precision import autocast
from . import checkpoint, presets
from .data import Batch, synthetic_batch
from .model import forward_packed
from .optim import (
    Lamb,
    lr_schedule,
    mlm_loss_and_accuracy,
    nsp_loss,
    packed_loss,
    param_groups,
    per_sequence_losses,
)


def lamb(model, cfg: presets.BertRunConfig) -> Lamb:
    """The reference's LAMB over the model's parameters, as cfg sets it; the schedule sets each step's lr."""
    return Lamb(param_groups(model, cfg.opt_lamb_weight_decay_rate), lr=0.0,
                betas=(cfg.opt_lamb_beta_1, cfg.opt_lamb_beta_2), eps=cfg.opt_epsilon,
                bias_correction=cfg.opt_lamb_bias_correction, foreach=cfg.optimizer_foreach)


def learning_rate(cfg: presets.BertRunConfig, step: int) -> float:
    """The reference's learning rate of optimizer step `step` (from 0)."""
    return lr_schedule(step, base_lr=cfg.opt_base_learning_rate, warmup_steps=cfg.opt_learning_rate_warmup_steps,
                       start_warmup_step=cfg.start_warmup_step, total_steps=cfg.opt_learning_rate_training_steps)


def forward(model, batch: Batch, cfg: presets.BertRunConfig, device: torch.device):
    """-> (loss, correct, count) for one batch, padded rows or unpadded ones (those carry `sequence_ids`):
    MLM at the masked positions only, averaged as cfg.loss_averaging says, plus NSP."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    unpadded = "sequence_ids" in b
    with autocast(cfg.precision, device):
        if unpadded:
            mlm_logits, nsp_logits = forward_packed(model, b, cfg.unpad_attention)
        else:
            mlm_logits, nsp_logits = model(b["input_ids"], b["segment_ids"], b["input_mask"],
                                           b["masked_lm_positions"])
    if unpadded:
        return packed_loss(per_sequence_losses(mlm_logits, nsp_logits, b), b, cfg.loss_averaging)
    loss, correct, count = mlm_loss_and_accuracy(mlm_logits, b["masked_lm_ids"], b["masked_lm_weights"])
    return loss + nsp_loss(nsp_logits, b["next_sentence_labels"]), correct, count


def micro_step(model, replica, scaler, batch: Batch, cfg: presets.BertRunConfig, device, *,
               reduce: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch, its loss divided over the accumulation steps (and scaled for
    fp16); the gradients are all-reduced in the step's last one (`reduce`). -> the batch's loss."""
    with replica.micro_step(reduce=reduce):
        loss, _, _ = forward(model, batch, cfg, device)
        scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
    return loss


def optimizer_step(replica, optimizer, scaler, clip: Callable[[], object], cfg: presets.BertRunConfig,
                   step: int) -> tuple[float, bool]:
    """The update that ends optimizer step `step` (from 0): the reference's learning rate, the clip, LAMB.
    -> (the learning rate, whether the update was applied: False on an fp16 overflow)."""
    lr = learning_rate(cfg, step)
    # The mean gradient is clipped, as one device would, unless each rank clips its own first.
    applied = training.update(replica, optimizer, scaler, lr, clip=clip,
                              clip_before_allreduce=cfg.clip_before_allreduce)
    return lr, applied


def eval_totals(model, batches: Iterable[Batch], cfg: presets.BertRunConfig, device) -> torch.Tensor:
    """(masked-LM correct, masked positions) summed over `batches`, in float64, on this process."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in batches:
            _, correct, count = forward(model, batch, cfg, device)
            totals += torch.stack([correct, count]).double()
    model.train()
    return totals


def evaluate(model, val, cfg: presets.BertRunConfig, device, dist) -> float:
    """Masked-LM accuracy over every masked position of the whole eval set, each sample once."""
    totals = eval_totals(model, val, cfg, device)
    dist.all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()


def progress(samples: int, loss: float, lr: float, accuracy: float, seconds: float) -> str:
    """The line a loop prints (rank 0) after each eval, `seconds` after run_start."""
    return (f"{samples:,} samples: loss {loss:.3f}, lr {lr:.5f}, masked-LM accuracy {accuracy:.4f}, "
            f"{samples / seconds:,.1f} sequences/s")


def load_checkpoint(model, cfg: presets.BertRunConfig, dist) -> None:
    """The phase-1 weights, read and (a TF prefix) converted here, between init_start and init_stop, where
    the rules count them as initialisation; the clock starts only after."""
    started = time.time()
    try:
        state = checkpoint.load_init_checkpoint(cfg.init_checkpoint, cfg.model_config())
    except checkpoint.CheckpointError as e:
        raise UserError(f"init checkpoint: {e}") from None
    model.load_state_dict(state)
    if dist.is_main:
        print(f"init checkpoint {cfg.init_checkpoint}: {len(state)} tensors, "
              f"{sum(t.numel() for t in state.values()):,} parameters, loaded in {time.time() - started:.1f} s "
              "(untimed init)", flush=True)


def warm_up(model, replica, optimizer, scaler, cfg: presets.BertRunConfig, device, train_sizes: list[int],
            eval_sizes: list[int]) -> None:
    """Untimed, on synthetic batches: one training step at learning rate 0 per training batch size and one
    eval forward per eval batch size, so that torch.compile compiles nothing inside the timed region. The
    caller undoes its effects (`compile.undone`)."""
    for n in train_sizes:
        micro_step(model, replica, scaler, synthetic_batch(cfg, n), cfg, device, reduce=True)
        training.update(replica, optimizer, scaler, 0.0)
    model.eval()
    with torch.no_grad():
        for n in eval_sizes:
            forward(model, synthetic_batch(cfg, n), cfg, device)
    model.train()
