"""Which ImageNet layout a folder holds, and the files and labels of each split (directory entries only)."""

from __future__ import annotations

import os
import re
from pathlib import Path

SPLITS = ("train", "val")
NUM_CLASSES = 1000  # labels in the tfds layout are 0..999


_JPEG_SUFFIXES = (".jpeg", ".jpg")
_LABEL_FILES = ("val_labels.txt", "LOC_val_solution.csv")
_SHARD = re.compile(r"^imagenet2012-(train|validation)\.tfrecord-(\d{5})-of-(\d{5})$")
_TFDS_SPLIT = {"train": "train", "val": "validation"}


class ImageNetError(ValueError):
    """The dataset is missing, malformed or corrupt; the message names the file and what to do."""


class CorruptImagesError(ImageNetError):
    """Some images fail to decode; `corrupt` maps each one's key to the reason."""

    def __init__(self, corrupt: dict[str, str]):
        self.corrupt = corrupt
        shown = "; ".join(f"{k} ({v})" for k, v in list(corrupt.items())[:3])
        more = f" and {len(corrupt) - 3} more" if len(corrupt) > 3 else ""
        super().__init__(f"{len(corrupt)} image(s) are not decodable JPEGs: {shown}{more}; "
                         "replace them, or rerun with --skip-corrupt to leave them out")


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
            raise ImageNetError(f"{root}: imagenet2012-{split} shards of several sets (-of-{totals[0]:05d}, "
                                f"-of-{totals[1]:05d}): keep one set")
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
        raise ImageNetError(f"{root} does not exist or is not a folder: pass the folder that holds train/ (JPEG class "
                            "folders) or the imagenet2012-*.tfrecord-* shards")
    jpeg = (root / "train").is_dir()
    tfrecord = any(_SHARD.match(p.name) for p in root.iterdir())
    if jpeg and tfrecord:
        raise ImageNetError(f"{root} holds both train/ and TFRecord shards: point at a folder with one layout")
    if jpeg:
        return "jpeg"
    if tfrecord:
        return "tfrecord"
    raise ImageNetError(f"{root} has no recognisable ImageNet layout: expected train/<wnid>/*.JPEG class folders, or "
                        "imagenet2012-{train,validation}.tfrecord-NNNNN-of-MMMMM shards (tfds keeps them in "
                        "<data_dir>/imagenet2012/<version>/)")


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
