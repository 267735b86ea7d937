"""TensorFlow checkpoints (TensorBundles) read and written without TensorFlow: the generic codec.

A TF checkpoint is a TensorBundle: `PREFIX.index` is a LevelDB-format table (sorted string keys; the key ""
holds a BundleHeaderProto, every other key is a tensor name holding a BundleEntryProto with dtype, shape,
shard, offset, size and a masked crc32c) and `PREFIX.data-0000k-of-0000n` hold the raw little-endian
tensors. The table is: data blocks (prefix-compressed entries, restart points) each followed by a 5-byte
trailer (compression type, masked crc32c), a metaindex block, an index block mapping a separator key to
each data block's handle, and a 48-byte footer (the two handles as varints, padding, magic). TensorFlow
writes these tables uncompressed; a snappy block is reported, not decoded. What a bundle's tensors mean is
the caller's (closed/bert/checkpoint.py maps BERT's).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cli import atomic_path
from .tfrecord import masked_crc

_MAGIC = 0xDB4775248B80FB57  # LevelDB's kTableMagicNumber, which TF's table format keeps
_FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
_RESTART_INTERVAL = 16
_TF_DTYPES = {  # tensorflow/core/framework/types.proto -> numpy (bfloat16 read as its uint16 bits)
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    14: "bfloat16",
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}
_NP_TO_TF = {np.dtype(v): k for k, v in _TF_DTYPES.items() if v != "bfloat16"}


class TensorBundleError(ValueError):
    """A TF checkpoint is missing, corrupt, or does not hold the tensors asked for."""


@dataclass(frozen=True)
class BundleEntry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked
    sliced: bool


# --- protobuf wire format (the few messages we need) -----------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TensorBundleError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TensorBundleError("varint longer than 10 bytes")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """One protobuf message -> (field number, value): ints for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1 and pos + 8 <= len(buf):
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5 and pos + 4 <= len(buf):
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise TensorBundleError(f"malformed protobuf message (wire type {wire} at byte {pos})")
        if pos > len(buf):
            raise TensorBundleError("truncated protobuf message")
        yield field, value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_entry(buf: bytes) -> BundleEntry:
    """BundleEntryProto: dtype=1, shape=2 (TensorShapeProto: dim=2 {size=1}), shard_id=3, offset=4, size=5,
    crc32c=6 (fixed32), slices=7."""
    values = {"dtype": 0, "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0}
    shape: list[int] = []
    sliced = False
    names = {1: "dtype", 3: "shard_id", 4: "offset", 5: "size", 6: "crc32c"}
    for field, value in _fields(buf):
        if field == 2:
            for shape_field, dim in _fields(value):
                if shape_field == 2:
                    size = [_int64(v) for f, v in _fields(dim) if f == 1]
                    shape.append(size[-1] if size else 0)
        elif field == 7:
            sliced = True
        elif field in names:
            values[names[field]] = _int64(value)
    return BundleEntry(shape=tuple(shape), sliced=sliced, **values)


def encode_entry(entry: BundleEntry) -> bytes:
    shape = b"".join(b"\x12" + _varint(len(dim)) + dim
                     for dim in (b"\x08" + _varint(size) if size else b"" for size in entry.shape))
    out = b"\x08" + _varint(entry.dtype) + b"\x12" + _varint(len(shape)) + shape
    for field, value in ((3, entry.shard_id), (4, entry.offset), (5, entry.size)):
        if value:
            out += _varint(field << 3) + _varint(value)
    return out + b"\x35" + struct.pack("<I", entry.crc32c)  # field 6, fixed32


def parse_header(buf: bytes) -> tuple[int, int]:
    """BundleHeaderProto: num_shards=1, endianness=2 (0 little, 1 big), version=3 -> (shards, endianness)."""
    values = dict(_fields(buf))
    return int(values.get(1, 0)), int(values.get(2, 0))


# --- LevelDB-format table ---------------------------------------------------------------------------------


def _read_block(data: bytes, handle: bytes, path: Path) -> bytes:
    offset, pos = _read_varint(handle, 0)
    size, _ = _read_varint(handle, pos)
    if offset + size + 5 > len(data):
        raise TensorBundleError(f"{path}: block at byte {offset} runs past the end of the file (truncated?)")
    contents, kind = data[offset : offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if masked_crc(contents + bytes([kind])) != stored:
        raise TensorBundleError(f"{path}: block at byte {offset} fails its crc32c check (corrupt file)")
    if kind != 0:
        raise TensorBundleError(
            f"{path}: block at byte {offset} is compressed (type {kind}, 1 = snappy); TensorFlow writes "
            "index files uncompressed: re-save the checkpoint with TensorFlow's default options"
        )
    return contents


def _block_entries(block: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise TensorBundleError(f"{path}: block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise TensorBundleError(f"{path}: block with {num_restarts} restarts does not fit")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _read_varint(block, pos)
        unshared, pos = _read_varint(block, pos)
        value_size, pos = _read_varint(block, pos)
        if shared > len(key) or pos + unshared + value_size > end:
            raise TensorBundleError(f"{path}: malformed block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_size]
        pos += value_size


def read_table(path: str | os.PathLike) -> Iterator[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-format table, in key order."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _FOOTER_SIZE:
        raise TensorBundleError(f"{path}: too short to be a checkpoint index")
    footer = data[-_FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != _MAGIC:
        raise TensorBundleError(f"{path}: bad magic number; not a TensorFlow checkpoint index")
    _, pos = _read_varint(footer, 0)  # metaindex handle: offset, size (no meta blocks in a TensorBundle)
    _, pos = _read_varint(footer, pos)
    for _, handle in _block_entries(_read_block(data, footer[pos:], path), path):
        yield from _block_entries(_read_block(data, handle, path), path)


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % _RESTART_INTERVAL:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def write_table(path: str | os.PathLike, items: list[tuple[bytes, bytes]], block_size: int = 256 << 10) -> None:
    """Write sorted (key, value) pairs as an uncompressed LevelDB-format table (block_size in bytes)."""
    keys = [k for k, _ in items]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise ValueError("table keys must be unique and sorted")
    out = bytearray()

    def emit(contents: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(contents))
        out.extend(contents + b"\x00" + struct.pack("<I", masked_crc(contents + b"\x00")))
        return handle

    index, pending, size = [], [], 0
    for key, value in items:
        pending.append((key, value))
        size += len(key) + len(value) + 3
        if size >= block_size:
            index.append((key, emit(_block(pending))))
            pending, size = [], 0
    if pending:
        index.append((pending[-1][0], emit(_block(pending))))
    metaindex = emit(_block([]))
    handles = emit(_block(index))
    footer = (metaindex + handles).ljust(_FOOTER_SIZE - 8, b"\x00") + struct.pack("<Q", _MAGIC)
    Path(path).write_bytes(bytes(out) + footer)


# --- TensorBundle -----------------------------------------------------------------------------------------


def read_index(prefix: str | os.PathLike) -> tuple[int, dict[str, BundleEntry]]:
    """-> (num_shards, tensor name -> BundleEntry) from PREFIX.index."""
    path = Path(f"{prefix}.index")
    if not path.is_file():
        raise TensorBundleError(f"{path} not found; give the checkpoint prefix, e.g. .../model.ckpt-28252")
    num_shards, endianness, entries = None, 0, {}
    for key, value in read_table(path):
        if key == b"":
            num_shards, endianness = parse_header(value)
        else:
            entries[key.decode()] = parse_entry(value)
    if num_shards is None:
        raise TensorBundleError(f"{path}: no bundle header; not a TensorFlow checkpoint index")
    if endianness != 0:
        raise TensorBundleError(f"{path}: big-endian checkpoint; convert it on a big-endian machine with TensorFlow")
    return num_shards, entries


def read_tf_checkpoint(prefix: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    """Tensors of a TF checkpoint (all, or `names`), checking each against its crc32c. bfloat16 -> float32."""
    num_shards, entries = read_index(prefix)
    names = sorted(entries) if names is None else list(names)
    out = {}
    for name in names:
        if name not in entries:
            raise TensorBundleError(f"{prefix}: no tensor {name!r}")
        entry = entries[name]
        if entry.sliced:
            raise TensorBundleError(f"{prefix}: tensor {name!r} is saved in slices (partitioned); not supported")
        if entry.dtype not in _TF_DTYPES:
            raise TensorBundleError(f"{prefix}: tensor {name!r} has unsupported TF dtype {entry.dtype}")
        path = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
        if not path.is_file():
            raise TensorBundleError(f"{path} not found (the checkpoint's data file)")
        with open(path, "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        if len(raw) != entry.size:
            raise TensorBundleError(f"{path}: tensor {name!r} runs past the end of the file (truncated?)")
        if masked_crc(raw) != entry.crc32c:
            raise TensorBundleError(f"{path}: tensor {name!r} fails its crc32c check (corrupt file)")
        dtype = _TF_DTYPES[entry.dtype]
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        if array.size != math.prod(entry.shape):
            raise TensorBundleError(f"{path}: tensor {name!r} holds {array.size} values for shape {entry.shape}")
        out[name] = array.reshape(entry.shape)
    return out


def write_tf_checkpoint(prefix: str | os.PathLike, tensors: Mapping[str, np.ndarray], block_size: int = 256 << 10):
    """Write `tensors` (any mapping: each array read once, in name order, and streamed to the data file, so a
    4 GB checkpoint is never in memory at once) as a one-shard TensorBundle (PREFIX.index, PREFIX.data-*)."""
    entries, offset = [], 0
    with atomic_path(Path(f"{prefix}.data-00000-of-00001")) as tmp, open(tmp, "wb") as f:
        for name in sorted(tensors):
            array = np.asarray(tensors[name], order="C")  # keeps a scalar's shape () (global_step), as TF's
            array = array.astype(array.dtype.newbyteorder("<"))
            if array.dtype not in _NP_TO_TF:
                raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no TF equivalent here")
            raw = array.tobytes()
            entry = BundleEntry(_NP_TO_TF[array.dtype], array.shape, 0, offset, len(raw), masked_crc(raw), False)
            entries.append((name.encode(), encode_entry(entry)))
            f.write(raw)
            offset += len(raw)
    header = b"\x08\x01" + b"\x1a\x02\x08\x01"  # num_shards 1, little-endian, version {producer 1}
    with atomic_path(Path(f"{prefix}.index")) as tmp:  # last: an index names data that is complete
        write_table(tmp, [(b"", header), *entries], block_size)
