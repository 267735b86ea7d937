"""The findings of one benchmark folder, one function per family; each returns Finding records.

Severity means something: an **error** is what the v1.1 round's own tools failed, or what changes or voids
the score (run_stop before run_start, an edited time, missing or extra runs, too many failed runs, a
repeated seed, a manifest mismatch). What the round accepted is a **warning** (worth a reviewer's eye) or a
**note** (a known difference of tools, a fact of the log), each with a one-line reason.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from mlperf_logging.package_checker import seed_checker

from .. import score as scoring
from .. import tools
from ..differences import DIFFERENCES, round_note
from .logs import PARSER_CRASHES
from .model import Finding, RunAudit

INIT_RULE_MINUTES = 20.0    # untimed initialisation the v1.1 rules allow; the 1.1 checker accepts < 30
TTT_SLACK_MINUTES = 1 / 60  # Graphcore's run_stop TTT agrees with its timestamps within 0.07 s on all 60 logs
TIMED_KEYS = ("run_start", "run_stop")   # the only two times the score reads


def _files(runs: list[RunAudit]) -> str:
    return ", ".join(r.score.file for r in runs)


def parse_findings(where: str, runs: list[RunAudit]) -> list[Finding]:
    """A log the official parser cannot read fails compliance under both tools and is dropped."""
    return [Finding("error", "unparseable-log", f"{where}/{r.score.file}",
                    f"mlp_parser cannot read it ({r.facts.unparseable}): the official checkers fail or crash on it; "
                    "scored as a failed run") for r in runs if r.facts.unparseable]


def count_findings(where: str, benchmark: str, files: list[Path]) -> list[Finding]:
    """The number of result files: the package checker wants exactly 5 (ResNet) or 10 (BERT)."""
    need = tools.REQUIRED_RUNS[benchmark]
    if len(files) < need:
        names = {f.name for f in files}
        absent = [f"result_{i}.txt" for i in range(need) if f"result_{i}.txt" not in names]
        return [Finding("error", "missing-result-file", where,
                        f"{len(files)} of the {need} result files the rules require"
                        + (f"; absent: {', '.join(absent)}" if absent else ""))]
    if len(files) > need:
        return [Finding("error", "extra-result-file", where,
                        f"{len(files)} result files; the rules require exactly {need}")]
    return []


def compliance_findings(where: str, runs: list[RunAudit], division: str) -> list[Finding]:
    """Runs that fail compliance under the verdict they were scored with, and where the two tools differ."""
    found = []
    failed = [r for r in runs if not r.score.counted]
    if len(failed) > 1:
        found.append(Finding("error", "too-many-failed-runs", where,
                             f"{len(failed)} runs fail compliance ({_files(failed)}; status "
                             f"{', '.join(r.score.status or '-' for r in failed)}); at most one may be dropped: "
                             "the result is invalid"))
    elif failed:
        r = failed[0]
        aborted = r.score.status != "success"
        what = ("an unparseable log (unparseable-log), " if r.facts.unparseable else
                f"a non-converged run (status {r.score.status or '(none)'}), " if aborted else "fails compliance, ")
        reasons = [e[:200] for e in r.score.errors
                   if r.score.used == "current" or not tools._is_weights_initialization(e)]
        found.append(Finding("note" if aborted else "warning", "dropped-run", f"{where}/{r.score.file}",
                             what + "dropped as the slowest under olympic scoring: " + "; ".join(reasons[:2])))
    for r in runs:
        if r.score.counted and r.score.status != "success":
            found.append(Finding("warning", "aborted-run-scored", f"{where}/{r.score.file}",
                                 f"run_stop status {r.score.status or '(none)'!s}, yet the run passes compliance"
                                 + (" (the open rules check little more than eval_accuracy < 1.0)"
                                    if division == "open" else "")
                                 + f", so its {scoring.fmt(r.score.minutes)} min count in the score as the official "
                                 "summarizer counts them (CHECKERS.md §10): a run that did not converge "
                                 "stands in the result"))
    differ = [r for r in runs if r.score.passed != r.score.round_passed]
    if differ:
        found.append(Finding("note", "verdict-difference", where,
                             f"{len(differ)} of {len(runs)} runs fail mlperf-logging 4.1.68 and pass the v1.1 "
                             f"round's tool: {differ[0].score.note or round_note('weights_initialization')} "
                             f"(4.1.68 says: {differ[0].score.errors[0][:160] if differ[0].score.errors else '-'})"))
    return found


def seed_verdicts(files: list[Path], runs: list[RunAudit], division: str, root: Path) -> dict:
    """The official seed checker (closed division, as the package checker runs it), and the round's verdict."""
    values = [r.facts.seeds[0] if r.facts.seeds else None for r in runs]
    distinct = None not in values and len(set(values)) == len(values)
    result = {"values": values, "distinct": distinct, "passed": None, "round_passed": None, "errors": [],
              "note": "", "missing_fails_round": None}
    if division != "closed":
        result["note"] = "the package checker runs the seed checker on the closed division only"
        return result
    checker = seed_checker.SeedChecker(tools.RULESET)
    logged = [bool(r.facts.seeds) for r in runs]
    # 1.1.0-rc4 failed a run without a seed only when a run before it (in file order) logged one.
    result["missing_fails_round"] = any(not logged[i] and any(logged[:i]) for i in range(len(files)))
    with tools.captured_logging() as capture, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "logs more than one seed" is a Python warning there, reported below
        try:
            passed = checker.check_seeds([str(f) for f in files])
        except PARSER_CRASHES as e:  # an unparseable log: the round's checker parsed it the same way
            result.update(passed=False, round_passed=False, errors=[f"seed checker crashed: {type(e).__name__}: {e}"])
            return result
    errors = []
    for record in capture.records:
        if record.levelno >= logging.ERROR:
            text = record.getMessage().split("following errors:", 1)[-1].replace(f"{root}/", "")
            errors += [ln.strip() for ln in text.splitlines() if ln.strip()]
    only_missing = all("logs no seed" in e for e in errors)
    round_passed = passed or (only_missing and not result["missing_fails_round"])
    result.update(passed=bool(passed), round_passed=bool(round_passed), errors=errors)
    if round_passed != passed:
        result["note"] = ("the round's seed checker (1.1.0-rc4) failed a run without a seed only when a run "
                          "before it logged one; 4.1.68 fails every such run")
    return result


