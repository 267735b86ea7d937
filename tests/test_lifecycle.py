"""Logs written through the lifecycle API pass the official checker; planted defects fail it clearly."""

from __future__ import annotations

import os
import signal

import pytest
from fakes import BERT, LARS, SGD, FakeClock, fake_run
from helpers import log_events

from mlperf_submission.common.cli import UserError
from mlperf_submission.common.mllog import MLLog
from mlperf_submission.common.run import Run, RunAborted, Submission
from mlperf_submission.compliance.tools import check_log


@pytest.mark.parametrize("benchmark,division,hp", [
    ("resnet", "closed", LARS), ("resnet", "closed", SGD), ("bert", "closed", BERT),
    ("resnet", "open", {}), ("bert", "open", {})])
def test_fake_trainer_logs_pass_the_official_checker(tmp_path, benchmark, division, hp):
    log = fake_run(tmp_path / "result_0.txt", benchmark=benchmark, division=division, hyperparameters=hp)
    verdict = check_log(log)
    assert verdict.passed, verdict.errors
    assert not verdict.warnings


def test_log_names_the_calling_file_relative_to_the_repo(tmp_path):
    log = fake_run(tmp_path / "r.txt")
    files = {ln["metadata"]["file"] for ln in log_events(log)}
    assert files == {"tests/fakes.py"}
    assert [ln["key"] for ln in log_events(log)][:2] == ["cache_clear", "init_start"]


def test_seed_and_accuracy_are_json_numbers(tmp_path):
    log = fake_run(tmp_path / "r.txt", seed=123, accuracy=0.8)
    by_key = {ln["key"]: ln for ln in log_events(log)}
    assert by_key["seed"]["value"] == 123
    assert isinstance(by_key["eval_accuracy"]["value"], float)
    assert by_key["eval_accuracy"]["metadata"]["epoch_num"] == 36
    assert by_key["run_stop"]["metadata"]["status"] == "success"


def test_missing_key_fails_naming_it(tmp_path):
    hp = {k: v for k, v in LARS.items() if k != "lars_opt_momentum"}
    verdict = check_log(fake_run(tmp_path / "r.txt", hyperparameters=hp))
    assert not verdict.passed
    assert any("lars_opt_momentum" in e for e in verdict.summary_lines())


def test_duplicate_lines_from_a_second_rank_fail(tmp_path):
    one = fake_run(tmp_path / "rank0.txt")
    both = tmp_path / "both.txt"
    both.write_text(one.read_text() + one.read_text())  # what two ranks logging into one file produce
    verdict = check_log(both)
    assert not verdict.passed
    assert any("initialized_tensors" in e for e in verdict.errors)


def test_only_rank_zero_writes(tmp_path):
    path = tmp_path / "r.txt"
    calls = []
    log = MLLog(path, rank=1, barrier=lambda: calls.append(1))
    log.event("seed", 1)
    log.start("run_start")
    log.close()
    assert not path.exists()
    assert calls == [1]  # the barrier still runs on every rank before a timed key


def test_bad_submission_status_fails(tmp_path):
    verdict = check_log(fake_run(tmp_path / "r.txt", status="Available on-premise"))
    assert not verdict.passed
    assert any("submission_status" in e for e in verdict.summary_lines())


def test_string_accuracy_is_reported_not_crashed(tmp_path):
    log = fake_run(tmp_path / "r.txt")
    text = log.read_text().replace('"value": 0.76,', '"value": "0.76",')
    log.write_text(text)
    verdict = check_log(log)
    assert not verdict.passed
    assert any("checker crashed: TypeError" in e for e in verdict.errors)


def test_init_over_thirty_minutes_fails(tmp_path):
    assert check_log(fake_run(tmp_path / "ok.txt", init_seconds=29.9 * 60)).passed
    verdict = check_log(fake_run(tmp_path / "slow.txt", init_seconds=31 * 60))
    assert not verdict.passed
    assert any("init_stop" in e for e in verdict.summary_lines())


def test_existing_log_file_is_refused(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("earlier run\n")
    with pytest.raises(UserError, match="never appended"):
        MLLog(path)
    assert path.read_text() == "earlier run\n"


def test_exception_after_start_logs_aborted(tmp_path):
    path = tmp_path / "r.txt"
    sub = Submission(org="a", platform="p", division="open", status="onprem", benchmark="resnet")
    with pytest.raises(ZeroDivisionError, match="in the timed loop"):
        with Run(MLLog(path, clock=FakeClock()), sub, seed=1, hyperparameters={}, train_samples=1,
                 eval_samples=1) as run:
            run.start()
            raise ZeroDivisionError("in the timed loop")
    stops = [ln for ln in log_events(path) if ln["key"] == "run_stop"]
    assert [s["metadata"]["status"] for s in stops] == ["aborted"]


def test_sigterm_logs_aborted(tmp_path):
    path = tmp_path / "r.txt"
    sub = Submission(org="a", platform="p", division="open", status="onprem", benchmark="bert")
    with pytest.raises(RunAborted, match="SIGTERM"):
        with Run(MLLog(path), sub, seed=1, hyperparameters={}, train_samples=1, eval_samples=1) as run:
            run.start()
            os.kill(os.getpid(), signal.SIGTERM)
    assert [ln["metadata"]["status"] for ln in log_events(path) if ln["key"] == "run_stop"] == ["aborted"]
    assert signal.getsignal(signal.SIGTERM) is not None


def test_submission_fields_come_from_the_system_description():
    system = {"submitter": "Graphcore", "system_name": "IPU-POD16", "division": "closed", "status": "onprem"}
    sub = Submission.from_system(system, division="closed", benchmark="bert")
    assert (sub.org, sub.platform, sub.status) == ("Graphcore", "IPU-POD16", "onprem")
    with pytest.raises(UserError, match="division"):
        Submission.from_system(system, division="open", benchmark="bert")
    with pytest.raises(UserError, match="unknown benchmark"):
        Submission.from_system(system, division="closed", benchmark="resnet50")
    with pytest.raises(UserError, match="status"):
        Submission.from_system(system | {"status": "soon"}, division="closed", benchmark="bert")


def test_seed_must_be_an_int(tmp_path):
    sub = Submission(org="a", platform="p", division="open", status="onprem", benchmark="bert")
    with pytest.raises(UserError, match="seed"):
        Run(MLLog(None), sub, seed="7", hyperparameters={}, train_samples=1, eval_samples=1)


def test_a_run_that_never_stops_leaves_only_a_partial_log(tmp_path):
    path = tmp_path / "r.txt"
    sub = Submission(org="a", platform="p", division="open", status="onprem", benchmark="bert")
    with pytest.raises(ValueError, match="broken model"):
        with Run(MLLog(path), sub, seed=1, hyperparameters={}, train_samples=1, eval_samples=1):
            raise ValueError("broken model")
    assert not path.exists()
    assert "init_start" in (tmp_path / "r.txt.partial").read_text()
    with pytest.raises(UserError, match="partial already exists"):
        MLLog(path)
