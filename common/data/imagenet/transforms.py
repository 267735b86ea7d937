"""MLPerf preprocessing of one PIL image: the reference's training and eval transforms, and `normalise`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import simplejpeg
import torch
from PIL import Image

from .reference import (
    EVAL_RESIZE,
    _tf1_resize_xmajor,
    eval_resize_shape,
    sample_distorted_bounding_box,
)

# Per-channel RGB mean and std on the 0-255 scale. The MLPerf v1.1 TF reference
# (mlcommons/training image_classification/tensorflow2/imagenet_preprocessing.py, _mean_image_subtraction)
# subtracts these means only. We also divide by a std, as the v1.1 MXNet/DALI submissions do (e.g.
# training_results_v1.1 Fujitsu/.../mxnet-fujitsu/common/dali.py, with 255 x torchvision's mean and std).
# A fixed per-channel input scale is a reparametrisation of conv1 (w_c -> w_c / std_c, and batch norm
# follows), not another model, and it keeps inputs near unit variance for fp16/bf16.
MEAN = (123.68, 116.78, 103.94)
STD = (58.393, 57.12, 57.375)


def _encoded_jpeg(img: Image.Image) -> bytes | None:
    """The JPEG bytes behind a not yet loaded PIL JPEG (Image.open reads only the header), else None."""
    if img.format not in ("JPEG", "MPO") or img.mode == "CMYK" or getattr(img, "fp", None) is None:
        return None
    img.fp.seek(0)
    return img.fp.read()


def _decode_rgb(img: Image.Image, wanted: tuple[int, int] | None = None) -> tuple[torch.Tensor, float]:
    """Decode to RGB uint8 (3, H, W), channels-last in memory, and the factor s its sides shrank by.

    JPEGs are decoded as TensorFlow's `decode_jpeg` decodes them by default (libjpeg-turbo, the fast integer
    DCT `JDCT_IFAST`, fancy chroma upsampling), via simplejpeg: on the reference's eval fixture this gives
    its pixels exactly, where Pillow's accurate DCT differs by 1.0 grey level mean absolute. CMYK JPEGs
    (22 in ILSVRC2012 train), which libjpeg-turbo cannot convert, and other formats go through Pillow.
    Full size unless `wanted` (w, h) is given: then the JPEG is decoded at a libjpeg scale (1/8 steps, s > 1)
    that still has at least `wanted` pixels, which saves decode time on large images (the measured,
    disclosed `reduced_decode` option of training; off in the closed division).
    """
    data = _encoded_jpeg(img)
    if data is not None:
        try:
            if wanted is None:
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True)
            else:
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True,
                                             min_width=wanted[0], min_height=wanted[1])
            return torch.from_numpy(rgb).permute(2, 0, 1), img.width / rgb.shape[1]
        except ValueError:
            pass  # what libjpeg-turbo refuses or warns about (strict), Pillow reads or rejects with its reason
    s = 1.0
    if wanted is not None:
        drafted = img.draft("RGB", (max(1, wanted[0]), max(1, wanted[1])))
        s = img.width / drafted[1][2] if drafted is not None else 1.0  # drafted box: the image's new extent
    if img.mode != "RGB":  # greyscale and CMYK JPEGs exist in ILSVRC2012
        img = img.convert("RGB")
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1), s


_MEAN_T = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
_STD_T = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """float32 (3, H, W) on the 0-255 scale -> (x - MEAN) / STD, contiguous."""
    return x.contiguous().sub_(_MEAN_T).div_(_STD_T)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float32 (3, H, W) on the 0-255 scale -> uint8 (H, W, 3), rounded half to even: what a loader worker
    hands over (a quarter of float32's bytes through shared memory and to the device; `normalise` there)."""
    return _xmajor_to_uint8(x.permute(2, 1, 0))


