"""Closed ResNet against the MLPerf v1.1 TF2 reference's own outputs (tests/reference/, README.md there):
LARS update and schedule, the training crop sampler, eval preprocessing, and what the reduced JPEG decode
would change.

    .venv/bin/python -m pytest tests/test_resnet_reference.py -q
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from mlperf_submission.closed.resnet import presets
from mlperf_submission.closed.resnet.optim import LARS, poly_schedule, reference_epsilon
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data import imagenet
from mlperf_submission.common.data.imagenet.transforms import _decode_rgb

REFERENCE = Path(__file__).resolve().parent / "reference"
LARS_META = json.loads((REFERENCE / "lars_reference.json").read_text())
CROPS = np.load(REFERENCE / "tf_crop_windows.npz")
EVAL = np.load(REFERENCE / "tf_eval_preprocessing.npz")
EVAL_IMAGES = sorted(k[len("jpeg/"):] for k in EVAL.files if k.startswith("jpeg/"))


def _schedule_config(hp: dict) -> tuple[presets.ResNetConfig, int]:
    """A config with the case's hyperparameters, and a training-set size giving its steps per epoch."""
    cfg = presets.ResNetConfig(global_batch_size=hp["batch"], opt_base_learning_rate=hp["lr"],
                               opt_end_learning_rate=hp["end_lr"], train_epochs=hp["epochs"],
                               opt_learning_rate_warmup_epochs=hp["warmup_epochs"], opt_weight_decay=hp["wd"],
                               opt_momentum=hp["momentum"])
    return cfg, hp["steps_per_epoch"] * hp["batch"]


def _lr(cfg: presets.ResNetConfig, train_samples: int, step: int) -> float:
    warmup, decay = presets.schedule_steps(cfg, train_samples)
    return poly_schedule(step, base_lr=cfg.opt_base_learning_rate, end_lr=cfg.opt_end_learning_rate,
                         warmup_steps=warmup, decay_steps=decay, power=cfg.opt_learning_rate_decay_poly_power)


@pytest.mark.parametrize("case", list(LARS_META))
def test_lars_schedule_and_logged_keys_match_the_reference(case):
    meta = LARS_META[case]
    cfg, n = _schedule_config(meta["hyperparameters"])
    assert presets.schedule_steps(cfg, n) == (meta["warmup_steps"], meta["decay_steps"])  # train - warmup + 1
    hp = presets.hyperparameters(cfg, n)
    assert hp["lars_opt_learning_rate_decay_steps"] == int(meta["decay_steps"])  # logged as the reference logs it
    assert hp["lars_epsilon"] == 0.0 and reference_epsilon(hp["lars_epsilon"]) == meta["effective_epsilon"]
    assert schedule_error(case) < 1e-6  # measured: 0.9-1.8e-7


def lars_trajectory_error(case: str, foreach: bool) -> float:
    """Our LARS fed the reference's gradients under our schedule: the largest difference from the
    reference's tensors over all steps, relative to each tensor's largest value."""
    meta, z = LARS_META[case], np.load(REFERENCE / "lars_reference.npz")
    cfg, n = _schedule_config(meta["hyperparameters"])
    names = meta["tensors"]
    params = [torch.nn.Parameter(torch.from_numpy(z[f"{case}/init/{i}"].copy())) for i in range(len(names))]
    skipped = {id(p) for p, name in zip(params, names, strict=True) if name in meta["skipped_from_lars"]}
    groups = [{"params": [p for p in params if id(p) not in skipped], "weight_decay": cfg.opt_weight_decay,
               "lars_exclude": False},
              {"params": [p for p in params if id(p) in skipped], "weight_decay": 0.0, "lars_exclude": True}]
    opt = LARS(groups, momentum=cfg.opt_momentum, epsilon=reference_epsilon(cfg.lars_epsilon), foreach=foreach)
    worst = 0.0
    for step in range(meta["hyperparameters"]["steps"]):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, n, step)
        for i, p in enumerate(params):
            p.grad = torch.from_numpy(z[f"{case}/grads/{i}"][step].copy())
        opt.step()
        for i, p in enumerate(params):
            ref = z[f"{case}/after/{i}"][step]
            err = float(np.abs(p.detach().numpy() - ref).max())
            worst = max(worst, err / float(np.abs(ref).max()) if err else 0.0)  # zero tensors (lr 0 at step 0)
    return worst


def schedule_error(case: str) -> float:
    """Largest relative difference of our learning rate from the reference's, steps 1 on (step 0: both 0)."""
    cfg, n = _schedule_config(LARS_META[case]["hyperparameters"])
    ref = np.load(REFERENCE / "lars_reference.npz")[f"{case}/lr_per_step"]
    ours = np.array([_lr(cfg, n, step) for step in range(len(ref))])
    assert ref[0] == ours[0] == 0.0
    return float(np.abs(ours[1:] / ref[1:] - 1).max())


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("case", list(LARS_META))
def test_lars_updates_match_the_reference(case, foreach):
    """Every tensor after every step to 1e-6 of the tensor's largest value (measured: 1.3-2.7e-7)."""
    assert lars_trajectory_error(case, foreach) < 1e-6


