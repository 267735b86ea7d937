"""`make submit`: plan the runs in OUT, train each one that does not count yet, then package, check, score, archive.

    python -m mlperf_submission.compliance submit --division closed --bench resnet \
        [--preset smoke] [--system NAME|FILE] [--data DIR] [--ckpt PHASE1] [--runs 5] [--out DIR]
        [--seeds 1,2,3,4,5] [--force]
    python -m mlperf_submission.compliance run --division closed --bench resnet --index I --out DIR [same options]

`submit` writes OUT/plan.json first (seeds drawn up front), trains the runs one after the other into OUT/runs
(each log checked by the official compliance checker as it lands), then packages OUT. Interrupted (SIGINT,
SIGTERM), it stops the current run, which then does not count, and exits 130 or 143; the same command again
keeps every run that passed and matches the plan and redoes the rest (`compliance/runs.py` has the layout).
`run` trains run I of the plan in OUT (writing the plan first if it is the first), for one job per run;
`make package OUT=DIR` packages once all runs are there. With no --data the runs use the built-in synthetic
data at the `smoke` preset, on a description of this machine, and everything written says it is a
demonstration, not a valid MLPerf result.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from ..closed.bert import presets as bert_presets
from ..common.cli import UserError
from ..common.run import BENCHMARKS, DIVISIONS
from ..systems import DEMO_NOTE
from . import package, report, runs, tools
from .plan import PLAN_NAME, RUNS_DIR, Request, system_file
from .plan import request as build_request


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
    p.add_argument("--out", type=Path, help="the submission folder: new, or one to resume "
                                             "(default for submit: out/<div>-<bench>-<time>)")
    p.add_argument("--org", default="DEMO", help="submitter name for the generated demo system description")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun, data-parallel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field (repeatable)")


def add_submit_arguments(p) -> None:
    add_arguments(p)
    p.add_argument("--force", action="store_true", help="start OUT over: remove its plan, runs and package")


def add_run_arguments(p) -> None:
    add_arguments(p)
    p.add_argument("--index", type=int, required=True, help="which run of the plan, 0-based")
    p.add_argument("--launcher", default="", help="launch the trainer with this instead of python (e.g. "
                   "'torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 "
                   "--rdzv_id=JOB'): the command to run on every node")
    p.add_argument("--node", type=int, default=0, help="this node's number in a multi-node run: node 0 keeps the "
                   "books (lock, record, compliance check), the others only launch their share")


def request(args) -> Request:
    """What the arguments ask for; bad input is a UserError before anything is written."""
    count = args.runs or tools.REQUIRED_RUNS[args.bench]
    seeds = None
    if args.seeds:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise UserError(f"seeds {args.seeds!r} must be comma-separated integers") from None
        if len(seeds) != count or len(set(seeds)) != count:
            raise UserError(f"give {count} distinct seeds, one per run (got {args.seeds!r})")
    return build_request(division=args.division, benchmark=args.bench, preset=args.preset,
                         overrides=tuple(args.overrides), system=args.system, org=args.org, data=args.data,
                         ckpt=args.ckpt, runs=count, seeds=seeds)


def command_line(args, out: Path, target: str = "submit") -> str:
    """The command that resumes this one: make's, or python's when it has --set overrides (make has no variable
    for them)."""
    if args.overrides or getattr(args, "launcher", ""):
        argv = ["python", "-m", "mlperf_submission.compliance", target, "--division", args.division, "--bench",
                args.bench]
        for flag, value in (("--preset", args.preset), ("--system", args.system), ("--data", args.data),
                            ("--ckpt", args.ckpt), ("--runs", args.runs or ""), ("--seeds", args.seeds),
                            ("--nproc", args.nproc if args.nproc > 1 else ""), ("--index", getattr(args, "index", "")),
                            ("--launcher", getattr(args, "launcher", ""))):
            if value != "" and value is not None:
                argv += [flag, str(value)]
        for o in args.overrides:
            argv += ["--set", o]
        return shlex.join([*argv, "--out", str(out)])
    parts = [f"make {target} DIVISION={args.division} BENCH={args.bench}"]
    for name, value in (("PRESET", args.preset), ("SYSTEM", args.system), ("DATA", args.data), ("CKPT", args.ckpt),
                        ("RUNS", args.runs or ""), ("SEEDS", args.seeds),
                        ("NPROC", args.nproc if args.nproc > 1 else ""),
                        ("INDEX", getattr(args, "index", ""))):
        if value != "" and value is not None:
            parts.append(f"{name}={shlex.quote(str(value))}")
    parts.append(f"OUT={shlex.quote(str(out))}")
    return " ".join(parts)


def main(args) -> int:
    req = request(args)
    out = args.out or Path("out") / f"{args.division}-{args.bench}-{time.strftime('%Y%m%d-%H%M%S')}"
    with runs.session(out, command_line(args, out)) as session:
        plan = session.settle(req, force=args.force, code_commit=package.git_commit())
        print(f"== {args.division} {args.bench}: {plan.runs} runs of preset {plan.preset} on "
              f"{'built-in synthetic data (DEMONSTRATION)' if plan.demo else plan.data}, system "
              f"{plan.system_name}, seeds {','.join(map(str, plan.seeds))}; plan in {out / PLAN_NAME}", flush=True)
        if plan.division == "closed" and plan.benchmark == "bert" and not plan.demo and (
                warning := bert_presets.rcp_warning(plan.preset, plan.overrides)):
            print(warning, flush=True)
        session.train_all(nproc=args.nproc)
        session.signals.during = "packaging"
        verdict, scores = package.package_plan(out, plan)
        page = report.build(subs=[out / args.division], benches=[], out=out / "report")
    if session.status is not None:
        return session.status
    print((out / "score.md").read_text())
    print(f"submission: {out}  (archive: {next(out.glob('*.tar.gz')).name}, results page: {page})")
    if plan.demo:
        print(f"NOTE: {DEMO_NOTE}.")
    print(tools.PACKAGE_SUCCESS if verdict.passed else "PACKAGE CHECKER FOUND ERRORS")
    return 0 if verdict.passed and all(s.valid for s in scores) else 1


def run_main(args) -> int:
    """`make run INDEX=i`: run i of OUT's plan (the plan written first by whichever job comes first)."""
    if args.out is None:
        raise UserError("give OUT=<the submission folder shared by the jobs>")
    req = request(args)
    if not 0 <= args.index < req.runs:
        raise UserError(f"INDEX={args.index} is not a run of the plan: give 0..{req.runs - 1}")
    log = runs.run_paths(args.out, args.index).log
    with runs.session(args.out, command_line(args, args.out, "run")) as session:
        plan = session.settle(req, code_commit=package.git_commit())
        if args.node > 0:  # another node of a multi-node run: its share of the ranks, no bookkeeping
            cmd = runs.train_command(plan, args.index, system=system_file(args.out, plan), log=log,
                                     nproc=args.nproc, launcher=args.launcher)
            session.signals.during = f"node {args.node}'s share of run {args.index + 1}"
            ended = runs.tee(cmd, args.out / RUNS_DIR / f".result_{args.index}.node{args.node}.log",
                             session.signals)
            session.signals.check()
            return ended.status
        record = runs.train_run(args.out, plan, args.index, session.signals, nproc=args.nproc,
                                launcher=args.launcher)
    if session.status is not None:
        return session.status
    print(f"run {args.index + 1}/{plan.runs} ({log}) counts: seed {record['seed']}, {record['seconds']:.1f} s, "
          f"compliance PASS. {len(runs.missing_runs(args.out, plan))} run(s) of {plan.runs} still to do before "
          f"`make package OUT={args.out}`")
    return 0
