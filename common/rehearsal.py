"""The rehearsal switch of a training run: the real preset for a few steps, one bounded eval, then `aborted`.

    python -m mlperf_submission.closed.resnet.train --preset 1xH200 ... --rehearse 2,300,256

`--rehearse STEPS,BUDGET_S[,EVAL_SAMPLES]` stops the training loop after STEPS optimizer steps or once BUDGET_S
seconds of training have passed, whichever comes first, but never before one micro-step; the run then
evaluates once on the first EVAL_SAMPLES samples of the eval set and logs run_stop `aborted`. Only in this
mode are the dataset-size checks (the whole ILSVRC2012, the 10,000-sample BERT eval set) relaxed: each one
that would have refused the data is printed and kept as a warning. Per micro-step it measures the time spent
waiting for the loader against the time computing (on CUDA, synchronised), and at the end writes what it
measured to RESULT_LOG.rehearsal.json, which `compliance/rehearse.py` reads.

The trainers need only a few lines, each marked `# rehearsal`: the relaxed check, the eval slice, the timed
loader around the training loader, the final eval (common/cadence.py `Cadence.final`) and the figures.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cli import UserError, atomic_write_text

SWITCH = "--rehearse"
EVAL_SAMPLES = 256  # default eval slice: a bounded eval pass whose seconds per 1,000 samples are extrapolated


def figures_path(result_log: Path) -> Path:
    """Where a rehearsal's measurements land: beside its result log."""
    return Path(result_log).with_name(Path(result_log).name + ".rehearsal.json")


def switch_value(steps: int, budget_s: float, eval_samples: int = EVAL_SAMPLES) -> str:
    """The argument of --rehearse, as `compliance/rehearse.py` passes it."""
    return f"{steps},{budget_s:g},{eval_samples}"


def parse(text: str | None) -> tuple[int, float, int] | None:
    """'STEPS,BUDGET_S[,EVAL_SAMPLES]' -> numbers, or None without the switch; UserError on bad input."""
    if not text:
        return None
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        steps, budget, evals = int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else EVAL_SAMPLES
    except ValueError:
        raise UserError(f"{SWITCH} {text!r}: give STEPS,BUDGET_S[,EVAL_SAMPLES], e.g. 2,300") from None
    if steps < 1 or budget <= 0 or evals < 1:
        raise UserError(f"{SWITCH} {text!r}: STEPS and EVAL_SAMPLES must be >= 1 and BUDGET_S > 0")
    return steps, budget, evals


@dataclass
class Rehearsal:
    """The stop rule, the eval slice, the relaxed checks and the timers of one rehearsal run."""

    steps: int
    budget_s: float
    eval_samples: int
    figures: Path
    accumulation: int = 1
    stopped: bool = False
    micro_steps: int = 0
    samples: int = 0
    data_wait_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_args(cls, args, accumulation: int) -> Rehearsal | None:
        """The rehearsal that `--rehearse` asks for, or None (an ordinary run)."""
        numbers = parse(args.rehearse)
        if numbers is None:
            return None
        steps, budget, evals = numbers
        return cls(steps=steps, budget_s=budget, eval_samples=evals, figures=figures_path(args.result_log),
                   accumulation=accumulation)

    def relaxed(self, check: Callable) -> Callable:
        """`check` with its UserError turned into a warning (and None returned): the rehearsal's data is a sample,
        not the dataset, and its generated checkpoint is random, not the phase-1 one."""
        def relaxed_check(*args, **kwargs):
            try:
                return check(*args, **kwargs)
            except UserError as e:
                note = f"check relaxed for the rehearsal (a real run refuses this): {e}"
                self.warnings.append(note)
                print(f"REHEARSAL: {note}", file=sys.stderr, flush=True)
        return relaxed_check

    def eval_slice(self, dataset, first: Callable[[object, int], object] | None = None):
        """The first eval_samples samples of the eval set: one bounded eval pass. `first(dataset, n)` makes
        the slice where a benchmark's datasets say more than their length (BERT counts sequences)."""
        n = min(self.eval_samples, len(dataset))
        self.extra["eval_samples"] = n
        return first(dataset, n) if first is not None else torch.utils.data.Subset(dataset, range(n))

    def should_stop(self, steps_done: int, elapsed_s: float) -> bool:
        """After at least one micro-step: STEPS optimizer steps done, or the budget spent."""
        return self.micro_steps >= 1 and (steps_done >= self.steps or elapsed_s >= self.budget_s)

    def timed(self, loader, device: torch.device, count: Callable[[object], int]) -> TimedLoader:
        """`loader` with each micro-step's wait for data and compute timed; it ends when the rehearsal stops.
        `count(batch)` is the samples a batch holds on this rank."""
        return TimedLoader(self, loader, torch.device(device), count)

    def write(self, local_batch: int, world_size: int, device: torch.device) -> None:
        """The measurements, as RESULT_LOG.rehearsal.json (rank 0 calls this)."""
        peak_host = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024  # kB on Linux
        figures = {
            "steps_done": self.micro_steps // self.accumulation, "micro_steps": self.micro_steps,
            "accumulation": self.accumulation, "local_batch": local_batch, "world_size": world_size,
            "samples": self.samples * world_size, "data_wait_s": self.data_wait_s, "compute_s": self.compute_s,
            "peak_host_bytes": peak_host, "device": str(device), "warnings": self.warnings, **self.extra,
        }
        if torch.device(device).type == "cuda":
            figures["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
            figures["gpu_name"] = torch.cuda.get_device_name(device)
        atomic_write_text(self.figures, json.dumps(figures, indent=1) + "\n")


class TimedLoader:
    """A training loader whose iteration measures each micro-step and ends when the rehearsal stops."""

    def __init__(self, rehearsal: Rehearsal, loader, device: torch.device, count: Callable[[object], int]):
        self.rehearsal, self.loader, self.device, self.count = rehearsal, loader, device, count
        self.started = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels, not only their launches

    def __iter__(self) -> Iterator:
        r = self.rehearsal
        self.started = self.started or time.perf_counter()
        it = iter(self.loader)
        while not r.stopped:
            asked = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            arrived = time.perf_counter()
            yield batch
            self._sync()
            done = time.perf_counter()
            r.data_wait_s.append(round(arrived - asked, 6))
            r.compute_s.append(round(done - arrived, 6))
            r.micro_steps += 1
            r.samples += self.count(batch)
            r.stopped = r.should_stop(r.micro_steps // r.accumulation, done - self.started)
