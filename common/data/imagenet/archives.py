"""The three ILSVRC2012 archives a submitter downloads, checked, extracted and arranged into the JPEG layout.

    python -m mlperf_submission.common.data.imagenet SRC --out OUT [--no-verify] [--workers N]
    (or: make data BENCH=resnet SRC=SRC OUT=OUT)
when SRC holds ILSVRC2012_img_train.tar (one inner tar per class), ILSVRC2012_img_val.tar (flat JPEGs) and
ILSVRC2012_devkit_t12.tar.gz (data/meta.mat maps ILSVRC2012 ids to wnids; data/ILSVRC2012_validation_ground_truth.txt
gives the id of validation image n on line n). Steps: each archive's md5 against the published one (the values
torchvision's ImageNet and tfds's imagenet2012 carry; `--no-verify` skips it for a known-good copy); the devkit
and the archives' headers (the ground truth's count against the val images, the free space against the bytes
to write); then train/<wnid>/ from each inner tar and val/<wnid>/ by the ground truth, streamed member by
member (no inner tar is held in memory), into a hidden temporary folder beside OUT; then the index (manifest)
as for any JPEG tree; then one rename. An interrupted run leaves no OUT: the same command restarts from the
beginning, removing the hidden folder a killed run left.

Disk: the real archives hold 147,897,477,120 + 6,744,924,160 bytes (train and val, as image-net.org serves
them); the tree takes their payload rounded up to 4 KiB blocks per file: `needed_bytes` computes it from the
archives' headers before writing (the train tar's inner tars are counted whole, which bounds their images'
rounding by their own 512-byte tar headers and padding).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from ...cli import UserError, atomic_dir
from .index import index_dataset
from .layout import ImageNetError
from .manifest import CHECKSUMS_NAME, MANIFEST_NAME, write_manifest

TRAIN, VAL, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
# torchvision/datasets/imagenet.py ARCHIVE_META (the same md5s as image-net.org's download page)
PUBLISHED_MD5 = {TRAIN: "1d675b47d978889d74fa0da5fadfb00e", VAL: "29b22e2961454d5413ddabcf34fc5622",
                 DEVKIT: "fa75699e90414af021442c21a62c3abf"}
META = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
BLOCK = 4096  # bytes: the file-system block each extracted file is rounded up to in `needed_bytes`
CHUNK = 1 << 20  # bytes read at a time when hashing or copying
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
_WNID_TAR = re.compile(r"^(n\d{8})\.tar$")


def holds_archives(src: Path) -> bool:
    """Whether `src` is a folder of the downloaded archives (any of the three), not an arranged tree."""
    return any((Path(src) / name).is_file() for name in PUBLISHED_MD5)


def check_md5(src: Path) -> None:
    """Each archive's md5 against the published one; one line naming the first that differs."""
    for name, published in PUBLISHED_MD5.items():
        digest = hashlib.md5()
        path = src / name
        with open(path, "rb") as f, _bar(f"md5 {name}", path.stat().st_size) as bar:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != published:
            raise UserError(f"{path}: md5 {digest.hexdigest()} differs from the published {published}: download it "
                            "again (or pass --no-verify for a copy known to be good)")


def read_devkit(path: Path) -> tuple[dict[int, str], list[int]]:
    """-> (ILSVRC2012 id -> wnid of the leaf classes, the validation images' ids in file order)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            meta, truth = (_member_bytes(tar, name, path) for name in (META, GROUND_TRUTH))
        synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        names = synsets.dtype.names or ()
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not a readable ILSVRC2012 devkit ({e}): download it again") from None
    if not {"ILSVRC2012_ID", "WNID", "num_children"} <= set(names):
        raise UserError(f"{path}: {META} has no synsets with ILSVRC2012_ID, WNID and num_children (fields: "
                        f"{', '.join(names) or 'none'}): not the ILSVRC2012 devkit")
    leaves = np.atleast_1d(synsets)[np.atleast_1d(synsets["num_children"]).astype(int) == 0]
    classes = {int(i): str(w) for i, w in zip(leaves["ILSVRC2012_ID"], leaves["WNID"], strict=True)}
    try:
        ids = [int(line) for line in truth.decode().split()]
    except ValueError:
        raise UserError(f"{path}: {GROUND_TRUTH} holds something other than one id a line") from None
    if unknown := sorted(set(ids) - set(classes)):
        raise UserError(f"{path}: the ground truth names id {unknown[0]}, which meta.mat has no class for")
    return classes, ids


def _member_bytes(tar: tarfile.TarFile, name: str, path: Path) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        raise UserError(f"{path} has no {name}: not the ILSVRC2012 devkit (ILSVRC2012_devkit_t12.tar.gz)") from None
    return f.read()


def _members(path: Path) -> list[tarfile.TarInfo]:
    """The regular files of an uncompressed tar, from its headers only (tarfile seeks past the data)."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{path}: truncated or corrupt ({e}): download it again") from None
    end = max((m.offset_data + m.size for m in members), default=0)
    if end > path.stat().st_size:
        raise UserError(f"{path}: truncated or corrupt ({path.stat().st_size:,} bytes, its last member ends at "
                        f"{end:,}): download it again")
    return members


