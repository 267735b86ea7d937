"""Open ResNet: zero-init residual blocks, and the optional progressive resizing, on top of closed ResNet's run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlperf_submission.closed.resnet import presets as closed_presets
from mlperf_submission.closed.resnet.model import Bottleneck, ResNet50
from mlperf_submission.common.cli import UserError
from mlperf_submission.open.resnet import presets
from mlperf_submission.open.resnet.train import resize


def resizing(cfg, epochs=2):
    return dataclasses.replace(cfg, resize_epochs=epochs)


def test_zero_init_residual_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = ResNet50(num_classes=10, width=8, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(not b.bn3.weight.any() for b in blocks)
    x = torch.relu(torch.randn(2, 32, 8, 8))  # a block's input follows a ReLU
    identity = model.layer1[1]
    assert identity.downsample is None
    torch.testing.assert_close(identity(x), x)
    # Everything else is the reference's initialisation, draw for draw: closed never sets it.
    torch.manual_seed(0)
    reference = ResNet50(num_classes=10, width=8)
    assert all(b.bn3.weight.eq(1).all() for b in reference.modules() if isinstance(b, Bottleneck))
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        if not name.endswith("bn3.weight"):
            torch.testing.assert_close(a, b, msg=name)


def test_open_presets_differ_from_closed_in_the_init_and_the_first_eval_only():
    smoke = presets.smoke()
    assert smoke.zero_init_residual and smoke.resize_epochs == 0
    assert closed_presets.eval_epochs(smoke)[:3] == [3, 7, 11]
    same = {f.name for f in dataclasses.fields(closed_presets.ResNetConfig)} - {"eval_offset"}
    assert all(getattr(smoke, f) == getattr(closed_presets.smoke(), f) for f in same)
    closed_presets.validate_closed(dataclasses.replace(closed_presets.smoke(), eval_offset=smoke.eval_offset))


def test_image_size_grows_to_full_size_and_stays():
    h200 = resizing(presets.h200(), 16)
    sizes = [presets.image_size(h200, epoch) for epoch in range(1, 40)]
    assert sizes[0] == 128 and sizes[16:] == [224] * 23
    assert sizes == sorted(sizes) and all(s % 32 == 0 for s in sizes)
    smoke = resizing(presets.smoke())
    assert [presets.image_size(smoke, e) for e in range(1, 6)] == [16, 24, 32, 32, 32]
    assert presets.image_size(dataclasses.replace(smoke, resize_start_size=32), 1) == 32
    assert {presets.image_size(presets.smoke(), e) for e in range(1, 6)} == {32}  # off by default


def test_resize_changes_only_the_side_of_training_batches():
    cfg = resizing(presets.smoke())
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
    cfg = resizing(presets.smoke())
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert resize(cfg, images, 1).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(UserError, match="torch_compile"):
        presets.validate_open(dataclasses.replace(cfg, torch_compile="inductor"))
    presets.validate_open(dataclasses.replace(cfg, torch_compile="inductor", resize_epochs=0))
