"""The audit of a folder or archive: per system and benchmark, the scorer's verdicts and the findings."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

from ...common.cli import UserError
from ...systems import DEMO_NOTE
from .. import score as scoring
from .. import tools
from ..differences import DIFFERENCES
from . import findings as fam
from . import ids
from .logs import log_division, read_log
from .manifest import manifest_findings, opened
from .model import UNITS, BenchmarkAudit, Finding, Report, RunAudit

SEVERITY_ORDER = {"error": 0, "warning": 1, "note": 2}


def olympic_convergence(runs: list[scoring.RunScore]) -> float | None:
    """The RCP checker's olympic mean of convergence points: a run that did not succeed counts as infinite;
    more than one such run leaves no mean."""
    points = sorted(r.convergence_point if r.status == "success" and r.convergence_point is not None else math.inf
                    for r in runs)
    if len(points) < 3 or sum(math.isinf(p) for p in points) > 1:
        return None
    return sum(points[1:-1]) / (len(points) - 2)


def rcp_verdicts(bench_dir: Path, score: scoring.BenchmarkScore) -> dict | None:
    """4.1.68's RCP verdict (the scorer's: pruned RCPs) beside the round's rule as far as the official checker's
    options express it (every RCP); the round's stdev rule is stated, not re-run."""
    if score.rcp is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy, inside the RCP checker, on fewer than 3 runs
        full = tools.check_rcp(bench_dir, bert_train_samples=score.bert_train_samples, rcp_pass="full_rcps")
    return {"passed": score.rcp.passed, "message": score.rcp.message, "scaling_factor": score.rcp.scaling_factor,
            "bypass_requested": tools.rcp_bypass_requested(bench_dir), "bert_train_samples": score.bert_train_samples,
            "round_passed": full.passed, "round_message": full.message, "round_scaling_factor": full.scaling_factor,
            "round_note": DIFFERENCES["RCP statistics"]["applied"]}


def published_as(submitter: str, system: str, benchmark: str) -> str:
    """The registry's result ID for a result, as text, or ''."""
    for entry in ids.registry().values():
        if entry["submitter"] == submitter and entry["system"] == system and benchmark in entry["benchmarks"]:
            return f"as {entry['id']}, {entry['mapping']} mapping"
    return ""


