"""The open-vs-closed time-to-target benchmark: log reading, the table, bad input."""

from __future__ import annotations

import pytest
from fakes import fake_run

from mlperf_submission.bench import time_to_target


def test_read_run_gives_minutes_status_and_convergence_point(tmp_path):
    log = fake_run(tmp_path / "r.txt", run_minutes=3.0, evals=[(4, 0.5), (8, 0.77)])
    run = time_to_target.read_run(log)
    assert run == {"minutes": pytest.approx(3.0), "status": "success", "converged_at": 8, "accuracy": 0.77}
    aborted = time_to_target.read_run(fake_run(tmp_path / "a.txt", evals=[(4, 0.5)]))
    assert aborted["status"] == "aborted" and aborted["converged_at"] == 4


def test_table_reports_each_run_and_the_ratio_of_means():
    run = {"status": "success", "converged_at": 4, "accuracy": 0.8}
    results = {"closed": {1: run | {"minutes": 0.4}, 2: run | {"minutes": 0.2}},
               "open": {1: run | {"minutes": 0.2}, 2: run | {"minutes": 0.1}}}
    text = time_to_target.table("resnet", results)
    assert "| open | 2 | 0.100 | success | 4 |" in text
    assert "closed 0.300, open 0.150; open / closed = 0.500" in text


def test_bad_seeds_are_one_line_errors(capsys):
    assert time_to_target.main(["--bench", "resnet", "--seeds", "1,x"]) == 2
    err = capsys.readouterr().err
    assert "comma-separated integers" in err and err.count("\n") == 1
