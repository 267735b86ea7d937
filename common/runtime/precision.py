"""Precision: fp32, or bf16 / fp16 autocast over fp32 weights (16.32 in MLPerf's activations.weights notation).

`notation(precision)` gives the X.Y form that results pages use: X the bits of activations and gradients, Y the
bits of the stored weights (32.32 fp32; 16.32 autocast over fp32 weights; 16.16 16-bit weights throughout).
"""

from __future__ import annotations

import contextlib

import torch

from ..cli import UserError


def check(precision: str, device: torch.device) -> None:
    """UserError where this device has no path for the precision: fp16 (autocast with a loss scaler) is the
    CUDA path. The trainers call it before their log (common/training.announce), autocast again each pass."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"precision fp16 needs a CUDA device; on {device.type} use --set precision=bf16 or fp32")


def autocast(precision: str, device: torch.device):
    """The autocast context for one forward pass; fp32 runs without one."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check(precision, device)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


_ACTIVATION_BITS = {"fp32": 32, "bf16": 16, "fp16": 16}


def notation(precision: str, weight_dtype: torch.dtype = torch.float32) -> str:
    """MLPerf's activations.weights notation: notation("bf16") == "16.32", notation("fp16", torch.half) == "16.16"."""
    if precision not in _ACTIVATION_BITS:
        raise UserError(f"unknown precision {precision!r}: choose one of {', '.join(_ACTIVATION_BITS)}")
    return f"{_ACTIVATION_BITS[precision]}.{torch.finfo(weight_dtype).bits}"
