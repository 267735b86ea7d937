"""What the training loops (closed/resnet/train.py, closed/bert/train.py, closed/bert/ipu.py) do the same way,
as plain functions they call in order: the command line (`Invocation`, what it says beside the config), the
config from preset and `--set`, the run's preamble (system, ranks, local batch, the printed config, then
`begin_run`: the seed, the result log and the `Run`), the accumulation rule (`step_bounds`) and the optimizer
update that ends every accumulated step. The run itself, `run_start` to `run_stop`, stays in each loop; its
evals and blocks are common/cadence.py's.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config, rehearsal
from .cli import ArgumentParser, UserError
from .mllog import MLLog
from .run import Run, Submission, dataset_files
from .runtime import distributed, ipu, memory, precision
from .runtime.precision import notation
from .system import load as load_system

IPU_FIELDS = frozenset(f.name for f in dataclasses.fields(ipu.IpuConfig))


def arguments(*, prog: str, description: str | None, registry: dict, data_help: str,
              raw_description: bool = False) -> ArgumentParser:
    """The options every run takes; a trainer adds its own (BERT's --ckpt) and parses."""
    formatter = argparse.RawDescriptionHelpFormatter if raw_description else argparse.HelpFormatter
    p = ArgumentParser(prog=prog, description=description, formatter_class=formatter)
    p.add_argument("--preset", default="smoke", help=f"one of {', '.join(registry)}")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--system", required=True, help="system description JSON (path or name in systems/)")
    p.add_argument("--result-log", type=Path, required=True, help="the result log to create")
    p.add_argument("--data", type=Path, help=data_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument(rehearsal.SWITCH, default="", metavar="STEPS,BUDGET_S[,EVAL_SAMPLES]",  # rehearsal
                   help="a rehearsal, never a result: stop after STEPS steps or BUDGET_S s, one bounded eval")
    return p


@dataclass(frozen=True)
class Invocation:
    """What the command line says about one run beside its config: the loops take this, not argparse's
    Namespace (a trainer's own options, such as BERT's --ckpt, go into the config in its resolve_config)."""

    preset: str
    seed: int
    system: str
    result_log: Path
    data: Path | None = None
    rehearse: str = ""  # --rehearse STEPS,BUDGET_S[,EVAL_SAMPLES] (common/rehearsal.py); "": a run

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Invocation:
        return cls(preset=args.preset, seed=args.seed, system=args.system, result_log=args.result_log,
                   data=args.data, rehearse=args.rehearse)


def resolve(args: argparse.Namespace, registry: dict, validate: Callable, *, real_dataset: str,
            synthetic_with_data: str, real_without_data: str, ipu_unsupported: str = "", **fields):
    """The preset, its `--set` overrides, then `fields` (from other options), checked against --data and
    validated. The two messages follow "preset NAME ": a synthetic preset given DATA, a real one without.
    `ipu_unsupported`: why device=ipu is refused for this benchmark ("": it runs there)."""
    cfg = config.override(config.select(registry, args.preset), args.overrides)
    if fields:
        cfg = dataclasses.replace(cfg, **fields)
    if args.data is not None and cfg.dataset == "synthetic":
        raise UserError(f"preset {args.preset} {synthetic_with_data}")
    if args.data is None and cfg.dataset == real_dataset:
        raise UserError(f"preset {args.preset} {real_without_data}")
    validate(cfg)
    if cfg.device == "ipu" and ipu_unsupported:
        raise UserError(f"device=ipu: {ipu_unsupported}")
    if cfg.device == "ipu":
        ipu.check(cfg)  # PopTorch and a benchmark that runs on it, or one line before anything is made
    return cfg


def submission(run: Invocation, *, division: str, benchmark: str) -> Submission:
    """The log's submission fields, from the system description named by --system."""
    _, system = load_system(run.system)
    return Submission.from_system(system, division=division, benchmark=benchmark)


def ranks(cfg, global_batch: int) -> tuple[distributed.Dist, int]:
    """(this process's rank and device, its batch per micro-step) for `global_batch` items per step."""
    if cfg.device == "ipu":
        return ipu.ranks(cfg, global_batch)  # the PopRun instance; the micro-batch of one IPU replica
    dist = distributed.init(cfg.device, backend=cfg.distributed_backend, timeout_s=cfg.distributed_timeout_s)
    return dist, distributed.local_batch(global_batch, dist, cfg.gradient_accumulation_steps)


def announce(benchmark: str, division: str, run: Invocation, cfg, dist: distributed.Dist,
             local_batch: int) -> None:
    """The resolved config in full, for humans (rank 0), once it is known to fit: a run whose memory estimate
    exceeds the GPU that --system names, or on the CPU the host's available memory, is refused here, before
    the log is opened (common/runtime/memory.py); data workers beyond the cores are warned of. The `ipu_*`
    fields a config inherits (common/runtime/ipu.IpuConfig) are shown only on the IPU. A precision the device
    has no path for (fp16 off CUDA) is refused here too."""
    if cfg.device != "ipu":  # the IPU path's fp16 is PopTorch's (16.16), not autocast's
        precision.check(cfg.precision, torch.device(dist.device))
    warnings = memory.check(benchmark, cfg, local_batch, load_system(run.system)[1], torch.device(dist.device),
                            dist.world_size)
    if dist.is_main:
        for line in warnings:
            print(line, flush=True)
        hidden = () if cfg.device == "ipu" else IPU_FIELDS
        print(f"{benchmark} {division}, preset {run.preset}, seed {run.seed}, {dist.world_size} rank(s) on "
              f"{dist.device}, local batch {local_batch}, precision {notation(cfg.precision)}:\n"
              f"{config.describe(cfg, hidden=hidden)}", flush=True)
        if cfg.dataset == "synthetic":
            print("cache_clear: false (synthetic data made in memory: no dataset on storage to flush)", flush=True)


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of `rank` in a run seeded with `seed`: the seed itself on rank 0 (a single process draws
    exactly what it always has); on rank r, seed + r x 0x9E3779B9 modulo 2**32 (torch's CPU generator keeps
    only a seed's low 32 bits), which spreads the ranks of one run over the whole 32-bit range instead of
    onto the next runs' seeds (seed + 1, seed + 2, ...)."""
    return seed if rank == 0 else (seed + rank * 0x9E3779B9) % 2**32


def seeded_log(run: Invocation, dist: distributed.Dist) -> MLLog:
    """Seed torch (CPU and CUDA) with --seed on rank 0 and a seed of its own on every other rank, then open
    the result log (a new file) that the run writes.

    Each rank's own seed gives each rank its own dropout masks (the same seed everywhere would drop the same
    units on every replica). The weights still start identical: `Dist.replicate` gives every rank rank 0's
    parameters and buffers (DDP's construction broadcasts them; Horovod and the explicit all-reduce path
    call `broadcast_state`), and the shuffling comes from the sampler's and loaders' own seeded generators.
    """
    torch.manual_seed(rank_seed(run.seed, dist.rank))
    return MLLog(run.result_log, rank=dist.rank, barrier=dist.barrier)


def begin_run(run: Invocation, dist: distributed.Dist, submission: Submission, *, hyperparameters: dict,
              train_samples: int | None, eval_samples: int, synthetic: bool) -> Run:
    """The seeded result log (`seeded_log`) and the `Run` over it, whose `with` block logs the preamble from
    cache_clear to the sample counts; a dataset on storage (not `synthetic`) is flushed from the page cache
    first, every file of the --data folder."""
    log = seeded_log(run, dist)
    return Run(log, submission, seed=run.seed, hyperparameters=hyperparameters, train_samples=train_samples,
               eval_samples=eval_samples, data_files=None if synthetic else dataset_files(run.data))


def step_bounds(index: int, accumulation_steps: int) -> tuple[bool, bool]:
    """(first, last): whether micro-batch `index` (from 0) opens and closes an optimizer step of
    `accumulation_steps` micro-batches. One rule for every loop, every step whole: both loaders drop the last
    partial batch (ResNet's epoch is whole global batches, the reference's drop_train_remainder, so a count
    within an epoch or across epochs gives the same steps; BERT's runs across epochs)."""
    return index % accumulation_steps == 0, (index + 1) % accumulation_steps == 0


def update(replica, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, lr: float, *,
           clip: Callable[[], object] | None = None, clip_before_allreduce: bool = False,
           zero_grad: bool = True) -> bool:
    """The optimizer step after the last micro-step's backward: average the gradients over ranks, unscale
    and `clip()` them in place if given (before the average with `clip_before_allreduce`: each rank clips its
    own), set `lr` on every parameter group, step (skipped by the scaler on an fp16 overflow), zero them
    (`zero_grad=False`: the caller zeroes them before its next backward instead). -> whether the parameters
    were updated: False when fp16's scaler found an inf or NaN and skipped the step, which then advances
    neither the schedule nor the sample count (NVIDIA's v1.1 BERT `take_optimizer_step`: `global_step += 0 if
    _has_overflow else 1`). The scaler backs its scale off exactly then, which is how this tells."""
    clip_first = clip is not None and clip_before_allreduce
    if not clip_first:
        replica.reduce_gradients()
    if clip is not None:
        scaler.unscale_(optimizer)
        clip()
    if clip_first:
        replica.reduce_gradients()
    for group in optimizer.param_groups:
        group["lr"] = lr
    # The scaler's step has already read its inf check back to the host; reading the scale costs no more sync.
    scale = scaler.get_scale() if scaler.is_enabled() else None
    replica.step(scaler)
    scaler.update()
    if zero_grad:
        optimizer.zero_grad()
    return scale is None or scaler.get_scale() >= scale
