"""The `audit` command line: one folder or archive, one result ID, or every submitter of a results checkout."""

from __future__ import annotations

import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ...common.cli import UserError
from .. import score as scoring
from . import ids
from .core import audit
from .render import markdown, summary_markdown, write_report, write_summary


def add_arguments(p) -> None:
    p.add_argument("sub", nargs="?", type=Path,
                   help="submitter folder, a folder of submitter folders, or a .tar.gz from `make submit`")
    p.add_argument("--result-id", default="",
                   help="a v1.1 result ID (e.g. 1.1-2040): compare with its published minutes")
    p.add_argument("--results-root", type=Path,
                   help="a checkout of mlcommons/training_results_v1.1: with --result-id, where its folder is; "
                        "alone, audit every submitter folder in it, one report each and a summary table")
    p.add_argument("--out", type=Path, help="folder for the reports (default out/audit-<name>-<time>)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for a whole checkout (--results-root alone), one submitter each (default 2)")
    p.add_argument("--verdict", choices=("auto", "current", "round"), default="auto",
                   help="compliance verdict to score with: 4.1.68 (current), the v1.1 round's tool (round), or round "
                        "only where the one failure is a known difference (auto)")


def out_folder(args, name: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.removesuffix(".tar.gz")) or "sub"
    return args.out or Path("out") / f"audit-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def audit_all(args) -> int:
    """Every submitter folder of a results checkout: a report each and the one-table summary."""
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more processes")
    started = time.perf_counter()
    subs = scoring.submitter_dirs(args.results_root)
    names = [sub.relative_to(args.results_root).as_posix() or sub.name for sub in subs]
    if args.jobs == 1:
        reports = dict(zip(names, (audit(sub, verdict=args.verdict) for sub in subs), strict=True))
    else:
        # Biggest first (by log count), so that two processes finish together.
        order = sorted(range(len(subs)), key=lambda i: -len(list(subs[i].glob("results/*/*/result_*.txt"))))
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {i: pool.submit(audit, subs[i], verdict=args.verdict) for i in order}
            reports = {names[i]: futures[i].result() for i in range(len(subs))}
    elapsed = round(time.perf_counter() - started, 1)
    md, js = write_summary(str(args.results_root), reports, elapsed, out_folder(args, "all"))
    print(summary_markdown(str(args.results_root), reports, elapsed))
    print(f"summary: {md} and {js}; one report per submitter beside them")
    return 1 if any(r.count("error") for r in reports.values()) else 0


def main(args) -> int:
    entry = ids.get(args.result_id) if args.result_id else None
    if args.sub is None and entry is None:
        if args.results_root is not None:
            return audit_all(args)
        raise UserError("give SUB=<submitter folder or .tar.gz>, RESULTS=<a results checkout>, or RESULT_ID=<a v1.1 "
                        "result ID>")
    sub = args.sub if args.sub is not None else ids.locate(entry, args.results_root)
    report = audit(sub, verdict=args.verdict, entry=entry)
    if entry and args.sub is not None:
        print(f"result ID: {entry['meaning']}", file=sys.stderr)
    md, js = write_report(report, out_folder(args, Path(sub).name))
    print(markdown(report))
    print(f"report: {md} and {js}")
    return 1 if report.count("error") else 0
