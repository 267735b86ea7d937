"""Closed ResNet: presets and rules, synthetic data, and a one-run smoke training whose log passes."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest
import torch
from helpers import log_events

from mlperf_submission.closed.resnet import presets
from mlperf_submission.closed.resnet.train import Variant
from mlperf_submission.closed.resnet.train import main as train_main
from mlperf_submission.closed.resnet.train import train as train_run
from mlperf_submission.common import config, training
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data.synthetic import synthetic_images
from mlperf_submission.common.runtime import distributed
from mlperf_submission.compliance.tools import check_log


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_is_closed_compliant(name):
    cfg = presets.PRESETS[name]()
    presets.validate_closed(cfg)
    hp = presets.hyperparameters(cfg, presets.IMAGENET_TRAIN)
    assert hp["global_batch_size"] == cfg.global_batch_size and isinstance(hp["global_batch_size"], int)


@pytest.mark.parametrize("change,message", [
    ({"opt_end_learning_rate": 0.001}, "end learning rate"),
    ({"opt_weight_decay": 3e-5}, r"0.0001 x 2\^k"),
    ({"opt_learning_rate_decay_poly_power": 1.0}, "power"),
    ({"lars_epsilon": 1e-9}, "epsilon"),
    ({"opt_momentum": 0.95}, "momentum"),
    ({"opt_name": "sgd", "opt_base_learning_rate": 0.2565}, "multiple of 0.001"),
    ({"label_smoothing": 0.2}, "label smoothing"),
    ({"eval_offset": 5}, "every 4 epochs"),
    ({"eval_every": 2}, "every 4 epochs"),
    ({"target_accuracy": 0.75}, "target"),
    ({"opt_name": "sgd", "opt_base_learning_rate": 0.256, "opt_learning_rate_decay_poly_power": 1.0},
     "SGD polynomial decay power is fixed to 2"),
])
def test_validate_closed_rejects_what_the_rules_forbid(change, message):
    with pytest.raises(UserError, match=message):
        presets.validate_closed(dataclasses.replace(presets.smoke(), **change))


@pytest.mark.parametrize("name", [n for n in presets.PRESETS if presets.PRESETS[n]().dataset == "imagenet"])
@pytest.mark.parametrize("setting", ["image_size=160", "model_width=32", "num_classes=100", "reduced_decode=true"])
def test_real_presets_refuse_changes_to_the_fixed_task(name, setting):
    """`--set` cannot change what the closed rules fix on ImageNet; the synthetic smoke keeps its scaled sizes."""
    with pytest.raises(UserError, match=setting.split("=")[0]):
        presets.validate_closed(config.override(presets.PRESETS[name](), [setting]))
    presets.validate_closed(config.override(presets.smoke(), ["image_size=16", "model_width=4", "num_classes=5"]))


def test_counts_must_be_the_full_imagenet():
    presets.check_counts(1_281_167, 50_000, 1000)
    for counts in ((1_281_166, 50_000, 1000), (1_281_167, 10_000, 1000), (1_281_167, 50_000, 999)):
        with pytest.raises(UserError, match="1,281,167 train / 50,000 val images, 1,000 classes"):
            presets.check_counts(*counts)


def rcp_table(benchmark: str) -> dict:
    """The v1.1 RCP table that mlperf-logging ships (rcp_checker/training_1.1.0), keyed by global batch size."""
    path = resources.files("mlperf_logging.rcp_checker") / "training_1.1.0" / f"rcps_{benchmark}.json"
    return {v["BS"]: v["Hyperparams"] for v in json.loads(path.read_text()).values()}


def test_decay_steps_are_the_references_and_logged_as_computed():
    """One computation (presets.schedule_steps): train steps - warmup steps + 1, from the training-set size,
    with whole global batches per epoch (the reference's drop_train_remainder). At batch 1632 that is the RCP
    table's figure; at 3264 the table's 14,523 is int(37 x 1,281,167 / 3,264), fractional steps per epoch,
    which no integer arithmetic of the reference gives at 39 epochs: we log the reference's 14,505."""
    rcp = rcp_table("resnet")
    for cfg, logged in ((presets.h200(), rcp[1632]["opt_learning_rate_decay_steps"]),
                        (presets.dgxa100(), 37 * (presets.IMAGENET_TRAIN // 3264) + 1)):
        spe = presets.IMAGENET_TRAIN // cfg.global_batch_size  # 785 at 1632, 392 at 3264
        warmup = cfg.opt_learning_rate_warmup_epochs * spe
        assert presets.schedule_steps(cfg, presets.IMAGENET_TRAIN) == (warmup, cfg.train_epochs * spe - warmup + 1)
        hp = presets.hyperparameters(cfg, presets.IMAGENET_TRAIN)
        assert hp["lars_opt_learning_rate_decay_steps"] == logged
    assert rcp[1632]["opt_learning_rate_decay_steps"] == 27_476
    assert rcp[3264]["opt_learning_rate_decay_steps"] == int(37 * presets.IMAGENET_TRAIN / 3264) == 14_523


def test_an_epoch_is_whole_global_batches_on_every_rank():
    """The last partial batch is left out of every epoch (no step averages fewer images), on one rank or many."""
    cfg = dataclasses.replace(presets.smoke(), global_batch_size=96, gradient_accumulation_steps=2)
    assert presets.steps_per_epoch(cfg, 1000) == 10 and presets.epoch_samples(cfg, 1000, 4) == 240
    for rank in range(4):
        sampler = distributed.EpochSampler(1000, 4, rank, seed=1, per_rank=presets.epoch_samples(cfg, 1000, 4))
        assert len(sampler) == len(list(sampler)) == 240  # 240 / (96 / 2 / 4 = 12 a micro-batch) = 20 = 10 x 2
    with pytest.raises(UserError, match="no whole global batch"):
        presets.steps_per_epoch(cfg, 95)


def test_sgd_hyperparameters_use_the_sgd_keys():
    cfg = config.override(presets.smoke(), ["opt_name=sgd", "opt_base_learning_rate=0.256"])
    hp = presets.hyperparameters(cfg, 4096)
    assert {"sgd_opt_base_learning_rate", "model_bn_span", "opt_learning_rate_warmup_epochs"} <= set(hp)
    assert not any(k.startswith("lars") for k in hp)


@pytest.mark.parametrize("offset,expected", [(0, [4, 8]), (1, [1, 5, 9]), (3, [3, 7, 11])])
def test_eval_cadence_ends_at_the_first_eval_at_or_after_the_schedule(offset, expected):
    """Every 4 epochs from the offset, up to the first eval at or after train_epochs (8 for smoke), where
    the reference's controller stops: a run that has not converged by then stops `aborted`."""
    cfg = config.override(presets.smoke(), [f"eval_offset={offset}"])
    assert presets.eval_epochs(cfg) == expected
    assert presets.eval_epochs(presets.h200())[-1] == 40 and presets.eval_epochs(presets.dgxa100())[-1] == 39
    assert presets.eval_epochs(dataclasses.replace(cfg, max_epochs=1)) == expected[:1]


def test_synthetic_images_are_deterministic_and_balanced():
    a, la = synthetic_images(200, num_classes=10, image_size=16, seed=3, split="train")
    b, lb = synthetic_images(200, num_classes=10, image_size=16, seed=3, split="train")
    c, _ = synthetic_images(200, num_classes=10, image_size=16, seed=3, split="val")
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert a.shape == (200, 3, 16, 16) and torch.bincount(la).tolist() == [20] * 10


def test_data_and_preset_must_agree(tmp_path):
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
        train_main(["--seed", "1", "--system", "1xH200"])  # --result-log missing: argparse exits
    assert train_main(["--preset", "1xH200", "--seed", "1", "--system", "1xH200", "--result-log",
                       str(tmp_path / "r.txt")]) == 2
    assert train_main(["--preset", "smoke", "--seed", "1", "--system", "1xH200", "--result-log",
                       str(tmp_path / "r.txt"), "--data", str(tmp_path)]) == 2
    assert not (tmp_path / "r.txt").exists()


def test_training_on_a_tiny_imagenet_folder(tmp_path):
    """The real-data path: the three ILSVRC2012 archives, `make data` (check, extract, arrange by the devkit,
    index), reference preprocessing, a one-epoch run."""
    import io

    from PIL import Image

    from mlperf_submission.common.data.imagenet import MANIFEST_NAME, archives
    from mlperf_submission.common.data.imagenet.__main__ import main as data_main

    gen = torch.Generator().manual_seed(0)

    def jpeg() -> bytes:
        buf = io.BytesIO()
        Image.fromarray((torch.rand(40, 50, 3, generator=gen) * 255).to(torch.uint8).numpy()).save(buf, "JPEG")
        return buf.getvalue()

    wnids = [f"n0000000{c}" for c in range(3)]
    archives.write_archives(tmp_path / "src", {w: [jpeg() for _ in range(6)] for w in wnids},
                            [(w, jpeg()) for w in wnids for _ in range(2)])
    data = tmp_path / "imagenet"
    log = tmp_path / "result_0.txt"
    # 16 images a micro-step (1632 = 16 x 102): what a small CPU holds, so that the data checks are what refuses
    argv = ["--preset", "1xH200", "--seed", "3", "--system", "1xH200", "--result-log", str(log), "--data", str(data),
            "--set", "gradient_accumulation_steps=102"]
    assert data_main([str(tmp_path / "src"), "--out", str(data), "--no-verify", "--workers", "1"]) == 0
    (data / MANIFEST_NAME).rename(tmp_path / MANIFEST_NAME)
    assert train_main(argv) == 2  # no manifest: `make data` first
    assert not log.exists()
    (tmp_path / MANIFEST_NAME).rename(data / MANIFEST_NAME)
    assert Variant().check_counts is presets.check_counts  # the closed rule, unless a caller turns it off
    assert train_main(argv) == 2  # 18 / 6 images, 3 classes: not the ImageNet the closed rules name
    assert not log.exists()
    # The same real-data path at a scale that runs in seconds: the closed trainer without the closed checks.
    cfg = dataclasses.replace(presets.h200(), model_width=8, image_size=32, num_classes=3, global_batch_size=6,
                              gradient_accumulation_steps=1, data_workers=0, precision="fp32", channels_last=False,
                              device="cpu", eval_offset=1, max_epochs=1)
    run_args = training.Invocation(preset="1xH200", seed=3, system="1xH200", result_log=log, data=data)
    assert train_run(cfg, run_args, division="closed", variant=Variant(check_counts=None)) == 0
    events = log_events(log)
    by_key = {e["key"]: e for e in events}
    assert (by_key["train_samples"]["value"], by_key["eval_samples"]["value"]) == (18, 6)  # counted, not typed
    assert by_key["eval_accuracy"]["metadata"]["epoch_num"] == 1
    assert by_key["run_stop"]["metadata"]["status"] == "aborted"  # random pixels: the target is not reached
    steps_per_epoch = 3  # 18 images at batch 6
    assert by_key["lars_opt_learning_rate_decay_steps"]["value"] == (37 - 2) * steps_per_epoch + 1
    verdict = check_log(log)
    assert [e for e in verdict.summary_lines() if "eval_accuracy" not in e] == []
