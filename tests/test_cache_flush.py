"""The page-cache flush before init: files evicted (checked with mincore), cache_clear logged true only then,
and a run that cannot flush fails before it writes anything."""

from __future__ import annotations

import os
import sys
import types

import pytest
from helpers import log_events

from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.common import run as run_module
from mlperf_submission.common import training
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.mllog import MLLog
from mlperf_submission.common.run import Run, Submission, dataset_files, drop_page_cache, resident_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore(2) is Linux's")
SUB = Submission(org="acme", platform="box", division="closed", status="onprem", benchmark="bert")


@pytest.fixture
def no_root(monkeypatch, tmp_path):
    """As an unprivileged user: drop_caches cannot be opened (and the tests leave the machine's cache alone)."""
    monkeypatch.setattr(run_module, "DROP_CACHES", tmp_path / "no-such-dir" / "drop_caches")


def cached_file(folder, size=1 << 20):
    path = folder / "part-00000.npy"
    path.write_bytes(os.urandom(size))
    os.sync()
    with open(path, "rb") as f:
        f.read()  # now in the page cache, as after a checksum pass
    return path


@linux_only
def test_posix_fadvise_evicts_a_file_read_into_the_cache(tmp_path, no_root):
    path = cached_file(tmp_path)
    assert resident_pages(path) > 0
    why = drop_page_cache([path])
    # Reported done exactly when mincore finds no page left (a tmpfs keeps them, and then it must say so).
    assert (why == "") == (resident_pages(path) == 0), why
    if why:
        assert "stay in the page cache" in why and "durable storage" in why


def test_without_posix_fadvise_or_root_it_says_what_to_do(tmp_path, no_root, monkeypatch):
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    assert "run as root, or restart the machine" in drop_page_cache([cached_file(tmp_path)])


def test_cache_clear_is_true_only_when_the_dataset_was_flushed(tmp_path, monkeypatch, capsys):
    flushed = []
    monkeypatch.setattr(run_module, "drop_page_cache", lambda files: flushed.extend(files) or "")
    (tmp_path / "data" / "eval").mkdir(parents=True)
    for name in ("manifest.json", "eval/input_ids.npy"):
        (tmp_path / "data" / name).write_text("x")
    files = dataset_files(tmp_path / "data")
    assert files == [tmp_path / "data" / "eval" / "input_ids.npy", tmp_path / "data" / "manifest.json"]
    with Run(MLLog(tmp_path / "real.txt"), SUB, seed=1, hyperparameters={}, train_samples=1, eval_samples=1,
             data_files=files):
        pass
    assert flushed == files
    with Run(MLLog(tmp_path / "demo.txt"), SUB, seed=1, hyperparameters={}, train_samples=1, eval_samples=1):
        pass
    dist = types.SimpleNamespace(is_main=True, world_size=1, device="cpu")
    args = types.SimpleNamespace(preset="smoke", seed=1, system="1xH200")
    training.announce("resnet", "closed", args, resnet_presets.smoke(), dist, 8)
    assert "cache_clear: false (synthetic data made in memory" in capsys.readouterr().out
    values = {name: [e["value"] for e in log_events(tmp_path / f"{name}.txt.partial") if e["key"] == "cache_clear"]
              for name in ("real", "demo")}
    assert values == {"real": [True], "demo": [False]}


def test_a_run_that_cannot_flush_fails_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "drop_page_cache", lambda files: "no way to flush: restart the machine")
    log = tmp_path / "out" / "result_0.txt"
    with pytest.raises(UserError, match="cannot flush the page cache before the run: no way to flush"):
        with Run(MLLog(log), SUB, seed=1, hyperparameters={}, train_samples=1, eval_samples=1,
                 data_files=[tmp_path / "x"]):
            raise AssertionError("the run must not start")
    assert not list((tmp_path / "out").iterdir())
