"""`make audit`: re-check and re-score a submission, as today's official tools and as the v1.1 round's would.

    python -m mlperf_submission.compliance audit SUB [--result-id 1.1-2040] [--out DIR] [--verdict auto]
    python -m mlperf_submission.compliance audit --result-id 1.1-2040 --results-root DIR

SUB is a submitter folder (results/ and systems/ inside), a folder holding submitter folders, or an
archive from `make submit` (.tar.gz). An archive is read in memory (its manifest.sha256 checked against
the bytes of its members) and unpacked only into a temporary folder outside the working tree, removed
afterwards; a folder's manifest.sha256 (in it or up to two levels above it) is checked too.

For every system and benchmark: the official system description, compliance (ruleset 1.1.0) and seed
checks, each verdict given as mlperf-logging 4.1.68 gives it and as the v1.1 round's tool (1.1.0-rc4)
gave it (DIFFERENCES below, with their sources); the RCP verdict and scaling factor; the olympic score;
per run the minutes, init minutes, status, seed, convergence point and hyperparameters; a diff of the
hyperparameters between runs; and findings, each with a short name (e.g. `mixed-batch-size`).
With --result-id the score is compared, to 3 decimals, with the published minutes in result_ids.json.

Writes DIR/audit.md and DIR/audit.json (default out/audit-<name>-<time>/) and prints the Markdown.
Exit status 0 when no finding is an error, 1 when one is, 2 on bad input. The 80 published Graphcore
logs take about 4 s on one core of a 2-core AMD EPYC (the compliance checker is most of it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tarfile
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from mlperf_logging.compliance_checker import mlp_parser
from mlperf_logging.package_checker import seed_checker

from mlperf_submission.common.cli import UserError, atomic_write_text, sha256_file
from mlperf_submission.compliance import score as scoring
from mlperf_submission.compliance import tools
from mlperf_submission.systems import DEMO_NOTE

REGISTRY = Path(__file__).with_name("result_ids.json")
MANIFEST = "manifest.sha256"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
UNITS = {"resnet": "epochs", "bert": "samples"}
INIT_RULE_MINUTES = 20.0    # untimed initialisation the v1.1 rules allow; the 1.1 checker accepts < 30
# What mlp_parser raises (instead of listing a parse error) on an MLLOG line without time_ms, key, value or
# metadata; the compliance, seed and RCP checkers crash on such a log the same way.
PARSER_CRASHES = (KeyError, TypeError)
MLLOG_FIELDS = ("time_ms", "key", "value", "metadata")
CLOCK_SLACK_MS = 1000       # a clock step back smaller than this may be NTP; a larger one means an edit
TTT_SLACK_MINUTES = 1 / 60  # Graphcore's run_stop TTT agrees with its timestamps within 0.07 s on all 60 logs
# Keys logged before run_start that are not hyperparameters: the lifecycle, the submission fields, the
# seed (reported apart) and the tensor list (checked by the compliance checker).
NOT_HYPERPARAMETERS = {
    "cache_clear", "init_start", "init_stop", "run_start", "run_stop", "seed", "weights_initialization",
    "submission_benchmark", "submission_division", "submission_org", "submission_platform", "submission_status",
    "submission_poc_name", "submission_poc_email",
}
TOOLS = {"current": "mlperf-logging 4.1.68, ruleset 1.1.0",
         "round": "mlcommons/logging tag 1.1.0-rc4 (Oct 2021), the tool of the v1.1 round, "
                  "from the documented differences"}

# Every known way the v1.1 round's tool judged a v1.1 submission differently from mlperf-logging 4.1.68,
# and how this audit applies it. Sources: ../shared/CHECKERS.md §12 (both tools built and run on the same
# logs) and §7.3, and the two versions' code and data compared file by file (mlcommons/logging at tag
# 1.1.0-rc4 against the 4.1.68 release).
DIFFERENCES = [
    {"topic": "weights_initialization",
     "current": "a closed run without the full tensor list fails",
     "round": "only a warning: 'Failed weights initialization check (can be ignored for 1.1.0)'",
     "applied": "compliance: a run whose only errors are weights_initialization passes under the round",
     "source": "CHECKERS.md §12; 1.1.0-rc4 compliance_checker/mlp_compliance.py put_warning(...)"},
    {"topic": "BERT tensor list",
     "current": "398 names; logging cls/predictions/decoder/kernel fails",
     "round": "399 names with cls/predictions/decoder/kernel; a mismatch only warned (above)",
     "applied": "covered by the weights_initialization rule above",
     "source": "CHECKERS.md §12; training_1.1.0/closed_bert.yaml at 1.1.0-rc4 and in 4.1.68"},
    {"topic": "seed",
     "current": "every closed run must log a seed (seed checker)",
     "round": "a run without a seed failed only if a run checked before it logged one",
     "applied": "seed check: 'logs no seed' errors do not count under the round when that order does not hold",
     "source": "CHECKERS.md §6, §12; 1.1.0-rc4 package_checker/seed_checker.py _assert_unique_seed_per_run"},
    {"topic": "RCP",
     "current": "4.1.68 tables, pruned RCPs, reference stdev over all runs, scaling.json applied",
     "round": "the 2021 tables (ResNet had 2048 and 64480 instead of 49152 and 58880 and another 13056; "
              "BERT lacked 4096, 8704 and 13056 and had another 12288), every RCP, stdev over the olympic "
              "subset, no scaling",
     "applied": "the 4.1.68 verdict is reported; the round's is not re-run, as its tables do not ship "
                "with 4.1.68 (the round published Graphcore's closed BERT POD16 and POD64 although its "
                "RCP checker failed them, MLPERF_V11.md §3)",
     "source": "CHECKERS.md §7.3, §12; rcp_checker/rcp_checker.py and training_1.1.0/rcps_*.json of both"},
    {"topic": "system description",
     "current": "the 33 fields; status values are checked from ruleset 4.0.0 only",
     "round": "the same 33 fields",
     "applied": "identical verdicts",
     "source": "CHECKERS.md §8.2; system_desc_checker.py of both"},
]


@dataclass
class Finding:
    severity: str   # error | warning | note
    code: str       # short name, e.g. mixed-batch-size
    where: str      # path relative to the audited root
    message: str


@dataclass
class ManifestCheck:
    file: str
    verified: int = 0
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


@dataclass
class LogFacts:
    hyperparameters: dict
    seeds: list
    first_eval: float | None
    eval_interval: float | None      # between the first two evals (BERT: samples)
    ttt_minutes: float | None        # run_stop metadata TTT (seconds in Graphcore's logs), in minutes
    clock_steps: list[str]
    unparseable: str = ""            # why the official parser cannot read the log, when it cannot


@dataclass
class RunAudit:
    file: str
    minutes: float | None
    init_minutes: float | None
    status: str
    seed: int | None
    global_batch_size: float | None
    convergence_point: float | None
    last_accuracy: float | None
    passed: bool                     # mlperf-logging 4.1.68
    round_passed: bool               # the v1.1 round's tool
    used: str                        # the verdict this run was scored with
    counted: bool
    note: str
    errors: list[str]
    ttt_minutes: float | None
    first_eval: float | None
    eval_interval: float | None
    hyperparameters: dict


@dataclass
class BenchmarkAudit:
    path: str
    submitter: str
    division: str
    system: str
    system_name: str
    benchmark: str
    minutes: float | None
    valid: bool
    problem: str
    dropped: int
    rcp: dict | None
    seeds: dict
    convergence: dict
    hyperparameters: dict            # the values every run logged alike
    hyperparameter_diff: dict        # key -> {file: value} where the runs differ
    runs: list[RunAudit]


@dataclass
class Report:
    audited: str
    kind: str
    ruleset: str
    tools: dict
    elapsed_s: float
    manifest: ManifestCheck | None
    systems: list[dict]
    benchmarks: list[BenchmarkAudit]
    result_id: dict | None
    findings: list[Finding]
    differences: list[dict] = field(default_factory=lambda: DIFFERENCES)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)


# ---- the result-ID registry

def registry() -> dict[str, dict]:
    """The result-ID registry shipped with the package, by ID."""
    return {r["id"]: r for r in json.loads(REGISTRY.read_text())["results"]}


def lookup(result_id: str) -> dict:
    known = registry()
    if result_id not in known:
        raise UserError(f"unknown result ID {result_id!r}: {REGISTRY.name} knows {', '.join(known)}")
    return known[result_id]


def locate(entry: dict, results_root: Path | None) -> Path:
    """The submitter folder that holds a registry entry's logs, under a checkout of the results repo."""
    if results_root is None:
        raise UserError(f"{entry['id']}: give SUB=<the {entry['submitter']} submitter folder> or RESULTS=<a checkout "
                        f"of mlcommons/training_results_v1.1> holding {entry['results_path']}")
    folder = Path(results_root) / entry["submitter"]
    if not (folder / "results").is_dir():
        raise UserError(f"{entry['id']}: no {folder}/results; give SUB=<submitter folder> or RESULTS=<a checkout of "
                        f"mlcommons/training_results_v1.1> holding {entry['results_path']}")
    return folder


