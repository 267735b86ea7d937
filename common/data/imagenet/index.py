"""Check every image of a dataset and build its manifest (counts, undecodable images, sha256 of every file)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from ...cli import sha256_file
from ..tfrecord import TFRecordError, iter_records
from .dataset import _DECODE_ERRORS, _decode_reason
from .layout import (
    _TFDS_SPLIT,
    NUM_CLASSES,
    SPLITS,
    CorruptImagesError,
    ImageNetError,
    _classes,
    _jpeg_split,
    _shards,
    detect_layout,
)
from .manifest import MANIFEST_FORMAT, _map, files_stat
from .records import _parse_example


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
                raise ImageNetError(f"{shard}@{offset} ({name}): label {label} is outside 0..{NUM_CLASSES - 1}")
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
        return {"images": len(keys) - len(corrupt), "classes": len(good), "skipped": corrupt, "files": files,
                "stat": files_stat([root / k for k in keys])}
    shards = _shards(root).get(_TFDS_SPLIT[split], [])
    files, sizes, corrupt, labels, records = {}, {}, {}, set(), 0
    for path, r in zip(shards, _map(_check_shard, [str(p) for p in shards], workers, f"check {split}"), strict=True):
        files[path.name] = r["sha256"]
        # Every record's byte offset, so that training indexes the shards without reading them in its init.
        sizes[path.name] = {"bytes": r["bytes"], "records": len(r["offsets"]), "offsets": r["offsets"]}
        corrupt.update(r["corrupt"])
        labels.update(r["labels"])
        records += len(r["offsets"])
    if records == 0:
        raise ImageNetError(f"{root}: the imagenet2012-{_TFDS_SPLIT[split]} shards hold no records")
    return {"images": records - len(corrupt), "classes": len(labels), "skipped": corrupt, "files": files,
            "shards": sizes, "stat": files_stat(shards)}


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
    manifest = {"format": MANIFEST_FORMAT, "layout": layout, "source": str(root.resolve()), "classes": classes,
                "splits": {}}
    for split in splits:
        manifest["splits"][split] = _index_split(root, layout, split, classes, workers)
    corrupt = {k: v for s in manifest["splits"].values() for k, v in s["skipped"].items()}
    if corrupt and not skip_corrupt:
        raise CorruptImagesError({str(root / k): v for k, v in corrupt.items()})
    return manifest
