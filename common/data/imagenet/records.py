"""TFRecord shards of tfds imagenet2012: record offsets from the framing, one record, its example."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..tfrecord import TFRecordError, decode_example, masked_crc, record_offsets
from .layout import ImageNetError


def _record_offsets(path: Path) -> list[int]:
    """Byte offset of every record in a TFRecord shard, from the framing alone (length CRCs checked)."""
    try:
        return record_offsets(path)
    except TFRecordError as e:
        raise ImageNetError(str(e)) from None


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
