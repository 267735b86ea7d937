"""Per-GPU memory and /dev/shm of a preset, estimated from its shapes, before anything runs.

    python -m mlperf_submission.bench.memory --bench bert --preset 8xA100 [--gpus 8] [--system FILE]
    python -m mlperf_submission.bench.memory --bench resnet --preset 1xH200 --shm

The first prints the per-GPU estimate (parameters, gradients, optimizer state, 16-bit weight copies,
activations saved for the backward pass, transients; the formulas are in closed/<bench>/memory.py) and, with
--system, whether it fits the accelerator that the system description names. The second prints the shared
memory (/dev/shm) the data workers of one node need, which is what a container's `--shm-size` must give
(`--ipc=host` gives the host's). --gpus is the ranks of the job, one per GPU on one node; by default the
accelerators the preset is sized for (benchmarks.py: 8xA100 8). Estimates, not measurements; the trainers
check the same estimate before their log opens (common/runtime/memory.py).
"""

from __future__ import annotations

import sys

from .. import benchmarks
from ..common.cli import ArgumentParser, UserError, entry_point
from ..common.runtime import memory
from ..common.system import load as load_system


def fit_text(estimate: memory.Estimate, system_name: str) -> str:
    """Whether the estimate fits the accelerator that the system description names."""
    _, system = load_system(system_name)
    capacity = memory.capacity_bytes(system["accelerator_memory_capacity"])
    if capacity is None:
        raise UserError(f"system {system_name} gives no accelerator_memory_capacity (e.g. \"80 GB\")")
    return (f"{'fits' if memory.fits(estimate, capacity) else 'does NOT fit'} {system['accelerator_model_name']} "
            f"{system['accelerator_memory_capacity']} ({memory.USABLE_FRACTION:.0%} usable)")


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", choices=sorted({name for _, name in benchmarks.REGISTRY}), required=True)
    p.add_argument("--division", choices=("closed", "open"), default="closed")
    p.add_argument("--preset", required=True)
    p.add_argument("--gpus", type=int, help="ranks, one per GPU on one node (default: the preset's accelerators)")
    p.add_argument("--system", help="system JSON: say whether the estimate fits its accelerator")
    p.add_argument("--shm", action="store_true", help="the /dev/shm the data workers need, and --shm-size")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    cfg = benchmarks.get(args.division, args.bench).config(args.preset, args.overrides)
    gpus = args.gpus or benchmarks.accelerators(args.preset)
    local = memory.local_batch_of(cfg, gpus)
    if args.shm:
        need = memory.shm_bytes(cfg, local, gpus)
        print(f"{args.division} {args.bench} {args.preset}: {gpus} rank(s) x {cfg.data_workers} workers x "
              f"prefetch {cfg.prefetch_factor} at {local} per GPU: /dev/shm {need / memory.GIB:.2f} GiB; "
              f"docker run --shm-size={memory.shm_size(need)} (or --ipc=host)")
        return 0
    estimate = cfg.memory_estimate(local, "cuda")
    line = f"{args.division} {args.bench} {args.preset} at {local} per GPU, {cfg.precision}: {estimate.describe()}"
    print(line + (f"; {fit_text(estimate, args.system)}" if args.system else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