def compare_with_registry(benchmarks: list[BenchmarkAudit], entry: dict) -> dict:
    """The audited score of the registry entry's system and benchmark against its published minutes."""
    found = [b for b in benchmarks if b.system == entry["system"] and b.benchmark == entry["benchmark"]]
    if not found:
        raise UserError(f"{entry['id']} is {entry['benchmark']} on {entry['system']} ({entry['mapping']} mapping); "
                        f"the audited tree has no results/{entry['system']}/{entry['benchmark']}")
    minutes = found[0].minutes
    match = minutes is not None and f"{minutes:.3f}" == f"{entry['minutes']:.3f}"
    return {"id": entry["id"], "system": entry["system"], "benchmark": entry["benchmark"],
            "division": entry["division"], "mapping": entry["mapping"], "source": entry["source"],
            "published_minutes": entry["minutes"], "audited_minutes": minutes, "match": match}


# ---- manifests and archives

def parse_manifest(text: str) -> tuple[dict[str, str], list[str]]:
    """`<sha256>  <path>` lines, as package.py writes them: (path -> digest, malformed lines)."""
    entries, malformed = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not name or not re.fullmatch(r"[0-9a-f]{64}", digest):
            malformed.append(line[:120])
        else:
            entries[name] = digest
    return entries, malformed