def _windows(height: int, width: int, n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return np.concatenate([imagenet.sample_distorted_bounding_box(height, width, 20_000, generator=g)
                           for _ in range(n // 20_000)])


def crop_ks(size: str) -> dict[str, float]:
    """Two-sample KS statistics of 100,000 of our windows against TF's 20,000 for one image size, on area
    fraction, aspect ratio and the offsets' relative position."""
    height, width = (int(v) for v in size.split("x"))
    ref, ours = CROPS[size].astype(np.int64), _windows(height, width, 100_000, seed=0)
    assert (ours >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    assert (ours[:, 2] * ours[:, 3] >= 0.1 * height * width).all()  # min_object_covered=0.1 of the whole image

    def stats(w):
        y, x, h, wd = w.T
        return {"area": h * wd / (height * width), "aspect": wd / h,
                "y": y / np.maximum(height - h, 1), "x": x / np.maximum(width - wd, 1)}

    a, b = stats(ours), stats(ref)
    return {k: float(ks_2samp(a[k], b[k]).statistic) for k in a}


@pytest.mark.parametrize("size", sorted(CROPS.files))
def test_crop_sampler_matches_tensorflow(size):
    """At most 0.02 (at equal distributions, these sample sizes exceed 0.02 with probability ~3e-6;
    measured: 0.004-0.012)."""
    ks = crop_ks(size)
    assert max(ks.values()) <= 0.02, ks


def eval_error(name: str) -> np.ndarray:
    """|ours - reference| per value for one fixture image: our eval pixels before the division by std, minus
    the channel means, against the reference's `preprocess_image(is_training=False)` (its stored rows)."""
    img = Image.open(io.BytesIO(EVAL[f"jpeg/{name}"].tobytes()))
    pixels = imagenet.eval_transform(224).pixels(img)  # (3, 224, 224), 0-255 scale
    ours = pixels.permute(1, 2, 0).numpy()[:: int(EVAL["row_step"])] - EVAL["channel_means"]
    return np.abs(ours - EVAL[f"out/{name}"])


@pytest.mark.parametrize("name", EVAL_IMAGES)
def test_eval_preprocessing_matches_the_reference(name):
    """At most 0.5 grey levels mean absolute per image (measured: 0.0, bit-exact); and what the model gets is
    the same pixels divided by the std."""
    assert np.allclose(EVAL["channel_means"], imagenet.MEAN)
    assert eval_error(name).mean() <= 0.5
    transform = imagenet.eval_transform(224)
    pixels = transform.pixels(Image.open(io.BytesIO(EVAL[f"jpeg/{name}"].tobytes())))
    normalised = transform(Image.open(io.BytesIO(EVAL[f"jpeg/{name}"].tobytes())))
    std, mean = torch.tensor(imagenet.STD).view(3, 1, 1), torch.tensor(imagenet.MEAN).view(3, 1, 1)
    assert torch.allclose(normalised * std + mean, pixels, atol=1e-4)


def test_uint8_eval_batches_round_the_references_pixels():
    """What the model is evaluated on: the loader's uint8 batches (`eval_transform(uint8=True)`, normalised
    on the device) hold the reference's pixels rounded to integers: measured 0.248 grey levels mean
    absolute and 0.5 max over the 8 fixture images (COMPLIANCE.md)."""
    errors = []
    for name in EVAL_IMAGES:
        u = imagenet.eval_transform(224, uint8=True)(Image.open(io.BytesIO(EVAL[f"jpeg/{name}"].tobytes())))
        ours = u.numpy().astype(np.float32)[:: int(EVAL["row_step"])] - EVAL["channel_means"]
        errors.append(np.abs(ours - EVAL[f"out/{name}"]))
    assert max(e.max() for e in errors) <= 0.5 + 1e-4
    assert 0.2 < np.mean([e.mean() for e in errors]) < 0.3  # rounding, not a shifted or rescaled image


def test_train_preprocessing_is_the_references_crop_flip_resize():
    """Window from the sampler, full-size decode, flip, then the same TF1 bilinear resize the eval fixture
    pins down: rebuilt step by step from one seed."""
    data = EVAL[f"jpeg/{EVAL_IMAGES[0]}"].tobytes()
    for seed in range(6):
        pixels = imagenet.train_transform(224, generator=torch.Generator().manual_seed(seed)).pixels(
            Image.open(io.BytesIO(data)))
        g = torch.Generator().manual_seed(seed)
        width, height = Image.open(io.BytesIO(data)).size
        y, x, h, w = imagenet.sample_distorted_bounding_box(height, width, generator=g)[0]
        flip = torch.rand((), generator=g).item() < 0.5
        decoded, _ = _decode_rgb(Image.open(io.BytesIO(data)))
        crop = decoded[:, y:y + h, x:x + w]
        expected = imagenet.tf1_resize_bilinear(crop.flip(-1) if flip else crop, 224, 224)
        assert torch.equal(pixels, expected)


def reduced_decode_change(name: str, crops: int) -> list[float]:
    """Training pixels (before normalisation) with `reduced_decode` against the full-size decode, mean
    absolute grey levels per crop, for `crops` seeded crops of one fixture JPEG."""
    data = EVAL[f"jpeg/{name}"].tobytes()
    out = []
    for seed in range(crops):
        a, b = (imagenet.train_transform(224, generator=torch.Generator().manual_seed(seed), reduced_decode=r)
                .pixels(Image.open(io.BytesIO(data))) for r in (True, False))
        out.append((a - b).abs().mean().item())
    return out


def test_reduced_decode_changes_training_pixels_so_closed_forbids_it():
    """Measured on the fixture JPEGs: the reduced-size decode moves training pixels by grey levels (2.96 mean
    absolute over 100 crops per image) against the full-size decode the reference does: over 1, so the
    closed division decodes at full size and the option stays off there."""
    assert np.mean([d for name in EVAL_IMAGES for d in reduced_decode_change(name, 12)]) > 1.0
    with pytest.raises(UserError, match="reduced_decode"):
        presets.validate_closed(presets.ResNetConfig(reduced_decode=True))
