"""The manifest a run checks its data against, cheaply: what `make data` counted and hashed.

Two files in the manifest folder: `imagenet_manifest.json` (layout, classes, per split the counts, the
undecodable images left out, the files' count, total size and latest modification time, TFRecord offsets,
and its own checksum) and `imagenet_checksums.json` (the sha256 of every file, which the manifest names by
its sha256). A run reads the first only and stats the files: no image is read between cache_clear and
run_start, and what it reads does not grow with the number of JPEGs. The full pass (`full=True`,
`python -m mlperf_submission.common.data.imagenet SRC --out DIR --verify`) re-hashes every file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ...cli import atomic_write_text, json_checksum, sha256_file
from .layout import (
    _TFDS_SPLIT,
    ImageNetError,
    _classes,
    _jpeg_split,
    _shards,
    detect_layout,
)

MANIFEST_NAME = "imagenet_manifest.json"
MANIFEST_FORMAT = "mlperf_submission.imagenet_manifest/2"
CHECKSUMS_NAME = "imagenet_checksums.json"


def _map(fn: Callable, items: list, workers: int, desc: str) -> Iterator:
    bar = dict(desc=desc, total=len(items), unit="file", disable=None, file=sys.stderr)
    if workers <= 1 or len(items) <= 1:
        yield from tqdm(map(fn, items), **bar)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(fn, items, chunksize=max(1, min(256, len(items) // (4 * workers)))), **bar)


def files_stat(paths: list[Path]) -> dict:
    """What the cheap check compares: how many files, their total size in bytes, the latest mtime in ns."""
    stats = [p.stat() for p in paths]
    return {"files": len(stats), "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def write_manifest(out: Path, manifest: dict) -> dict:
    """Write `manifest` (from `index.index_dataset`, with every file's sha256 under each split's `files`) into
    `out` as the two files of the module docstring, the checksums first; -> the manifest as written."""
    digests = {split: entry["files"] for split, entry in manifest["splits"].items()}
    atomic_write_text(out / CHECKSUMS_NAME, json.dumps(digests, sort_keys=True) + "\n")
    light = {**manifest, "splits": {split: {k: v for k, v in entry.items() if k != "files"}
                                    for split, entry in manifest["splits"].items()}}
    light["checksums"] = {"file": CHECKSUMS_NAME, "sha256": sha256_file(out / CHECKSUMS_NAME)}
    light["checksum"] = json_checksum(light)
    atomic_write_text(out / MANIFEST_NAME, json.dumps(light, indent=1, sort_keys=True) + "\n")
    return light


def _read(manifest_path: Path) -> dict:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ImageNetError(f"{manifest_path}: cannot read the manifest ({e}): rerun the index command") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ImageNetError(f"{manifest_path}: not an ImageNet manifest of format {MANIFEST_FORMAT}: rerun the "
                            "index command (make data BENCH=resnet)")
    if manifest.get("checksum") != json_checksum(manifest):
        raise ImageNetError(f"{manifest_path}: its checksum does not match its contents: the manifest was edited")
    return manifest


def _split_files(root: Path, layout: str, split: str, classes: list[str] | None) -> dict[str, Path]:
    """Key (as the checksums name it) -> path of every file of one split."""
    if layout == "jpeg":
        return {key: root / key for key in _jpeg_split(root, split, classes)[0]}
    return {p.name: p for p in _shards(root).get(_TFDS_SPLIT[split], [])}


def _full_check(root: Path, manifest_path: Path, manifest: dict, workers: int) -> None:
    """Every file's sha256 against the checksums file (itself checked against the manifest)."""
    table = manifest_path.with_name(manifest["checksums"]["file"])
    if not table.is_file() or sha256_file(table) != manifest["checksums"]["sha256"]:
        raise ImageNetError(f"{table} is missing or differs from what the manifest names: rerun the index command")
    digests = json.loads(table.read_text())
    for split in manifest["splits"]:
        files = _split_files(root, manifest["layout"], split, manifest["classes"])
        missing, extra = set(digests[split]) - set(files), set(files) - set(digests[split])
        if missing or extra:
            raise ImageNetError(f"{root} {split}: {len(missing)} file(s) missing and {len(extra)} unexpected "
                                f"compared with the manifest, e.g. {sorted(missing or extra)[0]}: restore the data or "
                                "re-index it")
        keys = sorted(files)
        hashed = _map(sha256_file, [files[k] for k in keys], workers, f"hash {split}")
        for key, digest in zip(keys, hashed, strict=True):
            if digest != digests[split][key]:
                raise ImageNetError(f"{files[key]}: sha256 differs from the manifest: the file has changed")


def verify_manifest(root: str | os.PathLike, manifest_path: str | os.PathLike, *, full: bool = False,
                    workers: int = 1) -> dict:
    """Check that the dataset at `root` is the one `manifest_path` describes; return the manifest.

    Cheap (what a run does): the manifest's own checksum, the layout, the class list, and per split the
    files' count, total size and latest modification time (directory entries and stat only). `full=True`
    also re-hashes every file against the checksums file. Raises ImageNetError on any difference.
    """
    root, manifest_path = Path(root), Path(manifest_path)
    manifest = _read(manifest_path)
    layout = detect_layout(root)
    if layout != manifest["layout"]:
        raise ImageNetError(f"{root} is in the {layout} layout but the manifest was made for {manifest['layout']}")
    if layout == "jpeg" and _classes(root) != manifest["classes"]:
        raise ImageNetError(f"{root}/train class folders differ from the manifest's class list")
    for split, entry in manifest["splits"].items():
        found = files_stat(list(_split_files(root, layout, split, manifest["classes"]).values()))
        if found["files"] != entry["stat"]["files"]:
            raise ImageNetError(f"{root} {split}: {found['files']} files where the manifest counted "
                                f"{entry['stat']['files']}: restore the data or re-index it")
        if found != entry["stat"]:
            raise ImageNetError(f"{root} {split}: the files' total size or latest modification time differs from the "
                                "manifest: the data have changed (copied without keeping times? use cp -p or "
                                "rsync -a), re-index it")
    if full:
        _full_check(root, manifest_path, manifest, workers)
    return manifest