def check_manifest(label: str, text: str, digests: dict[str, Callable[[], str]], scope: str = "") -> ManifestCheck:
    """Compare a manifest with the files present (path relative to the manifest -> digest function).
    Only entries under `scope` are checked; a present file is unlisted if it lies in a folder the manifest
    covers and the manifest does not name it."""
    entries, malformed = parse_manifest(text)
    covered = {name.split("/", 1)[0] for name in entries}
    check = ManifestCheck(label, malformed=malformed)
    for name, digest in sorted(entries.items()):
        if not name.startswith(scope):
            continue
        if name not in digests:
            check.missing.append(name)
        elif digests[name]() != digest:
            check.mismatched.append(name)
        else:
            check.verified += 1
    check.unlisted = sorted(name for name in digests if name.startswith(scope) and name not in entries
                            and name.split("/", 1)[0] in covered and name != MANIFEST)
    return check


def folder_manifest(sub: Path) -> ManifestCheck | None:
    """The manifest.sha256 in `sub` or up to two levels above it (package.py writes it beside the division
    folder), checked for the files under `sub`."""
    sub = sub.resolve()
    for root in (sub, *list(sub.parents)[:2]):
        path = root / MANIFEST
        if not path.is_file():
            continue
        scope = "" if root == sub else sub.relative_to(root).as_posix() + "/"
        text = path.read_text(errors="replace")
        if scope and not any(name.startswith(scope) for name in parse_manifest(text)[0]):
            continue
        digests = {p.relative_to(root).as_posix(): (lambda p=p: sha256_file(p)) for p in sub.rglob("*") if p.is_file()}
        return check_manifest(str(path), text, digests, scope)
    return None


