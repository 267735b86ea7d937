"""Memory of a run, estimated from its shapes before anything runs, and checked before the result log opens.

The formulas are each benchmark's own, beside its model (closed/bert/memory.py, closed/resnet/memory.py); a
config gives them as `cfg.memory_estimate(local_batch, device_type)` and `cfg.shm_sample_bytes()` (the
`Sized` protocol). Here: what an estimate holds, the memory it is checked against, and the refusal.
`python -m mlperf_submission.bench.memory` prints the estimate of a preset by name.

The trainers call `check` before the result log is opened (common/training.py's `announce`):
- a CUDA run whose per-GPU estimate exceeds 90 % of the GPU its system JSON names
  (`accelerator_memory_capacity`) stops with a one-line error and writes nothing;
- a CPU run likewise against the host's memory available now (MemAvailable in /proc/meminfo: free memory
  plus what the kernel can reclaim without swapping), counting every rank of the job on this host and the
  data workers' batches in shared memory (/dev/shm is host memory);
- both name the memory needed and the `--set gradient_accumulation_steps=` whose smaller micro-batch fits
  (the global batch stays), and data workers beyond the host's cores are reported as a warning.

Fixed costs: fp32 parameters and gradients (DDP's gradients are its buckets: `gradient_as_bucket_view`),
optimizer state (LAMB: 2 tensors a parameter; LARS and SGD: 1), one fp32 temporary a parameter for the
foreach optimizer step, the 16-bit weight copies autocast caches for a step, and on CUDA 1 GiB for the
context, cuBLAS/cuDNN workspaces and NCCL buffers (on the CPU what the process already holds is not in
MemAvailable, so nothing is added for it). A run fits when the estimate is at most 90 % of the memory: the
rest is left to the allocators' fragmentation (a margin, not a measurement). The estimate is of this code's
tensors, not a measurement: `make gpu-check` records the peak that a smoke run allocates where a GPU is at hand.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..cli import UserError

GIB = 2**30
CONTEXT_BYTES = GIB     # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers
USABLE_FRACTION = 0.9   # of the memory; the rest for the allocators' fragmentation
OPTIMIZER_STATES = {"lamb": 2, "lars": 1, "sgd": 1}  # fp32 tensors per parameter
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class Estimate:
    """Bytes per rank, by what holds them; `data_workers` only on the host (their batches in /dev/shm)."""

    parameters: int
    gradients: int
    optimizer: int
    weight_copies: int
    activations: int
    transients: int
    context: int = CONTEXT_BYTES
    data_workers: int = 0

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))

    def describe(self) -> str:
        parts = ", ".join(f"{f.name} {getattr(self, f.name) / GIB:.1f}" for f in dataclasses.fields(self)
                          if f.name != "data_workers" or self.data_workers)
        return f"{self.total / GIB:.1f} GiB ({parts})"


class Sized(Protocol):
    """What a benchmark's config provides for the check: its formulas and the fields that size a step."""

    device: str
    precision: str
    gradient_accumulation_steps: int
    data_workers: int
    prefetch_factor: int

    @property
    def global_batch_items(self) -> int: ...

    def memory_estimate(self, local_batch: int, device_type: str) -> Estimate: ...

    def shm_sample_bytes(self) -> int: ...


def low_precision(precision: str) -> bool:
    return precision in ("fp16", "bf16")


def states(params: int, precision: str, optimizer: str, foreach: bool) -> dict[str, int]:
    """The fixed costs of `params` fp32 parameters: gradients, optimizer state, autocast's weight copies."""
    return {"parameters": 4 * params, "gradients": 4 * params,
            "optimizer": 4 * params * (OPTIMIZER_STATES[optimizer] + foreach),
            "weight_copies": 2 * params if low_precision(precision) else 0}


def context_bytes(device_type: str) -> int:
    return CONTEXT_BYTES if device_type == "cuda" else 0


def meta_parameters(make) -> int:
    """Parameters of the module `make()` builds, counted on the meta device (no memory, no arithmetic)."""
    with torch.device("meta"):
        return sum(p.numel() for p in make().parameters())


def capacity_bytes(text: str) -> int | None:
    """'141 GB' -> 141e9, '40 GiB' -> 40 x 2**30, '80GB HBM2e' -> 80e9; None where no size is given."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*(TiB|TB|GiB|GB|MiB|MB)\b", text or "", re.IGNORECASE)
    if m is None:
        return None
    unit = m.group(2).lower()
    scale = {"tib": 2**40, "tb": 10**12, "gib": GIB, "gb": 10**9, "mib": 2**20, "mb": 10**6}[unit]
    return int(float(m.group(1)) * scale)


def host_available_bytes(meminfo: Path | None = None) -> int:
    """The host memory a new allocation can take now: MemAvailable (kB), else the free pages."""
    try:
        m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", (meminfo or MEMINFO).read_text(), re.MULTILINE)
    except OSError:
        m = None
    if m is not None:
        return int(m.group(1)) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits(estimate: Estimate, capacity: int) -> bool:
    return estimate.total <= USABLE_FRACTION * capacity


def shm_bytes(cfg: Sized, local_batch: int, ranks_per_node: int) -> int:
    """The /dev/shm one node's data workers need: per rank, each worker's `prefetch_factor` batches in flight
    plus the two the main process holds, at the local batch, of the config's bytes per sample in flight."""
    if cfg.data_workers == 0:
        return 0
    batches = cfg.data_workers * cfg.prefetch_factor + 2
    return ranks_per_node * batches * local_batch * cfg.shm_sample_bytes()


