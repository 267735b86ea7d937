"""Closed ResNet: presets and rules, synthetic data, and a one-run smoke training whose log passes."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
from helpers import log_events

from mlperf_submission.closed.resnet import presets
from mlperf_submission.closed.resnet.train import main as train_main
from mlperf_submission.closed.resnet.train import train as train_run
from mlperf_submission.common import config
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data.synthetic import synthetic_images
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


def test_decay_steps_are_the_references_and_logged_as_computed():
    """One computation (presets.schedule_steps): train steps - warmup steps + 1, from the training-set size."""
    cfg = presets.h200()
    spe = -(-presets.IMAGENET_TRAIN // cfg.global_batch_size)
    assert presets.schedule_steps(cfg, presets.IMAGENET_TRAIN) == (2 * spe, (37 - 2) * spe + 1)
    hp = presets.hyperparameters(cfg, presets.IMAGENET_TRAIN)
    assert hp["lars_opt_learning_rate_decay_steps"] == (37 - 2) * spe + 1


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
    """The real-data path: JPEG folders, `make data` index, reference preprocessing, a one-epoch run."""
    from PIL import Image

    from mlperf_submission.common.data import imagenet

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in range(3):
            folder = tmp_path / "imagenet" / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(40, 50, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG")
    data = tmp_path / "imagenet"
    log = tmp_path / "result_0.txt"
    argv = ["--preset", "1xH200", "--seed", "3", "--system", "1xH200", "--result-log", str(log), "--data", str(data)]
    assert train_main(argv) == 2  # no manifest yet: `make data` first
    assert not log.exists()
    assert imagenet.main([str(data), "--out", str(data), "--workers", "1"]) == 0
    assert train_main(argv) == 2  # 18 / 6 images, 3 classes: not the ImageNet the closed rules name
    assert not log.exists()
    # The same real-data path at a scale that runs in seconds: the closed trainer without the closed checks.
    cfg = dataclasses.replace(presets.h200(), model_width=8, image_size=32, num_classes=3, global_batch_size=6,
                              gradient_accumulation_steps=1, data_workers=0, precision="fp32", channels_last=False,
                              device="cpu", eval_offset=1, max_epochs=1)
    args = argparse.Namespace(preset="1xH200", seed=3, system="1xH200", result_log=log, data=data, overrides=[])
    assert train_run(cfg, args, division="closed") == 0
    events = log_events(log)
    by_key = {e["key"]: e for e in events}
    assert (by_key["train_samples"]["value"], by_key["eval_samples"]["value"]) == (18, 6)  # counted, not typed
    assert by_key["eval_accuracy"]["metadata"]["epoch_num"] == 1
    assert by_key["run_stop"]["metadata"]["status"] == "aborted"  # random pixels: the target is not reached
    spe = 3  # 18 images at batch 6
    assert by_key["lars_opt_learning_rate_decay_steps"]["value"] == (37 - 2) * spe + 1
    verdict = check_log(log)
    assert [e for e in verdict.summary_lines() if "eval_accuracy" not in e] == []
