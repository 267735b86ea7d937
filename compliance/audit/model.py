"""What an audit records: findings, manifest checks, per-log facts, per-run and per-benchmark audits, the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..differences import TOOLS, as_list
from ..score import BenchmarkScore, RunScore

UNITS = {"resnet": "epochs", "bert": "samples"}
SEVERITIES = ("error", "warning", "note")


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
class ClockStep:
    """One MLLOG line whose time_ms is before an earlier line's."""
    line: int                        # 1-based line number of the line that steps back
    key: str
    before_line: int                 # the latest line before it
    before_key: str
    seconds: float                   # how far back, s
    region: str                      # "untimed" (before run_start), "timed", "after" (after run_stop)

    def text(self) -> str:
        return (f"MLLOG line {self.line} ({self.key}) is {self.seconds:.1f} s before line {self.before_line} "
                f"({self.before_key})")


@dataclass
class LogFacts:
    hyperparameters: dict
    seeds: list
    first_eval: float | None
    eval_interval: float | None      # between the first two evals (BERT: samples)
    ttt_minutes: float | None        # run_stop metadata TTT (seconds in Graphcore's logs), in minutes
    clock_steps: list[ClockStep]
    stop_before_start: bool = False  # run_stop's time_ms is before run_start's
    stop_at_eval: bool = False       # run_stop carries the time of the last eval_accuracy before it
    unparseable: str = ""            # why the official parser cannot read the log, when it cannot


@dataclass
class RunAudit:
    """One run: its score (score.RunScore) and the facts only the audit reads (LogFacts)."""
    score: RunScore
    facts: LogFacts

    def to_dict(self) -> dict:
        """The flat record audit.json has always had, plus the convergence source and the clock steps."""
        facts = asdict(self.facts)
        return asdict(self.score) | {"counted": self.score.counted, "ttt_minutes": facts["ttt_minutes"],
                                     "first_eval": facts["first_eval"], "eval_interval": facts["eval_interval"],
                                     "hyperparameters": facts["hyperparameters"],
                                     "clock_steps": facts["clock_steps"]}


@dataclass
class BenchmarkAudit:
    """One results/<system>/<benchmark> folder: its score (score.BenchmarkScore, whose RCP verdict is 4.1.68's
    alone) and what only the audit reads: both tools' RCP verdicts, seeds, convergence, hyperparameters, runs."""
    path: str
    score: BenchmarkScore
    rcp: dict | None                 # 4.1.68's verdict and the round's, side by side (closed only)
    seeds: dict
    convergence: dict
    hyperparameters: dict            # the values every run logged alike
    hyperparameter_diff: dict        # key -> {file: value} where the runs differ
    runs: list[RunAudit]

    def to_dict(self) -> dict:
        """The record audit.json has always had: the score's fields, then the audit's."""
        s = self.score
        return {"path": self.path, "submitter": s.submitter, "division": s.division, "system": s.system,
                "system_name": s.system_name, "benchmark": s.benchmark, "minutes": s.minutes, "valid": s.valid,
                "problem": s.problem, "dropped": s.dropped, "rcp": self.rcp, "seeds": self.seeds,
                "convergence": self.convergence, "hyperparameters": self.hyperparameters,
                "hyperparameter_diff": self.hyperparameter_diff, "runs": [r.to_dict() for r in self.runs]}


@dataclass
class Report:
    audited: str
    kind: str
    ruleset: str
    elapsed_s: float
    manifest: ManifestCheck | None
    systems: list[dict]
    benchmarks: list[BenchmarkAudit]
    result_id: dict | None
    findings: list[Finding]
    tools: dict = field(default_factory=lambda: dict(TOOLS))
    differences: list[dict] = field(default_factory=as_list)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def findings_at(self, where: str) -> list[Finding]:
        """The findings about one benchmark folder, its runs included."""
        return [f for f in self.findings if f.where == where or f.where.startswith(where + "/")]

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("benchmarks", "findings", "manifest")}
        return out | {"manifest": asdict(self.manifest) if self.manifest else None,
                      "benchmarks": [b.to_dict() for b in self.benchmarks],
                      "findings": [asdict(f) for f in self.findings]}
