"""How the v1.1 round's tools judged a v1.1 submission where mlperf-logging 4.1.68 judges it otherwise: the one
table of round differences, read by the checker's verdicts (tools.py) and the audit (audit/).

Data, keyed by topic: what 4.1.68 does, what the round did, how this audit applies it, and the source.
Sources: ../shared/CHECKERS.md (both tools built and run on the same logs), mlcommons/logging's history
(tag 1.1.0-rc4, PRs #200-#202 merged at beaf26d on 2021-11-03, commit 52245a0) and the round's published
checker output (NVIDIA's package_checker.out in training_results_v1.1).
"""

from __future__ import annotations

TOOLS = {"current": "mlperf-logging 4.1.68, ruleset 1.1.0",
         "round": "the v1.1 round's review: mlcommons/logging 1.1.0-rc4's compliance and seed checkers, and the "
                  "RCP checker with the tables 4.1.68 ships (after PRs #200-#202) and the round's statistics"}

DIFFERENCES: dict[str, dict[str, str]] = {
    "weights_initialization": {
        "current": "a closed run without the full tensor list fails",
        "round": "only a warning: 'Failed weights initialization check (can be ignored for 1.1.0)'",
        "applied": "compliance: a run whose only errors are weights_initialization passes under the round",
        "source": "CHECKERS.md §12; 1.1.0-rc4 compliance_checker/mlp_compliance.py put_warning(...)"},
    "BERT tensor list": {
        "current": "398 names; logging cls/predictions/decoder/kernel fails",
        "round": "399 names with cls/predictions/decoder/kernel; a mismatch only warned (above)",
        "applied": "covered by the weights_initialization rule above",
        "source": "CHECKERS.md §12; training_1.1.0/closed_bert.yaml at 1.1.0-rc4 and in 4.1.68"},
    "seed": {
        "current": "every closed run must log a seed (seed checker)",
        "round": "a run without a seed failed only if a run checked before it logged one",
        "applied": "seed check: 'logs no seed' errors do not count under the round when that order does not hold",
        "source": "CHECKERS.md §6, §12; 1.1.0-rc4 package_checker/seed_checker.py _assert_unique_seed_per_run"},
    "RCP tables": {
        "current": "training_1.1.0/rcps_{resnet,bert}.json as 4.1.68 ships them",
        "round": "the same tables: the review ran after mlcommons/logging PRs #200-#202 (merged at beaf26d, "
                 "2021-11-03) put in ResNet batch 49152 and the revised BERT 12288 and 13056 entries",
        "applied": "both verdicts use the 4.1.68 tables",
        "source": "mlcommons/logging PRs #200-#202 and beaf26d; NVIDIA's published package_checker.out in "
                  "training_results_v1.1 cites those entries"},
    "RCP statistics": {
        "current": "pruned RCPs (an RCP slower than a larger batch's is dropped); reference stdev over all "
                   "runs (since 52245a0)",
        "round": "every RCP (no pruning); reference stdev over the olympic subset (fastest and slowest "
                 "dropped), which gives a smaller stdev and so a slightly smaller allowed speedup",
        "applied": "round verdict: the official checker with rcp_pass=full_rcps; its options cannot set the "
                   "stdev rule, so that part of the round's rule is stated, not re-run. On the 70 closed ResNet and "
                   "BERT results of training_results_v1.1 this verdict equals that of the round's own checker "
                   "(mlcommons/logging at beaf26d, run apart): 67 pass, Graphcore's closed BERT POD16 and POD64 "
                   "and Dell's DSS8440x10A100 ResNet fail",
        "source": "rcp_checker/rcp_checker.py compute_rcp_stats and _prune_rcps in 4.1.68; commit 52245a0"},
    "BERT samples": {
        "current": "the RCP checker reads eval_accuracy's epoch_num unless run with --bert_train_samples",
        "round": "logs whose epoch_num stays constant (NVIDIA's code, its reusers, Google's JAX code) were "
                 "checked with --bert_train_samples",
        "applied": "both verdicts: --bert_train_samples where a run's count comes from train_samples; each "
                   "run's convergence source is reported",
        "source": "rcp_checker.py read_submission_file (4.1.68); issue 17 (rcp_checker --bert_train_samples "
                  "passes NVIDIA's DGX A100 BERT results)"},
    "system description": {
        "current": "the 33 fields; status values are checked from ruleset 4.0.0 only",
        "round": "the same 33 fields",
        "applied": "identical verdicts",
        "source": "CHECKERS.md §8.2; system_desc_checker.py of both"},
}


def as_list() -> list[dict[str, str]]:
    """The differences as report rows, each with its topic."""
    return [{"topic": topic, **entry} for topic, entry in DIFFERENCES.items()]


def round_note(topic: str) -> str:
    """Why a verdict differs between the two tools, in one line."""
    entry = DIFFERENCES[topic]
    return f"{topic} in the v1.1 round's checker (1.1.0-rc4): {entry['round']}; in 4.1.68: {entry['current']}"
