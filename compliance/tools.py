"""The official MLCommons tools (mlperf-logging 4.1.68, ruleset 1.1.0), driven and their verdicts parsed.

Per-file tools (compliance, system description, RCP) run in this process with their log records
captured; whole-tree tools (package checker, result summarizer) run as subprocesses from a scratch
folder outside the tree, because they write log and summary files into the current directory.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import types
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlperf_logging.compliance_checker import mlp_compliance, mlp_parser
from mlperf_logging.rcp_checker import rcp_checker
from mlperf_logging.system_desc_checker import system_desc_checker

from ..common.cli import UserError
from .differences import round_note

USAGE = "training"
RULESET = "1.1.0"
PACKAGE_SUCCESS = "PACKAGE CHECKER FOUND NO ERRORS, SUCCESS !"
REQUIRED_RUNS = {"resnet": 5, "bert": 10}

@dataclass
class LogVerdict:
    path: str
    passed: bool                      # verdict of mlperf-logging 4.1.68
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    round_passed: bool = False        # verdict the v1.1 round's tool would have given
    round_note: str = ""              # why the two differ, when they do

    def summary_lines(self) -> list[str]:
        """Each error as its first line plus its `failed test:` line, if any."""
        out = []
        for message in self.errors:
            lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
            short = lines[0] if lines else message
            test = next((ln for ln in lines[1:] if ln.startswith("failed test:")), "")
            if test:
                short = f"{short} {test[:200]}"
            out.append(short)
        return out


# Verdicts of check_log kept by the log's sha256: a submit checks each log as it lands, then when it packages,
# scores and reports it (copies included); the checker runs once per content.
_VERDICTS: dict[str, LogVerdict] = {}
_VERDICTS_KEPT = 64


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextmanager
def captured_logging() -> Iterator[_Capture]:
    """Collect what the official tools log to the root logger, and keep it off the terminal."""
    root = logging.getLogger()
    capture = _Capture()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)


def _is_weights_initialization(message: str) -> bool:
    return "weights_initialization" in message or "initialized_tensors" in message


def parse_log(path: str | Path) -> tuple[list, list]:
    """mlp_parser.parse_file on one log (ruleset 1.1.0): (loglines, errors). The scorer and the audit read each
    log once between them: the last 16 parses are kept, keyed by the file's bytes (a benchmark folder holds
    at most 10 logs; a checksum costs ~1 % of a parse)."""
    return _parse_log(str(path), zlib.crc32(Path(path).read_bytes()))


@functools.lru_cache(maxsize=16)
def _parse_log(name: str, crc: int) -> tuple[list, list]:
    return mlp_parser.parse_file(name, ruleset=RULESET)


@functools.lru_cache(maxsize=64)
def _parsed_rules(name: str, mtime_ns: int, loader) -> object:
    with open(name) as f:
        return yaml.load(f, Loader=loader)


def _load_rules_once(stream, Loader):  # noqa: N803 (yaml.load's own keyword)
    """yaml.load for the checker's rule files, each parsed once per process and handed out as a fresh copy
    (the checker re-reads 3 files per log: without this, parsing them is 40 % of an audit's time)."""
    return copy.deepcopy(_parsed_rules(stream.name, os.stat(stream.name).st_mtime_ns, Loader))


# What mlp_compliance sees as `yaml`: the real module with load() parsing each rule file once.
_RULES_YAML = types.SimpleNamespace(load=_load_rules_once, BaseLoader=yaml.BaseLoader)


@contextmanager
def _rules_parsed_once() -> Iterator[None]:
    original = mlp_compliance.yaml
    mlp_compliance.yaml = _RULES_YAML
    try:
        yield
    finally:
        mlp_compliance.yaml = original


def check_log(path: str | Path) -> LogVerdict:
    """The official compliance checker on one result log, ruleset 1.1.0; a log whose bytes were checked before
    in this process gets that verdict again (for its own path) without a second run of the checker."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no result log at {path}: give the path of a result_*.txt file")
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if digest not in _VERDICTS:
        if len(_VERDICTS) >= _VERDICTS_KEPT:
            del _VERDICTS[next(iter(_VERDICTS))]  # the oldest: dicts keep insertion order
        _VERDICTS[digest] = _check_log(path)
    kept = _VERDICTS[digest]
    return dataclasses.replace(kept, path=str(path), errors=list(kept.errors), warnings=list(kept.warnings))


def _check_log(path: Path) -> LogVerdict:
    checker = mlp_compliance.make_checker(USAGE, RULESET, False, False)
    mlp_compliance.enqueued_configs.clear()  # module-level queue; a crashed check can leave entries
    with captured_logging(), _rules_parsed_once():
        try:
            passed = checker.check_file(str(path), f"{USAGE}_{RULESET}/common.yaml")
            crash = None
        except Exception as e:  # the official checker crashes on some malformed inputs (CHECKERS.md §5)
            passed, crash = False, f"checker crashed: {type(e).__name__}: {e}"
    errors = list(checker.overwritable.values()) + list(checker.not_overwritable)
    if crash:
        hint = {
            "FileNotFoundError": " (an unknown division, benchmark or opt_name: values are lowercase, "
                                 "e.g. closed, resnet, lars)",
            "TypeError": " (a value has the wrong type, e.g. an accuracy logged as a string)",
            "KeyError": " (an MLLOG line lacks key, value, metadata or time_ms)",
        }
        errors.append(crash + next((h for k, h in hint.items() if crash.startswith(f"checker crashed: {k}")), ""))
    verdict = LogVerdict(str(path), bool(passed), errors, list(checker.warnings.values()))
    round_errors = [e for e in errors if not _is_weights_initialization(e)]
    verdict.round_passed = verdict.passed or (not crash and not round_errors)
    if verdict.round_passed != verdict.passed:
        verdict.round_note = round_note("weights_initialization")
    return verdict


def check_system(path: str | Path) -> tuple[bool, list[str]]:
    """The official system description checker on one JSON: (passed, reasons)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no system description at {path}")
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    with captured_logging() as capture:
        valid, *_ = system_desc_checker.check_system_desc(str(path), USAGE, RULESET)
    reasons = [r.getMessage().strip() for r in capture.records if r.levelno >= logging.ERROR]
    return bool(valid), reasons


@dataclass
class RcpVerdict:
    passed: bool
    message: str
    scaling_factor: float


def rcp_bypass_requested(benchmark_dir: Path) -> bool:
    """Whether a `package_checker_params` file asks for the RCP bypass, read as the package checker reads it:
    a line equal to "rcp-bypass" with its newline still on, so only a last line without one counts."""
    for folder in (benchmark_dir, benchmark_dir.parent):
        params = folder / "package_checker_params"
        if params.is_file() and "rcp-bypass" in params.read_text().splitlines(keepends=True):
            return True
    return False


def check_rcp(benchmark_dir: str | Path, *, bypass: bool | None = None, bert_train_samples: bool = False,
              rcp_pass: str = "pruned_rcps") -> RcpVerdict:
    """The official RCP checker on one benchmark folder: pruned RCPs, as the package checker runs it, or
    `rcp_pass="full_rcps"` (every RCP, as the v1.1 round's checker had them). `bypass` None follows the
    folder's package_checker_params, as the package checker does; `bert_train_samples` is the checker's
    `--bert_train_samples` (read BERT samples from train_samples, for logs whose epoch_num stays constant)."""
    if rcp_pass not in ("pruned_rcps", "full_rcps"):
        raise ValueError(f"rcp_pass {rcp_pass!r}: the RCP checker knows pruned_rcps and full_rcps")
    if bypass is None:
        bypass = rcp_bypass_requested(Path(benchmark_dir))
    with captured_logging():
        try:
            passed, message, factor = rcp_checker.check_directory(
                str(benchmark_dir), USAGE, RULESET, False, bert_train_samples,
                rcp_pass=rcp_pass, rcp_bypass=bypass, set_scaling=False)
        except Exception as e:  # e.g. a benchmark without RCPs, or unreadable logs
            return RcpVerdict(False, f"RCP checker crashed: {type(e).__name__}: {e}", 1.0)
    return RcpVerdict(bool(passed), message, float(factor))


@dataclass
class PackageVerdict:
    passed: bool
    errors: list[str]
    log: str


def run_package_checker(submitter_dir: Path, *, rcp_bypass: bool = False) -> PackageVerdict:
    """The official package checker on a submitter folder. It always exits 0: we read its last line."""
    submitter_dir = Path(submitter_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="package_checker.") as scratch:
        log_file = Path(scratch) / "package_checker.log"
        cmd = [sys.executable, "-m", "mlperf_logging.package_checker", str(submitter_dir), USAGE, RULESET,
               "--log_output", str(log_file)]
        if rcp_bypass:
            cmd.append("--rcp-bypass")
        proc = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        if log_file.exists():
            text = log_file.read_text(errors="replace") + ("\n" + proc.stderr if proc.returncode else "")
    passed = proc.returncode == 0 and PACKAGE_SUCCESS in text
    errors = [ln.strip() for ln in text.splitlines() if ln.startswith(("ERROR", "CRITICAL", "Traceback"))]
    if proc.returncode != 0:
        errors.append(f"package checker crashed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return PackageVerdict(passed, errors, text)


def run_result_summarizer(submitter_dir: Path) -> list[dict]:
    """The official result summarizer on a submitter folder: its detailed rows (one per system)."""
    submitter_dir = Path(submitter_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="result_summarizer.") as scratch:
        out_csv = Path(scratch) / "summary.csv"
        proc = subprocess.run(
            [sys.executable, "-m", "mlperf_logging.result_summarizer", str(submitter_dir), USAGE, RULESET,
             "--csv", str(out_csv)], cwd=scratch, capture_output=True, text=True)
        detailed = Path(scratch) / "summary_detailed.csv"
        if proc.returncode != 0 or not out_csv.exists():
            raise UserError(f"result summarizer failed on {submitter_dir}: {proc.stderr.strip()[-300:]}")
        rows = list(csv.DictReader(out_csv.open()))
        if detailed.exists():
            for row, extra in zip(rows, csv.DictReader(detailed.open()), strict=False):
                row.update(extra)
        return rows
