"""An audit as Markdown and JSON: one report, and the one-table summary over many submitters' reports."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ...common.cli import atomic_write_text
from .. import score as scoring
from .model import SEVERITIES, BenchmarkAudit, Report


def verdict_text(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def compliance_counts(b: BenchmarkAudit) -> str:
    """Runs passing 4.1.68 / the round's tool, both counted: e.g. "0/10 / 10/10"."""
    n = len(b.runs)
    return f"{sum(r.score.passed for r in b.runs)}/{n} / {sum(r.score.round_passed for r in b.runs)}/{n}"


def rcp_text(b: BenchmarkAudit, *, full: bool = True) -> str:
    if b.rcp is None:
        return "n/a (open)"
    current, round_ = verdict_text(b.rcp["passed"]), verdict_text(b.rcp["round_passed"])
    if not full:
        return f"{current} / {round_}"
    scaling = f", scaling {b.rcp['scaling_factor']:.4f}" if b.rcp["scaling_factor"] != 1.0 else ""
    return f"{current}: {b.rcp['message']}{scaling} / {round_}: {b.rcp['round_message']}"


def convergence_text(b: BenchmarkAudit) -> str:
    conv = b.convergence["olympic_mean"]
    sources = ", ".join(b.convergence.get("sources", []))
    return f"{'-' if conv is None else f'{conv:,.1f}'} {b.convergence['unit']}" + (f" ({sources})" if sources else "")


def markdown(report: Report) -> str:
    errors, warnings_, notes = (report.count(s) for s in SEVERITIES)
    lines = [f"# MLPerf Training v1.1 audit of {report.audited}", "",
             f"Tools: {report.tools['current']}; \"round\" verdicts: {report.tools['round']}. "
             f"{len(report.benchmarks)} system x benchmark results, "
             f"{sum(len(b.runs) for b in report.benchmarks)} logs, audited in {report.elapsed_s:.1f} s.", "",
             f"**{'CLEAN' if not errors and not warnings_ else 'ERRORS' if errors else 'WARNINGS'}**: "
             f"{errors} error(s), {warnings_} warning(s), {notes} note(s).", ""]
    if report.manifest:
        m = report.manifest
        lines += [f"Manifest {m.file}: {m.verified} file(s) verified, {len(m.mismatched)} mismatched, "
                  f"{len(m.missing)} missing, {len(m.unlisted)} unlisted.", ""]
    else:
        lines += ["No manifest.sha256: file integrity rests on the checks below.", ""]
    if report.result_id:
        r = report.result_id
        lines += [f"## Result ID {r['id']}: {'MATCH' if r['match'] else 'MISMATCH'}", "", f"{r['meaning']}.", ""]
        lines += [f"- {c['benchmark']}: published {scoring.fmt(c['published_minutes'])} min, audited "
                  f"{scoring.fmt(c['audited_minutes'])} min" for c in r["comparisons"]]
        lines.append("")
    lines += ["## Findings", ""]
    lines += [f"- **{f.severity}** `{f.code}` {f.where}: {f.message}" for f in report.findings] or ["- none"]
    lines += scores_section(report)
    lines += ["", "## Systems", ""]
    lines += [f"- {s['file']}: {verdict_text(s['passed'])}" + (f" ({'; '.join(s['reasons'])})" if s["reasons"] else "")
              for s in report.systems]
    for b in report.benchmarks:
        lines += benchmark_section(b)
    lines += ["", "## Known differences between the v1.1 round's tools and 4.1.68", ""]
    lines += [f"- **{d['topic']}**: 4.1.68: {d['current']}; round: {d['round']}. Applied: {d['applied']} "
              f"(source: {d['source']})" for d in report.differences]
    return "\n".join(lines) + "\n"


def scores_section(report: Report) -> list[str]:
    """One row per system and benchmark: minutes, both tools' compliance and RCP verdicts, seeds, convergence."""
    lines = ["", "## Scores", "",
             "| system | division | benchmark | minutes | runs | dropped | compliance 4.1.68 / round | seeds "
             "| RCP 4.1.68 / round | convergence (olympic mean) |", "|" + "---|" * 10]
    for b in report.benchmarks:
        s = b.score
        minutes = scoring.fmt(s.minutes) + ("" if s.valid else " (INVALID)")
        seeds = "some missing" if None in b.seeds["values"] else "distinct" if b.seeds["distinct"] else "NOT distinct"
        if b.seeds["passed"] is not None:
            seeds += f", checker {verdict_text(b.seeds['passed'])}/{verdict_text(b.seeds['round_passed'])}"
        lines.append(f"| {s.system} | {s.division} | {s.benchmark} | {minutes} | {len(b.runs)} | {s.dropped} | "
                     f"{compliance_counts(b)} | {seeds} | {rcp_text(b)} | {convergence_text(b)} |")
    if any(b.rcp for b in report.benchmarks):
        lines += ["", "RCP \"round\": the official checker over every RCP (no pruning); the round also took the "
                      "reference stdev over the olympic subset, which its options cannot set (differences below)."]
    return lines