def seed_findings(where: str, runs: list[RunAudit], seeds: dict) -> list[Finding]:
    """Missing and repeated seeds, with the round's severity, and the official seed checker's verdict."""
    found = []
    missing = [r for r in runs if not r.facts.seeds and not r.facts.unparseable]
    if missing:
        # Its severity is the round's verdict (DIFFERENCES "seed"): closed trees of that era without seeds
        # passed the round's checker; outside the closed division no checker looks at seeds.
        if seeds["missing_fails_round"] is None:
            severity, why = "warning", "no official checker reads seeds outside the closed division"
        elif seeds["missing_fails_round"]:
            severity, why = "error", "the v1.1 round's seed checker failed it too, as a run before it logged one"
        else:
            severity, why = "warning", ("the v1.1 round's seed checker (1.1.0-rc4) passed this, as it failed a "
                                        "seedless run only after one that logged a seed; 4.1.68 fails it")
        found.append(Finding(severity, "missing-seed", where,
                             f"{len(missing)} of {len(runs)} runs log no seed ({_files(missing)}): the rules "
                             f"want one int seed per run; {why}"))
    logged = [json.dumps(v) for v in seeds["values"] if v is not None]
    repeated = sorted({v for v in logged if logged.count(v) > 1})
    if repeated:
        found.append(Finding("error", "duplicate-seed", where,
                             f"seed(s) {', '.join(repeated)} repeat across runs (seeds {seeds['values']}): the "
                             "rules want a different seed in every run, and both seed checkers fail it"))
    if seeds["passed"] is False:
        found.append(Finding("error" if not seeds["round_passed"] else "note", "seed-check", where,
                             "official seed checker: " + "; ".join(seeds["errors"][:3])
                             + (f" ({seeds['note']})" if seeds["note"] else "")))
    return found