def audit_benchmark(bench_dir: Path, system: dict, root: Path, *, verdict: str) -> tuple[BenchmarkAudit, list[Finding]]:
    """One results/<system>/<benchmark> folder: its score, its runs' facts, and every family of findings."""
    where, bench = bench_dir.relative_to(root).as_posix(), bench_dir.name
    files = sorted(bench_dir.glob("result_*.txt"), key=lambda p: (len(p.name), p.name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy, inside the RCP checker, on fewer than 3 runs
        score = scoring.score_benchmark(bench_dir, system, verdict=verdict)
    runs = [RunAudit(r, read_log(f)) for r, f in zip(score.runs, files, strict=True)]
    seeds = fam.seed_verdicts(files, runs, score.division, root)
    common, diff = fam.hyperparameters(runs)
    rcp = rcp_verdicts(bench_dir, score)
    demo = any(DEMO_NOTE in str(v) for v in system.values())
    findings = (fam.parse_findings(where, runs) + fam.count_findings(where, bench, files)
                + fam.compliance_findings(where, runs, score.division) + fam.seed_findings(where, runs, seeds)
                + fam.hyperparameter_findings(where, diff) + fam.clock_findings(where, runs)
                + fam.convergence_findings(where, bench, runs)
                + fam.rcp_findings(where, rcp, published_as(bench_dir.parents[2].name, score.system, bench), demo))
    audit = BenchmarkAudit(
        path=where, score=score, rcp=rcp, seeds=seeds,
        convergence={"unit": UNITS[bench], "points": [r.score.convergence_point for r in runs],
                     "sources": sorted({r.score.convergence_source for r in runs if r.score.convergence_source}),
                     "olympic_mean": olympic_convergence([r.score for r in runs])},
        hyperparameters=common, hyperparameter_diff=diff, runs=runs)
    return audit, findings


def check_system_file(path: Path, root: Path) -> tuple[dict, list[Finding]]:
    where = path.relative_to(root).as_posix()
    try:
        passed, reasons = tools.check_system(path)
    except UserError as e:
        passed, reasons = False, [str(e).replace(f"{root}/", "")]
    record = {"file": where, "passed": passed, "round_passed": passed, "reasons": reasons}
    findings = [] if passed else [Finding("error", "system-description", where,
                                          "official system description checker: " + "; ".join(reasons))]
    if DEMO_NOTE in path.read_text(errors="replace"):
        findings.append(Finding("note", "demonstration", where, DEMO_NOTE))
    return record, findings


def audit_tree(root: Path, *, verdict: str = "auto") -> tuple[list[dict], list[BenchmarkAudit], list[Finding]]:
    systems, benchmarks, findings = [], [], []
    for sub in scoring.submitter_dirs(root):
        others = sorted({p.name for p in (sub / "results").glob("*/*")
                         if p.is_dir() and p.name not in tools.REQUIRED_RUNS})
        if others:
            findings.append(Finding("note", "other-benchmarks", sub.relative_to(root).as_posix() or ".",
                                    f"results for {', '.join(others)} not audited: this package knows resnet and "
                                    "bert (the package checker would check them)"))
        for system_file in sorted((sub / "systems").glob("*.json")):
            record, found = check_system_file(system_file, root)
            systems.append(record)
            findings += found
        for system_dir in sorted(p for p in (sub / "results").iterdir() if p.is_dir()):
            system_file = sub / "systems" / f"{system_dir.name}.json"
            try:
                system = json.loads(system_file.read_text())
            except (OSError, ValueError):
                system = {}
            if not system_file.is_file():
                findings.append(Finding("error", "missing-system-description", system_dir.relative_to(root).as_posix(),
                                        f"no systems/{system_dir.name}.json (the package checker crashes on this)"))
            for bench_dir in sorted(p for p in system_dir.iterdir() if p.is_dir()):
                where = bench_dir.relative_to(root).as_posix()
                if bench_dir.name not in tools.REQUIRED_RUNS:
                    continue         # another v1.1 benchmark: out of this package's scope, as in the summary
                if not any(bench_dir.glob("result_*.txt")):
                    findings.append(Finding("error", "missing-result-file", where, "no result_*.txt at all"))
                    continue
                desc = system or {"division": log_division(bench_dir), "submitter": sub.name}
                audit, found = audit_benchmark(bench_dir, desc, root, verdict=verdict)
                benchmarks.append(audit)
                findings += found
    if not benchmarks and not any(f.code == "missing-result-file" for f in findings):
        raise UserError(f"{root} holds no results/<system>/<resnet|bert>/result_*.txt")
    return systems, benchmarks, findings


def audit(sub: Path, *, verdict: str = "auto", entry: dict | None = None) -> Report:
    """Audit a folder or archive; `entry` (from the registry) adds the comparison with published minutes."""
    started = time.perf_counter()
    with opened(sub) as (root, manifest, kind):
        systems, benchmarks, findings = audit_tree(root, verdict=verdict)
        result = ids.compare(benchmarks, entry) if entry else None
    if manifest:
        findings = manifest_findings(manifest) + findings
    if result:
        for row in result["comparisons"]:
            if row["match"] is None:
                continue              # no published minutes: the snapshot lacks the logs
            findings.append(Finding(
                "note" if row["match"] else "error", "result-id-match" if row["match"] else "result-id-mismatch",
                f"results/{result['system']}/{row['benchmark']}",
                f"{result['id']} ({result['mapping']} mapping, taken to mean {result['system']}): published "
                f"{row['published_minutes']:.3f} min, audited {scoring.fmt(row['audited_minutes'])} min"))
    findings.sort(key=lambda f: SEVERITY_ORDER[f.severity])
    return Report(audited=str(sub), kind=kind, ruleset=tools.RULESET,
                  elapsed_s=round(time.perf_counter() - started, 2), manifest=manifest, systems=systems,
                  benchmarks=benchmarks, result_id=result, findings=findings)
