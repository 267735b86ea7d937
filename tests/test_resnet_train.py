"""Closed ResNet: presets and rules, synthetic data, and a one-run smoke training whose log passes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mlperf_submission.closed.resnet import presets
from mlperf_submission.closed.resnet.train import main as train_main
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
])
def test_validate_closed_rejects_what_the_rules_forbid(change, message):
    import dataclasses

    with pytest.raises(UserError, match=message):
        presets.validate_closed(dataclasses.replace(presets.smoke(), **change))


def test_sgd_hyperparameters_use_the_sgd_keys():
    cfg = config.override(presets.smoke(), ["opt_name=sgd", "opt_base_learning_rate=0.256"])
    hp = presets.hyperparameters(cfg, 4096)
    assert {"sgd_opt_base_learning_rate", "model_bn_span", "opt_learning_rate_warmup_epochs"} <= set(hp)
    assert not any(k.startswith("lars") for k in hp)


@pytest.mark.parametrize("offset,expected", [(0, [4, 8, 12, 16]), (1, [1, 5, 9, 13]), (3, [3, 7, 11, 15])])
def test_eval_cadence_is_every_four_epochs_with_offset(offset, expected):
    cfg = config.override(presets.smoke(), [f"eval_offset={offset}"])
    assert presets.eval_epochs(cfg) == expected


def test_synthetic_images_are_deterministic_and_balanced():
    a, la = synthetic_images(200, num_classes=10, image_size=16, seed=3, split="train")
    b, lb = synthetic_images(200, num_classes=10, image_size=16, seed=3, split="train")
    c, _ = synthetic_images(200, num_classes=10, image_size=16, seed=3, split="val")
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert a.shape == (200, 3, 16, 16) and torch.bincount(la).tolist() == [20] * 10


def test_data_and_preset_must_agree(tmp_path):
    with pytest.raises(SystemExit):
        train_main(["--seed", "1", "--system", "1xH200"])  # --result-log missing: argparse exits
    assert train_main(["--preset", "1xH200", "--seed", "1", "--system", "1xH200", "--result-log",
                       str(tmp_path / "r.txt")]) == 2
    assert train_main(["--preset", "smoke", "--seed", "1", "--system", "1xH200", "--result-log",
                       str(tmp_path / "r.txt"), "--data", str(tmp_path)]) == 2
    assert not (tmp_path / "r.txt").exists()


@pytest.mark.slow
def test_one_smoke_run_reaches_the_target_and_passes_the_checker(tmp_path):
    log = tmp_path / "result_0.txt"
    proc = subprocess.run([sys.executable, "-m", "mlperf_submission.closed.resnet.train", "--preset", "smoke",
                           "--seed", "7", "--system", "1xH200", "--result-log", str(log)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "run_stop: success" in proc.stdout
    verdict = check_log(log)
    assert verdict.passed, verdict.errors
    events = [json.loads(ln.split(":::MLLOG ", 1)[1]) for ln in log.read_text().splitlines()]
    evals = [e for e in events if e["key"] == "eval_accuracy"]
    assert evals[-1]["value"] >= 0.759
    assert [e["metadata"]["epoch_num"] for e in evals] == list(range(4, 4 * len(evals) + 1, 4))
    assert sum(e["key"] == "weights_initialization" for e in events) == 161


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
    args = ["--preset", "1xH200", "--seed", "3", "--system", "1xH200", "--result-log", str(log), "--data", str(data)]
    small = ["model_width=8", "image_size=32", "global_batch_size=6", "gradient_accumulation_steps=1",
             "data_workers=0", "precision=fp32", "channels_last=false", "device=cpu", "eval_offset=1", "max_epochs=1"]
    argv = args + [x for s in small for x in ("--set", s)]
    assert train_main(argv) == 2  # no manifest yet: `make data` first
    assert not log.exists()
    assert imagenet.main([str(data), "--out", str(data), "--workers", "1"]) == 0
    assert train_main(argv) == 0
    events = [json.loads(ln.split(":::MLLOG ", 1)[1]) for ln in log.read_text().splitlines()]
    by_key = {e["key"]: e for e in events}
    assert by_key["train_samples"]["value"] == presets.IMAGENET_TRAIN
    assert by_key["eval_accuracy"]["metadata"]["epoch_num"] == 1
    assert by_key["run_stop"]["metadata"]["status"] == "aborted"  # random pixels: the target is not reached
    verdict = check_log(log)
    assert [e for e in verdict.summary_lines() if "eval_accuracy" not in e] == []
