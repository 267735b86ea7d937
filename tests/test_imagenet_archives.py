"""`make data BENCH=resnet SRC=<the three ILSVRC2012 archives> OUT=...`: small archives with the published
structure (an outer tar of class tars, a flat val tar, a devkit tar.gz with a scipy-written meta.mat and the
ground truth) are checked, extracted, arranged by the ground truth and indexed (test_resnet_train.py trains on
such a tree)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import scipy.io
from fakes import one_line_error
from PIL import Image

from mlperf_submission.common.data import imagenet
from mlperf_submission.common.data.imagenet import archives
from mlperf_submission.common.data.imagenet.__main__ import main

WNIDS = ("n01440764", "n01443537", "n02102040")


def jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def downloads(tmp_path):
    """(folder of the three archives, the val images as (wnid, bytes) in file order)."""
    rng = np.random.default_rng(0)
    train = {wnid: [jpeg(rng) for _ in range(6)] for wnid in WNIDS}
    val = [(WNIDS[k], jpeg(rng)) for k in (2, 0, 1, 2, 1, 0)]
    archives.write_archives(tmp_path / "src", train, val)
    return tmp_path / "src", val


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def nothing_left(out) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_archives_are_arranged_by_the_ground_truth(downloads, tmp_path, capsys):
    src, val = downloads
    out = tmp_path / "imagenet"
    code, stdout, err = run(capsys, src, "--out", out, "--no-verify", "--workers", "1")
    assert code == 0, err
    assert "md5 check skipped (--no-verify)" in stdout and "extracting needs" in stdout
    assert sorted(p.name for p in (out / "train").iterdir()) == list(WNIDS)
    assert all(len(list((out / "train" / w).iterdir())) == 6 for w in WNIDS)
    for n, (wnid, data) in enumerate(val, 1):  # each validation image in the class its ground truth names
        assert (out / "val" / wnid / f"ILSVRC2012_val_{n:08d}.JPEG").read_bytes() == data
    manifest = imagenet.verify_manifest(out, out / imagenet.MANIFEST_NAME)
    assert manifest["source"] == str(out.resolve())
    assert {s: (m["images"], m["classes"]) for s, m in manifest["splits"].items()} == {"train": (18, 3),
                                                                                       "val": (6, 3)}
    assert not list(tmp_path.glob(".imagenet.*"))
    # tests/test_resnet_train.py::test_training_on_a_tiny_imagenet_folder trains on a tree arranged from archives.


def test_the_published_md5s_are_checked(downloads, tmp_path, capsys):
    src, _ = downloads
    out = tmp_path / "imagenet"
    one_line_error(*run(capsys, src, "--out", out)[::2], "differs from the published 1d675b47d978889d74fa0da5fadfb00e")
    assert nothing_left(out)


def rewrite_devkit(src, meta: bytes | None = None, truth: bytes | None = None) -> None:
    with tarfile.open(src / archives.DEVKIT) as tar:
        files = {name: tar.extractfile(name).read() for name in (archives.META, archives.GROUND_TRUTH)}
    files[archives.META] = meta if meta is not None else files[archives.META]
    files[archives.GROUND_TRUTH] = truth if truth is not None else files[archives.GROUND_TRUTH]
    with tarfile.open(src / archives.DEVKIT, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def corrupt_inner_tar(src) -> None:
    with tarfile.open(src / archives.TRAIN) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(src / archives.TRAIN, "w") as tar:
        for m, data in members:
            if m.name == f"{WNIDS[1]}.tar":
                data = data[:512] + bytes(range(256)) * (len(data[512:]) // 256) + b"\0" * (len(data) % 256)
            tar.addfile(m, io.BytesIO(data))


def meta_without_wnids() -> bytes:
    buf = io.BytesIO()
    synsets = np.zeros(3, dtype=[("ILSVRC2012_ID", "O"), ("words", "O")])
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue()


@pytest.mark.parametrize("damage, message", [
    (lambda src: (src / archives.VAL).unlink(), "has no ILSVRC2012_img_val.tar"),
    (lambda src: truncate(src / archives.TRAIN, 0.6), "ILSVRC2012_img_train.tar: truncated or corrupt"),
    (lambda src: truncate(src / archives.VAL, 0.5), "ILSVRC2012_img_val.tar: truncated or corrupt"),
    (corrupt_inner_tar, f"{WNIDS[1]}.tar: corrupt class tar"),
    (lambda src: rewrite_devkit(src, truth=b"1\n2\n3\n1\n2\n"), "gives 5 labels for the 6 images"),
    (lambda src: rewrite_devkit(src, meta=meta_without_wnids()), "no synsets with ILSVRC2012_ID, WNID"),
    (lambda src: rewrite_devkit(src, truth=b"1\n2\n3\n1\n2\n9\n"), "names id 9, which meta.mat has no class for"),
], ids=["missing", "truncated-train", "truncated-val", "corrupt-inner-tar", "ground-truth-count", "meta-fields",
        "unknown-id"])  # fmt: skip
def test_bad_archives_are_one_line_and_leave_nothing(downloads, tmp_path, capsys, damage, message):
    src, _ = downloads
    damage(src)
    out = tmp_path / "imagenet"
    one_line_error(*run(capsys, src, "--out", out, "--no-verify", "--workers", "1")[::2], message)
    assert nothing_left(out)


def test_a_killed_runs_leftover_is_removed_and_the_command_restarts(downloads, tmp_path, capsys):
    src, _ = downloads
    out = tmp_path / "imagenet"
    stale = tmp_path / ".imagenet.abc123"  # what atomic_dir's temporary folder looks like after a SIGKILL
    (stale / "train" / WNIDS[0]).mkdir(parents=True)
    code, _, err = run(capsys, src, "--out", out, "--no-verify", "--workers", "1")
    assert code == 0, err
    assert not stale.exists() and (out / imagenet.MANIFEST_NAME).is_file()
    one_line_error(*run(capsys, src, "--out", out, "--no-verify")[::2], "already exists")


def test_disk_needed_counts_blocks_and_headers():
    def member(size: int) -> tarfile.TarInfo:
        m = tarfile.TarInfo("x")
        m.size = size
        return m

    assert archives.needed_bytes([], [member(1), member(4096), member(4097)]) == 4096 * 4
    assert archives.needed_bytes([member(220_000)], []) == 220_000 + 2 * 4096
