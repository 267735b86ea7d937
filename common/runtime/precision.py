"""Precision: fp32, or bf16 / fp16 autocast over fp32 weights (16.32 in MLPerf's activations.weights notation)."""

from __future__ import annotations

import contextlib

import torch

from mlperf_submission.common.cli import UserError


def autocast(precision: str, device: torch.device):
    """The autocast context for one forward pass; fp32 runs without one."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
