"""Open against closed, time to the quality target: the same seeds, data and machine, one run after another.

    python -m mlperf_submission.bench.time_to_target --bench resnet|bert [--seeds 1,2,3] [--out out/ttt]

Trains each seed with the closed and the open trainer at their `smoke` presets on the built-in synthetic
data (for BERT the closed run is given the open corpus, `CLOSED_ON_OPEN_DATA`, so that both see the same
sequences), reads run_start..run_stop and the convergence point from each result log, and writes
OUT/time_to_target.json and .md. A demonstration of the open change on this machine, not an MLPerf result.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import benchmarks
from ..common.cli import ArgumentParser, UserError, atomic_write_text, entry_point
from ..common.run import BENCHMARKS
from ..compliance import score as scoring
from ..systems import DEMO_NOTE, describe_local

# The closed BERT smoke preset on the open smoke preset's corpus (open/bert/presets.py `smoke`).
CLOSED_ON_OPEN_DATA = {"bert": ["synthetic_lengths=wikipedia", "max_seq_length=64", "max_predictions_per_seq=10",
                                "synthetic_train_samples=32000"], "resnet": []}


def parse_args(argv):
    p = ArgumentParser(prog="python -m mlperf_submission.bench.time_to_target", description=__doc__)
    p.add_argument("--bench", required=True, choices=BENCHMARKS)
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds, each run by both divisions")
    p.add_argument("--out", type=Path, default=Path("out/ttt"))
    return p.parse_args(argv)


def read_run(log: Path) -> dict:
    """-> minutes from run_start to run_stop, status, and the epoch_num and accuracy of the last eval."""
    run = scoring.parse_run(log)
    return {"minutes": run["minutes"], "status": run["status"], "converged_at": run["convergence_point"],
            "accuracy": run["last_accuracy"]}


def train(division: str, bench: str, seed: int, system: Path, log: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", benchmarks.get(division, bench).trainer, "--preset", "smoke", "--seed",
           str(seed), "--system", str(system), "--result-log", str(log)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{division} {bench} seed {seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return read_run(log)


def table(bench: str, results: dict) -> str:
    unit = "epochs" if bench == "resnet" else "samples"
    lines = [f"# Time to target, {bench}: closed vs open smoke presets on this machine (demonstration)", "",
             f"| division | seed | minutes | status | converged at ({unit}) |", "|---|---|---|---|---|"]
    for division, runs in results.items():
        for seed, r in runs.items():
            lines.append(f"| {division} | {seed} | {r['minutes']:.3f} | {r['status']} | {r['converged_at']} |")
    means = {d: statistics.mean(r["minutes"] for r in runs.values()) for d, runs in results.items()}
    lines += ["", f"Mean minutes: closed {means['closed']:.3f}, open {means['open']:.3f}; "
              f"open / closed = {means['open'] / means['closed']:.3f}."]
    return "\n".join(lines) + "\n"


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"seeds {args.seeds!r} must be comma-separated integers") from None
    results = {"closed": {}, "open": {}}
    with tempfile.TemporaryDirectory(prefix="mlperf-ttt.") as scratch:
        scratch = Path(scratch)
        for division in results:
            system = scratch / f"demo-{division}.json"
            system.write_text(json.dumps(describe_local(org="DEMO", division=division, notes=DEMO_NOTE,
                                                             system_name="DEMO time to target")))
        for seed in seeds:  # interleaved, so that a change in the machine's load hits both divisions alike
            for division in results:
                overrides = CLOSED_ON_OPEN_DATA[args.bench] if division == "closed" else []
                results[division][seed] = train(division, args.bench, seed, scratch / f"demo-{division}.json",
                                                 scratch / f"{division}-{seed}.txt", overrides)
                print(f"{division} seed {seed}: {results[division][seed]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"time_to_target_{args.bench}.json", json.dumps(results, indent=2) + "\n")
    report = table(args.bench, results)
    atomic_write_text(args.out / f"time_to_target_{args.bench}.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