def benchmark_section(b: BenchmarkAudit) -> list[str]:
    """One system and benchmark: hyperparameters, one row per run, and the runs' errors grouped."""
    lines = ["", f"## {b.score.system} / {b.score.benchmark} ({b.path})", "",
             "Hyperparameters (alike in every run): "
             + (", ".join(f"{k}={v}" for k, v in b.hyperparameters.items()) or "none logged")]
    for key, values in b.hyperparameter_diff.items():
        lines.append(f"DIFFERS `{key}`: " + ", ".join(f"{name}={v}" for name, v in values.items()))
    lines += ["", f"| run | minutes | init min | status | seed | converged at ({b.convergence['unit']}) | from "
                  "| accuracy | 4.1.68 | round | scored with |", "|" + "---|" * 11]
    grouped: dict[str, list[str]] = {}
    for r in (run.score for run in b.runs):
        point = "-" if r.convergence_point is None else f"{r.convergence_point:,}"
        lines.append(f"| {r.file} | {scoring.fmt(r.minutes)} | {scoring.fmt(r.init_minutes, 2)} | {r.status} | "
                     f"{r.seed} | {point} | {r.convergence_source or '-'} | {scoring.fmt(r.last_accuracy, 4)} | "
                     f"{verdict_text(r.passed)} | {verdict_text(r.round_passed)} | "
                     f"{r.used}{'' if r.counted else ' (dropped)'} |")
        if r.errors:
            grouped.setdefault("; ".join(e[:160] for e in r.errors[:3]), []).append(r.file)
    if grouped:
        lines.append("")
        lines += [f"- {', '.join(files)}: {text}" for text, files in grouped.items()]
    return lines


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    md, js = out / "audit.md", out / "audit.json"
    atomic_write_text(js, to_json(report))
    atomic_write_text(md, markdown(report))
    return md, js


# ---- many submitters

def summary_rows(reports: dict[str, Report]) -> list[dict]:
    """One row per system and benchmark over every submitter's report, with its findings by severity."""
    rows = []
    for name, report in reports.items():
        for b in report.benchmarks:
            at = Counter(f.severity for f in report.findings_at(b.path))
            rows.append({"submitter": name, "system": b.score.system, "benchmark": b.score.benchmark,
                         "division": b.score.division, "minutes": b.score.minutes, "valid": b.score.valid,
                         "compliance": compliance_counts(b),
                         "rcp": rcp_text(b, full=False), "rcp_passed": None if b.rcp is None else b.rcp["passed"],
                         "rcp_round_passed": None if b.rcp is None else b.rcp["round_passed"],
                         "convergence": convergence_text(b), **{s: at[s] for s in SEVERITIES}})
    return rows


def totals(reports: dict[str, Report]) -> dict:
    findings = [f for r in reports.values() for f in r.findings]
    by_code = {s: dict(sorted(Counter(f.code for f in findings if f.severity == s).items())) for s in SEVERITIES}
    return {"submitters": len(reports), "results": sum(len(r.benchmarks) for r in reports.values()),
            "logs": sum(len(b.runs) for r in reports.values() for b in r.benchmarks),
            **{s: sum(by_code[s].values()) for s in SEVERITIES}, "by_code": by_code,
            "errors_at": sorted(f"{name}/{f.where}" for name, r in reports.items() for f in r.findings
                                if f.severity == "error")}


def summary_markdown(root: str, reports: dict[str, Report], elapsed_s: float) -> str:
    t = totals(reports)
    lines = [f"# MLPerf Training v1.1 audit of every submitter in {root}", "",
             f"{t['submitters']} submitters, {t['results']} system x benchmark results, {t['logs']} logs, audited in "
             f"{elapsed_s:.1f} s: {t['error']} error(s), {t['warning']} warning(s), {t['note']} note(s). One report "
             "per submitter beside this file (<submitter>/audit.md and audit.json).", "",
             "| submitter | system | benchmark | division | minutes | compliance 4.1.68 / round | RCP 4.1.68 / round "
             "| convergence (olympic mean) | errors | warnings | notes |", "|" + "---|" * 11]
    for r in summary_rows(reports):
        minutes = scoring.fmt(r["minutes"]) + ("" if r["valid"] else " (INVALID)")
        lines.append(f"| {r['submitter']} | {r['system']} | {r['benchmark']} | {r['division']} | {minutes} | "
                     f"{r['compliance']} | {r['rcp']} | {r['convergence']} | {r['error']} | {r['warning']} | "
                     f"{r['note']} |")
    lines += ["", "## Findings by code", ""]
    for severity in SEVERITIES:
        codes = ", ".join(f"`{c}` {n}" for c, n in t["by_code"][severity].items()) or "none"
        lines.append(f"- {severity}: {codes}")
    lines += ["", "## Errors", ""]
    lines += [f"- **{f.code}** {name}/{f.where}: {f.message}" for name, rep in reports.items()
              for f in rep.findings if f.severity == "error"] or ["- none"]
    return "\n".join(lines) + "\n"


def write_summary(root: str, reports: dict[str, Report], elapsed_s: float, out: Path) -> tuple[Path, Path]:
    for name, report in reports.items():
        write_report(report, out / name)
    md, js = out / "summary.md", out / "summary.json"
    atomic_write_text(js, json.dumps({"audited": root, "elapsed_s": elapsed_s, "totals": totals(reports),
                                      "results": summary_rows(reports)}, indent=2, default=str) + "\n")
    atomic_write_text(md, summary_markdown(root, reports, elapsed_s))
    return md, js
