"""Rebuild compliance/result_ids.json from a checkout of mlcommons/training_results_v1.1.

    python -m mlperf_submission.compliance.audit.build_ids RESULTS

One entry per systems/*.json (92: 86 closed, 6 open), numbered from 1.1-2000 by the inference of
../shared/MLPERF_V11.md section 1c, each marked inferred with its reasoning, with the olympic minutes of its
ResNet and BERT logs (about 25 s on one core of a 2-core AMD EPYC).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...common.cli import atomic_write_text
from .. import score as scoring
from .. import tools
from .ids import FIRST_ID, REGISTRY

AVAILABLE = ("available", "onprem", "cloud")   # the v1.1 status values of the Available category
GRAPHCORE_OPEN = ("ipu-pod128-POPART-open", "ipu-pod16-POPART-open", "ipu-pod64-POPART-open")


def _accelerators(desc: dict) -> int:
    try:
        return int(desc["number_of_nodes"]) * int(desc["accelerators_per_node"])
    except (KeyError, TypeError, ValueError):
        return 0


def numbered(rows: list[dict]) -> list[dict]:
    """The rows in ID order: closed before open, available before research, submitter, size, file name;
    Graphcore's open rows in file-name order (the reading of the page that the registry has kept)."""
    def key(r):
        size = 0 if r["system"] in GRAPHCORE_OPEN else r["accelerators"]
        return (r["division"] != "closed", r["status"] not in AVAILABLE, r["submitter"], size, r["system"])
    return sorted(rows, key=key)


REASON = ("numbering: closed before open, then available (onprem, cloud, available) before research, submitters "
          "alphabetically, within a submitter by accelerator count then system file name, from 1.1-2000 over the 92 "
          "systems/*.json of training_results_v1.1 (MLPERF_V11.md 1c); it fits Graphcore's page (closed ResNet "
          "2040/2042/2044/2045, open 2087-2089) but no source states it")
GRAPHCORE_OPEN_REASON = ("numbering as above; inside Graphcore's open set the order is unknown: file-name order "
                         "(pod128, pod16, pod64) is kept, which fits the page's listing '2088, 2089, 2087'; size "
                         "order would give 2087 = POD16")


def build(results_root: Path) -> dict:
    """The registry for a checkout of mlcommons/training_results_v1.1: every systems/*.json, numbered, with the
    olympic minutes of its ResNet and BERT logs."""
    rows = []
    for desc_file in sorted(Path(results_root).glob("*/systems/*.json")):
        desc = json.loads(desc_file.read_text())
        submitter, system = desc_file.parts[-3], desc_file.stem
        benches = {}
        for bench in tools.REQUIRED_RUNS:
            folder = desc_file.parents[1] / "results" / system / bench
            if folder.is_dir():
                # A folder without logs: the snapshot lacks them (large files), the result is still a row's.
                logs = any(folder.glob("result_*.txt"))
                minutes = scoring.score_benchmark(folder, desc).minutes if logs else None
                benches[bench] = {"minutes": None if minutes is None else round(minutes, 3),
                                  "results_path": f"{submitter}/results/{system}/{bench}"}
        rows.append({"submitter": submitter, "division": desc.get("division", ""), "status": desc.get("status", ""),
                     "system": system, "system_name": desc.get("system_name", ""),
                     "accelerators": _accelerators(desc), "benchmarks": benches})
    # What the registry already says about an ID it maps to the same system (Graphcore's page, claims) is kept.
    before = json.loads(REGISTRY.read_text()) if REGISTRY.is_file() else {}
    known = {r["id"]: r for r in before.get("results", [])}
    results = []
    for i, row in enumerate(numbered(rows)):
        rid = f"1.1-{FIRST_ID + i}"
        reason = GRAPHCORE_OPEN_REASON if row["system"] in GRAPHCORE_OPEN else REASON
        certain = (f"a {row['submitter']} v1.1 {row['division']} system row (its systems/*.json); the minutes are "
                   "those of its logs")
        old = known.get(rid, {})
        if old.get("system") == row["system"]:
            certain = old["certain"]
            extra = old["source"].split("; ", 1)[1] if "; " in old["source"] else ""
            reason = reason + (f"; {extra}" if extra and extra not in reason else "")
        results.append({"id": rid, **row, "mapping": "inferred", "certain": certain, "source": reason})
    return {"about": ABOUT, "sources": before.get("sources", {}), "results": results}


ABOUT = ("MLPerf Training v1.1 result IDs, one per system row (92: 86 closed, 6 open), each with submitter, "
         "division, status, system (the systems/<system>.json and results/<system>/ name in "
         "mlcommons/training_results_v1.1), accelerators and its ResNet and BERT results (benchmarks: minutes and "
         "results_path). Every mapping is 'inferred' (reasoning in 'source'): no public source with a per-ID table "
         "was found (shared/MLPERF_V11.md section 1c). 'minutes', the published figure `make audit RESULT_ID=` "
         "compares with, is the olympic mean of the published logs by the official v1.1 rule, to 3 decimals "
         "(null where the logs are absent from the snapshot), so a match says the audited logs score as the "
         "published ones do. Built with `python -m mlperf_submission.compliance.audit.build_ids <checkout>` from "
         "training_results_v1.1 at ebe92f8.")


def write(results_root: Path) -> Path:
    data = build(results_root)
    lines = ",\n".join("    " + json.dumps(r) for r in data["results"])
    head = f'  "about": {json.dumps(data["about"])},\n  "sources": {json.dumps(data["sources"], indent=4)},\n'
    atomic_write_text(REGISTRY, "{\n" + head + f'  "results": [\n{lines}\n  ]\n}}\n')
    return REGISTRY


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m mlperf_submission.compliance.audit.build_ids <checkout of training_results_v1.1>")
    print(write(Path(sys.argv[1])))
