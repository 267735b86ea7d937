"""The MLPerf BERT phase-1 TF checkpoint (`model.ckpt-28252`) as this model's state_dict, without TensorFlow.

    python -m mlperf_submission.closed.bert.checkpoint --tf /data/bert/phase1/model.ckpt-28252 --out phase1.pt

    python -m mlperf_submission.closed.bert.checkpoint --eval DATA CKPT      (identity.py: the masked-LM
                                                                             accuracy before training, sha256)

writes `phase1.pt` (a plain state_dict for `BertForPretraining`, loadable with `model.load_state_dict(
torch.load(path))`) atomically, and prints what it converted and what it skipped. Bad input (missing files,
corrupt blocks or tensors, unknown tensors, wrong shapes) exits with status 2 and one line `error: ...`.

A TF checkpoint is a TensorBundle: `PREFIX.index` is a LevelDB-format table (sorted string keys; the key ""
holds a BundleHeaderProto, every other key is a tensor name holding a BundleEntryProto with dtype, shape,
shard, offset, size and a masked crc32c) and `PREFIX.data-0000k-of-0000n` hold the raw little-endian
tensors. The table is: data blocks (prefix-compressed entries, restart points) each followed by a 5-byte
trailer (compression type, masked crc32c), a metaindex block, an index block mapping a separator key to
each data block's handle, and a 48-byte footer (the two handles as varints, padding, magic). TensorFlow
writes these tables uncompressed; a snappy block is reported, not decoded.

TF dense kernels are (in, out) and are transposed into nn.Linear weights; the MLM decoder is tied to the word
embeddings, so it has no tensor of its own. Optimizer slots (LAMB/Adam m and v) and bookkeeping variables
(global_step, beta powers) are skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...common.data.tfrecord import masked_crc
from .model import BertConfig, BertForPretraining, mlperf_tensor_names, tf_tensor_name

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
# Non-model variables of a TF1 pretraining checkpoint: optimizer slots and step/bias-correction counters.
_SKIPPED = re.compile(
    r"(^|/)(global_step|beta1_power|beta2_power|_CHECKPOINTABLE_OBJECT_GRAPH)$"
    r"|/(adam_m|adam_v|LAMB|LAMB_1|Momentum|ExponentialMovingAverage)$"
)


class CheckpointError(ValueError):
    """A TF checkpoint is missing, corrupt, or does not hold this model's tensors."""


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
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint longer than 10 bytes")


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
            raise CheckpointError(f"malformed protobuf message (wire type {wire} at byte {pos})")
        if pos > len(buf):
            raise CheckpointError("truncated protobuf message")
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
    shape = b"".join(
        b"\x12" + _varint(len(dim)) + dim
        for dim in (b"\x08" + _varint(size) if size else b"" for size in entry.shape)
    )
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
        raise CheckpointError(f"{path}: block at byte {offset} runs past the end of the file (truncated?)")
    contents, kind = data[offset : offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if masked_crc(contents + bytes([kind])) != stored:
        raise CheckpointError(f"{path}: block at byte {offset} fails its crc32c check (corrupt file)")
    if kind != 0:
        raise CheckpointError(
            f"{path}: block at byte {offset} is compressed (type {kind}, 1 = snappy); TensorFlow writes "
            "index files uncompressed: re-save the checkpoint with TensorFlow's default options"
        )
    return contents


def _block_entries(block: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"{path}: block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise CheckpointError(f"{path}: block with {num_restarts} restarts does not fit")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _read_varint(block, pos)
        unshared, pos = _read_varint(block, pos)
        value_size, pos = _read_varint(block, pos)
        if shared > len(key) or pos + unshared + value_size > end:
            raise CheckpointError(f"{path}: malformed block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_size]
        pos += value_size


def read_table(path: str | os.PathLike) -> Iterator[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-format table, in key order."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _FOOTER_SIZE:
        raise CheckpointError(f"{path}: too short to be a checkpoint index")
    footer = data[-_FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != _MAGIC:
        raise CheckpointError(f"{path}: bad magic number; not a TensorFlow checkpoint index")
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


def write_table(
    path: str | os.PathLike, items: list[tuple[bytes, bytes]], block_size: int = 256 << 10
) -> None:
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
        raise CheckpointError(f"{path} not found; give the checkpoint prefix, e.g. .../model.ckpt-28252")
    num_shards, endianness, entries = None, 0, {}
    for key, value in read_table(path):
        if key == b"":
            num_shards, endianness = parse_header(value)
        else:
            entries[key.decode()] = parse_entry(value)
    if num_shards is None:
        raise CheckpointError(f"{path}: no bundle header; not a TensorFlow checkpoint index")
    if endianness != 0:
        raise CheckpointError(
            f"{path}: big-endian checkpoint; convert it on a big-endian machine with TensorFlow"
        )
    return num_shards, entries


def read_tf_checkpoint(prefix: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    """Tensors of a TF checkpoint (all, or `names`), checking each against its crc32c. bfloat16 -> float32."""
    num_shards, entries = read_index(prefix)
    names = sorted(entries) if names is None else list(names)
    out = {}
    for name in names:
        if name not in entries:
            raise CheckpointError(f"{prefix}: no tensor {name!r}")
        entry = entries[name]
        if entry.sliced:
            raise CheckpointError(
                f"{prefix}: tensor {name!r} is saved in slices (partitioned); not supported"
            )
        if entry.dtype not in _TF_DTYPES:
            raise CheckpointError(f"{prefix}: tensor {name!r} has unsupported TF dtype {entry.dtype}")
        path = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
        if not path.is_file():
            raise CheckpointError(f"{path} not found (the checkpoint's data file)")
        with open(path, "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        if len(raw) != entry.size:
            raise CheckpointError(f"{path}: tensor {name!r} runs past the end of the file (truncated?)")
        if masked_crc(raw) != entry.crc32c:
            raise CheckpointError(f"{path}: tensor {name!r} fails its crc32c check (corrupt file)")
        dtype = _TF_DTYPES[entry.dtype]
        if dtype == "bfloat16":
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        if array.size != math.prod(entry.shape):
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {array.size} values for shape {entry.shape}"
            )
        out[name] = array.reshape(entry.shape)
    return out


def write_tf_checkpoint(
    prefix: str | os.PathLike, tensors: dict[str, np.ndarray], block_size: int = 256 << 10
):
    """Write `tensors` as a one-shard TensorBundle (PREFIX.index, PREFIX.data-00000-of-00001)."""
    data, entries = bytearray(), []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"))
        if array.dtype not in _NP_TO_TF:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no TF equivalent here")
        raw = array.tobytes()
        entry = BundleEntry(
            _NP_TO_TF[array.dtype], array.shape, 0, len(data), len(raw), masked_crc(raw), False
        )
        entries.append((name.encode(), encode_entry(entry)))
        data += raw
    header = b"\x08\x01" + b"\x1a\x02\x08\x01"  # num_shards 1, little-endian, version {producer 1}
    prefix = Path(prefix)
    data_path = Path(f"{prefix}.data-00000-of-00001")
    tmp = Path(f"{prefix}.data.tmp")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, data_path)
    write_table(Path(f"{prefix}.index.tmp"), [(b"", header), *entries], block_size)
    os.replace(Path(f"{prefix}.index.tmp"), Path(f"{prefix}.index"))


# --- BERT mapping -----------------------------------------------------------------------------------------


def _is_kernel(tf_name: str) -> bool:
    return tf_name.endswith("/kernel")


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> BertConfig:
    """The BertConfig whose parameters have these TF shapes (attention heads: 16 where they divide)."""
    try:
        vocab, hidden = shapes["bert/embeddings/word_embeddings"]
        positions = shapes["bert/embeddings/position_embeddings"][0]
        types = shapes["bert/embeddings/token_type_embeddings"][0]
        intermediate = shapes["bert/encoder/layer_0/intermediate/dense/kernel"][1]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not a BERT checkpoint: missing or malformed tensor {e}") from None
    layers = {int(m.group(1)) for name in shapes if (m := re.match(r"bert/encoder/layer_(\d+)/", name))}
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=math.gcd(hidden, 16),
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        type_vocab_size=types,
    )


def state_dict_from_tf(tensors: dict[str, np.ndarray], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """TF-named arrays -> float32 state_dict of BertForPretraining(cfg); every parameter must be present."""
    with torch.device("meta"):
        model = BertForPretraining(cfg)
    params = dict(model.named_parameters())
    state = {}
    for name, tf_name in mlperf_tensor_names(model).items():
        if tf_name not in tensors:
            raise CheckpointError(f"tensor {tf_name!r} (parameter {name}) is missing from the checkpoint")
        array = tensors[tf_name].T if _is_kernel(tf_name) else tensors[tf_name]
        if tuple(array.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"tensor {tf_name!r} has shape {tuple(tensors[tf_name].shape)}, the model needs "
                f"{tuple(params[name].shape)}{' transposed' if _is_kernel(tf_name) else ''}"
            )
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a writable copy
    return state


def tf_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """state_dict -> TF-named float32 arrays, kernels transposed back: the inverse of state_dict_from_tf."""
    out = {}
    for name, tensor in state_dict.items():
        tf_name = tf_tensor_name(name)
        array = tensor.detach().to(torch.float32).cpu().numpy()
        out[tf_name] = np.ascontiguousarray(array.T if _is_kernel(tf_name) else array)
    return out


def convert_checkpoint(prefix: str | os.PathLike) -> tuple[dict[str, torch.Tensor], BertConfig, list[str]]:
    """TF checkpoint -> (state_dict, inferred config, names of the skipped optimizer/bookkeeping tensors)."""
    _, entries = read_index(prefix)
    skipped = sorted(name for name in entries if _SKIPPED.search(name))
    model_names = sorted(set(entries) - set(skipped))
    cfg = config_from_shapes({name: entries[name].shape for name in model_names})
    with torch.device("meta"):
        expected = set(mlperf_tensor_names(BertForPretraining(cfg)).values())
    unknown = [name for name in model_names if name not in expected]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise CheckpointError(
            f"{prefix}: unknown tensor {unknown[0]!r}{more}: neither a BERT pretraining weight "
            "nor an optimizer slot"
        )
    return state_dict_from_tf(read_tf_checkpoint(prefix, model_names), cfg), cfg, skipped


def checkpoint_prefix(path: str | os.PathLike) -> str:
    """A TF checkpoint named by its prefix or by one of its files -> the prefix."""
    return re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", str(path))


def _expected_shapes(cfg: BertConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """TF name -> (shape as the checkpoint stores it, parameter name) for BertForPretraining(cfg)."""
    with torch.device("meta"):
        model = BertForPretraining(cfg)
    out = {}
    for name, p in model.named_parameters():
        tf_name = tf_tensor_name(name)
        out[tf_name] = (tuple(p.shape[::-1]) if _is_kernel(tf_name) else tuple(p.shape), name)
    return out


def check_init_checkpoint(path: str | os.PathLike, cfg: BertConfig) -> None:
    """Cheap, before a run writes anything: `path` (a TF prefix, or a `.pt` state_dict written by this
    module's CLI) holds every tensor of BertForPretraining(cfg) with its shape, and nothing unknown.
    Reads the TF index or the .pt's metadata only (memory-mapped); raises CheckpointError."""
    expected = _expected_shapes(cfg)
    if str(path).endswith(".pt"):
        if not Path(path).is_file():
            raise CheckpointError(f"{path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a torch state_dict ({e})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state_dict")
        to_tf = {param: tf for tf, (_, param) in expected.items()}
        found = {}
        for name, tensor in state.items():
            tf = to_tf.get(name, name)
            found[tf] = tuple(tensor.shape)[::-1] if name in to_tf and _is_kernel(tf) else tuple(tensor.shape)
    else:
        _, entries = read_index(checkpoint_prefix(path))
        found = {name: entry.shape for name, entry in entries.items() if not _SKIPPED.search(name)}
    missing = sorted(set(expected) - set(found))
    unknown = sorted(set(found) - set(expected))
    wrong = sorted(name for name in set(expected) & set(found) if tuple(found[name]) != expected[name][0])
    for problem, names in (("is missing", missing), ("is not a weight of this model", unknown)):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise CheckpointError(f"{path}: tensor {names[0]!r}{more} {problem}")
    if wrong:
        raise CheckpointError(f"{path}: tensor {wrong[0]!r} has shape {tuple(found[wrong[0]])}, this model's is "
                              f"{expected[wrong[0]][0]} (a checkpoint of another model size?)")


def load_init_checkpoint(path: str | os.PathLike, cfg: BertConfig) -> dict[str, torch.Tensor]:
    """The state_dict of BertForPretraining(cfg) from a TF checkpoint (converted here, every tensor checked
    against its crc32c) or from a converted `.pt`; raises CheckpointError."""
    check_init_checkpoint(path, cfg)
    if str(path).endswith(".pt"):
        return torch.load(path, map_location="cpu", weights_only=True)
    state, _, _ = convert_checkpoint(checkpoint_prefix(path))
    return state


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--eval"]:  # the starting accuracy and sha256 of a checkpoint: identity.py
        from mlperf_submission.closed.bert import identity

        return identity.main(argv[1:], load=load_init_checkpoint)
    parser = argparse.ArgumentParser(
        prog="python -m mlperf_submission.closed.bert.checkpoint",
        description="Convert the MLPerf BERT TF checkpoint to a torch state_dict (no TensorFlow needed).",
    )
    parser.add_argument(
        "--tf", required=True, help="checkpoint prefix, e.g. /data/bert/phase1/model.ckpt-28252"
    )
    parser.add_argument("--out", required=True, type=Path, help="output .pt file")
    args = parser.parse_args(argv)
    prefix = checkpoint_prefix(args.tf)
    try:
        state, cfg, skipped = convert_checkpoint(prefix)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, args.out)
        finally:
            tmp.unlink(missing_ok=True)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    count = sum(t.numel() for t in state.values())
    print(
        f"{args.out}: {len(state)} tensors, {count:,} parameters ({cfg.num_hidden_layers} layers, hidden "
        f"{cfg.hidden_size}, vocab {cfg.vocab_size}); skipped {len(skipped)} optimizer/bookkeeping tensors"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