def hyperparameters(runs: list[RunAudit]) -> tuple[dict, dict]:
    """(the values every parsed run logged alike, key -> {file: value} where they differ)."""
    parsed = [r for r in runs if not r.facts.unparseable]
    keys = sorted({k for r in parsed for k in r.facts.hyperparameters})
    diff = {k: {r.score.file: r.facts.hyperparameters.get(k) for r in parsed} for k in keys
            if len({json.dumps(r.facts.hyperparameters.get(k)) for r in parsed}) > 1}
    common = {k: parsed[0].facts.hyperparameters[k] for k in keys if k not in diff}
    return common, diff


def hyperparameter_findings(where: str, diff: dict) -> list[Finding]:
    """One set of hyperparameters per submission; the batch size above all (the RCP checker reads one)."""
    found = []
    if "global_batch_size" in diff:
        values = ", ".join(f"{name} {v}" for name, v in diff["global_batch_size"].items())
        found.append(Finding("error", "mixed-batch-size", where,
                             f"global_batch_size differs between runs ({values}): every run must use the same "
                             "batch; the RCP checker cannot read one (4.1.68's package checker crashes with "
                             "KeyError: None on such a folder, CHECKERS.md §7.1)"))
    others = [k for k in diff if k != "global_batch_size"]
    if others:
        found.append(Finding("warning", "mixed-hyperparameters", where,
                             f"runs differ in {', '.join(others)}: a submission's runs share one set of "
                             "hyperparameters (the round's checkers do not compare runs, and accepted it)"))
    return found


def _at_eval(run: RunAudit, step) -> bool:
    """A run_stop stamped with its converging eval's time, stepping back behind training blocks logged after."""
    return step.key == "run_stop" and run.facts.stop_at_eval and step.before_key not in TIMED_KEYS


def clock_findings(where: str, runs: list[RunAudit]) -> list[Finding]:
    """Steps back of the clock, split by what they can do to the score, run_stop before run_start, the TTT that
    Graphcore's run_stop carries against its timestamps, and long initialisation.

    A step back at run_start or run_stop is an edited time (error), except a run_stop that carries the time of
    the eval just before it while training blocks logged after that eval ran on (Habana's evals run beside
    training; the round accepted it, and the score ends at the converging eval). Steps back elsewhere cannot
    change the score, which reads only run_start and run_stop: warnings."""
    found, untimed, timed = [], [], []
    for r in runs:
        here = f"{where}/{r.score.file}"
        if r.facts.stop_before_start:
            found.append(Finding("error", "run-stop-before-start", here,
                                 "run_stop's time_ms is before run_start's: the time to train is negative, the log "
                                 "was edited"))
        edited = [s for s in r.facts.clock_steps if (s.key in TIMED_KEYS or s.before_key in TIMED_KEYS)
                  and not _at_eval(r, s)]
        if edited:
            found.append(Finding("error", "time-order", here,
                                 "time_ms goes backwards at run_start or run_stop: "
                                 + "; ".join(s.text() for s in edited[:3])
                                 + ": the log was edited or interleaved, its minutes cannot be trusted"))
        rest = [s for s in r.facts.clock_steps if s not in edited]
        if any(s.region == "untimed" for s in rest):
            untimed.append((r, next(s for s in rest if s.region == "untimed")))
        if any(s.region != "untimed" for s in rest):
            timed.append((r, next(s for s in rest if s.region != "untimed"), any(_at_eval(r, s) for s in rest)))
        ttt, minutes = r.facts.ttt_minutes, r.score.minutes
        if ttt is not None and minutes is not None and abs(ttt - minutes) > TTT_SLACK_MINUTES:
            found.append(Finding("error", "ttt-mismatch", here,
                                 f"run_stop says TTT {r.facts.ttt_minutes * 60:.1f} s, the timestamps say "
                                 f"{r.score.minutes * 60:.1f} s: a time was edited"))
        if r.score.init_minutes is not None and r.score.init_minutes > INIT_RULE_MINUTES:
            found.append(Finding("warning", "init-time", here,
                                 f"init_start to init_stop is {r.score.init_minutes:.1f} min; the rules allow "
                                 f"{INIT_RULE_MINUTES:.0f} min untimed (the 1.1 checker accepts < 30)"))
    if untimed:
        r, s = untimed[0]
        found.append(Finding("warning", "clock-step-untimed", where,
                             f"{len(untimed)} of {len(runs)} runs step back before run_start "
                             f"({', '.join(r.score.file for r, _ in untimed)}; e.g. {r.score.file}: {s.text()}): "
                             "a header written earlier or ranks interleaved; the round accepted it and the score reads "
                             "only run_start and run_stop"))
    if timed:
        r, s, _ = timed[0]
        async_stop = sum(a for _, _, a in timed)
        found.append(Finding("warning", "clock-step-timed", where,
                             f"{len(timed)} of {len(runs)} runs step back between run_start and run_stop "
                             f"({', '.join(r.score.file for r, _, _ in timed)}; e.g. {r.score.file}: {s.text()}): "
                             "results logged after the training blocks, with the time they were measured"
                             + (f"; in {async_stop} of them run_stop carries the time of the converging eval, "
                                "so the score ends there" if async_stop else "")
                             + "; the round accepted it"))
    return found


