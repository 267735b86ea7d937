"""The rehearsal's generated data, read by the real preparation and training code (tiny shapes)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import pytest
from fakes import REPO
from PIL import Image

from mlperf_submission.closed.bert import presets as bert_presets
from mlperf_submission.closed.bert import rehearsal_data
from mlperf_submission.closed.bert.checkpoint import load_init_checkpoint
from mlperf_submission.closed.bert.model import BertConfig
from mlperf_submission.closed.bert.train import train as bert_train
from mlperf_submission.common import rehearsal
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data import bert_wiki, imagenet
from mlperf_submission.common.data import generate as cache
from mlperf_submission.common.data.generate import imagenet as imagenet_generator
from mlperf_submission.common.data.imagenet.__main__ import main as imagenet_main
from mlperf_submission.common.data.tensorbundle import read_index
from mlperf_submission.common.data.tfrecord import decode_example, iter_records
from mlperf_submission.compliance.tools import check_log

REFERENCE_CKPT = REPO / "tests" / "reference" / "tf1-bert-checkpoint" / "model.ckpt-28252"
TINY = {"vocab_size": 128, "hidden_size": 8, "num_hidden_layers": 24, "num_attention_heads": 1,
        "intermediate_size": 16, "max_position_embeddings": 64}


def test_the_checkpoints_variables_are_the_mlperf_phase1_checkpoints():
    """Names, shapes and dtypes of the TF1-written reference checkpoint at its test width (1,195 variables);
    at full size the same names, 398 of them model tensors, 4.0 GB."""
    _, reference = read_index(REFERENCE_CKPT)
    cfg = BertConfig(vocab_size=64, hidden_size=8, num_attention_heads=1, intermediate_size=16,
                     max_position_embeddings=64)
    assert rehearsal_data.checkpoint_shapes(cfg) == {k: tuple(v.shape) for k, v in reference.items()}
    full = rehearsal_data.checkpoint_shapes(BertConfig())
    assert set(full) == set(reference) and len(full) == 1195
    assert len([n for n in full if not n.endswith(("adam_m", "adam_v")) and n != "global_step"]) == 398
    assert full["bert/embeddings/word_embeddings"] == (30522, 1024)
    assert rehearsal_data.checkpoint_bytes(BertConfig()) == pytest.approx(4.0e9, rel=0.02)


def test_generated_bert_data_goes_through_make_data_the_converter_and_a_rehearsal(tmp_path, one_thread):
    folder, hit = rehearsal_data.generate(train_samples=12, parts=2, eval_samples=6, seq_len=64, max_pred=10,
                                          model=TINY, cache=tmp_path / "cache")
    assert not hit and rehearsal_data.generate(train_samples=12, parts=2, eval_samples=6, seq_len=64, max_pred=10,
                                               model=TINY, cache=tmp_path / "cache") == (folder, True)
    files = rehearsal_data.paths(folder)
    _, entries = read_index(files["ckpt"])
    assert entries["global_step"].shape == () and len(entries) == 1195
    data = tmp_path / "converted"
    manifest = bert_wiki.convert(sorted((folder / "train").glob("part-*")), data,
                                 eval_files=[files["eval"]], seq_len=64, max_pred=10)
    assert (manifest["splits"]["train"]["count"], manifest["splits"]["eval"]["count"]) == (12, 6)
    cfg = dataclasses.replace(bert_presets.h200(), vocab_size=128, hidden_size=8, num_attention_heads=1,
                              intermediate_size=16, max_seq_length=64, max_predictions_per_seq=10,
                              global_batch_size=4, gradient_accumulation_steps=2, data_workers=0,
                              precision="fp32", device="cpu", init_checkpoint=files["ckpt"])
    assert len(load_init_checkpoint(files["ckpt"], cfg.model_config())) == 398
    log = tmp_path / "result_0.txt"
    args = argparse.Namespace(preset="1xH200", seed=5, system="1xH200", result_log=log, data=data, overrides=[],
                              rehearse="")
    with pytest.raises(UserError, match="10,000"):  # a real run refuses a small eval set ...
        bert_train(cfg, args, division="closed")
    assert not log.exists()
    args.rehearse = "2,600,4"  # ... a rehearsal warns and goes on
    assert bert_train(cfg, args, division="closed") == 0
    figures = json.loads(rehearsal.figures_path(log).read_text())
    assert (figures["steps_done"], figures["micro_steps"], figures["eval_samples"]) == (2, 4, 4)
    assert len(figures["compute_s"]) == 4 and "relaxed" in figures["warnings"][0]
    events = [json.loads(ln.split(":::MLLOG ", 1)[1]) for ln in log.read_text().splitlines()]
    assert [e["metadata"]["status"] for e in events if e["key"] == "run_stop"] == ["aborted"]
    assert [e for e in check_log(log).summary_lines() if "eval_accuracy" not in e] == []


def test_generated_imagenet_has_the_ilsvrc_layout_and_oddities_and_make_data_reads_it(tmp_path):
    folder, hit = imagenet_generator.generate(classes=4, train_per_class=2, val_per_class=1, cache=tmp_path)
    assert not hit and sorted(p.name for p in (folder / "train").iterdir()) == imagenet_generator.wnids(4)
    first = [sorted((folder / "train" / w).iterdir())[0] for w in imagenet_generator.wnids(3)]
    assert [Image.open(p).mode for p in first[:2]] == ["CMYK", "L"]
    assert first[2].suffix == ".JPEG" and first[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(imagenet_generator.wnids(1000)) == 1000 and all(len(w) == 9 for w in imagenet_generator.wnids(1000))
    assert imagenet_main([str(folder), "--out", str(folder), "--workers", "1"]) == 0
    manifest = json.loads((folder / imagenet.MANIFEST_NAME).read_text())
    assert (manifest["splits"]["train"]["images"], manifest["splits"]["val"]["images"]) == (8, 4)
    assert imagenet_generator.generate(classes=4, train_per_class=2, val_per_class=1, cache=tmp_path) == (folder, True)
    victim = next((folder / "val").rglob("*.JPEG"))
    victim.write_bytes(b"changed")  # a checksum that no longer matches: made again
    assert imagenet_generator.generate(classes=4, train_per_class=2, val_per_class=1, cache=tmp_path)[1] is False
    other, _ = imagenet_generator.generate(classes=4, train_per_class=1, val_per_class=1, cache=tmp_path)
    assert other != folder  # other parameters, another cache entry


def test_generated_imagenet_in_the_tfds_layout_holds_the_same_images_and_make_data_reads_it(tmp_path):
    jpeg, _ = imagenet_generator.generate(classes=4, train_per_class=2, val_per_class=1, cache=tmp_path)
    tfds, _ = imagenet_generator.generate(classes=4, train_per_class=2, val_per_class=1, layout="tfds",
                                          cache=tmp_path)
    shards = sorted(p.name for p in tfds.glob("imagenet2012-*"))
    assert shards == [f"imagenet2012-train.tfrecord-{i:05d}-of-00008" for i in range(8)] + [
        f"imagenet2012-validation.tfrecord-{i:05d}-of-00002" for i in range(2)]
    examples = [decode_example(r) for p in sorted(tfds.glob("imagenet2012-train*")) for r in iter_records(p)]
    wnids = imagenet_generator.wnids(4)
    assert [(int(e["label"][0]), e["image"][0]) for e in examples] == [
        (wnids.index(p.parent.name), p.read_bytes()) for p in sorted((jpeg / "train").rglob("*.JPEG"))]
    assert imagenet_main([str(tfds), "--out", str(tmp_path / "index"), "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "index" / imagenet.MANIFEST_NAME).read_text())
    assert (manifest["splits"]["train"]["images"], manifest["splits"]["val"]["images"]) == (8, 4)


def test_too_little_disk_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**8, 10**8))
    with pytest.raises(UserError, match=r"needs 1\.6 GB .* 0\.1 GB free"):
        imagenet_generator.generate(classes=1000, train_per_class=3, val_per_class=1, cache=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    assert cache.cache_key({"a": 1}, imagenet_generator.__file__) != cache.cache_key({"a": 2},
                                                                                    imagenet_generator.__file__)
