"""Open-division ResNet-50: closed ResNet's run with zero-init residual blocks (and optional progressive resizing).

    python -m mlperf_submission.open.resnet.train --preset smoke --seed 1 --system systems/1xH200.json \
        --result-log out/result_0.txt [--data IMAGENET_DIR] [--set field=value ...]

Model, optimizer, schedule, eval and MLPerf log are closed ResNet's (`closed/resnet/train.py`, its data.py
and steps.py); what changes goes through the typed seam `closed.Variant`: the model's initialisation
(`zero_init_residual`, `open/resnet/presets.py`) and, if a preset asks for it, each training batch's side
length (`transform_batch`): images are decoded and cropped at full size and then downsampled on the device
with antialiasing, so the data pipeline is unchanged and the saving is in the model's compute. The closed
ImageNet-count rule stays on (`Variant.check_counts`).

Open-only branches that stay in closed files: `zero_init_residual` in closed/resnet/model.py (`ResNet50`),
`transform_batch` in closed/resnet/train.py (`timed_loop`).
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

from ...closed.resnet import train as closed
from ...common import training
from ...common.cli import entry_point
from . import presets

DIVISION = "open"


def resize(cfg: presets.OpenResNetConfig, images: torch.Tensor, epoch: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 3, s, s) with s the epoch's side length; unchanged at full size."""
    length = presets.image_size(cfg, epoch)
    if length == images.shape[-1]:
        return images
    memory = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    small = F.interpolate(images, size=(length, length), mode="bilinear", antialias=True, align_corners=False)
    return small.contiguous(memory_format=memory)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = closed.parse_args(argv, prog="python -m mlperf_submission.open.resnet.train", registry=presets.PRESETS,
                             description=__doc__)
    cfg = closed.resolve_config(args, presets.PRESETS, validate=presets.validate_open)
    variant = closed.Variant(transform_batch=functools.partial(resize, cfg), zero_init_residual=cfg.zero_init_residual)
    return closed.train(cfg, training.Invocation.from_args(args), division=DIVISION, variant=variant)


if __name__ == "__main__":
    sys.exit(main())
