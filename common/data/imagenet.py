"""ImageNet (ILSVRC2012) for ResNet-50: JPEG folders or tfds TFRecords, MLPerf preprocessing, a checker.

Check a dataset and write its manifest (counts, undecodable images, sha256 of every file):
    python -m mlperf_submission.common.data.imagenet SRC --out DIR [--skip-corrupt] [--workers N]
writes DIR/imagenet_manifest.json; on bad input it prints one line `error: ...` and exits 2.
    python -m mlperf_submission.common.data.imagenet --bench
prints decode+augment throughput per core (images per CPU-second) for a synthetic 500x375 JPEG of 110 KB.
Measured on a shared 2-core AMD EPYC VM (Python 3.11, simplejpeg 1.9.0, torch 2.13 CPU, other jobs
running), the variants in turns: train_transform(224) 615 images/s, with uint8=True (what training uses)
590, torchvision's transforms on PIL 594 (bench/peers.py). Per image: the full-size decode 0.87 ms, the
TF1 bilinear resize to 224 x 224 0.56 ms (0.63 ms with the rounding to uint8; whole-row gathers in an
x-major layout, `_tf1_resize_xmajor`: the earlier per-pixel gathers took 0.68 ms), TF's crop sampler 0.06 ms.

Layouts (found automatically):
  jpeg      SRC/train/<wnid>/*.JPEG, and either SRC/val/<wnid>/*.JPEG or SRC/val/*.JPEG with a labels
            file. Class index = position of the wnid in the sorted list of SRC/train class folders.
            Image files end in .JPEG/.jpeg/.jpg (any case); other files and names starting with a dot
            are ignored. Labels for a flat val/: SRC/val_labels.txt if present, else
            SRC/LOC_val_solution.csv. A line with a comma splits at its first comma, any other line on
            whitespace; the first field is the image's file name, with or without its extension; the
            first word after it is the wnid. Blank lines, lines starting with '#' and a header line
            whose first field is `ImageId` are skipped. So both `ILSVRC2012_val_00000001.JPEG n01751748`
            and Kaggle's `ILSVRC2012_val_00000001,n01751748 111 25 384 204 ...` work; the devkit's
            ILSVRC2012_validation_ground_truth.txt (numeric ILSVRC ids, another order) does not.
  tfrecord  SRC/imagenet2012-{train,validation}.tfrecord-NNNNN-of-MMMMM as tensorflow-datasets writes
            them (under <data_dir>/imagenet2012/<version>/): tf.train.Example with `image` (JPEG bytes),
            `label` (int64, 0-999) and `file_name`. Split "val" reads the "validation" shards.

Training checks the data against its manifest and leaves out what the checker skipped:
    manifest = verify_manifest(root, "DIR/imagenet_manifest.json")
    data = ImageNet(root, "train", train_transform(), manifest=manifest)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from mlperf_submission.common.cli import atomic_write_text, sha256_file
from mlperf_submission.common.data.tfrecord import TFRecordError, decode_example, iter_records, masked_crc

MANIFEST_NAME = "imagenet_manifest.json"
MANIFEST_FORMAT = "mlperf_submission.imagenet_manifest/1"
SPLITS = ("train", "val")
NUM_CLASSES = 1000  # labels in the tfds layout are 0..999

# Per-channel RGB mean and std on the 0-255 scale. The MLPerf v1.1 TF reference
# (mlcommons/training image_classification/tensorflow2/imagenet_preprocessing.py, _mean_image_subtraction)
# subtracts these means only. We also divide by a std, as the v1.1 MXNet/DALI submissions do (e.g.
# training_results_v1.1 Fujitsu/.../mxnet-fujitsu/common/dali.py, with 255 x torchvision's mean and std).
# A fixed per-channel input scale is a reparametrisation of conv1 (w_c -> w_c / std_c, and batch norm
# follows), not another model, and it keeps inputs near unit variance for fp16/bf16.
MEAN = (123.68, 116.78, 103.94)
STD = (58.393, 57.12, 57.375)

# The training crop of the v1.1 TF reference (`_decode_crop_and_flip`): tf.image.sample_distorted_bounding_box
# with these arguments and no bounding boxes, so the whole image is the one object to cover.
CROP_MIN_OBJECT_COVERED = 0.1
CROP_ASPECT_RATIO_RANGE = (0.75, 1.33)
CROP_AREA_RANGE = (0.05, 1.0)
CROP_MAX_ATTEMPTS = 100
# torchvision's RandomResizedCrop rule (`random_crop_box`): only the torchvision peer of bench/ uses it.
SCALE = (0.05, 1.0)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10
EVAL_RESIZE = 256  # short side before the central crop, for a 224 crop; scaled as size * 256 / 224

_JPEG_SUFFIXES = (".jpeg", ".jpg")
_LABEL_FILES = ("val_labels.txt", "LOC_val_solution.csv")
_SHARD = re.compile(r"^imagenet2012-(train|validation)\.tfrecord-(\d{5})-of-(\d{5})$")
_TFDS_SPLIT = {"train": "train", "val": "validation"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageNetError(ValueError):
    """The dataset is missing, malformed or corrupt; the message names the file and what to do."""


class CorruptImagesError(ImageNetError):
    """Some images fail to decode; `corrupt` maps each one's key to the reason."""

    def __init__(self, corrupt: dict[str, str]):
        self.corrupt = corrupt
        shown = "; ".join(f"{k} ({v})" for k, v in list(corrupt.items())[:3])
        more = f" and {len(corrupt) - 3} more" if len(corrupt) > 3 else ""
        super().__init__(
            f"{len(corrupt)} image(s) are not decodable JPEGs: {shown}{more}; "
            "replace them, or rerun with --skip-corrupt to leave them out"
        )


