"""ResNet-50 v1.5 for the closed division, as in the MLCommons reference.

v1.5 puts the stride 2 of each stage's first block on the 3x3 conv (v1 puts it on the first 1x1), and
uses a 1x1 stride-2 conv + BN projection shortcut on each stage's first block. Initialisation follows
the v1.1 TF2 reference (`resnet_model.py`): convs Keras `he_normal`, FC kernel `RandomNormal(0.01)` with
Keras' default zero bias, BN gamma 1 and beta 0 (no zero-init of the last BN in each block: that is the
open division's change, `zero_init_residual`).

Parameter names follow torchvision (`conv1`, `layer1.0.conv2`, `layer1.0.downsample.0`, `fc`), so
published checkpoints load directly; `mlperf_tensor_names` maps them to the MXNet-style tensor names
that the compliance checker expects in `weights_initialization`.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

STAGE_BLOCKS = (3, 4, 6, 3)
EXPANSION = 4
BN_MOMENTUM = 0.1  # PyTorch sense: running = (1 - 0.1) * running + 0.1 * batch; MXNet/TF momentum 0.9
BN_EPS = 1e-5
# Keras `he_normal` is VarianceScaling(2, fan_in, truncated_normal): a normal truncated at 2 std whose std
# is divided by this, the std of a unit normal truncated to [-2, 2], so the kept draws have std sqrt(2/fan_in).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, v1.5), 1x1 expand; identity or projection shortcut."""

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * EXPANSION
        self.conv1 = _conv(c_in, width, 1)
        self.bn1 = _bn(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = _bn(width)
        self.conv3 = _conv(width, c_out, 1)
        self.bn3 = _bn(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(_conv(c_in, c_out, 1, stride), _bn(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)  # [N, 4w, H/s, W/s]
        y = self.relu(self.bn1(self.conv1(x)))  # [N, w, H, W]
        y = self.relu(self.bn2(self.conv2(y)))  # [N, w, H/s, W/s]
        y = self.bn3(self.conv3(y))  # [N, 4w, H/s, W/s]
        return self.relu(y + shortcut)  # [N, 4w, H/s, W/s]


class ResNet50(nn.Module):
    """ResNet-50 v1.5. `width` is the stem and first-stage width: 64 gives the real model (25,557,032
    parameters at 1000 classes); smaller widths keep the same topology and parameter names.
    `zero_init_residual` starts each block's last BN at gamma 0, so that every block begins as the identity
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 5.1); the reference does not, so closed
    never sets it."""

    def __init__(self, num_classes: int = 1000, width: int = 64, *, zero_init_residual: bool = False):
        super().__init__()
        self.zero_init_residual = zero_init_residual
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = width
        stages = []
        for i, blocks in enumerate(STAGE_BLOCKS):
            stage_width = width * 2**i
            stride = 1 if i == 0 else 2
            layers = [Bottleneck(c_in, stage_width, stride)]
            c_in = stage_width * EXPANSION
            layers += [Bottleneck(c_in, stage_width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STD  # Keras he_normal
                nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # [N, w, H/2, W/2]
        x = self.maxpool(x)  # [N, w, H/4, W/4]
        x = self.layer1(x)  # [N, 4w, H/4, W/4]
        x = self.layer2(x)  # [N, 8w, H/8, W/8]
        x = self.layer3(x)  # [N, 16w, H/16, W/16]
        x = self.layer4(x)  # [N, 32w, H/32, W/32]
        x = torch.flatten(self.avgpool(x), 1)  # [N, 32w]
        return self.fc(x)  # [N, num_classes]


_STEM = {"conv1.weight": "conv0_weight", "bn1.weight": "bn0_gamma", "bn1.bias": "bn0_beta"}
_HEAD = {"fc.weight": "fc1_weight", "fc.bias": "fc1_bias"}
_BLOCK = re.compile(r"layer(\d)\.(\d+)\.(.+)")
_BLOCK_PARAMS = {
    **{f"conv{k}.weight": f"conv{k}_weight" for k in (1, 2, 3)},
    **{f"bn{k}.weight": f"bn{k}_gamma" for k in (1, 2, 3)},
    **{f"bn{k}.bias": f"bn{k}_beta" for k in (1, 2, 3)},
    "downsample.0.weight": "conv1sc_weight",
    "downsample.1.weight": "bnsc_gamma",
    "downsample.1.bias": "bnsc_beta",
}


def mlperf_tensor_names(model: ResNet50) -> dict[str, str]:
    """Map every parameter name to its MLPerf closed_resnet tensor name (MXNet naming: stages and
    units count from 1, the stem is `conv0`/`bn0`, the shortcut is `conv1sc`/`bnsc`)."""
    names = {}
    for name, _ in model.named_parameters():
        if name in _STEM:
            names[name] = _STEM[name]
        elif name in _HEAD:
            names[name] = _HEAD[name]
        else:
            match = _BLOCK.fullmatch(name)
            if match is None or match.group(3) not in _BLOCK_PARAMS:
                raise KeyError(f"no MLPerf tensor name for parameter {name!r}")
            stage, unit, param = int(match.group(1)), int(match.group(2)) + 1, match.group(3)
            names[name] = f"stage{stage}_unit{unit}_{_BLOCK_PARAMS[param]}"
    return names
