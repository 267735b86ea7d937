"""The official MLPerf tools behind one command line (ruleset 1.1.0).

    python -m mlperf_submission.compliance check LOG...            compliance checker, one verdict per log
    python -m mlperf_submission.compliance systems [FILE...]       system description checker
    python -m mlperf_submission.compliance score DIR [--json F]     olympic-mean minutes and RCP verdicts
    python -m mlperf_submission.compliance package ...             assemble, check, score and archive
    python -m mlperf_submission.compliance submit ...              train RUNS runs into OUT (resumable), then package
    python -m mlperf_submission.compliance run --index I --out OUT ...  train run I of OUT's plan (one job per run)
    python -m mlperf_submission.compliance audit SUB [--result-id ID]  re-check and re-score, both tools' verdicts
    python -m mlperf_submission.compliance reproduce --result-id ID    re-run a published or audited result
    python -m mlperf_submission.compliance report [SUB...] [--bench F]  results page (HTML, PNG plots)
    python -m mlperf_submission.compliance rehearse --bench B --preset P  a real preset for a few steps, forecast

Exit status 0 when everything passes, 1 when a verdict fails, 2 on bad input, 130 or 143 when SIGINT or
SIGTERM interrupted submit or run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common.cli import ArgumentParser, atomic_write_text, entry_point
from . import audit, package, rehearse, report, reproduce, submit, tools
from . import score as scoring


def cmd_check(args) -> int:
    failed = 0
    for log in args.logs:
        v = tools.check_log(log)
        print(f"{'PASS' if v.passed else 'FAIL'} {log}")
        for line in v.summary_lines():
            print(f"    {line}")
        if v.round_note:
            print(f"    note: PASS under the v1.1 round's tool: {v.round_note}")
        failed += not v.passed
    return 1 if failed else 0


def cmd_systems(args) -> int:
    files = args.files or sorted(Path(__file__).resolve().parents[1].joinpath("systems").glob("*.json"))
    failed = 0
    for f in files:
        ok, reasons = tools.check_system(f)
        print(f"{'PASS' if ok else 'FAIL'} {f}")
        for r in reasons:
            print(f"    {r}")
        failed += not ok
    return 1 if failed else 0


def cmd_score(args) -> int:
    scores = scoring.score_tree(args.dir, verdict=args.verdict)
    print(scoring.table(scores))
    if args.json:
        atomic_write_text(args.json, scoring.to_json(scores))
    return 0 if all(s.valid for s in scores) else 1


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m mlperf_submission.compliance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="official compliance checker on result logs")
    c.add_argument("logs", nargs="+", type=Path)
    c.set_defaults(func=cmd_check)
    s = sub.add_parser("systems", help="official system description checker")
    s.add_argument("files", nargs="*", type=Path)
    s.set_defaults(func=cmd_systems)
    sc = sub.add_parser("score", help="olympic-mean minutes and RCP verdict per system and benchmark")
    sc.add_argument("dir", type=Path)
    sc.add_argument("--verdict", choices=("auto", "current", "round"), default="auto",
                    help="compliance verdict to score with: 4.1.68 (current), the v1.1 round's tool (round), "
                         "or round only where the one failure is a known difference (auto)")
    sc.add_argument("--json", type=Path, help="also write the scores as JSON here")
    sc.set_defaults(func=cmd_score)
    pk = sub.add_parser("package", help="assemble, check, score and archive a submission")
    package.add_arguments(pk)
    pk.set_defaults(func=package.main)
    sm = sub.add_parser("submit", help="train the runs, then package them; the same command again resumes")
    submit.add_submit_arguments(sm)
    sm.set_defaults(func=submit.main)
    rn = sub.add_parser("run", help="train one run of a submission folder's plan (one job per run)")
    submit.add_run_arguments(rn)
    rn.set_defaults(func=submit.run_main)
    au = sub.add_parser("audit", help="re-check and re-score a submission folder or archive, as 4.1.68 and the "
                                      "v1.1 round's tool judge it")
    audit.add_arguments(au)
    au.set_defaults(func=audit.main)
    rp = sub.add_parser("reproduce", help="re-run a published or audited result with our presets, and compare")
    reproduce.add_arguments(rp)
    rp.set_defaults(func=reproduce.main)
    rr = sub.add_parser("report", help="results page: throughput from `make bench`, time to result and eval "
                                       "curves from submission folders")
    report.add_arguments(rr)
    rr.set_defaults(func=report.main)
    rh = sub.add_parser("rehearse", help="a real preset end to end for a few steps: stages timed, RCP forecast")
    rehearse.add_arguments(rh)
    rh.set_defaults(func=rehearse.main)
    return p


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