def unpack(archive: Path, dest: Path) -> ManifestCheck | None:
    """Check an archive's manifest against its members' bytes, in memory, then unpack its plain files and
    folders into `dest`; a member with an absolute or `..` path is refused before anything is written."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            digests, keep = {}, []
            for m in members:
                name = m.name.removeprefix("./")
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    raise UserError(f"{archive}: member {m.name!r} points outside the archive: refusing to unpack it")
                if m.isfile():
                    digest = hashlib.sha256()
                    reader = tar.extractfile(m)
                    while chunk := reader.read(1 << 20):
                        digest.update(chunk)
                    digests[name] = digest.hexdigest()
                    keep.append(m)
                elif m.isdir():
                    keep.append(m)
            manifest = None
            if MANIFEST in digests:
                member = next(m for m in members if m.name.removeprefix("./") == MANIFEST)
                text = tar.extractfile(member).read().decode(errors="replace")
                manifest = check_manifest(f"{archive.name}:{MANIFEST}", text,
                                          {n: (lambda d=d: d) for n, d in digests.items()})
            tar.extractall(dest, members=keep, filter="data")
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(f"{archive}: not a readable archive ({e})") from None
    return manifest


@contextmanager
def opened(sub: Path) -> Iterator[tuple[Path, ManifestCheck | None, str]]:
    """(folder to audit, manifest check, kind) for a folder or an archive; an archive's temporary folder is
    removed when the block ends."""
    sub = Path(sub)
    if sub.is_file() and sub.name.endswith(ARCHIVE_SUFFIXES):
        with tempfile.TemporaryDirectory(prefix="mlperf-audit.") as tmp:
            manifest = unpack(sub, Path(tmp))
            yield Path(tmp), manifest, "archive"
    elif sub.is_dir():
        yield sub, folder_manifest(sub), "folder"
    elif sub.exists():
        raise UserError(f"{sub} is neither a folder nor a .tar.gz archive")
    else:
        raise UserError(f"no folder or archive {sub}: give a submitter folder, its parent, or a .tar.gz from "
                        "`make submit`")


def manifest_findings(check: ManifestCheck) -> list[Finding]:
    out = [Finding("error", "manifest-mismatch", name,
                   f"sha256 differs from {check.file}: the file changed after it was packaged")
           for name in check.mismatched]
    out += [Finding("error", "manifest-missing-file", name, f"listed in {check.file} but absent")
            for name in check.missing]
    out += [Finding("warning", "manifest-unlisted-file", name, f"present but not listed in {check.file}")
            for name in check.unlisted]
    out += [Finding("error", "manifest-malformed", check.file, f"line is not `<sha256>  <path>`: {line!r}")
            for line in check.malformed]
    return out


# ---- one log

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
    """What the scorer does not read: hyperparameters, every seed, the eval cadence, TTT, clock steps back."""
    try:
        loglines, _ = mlp_parser.parse_file(str(path), ruleset=tools.RULESET)
    except PARSER_CRASHES as e:
        return LogFacts(hyperparameters={}, seeds=[], first_eval=None, eval_interval=None, ttt_minutes=None,
                        clock_steps=[], unparseable=f"{type(e).__name__}: {e} ({unparseable_line(path)})")
    hyperparameters, seeds, evals, steps = {}, [], [], []
    ttt, started, stopped, latest = None, False, False, None
    for line in loglines:
        key, value = line.key, line.value
        meta = value["metadata"] if isinstance(value["metadata"], dict) else {}
        if latest is not None and line.timestamp < latest[0] - CLOCK_SLACK_MS:
            steps.append(f"MLLOG line {line.lineno + 1} ({key}) is {(latest[0] - line.timestamp) / 1000:.1f} s "
                         f"before line {latest[2] + 1} ({latest[1]})")
        if latest is None or line.timestamp >= latest[0]:
            latest = (line.timestamp, key, line.lineno)
        if key == "seed":
            seeds.append(value["value"])
        elif key == "run_start":
            started = True
        elif key == "run_stop" and not stopped:
            stopped = True
            ttt = meta.get("TTT")
        elif key == "eval_accuracy" and not stopped and isinstance(meta.get("epoch_num"), (int, float)):
            evals.append(meta["epoch_num"])
        elif (not started and key.lower() not in NOT_HYPERPARAMETERS
              and isinstance(value["value"], (str, int, float, bool))):
            hyperparameters.setdefault(key, value["value"])
    return LogFacts(hyperparameters=hyperparameters, seeds=seeds, first_eval=evals[0] if evals else None,
                    eval_interval=evals[1] - evals[0] if len(evals) > 1 else None,
                    ttt_minutes=ttt / 60 if isinstance(ttt, (int, float)) else None, clock_steps=steps)


# ---- one benchmark folder

def seed_verdicts(files: list[Path], facts: list[LogFacts], division: str, root: Path) -> dict:
    """The official seed checker (closed division, as the package checker runs it), and the round's verdict."""
    values = [f.seeds[0] if f.seeds else None for f in facts]
    distinct = None not in values and len(set(values)) == len(values)
    result = {"values": values, "distinct": distinct, "passed": None, "round_passed": None, "errors": [],
              "note": "", "missing_fails_round": None}
    if division != "closed":
        result["note"] = "the package checker runs the seed checker on the closed division only"
        return result
    checker = seed_checker.SeedChecker(tools.RULESET)
    logged = [bool(f.seeds) for f in facts]
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


