"""`make rehearse`: the switch, the command beside submit's, the memory fit, bad input, and one tiny rehearsal."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types

import pytest
from fakes import REPO, one_line_error

from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.common import rehearsal
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data.generate import imagenet as imagenet_generator
from mlperf_submission.common.data.imagenet.__main__ import main as imagenet_main
from mlperf_submission.common.data.tfrecord import record_offsets
from mlperf_submission.compliance import plan as planning
from mlperf_submission.compliance import rehearse, runs, submit
from mlperf_submission.compliance.__main__ import main as compliance_main

TINY_IMAGENET = '{"classes": 4, "val_per_class": 1}'  # train images a class: enough for one global batch


def test_the_switch_stops_after_steps_or_budget_but_never_before_one_micro_step(tmp_path):
    assert rehearsal.parse("") is None and rehearsal.parse("2,300") == (2, 300.0, rehearsal.EVAL_SAMPLES)
    for bad in ("2", "a,3", "0,5", "2,0", "1,2,3,4"):
        with pytest.raises(UserError, match="--rehearse"):
            rehearsal.parse(bad)
    r = rehearsal.Rehearsal(steps=2, budget_s=10.0, eval_samples=4, figures=tmp_path / "f.json", accumulation=2)
    assert not r.should_stop(0, 99.0)  # no micro-step yet: the budget cannot stop it
    r.micro_steps = 1
    assert r.should_stop(0, 10.0) and not r.should_stop(1, 9.9) and r.should_stop(2, 0.0)
    r = rehearsal.Rehearsal(steps=1, budget_s=100.0, eval_samples=4, figures=tmp_path / "f.json", accumulation=2)
    seen = list(r.timed(range(10), "cpu", lambda b: 1))
    assert seen == [0, 1] and r.micro_steps == 2 and len(r.data_wait_s) == len(r.compute_s) == 2
    relaxed = r.relaxed(resnet_presets.check_counts)
    relaxed(8, 4, 4)  # a warning, not an error, in a rehearsal only
    assert "relaxed" in r.warnings[0] and "1,281,167" in r.warnings[0]
    with pytest.raises(UserError):
        resnet_presets.check_counts(8, 4, 4)


@pytest.fixture
def tiny_imagenet(tmp_path):
    folder, _ = imagenet_generator.generate(classes=4, train_per_class=2, val_per_class=1, cache=tmp_path / "cache")
    assert imagenet_main([str(folder), "--out", str(folder), "--workers", "1"]) == 0
    return folder


def arguments(**changes) -> argparse.Namespace:
    base = dict(bench="resnet", division="closed", preset="1xH200", system="1xH200", data="", ckpt="", steps=2,
                budget=300.0, out=None, overrides=[], cache=None, scale="")
    return argparse.Namespace(**(base | changes))


def test_the_command_is_submits_run_0_command_but_for_the_switch(tmp_path, tiny_imagenet, monkeypatch):
    monkeypatch.setattr(rehearse, "available_memory", lambda: (2**50, "plenty"))
    args = arguments(data=str(tiny_imagenet))
    cmd, plan, log = rehearse.command(args, tmp_path, str(tiny_imagenet), "", {})
    assert cmd[-2:] == [rehearsal.SWITCH, "2,300,256"]
    wanted = dataclasses.replace(planning.wanted_plan(submit.request(rehearse.request_args(args, str(tiny_imagenet),
                                                                                         ""))), seeds=plan.seeds)
    system = tmp_path / planning.SYSTEM_DIR / f"{plan.system_name}.json"
    assert cmd[:-2] == runs.train_command(wanted, 0, system=system, log=log)
    labelled = json.loads(system.read_text())
    assert labelled["system_name"].startswith("REHEARSAL") and labelled["status"] == "research"


def test_a_micro_batch_too_large_for_the_memory_is_split_into_more_accumulation_steps(monkeypatch):
    monkeypatch.setattr(rehearse, "available_memory", lambda: (3 * 2**30, "3 GiB"))
    overrides, note = rehearse.fitted("resnet", {"division": "closed", "preset": "1xH200"}, (), 1)
    assert overrides == ("gradient_accumulation_steps=48",) and "same global batch 1632" in note
    assert rehearse.estimate_bytes(resnet_presets.h200(), 1632 // 32) > 3 * 2**30 >= rehearse.estimate_bytes(
        resnet_presets.h200(), 1632 // 48)
    monkeypatch.setattr(rehearse, "available_memory", lambda: (2**50, "plenty"))
    assert rehearse.fitted("resnet", {"division": "closed", "preset": "1xH200"}, (), 1) == ((), "")


def test_fp16_presets_rehearse_at_bf16_without_cuda_and_say_so(monkeypatch):
    """8xA100 and pod16 are fp16 presets: fp16 is the CUDA path, so a CPU rehearses them at bf16."""
    cfg = rehearse.preset_config(arguments(bench="bert", preset="pod16-graphcore"))
    overrides, note = rehearse.device_precision(cfg, ("gradient_accumulation_steps=384",))
    assert overrides == ("gradient_accumulation_steps=384", "precision=bf16") and "fp16 needs CUDA" in note
    assert rehearse.device_precision(resnet_presets.h200(), ()) == ((), "")  # bf16 already
    monkeypatch.setattr(rehearse.torch.cuda, "is_available", lambda: True)
    assert rehearse.device_precision(cfg, ()) == ((), "")


def test_the_presets_micro_batch_is_over_its_own_replicas():
    """pod16 is 4 replicas of a 4-IPU pipeline: 3072 / (4 x 192) = 4 sequences a micro-batch, not 3072 / 16."""
    pod = rehearse.preset_config(arguments(bench="bert", preset="pod16-graphcore"))
    assert rehearse.replicas(pod, "pod16-graphcore") == 4
    assert rehearse.estimates(arguments(bench="bert", preset="pod16-graphcore"), types.SimpleNamespace(overrides=()),
                              2, pod, 4)["preset_local_batch"] == 4
    assert rehearse.replicas(resnet_presets.dgxa100(), "8xA100") == 8


def test_bad_input_is_one_line(tmp_path, capsys):
    cases = [(["--bench", "resnet", "--preset", "nope"], "unknown preset"),
             (["--bench", "resnet", "--preset", "1xH200", "--data", str(tmp_path)], "make data"),
             (["--bench", "bert", "--preset", "1xH200",
               "--ckpt", str(REPO / "tests/reference/tf1-bert-checkpoint/model.ckpt-28252")], "not a BERT-Large")]
    for argv, message in cases:
        code = compliance_main(["rehearse", *argv, "--out", str(tmp_path / "o")])
        one_line_error(code, capsys.readouterr().err, message)


def test_a_tiny_rehearsal_end_to_end(tmp_path, capsys):
    """Generated ImageNet in the tfds layout, `make data`, the open 1xH200 command at toy width, one step, one
    eval: every stage timed, the log passes the checker, the forecast is there. The generated training set
    holds one whole global batch of 16 (4 images in each of the 4 classes), the least an epoch can be."""
    out = tmp_path / "out"
    toy = ("global_batch_size=16", "gradient_accumulation_steps=2", "data_workers=0", "model_width=8",
           "image_size=32", "resize_start_size=32", "precision=fp32", "channels_last=false")
    code = compliance_main([
        "rehearse", "--bench", "resnet", "--division", "open", "--preset", "1xH200", "--steps", "1", "--budget", "60",
        "--out", str(out), "--cache", str(tmp_path / "cache"), "--scale", TINY_IMAGENET, "--imagenet-layout", "tfds",
        *[x for s in toy for x in ("--set", s)]])
    assert code == 0, capsys.readouterr()
    result = json.loads((out / "rehearsal.json").read_text())
    assert set(result["stages_s"]) == {"generate ImageNet (tfds TFRecord shards)",
                                       "make data (ImageNet index and checksums)", "train (init, steps, eval)"}
    assert result["checker"]["passed"] and result["measured"]["steps_done"] == 1
    assert result["measured"]["samples_per_s"] > 0 and result["measured"]["eval_s_per_1000"] > 0
    assert result["forecast"]["rcp"]["status"] == "below" and result["forecast"]["time"]["per_run_s"] > 0
    assert "Forecast" in (out / "rehearsal.md").read_text()
    (shards,) = {p.parent for p in (tmp_path / "cache").rglob("imagenet2012-train.tfrecord-*")}
    assert sum(len(record_offsets(p)) for p in shards.glob("imagenet2012-train.*")) == 16