def convergence_findings(where: str, benchmark: str, runs: list[RunAudit]) -> list[Finding]:
    """Where a BERT run's sample count came from, and a BERT point that is no sample count."""
    if benchmark != "bert":
        return []
    found = []
    sources = sorted({r.score.convergence_source for r in runs if r.score.convergence_source})
    counted = [s for s in sources if s != "epoch_num" and not s.startswith("epoch_num (")]
    if counted:
        found.append(Finding("note", "convergence-source", where,
                             f"epoch_num stays constant at every eval, so the samples are read from "
                             f"{' and '.join(counted)} (the RCP checker run with --bert_train_samples where it is "
                             "train_samples)"))
    bad = [r for r in runs if r.score.convergence_source.startswith("epoch_num (")]
    if bad:
        found.append(Finding("warning", "convergence-not-samples", where,
                             f"{len(bad)} runs log a constant epoch_num and no sample count ({_files(bad)}): the "
                             "convergence point is not a sample count, the RCP verdict is not meaningful"))
    return found


def rcp_findings(where: str, rcp: dict | None, published: str, demo: bool) -> list[Finding]:
    """The RCP verdicts: an error where the round's rule (every RCP) fails too, a warning where only 4.1.68's
    pruned RCPs fail. `published` names the registry's ID for this result, if it has one."""
    if rcp is None:
        return []
    if not rcp["round_passed"]:
        current = "fails it too" if not rcp["passed"] else "passes it"
        return [Finding("error", "rcp-fail", where,
                        f"the round's RCP rule fails it (the official checker over every RCP: "
                        f"{rcp['round_message']}); 4.1.68 (pruned RCPs) {current} ({rcp['message']})"
                        + (f"; MLCommons published it nonetheless ({published})" if published else ""))]
    if not rcp["passed"]:
        return [Finding("warning", "rcp-fail-current", where,
                        f"4.1.68's RCP checker (pruned RCPs) fails it ({rcp['message']}), the round's rule (every "
                        f"RCP) passes it ({rcp['round_message']}): {DIFFERENCES['RCP statistics']['round']}")]
    if "rcp_bypass" in rcp["message"]:
        # A real submission that bypasses the RCP faces review; our demonstrations bypass it by design.
        return [Finding("note" if demo else "warning", "rcp-bypass", where,
                        f"RCP checker: {rcp['message']}" + (" (a demonstration)" if demo else ""))]
    return []
