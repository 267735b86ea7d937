"""End to end on the smoke presets: `make submit` for each division and benchmark it is run for (closed BERT's
ten 24-layer runs are too long for the suite: its single run is checked below), the same command again, and a
single smoke run of each closed trainer. The runs are the shared ones of conftest.py, which other files read
too (the golden files' runs are among them)."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time

import pytest
from fakes import one_line_error
from helpers import eval_accuracies, log_events, run_module

from mlperf_submission.closed.bert import presets as bert_presets
from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.compliance.tools import PACKAGE_SUCCESS, check_log


def submit(*args):
    return run_module("mlperf_submission.compliance", "submit", *args)


@pytest.mark.slow
@pytest.mark.parametrize("division, bench", [("closed", "resnet"), ("open", "resnet"), ("open", "bert")])
def test_demo_submission_end_to_end(smoke_submission, division, bench):
    submitted = smoke_submission(division, bench)
    out, proc = submitted.out, submitted.proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith(PACKAGE_SUCCESS)
    tree = out / division / "DEMO"
    logs = sorted((tree / "results" / "demo-local" / bench).glob("result_*.txt"))
    assert [p.name for p in logs] == [f"result_{i}.txt" for i in range(len(submitted.seeds))]
    assert all(check_log(p).passed for p in logs)
    score = (out / "score.md").read_text()
    assert f"| DEMO | {division} | demo-local | {bench} |" in score
    code = tree / "benchmarks" / bench / "implementations" / "pytorch" / division / bench / "train.py"
    assert code.exists()
    if division == "closed":
        closed_tree(out, tree, bench, score)
    else:
        open_tree(out, tree, bench, logs)


def closed_tree(out, tree, bench, score):
    """A closed demonstration: labelled so, the RCP bypass, an archive whose manifest matches, the runs kept."""
    assert (tree / "results" / "demo-local" / bench / "package_checker_params").read_text() == "rcp-bypass"
    assert "DEMONSTRATION" in (tree / "README.md").read_text()
    assert "not a valid result" in (tree / "systems" / "demo-local.json").read_text()
    assert "rcp_bypass" in score
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.sha256").read().decode().splitlines()
        for line in manifest:
            digest, name = line.split("  ", 1)
            assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() == digest
    assert len(manifest) == sum(1 for p in (out / "closed").rglob("*") if p.is_file())
    # The runs stay in OUT/runs with their records and console output.
    assert sorted(p.name for p in (out / "runs").glob("result_*")) == sorted(
        f"result_{i}.{ext}" for i in range(5) for ext in ("txt", "json", "log"))


def open_tree(out, tree, bench, logs):
    """An open demonstration: open in the system and every log, every run successful, the page, the README."""
    assert json.loads((tree / "systems" / "demo-local.json").read_text())["division"] == "open"
    for log in logs:
        lines = log_events(log)
        assert {"key": "submission_division", "value": "open"}.items() <= next(
            e for e in lines if e["key"] == "submission_division").items()
        assert lines[-1]["key"] == "run_stop" and lines[-1]["metadata"]["status"] == "success"
        if bench == "bert":  # sequences, not packs: trained up to the last eval, and the 512 of the eval set
            values = {e["key"]: e["value"] for e in lines}
            trained = [e for e in lines if e["key"] == "eval_accuracy"][-1]["metadata"]["epoch_num"]
            assert (values["train_samples"], values["eval_samples"]) == (trained, 512)
    page = (out / "report" / "index.html").read_text()
    assert "Time to result" in page and len(list((out / "report" / "plots").glob("*.png"))) >= 2
    readme = (tree / "benchmarks" / bench / "implementations" / "pytorch" / "README.md").read_text()
    assert "Open-division changes" in readme
    assert {"bert": "packing", "resnet": "zero_init_residual"}[bench] in readme.lower()


@pytest.mark.slow
def test_the_same_submit_again_keeps_every_run_and_another_preset_is_refused(smoke_submission):
    submitted = smoke_submission("closed", "resnet")
    out, runs = submitted.out, submitted.out / "runs"
    assert submitted.proc.returncode == 0, submitted.proc.stderr[-3000:]
    args = ["--division", "closed", "--bench", "resnet", "--seeds", ",".join(map(str, submitted.seeds)), "--out", out]
    kept = {p.name: p.read_bytes() for p in runs.iterdir() if p.is_file()}
    started = time.time()
    again = submit(*args)
    assert again.returncode == 0 and again.stdout.rstrip().endswith(PACKAGE_SUCCESS), again.stderr[-2000:]
    assert all(f"run {i}/5 kept" in again.stdout for i in range(1, 6))
    assert all(f"seed {s}:" not in again.stdout for s in submitted.seeds)
    assert {p.name: p.read_bytes() for p in runs.iterdir() if p.is_file()} == kept
    print(f"resume with all 5 runs kept (check them, package again): {time.time() - started:.1f} s")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = submit("--division", "closed", "--bench", "resnet", "--preset", "1xH200", "--out", out)
    one_line_error(other.returncode, other.stderr, "was planned differently: this command asks for preset '1xH200' "
                                                   "(the plan has 'smoke')")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def closed_smoke_run(bench, request):
    """(console output, result log) of one closed smoke run: ResNet's seed 7 of the shared submission, BERT's
    shared run (each fixture asked for only when its benchmark is)."""
    if bench == "resnet":
        submitted = request.getfixturevalue("smoke_submission")("closed", "resnet")
        assert submitted.proc.returncode == 0, submitted.proc.stderr[-3000:]
        log, console = submitted.run(7)
        return console.read_text(), log
    proc, log = request.getfixturevalue("closed_bert_smoke_run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, log


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["resnet", "bert"])
def test_a_closed_smoke_run_reaches_the_target_on_the_eval_cadence_and_passes_the_checker(bench, request):
    printed, log = closed_smoke_run(bench, request)
    assert "run_stop: success" in printed, printed[-2000:]
    verdict = check_log(log)
    assert verdict.passed, verdict.errors
    evals = eval_accuracies(log)
    presets = {"resnet": resnet_presets, "bert": bert_presets}[bench]
    assert evals[-1][1] >= presets.TARGET
    # ResNet evaluates every 4 epochs; BERT every eval_interval samples.
    interval = 4 if bench == "resnet" else bert_presets.eval_interval(bert_presets.smoke())
    assert [point for point, _ in evals] == [interval * (i + 1) for i in range(len(evals))]
    if bench == "resnet":
        assert sum(e["key"] == "weights_initialization" for e in log_events(log)) == 161
