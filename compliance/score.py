"""Scores of a submission tree: per system and benchmark, the olympic mean in minutes and the RCP verdict.

The v1.1 rule: time to train is run_stop - run_start; drop the fastest and the slowest run and average
the rest; one run that fails compliance (e.g. did not converge) counts as the slowest and is dropped,
more than one makes the result invalid. The averaging is the official summarizer's own function.

The convergence point is the one the RCP checker reads: the epoch (ResNet) or the training samples (BERT) at
the last eval before run_stop. BERT logs say it one of two ways, and `convergence_source` names which:
`epoch_num` counts samples (Graphcore, Habana, Google's TF code), or it stays constant (NVIDIA's code and
every submitter that reused it, Google's JAX code log epoch_num 1 at every eval) and the count is the eval's
own samples metadata (`train_samples_since_beginning`) or the final `train_samples` line after run_start;
the RCP checker then has to be run with `--bert_train_samples`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mlperf_logging.result_summarizer.result_summarizer import _compute_olympic_average

from ..common.cli import UserError
from . import tools


@dataclass
class RunScore:
    file: str
    minutes: float | None
    status: str
    seed: int | None
    global_batch_size: float | None
    convergence_point: float | None   # epochs (ResNet) or samples (BERT) at the last eval
    convergence_source: str           # where the point was read: epoch_num, train_samples, eval metadata ...
    last_accuracy: float | None
    init_minutes: float | None
    passed: bool                      # mlperf-logging 4.1.68
    round_passed: bool                # the v1.1 round's tool
    used: str = "current"             # which verdict this run was scored with
    note: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def counted(self) -> bool:
        return self.round_passed if self.used == "round" else self.passed


@dataclass
class BenchmarkScore:
    submitter: str
    division: str
    system: str
    system_name: str
    benchmark: str
    runs: list[RunScore]
    minutes: float | None             # olympic mean; None when invalid
    dropped: int
    valid: bool
    problem: str
    rcp: tools.RcpVerdict | None      # mlperf-logging 4.1.68 as its package checker runs it (pruned RCPs)

    @property
    def bert_train_samples(self) -> bool:
        """Whether the RCP checker must read BERT samples from train_samples, as these logs give them."""
        return any(r.convergence_source == "train_samples" for r in self.runs)


# Where a BERT eval's metadata gives the samples trained so far when epoch_num does not (Google's JAX code).
SAMPLE_METADATA = ("train_samples_since_beginning", "samples_count")


def convergence(benchmark: str, evals: list, train_samples: float | None) -> tuple[float | None, str]:
    """(convergence point, its source) from the evals' metadata before run_stop, in order, and the last
    train_samples value logged after run_start."""
    if not evals:
        return None, ""
    epochs = [m.get("epoch_num") for m in evals]
    if benchmark != "bert" or len(set(epochs)) > 1:
        return epochs[-1], "epoch_num"
    for key in SAMPLE_METADATA:
        if isinstance(evals[-1].get(key), (int, float)):
            return evals[-1][key], f"eval metadata {key}"
    if isinstance(train_samples, (int, float)):
        return train_samples, "train_samples"
    return epochs[-1], "epoch_num (constant, no sample count logged)"


def parse_run(path: Path) -> dict:
    """Times, status and run facts of one log, read with the official parser."""
    try:
        loglines, errors = tools.parse_log(path)
    except (KeyError, TypeError) as e:
        # The parser raises on an MLLOG line without time_ms, key, value or metadata. The compliance
        # checker fails such a log, so it is dropped like any failed run: no facts, one parse error.
        loglines, errors = [], [repr(e)]
    first: dict[str, object] = {}
    last_eval, evals, train_samples = None, [], None
    for line in loglines:
        first.setdefault(line.key, line)
        if "run_stop" in first:
            continue
        if line.key == "eval_accuracy":
            last_eval = line
            meta = line.value.get("metadata")
            evals.append(meta if isinstance(meta, dict) else {})
        elif line.key == "train_samples" and "run_start" in first:
            train_samples = line.value["value"]

    def ms(key):
        return first[key].timestamp if key in first else None

    benchmark = first["submission_benchmark"].value["value"] if "submission_benchmark" in first else ""
    point, source = convergence(benchmark, evals, train_samples)
    start, stop, init_start, init_stop = ms("run_start"), ms("run_stop"), ms("init_start"), ms("init_stop")
    return {
        "minutes": (stop - start) / 60000 if start is not None and stop is not None else None,
        "init_minutes": (init_stop - init_start) / 60000 if None not in (init_start, init_stop) else None,
        "status": first["run_stop"].value.get("metadata", {}).get("status", "") if "run_stop" in first else "",
        "seed": first["seed"].value["value"] if "seed" in first else None,
        "global_batch_size": first["global_batch_size"].value["value"] if "global_batch_size" in first else None,
        "convergence_point": point,
        "convergence_source": source,
        "last_accuracy": last_eval.value["value"] if last_eval else None,
        "parse_errors": len(errors),
    }


def score_benchmark(bench_dir: Path, system: dict, *, verdict: str = "auto") -> BenchmarkScore:
    """Score one results/<system>/<benchmark> folder.

    verdict: "current" scores with mlperf-logging 4.1.68's compliance verdicts, "round" with what the
    v1.1 round's tool accepted, "auto" uses "round" for runs whose only failure is a known difference.
    """
    files = sorted(bench_dir.glob("result_*.txt"), key=lambda p: (len(p.name), p.name))
    runs = []
    for f in files:
        check = tools.check_log(f)
        facts = parse_run(f)
        facts.pop("parse_errors")
        used = "current" if verdict == "current" or (verdict == "auto" and check.passed) else "round"
        runs.append(RunScore(file=f.name, passed=check.passed, round_passed=check.round_passed, used=used,
                             note=check.round_note if used == "round" else "",
                             errors=check.summary_lines(), **facts))
    benchmark = bench_dir.name
    counted = [r.minutes for r in runs if r.counted and r.minutes is not None]
    dropped = len(runs) - len(counted)
    problem = ""
    if len(runs) != tools.REQUIRED_RUNS.get(benchmark, len(runs)):
        problem = f"{len(runs)} result files, the rules require {tools.REQUIRED_RUNS[benchmark]}"
    if dropped > 1:
        problem = f"{dropped} runs fail compliance; at most one may be dropped"
    minutes = _compute_olympic_average(counted, dropped, 1) if dropped <= 1 else None
    division = system.get("division", "")
    score = BenchmarkScore(
        submitter=system.get("submitter", ""), division=division, system=bench_dir.parent.name,
        system_name=system.get("system_name", ""), benchmark=benchmark, runs=runs, minutes=minutes,
        dropped=dropped, valid=not problem and minutes is not None, problem=problem, rcp=None)
    if division != "closed":
        return score
    return replace(score, rcp=tools.check_rcp(bench_dir, bert_train_samples=score.bert_train_samples))


def submitter_dirs(root: Path) -> list[Path]:
    """`root` itself if it is a submitter folder (has results/), else its submitter subfolders."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no folder {root}: give a submitter folder (with results/ and systems/) or its parent")
    if (root / "results").is_dir():
        return [root]
    found = sorted(p.parent for p in root.glob("**/results") if p.is_dir() and (p.parent / "systems").is_dir())
    if not found:
        raise UserError(f"{root} holds no submitter folder (one with results/ and systems/ inside)")
    return found


