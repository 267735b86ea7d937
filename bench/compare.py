"""Do two `make bench` runs agree? Per ratio, the two values side by side and whether they agree within 10 %.

    python -m mlperf_submission.bench.compare out/bench-twice/1/bench.json out/bench-twice/2/bench.json
    make bench-twice [QUICK=1 THREADS= OUT=out/bench-twice]     (runs the bench twice, then this)

Prints a Markdown table (and writes it as OUT/compare.md beside the runs with --out). A ratio that either run
marked unsettled, or could not measure, is listed as such and not judged. Exit 1 when a ratio that both runs
settled differs by more than 10 %.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..common.cli import ArgumentParser, UserError, atomic_write_text, entry_point

AGREE = 0.10  # two values agree when the larger is at most 10 % above the smaller


def load(path: Path) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a bench.json ({e})") from None
    if not str(result.get("format", "")).startswith("mlperf_submission.bench/"):
        raise UserError(f"{path}: not a bench.json (format {result.get('format')!r})")
    return result


def _shown(q: dict | None) -> str:
    if q is None or q.get("value") is None:
        return "not measured"
    spread = f" ({q['spread'][0]:.2f}-{q['spread'][1]:.2f})" if "spread" in q else ""
    return f"{q['value']:.2f}{spread}" + (" unsettled" if q.get("unsettled") else "")


def verdict(a: dict | None, b: dict | None) -> str | None:
    """"yes" / "no" for two settled values, None where either run has no settled figure."""
    if any(q is None or q.get("value") is None or q.get("unsettled") for q in (a, b)):
        return None
    lo, hi = sorted((a["value"], b["value"]))
    return "yes" if hi <= (1 + AGREE) * lo else "no"


def compare(first: dict, second: dict) -> tuple[str, int]:
    """The table of both runs' ratios, and how many settled pairs disagree."""
    one, two = ({(q["group"], q["ratio"]): q for q in run["ratios"]} for run in (first, second))
    lines = [f"Run 1: {first['started']}, commit {first['commit']}, {first['seconds']:.0f} s; "
             f"run 2: {second['started']}, commit {second['commit']}, {second['seconds']:.0f} s.", "",
             f"Spreads: run 1 {first.get('spread_kind', 'min-max of rounds')}; run 2 "
             f"{second.get('spread_kind', 'min-max of rounds')}.", "",
             "| ratio | benchmark | run 1 (spread) | run 2 (spread) | agree within 10 % |",
             "|---|---|---|---|---|"]
    disagree = 0
    for k in dict.fromkeys([*one, *two]):
        said = verdict(one.get(k), two.get(k))
        disagree += said == "no"
        lines.append(f"| {k[1]} | {k[0]} | {_shown(one.get(k))} | {_shown(two.get(k))} | "
                     f"{said or 'not judged (unsettled or not measured)'} |")
    return "\n".join(lines) + "\n", disagree


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    table, disagree = compare(load(args.first), load(args.second))
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
