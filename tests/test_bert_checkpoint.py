"""TF checkpoints (TensorBundle) read and written without TensorFlow, and converted to the BERT state_dict."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from mlperf_submission.closed.bert.checkpoint import (
    CheckpointError,
    convert_checkpoint,
    main,
    tf_from_state_dict,
)
from mlperf_submission.closed.bert.model import BertConfig, BertForPretraining
from mlperf_submission.common.data import tensorbundle as ckpt
from mlperf_submission.common.data.tensorbundle import (
    BundleEntry,
    encode_entry,
    parse_entry,
    read_index,
    read_table,
    read_tf_checkpoint,
    write_table,
    write_tf_checkpoint,
)
from mlperf_submission.common.data.tfrecord import masked_crc

CFG = BertConfig(
    vocab_size=60, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
    max_position_embeddings=16,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def official_messages():
    """BundleEntryProto / TensorShapeProto built from TF's field numbers with the protobuf library itself."""
    f = descriptor_pb2.FileDescriptorProto(name="tensor_bundle_test.proto", package="tbt", syntax="proto3")
    shape = f.message_type.add(name="TensorShapeProto")
    dim = shape.nested_type.add(name="Dim")
    fd = descriptor_pb2.FieldDescriptorProto
    dim.field.add(name="size", number=1, type=fd.TYPE_INT64, label=fd.LABEL_OPTIONAL)
    dim.field.add(name="name", number=2, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    shape.field.add(name="dim", number=2, type=fd.TYPE_MESSAGE, label=fd.LABEL_REPEATED,
                    type_name=".tbt.TensorShapeProto.Dim")  # fmt: skip
    shape.field.add(name="unknown_rank", number=3, type=fd.TYPE_BOOL, label=fd.LABEL_OPTIONAL)
    entry = f.message_type.add(name="BundleEntryProto")
    entry.field.add(name="dtype", number=1, type=fd.TYPE_INT32, label=fd.LABEL_OPTIONAL)
    entry.field.add(name="shape", number=2, type=fd.TYPE_MESSAGE, label=fd.LABEL_OPTIONAL,
                    type_name=".tbt.TensorShapeProto")  # fmt: skip
    entry.field.add(name="shard_id", number=3, type=fd.TYPE_INT32, label=fd.LABEL_OPTIONAL)
    entry.field.add(name="offset", number=4, type=fd.TYPE_INT64, label=fd.LABEL_OPTIONAL)
    entry.field.add(name="size", number=5, type=fd.TYPE_INT64, label=fd.LABEL_OPTIONAL)
    entry.field.add(name="crc32c", number=6, type=fd.TYPE_FIXED32, label=fd.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbt.BundleEntryProto"))


def test_bundle_entry_coding_agrees_with_protobuf():
    Entry = official_messages()
    official = Entry(dtype=1, shard_id=2, offset=123456789012, size=4096, crc32c=0xDEADBEEF)
    for size in (1024, 0, 30522):
        official.shape.dim.add(size=size)
    parsed = parse_entry(official.SerializeToString())
    assert parsed == BundleEntry(1, (1024, 0, 30522), 2, 123456789012, 4096, 0xDEADBEEF, False)
    ours = Entry()
    ours.ParseFromString(encode_entry(parsed))
    assert ours == official
    scalar = Entry(dtype=9, crc32c=7)
    scalar.shape.SetInParent()
    assert parse_entry(scalar.SerializeToString()).shape == ()


def tf_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return tf_from_state_dict(BertForPretraining(CFG).state_dict())


def test_state_dict_round_trips_through_a_tf_checkpoint(tmp_path):
    state = BertForPretraining(CFG).state_dict()
    tensors = tf_from_state_dict(state)
    assert tensors["bert/encoder/layer_1/intermediate/dense/kernel"].shape == (
        8,
        12,
    )  # TF kernels are (in, out)
    assert tensors["cls/seq_relationship/output_weights"].shape == (2, 8)
    extras = {
        "global_step": np.array(28252, dtype=np.int64),
        "bert/embeddings/word_embeddings/LAMB": np.ones((60, 8), np.float32),
        "bert/embeddings/word_embeddings/LAMB_1": np.ones((60, 8), np.float32),
        "bert/pooler/dense/kernel/adam_m": np.ones((8, 8), np.float32),
    }
    write_tf_checkpoint(tmp_path / "model.ckpt-28252", tensors | extras, block_size=512)
    converted, cfg, skipped = convert_checkpoint(tmp_path / "model.ckpt-28252")
    assert cfg.num_hidden_layers == 2 and cfg.intermediate_size == 12 and cfg.vocab_size == 60
    assert sorted(skipped) == sorted(extras)
    assert converted.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(converted[name], value), name
    model = BertForPretraining(CFG)
    model.load_state_dict(converted)
    assert read_tf_checkpoint(tmp_path / "model.ckpt-28252", ["global_step"])["global_step"] == 28252


def test_table_with_many_blocks_and_shared_prefixes(tmp_path):
    items = sorted(
        (f"bert/encoder/layer_{i}/attention/self/query/kernel".encode(), bytes([i]) * i) for i in range(60)
    )
    write_table(tmp_path / "t.index", items, block_size=200)
    data = (tmp_path / "t.index").read_bytes()
    index_handle = data[-48:]
    assert struct.unpack("<Q", index_handle[-8:])[0] == 0xDB4775248B80FB57
    assert list(read_table(tmp_path / "t.index")) == items


def test_corrupt_tensor_is_caught(tmp_path):
    write_tf_checkpoint(tmp_path / "m", tf_tensors())
    data = tmp_path / "m.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[10] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="crc32c"):
        convert_checkpoint(tmp_path / "m")


def test_corrupt_or_compressed_index_block_is_caught(tmp_path):
    write_tf_checkpoint(tmp_path / "m", tf_tensors())
    index = tmp_path / "m.index"
    original = index.read_bytes()
    raw = bytearray(original)
    raw[5] ^= 1
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="crc32c"):
        read_index(tmp_path / "m")
    # Mark the first data block as snappy-compressed, with a valid trailer crc.
    _, pos = ckpt._read_varint(original[-48:], 0)
    _, pos = ckpt._read_varint(original[-48:], pos)
    first_handle = next(
        iter(ckpt._block_entries(ckpt._read_block(original, original[-48:][pos:], index), index))
    )[1]
    offset, p = ckpt._read_varint(first_handle, 0)
    size, _ = ckpt._read_varint(first_handle, p)
    raw = bytearray(original)
    raw[offset + size] = 1
    raw[offset + size + 1 : offset + size + 5] = struct.pack(
        "<I", masked_crc(bytes(raw[offset : offset + size + 1]))
    )
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="compressed .*snappy"):
        read_index(tmp_path / "m")


