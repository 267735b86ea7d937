"""Full-format data for a rehearsal, made once and cached: what users bring, in the formats they bring it.

    imagenet.py   the ILSVRC2012 JPEG folder layout (train/<wnid>/, val/<wnid>/), camera-sized JPEGs
    bert.py       MLPerf BERT TFRecords (part files and an eval file) and a TF1 phase-1 checkpoint

Each generator writes a folder under out/cache/<name>-<key>/, where the key hashes the generator's parameters
and its source code (a changed generator makes a new folder); `generated.json`, written last, lists every
file with its sha256, checked each time the folder is reused. Free disk space is checked before anything is
written ("needs N GB").
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from ...cli import UserError, atomic_dir, atomic_write_text, sha256_file

DEFAULT_CACHE = Path("out/cache")
RECORD = "generated.json"
GB = 10**9


def cache_key(params: dict, source: Path) -> str:
    """12 hex digits of sha256 over the parameters and the generator's own source."""
    text = json.dumps(params, sort_keys=True) + hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_disk(folder: Path, needed: int, what: str) -> None:
    """UserError before writing when the file system under `folder` has less than `needed` bytes free."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise UserError(f"{what} needs {needed / GB:.1f} GB on {probe}, which has {free / GB:.1f} GB free: "
                        "free space, or give DATA= (and CKPT=) to use data you have")


def verified(folder: Path) -> dict | None:
    """The record of a complete cached folder whose files all match their sha256, or None."""
    record = Path(folder) / RECORD
    if not record.is_file():
        return None
    meta = json.loads(record.read_text())
    for name, digest in meta["files"].items():
        path = Path(folder) / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return meta


def cached(name: str, params: dict, source: Path, needed: int, make: Callable[[Path], None],
           cache: Path = DEFAULT_CACHE) -> tuple[Path, bool]:
    """(the cached folder for these parameters, whether it was reused); `make(tmp)` fills a new one."""
    folder = Path(cache) / f"{name}-{cache_key(params, source)}"
    if verified(folder) is not None:
        return folder, True
    check_disk(Path(cache), needed, f"the generated {name} data")
    with atomic_dir(folder) as tmp:
        make(tmp)
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_text(tmp / RECORD, json.dumps({"name": name, "params": params, "files": files}, indent=1) + "\n")
    return folder, False
