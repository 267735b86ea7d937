"""One log, read for what the scorer does not read: hyperparameters, every seed, the eval cadence, the TTT
that Graphcore's run_stop carries, and every step back of the clock, placed in the untimed or timed part."""

from __future__ import annotations

import json
from pathlib import Path

from mlperf_logging.compliance_checker import mlp_parser

from .. import tools
from .model import ClockStep, LogFacts

# What mlp_parser raises (instead of listing a parse error) on an MLLOG line without time_ms, key, value or
# metadata; the compliance, seed and RCP checkers crash on such a log the same way.
PARSER_CRASHES = (KeyError, TypeError)
MLLOG_FIELDS = ("time_ms", "key", "value", "metadata")
CLOCK_SLACK_MS = 1000       # a clock step back smaller than this may be NTP or rank interleaving
# Keys logged before run_start that are not hyperparameters: the lifecycle, the submission fields, the
# seed (reported apart) and the tensor list (checked by the compliance checker).
NOT_HYPERPARAMETERS = {
    "cache_clear", "init_start", "init_stop", "run_start", "run_stop", "seed", "weights_initialization",
    "submission_benchmark", "submission_division", "submission_org", "submission_platform", "submission_status",
    "submission_poc_name", "submission_poc_email",
}


def unparseable_line(path: Path) -> str:
    """The first MLLOG line that lacks a field the parser needs, as `line N lacks metadata`."""
    with open(path, encoding="latin-1") as f:   # the parser's own encoding
        for number, text in enumerate(f, 1):
            if ":::MLLOG " not in text:
                continue
            try:
                record = json.loads(text.split(":::MLLOG ", 1)[1])
            except ValueError:
                continue                        # the parser lists these as errors, it does not crash
            lacking = [k for k in MLLOG_FIELDS if k not in record] if isinstance(record, dict) else ["an object"]
            if lacking:
                return f"line {number} lacks {', '.join(lacking)}"
    return "no line found"




def read_log(path: Path) -> LogFacts:
    """The facts of one log that the scorer does not read, with the official parser."""
    try:
        loglines, _ = tools.parse_log(path)
    except PARSER_CRASHES as e:
        return LogFacts(hyperparameters={}, seeds=[], first_eval=None, eval_interval=None, ttt_minutes=None,
                        clock_steps=[], unparseable=f"{type(e).__name__}: {e} ({unparseable_line(path)})")
    hyperparameters, seeds, evals, steps = {}, [], [], []
    ttt, start_ms, stop_ms, latest, eval_ms, stop_at_eval = None, None, None, None, None, False
    for line in loglines:
        key, value = line.key, line.value
        meta = value["metadata"] if isinstance(value["metadata"], dict) else {}
        if latest is not None and line.timestamp < latest[0] - CLOCK_SLACK_MS:
            region = "untimed" if start_ms is None else "timed" if stop_ms is None else "after"
            steps.append(ClockStep(line=line.lineno + 1, key=key, before_line=latest[2] + 1, before_key=latest[1],
                                   seconds=(latest[0] - line.timestamp) / 1000, region=region))
        if latest is None or line.timestamp >= latest[0]:
            latest = (line.timestamp, key, line.lineno)
        if key == "seed":
            seeds.append(value["value"])
        elif key == "run_start" and start_ms is None:
            start_ms = line.timestamp
        elif key == "run_stop" and stop_ms is None:
            stop_ms = line.timestamp
            ttt = meta.get("TTT")
            stop_at_eval = eval_ms == stop_ms
        elif key == "eval_accuracy" and stop_ms is None:
            eval_ms = line.timestamp
            if isinstance(meta.get("epoch_num"), (int, float)):
                evals.append(meta["epoch_num"])
        elif (start_ms is None and key.lower() not in NOT_HYPERPARAMETERS
              and isinstance(value["value"], (str, int, float, bool))):
            hyperparameters.setdefault(key, value["value"])
    return LogFacts(hyperparameters=hyperparameters, seeds=seeds, first_eval=evals[0] if evals else None,
                    eval_interval=evals[1] - evals[0] if len(evals) > 1 else None,
                    ttt_minutes=ttt / 60 if isinstance(ttt, (int, float)) else None, clock_steps=steps,
                    stop_before_start=None not in (start_ms, stop_ms) and stop_ms < start_ms,
                    stop_at_eval=stop_at_eval)


def log_division(bench_dir: Path) -> str:
    """The submission_division of a benchmark's first log, for a system without its description."""
    for f in sorted(bench_dir.glob("result_*.txt")):
        try:
            loglines = mlp_parser.parse_file(str(f), ruleset=tools.RULESET)[0]
        except PARSER_CRASHES:
            continue                 # audit_benchmark names it; another log may say the division
        for line in loglines:
            if line.key == "submission_division":
                return str(line.value["value"])
    return ""