def olympic_convergence(runs: list[RunAudit]) -> float | None:
    """The RCP checker's olympic mean of convergence points: a run that did not succeed counts as infinite;
    more than one such run leaves no mean."""
    points = sorted(r.convergence_point if r.status == "success" and r.convergence_point is not None else math.inf
                    for r in runs)
    if len(points) < 3 or sum(math.isinf(p) for p in points) > 1:
        return None
    return sum(points[1:-1]) / (len(points) - 2)


def audit_benchmark(bench_dir: Path, system: dict, root: Path, *, verdict: str) -> tuple[BenchmarkAudit, list[Finding]]:
    where = bench_dir.relative_to(root).as_posix()
    bench = bench_dir.name
    files = sorted(bench_dir.glob("result_*.txt"), key=lambda p: (len(p.name), p.name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy, inside the RCP checker, on fewer than 3 runs
        score = scoring.score_benchmark(bench_dir, system, verdict=verdict)
    facts = [read_log(f) for f in files]
    findings: list[Finding] = []

    runs = [RunAudit(file=r.file, minutes=r.minutes, init_minutes=r.init_minutes, status=r.status, seed=r.seed,
                     global_batch_size=r.global_batch_size, convergence_point=r.convergence_point,
                     last_accuracy=r.last_accuracy, passed=r.passed, round_passed=r.round_passed, used=r.used,
                     counted=r.counted, note=r.note, errors=r.errors, ttt_minutes=f.ttt_minutes,
                     first_eval=f.first_eval, eval_interval=f.eval_interval, hyperparameters=f.hyperparameters)
            for r, f in zip(score.runs, facts, strict=True)]

    # A log the official parser cannot read fails compliance under both tools and is dropped like any failed run.
    for r, f in zip(runs, facts, strict=True):
        if f.unparseable:
            findings.append(Finding("error", "unparseable-log", f"{where}/{r.file}",
                                    f"mlp_parser cannot read it ({f.unparseable}): the official checkers fail "
                                    "or crash on it; scored as a failed run"))

    # The number of result files (the package checker wants exactly 5 or 10).
    need = tools.REQUIRED_RUNS[bench]
    if len(files) < need:
        names = {f.name for f in files}
        absent = [f"result_{i}.txt" for i in range(need) if f"result_{i}.txt" not in names]
        findings.append(Finding("error", "missing-result-file", where,
                                f"{len(files)} of the {need} result files the rules require"
                                + (f"; absent: {', '.join(absent)}" if absent else "")))
    elif len(files) > need:
        findings.append(Finding("error", "extra-result-file", where,
                                f"{len(files)} result files; the rules require exactly {need}"))

    # Compliance, under the verdict the run was scored with, and the differences between the two tools.
    failed = [r for r in runs if not r.counted]
    if len(failed) > 1:
        findings.append(Finding("error", "too-many-failed-runs", where,
                                f"{len(failed)} runs fail compliance ({', '.join(r.file for r in failed)}; status "
                                f"{', '.join(r.status or '-' for r in failed)}); at most one may be dropped: "
                                "the result is invalid"))
    elif failed:
        r, f = next((r, f) for r, f in zip(runs, facts, strict=True) if not r.counted)
        aborted = r.status != "success"
        what = ("an unparseable log (unparseable-log), " if f.unparseable else
                f"a non-converged run (status {r.status or '(none)'}), " if aborted else "fails compliance, ")
        reasons = [e[:200] for e in r.errors if r.used == "current" or not tools._is_weights_initialization(e)]
        findings.append(Finding("note" if aborted else "warning", "dropped-run", f"{where}/{r.file}",
                                what + "dropped as the slowest under olympic scoring: " + "; ".join(reasons[:2])))
    for r in runs:
        if r.counted and r.status != "success":
            findings.append(Finding("warning", "aborted-run-scored", f"{where}/{r.file}",
                                    f"run_stop status {r.status or '(none)'!s}, yet the run passes compliance"
                                    + (" (the open rules check little more than eval_accuracy < 1.0)"
                                       if score.division == "open" else "")
                                    + f", so its {scoring.fmt(r.minutes)} min count in the score as the official "
                                    "summarizer counts them (CHECKERS.md §10): a run that did not converge "
                                    "stands in the result"))
    differ = [r for r in runs if r.passed != r.round_passed]
    if differ:
        findings.append(Finding("note", "verdict-difference", where,
                                f"{len(differ)} of {len(runs)} runs fail mlperf-logging 4.1.68 and pass the v1.1 "
                                f"round's tool: {differ[0].note or tools.ROUND_DIFFERENCES['weights_initialization']} "
                                f"(4.1.68 says: {differ[0].errors[0][:160] if differ[0].errors else '-'})"))

    # Seeds.
    seeds = seed_verdicts(files, facts, score.division, root)
    missing = [r.file for r, f in zip(runs, facts, strict=True) if not f.seeds and not f.unparseable]
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
        findings.append(Finding(severity, "missing-seed", where,
                                f"{len(missing)} of {len(runs)} runs log no seed ({', '.join(missing)}): the rules "
                                f"want one int seed per run; {why}"))
    logged_seeds = [json.dumps(v) for v in seeds["values"] if v is not None]
    repeated = sorted({v for v in logged_seeds if logged_seeds.count(v) > 1})
    if repeated:
        findings.append(Finding("error", "duplicate-seed", where,
                                f"seed(s) {', '.join(repeated)} repeat across runs (seeds {seeds['values']}): the "
                                "rules want a different seed in every run"))
    if seeds["passed"] is False:
        findings.append(Finding("error" if not seeds["round_passed"] else "note", "seed-check", where,
                                "official seed checker: " + "; ".join(seeds["errors"][:3])
                                + (f" ({seeds['note']})" if seeds["note"] else "")))

    # Hyperparameters: one set per submission; the batch size above all (the RCP checker reads one).
    # An unparseable log has none to compare (unparseable-log names it).
    parsed = [(r, f) for r, f in zip(runs, facts, strict=True) if not f.unparseable]
    keys = sorted({k for _, f in parsed for k in f.hyperparameters})
    diff = {k: {r.file: f.hyperparameters.get(k) for r, f in parsed} for k in keys
            if len({json.dumps(f.hyperparameters.get(k)) for _, f in parsed}) > 1}
    common = {k: parsed[0][1].hyperparameters[k] for k in keys if k not in diff}
    if "global_batch_size" in diff:
        values = ", ".join(f"{name} {v}" for name, v in diff["global_batch_size"].items())
        findings.append(Finding("error", "mixed-batch-size", where,
                                f"global_batch_size differs between runs ({values}): every run must use the same "
                                "batch; the RCP checker cannot read one (4.1.68's package checker crashes with "
                                "KeyError: None on such a folder, CHECKERS.md §7.1)"))
    others = [k for k in diff if k != "global_batch_size"]
    if others:
        findings.append(Finding("warning", "mixed-hyperparameters", where,
                                f"runs differ in {', '.join(others)}: a submission's runs share one set of "
                                "hyperparameters"))

    # Clocks and times.
    for r, f in zip(runs, facts, strict=True):
        here = f"{where}/{r.file}"
        if f.clock_steps:
            findings.append(Finding("error", "time-order", here,
                                    "time_ms goes backwards: " + "; ".join(f.clock_steps[:3])
                                    + ": the log was edited or interleaved, its minutes cannot be trusted"))
        if f.ttt_minutes is not None and r.minutes is not None and abs(f.ttt_minutes - r.minutes) > TTT_SLACK_MINUTES:
            findings.append(Finding("error", "ttt-mismatch", here,
                                    f"run_stop says TTT {f.ttt_minutes * 60:.1f} s, the timestamps say "
                                    f"{r.minutes * 60:.1f} s: a time was edited"))
        if r.init_minutes is not None and r.init_minutes > INIT_RULE_MINUTES:
            findings.append(Finding("warning", "init-time", here,
                                    f"init_start to init_stop is {r.init_minutes:.1f} min; the rules allow "
                                    f"{INIT_RULE_MINUTES:.0f} min untimed (the 1.1 checker accepts < 30)"))

    # RCP (closed only): the 4.1.68 verdict, as its package checker runs it.
    demo = any(DEMO_NOTE in str(v) for v in system.values())
    rcp = None
    if score.rcp is not None:
        rcp = {"passed": score.rcp.passed, "message": score.rcp.message, "scaling_factor": score.rcp.scaling_factor,
               "bypass_requested": tools.rcp_bypass_requested(bench_dir), "round_passed": None,
               "round_note": DIFFERENCES[3]["applied"]}
        if not score.rcp.passed:
            findings.append(Finding("error", "rcp-fail", where,
                                    f"RCP checker (4.1.68, pruned RCPs): {score.rcp.message}"))
        elif "rcp_bypass" in score.rcp.message:
            # A real submission that bypasses the RCP faces review; our demonstrations bypass it by design.
            findings.append(Finding("note" if demo else "warning", "rcp-bypass", where,
                                    f"RCP checker: {score.rcp.message}" + (" (a demonstration)" if demo else "")))

    audit = BenchmarkAudit(
        path=where, submitter=score.submitter, division=score.division, system=score.system,
        system_name=score.system_name, benchmark=bench, minutes=score.minutes,
        valid=score.valid, problem=score.problem,
        dropped=score.dropped, rcp=rcp, seeds=seeds,
        convergence={"unit": UNITS[bench], "points": [r.convergence_point for r in runs],
                     "olympic_mean": olympic_convergence(runs)},
        hyperparameters=common, hyperparameter_diff=diff, runs=runs)
    return audit, findings


# ---- a whole tree

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


def audit_tree(root: Path, *, verdict: str = "auto") -> tuple[list[dict], list[BenchmarkAudit], list[Finding]]:
    systems, benchmarks, findings = [], [], []
    for sub in scoring.submitter_dirs(root):
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
                    findings.append(Finding("warning", "unknown-benchmark", where,
                                            "not a v1.1 benchmark this package knows (resnet, bert): skipped, as the "
                                            "package checker skips it, silently"))
                    continue
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
        result = compare_with_registry(benchmarks, entry) if entry else None
    if manifest:
        findings = manifest_findings(manifest) + findings
    if result:
        findings.append(Finding("note" if result["match"] else "error",
                                "result-id-match" if result["match"] else "result-id-mismatch",
                                f"results/{result['system']}/{result['benchmark']}",
                                f"{result['id']} ({result['mapping']} mapping): published "
                                f"{result['published_minutes']:.3f} min, audited "
                                f"{scoring.fmt(result['audited_minutes'])} min"))
    order = {"error": 0, "warning": 1, "note": 2}
    findings.sort(key=lambda f: order[f.severity])
    return Report(audited=str(sub), kind=kind, ruleset=tools.RULESET, tools=TOOLS,
                  elapsed_s=round(time.perf_counter() - started, 2), manifest=manifest, systems=systems,
                  benchmarks=benchmarks, result_id=result, findings=findings)


# ---- the report

def verdict_text(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def markdown(report: Report) -> str:
    errors, warnings_, notes = report.count("error"), report.count("warning"), report.count("note")
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
        lines += [f"## Result ID {r['id']}: {'MATCH' if r['match'] else 'MISMATCH'}", "",
                  f"{r['benchmark']} on {r['system']} ({r['division']}): published {r['published_minutes']:.3f} min, "
                  f"audited {scoring.fmt(r['audited_minutes'])} min. Mapping {r['mapping']}: {r['source']}.", ""]
    lines += ["## Findings", ""]
    lines += [f"- **{f.severity}** `{f.code}` {f.where}: {f.message}" for f in report.findings] or ["- none"]
    lines += ["", "## Scores", "",
              "| system | division | benchmark | minutes | runs | dropped | compliance 4.1.68 / round | seeds "
              "| RCP (4.1.68) | convergence (olympic mean) |", "|" + "---|" * 10]
    for b in report.benchmarks:
        minutes = scoring.fmt(b.minutes) + ("" if b.valid else " (INVALID)")
        compliance = f"{sum(r.passed for r in b.runs)}/{sum(r.round_passed for r in b.runs)} of {len(b.runs)} pass"
        seeds = "some missing" if None in b.seeds["values"] else "distinct" if b.seeds["distinct"] else "NOT distinct"
        if b.seeds["passed"] is not None:
            seeds += f", checker {verdict_text(b.seeds['passed'])}/{verdict_text(b.seeds['round_passed'])}"
        rcp = "n/a (open)" if b.rcp is None else f"{verdict_text(b.rcp['passed'])}: {b.rcp['message']}" + (
            f", scaling {b.rcp['scaling_factor']:.4f}" if b.rcp["scaling_factor"] != 1.0 else "")
        conv = b.convergence["olympic_mean"]
        lines.append(f"| {b.system} | {b.division} | {b.benchmark} | {minutes} | {len(b.runs)} | {b.dropped} | "
                     f"{compliance} | {seeds} | {rcp} | {'-' if conv is None else f'{conv:,.1f}'} "
                     f"{b.convergence['unit']} |")
    lines += ["", "## Systems", ""]
    lines += [f"- {s['file']}: {verdict_text(s['passed'])}" + (f" ({'; '.join(s['reasons'])})" if s["reasons"] else "")
              for s in report.systems]
    for b in report.benchmarks:
        lines += ["", f"## {b.system} / {b.benchmark} ({b.path})", "",
                  "Hyperparameters (alike in every run): "
                  + (", ".join(f"{k}={v}" for k, v in b.hyperparameters.items()) or "none logged")]
        for key, values in b.hyperparameter_diff.items():
            lines.append(f"DIFFERS `{key}`: " + ", ".join(f"{name}={v}" for name, v in values.items()))
        lines += ["", f"| run | minutes | init min | status | seed | converged at ({b.convergence['unit']}) | accuracy "
                      "| 4.1.68 | round | scored with |", "|" + "---|" * 10]
        for r in b.runs:
            point = "-" if r.convergence_point is None else f"{r.convergence_point:,}"
            lines.append(f"| {r.file} | {scoring.fmt(r.minutes)} | {scoring.fmt(r.init_minutes, 2)} | {r.status} | "
                         f"{r.seed} | {point} | {scoring.fmt(r.last_accuracy, 4)} | {verdict_text(r.passed)} | "
                         f"{verdict_text(r.round_passed)} | {r.used}{'' if r.counted else ' (dropped)'} |")
        grouped: dict[str, list[str]] = {}
        for r in b.runs:
            if r.errors:
                grouped.setdefault("; ".join(e[:160] for e in r.errors[:3]), []).append(r.file)
        if grouped:
            lines.append("")
            lines += [f"- {', '.join(files)}: {text}" for text, files in grouped.items()]
    lines += ["", "## Known differences between the v1.1 round's tool and 4.1.68", ""]
    lines += [f"- **{d['topic']}**: 4.1.68: {d['current']}; round: {d['round']}. Applied: {d['applied']} "
              f"(source: {d['source']})" for d in report.differences]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    md, js = out / "audit.md", out / "audit.json"
    atomic_write_text(js, json.dumps(asdict(report), indent=2, default=str) + "\n")
    atomic_write_text(md, markdown(report))
    return md, js


# ---- command line

def add_arguments(p) -> None:
    p.add_argument("sub", nargs="?", type=Path,
                   help="submitter folder, a folder of submitter folders, or a .tar.gz from `make submit`")
    p.add_argument("--result-id", default="",
                   help="a v1.1 result ID (e.g. 1.1-2040): compare with its published minutes")
    p.add_argument("--results-root", type=Path,
                   help="a checkout of mlcommons/training_results_v1.1 (or a folder holding its submitter "
                        "folders), for --result-id without SUB")
    p.add_argument("--out", type=Path, help="folder for audit.md and audit.json (default out/audit-<name>-<time>)")
    p.add_argument("--verdict", choices=("auto", "current", "round"), default="auto",
                   help="compliance verdict to score with: 4.1.68 (current), the v1.1 round's tool (round), or round "
                        "only where the one failure is a known difference (auto)")


def main(args) -> int:
    entry = lookup(args.result_id) if args.result_id else None
    if args.sub is None and entry is None:
        raise UserError("give SUB=<submitter folder or .tar.gz>, or RESULT_ID=<a v1.1 result ID>")
    sub = args.sub if args.sub is not None else locate(entry, args.results_root)
    report = audit(sub, verdict=args.verdict, entry=entry)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(sub).name.removesuffix(".tar.gz")) or "sub"
    out = args.out or Path("out") / f"audit-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    md, js = write_report(report, out)
    print(markdown(report))
    print(f"report: {md} and {js}")
    return 1 if report.count("error") else 0