def _xmajor_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float32 (W, H, 3) of `_tf1_resize_xmajor`, 0-255 -> uint8 (H, W, 3), rounded half to even. A bilinear
    mix of two grey levels stays between them, so no clamp is needed; `clamp_` keeps it safe for any input."""
    return x.round().clamp_(0, 255).to(torch.uint8).transpose(0, 1).contiguous()  # round: x may be shared


def normalise(x: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A batch as the model takes it, on whatever device `x` is: a uint8 (N, H, W, 3) batch of `uint8=True`
    transforms becomes float32 (N, 3, H, W), (x - MEAN) / STD; a float batch (the float32 transforms', or
    synthetic data) is already normalised and passes unchanged. The same float32 subtraction and division
    as `_normalize`, so on the same integers both give the same bits (tests/test_imagenet_data.py)."""
    if x.dtype == torch.uint8:
        mean, std = (t.to(x.device).view(1, 3, 1, 1) for t in (_MEAN_T, _STD_T))
        x = x.permute(0, 3, 1, 2).float().sub_(mean).div_(std)  # NHWC bytes: a channels_last float tensor
    return x.contiguous(memory_format=memory_format)


class _TrainTransform:
    """The reference's training preprocessing: crop window by `sample_distorted_bounding_box`, full-size
    decode of the window, horizontal flip with p = 0.5, then TF1 bilinear resize to size x size (the
    reference flips before resizing; TF1's resize is not mirror-symmetric), then normalise (or round to
    uint8, with `uint8`)."""

    def __init__(self, size: int, generator: torch.Generator | None, reduced_decode: bool, uint8: bool):
        self.size, self.generator, self.reduced_decode, self.uint8 = size, generator, reduced_decode, uint8

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """float32 (3, size, size) on the 0-255 scale, before normalisation."""
        return self._resized(img).permute(2, 1, 0).contiguous()

    def _resized(self, img: Image.Image) -> torch.Tensor:  # (size, size, 3) x-major, see _tf1_resize_xmajor
        width, height = img.size
        top, left, h, w = (int(v) for v in sample_distorted_bounding_box(height, width, generator=self.generator)[0])
        flip = torch.rand((), generator=self.generator).item() < 0.5
        wanted = (math.ceil(width * self.size / w), math.ceil(height * self.size / h)) if self.reduced_decode else None
        x, s = _decode_rgb(img, wanted)
        left, top, right, bottom = (round(v / s) for v in (left, top, left + w, top + h))  # in the decoded pixels
        return _tf1_resize_xmajor(x[:, top:bottom, left:right], self.size, self.size, mirror=flip)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        resized = self._resized(img)
        return _xmajor_to_uint8(resized) if self.uint8 else _normalize(resized.permute(2, 1, 0))


class _EvalTransform:
    """The reference's eval preprocessing: full-size decode, TF1 bilinear resize of the short side to
    size * 256 / 224 keeping the aspect, central size x size crop (offsets floored), normalise (or round to
    uint8, with `uint8`)."""

    def __init__(self, size: int, uint8: bool):
        self.size, self.resize, self.uint8 = size, round(size * EVAL_RESIZE / 224), uint8

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """float32 (3, size, size) on the 0-255 scale, before normalisation (the reference's output plus its
        channel means)."""
        return self._resized(img).permute(2, 1, 0).contiguous()

    def _resized(self, img: Image.Image) -> torch.Tensor:  # (size, size, 3) x-major, see _tf1_resize_xmajor
        width, height = img.size
        new_h, new_w = eval_resize_shape(height, width, self.resize)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2  # floor, as the reference
        x, _ = _decode_rgb(img)
        return _tf1_resize_xmajor(x, new_h, new_w, rows=(top, self.size), cols=(left, self.size))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        resized = self._resized(img)
        return _xmajor_to_uint8(resized) if self.uint8 else _normalize(resized.permute(2, 1, 0))


def train_transform(size: int = 224, *, generator: torch.Generator | None = None,
                    reduced_decode: bool = False, uint8: bool = False) -> Callable:
    """PIL image -> (3, size, size) float32, normalised; with `uint8`, the same pixels rounded to uint8
    (size, size, 3), for `normalise` on the device. Random numbers come from `generator`, else the global
    torch RNG; leave it None under DataLoader workers, which each get their own seeded global RNG (a
    generator would be copied into every worker, which would then all draw the same crops).
    `reduced_decode` decodes large JPEGs at 1/2-1/8 scale where the crop allows (faster; off in the closed
    division, see COMPLIANCE.md for what it changes)."""
    return _TrainTransform(size, generator, reduced_decode, uint8)


def eval_transform(size: int = 224, *, uint8: bool = False) -> Callable:
    """PIL image -> (3, size, size) float32, normalised, deterministic; with `uint8`, rounded to uint8
    (size, size, 3) as `train_transform`'s."""
    return _EvalTransform(size, uint8)
