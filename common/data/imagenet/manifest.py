"""The manifest a run checks its data against, cheaply: what `make data` counted and hashed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from mlperf_submission.common.cli import sha256_file
from mlperf_submission.common.data.imagenet.layout import (
    _TFDS_SPLIT,
    ImageNetError,
    _classes,
    _jpeg_split,
    _shards,
    detect_layout,
)

MANIFEST_NAME = "imagenet_manifest.json"
MANIFEST_FORMAT = "mlperf_submission.imagenet_manifest/1"


def _map(fn: Callable, items: list, workers: int, desc: str) -> Iterator:
    bar = dict(desc=desc, total=len(items), unit="file", disable=None, file=sys.stderr)
    if workers <= 1 or len(items) <= 1:
        yield from tqdm(map(fn, items), **bar)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(fn, items, chunksize=max(1, min(256, len(items) // (4 * workers)))), **bar)


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
