"""TFRecord files without TensorFlow: record framing with CRC checks, and tf.train.Example coding.

A TFRecord file is a sequence of records, each framed as
    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
(little-endian). The `tfrecord` package reads the framing but does not verify the CRCs, so we frame
records ourselves and only borrow its compiled `Example` protobuf.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import crc32c
import numpy as np
from tfrecord import example_pb2

from ..cli import atomic_path

_MASK_DELTA = 0xA282EAD8


class TFRecordError(ValueError):
    """A TFRecord file is truncated or corrupt."""


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(path: str | os.PathLike) -> Iterator[bytes]:
    """Yield each record's payload, verifying both CRCs; raise TFRecordError naming the offset."""
    path = Path(path)
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(f"{path}: truncated record header at byte {offset}")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                raise TFRecordError(f"{path}: corrupt record length (CRC mismatch) at byte {offset}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{path}: truncated record at byte {offset}")
            if masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{path}: corrupt record data (CRC mismatch) at byte {offset}")
            yield data


def record_offsets(path: str | os.PathLike) -> list[int]:
    """Byte offset of every record in a TFRecord file, from the framing alone (12-byte headers read, length
    CRCs checked; payload CRCs are left to whoever reads the records). Raises TFRecordError."""
    offsets, offset, size = [], 0, os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        while offset < size:
            header = os.pread(fd, 12, offset)
            if len(header) < 12:
                raise TFRecordError(f"{path}: truncated record header at byte {offset}")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                raise TFRecordError(f"{path}: corrupt record length (CRC mismatch) at byte {offset}")
            if offset + 16 + length > size:
                raise TFRecordError(f"{path}: truncated record at byte {offset}")
            offsets.append(offset)
            offset += 16 + length
    finally:
        os.close(fd)
    return offsets


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Write records to `path` atomically (temporary file, then rename); return the count."""
    count = 0
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc(length)))
            f.write(data + struct.pack("<I", masked_crc(data)))
            count += 1
    return count


Feature = np.ndarray | list[bytes]


def encode_example(features: dict[str, Feature | bytes | int | float]) -> bytes:
    """Serialise a tf.train.Example: ints to int64_list, floats to float_list, bytes to bytes_list."""
    example = example_pb2.Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        if isinstance(value, bytes):
            feature.bytes_list.value.append(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            feature.bytes_list.value.extend(value)
        else:
            array = np.atleast_1d(np.asarray(value))
            if np.issubdtype(array.dtype, np.integer):
                feature.int64_list.value.extend(array.astype(np.int64).tolist())
            elif np.issubdtype(array.dtype, np.floating):
                feature.float_list.value.extend(array.astype(np.float32).tolist())
            else:
                raise TypeError(f"feature {name!r}: cannot encode dtype {array.dtype}")
    return example.SerializeToString()


def decode_example(data: bytes) -> dict[str, Feature]:
    """Parse a tf.train.Example into int64 / float32 arrays, or lists of bytes."""
    example = example_pb2.Example()
    try:
        example.ParseFromString(data)
    except Exception as e:  # protobuf raises its own DecodeError type
        raise TFRecordError(f"record is not a tf.train.Example: {e}") from None
    out: dict[str, Feature] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "int64_list":
            out[name] = np.asarray(feature.int64_list.value, dtype=np.int64)
        elif kind == "float_list":
            out[name] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "bytes_list":
            out[name] = list(feature.bytes_list.value)
        else:
            out[name] = np.zeros(0, dtype=np.int64)
    return out
