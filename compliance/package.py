"""Assemble result logs into the official submission layout, check it, score it and archive it.

    python -m mlperf_submission.compliance package --out OUT      (`make package OUT=`: the runs of OUT's plan)
    python -m mlperf_submission.compliance package --division closed --benchmark resnet \
        --system systems/mybox.json --logs runs/result_*.txt --out out/mysub [--rcp-bypass REASON]

writes, all at once (a temporary folder renamed into place):
    OUT/<division>/<org>/systems/<system>.json
    OUT/<division>/<org>/results/<system>/<benchmark>/result_<i>.txt
    OUT/<division>/<org>/benchmarks/<benchmark>/implementations/<impl>/   code snapshot + README
    OUT/package_checker.log, OUT/score.json, OUT/score.md, OUT/manifest.sha256
    OUT/<org>-<division>-<system>-<benchmark>.tar.gz                       the tree and the manifest
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

from .. import benchmarks
from ..common.cli import UserError, atomic_dir, sha256_file
from ..common.evidence import git_commit
from ..common.run import BENCHMARKS, DIVISIONS, QUALITY_TARGETS
from ..systems import DEMO_NOTE
from ..systems import load as load_system
from . import disclosure, runs, tools
from . import score as scoring
from .plan import DEMO_RCP_REASON, NOT_PACKAGE, Plan, load_plan, system_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIP_PARTS = {".git", ".venv", "out", "__pycache__", ".pytest_cache", ".ruff_cache", "build"}


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, type=Path, help="a new folder for the package, or alone: a submission "
                   "folder with a plan (`make submit`/`make run`), packaged in place once all its runs count")
    p.add_argument("--division", choices=DIVISIONS)
    p.add_argument("--benchmark", choices=BENCHMARKS)
    p.add_argument("--system", help="system description: a JSON path or a name in systems/")
    p.add_argument("--logs", nargs="+", type=Path, help="the result logs, one per run")
    p.add_argument("--impl", default="pytorch", help="implementation folder name under benchmarks/")
    p.add_argument("--rcp-bypass", metavar="REASON", default="",
                   help="record the official RCP bypass for this benchmark, with the reason in the README")
    p.add_argument("--demo", action="store_true", help="label everything as a demonstration, not a result")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unnamed"


def source_files() -> list[Path]:
    """The package's source files as they ran: what git tracks plus new files it does not ignore, or else every
    file outside build folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True, check=True)
        files = [REPO_ROOT / f for f in out.stdout.decode().split("\0") if f]
        if files:
            return [f for f in files if f.is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return [p for p in REPO_ROOT.rglob("*") if p.is_file() and not SKIP_PARTS & set(p.relative_to(REPO_ROOT).parts)]


def open_changes(benchmark: str) -> str:
    """What the open division changes, in the words of the open presets' docstring (after its command)."""
    doc = benchmarks.get("open", benchmark).about
    paragraphs = doc.strip().split("\n\n")
    return "\n\n".join(p for p in paragraphs[1:] if not p.startswith("    "))


def implementation_readme(benchmark: str, division: str, system_stem: str, demo: bool, commit: str,
                          disclosures: tuple[str, ...] = ()) -> str:
    """The benchmark README, following the MLCommons implementation template's sections; a closed one adds the
    disclosure the rules ask of a new optimizer implementation (compliance/disclosure.py) and `disclosures`,
    lines about these runs (seeds, the phase-1 checkpoint)."""
    model = {"resnet": "ResNet-50 v1.5", "bert": "BERT-Large (phase 2 pretraining)"}[benchmark]
    dataset = {"resnet": "ImageNet ILSVRC2012 (1,281,167 training, 50,000 validation images)",
               "bert": "Wikipedia 2020/01/01, MLPerf reference TFRecords (seq 512, 76 predictions)"}[benchmark]
    metric = {"resnet": "top-1 accuracy", "bert": "masked-LM accuracy"}[benchmark]
    lines = [
        f"# MLPerf Training v1.1: {model}, {division} division",
        "",
        *(["**DEMONSTRATION**: " + DEMO_NOTE + ".", ""] if demo else []),
        f"Code: the `mlperf_submission` package at commit {commit}.",
        "",
        "## 1. Problem",
        f"{model}, trained to {metric} {QUALITY_TARGETS[benchmark]}.",
        "",
        "## 2. Directions",
        "```",
        "make setup",
        f"make submit DIVISION={division} BENCH={benchmark} SYSTEM={system_stem} PRESET=<preset> DATA=<path>",
        "```",
        "",
        "## 3. Dataset/Environment",
        dataset + ("; this demonstration used the package's built-in synthetic data instead." if demo else "."),
        "",
        "## 4. Model",
        f"{model} as defined by the MLCommons reference; see closed/{benchmark}/model.py.",
        *([f"Open-division changes (open/{benchmark}/presets.py):", "", open_changes(benchmark)] if division == "open"
          else []),
        "",
        "## 5. Quality",
        f"Target: {metric} >= {QUALITY_TARGETS[benchmark]}, evaluated at the cadence of the closed rules.",
        *(["", "## 6. These runs", "", *disclosures] if disclosures else []),
        *(["", "## 7. Implementation disclosure", "", disclosure.section(benchmark)] if division == "closed" else []),
    ]
    return "\n".join(lines) + "\n"


def build(*, division: str, benchmark: str, system: str, logs: list[Path], out: Path, impl: str = "pytorch",
          rcp_bypass: str = "", demo: bool = False,
          seeds_drawn: bool = False) -> tuple[tools.PackageVerdict, list[scoring.BenchmarkScore]]:
    """Assemble, check, score and archive, all at once or not at all; seeds not drawn by the package are flagged."""
    stem, system_desc = load_system(system)
    if system_desc["division"] != division:
        raise UserError(f"system {stem} is described for division {system_desc['division']!r}, not {division!r}")
    missing = [str(p) for p in logs if not Path(p).is_file()]
    if missing:
        raise UserError(f"result log(s) not found: {', '.join(missing)}")
    need = tools.REQUIRED_RUNS[benchmark]
    if len(logs) != need:
        raise UserError(f"{benchmark} needs exactly {need} result logs, got {len(logs)}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: choose a new --out or remove it")
    org = safe_name(system_desc["submitter"])
    commit, disclosures = git_commit(), disclosure.run_lines(logs, seeds_drawn=seeds_drawn)
    with atomic_dir(out) as tmp:
        sub = tmp / division / org
        (sub / "systems").mkdir(parents=True)
        (sub / "systems" / f"{stem}.json").write_text(json.dumps(system_desc, indent=2) + "\n")
        results = sub / "results" / stem / benchmark
        results.mkdir(parents=True)
        for i, log in enumerate(logs):
            shutil.copyfile(log, results / f"result_{i}.txt")
        if rcp_bypass:
            # The checker compares each line with its newline still on: no trailing newline (CHECKERS.md §8.1).
            (results / "package_checker_params").write_text("rcp-bypass")
        code = sub / "benchmarks" / benchmark / "implementations" / impl
        for f in source_files():
            dest = code / f.relative_to(REPO_ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        (code / "README.md").write_text(implementation_readme(benchmark, division, stem, demo, commit, disclosures))
        notes = [f"# {org} {division} {benchmark} on {stem}", ""]
        if demo:
            notes += [f"**{DEMO_NOTE}.**", ""]
        if rcp_bypass:
            notes += [f"RCP check bypassed (`package_checker_params`: rcp-bypass). Reason: {rcp_bypass}", ""]
        notes += [f"Code commit: {commit}", "", *(f"{line}\n" for line in disclosures)]
        (sub / "README.md").write_text("\n".join(notes))

        verdict = tools.run_package_checker(sub, rcp_bypass=bool(rcp_bypass))
        (tmp / "package_checker.log").write_text(verdict.log)
        scores = scoring.score_tree(sub)
        summary = tools.run_result_summarizer(sub) if verdict.passed else []
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        report = "\n".join(notes) + "\n" + scoring.table(scores) + "\n\nPackage checker: " + (
            tools.PACKAGE_SUCCESS if verdict.passed else "ERRORS\n" + "\n".join(verdict.errors)) + "\n"
        (tmp / "score.md").write_text(report)
        (tmp / "score.json").write_text(scoring.to_json(scores) + "\n")

        tree_files = sorted(p for p in (tmp / division).rglob("*") if p.is_file())
        manifest = "".join(f"{sha256_file(p)}  {p.relative_to(tmp).as_posix()}\n" for p in tree_files)
        (tmp / "manifest.sha256").write_text(manifest)
        archive = tmp / f"{org}-{division}-{stem}-{benchmark}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tmp / division, arcname=division)
            tar.add(tmp / "manifest.sha256", arcname="manifest.sha256")
    return verdict, scores


def package_plan(out: Path, plan: Plan) -> tuple[tools.PackageVerdict, list[scoring.BenchmarkScore]]:
    """Package the runs of OUT's plan into OUT, beside the plan and the runs, once every run counts.

    The package is built whole in a temporary folder inside OUT (removed if anything fails, e.g. a full disk),
    then its entries replace the previous package's, with signals held off for those few renames."""
    missing = runs.missing_runs(out, plan)
    if missing:
        raise UserError(f"{out} is not ready to package: {'; '.join(missing)}. Train them with `make submit` "
                        f"(the same arguments and OUT) or `make run INDEX=i OUT={out}`")
    for stale in out.glob(".package.*"):  # left by a process killed while packaging
        shutil.rmtree(stale, ignore_errors=True)
    fresh = out / f".package.{os.getpid()}"
    try:
        verdict, scores = build(
            division=plan.division, benchmark=plan.benchmark, system=str(system_file(out, plan)),
            logs=[runs.run_paths(out, i).log for i in range(plan.runs)], out=fresh,
            rcp_bypass=DEMO_RCP_REASON if plan.demo else "", demo=plan.demo,
            seeds_drawn=plan.seeds_drawn)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for old in out.iterdir():
                if old.name not in NOT_PACKAGE and old != fresh:
                    shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            for entry in fresh.iterdir():
                os.replace(entry, out / entry.name)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return verdict, scores


def main(args) -> int:
    if args.logs is None:
        with runs.disk_errors(str(args.out), f"`make package OUT={args.out}`"):
            plan = load_plan(args.out)
            verdict, scores = package_plan(args.out, plan)
        print(scoring.table(scores))
        print(tools.PACKAGE_SUCCESS if verdict.passed else
              "PACKAGE CHECKER FOUND ERRORS:\n" + "\n".join(verdict.errors))
        print(f"package written to {args.out}")
        return 0 if verdict.passed and all(s.valid for s in scores) else 1
    missing = [name for name in ("division", "benchmark", "system") if not getattr(args, name)]
    if missing:
        raise UserError(f"with --logs, give --{' --'.join(missing)} too (or only --out DIR to package a plan's runs)")
    verdict, scores = build(division=args.division, benchmark=args.benchmark, system=args.system, logs=args.logs,
                            out=args.out, impl=args.impl, rcp_bypass=args.rcp_bypass, demo=args.demo)
    print(scoring.table(scores))
    print(tools.PACKAGE_SUCCESS if verdict.passed else "PACKAGE CHECKER FOUND ERRORS:\n" + "\n".join(verdict.errors))
    print(f"package written to {args.out}")
    return 0 if verdict.passed and all(s.valid for s in scores) else 1
