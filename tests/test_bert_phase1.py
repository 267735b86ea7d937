"""The smoke phase-1 checkpoint: keyed by what determines it, written as TensorFlow writes ckpt-28252, read
back through the converter a real checkpoint goes through; and the golden per-eval accuracy of a seeded smoke
run that starts from it (tests/golden/bert_smoke.json)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import eval_accuracies

from mlperf_submission.closed.bert import checkpoint, identity, phase1, presets
from mlperf_submission.closed.bert.checkpoint import convert_checkpoint
from mlperf_submission.closed.bert.model import BertForPretraining
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data.tensorbundle import read_index
from mlperf_submission.compliance import runs, submit
from mlperf_submission.compliance.plan import PLAN_FORMAT, Plan

GOLDEN = Path(__file__).with_name("golden") / "bert_smoke.json"


def test_the_cache_key_is_what_determines_the_checkpoint():
    smoke = presets.smoke()
    key = phase1.cache_key(smoke)
    for runtime_only in ({"opt_base_learning_rate": 0.02}, {"global_batch_size": 64}, {"cpu_threads": 2},
                         {"clip_before_allreduce": True}, {"eval_interval_samples": 3200}):
        assert phase1.cache_key(dataclasses.replace(smoke, **runtime_only)) == key, runtime_only
    for determining in ({"hidden_size": 64}, {"max_seq_length": 64}, {"synthetic_seed": 1}, {"vocab_size": 2000},
                        {"synthetic_lengths": "wikipedia"}, {"dropout": 0.1}):
        assert phase1.cache_key(dataclasses.replace(smoke, **determining)) != key, determining


def test_make_submit_passes_the_checkpoint_to_every_run():
    args = argparse.Namespace(division="closed", bench="bert", preset="smoke", nproc=1, data="", overrides=[],
                              ckpt="/d/model.ckpt-28252", runs=0, seeds="", system="", org="DEMO")
    req = submit.request(args)
    assert req.overrides == ("init_checkpoint=/d/model.ckpt-28252",)  # so the plan holds it, with its sha256
    plan = Plan(format=PLAN_FORMAT, division="closed", benchmark="bert", trainer="closed", preset="smoke",
                overrides=req.overrides, config={}, config_sha256="", system_name="", system={}, system_sha256="",
                data="", data_checksum="", inputs={}, demo=True, runs=1, seeds=(1,))
    cmd = runs.train_command(plan, 0, system=Path("s.json"), log=Path("r.txt"))
    assert cmd[cmd.index("--set") + 1] == "init_checkpoint=/d/model.ckpt-28252"


def test_make_submit_gets_a_checkpoint_only_where_one_belongs():
    assert phase1.submission_checkpoint("open", "bert", "smoke", [], "") == ""  # open: from scratch
    with pytest.raises(UserError, match=r"make submit \.\.\. CKPT=/data/bert/phase1/model.ckpt-28252"):
        phase1.submission_checkpoint("closed", "bert", "1xH200", [], "")
    assert phase1.submission_checkpoint("closed", "bert", "1xH200", [], "/d/model.ckpt-28252") == "/d/model.ckpt-28252"
    with pytest.raises(UserError, match="ResNet starts from random weights"):
        phase1.submission_checkpoint("closed", "resnet", "smoke", [], "/d/model.ckpt-28252")


@pytest.fixture(scope="module")
def smoke_phase1():
    """The smoke preset's checkpoint in the default cache (out/cache), shared with every smoke run; denormals
    flushed as train.py flushes them, then back to torch's default (off) for the tests after."""
    torch.set_flush_denormal(True)
    yield phase1.smoke_checkpoint(presets.smoke())
    torch.set_flush_denormal(False)


@pytest.mark.slow
def test_smoke_phase1_checkpoint_is_a_tf_checkpoint_at_the_phase1_accuracy(smoke_phase1, one_thread):
    meta = json.loads((smoke_phase1.parent / "phase1.json").read_text())
    low, high = phase1.ACCEPTED
    assert low <= meta["masked_lm_accuracy"] <= high and smoke_phase1.name == f"model.ckpt-{meta['steps']}"
    _, entries = read_index(smoke_phase1)
    slots = [n for n in entries if n.endswith(("/adam_m", "/adam_v"))]
    assert len(entries) == 398 + len(slots) + 1 and len(slots) == 2 * 398 and "global_step" in entries
    state, cfg, skipped = convert_checkpoint(smoke_phase1)
    assert len(skipped) == len(slots) + 1
    model = BertForPretraining(presets.smoke().model_config())
    model.load_state_dict(state)
    accuracy = phase1.masked_lm_accuracy(model, phase1._tensors(presets.smoke(), "eval"), presets.smoke())
    assert accuracy == pytest.approx(meta["masked_lm_accuracy"], abs=1e-6)  # the weights it was measured with
    index = smoke_phase1.with_name(smoke_phase1.name + ".index")
    written = index.stat().st_mtime_ns
    assert phase1.smoke_checkpoint(presets.smoke()) == smoke_phase1
    assert index.stat().st_mtime_ns == written  # cached: made once, not trained again


def test_eval_measures_the_smoke_checkpoints_starting_accuracy_and_records_its_sha256(smoke_phase1, capsys):
    """`checkpoint --eval synthetic CKPT`: the smoke checkpoint's accuracy before training (0.39 as made) against
    the one phase1.py recorded making it, which stands in for ckpt-28252's 0.34085; sha256 recorded beside it."""
    made = json.loads((Path(smoke_phase1).parent / "phase1.json").read_text())["masked_lm_accuracy"]
    assert checkpoint.main(["--eval", "synthetic", str(smoke_phase1)]) == 0
    assert f"(within 0.001 of the expected {made:.5f})" in capsys.readouterr().out
    record = json.loads(identity.record_path(smoke_phase1).read_text())
    assert record["masked_lm_accuracy"] == pytest.approx(made, abs=1e-6) and 0.34 <= made <= 0.45
    assert sorted(record["sha256"]) == [p.name for p in identity.files(smoke_phase1)] and len(record["sha256"]) == 2


@pytest.mark.slow
def test_seeded_smoke_run_from_phase1_follows_the_golden_accuracies(closed_bert_smoke_run, smoke_phase1):
    """The shared closed BERT smoke run (conftest.py: the golden seed, from the cached checkpoint that
    smoke_phase1 is)."""
    golden = json.loads(GOLDEN.read_text())
    proc, log = closed_bert_smoke_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = json.loads((smoke_phase1.parent / "phase1.json").read_text())
    assert made["masked_lm_accuracy"] == pytest.approx(golden["phase1"]["masked_lm_accuracy"], abs=golden["tolerance"])
    assert f"init checkpoint {smoke_phase1}" in proc.stdout  # phase 2 from that very checkpoint
    got = eval_accuracies(log)
    assert [samples for samples, _ in got] == [samples for samples, _ in golden["evals"]]
    for (samples, ours), (_, expected) in zip(got, golden["evals"], strict=True):
        assert ours == pytest.approx(expected, abs=golden["tolerance"]), samples
    assert got[0][1] >= 0.25  # phase 2 starts where phase 1 left off, not from scratch (~0.10)
