"""Data-parallel runtime over torch.distributed, launched by torchrun (gloo on CPU, NCCL on GPU).

A single process with no torchrun environment is world size 1 and needs no process group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mlperf_submission.common.cli import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def init(device: torch.device, timeout_s: float = 600) -> Dist:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    # A timeout makes a dead rank end the job instead of hanging the others forever.
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def local_batch(global_batch_size: int, dist: Dist, accumulation_steps: int) -> int:
    """Global batch = local batch x replicas x gradient accumulation steps; the local batch, or UserError."""
    replicas = dist.world_size * accumulation_steps
    if global_batch_size % replicas:
        raise UserError(f"global_batch_size {global_batch_size} is not a multiple of {dist.world_size} rank(s) x "
                        f"{accumulation_steps} accumulation steps")
    return global_batch_size // replicas


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda was asked for but no CUDA device is visible: use device=cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)
