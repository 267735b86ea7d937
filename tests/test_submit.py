"""`make submit` end to end on the smoke preset (and again, resuming), and the packaging step's handling of bad
input."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import time

import pytest
from fakes import fake_run, one_line_error

from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance import package
from mlperf_submission.compliance.tools import PACKAGE_SUCCESS, check_log


def submit(*args):
    return subprocess.run([sys.executable, "-m", "mlperf_submission.compliance", "submit", *args],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_closed_resnet_demo_submission_end_to_end(tmp_path):
    out = tmp_path / "sub"
    proc = submit("--division", "closed", "--bench", "resnet", "--seeds", "11,12,13,14,15", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith(PACKAGE_SUCCESS)
    tree = out / "closed" / "DEMO"
    logs = sorted((tree / "results" / "demo-local" / "resnet").glob("result_*.txt"))
    assert [p.name for p in logs] == [f"result_{i}.txt" for i in range(5)]
    assert all(check_log(p).passed for p in logs)
    assert (tree / "results" / "demo-local" / "resnet" / "package_checker_params").read_text() == "rcp-bypass"
    assert "DEMONSTRATION" in (tree / "README.md").read_text()
    assert "not a valid result" in (tree / "systems" / "demo-local.json").read_text()
    assert (tree / "benchmarks" / "resnet" / "implementations" / "pytorch" / "closed" / "resnet" / "train.py").exists()
    score = (out / "score.md").read_text()
    assert "| DEMO | closed | demo-local | resnet |" in score and "rcp_bypass" in score
    # The archive holds the tree and a manifest whose sums match the files.
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.sha256").read().decode().splitlines()
        for line in manifest:
            digest, name = line.split("  ", 1)
            assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() == digest
    assert len(manifest) == sum(1 for p in (out / "closed").rglob("*") if p.is_file())
    # The runs stay in OUT/runs with their records and console output.
    runs = out / "runs"
    assert sorted(p.name for p in runs.glob("result_*")) == sorted(
        f"result_{i}.{ext}" for i in range(5) for ext in ("txt", "json", "log"))
    # The same command again keeps every run and packages again; another preset for this OUT is refused.
    kept = {p.name: p.read_bytes() for p in runs.iterdir() if p.is_file()}
    started = time.time()
    again = submit("--division", "closed", "--bench", "resnet", "--seeds", "11,12,13,14,15", "--out", str(out))
    assert again.returncode == 0 and again.stdout.rstrip().endswith(PACKAGE_SUCCESS), again.stderr[-2000:]
    assert all(f"run {i}/5 kept" in again.stdout for i in range(1, 6)) and "seed 11:" not in again.stdout
    assert {p.name: p.read_bytes() for p in runs.iterdir() if p.is_file()} == kept
    print(f"resume with all 5 runs kept (check them, package again): {time.time() - started:.1f} s")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = submit("--division", "closed", "--bench", "resnet", "--preset", "1xH200", "--out", str(out))
    one_line_error(other.returncode, other.stderr, "was planned differently: this command asks for preset '1xH200' "
                                                   "(the plan has 'smoke')")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_submit_rejects_bad_input_before_training(tmp_path):
    proc = submit("--division", "closed", "--bench", "resnet", "--data", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = submit("--division", "closed", "--bench", "resnet", "--seeds", "1,1,2,3,4")
    assert proc.returncode == 2 and "distinct seeds" in proc.stderr
    proc = submit("--division", "closed", "--bench", "resnet", "--system", "no-such-system", "--runs", "5")
    assert proc.returncode == 2 and "no system description" in proc.stderr
    proc = submit("--division", "closed", "--bench", "resnet", "--preset", "huge")
    assert proc.returncode == 2 and "unknown preset 'huge'" in proc.stderr and proc.stderr.count("\n") == 1
    proc = submit("--division", "closed", "--bench", "resnet50")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and proc.stderr.count("\n") == 1


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
