"""`make submit`'s and the packaging step's handling of bad input (`make submit` end to end, and again, is in
test_end_to_end.py)."""

from __future__ import annotations

import pytest
from fakes import fake_run
from helpers import run_cli

from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance import package
from mlperf_submission.compliance.__main__ import main as compliance_main


def submit(*args) -> tuple[int, str]:
    """`make submit`'s command in this process (bad input is refused before anything starts): (status, stderr)."""
    code, _, err = run_cli(compliance_main, "submit", *args)
    return code, err


def test_submit_rejects_bad_input_before_training(tmp_path):
    code, err = submit("--division", "closed", "--bench", "resnet", "--data", tmp_path / "missing")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, err = submit("--division", "closed", "--bench", "resnet", "--seeds", "1,1,2,3,4")
    assert code == 2 and "distinct seeds" in err
    code, err = submit("--division", "closed", "--bench", "resnet", "--system", "no-such-system", "--runs", "5")
    assert code == 2 and "no system description" in err
    code, err = submit("--division", "closed", "--bench", "resnet", "--preset", "huge")
    assert code == 2 and "unknown preset 'huge'" in err and err.count("\n") == 1
    code, err = submit("--division", "closed", "--bench", "resnet50")
    assert code == 2 and "invalid choice" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_package_refuses_wrong_inputs_and_writes_nothing(tmp_path):
    logs = [fake_run(tmp_path / f"r{i}.txt", seed=i) for i in range(4)]
    out = tmp_path / "out"
    kwargs = dict(division="closed", benchmark="resnet", system="1xH200", out=out)
    with pytest.raises(UserError, match="exactly 5"):
        package.build(logs=logs, **kwargs)
    with pytest.raises(UserError, match="not found"):
        package.build(logs=[*logs, tmp_path / "nope.txt"], **kwargs)
    with pytest.raises(UserError, match="division"):
        package.build(logs=logs, **kwargs | {"division": "open"})
    assert not out.exists()


def test_package_reports_a_failing_tree(tmp_path):
    logs = [fake_run(tmp_path / f"r{i}.txt", seed=i, accuracy=0.70 if i < 2 else 0.76) for i in range(5)]
    verdict, scores = package.build(division="closed", benchmark="resnet", system="1xH200", logs=logs,
                                    out=tmp_path / "out")
    assert not verdict.passed and any("2 files do not comply" in e for e in verdict.errors)
    assert not scores[0].valid and "2 runs fail" in scores[0].problem
    assert "ERRORS" in (tmp_path / "out" / "score.md").read_text()
