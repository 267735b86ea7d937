"""The v1.1 result-ID registry (compliance/result_ids.json): which system row a result ID is taken to mean.

Rebuilt from a results checkout with `python -m mlperf_submission.compliance.audit.build_ids RESULTS`.

No public source gives the per-ID mapping (../shared/MLPERF_V11.md section 1c): every entry is `inferred`,
by the numbering that fits Graphcore's page (1.1-2000 upwards over the 92 system descriptions, closed
before open, available before research, submitters alphabetically, within a submitter by accelerator
count then file name; Graphcore's open rows keep the page's file-order reading). Each entry says so in
`mapping`, gives its reasoning in `source`, and `make audit RESULT_ID=` and `make reproduce RESULT_ID=` print
which system the ID was taken to mean every time they resolve one. The minutes are the olympic score of
the published logs (recomputed from them, so a match says the audited logs score as published).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from ...common.cli import UserError

REGISTRY = Path(__file__).parent.parent / "result_ids.json"
FIRST_ID = 2000


@functools.cache
def registry() -> dict[str, dict]:
    """The result-ID registry shipped with the package, by ID."""
    return {r["id"]: r for r in json.loads(REGISTRY.read_text())["results"]}


def meaning(entry: dict) -> str:
    """The sentence said every time an ID is resolved: which system it was taken to mean, and how sure."""
    benches = ", ".join(entry["benchmarks"]) or "no ResNet or BERT result"
    return (f"{entry['id']} taken to mean {entry['submitter']} {entry['division']} {entry['system']} "
            f"({entry['system_name']}, {entry['accelerators']} accelerators; {benches}); the mapping is "
            f"{entry['mapping']}: {entry['source']}")


def get(result_id: str) -> dict:
    """The registry entry of a result ID, refused with a one-line error when it is unknown or has no ResNet or
    BERT result."""
    known = registry()
    if result_id not in known:
        raise UserError(f"unknown result ID {result_id!r}: {REGISTRY.name} knows 1.1-{FIRST_ID}..1.1-"
                        f"{FIRST_ID + len(known) - 1} (the v1.1 system rows)")
    entry = known[result_id]
    if not entry["benchmarks"]:
        raise UserError(f"{meaning(entry)}. That system has no ResNet or BERT result to audit or reproduce")
    return entry | {"meaning": meaning(entry)}


def lookup(result_id: str, benchmark: str = "") -> dict:
    """A registry entry narrowed to one benchmark: the entry's fields plus benchmark, minutes and results_path.
    `benchmark` may be left empty when the system has one ResNet or BERT result."""
    entry = get(result_id)
    benches = entry["benchmarks"]
    if not benchmark:
        if len(benches) > 1:
            raise UserError(f"{result_id} ({entry['system']}) has {' and '.join(benches)} results: name one "
                            "with BENCH=resnet or BENCH=bert")
        benchmark = next(iter(benches))
    if benchmark not in benches:
        raise UserError(f"{result_id} ({entry['system']}) has no {benchmark} result, only {', '.join(benches)}")
    return entry | {"benchmark": benchmark, **benches[benchmark]}


def locate(entry: dict, results_root: Path | None) -> Path:
    """The submitter folder that holds a registry entry's logs, under a checkout of the results repo; says on
    stderr which system the ID was taken to mean and that the mapping is inferred."""
    path = entry.get("results_path") or f"{entry['submitter']}/results/{entry['system']}"
    if results_root is None:
        raise UserError(f"{entry['id']}: give SUB=<the {entry['submitter']} submitter folder> or RESULTS=<a checkout "
                        f"of mlcommons/training_results_v1.1> holding {path}")
    folder = Path(results_root) / entry["submitter"]
    if not (folder / "results").is_dir():
        raise UserError(f"{entry['id']}: no {folder}/results; give SUB=<submitter folder> or RESULTS=<a checkout of "
                        f"mlcommons/training_results_v1.1> holding {path}")
    print(f"result ID: {meaning(entry)}", file=sys.stderr)
    return folder


def compare(benchmarks: list, entry: dict) -> dict:
    """The audited scores of the entry's system against its published minutes, per benchmark it has."""
    rows = []
    for bench, published in entry["benchmarks"].items():
        found = [b for b in benchmarks if b.score.system == entry["system"] and b.score.benchmark == bench]
        if not found:
            raise UserError(f"{entry['id']} is {bench} on {entry['system']} ({entry['mapping']} mapping); "
                            f"the audited tree has no results/{entry['system']}/{bench}")
        minutes = found[0].score.minutes
        want = published["minutes"]
        rows.append({"benchmark": bench, "published_minutes": want, "audited_minutes": minutes,
                     "match": None if want is None else minutes is not None and f"{minutes:.3f}" == f"{want:.3f}"})
    first = rows[0] if rows else {}
    return {"id": entry["id"], "system": entry["system"], "division": entry["division"], "mapping": entry["mapping"],
            "source": entry["source"], "meaning": meaning(entry), "comparisons": rows,
            "benchmark": first.get("benchmark"), "published_minutes": first.get("published_minutes"),
            "audited_minutes": first.get("audited_minutes"),
            "match": all(r["match"] is not False for r in rows) and any(r["match"] for r in rows)}