def needed_bytes(train: list[tarfile.TarInfo], val: list[tarfile.TarInfo]) -> int:
    """Bytes the arranged tree takes on disk: each file rounded up to BLOCK; each inner tar counted whole (its
    images plus a 512-byte header and up to 511 bytes of padding each) plus a block per 110 KB image."""
    blocks = sum(-(-m.size // BLOCK) * BLOCK for m in val)
    return blocks + sum(m.size + BLOCK * -(-m.size // 110_000) for m in train)


def _bar(desc: str, total: int) -> tqdm:
    return tqdm(desc=desc, total=total, unit="B", unit_scale=True, disable=None, file=sys.stderr)


def _copy(stream, dest: Path) -> None:
    with open(dest, "wb") as out:
        shutil.copyfileobj(stream, out, CHUNK)


def _safe_name(name: str, where: str) -> str:
    base = os.path.basename(name)
    if not base or base.startswith(".") or base != name.rsplit("/", 1)[-1] or ".." in name.split("/"):
        raise UserError(f"{where}: unexpected member {name!r}: not an ILSVRC2012 archive")
    return base


def _check_end(tar: tarfile.TarFile, stream, size: int, where: str) -> None:
    """tarfile ends its iteration quietly at a header it cannot read and at a file cut between members: after the
    last member, everything up to `size` must be the end-of-archive marker (at least two zero blocks)."""
    stream.seek(tar.offset)
    left, zeros = size - tar.offset, True
    while zeros and (chunk := stream.read(min(CHUNK, size - stream.tell()))):
        zeros = not any(chunk)
    if left < 1024 or not zeros:
        raise UserError(f"{where}: truncated or corrupt (no end-of-archive marker after byte {tar.offset:,}): "
                        "download it again")


def extract_train(path: Path, out: Path) -> int:
    """Each inner nXXXXXXXX.tar into out/<wnid>/, member by member; -> images written."""
    images = 0
    with _bar("train", path.stat().st_size) as bar, open(path, "rb") as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as outer:
                for member in outer:
                    if not member.isfile():
                        continue
                    wnid = _WNID_TAR.match(_safe_name(member.name, str(path)))
                    if wnid is None:
                        raise UserError(f"{path}: member {member.name!r} is not a class tar nXXXXXXXX.tar")
                    images += _extract_class(outer.extractfile(member), member.size, out / wnid[1],
                                             f"{path}: {member.name}")
                    bar.update(member.size + 512)
                    bar.set_postfix(images=images)
                _check_end(outer, f, path.stat().st_size, str(path))
        except (tarfile.TarError, EOFError) as e:
            raise UserError(f"{path}: truncated or corrupt ({e}): download it again") from None
    return images


def _extract_class(stream, size: int, folder: Path, where: str) -> int:
    folder.mkdir()
    images = 0
    try:
        with tarfile.open(fileobj=stream, mode="r:") as inner:
            for member in inner:
                if member.isfile():
                    _copy(inner.extractfile(member), folder / _safe_name(member.name, where))
                    images += 1
            _check_end(inner, stream, size, where)
    except (tarfile.TarError, EOFError, UserError) as e:
        raise UserError(f"{where}: corrupt class tar ({e}): download the train archive again") from None
    if images == 0:
        raise UserError(f"{where}: holds no images")
    return images


def extract_val(path: Path, out: Path, classes: dict[int, str], truth: list[int]) -> int:
    """Every ILSVRC2012_val_NNNNNNNN.JPEG into out/<wnid of truth[N - 1]>/, member by member; -> images written."""
    images = 0
    with _bar("val", path.stat().st_size) as bar, open(path, "rb") as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = _safe_name(member.name, str(path))
                    number = _VAL_NAME.match(name)
                    if number is None or not 1 <= int(number[1]) <= len(truth):
                        raise UserError(f"{path}: {name!r} is not one of the {len(truth):,} validation images")
                    folder = out / classes[truth[int(number[1]) - 1]]
                    folder.mkdir(exist_ok=True)
                    _copy(tar.extractfile(member), folder / name)
                    images += 1
                    bar.update(member.size + 512)
                    bar.set_postfix(images=images)
                _check_end(tar, f, path.stat().st_size, str(path))
        except (tarfile.TarError, EOFError) as e:
            raise UserError(f"{path}: truncated or corrupt ({e}): download it again") from None
    return images


def _stale(out: Path) -> list[Path]:
    """Hidden temporary folders a killed run of this command left beside `out`: named as `atomic_dir` names them
    and holding nothing but what `arrange` writes."""
    ours = {"train", "val", MANIFEST_NAME, CHECKSUMS_NAME}
    return [p for p in out.parent.glob(f".{out.name}.*")
            if p.is_dir() and not p.is_symlink() and {c.name for c in p.iterdir()} <= ours]


def _check_classes(src: Path, train: list[tarfile.TarInfo], classes: dict[int, str], truth: list[int]) -> None:
    """Every class the validation labels name has a class tar in the train archive."""
    wnids = {m[1] for m in (_WNID_TAR.match(os.path.basename(t.name)) for t in train) if m}
    if missing := sorted({classes[i] for i in set(truth)} - wnids):
        raise UserError(f"{src / DEVKIT}: validation images are labelled {missing[0]}, which {TRAIN} has no class "
                        "tar for: not the devkit of these archives")


def arrange(src: Path, out: Path, *, verify: bool = True, skip_corrupt: bool = False, workers: int = 1) -> dict:
    """Check the archives in `src` and write the indexed JPEG tree at `out` (see the module docstring); -> its
    manifest. Raises UserError, leaving nothing at `out`."""
    src, out = Path(src), Path(out)
    if missing := [name for name in PUBLISHED_MD5 if not (src / name).is_file()]:
        raise UserError(f"{src} has no {missing[0]}: download it from image-net.org (ILSVRC2012) into {src}")
    if out.exists():
        raise UserError(f"{out} already exists: remove it or choose another OUT")
    if verify:
        check_md5(src)
    else:
        print("md5 check skipped (--no-verify)")
    classes, truth = read_devkit(src / DEVKIT)
    train, val = _members(src / TRAIN), _members(src / VAL)
    if len(val) != len(truth):
        raise UserError(f"{src / DEVKIT}: the ground truth gives {len(truth):,} labels for the {len(val):,} images "
                        f"of {VAL}: not the devkit of these images")
    _check_classes(src, train, classes, truth)
    for stale in _stale(out):
        shutil.rmtree(stale)
    out.parent.mkdir(parents=True, exist_ok=True)
    need, free = needed_bytes(train, val), shutil.disk_usage(out.parent).free
    print(f"extracting needs {need / 1e9:.1f} GB in {out.parent} ({free / 1e9:.1f} GB free)")
    if need > free:
        raise UserError(f"{out.parent} has {free / 1e9:.1f} GB free; the extracted tree needs {need / 1e9:.1f} GB")
    with atomic_dir(out) as tmp:
        (tmp / "train").mkdir()
        (tmp / "val").mkdir()
        extract_train(src / TRAIN, tmp / "train")
        extract_val(src / VAL, tmp / "val", classes, truth)
        try:
            manifest = index_dataset(tmp, skip_corrupt=skip_corrupt, workers=workers)
        except ImageNetError as e:
            raise UserError(" ".join(str(e).replace(str(tmp), str(out)).split())) from None
        manifest["source"] = str(out.resolve())  # where it will be, not the temporary folder
        return write_manifest(tmp, manifest)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archives(folder: Path, train: dict[str, list[bytes]], val: list[tuple[str, bytes]]) -> None:
    """Write the three archives in the published structure into `folder`: `train` maps each wnid to its JPEGs
    (one inner <wnid>.tar each, images <wnid>_<k>.JPEG), `val` lists (wnid, JPEG) in file order
    (ILSVRC2012_val_<n>.JPEG). The devkit's meta.mat numbers the classes in reverse wnid order (the real one
    follows no sorted order either) and holds one non-leaf synset, as the real one holds 860; the ground truth
    gives each validation image its class's id. For tests and rehearsals: each inner tar is built in memory."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / TRAIN, "w") as outer:
        for wnid, images in sorted(train.items()):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for k, data in enumerate(images):
                    _add(tar, f"{wnid}_{k}.JPEG", data)
            _add(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(folder / VAL, "w") as tar:
        for n, (_, data) in enumerate(val, 1):
            _add(tar, f"ILSVRC2012_val_{n:08d}.JPEG", data)
    wnids = sorted(train, reverse=True)
    synsets = np.zeros(len(wnids) + 1, dtype=[(k, "O") for k in ("ILSVRC2012_ID", "WNID", "words", "num_children")])
    for i, wnid in enumerate(wnids):
        synsets[i] = (i + 1, wnid, wnid, 0)
    synsets[-1] = (len(wnids) + 1, "n00001740", "entity", len(wnids))
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{wnids.index(wnid) + 1}\n" for wnid, _ in val).encode()
    with tarfile.open(folder / DEVKIT, "w:gz") as tar:
        _add(tar, META, meta.getvalue())
        _add(tar, GROUND_TRUTH, truth)