def test_cli_converts_atomically(tmp_path, capsys):
    tensors = tf_tensors(1)
    write_tf_checkpoint(tmp_path / "model.ckpt-28252", tensors)
    out = tmp_path / "out" / "phase1.pt"
    assert main(["--tf", str(tmp_path / "model.ckpt-28252.index"), "--out", str(out)]) == 0
    assert "46 tensors" in capsys.readouterr().out  # 5 + 16 per layer + 2 + 7
    model = BertForPretraining(CFG)
    model.load_state_dict(torch.load(out))
    assert np.array_equal(model.embeddings.word_embeddings.weight.detach().numpy(),
                          tensors["bert/embeddings/word_embeddings"])  # fmt: skip
    assert sorted(p.name for p in out.parent.iterdir()) == ["phase1.pt"]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda t: t | {"cls/predictions/decoder/kernel": np.zeros((8, 60), np.float32)}, "unknown tensor"),
        (
            lambda t: {k: v for k, v in t.items() if k != "bert/pooler/dense/bias"},
            "missing from the checkpoint",
        ),
        (lambda t: t | {"bert/pooler/dense/bias": np.zeros(9, np.float32)}, "has shape"),
    ],
    ids=["unknown", "missing", "shape"],
)
def test_cli_rejects_checkpoints_that_do_not_fit(tmp_path, capsys, change, message):
    write_tf_checkpoint(tmp_path / "m", change(tf_tensors()))
    assert main(["--tf", str(tmp_path / "m"), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "m.pt").exists()


def test_cli_reports_missing_files(tmp_path, capsys):
    assert main(["--tf", str(tmp_path / "absent"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "absent.index not found" in capsys.readouterr().err
    write_tf_checkpoint(tmp_path / "m", tf_tensors())
    (tmp_path / "m.data-00000-of-00001").unlink()
    assert main(["--tf", str(tmp_path / "m"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "m.data-00000-of-00001 not found" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
