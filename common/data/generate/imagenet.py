"""ImageNet as users bring it, generated: the ILSVRC2012 JPEG folder layout with every synset folder.

    python -m mlperf_submission.common.data.generate.imagenet [--classes 1000] [--train-per-class 3]
        [--val-per-class 1] [--cache out/cache]

prints the folder (out/cache/imagenet-<key>/, reused while it matches), laid out as `make data BENCH=resnet`
reads ILSVRC2012: train/<wnid>/<wnid>_<i>.JPEG and val/<wnid>/ILSVRC2012_val_<n>.JPEG. The 1,000 wnids are
wnid-shaped names (n + 8 digits, sorted), not WordNet's: no list of the real ones ships with the installed
packages, and the class index is a folder's place in the sorted list either way. Images are smooth random
colour fields at the sizes camera photographs come in (500x375 and 375x500 most often, 333x500, 1024x768,
a few large and tiny ones), with ImageNet's known oddities: one CMYK JPEG, one greyscale JPEG and one PNG
named .JPEG (ILSVRC2012 holds 22 CMYK JPEGs, greyscale ones and n02105855_2933.JPEG, a PNG).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ...cli import ArgumentParser, entry_point
from . import DEFAULT_CACHE, cached

# (width, height) and weight: mostly the 4:3 and 3:4 sizes ILSVRC2012 is full of, some large, a few tiny.
SIZES = (((500, 375), 40), ((375, 500), 15), ((500, 333), 12), ((333, 500), 8), ((1024, 768), 6),
         ((640, 480), 10), ((400, 300), 5), ((2592, 1944), 1), ((4000, 3000), 1), ((80, 60), 1), ((60, 80), 1))
BYTES_PER_IMAGE = 400_000  # upper bound for the disk check: the largest sizes encode to ~300 KB
ODDITIES = ("cmyk", "grey", "png")  # the first train images of the first three classes


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


def save(img: Image.Image, path: Path, oddity: str = "") -> None:
    if oddity == "cmyk":
        img.convert("CMYK").save(path, "JPEG", quality=90)
    elif oddity == "grey":
        img.convert("L").save(path, "JPEG", quality=90)
    elif oddity == "png":
        img.save(path, "PNG")  # named .JPEG, as in ILSVRC2012
    else:
        img.save(path, "JPEG", quality=90)


def write(folder: Path, classes: int, train_per_class: int, val_per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = [s for s, _ in SIZES]
    weights = np.array([w for _, w in SIZES], dtype=np.float64)
    val_index = 0
    for c, wnid in enumerate(wnids(classes)):
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            (folder / split / wnid).mkdir(parents=True)
            for i in range(count):
                size = sizes[rng.choice(len(sizes), p=weights / weights.sum())]
                if split == "train":
                    name, oddity = f"{wnid}_{i + 1}.JPEG", ODDITIES[c] if i == 0 and c < len(ODDITIES) else ""
                else:
                    val_index += 1
                    name, oddity = f"ILSVRC2012_val_{val_index:08d}.JPEG", ""
                save(image(rng, size), folder / split / wnid / name, oddity)


def generate(*, classes: int = 1000, train_per_class: int = 3, val_per_class: int = 1, seed: int = 0,
             cache: Path = DEFAULT_CACHE) -> tuple[Path, bool]:
    """(the generated ImageNet folder, whether the cache had it)."""
    params = {"classes": classes, "train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed}
    needed = classes * (train_per_class + val_per_class) * BYTES_PER_IMAGE
    return cached("imagenet", params, Path(__file__), needed,
                  lambda tmp: write(tmp, classes, train_per_class, val_per_class, seed), cache)


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.common.data.generate.imagenet",
                       description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--train-per-class", type=int, default=3)
    p.add_argument("--val-per-class", type=int, default=1)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args(argv)
    folder, _ = generate(classes=args.classes, train_per_class=args.train_per_class,
                         val_per_class=args.val_per_class, cache=args.cache)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