def shm_size(nbytes: int) -> str:
    """The docker `--shm-size` for `nbytes`: whole GiB rounded up, plus 1 GiB for NCCL's intra-node buffers."""
    return f"{-(-nbytes // GIB) + 1}g"


def local_batch_of(cfg: Sized, ranks: int) -> int:
    """Items per rank and micro-step when the global batch is spread over `ranks` and the accumulation steps."""
    replicas = ranks * cfg.gradient_accumulation_steps
    if cfg.global_batch_items % replicas:
        raise UserError(f"the global batch {cfg.global_batch_items} is not a multiple of {ranks} rank(s) x "
                        f"{cfg.gradient_accumulation_steps} accumulation steps")
    return cfg.global_batch_items // replicas


def needed(cfg: Sized, local_batch: int, device_type: str) -> Estimate:
    """The estimate of one rank on `device_type`; on the CPU with its data workers' batches in /dev/shm."""
    estimate = cfg.memory_estimate(local_batch, device_type)
    if device_type == "cpu":
        estimate = dataclasses.replace(estimate, data_workers=shm_bytes(cfg, local_batch, 1))
    return estimate


def fitting_accumulation(cfg: Sized, local_batch: int, device_type: str, capacity: int,
                         ranks: int = 1) -> tuple[int, int, Estimate] | None:
    """(accumulation steps, micro-batch, its estimate) of the smallest multiple of the config's accumulation
    steps that divides this rank's items per step and whose `ranks` micro-batches fit `capacity`; None if not
    even one item a micro-step fits."""
    per_step = local_batch * cfg.gradient_accumulation_steps
    for steps in range(2 * cfg.gradient_accumulation_steps, per_step + 1, cfg.gradient_accumulation_steps):
        if per_step % steps == 0:
            estimate = needed(cfg, per_step // steps, device_type)
            if ranks * estimate.total <= USABLE_FRACTION * capacity:
                return steps, per_step // steps, estimate
    return None


def _refusal(what: str, need: int, room: str, fit: tuple[int, int, Estimate] | None) -> UserError:
    if fit is None:
        return UserError(f"{what} needs about {need / GIB:.1f} GiB, more than {USABLE_FRACTION:.0%} of {room}, "
                         "and even one item a micro-step would not fit")
    steps, micro, estimate = fit
    return UserError(f"{what} needs about {need / GIB:.1f} GiB, more than {USABLE_FRACTION:.0%} of {room}: raise "
                     f"gradient_accumulation_steps (the global batch stays), e.g. --set gradient_accumulation_steps="
                     f"{steps} ({micro} a micro-step, about {estimate.total / GIB:.1f} GiB)")


def refuse_unfit(benchmark: str, cfg: Sized, local_batch: int, system: dict, device: torch.device,
                 ranks_on_host: int = 1, host_bytes: int | None = None) -> None:
    """UserError for a CUDA run whose estimate exceeds the GPU the system description names (nothing checked
    where it names no memory), or a CPU run whose ranks together exceed the host memory available now
    (`host_bytes` given, or MemAvailable)."""
    what = (f"{benchmark} at {local_batch} per rank x {cfg.gradient_accumulation_steps} accumulation steps, "
            f"{cfg.precision}")
    if device.type == "cuda":
        capacity = capacity_bytes(system.get("accelerator_memory_capacity", ""))
        if capacity is not None and not fits(estimate := needed(cfg, local_batch, "cuda"), capacity):
            gpu = system.get("accelerator_model_name") or "the GPU"
            room = f"{gpu}'s {system['accelerator_memory_capacity']} per GPU"
            raise _refusal(what, estimate.total, room, fitting_accumulation(cfg, local_batch, "cuda", capacity))
    elif device.type == "cpu":
        capacity = host_available_bytes() if host_bytes is None else host_bytes
        need = ranks_on_host * needed(cfg, local_batch, "cpu").total
        if need > USABLE_FRACTION * capacity:
            room = f"the host memory available now ({capacity / GIB:.1f} GiB) for {ranks_on_host} rank(s)"
            raise _refusal(what, need, room, fitting_accumulation(cfg, local_batch, "cpu", capacity, ranks_on_host))


def worker_warnings(cfg: Sized, ranks_on_host: int, cores: int) -> list[str]:
    """A line when the data workers of this host's ranks outnumber the cores they may run on."""
    if cfg.data_workers * ranks_on_host <= cores:
        return []
    return [f"warning: {cfg.data_workers} data workers x {ranks_on_host} rank(s) on {cores} core(s) available: "
            f"the input pipeline may set the pace (e.g. --set data_workers={max(1, cores // ranks_on_host)})"]


def check(benchmark: str, cfg: Sized, local_batch: int, system: dict, device: torch.device, world_size: int = 1,
          *, host_bytes: int | None = None, cores: int | None = None) -> list[str]:
    """Before any log: `refuse_unfit`, then -> `worker_warnings` (`cores`: those this process may run on).
    A CPU job's `world_size` ranks are counted as on this host, a CUDA job's as at most one a GPU here; on an
    IPU the model lives in the IPUs' memory, which PopART plans, and nothing is refused."""
    ranks_on_host = max(1, min(world_size, torch.cuda.device_count())) if device.type == "cuda" else world_size
    if cfg.device != "ipu":
        refuse_unfit(benchmark, cfg, local_batch, system, device, ranks_on_host, host_bytes)
    return worker_warnings(cfg, ranks_on_host, len(os.sched_getaffinity(0)) if cores is None else cores)
