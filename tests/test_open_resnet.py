"""Open ResNet: progressive resizing on top of closed ResNet's run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlperf_submission.common.cli import UserError
from mlperf_submission.open.resnet import presets
from mlperf_submission.open.resnet.train import resize


def test_image_size_grows_to_full_size_and_stays():
    h200 = presets.h200()
    sizes = [presets.image_size(h200, epoch) for epoch in range(1, 40)]
    assert sizes[0] == 128 and sizes[16:] == [224] * 23
    assert sizes == sorted(sizes) and all(s % 32 == 0 for s in sizes)
    smoke = presets.smoke()
    assert [presets.image_size(smoke, e) for e in range(1, 6)] == [16, 24, 32, 32, 32]
    assert presets.image_size(dataclasses.replace(smoke, resize_start_size=32), 1) == 32


def test_resize_changes_only_the_side_of_training_batches():
    cfg = presets.smoke()
    images = torch.randn(4, 3, 32, 32)
    assert resize(cfg, images, 1).shape == (4, 3, 16, 16)
    assert resize(cfg, images, 3) is images
    # Antialiased downsampling keeps the mean of a smooth image.
    flat = torch.ones(1, 3, 32, 32)
    torch.testing.assert_close(resize(cfg, flat, 2), torch.ones(1, 3, 24, 24))


def test_open_resnet_rules():
    for make in presets.PRESETS.values():
        presets.validate_open(make())
    with pytest.raises(UserError, match="quality target"):
        presets.validate_open(dataclasses.replace(presets.smoke(), target_accuracy=0.5))
    with pytest.raises(UserError, match="resize_start_size"):
        presets.validate_open(dataclasses.replace(presets.smoke(), resize_start_size=64))


def test_resize_keeps_channels_last_and_compile_is_refused_while_resizing():
    cfg = presets.smoke()
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert resize(cfg, images, 1).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(UserError, match="torch_compile"):
        presets.validate_open(dataclasses.replace(cfg, torch_compile="inductor"))
    presets.validate_open(dataclasses.replace(cfg, torch_compile="inductor", resize_epochs=0))
