"""ImageNet as users bring it, generated: the ILSVRC2012 JPEG folder layout with every synset folder.

    python -m mlperf_submission.common.data.generate.imagenet [--classes 1000] [--train-per-class 3]
        [--val-per-class 1] [--layout jpeg|tfds] [--cache out/cache]

prints the folder (out/cache/imagenet-<key>/, reused while it matches), laid out as `make data BENCH=resnet`
reads ILSVRC2012: train/<wnid>/<wnid>_<i>.JPEG and val/<wnid>/ILSVRC2012_val_<n>.JPEG; or, with `--layout
tfds`, as tensorflow_datasets writes imagenet2012: imagenet2012-{train,validation}.tfrecord-NNNNN-of-NNNNN
shards of tf.train.Examples with `image` (the encoded file), `label` (the class index) and `file_name`,
the same images in the same order, TRAIN_SHARDS and VAL_SHARDS shards (tfds: 1,024 and 128). The 1,000 wnids are
wnid-shaped names (n + 8 digits, sorted), not WordNet's: no list of the real ones ships with the installed
packages, and the class index is a folder's place in the sorted list either way. Images are smooth random
colour fields at the sizes camera photographs come in (500x375 and 375x500 most often, 333x500, 1024x768,
a few large and tiny ones), with ImageNet's known oddities: one CMYK JPEG, one greyscale JPEG and one PNG
named .JPEG (ILSVRC2012 holds 22 CMYK JPEGs, greyscale ones and n02105855_2933.JPEG, a PNG).
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ...cli import ArgumentParser, entry_point
from ..tfrecord import encode_example, write_records
from . import DEFAULT_CACHE, cached

# (width, height) and weight: mostly the 4:3 and 3:4 sizes ILSVRC2012 is full of, some large, a few tiny.
SIZES = (((500, 375), 40), ((375, 500), 15), ((500, 333), 12), ((333, 500), 8), ((1024, 768), 6),
         ((640, 480), 10), ((400, 300), 5), ((2592, 1944), 1), ((4000, 3000), 1), ((80, 60), 1), ((60, 80), 1))
BYTES_PER_IMAGE = 400_000  # upper bound for the disk check: the largest sizes encode to ~300 KB
ODDITIES = ("cmyk", "grey", "png")  # the first train images of the first three classes
LAYOUTS = ("jpeg", "tfds")
TRAIN_SHARDS, VAL_SHARDS = 8, 2  # of the tfds layout: enough to exercise shard order and completeness


def wnids(count: int = 1000) -> list[str]:
    """The first `count` of 1,000 distinct wnid-shaped names, sorted, the same every time."""
    rng = np.random.default_rng(2012)
    numbers = sorted(rng.choice(np.arange(1_000_000, 15_000_000), size=1000, replace=False))
    return [f"n{int(n):08d}" for n in numbers[:count]]


def image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random RGB field of `size`: a 6 x 8 grid of colours resized bilinearly, plus mild noise, so
    that it encodes to a size like a photograph's and decodes like one."""
    w, h = size
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    pixels = np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.int16)
    pixels = pixels + rng.integers(-8, 9, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encoded(img: Image.Image, oddity: str = "") -> bytes:
    """The file's bytes: a JPEG (CMYK or greyscale for those oddities), or a PNG (named .JPEG, as in ILSVRC2012)."""
    buffer = io.BytesIO()
    if oddity == "cmyk":
        img.convert("CMYK").save(buffer, "JPEG", quality=90)
    elif oddity == "grey":
        img.convert("L").save(buffer, "JPEG", quality=90)
    elif oddity == "png":
        img.save(buffer, "PNG")
    else:
        img.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def images(classes: int, train_per_class: int, val_per_class: int, seed: int) -> Iterator[tuple[str, int, str, bytes]]:
    """(split, class index, file name, file bytes) of every image, class by class; the same ones for a seed."""
    rng = np.random.default_rng(seed)
    sizes = [s for s, _ in SIZES]
    weights = np.array([w for _, w in SIZES], dtype=np.float64)
    val_index = 0
    for c, wnid in enumerate(wnids(classes)):
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for i in range(count):
                size = sizes[rng.choice(len(sizes), p=weights / weights.sum())]
                if split == "train":
                    name, oddity = f"{wnid}_{i + 1}.JPEG", ODDITIES[c] if i == 0 and c < len(ODDITIES) else ""
                else:
                    val_index += 1
                    name, oddity = f"ILSVRC2012_val_{val_index:08d}.JPEG", ""
                yield split, c, name, encoded(image(rng, size), oddity)


def write(folder: Path, classes: int, train_per_class: int, val_per_class: int, seed: int,
          layout: str = "jpeg") -> None:
    names = wnids(classes)
    made = images(classes, train_per_class, val_per_class, seed)
    if layout == "jpeg":
        for split, c, name, data in made:
            (folder / split / names[c]).mkdir(parents=True, exist_ok=True)
            (folder / split / names[c] / name).write_bytes(data)
        return
    folder.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[bytes]] = {"train": [], "val": []}
    for split, c, name, data in made:
        by_split[split].append(encode_example({"image": data, "label": c, "file_name": name.encode()}))
    for split, tfds_split, shards in (("train", "train", TRAIN_SHARDS), ("val", "validation", VAL_SHARDS)):
        records = by_split[split]
        per = math.ceil(len(records) / shards)
        for i in range(shards):
            write_records(folder / f"imagenet2012-{tfds_split}.tfrecord-{i:05d}-of-{shards:05d}",
                          records[i * per:(i + 1) * per])


def generate(*, classes: int = 1000, train_per_class: int = 3, val_per_class: int = 1, seed: int = 0,
             layout: str = "jpeg", cache: Path = DEFAULT_CACHE) -> tuple[Path, bool]:
    """(the generated ImageNet folder, whether the cache had it)."""
    params = {"classes": classes, "train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed,
              "layout": layout}
    needed = classes * (train_per_class + val_per_class) * BYTES_PER_IMAGE
    return cached("imagenet", params, Path(__file__), needed,
                  lambda tmp: write(tmp, classes, train_per_class, val_per_class, seed, layout), cache)


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.common.data.generate.imagenet",
                       description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--train-per-class", type=int, default=3)
    p.add_argument("--val-per-class", type=int, default=1)
    p.add_argument("--layout", choices=LAYOUTS, default="jpeg")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args(argv)
    folder, _ = generate(classes=args.classes, train_per_class=args.train_per_class,
                         val_per_class=args.val_per_class, layout=args.layout, cache=args.cache)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
