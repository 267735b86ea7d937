"""`make audit`: re-check and re-score a submission, as today's official tools and as the v1.1 round's would.

    python -m mlperf_submission.compliance audit SUB [--result-id 1.1-2040] [--out DIR] [--verdict auto]
    python -m mlperf_submission.compliance audit --result-id 1.1-2040 --results-root DIR
    python -m mlperf_submission.compliance audit --results-root DIR          # every submitter folder in DIR

SUB is a submitter folder (results/ and systems/ inside), a folder holding submitter folders, or an
archive from `make submit` (.tar.gz); manifest.sha256 is checked in both (manifest.py).

For every system and benchmark: the official system description, compliance (ruleset 1.1.0) and seed
checks, each verdict given as mlperf-logging 4.1.68 gives it and as the v1.1 round's tools gave it
(differences.py, each with its source); the RCP verdict of both (the official checker with pruned RCPs,
and with every RCP as the round had them, `--bert_train_samples` where the logs give BERT samples in
train_samples); the olympic score; per run the minutes, init minutes, status, seed, convergence point and
where it was read, and hyperparameters; a diff of the hyperparameters between runs; and findings, each
with a short name and a severity that means something (findings.py). With --result-id the score is
compared, to 3 decimals, with the minutes in result_ids.json, and the system the ID was taken to mean is
said (every mapping is inferred, ids.py).

Writes DIR/audit.md and DIR/audit.json (default out/audit-<name>-<time>/) and prints the Markdown; over a
whole checkout, DIR/<submitter>/audit.{md,json} and DIR/summary.{md,json}. Exit status 0 when no finding
is an error, 1 when one is, 2 on bad input. Timing (2-core AMD EPYC): the 80 Graphcore logs about 4 s;
all 76 ResNet and BERT results of training_results_v1.1 (560 logs) 28.9 s of CPU in two processes, 59 s
wall on the shared machine at load average 7 (README, Auditing).
"""

from ..differences import DIFFERENCES, TOOLS
from .cli import add_arguments, main
from .core import audit, audit_benchmark, audit_tree, olympic_convergence
from .ids import REGISTRY, get, locate, lookup, registry
from .logs import log_division, read_log
from .manifest import MANIFEST, opened
from .model import (
    UNITS,
    BenchmarkAudit,
    ClockStep,
    Finding,
    LogFacts,
    ManifestCheck,
    Report,
    RunAudit,
)
from .render import markdown, write_report

__all__ = [
    "DIFFERENCES", "MANIFEST", "REGISTRY", "TOOLS", "UNITS", "BenchmarkAudit", "ClockStep", "Finding", "LogFacts",
    "ManifestCheck", "Report", "RunAudit", "add_arguments", "audit", "audit_benchmark", "audit_tree", "get",
    "locate", "log_division", "lookup", "main", "markdown", "olympic_convergence", "opened", "read_log", "registry",
    "write_report",
]