def score_tree(root: Path, *, verdict: str = "auto") -> list[BenchmarkScore]:
    scores = []
    for sub in submitter_dirs(root):
        for system_dir in sorted(p for p in (sub / "results").iterdir() if p.is_dir()):
            system_file = sub / "systems" / f"{system_dir.name}.json"
            if not system_file.is_file():
                raise UserError(f"{system_file} is missing: every results/<system> needs systems/<system>.json")
            try:
                system = json.loads(system_file.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{system_file}: not valid JSON ({e})") from None
            for bench_dir in sorted(p for p in system_dir.iterdir() if p.is_dir()):
                if bench_dir.name not in tools.REQUIRED_RUNS:
                    continue
                scores.append(score_benchmark(bench_dir, system, verdict=verdict))
    if not scores:
        raise UserError(f"{root} holds no results/<system>/<resnet|bert>/result_*.txt")
    return scores


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(scores: list[BenchmarkScore]) -> str:
    """A Markdown table: one row per system and benchmark, then per-run detail."""
    head = ["submitter", "division", "system", "benchmark", "minutes", "runs", "dropped", "RCP", "verdicts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scores:
        used = sorted({r.used for r in s.runs})
        rcp = "n/a (open)" if s.rcp is None else ("PASS" if s.rcp.passed else "FAIL") + f": {s.rcp.message}"
        minutes = fmt(s.minutes) + ("" if s.valid else f" (INVALID: {s.problem})")
        lines.append(f"| {s.submitter} | {s.division} | {s.system} | {s.benchmark} | {minutes} | "
                     f"{len(s.runs)} | {s.dropped} | {rcp} | {'+'.join(used)} |")
    lines.append("")
    lines.append("Per run (minutes run_start to run_stop; verdict: 4.1.68 / v1.1 round):")
    for s in scores:
        lines.append(f"- {s.system}/{s.benchmark}:")
        lines += [f"    note: {n}" for n in sorted({r.note for r in s.runs if r.note})]
        for r in s.runs:
            flag = "" if r.counted else "  [dropped]"
            lines.append(
                f"    {r.file}: {fmt(r.minutes)} min, seed {r.seed}, status {r.status}, "
                f"converged at {r.convergence_point} ({r.convergence_source}), accuracy {fmt(r.last_accuracy, 4)}, "
                f"verdict {'PASS' if r.passed else 'FAIL'}/{'PASS' if r.round_passed else 'FAIL'} "
                f"(scored with {r.used}){flag}")
    return "\n".join(lines)


def to_json(scores: list[BenchmarkScore]) -> str:
    return json.dumps([asdict(s) for s in scores], indent=2)
