"""`make submit`: train RUNS fresh runs, check each log as it lands, then package, check, score, archive.

    python -m mlperf_submission.compliance submit --division closed --bench resnet \
        [--preset smoke] [--system NAME|FILE] [--data DIR] [--ckpt PHASE1] [--runs 5] [--out DIR] [--seeds 1,2,3,4,5]

With no --data the runs use the built-in synthetic data at the `smoke` preset, on a description of
this machine, and everything written says it is a demonstration, not a valid MLPerf result.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlperf_submission.closed.bert import phase1
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.run import BENCHMARKS, DIVISIONS
from mlperf_submission.compliance import package, report, tools
from mlperf_submission.systems import DEMO_NOTE, describe_local
from mlperf_submission.systems import load as load_system

DEMO_SYSTEM = "demo-local"
DEMO_RCP_REASON = ("a demonstration on built-in synthetic data at a scaled size: its convergence cannot be "
                   "compared with the reference convergence points, which are for the real dataset and model")


def add_arguments(p) -> None:
    p.add_argument("--division", required=True, choices=DIVISIONS)
    p.add_argument("--bench", required=True, choices=BENCHMARKS)
    p.add_argument("--preset", default="", help="preset name (default: smoke without --data)")
    p.add_argument("--system", default="", help="system description (default: this machine, as a demo)")
    p.add_argument("--data", default="", help="prepared dataset folder (default: built-in synthetic data)")
    p.add_argument("--ckpt", default="", help="BERT phase-1 checkpoint: TF prefix or converted .pt (closed: "
                   "required with --data; default for the demo: the smoke phase-1 checkpoint, made once)")
    p.add_argument("--runs", type=int, default=0, help="number of runs (default: what the rules require)")
    p.add_argument("--seeds", default="", help="comma-separated seeds, one per run (default: random)")
    p.add_argument("--out", type=Path, help="a new folder for the submission (default: out/<div>-<bench>-<time>)")
    p.add_argument("--org", default="DEMO", help="submitter name for the generated demo system description")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun, data-parallel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field (repeatable)")


def train_command(args, *, preset: str, seed: int, system_file: Path, log: Path, ckpt: str = "") -> list[str]:
    module = f"mlperf_submission.{args.division}.{args.bench}.train"
    launcher = [sys.executable, "-m", module] if args.nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", module]
    cmd = [*launcher, "--preset", preset, "--seed", str(seed), "--system", str(system_file),
           "--result-log", str(log)]
    if args.data:
        cmd += ["--data", args.data]
    if ckpt:
        cmd += ["--ckpt", ckpt]
    for o in args.overrides:
        cmd += ["--set", o]
    return cmd


def demo_system(org: str, division: str) -> dict:
    """A description of this machine for a demonstration on synthetic data, saying it is not a valid result."""
    return describe_local(
        org=org, division=division, notes=DEMO_NOTE,
        system_name=f"DEMO {platform.machine()} CPU x{os.cpu_count()} (synthetic data, not a valid result)")


def run_one(args, *, preset: str, seed: int, system_file: Path, log: Path, ckpt: str = "") -> tools.LogVerdict:
    """Train one run into `log` and check the log as it lands; a failed run is a UserError."""
    started = time.time()
    proc = subprocess.run(train_command(args, preset=preset, seed=seed, system_file=system_file, log=log, ckpt=ckpt))
    if proc.returncode != 0:
        raise UserError(f"the run with seed {seed} ({log.name}) failed with exit status {proc.returncode}: "
                        "see its output")
    verdict = tools.check_log(log)
    print(f"== {log.name}: {time.time() - started:.1f} s, compliance "
          f"{'PASS' if verdict.passed else 'FAIL: ' + '; '.join(verdict.summary_lines())}", flush=True)
    return verdict


def main(args) -> int:
    demo = not args.data
    preset = args.preset or ("smoke" if demo else "")
    if args.data and not Path(args.data).exists():
        raise UserError(f"DATA path {args.data} does not exist: prepare it with `make data` first")
    if not preset:
        raise UserError("with DATA given, name a PRESET too (e.g. PRESET=1xH200): see the presets in the README")
    try:
        presets = importlib.import_module(f"mlperf_submission.{args.division}.{args.bench}.presets")
    except ModuleNotFoundError:
        raise UserError(f"the {args.division}-division {args.bench} benchmark is not in this version") from None
    if preset not in presets.PRESETS:
        raise UserError(f"unknown preset {preset!r} for {args.division} {args.bench}: "
                        f"choose one of {', '.join(presets.PRESETS)}")
    runs = args.runs or tools.REQUIRED_RUNS[args.bench]
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"seeds {args.seeds!r} must be comma-separated integers") from None
        if len(seeds) != runs or len(set(seeds)) != runs:
            raise UserError(f"give {runs} distinct seeds, one per run (got {args.seeds!r})")
    else:
        seeds = [secrets.randbelow(2**31 - 1) + 1 for _ in range(runs)]
    out = args.out or Path("out") / f"{args.division}-{args.bench}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: choose a new OUT or remove it")

    with tempfile.TemporaryDirectory(prefix="mlperf-runs.") as scratch:
        scratch = Path(scratch)
        if args.system:
            stem, system_desc = load_system(args.system)
            system_file = scratch / f"{stem}.json"
        else:
            system_desc = demo_system(args.org, args.division)
            system_file = scratch / f"{DEMO_SYSTEM}.json"
        system_file.write_text(json.dumps(system_desc, indent=2) + "\n")
        print(f"== {args.division} {args.bench}: {runs} runs of preset {preset} on "
              f"{'built-in synthetic data (DEMONSTRATION)' if demo else args.data}, system {system_file.stem}")
        ckpt = phase1.submission_checkpoint(args.division, args.bench, preset, args.overrides, args.ckpt)
        logs = []
        for i, seed in enumerate(seeds):
            log = scratch / "runs" / f"result_{i}.txt"
            print(f"== run {i + 1}/{runs}, seed {seed}", flush=True)
            run_one(args, preset=preset, seed=seed, system_file=system_file, log=log, ckpt=ckpt)
            logs.append(log)
        verdict, scores = package.build(
            division=args.division, benchmark=args.bench, system=str(system_file), logs=logs, out=out,
            rcp_bypass=DEMO_RCP_REASON if demo else "", demo=demo)

    page = report.build(subs=[out / args.division], benches=[], out=out / "report")
    print((out / "score.md").read_text())
    print(f"submission: {out}  (archive: {next(out.glob('*.tar.gz')).name}, results page: {page})")
    if demo:
        print(f"NOTE: {DEMO_NOTE}.")
    print(tools.PACKAGE_SUCCESS if verdict.passed else "PACKAGE CHECKER FOUND ERRORS")
    return 0 if verdict.passed and all(s.valid for s in scores) else 1
