"""The ImageNet dataset that training reads: items (transform(image), label) from either layout."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .layout import (
    _TFDS_SPLIT,
    SPLITS,
    ImageNetError,
    _classes,
    _jpeg_split,
    _shards,
    detect_layout,
)
from .records import _parse_example, _read_record, _record_offsets

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


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

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable, *, exclude: Iterable[str] = (),
                 manifest: dict | None = None):
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
