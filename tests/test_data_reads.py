"""Issue 24 N3: between cache_clear and run_start a run reads no data beyond its manifest. The data checks a run
makes (the manifest checks and the dataset constructors the trainers call) read a small number of bytes from the
data folder, the same for a dataset four times larger."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlperf_submission.common.data import bert_wiki, imagenet
from mlperf_submission.common.data.imagenet.__main__ import main as index_main

CLASSES = ("n01440764", "n01443537")


class _Counted:
    """A file object whose reads add their bytes to `counter[0]`; everything else is the real file's."""

    def __init__(self, f, counter: list[int]):
        self._f, self._counter = f, counter

    def read(self, *args):
        data = self._f.read(*args)
        self._counter[0] += len(data)
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._counter[0] += n or 0
        return n

    def __iter__(self):
        for line in self._f:
            self._counter[0] += len(line)
            yield line

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def bytes_read_under(folder: Path, monkeypatch, fn) -> int:
    """Bytes `fn()` reads through open() from files under `folder`."""
    real, counter = builtins.open, [0]

    def counting_open(file, *args, **kwargs):
        f = real(file, *args, **kwargs)
        inside = isinstance(file, (str, Path)) and Path(file).resolve().is_relative_to(folder.resolve())
        return _Counted(f, counter) if inside else f

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", counting_open)
        m.setattr(io, "open", counting_open)
        fn()
    return counter[0]


def jpeg_tree(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(per_class)
    for split, n in (("train", per_class), ("val", max(1, per_class // 4))):
        for wnid in CLASSES:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    assert index_main([str(root), "--out", str(root), "--workers", "1"]) == 0
    return root


def test_imagenet_run_checks_read_only_the_manifest(tmp_path, monkeypatch):
    def run_checks(root: Path):  # closed/resnet's checked_manifest and datasets, as they call the data layer
        manifest = imagenet.verify_manifest(root, root / imagenet.MANIFEST_NAME)
        imagenet.ImageNet(root, "train", imagenet.train_transform(16, uint8=True), manifest=manifest)
        imagenet.ImageNet(root, "val", imagenet.eval_transform(16), manifest=manifest)

    small, large = jpeg_tree(tmp_path / "small", 4), jpeg_tree(tmp_path / "large", 16)
    read = [bytes_read_under(root, monkeypatch, lambda r=root: run_checks(r)) for root in (small, large)]
    sizes = [(root / imagenet.MANIFEST_NAME).stat().st_size for root in (small, large)]
    assert read == sizes  # the manifest, and not one image or the checksums table
    assert max(read) < 2048 and abs(read[1] - read[0]) < 16  # a digit more in the counts, no more
    data_bytes = sum(p.stat().st_size for p in (large / "train").rglob("*.JPEG"))
    assert data_bytes > 20 * max(read)
    # The full pass reads every byte.
    full = bytes_read_under(large, monkeypatch, lambda: imagenet.verify_manifest(
        large, large / imagenet.MANIFEST_NAME, full=True))
    assert full > data_bytes


def test_bert_run_checks_read_only_the_manifest_and_array_headers(tmp_path, monkeypatch):
    def run_checks(folder: Path):  # closed/bert's verify and datasets, as they call the data layer
        bert_wiki.verify(folder)
        bert_wiki.BertDataset(folder, "train")
        bert_wiki.BertDataset(folder, "eval")

    shape = dict(seq_len=32, vocab_size=300, max_pred=6, seed=0)
    folders = [tmp_path / "small", tmp_path / "large"]
    bert_wiki.write_synthetic(folders[0], num_train=100, num_eval=20, **shape)
    bert_wiki.write_synthetic(folders[1], num_train=4000, num_eval=800, **shape)
    read = [bytes_read_under(f, monkeypatch, lambda f=f: run_checks(f)) for f in folders]
    manifests = [(f / "manifest.json").stat().st_size for f in folders]
    # verify and each dataset read the manifest, then the .npy header of each of 7 arrays per split they open
    assert all(r <= 3 * m + 4 * 7 * 256 for r, m in zip(read, manifests, strict=True))
    assert abs(read[1] - read[0]) < 256  # more digits in the counts and sizes, nothing else
    data_bytes = sum(p.stat().st_size for p in folders[1].rglob("*.npy"))
    assert data_bytes > 10 * max(read)
    full = bytes_read_under(folders[1], monkeypatch, lambda: bert_wiki.verify(folders[1], full=True))
    assert full >= data_bytes


def test_an_edited_manifest_is_refused_before_anything_else(tmp_path):
    folder = tmp_path / "bert"
    bert_wiki.write_synthetic(folder, num_train=8, num_eval=4, seq_len=32, vocab_size=300, max_pred=6, seed=0)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["count"] = 9
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(bert_wiki.DataError, match="checksum does not match its contents"):
        bert_wiki.verify(folder)
    root = jpeg_tree(tmp_path / "jpeg", 2)
    manifest = json.loads((root / imagenet.MANIFEST_NAME).read_text())
    manifest["splits"]["train"]["images"] = 1_281_167
    (root / imagenet.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(imagenet.ImageNetError, match="checksum does not match its contents"):
        imagenet.verify_manifest(root, root / imagenet.MANIFEST_NAME)