# ---------------------------------------------------------------------------------------------- transforms


def sample_distorted_bounding_box(
    height: int,
    width: int,
    n: int = 1,
    *,
    min_object_covered: float = CROP_MIN_OBJECT_COVERED,
    aspect_ratio_range: tuple[float, float] = CROP_ASPECT_RATIO_RANGE,
    area_range: tuple[float, float] = CROP_AREA_RANGE,
    max_attempts: int = CROP_MAX_ATTEMPTS,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """`n` crop windows (offset_y, offset_x, crop_height, crop_width), int64 (n, 4), drawn as TensorFlow's
    `sample_distorted_bounding_box` kernel draws them for an image with no bounding boxes and
    `use_image_if_no_bounding_boxes=True` (tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc).

    Per attempt: aspect ratio w/h uniform in `aspect_ratio_range`; the crop height an integer uniform between
    the heights whose area at that aspect is area_range[0] and area_range[1] of the image (each rounded to
    nearest, the largest capped so that the width fits), width = round(height * aspect), a one-pixel
    correction if rounding left the area outside the range; rejected if it still is, if it does not fit, or
    if it covers less than `min_object_covered` of the image (the one object). Offsets are uniform integers in
    [0, image - crop) (the kernel's Uniform(n) excludes n). The first accepted attempt of `max_attempts` wins,
    else the whole image. Arithmetic in float32 and round-half-even as the kernel's floats and lrintf.
    Vectorised over the n windows and the attempts; random numbers from `generator`, else torch's global RNG.
    """
    u = torch.rand(n, max_attempts, 4, generator=generator, dtype=torch.float32).numpy()
    f32 = np.float32
    lo, hi = f32(aspect_ratio_range[0]), f32(aspect_ratio_range[1])
    aspect = u[..., 0] * (hi - lo) + lo  # (n, attempts) float32
    min_area = f32(area_range[0]) * f32(width) * f32(height)
    max_area = f32(area_range[1]) * f32(width) * f32(height)
    h = np.rint(np.sqrt(min_area / aspect)).astype(np.int64)
    max_h = np.rint(np.sqrt(max_area / aspect)).astype(np.int64)
    # The largest height whose rounded width still fits: (width + 0.5 - 1e-7) / aspect in double, truncated,
    # and one less if rounding still overshoots.
    fit = ((width + 0.5 - np.float64(f32(1e-7))) / aspect.astype(np.float64)).astype(np.int64)
    fit = np.where(np.rint((fit * aspect).astype(f32)) > width, fit - 1, fit)
    max_h = np.where(np.rint((max_h * aspect).astype(f32)) > width, fit, max_h)
    max_h = np.minimum(max_h, height)
    h = np.minimum(h, max_h)
    h = h + np.minimum(np.floor(u[..., 1].astype(np.float64) * (max_h - h + 1)), max_h - h).astype(np.int64)
    w = np.rint((h * aspect).astype(f32)).astype(np.int64)
    area = (w * h).astype(f32)
    grow = area < min_area  # rounding left it too small: one row more
    h = np.where(grow, h + 1, h)
    w = np.where(grow, np.rint((h * aspect).astype(f32)).astype(np.int64), w)
    area = (w * h).astype(f32)
    shrink = area > max_area  # too large: one row fewer
    h = np.where(shrink, h - 1, h)
    w = np.where(shrink, np.rint((h * aspect).astype(f32)).astype(np.int64), w)
    area = (w * h).astype(f32)
    ok = (area >= min_area) & (area <= max_area) & (w <= width) & (h <= height) & (w > 0) & (h > 0)
    ok &= (area >= 1) & (area / f32(width * height) >= f32(min_object_covered))

    def offset(u_k: np.ndarray, room: np.ndarray) -> np.ndarray:  # Uniform(room): [0, room); 0 if no room
        return np.where(room > 0, np.minimum(np.floor(u_k.astype(np.float64) * room), room - 1), 0).astype(np.int64)

    y, x = offset(u[..., 2], height - h), offset(u[..., 3], width - w)
    first = ok.argmax(axis=1)  # the first accepted attempt (0 if none)
    rows = np.arange(n)
    out = np.stack([y[rows, first], x[rows, first], h[rows, first], w[rows, first]], axis=1)
    out[~ok.any(axis=1)] = (0, 0, height, width)
    return out


def random_crop_box(
    width: int,
    height: int,
    *,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Sample a random-resized-crop window (left, top, w, h) in an image of width x height pixels."""
    u = torch.rand(ATTEMPTS, 4, dtype=torch.float64, generator=generator).tolist()
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_left, u_top in u:
        target_area = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))  # w / h
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u_left * (width - w + 1)), int(u_top * (height - h + 1)), w, h
    aspect = width / height  # fallback: the largest central crop whose aspect is within `ratio`
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


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


def _tf1_axis(in_size: int, out_size: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (lower, upper) and weights of output pixels start..start+count-1 along one axis, as
    TF1's bilinear resize with align_corners=False and half_pixel_centers=False: output i reads input
    i * (in / out) in float32 (no half-pixel shift), lower = floor, upper = min(ceil, in - 1)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(start, start + count, dtype=np.float32) * scale
    lower = np.floor(src)
    upper = np.minimum(np.ceil(src), in_size - 1)
    return (torch.from_numpy(lower.astype(np.int64)), torch.from_numpy(upper.astype(np.int64)),
            torch.from_numpy((src - lower).astype(np.float32)))


def tf1_resize_bilinear(
    x: torch.Tensor, height: int, width: int, *, rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None, mirror: bool = False,
) -> torch.Tensor:
    """(C, H, W) -> float32 (C, height, width): `tf.compat.v1.image.resize(..., BILINEAR, align_corners=False)`,
    the reference's `_resize_image` (no antialiasing, no half-pixel centres). `rows` / `cols` = (start, count)
    compute only that window of the output (exact: each output pixel depends on its own index only), so a
    central crop costs what the crop does. `mirror` resizes the left-right mirror image of `x` (exactly
    `x.flip(-1)` first, without the copy). Same operation order as TF's kernel: top and bottom rows
    interpolated along x, then between them along y."""
    return _tf1_resize_xmajor(x, height, width, rows=rows, cols=cols, mirror=mirror).permute(2, 1, 0).contiguous()


def _tf1_resize_xmajor(
    x: torch.Tensor, height: int, width: int, *, rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None, mirror: bool = False,
) -> torch.Tensor:
    """`tf1_resize_bilinear` laid out (count_x, count_y, C): the same float32 operations in the same order,
    arranged so that every gather moves whole contiguous rows and every arithmetic pass runs over contiguous
    memory. Gathering 3-byte pixels along a row (index_select on dim 1) took 0.29 ms of the old 0.74 ms per
    224 px image on one core; this layout takes 0.44-0.70 ms in all (bit-exact: tests)."""
    rows = rows or (0, height)
    cols = cols or (0, width)
    y0, y1, yl = _tf1_axis(x.shape[1], height, *rows)
    x0, x1, xl = _tf1_axis(x.shape[2], width, *cols)
    if mirror:
        x0, x1 = x.shape[2] - 1 - x0, x.shape[2] - 1 - x1
    # decoded images are HWC in memory: gather the top and bottom source rows (contiguous), then turn them
    # column-major (one uint8 copy) so that the left and right source columns are whole rows too
    picked = x.permute(1, 2, 0).index_select(0, torch.cat([y0, y1]))  # (2 count_y, W, C) uint8
    columns = picked.transpose(0, 1).contiguous().index_select(0, torch.cat([x0, x1])).float()
    left, right = columns[: len(x0)], columns[len(x0):]  # (count_x, 2 count_y, C)
    along_x = left + (right - left) * xl[:, None, None]  # top rows, then bottom rows, along dim 1
    top, bottom = along_x[:, : len(y0)], along_x[:, len(y0):]
    return top + (bottom - top) * yl[None, :, None]  # (count_x, count_y, C)


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


def eval_resize_shape(height: int, width: int, resize_min: int) -> tuple[int, int]:
    """The reference's `_smallest_size_at_least`: scale = resize_min / short side in float32, sides truncated."""
    f32 = np.float32
    scale = f32(resize_min) / f32(min(height, width))
    return int(f32(height) * scale), int(f32(width) * scale)


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


# ---------------------------------------------------------------------------------------------- layouts


def _is_jpeg_name(name: str) -> bool:
    return name.lower().endswith(_JPEG_SUFFIXES) and not name.startswith(".")


def _scan(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted (sub-folder names, JPEG file names) of `folder`, skipping hidden entries."""
    dirs, files = [], []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif _is_jpeg_name(entry.name):
                files.append(entry.name)
    return sorted(dirs), sorted(files)


def _shards(root: Path) -> dict[str, list[Path]]:
    """tfds shards in `root` by tfds split name, each list complete and in shard order."""
    found: dict[str, dict[int, tuple[int, Path]]] = {}
    for path in root.iterdir():
        m = _SHARD.match(path.name)
        if m:
            found.setdefault(m[1], {})[int(m[2])] = (int(m[3]), path)
    out = {}
    for split, shards in found.items():
        totals = sorted({total for total, _ in shards.values()})
        if len(totals) != 1:
            raise ImageNetError(
                f"{root}: imagenet2012-{split} shards of several sets (-of-{totals[0]:05d}, "
                f"-of-{totals[1]:05d}): keep one set"
            )
        missing = sorted(set(range(totals[0])) - set(shards))
        if missing:
            raise ImageNetError(
                f"{root}: {len(missing)} of the {totals[0]} imagenet2012-{split} shards are missing, e.g. "
                f"imagenet2012-{split}.tfrecord-{missing[0]:05d}-of-{totals[0]:05d}: download them"
            )
        out[split] = [shards[i][1] for i in sorted(shards)]
    return out


def detect_layout(root: str | os.PathLike) -> str:
    """'jpeg' or 'tfrecord'; raise ImageNetError if `root` is missing or holds neither."""
    root = Path(root)
    if not root.is_dir():
        raise ImageNetError(
            f"{root} does not exist or is not a folder: pass the folder that holds train/ (JPEG class "
            "folders) or the imagenet2012-*.tfrecord-* shards"
        )
    jpeg = (root / "train").is_dir()
    tfrecord = any(_SHARD.match(p.name) for p in root.iterdir())
    if jpeg and tfrecord:
        raise ImageNetError(
            f"{root} holds both train/ and TFRecord shards: point at a folder with one layout"
        )
    if jpeg:
        return "jpeg"
    if tfrecord:
        return "tfrecord"
    raise ImageNetError(
        f"{root} has no recognisable ImageNet layout: expected train/<wnid>/*.JPEG class folders, or "
        "imagenet2012-{train,validation}.tfrecord-NNNNN-of-MMMMM shards (tfds keeps them in "
        "<data_dir>/imagenet2012/<version>/)"
    )


def _classes(root: Path) -> list[str]:
    train = root / "train"
    dirs, files = _scan(train)
    if files:
        raise ImageNetError(f"{train} holds loose images: expected train/<wnid>/*.JPEG class folders")
    if not dirs:
        raise ImageNetError(f"{train} has no class folders: extract each class into train/<wnid>/")
    return dirs


def _read_val_labels(path: Path) -> dict[str, str]:
    """Image file stem -> wnid, from a labels file in the format given in the module docstring."""
    labels = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(",", 1) if "," in line else line.split(None, 1)
        name, words = fields[0].strip(), fields[1].split() if len(fields) == 2 else []
        if name == "ImageId":
            continue
        if not words:
            raise ImageNetError(f"{path}:{n}: no wnid after {name!r}: expected `<file name> <wnid>`")
        labels[Path(name).stem if _is_jpeg_name(name) else name] = words[0]

    return labels


def _jpeg_split(root: Path, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """Keys (paths relative to root, '/'-separated) and labels of one split of the JPEG layout."""
    index = {wnid: i for i, wnid in enumerate(classes)}
    folder = root / split
    if not folder.is_dir():
        raise ImageNetError(f"{folder} does not exist: the JPEG layout needs {split}/ beside train/")
    dirs, files = _scan(folder)
    keys, labels = [], []
    if dirs:
        if files:
            raise ImageNetError(f"{folder} holds both class folders and loose images: keep one form")
        for wnid in dirs:
            if wnid not in index:
                raise ImageNetError(f"{folder / wnid} is not a class in train/: remove it or add the class")
            names = _scan(folder / wnid)[1]
            if not names:
                raise ImageNetError(
                    f"{folder / wnid} is an empty class folder: restore its images (deleting the folder "
                    "would renumber every class after it)"
                )
            keys += [f"{split}/{wnid}/{name}" for name in names]
            labels += [index[wnid]] * len(names)
        return keys, labels
    if not files:
        raise ImageNetError(f"{folder} holds no images")
    label_file = next((root / n for n in _LABEL_FILES if (root / n).is_file()), None)
    if label_file is None:
        raise ImageNetError(
            f"{folder} holds loose images but there is no {' or '.join(_LABEL_FILES)} in {root}: add one "
            "(`<file name> <wnid>` per line) or sort val/ into class folders"
        )
    wnids = _read_val_labels(label_file)
    for name in files:
        wnid = wnids.pop(Path(name).stem, None)
        if wnid is None:
            raise ImageNetError(f"{folder / name} has no line in {label_file}: add one or remove the image")
        if wnid not in index:
            raise ImageNetError(f"{label_file}: {name} is labelled {wnid}, which is not a class in train/")
        keys.append(f"{split}/{name}")
        labels.append(index[wnid])
    if wnids:
        raise ImageNetError(
            f"{label_file} names {len(wnids)} image(s) missing from {folder}, e.g. {next(iter(wnids))}: "
            "restore them or use the labels file that matches this folder"
        )
    return keys, labels


# ---------------------------------------------------------------------------------------------- TFRecords


def _record_offsets(path: Path) -> list[int]:
    """Byte offset of every record in a TFRecord file, from the framing alone (length CRCs checked)."""
    offsets, offset, size = [], 0, path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        while offset < size:
            header = os.pread(fd, 12, offset)
            if len(header) < 12:
                break
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                raise ImageNetError(f"{path}: corrupt record length (CRC mismatch) at byte {offset}")
            offsets.append(offset)
            offset += 16 + length
    finally:
        os.close(fd)
    if offset != size:
        raise ImageNetError(f"{path}: truncated record at byte {offsets[-1] if offsets else 0}")
    return offsets


def _read_record(path: Path, offset: int) -> bytes:
    """The payload of the record at `offset`, both CRCs verified."""
    with open(path, "rb") as f:
        f.seek(offset)
        header = f.read(12)
        if len(header) < 12 or masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
            raise ImageNetError(f"{path}: corrupt record length (CRC mismatch) at byte {offset}")
        length = struct.unpack("<Q", header[:8])[0]
        data, footer = f.read(length), f.read(4)
    if len(data) < length or len(footer) < 4 or masked_crc(data) != struct.unpack("<I", footer)[0]:
        raise ImageNetError(f"{path}: corrupt record data (CRC mismatch) at byte {offset}")
    return data


def _parse_example(data: bytes, where: str) -> tuple[bytes, int, str]:
    """(JPEG bytes, label, file name) of a tfds imagenet2012 record."""
    try:
        example = decode_example(data)
    except TFRecordError as e:
        raise ImageNetError(f"{where}: {e}") from None
    image, label = example.get("image"), example.get("label")
    if not isinstance(image, list) or len(image) != 1 or not isinstance(label, np.ndarray) or label.size != 1:
        raise ImageNetError(f"{where}: record lacks `image` or `label`: not the tfds imagenet2012 layout")
    name = example.get("file_name", [b"?"])
    return image[0], int(label[0]), name[0].decode(errors="replace") if isinstance(name, list) else "?"


# ---------------------------------------------------------------------------------------------- dataset


def _decode_reason(e: Exception) -> str:
    return "unrecognised image data" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"


def _transform_bytes(data: bytes, name: str, transform: Callable) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return transform(img)
    except _DECODE_ERRORS as e:
        raise ImageNetError(f"{name}: not a decodable JPEG ({_decode_reason(e)})") from e


class ImageNet(torch.utils.data.Dataset):
    """ILSVRC2012 split `train` or `val` from either layout; items are (transform(image), int label).

    `exclude` holds keys to leave out: paths relative to root for JPEGs, `<shard name>@<byte offset>` for
    records (a manifest's `skipped`). With `manifest` (from `verify_manifest`), its `skipped` are left out
    and TFRecord shards are indexed from its record offsets instead of by reading their framing. Only numpy
    arrays are kept per image, so forked DataLoader workers share them without copy-on-write growth.
    """

    def __init__(
        self, root: str | os.PathLike, split: str, transform: Callable, *, exclude: Iterable[str] = (),
        manifest: dict | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        self.root, self.split, self.transform = Path(root), split, transform
        self.layout = detect_layout(self.root)
        entry = manifest["splits"].get(split, {}) if manifest is not None else {}
        exclude = set(exclude) | set(entry.get("skipped", ()))
        indexed = entry.get("shards", {})
        if self.layout == "jpeg":
            self.classes = _classes(self.root)
            keys, labels = _jpeg_split(self.root, split, self.classes)
            keep = [i for i, k in enumerate(keys) if k not in exclude]
            self._keys = np.array([keys[i].encode() for i in keep], dtype=np.bytes_)
            self._labels = np.array([labels[i] for i in keep], dtype=np.int64)
        else:
            shards = _shards(self.root).get(_TFDS_SPLIT[split])
            if not shards:
                raise ImageNetError(f"{self.root} has no imagenet2012-{_TFDS_SPLIT[split]} shards")
            self._shards = shards

            def offsets(path: Path) -> list[int]:  # a manifest from before offsets were indexed: read them
                known = indexed.get(path.name, {}).get("offsets")
                return known if known is not None else _record_offsets(path)

            pairs = [
                (s, off)
                for s, path in enumerate(shards)
                for off in offsets(path)
                if f"{path.name}@{off}" not in exclude
            ]
            self._shard_ids = np.array([s for s, _ in pairs], dtype=np.int32)
            self._offsets = np.array([off for _, off in pairs], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._keys) if self.layout == "jpeg" else len(self._offsets)

    def key(self, i: int) -> str:
        if self.layout == "jpeg":
            return self._keys[i].decode()
        return f"{self._shards[self._shard_ids[i]].name}@{self._offsets[i]}"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.layout == "jpeg":
            path = self.root / self._keys[i].decode()
            return _transform_bytes(path.read_bytes(), str(path), self.transform), int(self._labels[i])
        shard, offset = self._shards[self._shard_ids[i]], int(self._offsets[i])
        where = f"{shard}@{offset}"
        image, label, name = _parse_example(_read_record(shard, offset), where)
        return _transform_bytes(image, f"{where} ({name})", self.transform), label


# ---------------------------------------------------------------------------------------------- checker


def _decode_error(data: bytes) -> str | None:
    """Why `data` is not a decodable image, or None. Decoding at 1/8 scale still reads every scan."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.convert("RGB")
    except _DECODE_ERRORS as e:
        return _decode_reason(e)
    return None


def _check_jpeg(path: str) -> tuple[str, str | None]:
    data = Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest(), _decode_error(data)


def _check_shard(path: str) -> dict:
    """sha256, size, record offsets, label set and undecodable images of one shard; CRC errors raise."""
    shard = Path(path)
    labels, corrupt, offset, offsets = set(), {}, 0, []
    try:
        for data in iter_records(shard):
            offsets.append(offset)
            where = f"{shard.name}@{offset}"
            image, label, name = _parse_example(data, str(shard.parent / where))
            if not 0 <= label < NUM_CLASSES:
                raise ImageNetError(
                    f"{shard}@{offset} ({name}): label {label} is outside 0..{NUM_CLASSES - 1}"
                )
            labels.add(label)
            if (reason := _decode_error(image)) is not None:
                corrupt[where] = f"{name}: {reason}"
            offset += 16 + len(data)
    except TFRecordError as e:
        raise ImageNetError(f"{e}: re-download or regenerate this shard") from None
    return {
        "sha256": sha256_file(shard),
        "bytes": offset,
        "offsets": offsets,
        "labels": sorted(labels),
        "corrupt": corrupt,
    }


def _map(fn: Callable, items: list, workers: int, desc: str) -> Iterator:
    bar = dict(desc=desc, total=len(items), unit="file", disable=None, file=sys.stderr)
    if workers <= 1 or len(items) <= 1:
        yield from tqdm(map(fn, items), **bar)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(fn, items, chunksize=max(1, min(256, len(items) // (4 * workers)))), **bar)


def _index_split(root: Path, layout: str, split: str, classes: list[str] | None, workers: int) -> dict:
    if layout == "jpeg":
        keys, labels = _jpeg_split(root, split, classes)
        results = _map(_check_jpeg, [str(root / k) for k in keys], workers, f"check {split}")
        files, corrupt = {}, {}
        for key, (digest, reason) in zip(keys, results, strict=True):
            files[key] = digest
            if reason is not None:
                corrupt[key] = reason
        good = {label for key, label in zip(keys, labels, strict=True) if key not in corrupt}
        return {"images": len(keys) - len(corrupt), "classes": len(good), "skipped": corrupt, "files": files}
    shards = _shards(root).get(_TFDS_SPLIT[split], [])
    files, sizes, corrupt, labels, records = {}, {}, {}, set(), 0
    for path, r in zip(
        shards, _map(_check_shard, [str(p) for p in shards], workers, f"check {split}"), strict=True
    ):
        files[path.name] = r["sha256"]
        # Every record's byte offset, so that training indexes the shards without reading them in its init.
        sizes[path.name] = {"bytes": r["bytes"], "records": len(r["offsets"]), "offsets": r["offsets"]}
        corrupt.update(r["corrupt"])
        labels.update(r["labels"])
        records += len(r["offsets"])
    if records == 0:
        raise ImageNetError(f"{root}: the imagenet2012-{_TFDS_SPLIT[split]} shards hold no records")
    return {
        "images": records - len(corrupt),
        "classes": len(labels),
        "skipped": corrupt,
        "files": files,
        "shards": sizes,
    }


def index_dataset(root: str | os.PathLike, *, skip_corrupt: bool = False, workers: int = 1) -> dict:
    """Check every split of the dataset at `root` and return its manifest (see the module docstring).

    Raises ImageNetError on a structural problem, and CorruptImagesError listing undecodable images unless
    `skip_corrupt`, in which case they are counted under `skipped` and left out of `images`.
    """
    root = Path(root)
    layout = detect_layout(root)
    if layout == "jpeg":
        classes = _classes(root)
        splits = [s for s in SPLITS if (root / s).is_dir()]
    else:
        classes, present = None, _shards(root)
        splits = [s for s in SPLITS if _TFDS_SPLIT[s] in present]
    manifest = {
        "format": MANIFEST_FORMAT,
        "layout": layout,
        "source": str(root.resolve()),
        "classes": classes,
        "splits": {},
    }
    for split in splits:
        manifest["splits"][split] = _index_split(root, layout, split, classes, workers)
    corrupt = {k: v for s in manifest["splits"].values() for k, v in s["skipped"].items()}
    if corrupt and not skip_corrupt:
        raise CorruptImagesError({str(root / k): v for k, v in corrupt.items()})
    return manifest


def verify_manifest(
    root: str | os.PathLike, manifest_path: str | os.PathLike, *, full: bool = False, workers: int = 1
) -> dict:
    """Check quickly that the dataset at `root` is the one `manifest_path` describes; return the manifest.

    Quick: layout, class list, and per split the set of files (JPEG layout) or shard names and sizes
    (TFRecords). `full=True` also re-hashes every file. Raises ImageNetError on any difference.
    """
    root = Path(root)
    try:
        manifest = json.loads(Path(manifest_path).read_text())
    except (OSError, ValueError) as e:
        raise ImageNetError(
            f"{manifest_path}: cannot read the manifest ({e}): rerun the index command"
        ) from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ImageNetError(f"{manifest_path}: not an ImageNet manifest of format {MANIFEST_FORMAT}")
    layout = detect_layout(root)
    if layout != manifest["layout"]:
        raise ImageNetError(
            f"{root} is in the {layout} layout but the manifest was made for {manifest['layout']}"
        )
    if layout == "jpeg" and _classes(root) != manifest["classes"]:
        raise ImageNetError(f"{root}/train class folders differ from the manifest's class list")
    shards = _shards(root) if layout == "tfrecord" else {}
    for split, entry in manifest["splits"].items():
        if layout == "jpeg":
            names = set(_jpeg_split(root, split, manifest["classes"])[0])
        else:
            paths = shards.get(_TFDS_SPLIT[split], [])
            names = {p.name for p in paths}
            for p in paths:
                if p.name in entry["shards"] and p.stat().st_size != entry["shards"][p.name]["bytes"]:
                    raise ImageNetError(f"{p}: size differs from the manifest: the shard has changed")
        missing, extra = set(entry["files"]) - names, names - set(entry["files"])
        if missing or extra:
            raise ImageNetError(
                f"{root} {split}: {len(missing)} file(s) missing and {len(extra)} unexpected compared with "
                f"the manifest, e.g. {sorted(missing or extra)[0]}: restore the data or re-index it"
            )
        if full:
            keys = sorted(entry["files"])
            for key, digest in zip(
                keys, _map(sha256_file, [root / k for k in keys], workers, f"hash {split}"), strict=True
            ):
                if digest != entry["files"][key]:
                    raise ImageNetError(
                        f"{root / key}: sha256 differs from the manifest: the file has changed"
                    )
    return manifest


def benchmark(transform: Callable, *, width: int = 500, height: int = 375, seconds: float = 3.0) -> float:
    """Images per CPU-second of JPEG decode + `transform` on one thread, for a synthetic width x height JPEG
    of about 110 KB at 500x375 (the ILSVRC2012 train average is about 140 GB / 1.28 M images). CPU time
    and the best of 5 rounds, so that other processes on the machine bias it less."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 90 * np.sin(xx / 37 + k) * np.cos(yy / 23 - k) for k in range(3)], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 24, rgb.shape)  # texture, so the JPEG is photo-sized
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = 0.0
    try:
        for _ in range(5):
            n, start = 0, time.process_time()
            while (elapsed := time.process_time() - start) < seconds / 5:
                with Image.open(io.BytesIO(data)) as img:
                    transform(img)
                n += 1
            best = max(best, n / elapsed)
    finally:
        torch.set_num_threads(threads)
    return best


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other error of this command
        raise _ArgumentError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m mlperf_submission.common.data.imagenet", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "src", nargs="?", help="dataset folder (JPEG layout root, or the folder of tfds shards)"
    )
    parser.add_argument("--out", help=f"folder to write {MANIFEST_NAME} into")
    parser.add_argument(
        "--skip-corrupt", action="store_true", help="list undecodable images and leave them out"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for checking")
    parser.add_argument("--bench", action="store_true", help="measure transform throughput and exit")
    try:
        args = parser.parse_args(argv)
        if args.bench:
            for name, t in (
                ("train_transform(224)", train_transform()),
                ("eval_transform(224)", eval_transform()),
            ):
                print(f"{name} on a 500x375 JPEG: {benchmark(t):.0f} images/s on one core")
            return 0
        if args.src is None or args.out is None:
            raise _ArgumentError(f"SRC and --out are both needed: {parser.prog} SRC --out DIR")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ImageNetError(f"--out {out} is a file: pass a folder")
        manifest = index_dataset(args.src, skip_corrupt=args.skip_corrupt, workers=args.workers)
    except (ImageNetError, _ArgumentError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{manifest['layout']} layout at {args.src}")
    for split, s in manifest["splits"].items():
        print(
            f"  {split}: {s['images']} images, {s['classes']} classes, {len(s['skipped'])} skipped as corrupt"
        )
    print(f"wrote {out / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
