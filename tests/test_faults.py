"""Faults of `make data` and of packaging: a writer killed mid-write, a full disk. Nothing half-written is left
where a reader would take it for whole, and the same command afterwards succeeds."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import fake_train_command
from helpers import run_module
from test_imagenet_data import make_samples, write_jpeg_tree

from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data import bert_wiki
from mlperf_submission.common.data.imagenet import archives
from mlperf_submission.compliance import package, runs
from mlperf_submission.compliance.__main__ import main as compliance_main
from mlperf_submission.compliance.plan import Request, settle_plan
from mlperf_submission.compliance.tools import PACKAGE_SUCCESS

# A writer run in a fresh process, with `target` (module attribute) wrapped so that its `nth` call first sends
# the process `sig`: SIGINT is a Ctrl-C (Python unwinds, running the writers' clean-up), SIGKILL a killed node.
KILLER = """
import os, signal, sys, importlib
module = importlib.import_module(sys.argv[1])
name, nth, sig = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
real, calls = getattr(module, name), []
def wrapped(*a, **k):
    calls.append(1)
    if len(calls) == nth:
        os.kill(os.getpid(), sig)
    return real(*a, **k)
setattr(module, name, wrapped)
entry = importlib.import_module(sys.argv[5])
sys.exit(entry.main(sys.argv[6:]))
"""


def interrupted(module: str, target: str, nth: int, sig: int, entry: str, argv: list[str]):
    proc = subprocess.run([sys.executable, "-c", KILLER, module, target, str(nth), str(int(sig)), entry, *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -sig, (proc.returncode, proc.stderr[-2000:])
    return proc


def cli(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    proc = run_module(module, *argv, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_bert_conversion_interrupted_leaves_no_output_and_reruns(tmp_path, sig):
    src = tmp_path / "src"
    src.mkdir()
    for name, num, seed, split in (("part-0", 7, 1, "train"), ("eval", 4, 1, "eval")):
        bert_wiki.write_synthetic_tfrecords(src / name, num=num, seed=seed, split=split, seq_len=32, vocab_size=300,
                                            max_pred=6)
    out = tmp_path / "data" / "memmap"
    argv = ["convert", "--train", str(src / "part-*"), "--eval", str(src / "eval"), "--out", str(out),
            "--seq-len", "32", "--max-pred", "6"]
    # The arrays are written and being hashed for the manifest when the signal comes.
    interrupted("mlperf_submission.common.data.bert_wiki", "sha256_file", 3, sig,
                "mlperf_submission.common.data.bert_wiki", argv)
    assert not out.exists()
    if sig == signal.SIGINT:  # unwound: not even the staging folder is left
        assert not out.parent.exists() or leftovers(out.parent) == []
    cli("mlperf_submission.common.data.bert_wiki", argv)
    cli("mlperf_submission.common.data.bert_wiki", ["verify", "--out", str(out)])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_imagenet_index_interrupted_leaves_no_manifest_and_reruns(tmp_path, sig):
    root = write_jpeg_tree(tmp_path / "jpeg", make_samples())
    argv = [str(root), "--out", str(root), "--workers", "1"]
    # The manifest's bytes are written to its temporary file and being synced when the signal comes.
    interrupted("os", "fsync", 1, sig, "mlperf_submission.common.data.imagenet.__main__", argv)
    assert not (root / "imagenet_manifest.json").exists()
    if sig == signal.SIGINT:
        assert leftovers(root) == []
    cli("mlperf_submission.common.data.imagenet", argv)
    manifest = json.loads((root / "imagenet_manifest.json").read_text())
    assert manifest["splits"]["train"]["images"] == len(make_samples()["train"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_imagenet_archives_interrupted_leave_no_dataset_and_rerun(tmp_path, sig):
    samples = make_samples()
    archives.write_archives(tmp_path / "src", {f"n0000000{k}": [s[1] for s in samples["train"]] for k in range(2)},
                            [("n00000001", s[1]) for s in samples["val"]])
    out = tmp_path / "imagenet"
    argv = [str(tmp_path / "src"), "--out", str(out), "--no-verify", "--workers", "1"]
    # The second class is being extracted when the signal comes.
    interrupted("mlperf_submission.common.data.imagenet.archives", "_copy", len(samples["train"]) + 2, sig,
                "mlperf_submission.common.data.imagenet.__main__", argv)
    assert not out.exists()
    assert (leftovers(tmp_path) == []) == (sig == signal.SIGINT)  # a SIGKILL leaves only the hidden folder
    cli("mlperf_submission.common.data.imagenet", argv)  # the same command starts again and removes it
    assert leftovers(tmp_path) == [] and (out / "imagenet_manifest.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_packing_interrupted_leaves_no_output_and_reruns(tmp_path, sig):
    converted = tmp_path / "converted"
    cli("mlperf_submission.common.data.bert_wiki", ["synthetic", "--out", str(converted), "--num-train", "64",
                                                    "--num-eval", "16", "--seq-len", "32", "--vocab-size", "300",
                                                    "--max-pred", "6"])
    out = tmp_path / "packed"
    argv = ["--algorithm", "nnlshp", str(converted), str(out)]
    # The train split is packed and written; the eval split is being packed when the signal comes.
    interrupted("mlperf_submission.common.data.packing.write", "pack_arrays", 2, sig,
                "mlperf_submission.common.data.packing.__main__", argv)
    assert not out.exists()
    if sig == signal.SIGINT:
        assert leftovers(tmp_path) == []
    cli("mlperf_submission.common.data.packing", argv)
    cli("mlperf_submission.common.data.packing", ["--verify", str(out)])


@pytest.fixture
def fake_trained(tmp_path, monkeypatch):
    """A submission folder whose 5 runs were trained through `train_run` by a fake trainer (a whole passing log
    in a second, through the real Run and MLLog): -> (OUT, plan)."""
    monkeypatch.setattr(runs, "train_command", fake_train_command)
    _, system = package.load_system("1xH200")
    req = Request(division="closed", benchmark="resnet", preset="smoke", overrides=(), system_name="1xH200",
                  system=system, data="", runs=5, seeds=(1, 2, 3, 4, 5), demo=True)
    out = tmp_path / "sub"
    plan = settle_plan(out, req)
    signals = runs.Signals()
    for i in range(5):
        runs.train_run(out, plan, i, signals)
    return out, plan


def test_full_disk_while_packaging_writes_nothing_and_package_works_once_there_is_room(fake_trained, monkeypatch,
                                                                                      capsys):
    out, plan = fake_trained
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    real_open = package.tarfile.open

    def full(name, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(name))

    monkeypatch.setattr(package.tarfile, "open", full)
    assert compliance_main(["package", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device while writing ") and ".tar.gz" in err
    assert "free space and run `make package OUT=" in err and err.count("\n") == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no tree, no temporary folder
    monkeypatch.setattr(package.tarfile, "open", real_open)
    assert compliance_main(["package", "--out", str(out)]) == 0
    assert PACKAGE_SUCCESS in capsys.readouterr().out
    logs = sorted(out.glob("closed/*/results/1xH200/resnet/result_*.txt"))
    assert len(logs) == 5
    assert [p.read_bytes() for p in logs] == [runs.run_paths(out, i).log.read_bytes() for i in range(5)]


def test_package_refuses_a_plan_with_runs_missing_or_edited(fake_trained, capsys):
    out, plan = fake_trained
    log = runs.run_paths(out, 3).log
    log.write_text(log.read_text().replace('"time_ms": 17', '"time_ms": 16', 1))  # an earlier init_start
    runs.run_paths(out, 4).record.unlink()
    assert compliance_main(["package", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run 4 (result_3.txt): result_3.txt was changed after it passed" in err
    assert "run 5 (result_4.txt): its log has no record of passing" in err
    assert not (out / "closed").exists()


# A trainer that holds ~200 MiB, prints a warning as its last line, and is then killed as the OOM killer would.
KILLED_TRAINER = """
import os, signal
held = bytearray(200 * 2**20)
print("UserWarning: This DataLoader will create 14 worker processes in total.", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_by_sigkill_is_reported_as_killed_with_its_cause_and_peak_memory(tmp_path, monkeypatch):
    def command(plan, i, *, system, log, nproc=1, launcher=""):
        return [sys.executable, "-c", KILLED_TRAINER]

    monkeypatch.setattr(runs, "train_command", command)
    _, system = package.load_system("1xH200")
    req = Request(division="closed", benchmark="resnet", preset="smoke", overrides=(), system_name="1xH200",
                  system=system, data="", runs=5, seeds=(1, 2, 3, 4, 5), demo=True)
    out = tmp_path / "sub"
    plan = settle_plan(out, req)
    with pytest.raises(UserError, match=r"run 1 \(result_0.txt, seed 1\) was killed \(SIGKILL\): most likely the "
                                        r"out-of-memory killer .*; its peak resident memory was \d+\.\d GiB") as e:
        runs.train_run(out, plan, 0, runs.Signals())
    assert "DataLoader" not in str(e.value) and "exit status" not in str(e.value)
    assert runs.run_state(out, plan, 0) == (None, "not trained yet")
