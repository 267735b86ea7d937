"""ImageNet readers, transforms, checker and loader, on tiny JPEGs and TFRecord shards made in tmp_path."""

import hashlib
import io
import json
import math
import os

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from mlperf_submission.common.data import imagenet
from mlperf_submission.common.data.imagenet import (
    ImageNet,
    ImageNetError,
    dataset,
    eval_transform,
    random_crop_box,
    train_transform,
    verify_manifest,
)
from mlperf_submission.common.data.imagenet.__main__ import main
from mlperf_submission.common.data.imagenet.index import index_dataset
from mlperf_submission.common.data.imagenet.reference import _tf1_resize_xmajor
from mlperf_submission.common.data.imagenet.transforms import _decode_rgb, _normalize, _xmajor_to_uint8
from mlperf_submission.common.data.loader import loader
from mlperf_submission.common.data.tfrecord import encode_example, write_records

CLASSES = ["n01440764", "n01443537", "n02102040"]  # sorted, so class index = position


def jpeg_bytes(seed: int, width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    """A smooth random image (like a photo, unlike noise) encoded as JPEG."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(
        rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    )
    buf = io.BytesIO()
    small.resize((width, height), Image.Resampling.BILINEAR).convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_samples() -> dict[str, list[tuple[str, bytes, int]]]:
    """(file name, JPEG bytes, label) per split: 3 train and 2 val images per class."""
    samples = {"train": [], "val": []}
    for label, wnid in enumerate(CLASSES):
        for k in range(3):
            samples["train"].append((f"{wnid}_{k}.JPEG", jpeg_bytes(10 * label + k), label))
        for k in range(2):
            samples["val"].append(
                (f"ILSVRC2012_val_{label}{k:07d}.JPEG", jpeg_bytes(100 + 10 * label + k), label)
            )
    return samples


def write_jpeg_tree(root, samples, *, val_folders: bool = False):
    for name, data, label in samples["train"]:
        path = root / "train" / CLASSES[label] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    lines = []
    for name, data, label in samples["val"]:
        path = root / "val" / (CLASSES[label] if val_folders else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lines.append(f"{name} {CLASSES[label]}\n")
    if not val_folders:
        (root / "val_labels.txt").write_text("".join(lines))
    return root


def write_tfds(root, samples, shards: int = 2):
    """The tfds imagenet2012 layout, records in the order of `samples` (contiguous runs per shard)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, tfds_split in (("train", "train"), ("val", "validation")):
        items = samples[split]
        per = math.ceil(len(items) / shards)
        for s in range(shards):
            records = [
                encode_example({"image": data, "label": label, "file_name": name.encode()})
                for name, data, label in items[s * per : (s + 1) * per]
            ]
            write_records(root / f"imagenet2012-{tfds_split}.tfrecord-{s:05d}-of-{shards:05d}", records)
    return root


@pytest.fixture
def samples():
    return make_samples()


@pytest.fixture
def jpeg_root(tmp_path, samples):
    return write_jpeg_tree(tmp_path / "jpeg", samples)


@pytest.fixture
def tf_root(tmp_path, samples):
    return write_tfds(tmp_path / "tfds", samples)


# ---------------------------------------------------------------------------------------------- readers


def test_both_layouts_give_the_same_images_and_labels(jpeg_root, tf_root, samples):
    for split in ("train", "val"):
        a, b = ImageNet(jpeg_root, split, eval_transform(32)), ImageNet(tf_root, split, eval_transform(32))
        assert (a.layout, b.layout) == ("jpeg", "tfrecord")
        assert len(a) == len(b) == len(samples[split])
        for i in range(len(a)):
            (xa, ya), (xb, yb) = a[i], b[i]
            assert ya == yb == samples[split][i][2]
            assert torch.equal(xa, xb)
    train = ImageNet(jpeg_root, "train", eval_transform(32))
    assert train.classes == CLASSES
    assert train.key(0) == f"train/{CLASSES[0]}/{CLASSES[0]}_0.JPEG"


def test_val_class_folders_and_kaggle_labels_file(tmp_path, samples):
    folders = write_jpeg_tree(tmp_path / "folders", samples, val_folders=True)
    flat = write_jpeg_tree(tmp_path / "flat", samples)
    (flat / "val_labels.txt").unlink()
    rows = [f"{name.removesuffix('.JPEG')},{CLASSES[label]} 1 2 30 40\n" for name, _, label in samples["val"]]
    (flat / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows[::-1]))
    for root in (folders, flat):
        data = ImageNet(root, "val", eval_transform(32))
        assert sorted(data[i][1] for i in range(len(data))) == sorted(s[2] for s in samples["val"])


def test_val_image_without_label_is_an_error(jpeg_root):
    lines = (jpeg_root / "val_labels.txt").read_text().splitlines()
    (jpeg_root / "val_labels.txt").write_text("\n".join(lines[1:]))
    with pytest.raises(ImageNetError, match="has no line in"):
        ImageNet(jpeg_root, "val", eval_transform(32))


def test_manifest_indexes_the_record_offsets(tf_root, monkeypatch):
    """`make data` stores every record's offset; training then indexes the shards without reading them."""
    manifest = index_dataset(tf_root)
    shards = manifest["splits"]["train"]["shards"]
    assert all(len(s["offsets"]) == s["records"] and s["offsets"][0] == 0 for s in shards.values())
    plain = ImageNet(tf_root, "train", eval_transform(32))
    monkeypatch.setattr(dataset, "_record_offsets", lambda path: pytest.fail(f"read {path} during init"))
    indexed = ImageNet(tf_root, "train", eval_transform(32), manifest=manifest)
    assert [indexed.key(i) for i in range(len(indexed))] == [plain.key(i) for i in range(len(plain))]
    assert torch.equal(indexed[1][0], plain[1][0]) and indexed[1][1] == plain[1][1]


def test_corrupt_record_raises_naming_the_shard(tf_root):
    shard = tf_root / "imagenet2012-train.tfrecord-00000-of-00002"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF  # inside the first record's payload
    shard.write_bytes(bytes(raw))
    data = ImageNet(tf_root, "train", eval_transform(32))  # the index reads the framing only
    with pytest.raises(
        ImageNetError, match=r"00000-of-00002: corrupt record data \(CRC mismatch\) at byte 0"
    ):
        data[0]


# ---------------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("size", [224, 32])
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_transform_shapes(size, mode):
    for transform in (train_transform(size), eval_transform(size)):
        x = transform(Image.open(io.BytesIO(jpeg_bytes(0, mode=mode))))
        assert x.shape == (3, size, size) and x.dtype == torch.float32 and x.is_contiguous()
        assert -2.2 < x.min() and x.max() < 2.7  # (0 - 123.68) / 58.393 .. (255 - 103.94) / 57.375


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_uint8_batches_normalised_on_the_device_give_the_float_pipelines_tensors(device, channels_last):
    """What "equal" means: the float pipeline does not round (TF1's bilinear resize gives fractional grey
    levels), so a uint8 batch holds its pixels rounded half to even, at most 0.5 grey levels away.
    Normalised on the device, the batch is bit for bit the float pipeline's normalisation of those
    integers (the same float32 subtraction and division), and within 0.5 / std of its tensors."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    data = [jpeg_bytes(seed, width=90, height=70) for seed in range(3)]
    for make in (train_transform, eval_transform):
        def images(uint8: bool, pixels: bool = False, make=make):
            out = []
            for i, d in enumerate(data):
                seeded = {"generator": torch.Generator().manual_seed(i)} if make is train_transform else {}
                t = make(32, uint8=uint8, **seeded)
                out.append((t.pixels if pixels else t)(Image.open(io.BytesIO(d))))
            return torch.stack(out)

        u, pixels, floats = images(True), images(False, pixels=True), images(False)
        assert u.dtype == torch.uint8 and u.shape == (3, 32, 32, 3)
        assert not torch.equal(pixels, pixels.round())  # fractional: there is rounding to speak of
        assert torch.equal(u.permute(0, 3, 1, 2).float(), pixels.round())
        assert (u.permute(0, 3, 1, 2).float() - pixels).abs().max() <= 0.5
        x = imagenet.normalise(u.to(device), memory)
        assert x.dtype == torch.float32 and x.device.type == device and x.is_contiguous(memory_format=memory)
        assert torch.equal(x.cpu(), torch.stack([_normalize(p.round()) for p in pixels]))
        assert (x.cpu() - floats).abs().max() <= 0.5 / min(imagenet.STD) + 1e-6
        assert torch.equal(imagenet.normalise(floats.to(device), memory).cpu(), floats)  # float: already done


def test_the_shm_estimate_counts_the_bytes_a_worker_hands_over():
    """memory.shm_bytes sizes /dev/shm from `sample_bytes` (beside the model): it must be what an ImageNet item
    really is, the uint8 224 px image the trainer's transforms make and its int64 label."""
    from mlperf_submission.closed.resnet import memory, presets

    image = Image.open(io.BytesIO(jpeg_bytes(0, width=300, height=250)))
    x = train_transform(224, uint8=True)(image)
    label = torch.tensor([0])  # the loader collates the int label to int64
    assert memory.sample_bytes(presets.h200()) == x.nbytes + label.element_size()
    assert memory.sample_bytes(presets.h200(), "eval") == eval_transform(224)(image).nbytes + 8


def test_tf1_resize_is_tf_kernels_formula_in_every_layout():
    """The x-major resize behind every transform against TF1's bilinear kernel written out in numpy (float32:
    top and bottom rows along x, then along y), bit for bit: down- and upscaling, windows, mirrored; and the
    uint8 batches are those pixels rounded, laid out HWC."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    for (h, w), (oh, ow), rows, cols, mirror in [((37, 51), (20, 16), None, None, False),
                                                 ((9, 13), (32, 32), None, None, True),
                                                 ((40, 30), (45, 60), (7, 20), (11, 32), True)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        src = img[:, ::-1] if mirror else img
        ys = np.arange(*(lambda r: (r[0], r[0] + r[1]))(rows or (0, oh)), dtype=f32) * (f32(h) / f32(oh))
        xs = np.arange(*(lambda c: (c[0], c[0] + c[1]))(cols or (0, ow)), dtype=f32) * (f32(w) / f32(ow))
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(np.ceil(ys), h - 1).astype(int), np.minimum(np.ceil(xs), w - 1).astype(int)
        yl, xl = (ys - y0).astype(f32)[:, None, None], (xs - x0).astype(f32)[None, :, None]
        s = src.astype(f32)
        top = s[y0][:, x0] + (s[y0][:, x1] - s[y0][:, x0]) * xl
        bottom = s[y1][:, x0] + (s[y1][:, x1] - s[y1][:, x0]) * xl
        expected = torch.from_numpy(top + (bottom - top) * yl)  # (rows, cols, 3)
        x = torch.from_numpy(img).permute(2, 0, 1)  # HWC in memory, as decoded
        got = imagenet.tf1_resize_bilinear(x, oh, ow, rows=rows, cols=cols, mirror=mirror)
        assert torch.equal(got, expected.permute(2, 0, 1))
        xmajor = _tf1_resize_xmajor(x, oh, ow, rows=rows, cols=cols, mirror=mirror)
        assert torch.equal(_xmajor_to_uint8(xmajor), expected.round().to(torch.uint8))


def test_uint8_batches_leave_the_loader_as_bytes(tmp_path):
    """Through the dataset and the loader's collation a uint8 batch stays (N, H, W, 3) uint8: a quarter of
    float32's bytes through the workers' shared memory and to the device."""
    root = tmp_path / "jpeg"
    for c, wnid in enumerate(CLASSES):
        (root / "train" / wnid).mkdir(parents=True)
        (root / "train" / wnid / f"{c}.JPEG").write_bytes(jpeg_bytes(c, width=70, height=50))
    data = ImageNet(root, "train", train_transform(32, uint8=True))
    x, y = next(iter(loader(data, 3, shuffle=False, workers=0, seed=0, drop_last=False)))
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32, 3) and y.tolist() == [0, 1, 2]


def test_eval_transform_is_deterministic_and_normalised():
    data = jpeg_bytes(1)
    x1, x2 = (eval_transform(32)(Image.open(io.BytesIO(data))) for _ in range(2))
    assert torch.equal(x1, x2)
    grey = Image.new("RGB", (64, 48), (123, 117, 104))
    assert eval_transform(32)(grey).abs().max() < 0.02


def test_reduced_decode_lands_on_the_same_pixels():
    """`reduced_decode` decodes a large JPEG at a libjpeg scale; the crop must still land on the same pixels:
    on a smooth image the outputs differ far less than the full-decode output does from itself moved by one
    pixel. (On noisy pixels it moves them by grey levels: test_resnet_reference.py.)"""
    grid = np.random.default_rng(2).integers(0, 256, (9, 12, 3), dtype=np.uint8)  # smooth at every scale used
    buf = io.BytesIO()
    Image.fromarray(grid).resize((1200, 900), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    for seed in range(4):
        a, b = (train_transform(32, generator=torch.Generator().manual_seed(seed), reduced_decode=r)(
            Image.open(io.BytesIO(data))) for r in (True, False))
        assert not torch.equal(a, b)  # 32 px crops of a 1200 x 900 image: always a reduced decode
        assert (a - b).abs().mean() < 0.5 * (b - b.roll(1, -1)).abs().mean()


def test_jpeg_decode_is_tensorflows_and_pillow_is_the_fallback():
    """Not yet loaded JPEGs decode with libjpeg-turbo's fast DCT, as TF does; a loaded image, a CMYK JPEG
    or another format goes through Pillow, whose accurate DCT differs by about one grey level."""
    data = jpeg_bytes(3, width=300, height=200)
    fast, _ = _decode_rgb(Image.open(io.BytesIO(data)))
    loaded = Image.open(io.BytesIO(data))
    loaded.load()
    accurate, _ = _decode_rgb(loaded)
    assert fast.shape == accurate.shape == (3, 200, 300)
    assert 0 < (fast.float() - accurate.float()).abs().mean() < 2
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    assert torch.equal(_decode_rgb(Image.open(io.BytesIO(png.getvalue())))[0], accurate)


def test_train_transform_follows_the_seed():
    data = jpeg_bytes(4, width=200, height=150)

    def draw(seed):
        t = train_transform(32, generator=torch.Generator().manual_seed(seed))
        return torch.stack([t(Image.open(io.BytesIO(data))) for _ in range(4)])

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(train_transform(32)(Image.open(io.BytesIO(data))))
    assert torch.equal(*outs)


def test_crop_box_bounds():
    g = torch.Generator().manual_seed(0)
    areas = []
    for width, height in ((64, 48), (500, 375), (300, 1000)):
        for _ in range(500):
            left, top, w, h = random_crop_box(width, height, generator=g)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
            # w and h are rounded to whole pixels: allow one pixel of slack on each
            assert 0.05 * width * height <= (w + 1) * (h + 1) and (w - 1) * (h - 1) <= width * height
            assert 3 / 4 <= (w + 1) / h and (w - 1) / h <= 4 / 3 + 1e-9
            areas.append(w * h / (width * height))
    assert min(areas) > 0.045 and max(areas) > 0.9 and np.quantile(areas, 0.1) < 0.15  # the whole range
    # No window fits in 10 tries on a 1000x10 strip: the largest central crop of aspect 4/3
    assert random_crop_box(1000, 10, generator=g) == (493, 0, 13, 10)


# ---------------------------------------------------------------------------------------------- checker


@pytest.mark.parametrize("layout", ["jpeg", "tfrecord"])
def test_index_command_writes_counts_and_hashes(layout, jpeg_root, tf_root, tmp_path):
    root = jpeg_root if layout == "jpeg" else tf_root
    out = tmp_path / "out"
    rc, stdout, err = run_cli(main, root, "--out", out, "--workers", "1")
    assert rc == 0, err
    manifest = json.loads((out / "imagenet_manifest.json").read_text())
    assert manifest["layout"] == layout
    assert {s: (m["images"], m["classes"]) for s, m in manifest["splits"].items()} == {
        "train": (9, 3),
        "val": (6, 3),
    }
    files = json.loads((out / "imagenet_checksums.json").read_text())["train"]
    assert len(files) == manifest["splits"]["train"]["stat"]["files"] == (9 if layout == "jpeg" else 2)
    for key, digest in files.items():
        assert hashlib.sha256((root / key).read_bytes()).hexdigest() == digest
    assert "train: 9 images, 3 classes" in stdout
    assert verify_manifest(root, out / "imagenet_manifest.json", full=True) == manifest

    victim = root / next(iter(files))
    stat = victim.stat()
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    with pytest.raises(ImageNetError, match="latest modification time differs"):
        verify_manifest(root, out / "imagenet_manifest.json")  # what a run checks: sizes and times
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    verify_manifest(root, out / "imagenet_manifest.json")  # same size and time: only full=True sees it
    with pytest.raises(ImageNetError, match="sha256 differs"):
        verify_manifest(root, out / "imagenet_manifest.json", full=True)
    rc, _, err = run_cli(main, root, "--out", out, "--verify", "--workers", "1")
    assert rc == 2 and err.startswith("error: ") and "sha256 differs" in err
    victim.unlink()
    missing = {
        "jpeg": "train: 8 files where the manifest counted 9",
        "tfrecord": "1 of the 2 imagenet2012-train shards are missing",
    }
    with pytest.raises(ImageNetError, match=missing[layout]):
        verify_manifest(root, out / "imagenet_manifest.json")


def test_index_in_worker_processes_matches_one_process(jpeg_root):
    assert index_dataset(jpeg_root, workers=2) == index_dataset(jpeg_root, workers=1)


def corrupt_jpeg(root, samples):  # truncated to half its bytes
    path = root / "train" / CLASSES[1] / samples["train"][4][0]
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def corrupt_crc(root, samples):
    shard = root / "imagenet2012-validation.tfrecord-00001-of-00002"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0x01
    shard.write_bytes(bytes(raw))
    return shard


def missing_path(root, samples):
    return root / "nowhere", f"{root / 'nowhere'} does not exist"


def empty_class(root, samples):
    (root / "train" / "n09999999").mkdir()
    return root, f"{root / 'train' / 'n09999999'} is an empty class folder"


def undecodable(root, samples):
    return root, f"1 image(s) are not decodable JPEGs: {corrupt_jpeg(root, samples)} (OSError"


def bad_crc(root, samples):
    return root, f"{corrupt_crc(root, samples)}: corrupt record data (CRC mismatch)"


def no_layout(root, samples):
    (root / "train").rename(root / "training")
    return root, f"{root} has no recognisable ImageNet layout"


@pytest.mark.parametrize(
    "layout, damage",
    [
        ("jpeg", missing_path),
        ("jpeg", empty_class),
        ("jpeg", undecodable),
        ("tfrecord", bad_crc),
        ("jpeg", no_layout),
    ],
    ids=["missing", "empty-class", "corrupt-jpeg", "corrupt-crc", "no-layout"],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    layout, damage, jpeg_root, tf_root, samples, tmp_path
):
    src, message = damage(jpeg_root if layout == "jpeg" else tf_root, samples)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(main, src, "--out", out, "--workers", "1")
    assert rc == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and stdout == ""
    assert not out.exists()


def test_corrupt_jpeg_is_skipped_with_a_count(jpeg_root, samples, tmp_path):
    path = corrupt_jpeg(jpeg_root, samples)
    key = path.relative_to(jpeg_root).as_posix()
    with pytest.raises(ImageNetError, match=rf"{path.name}: not a decodable JPEG \(.*truncated"):
        ImageNet(jpeg_root, "train", eval_transform(32))[4]

    rc, stdout, err = run_cli(
        main, jpeg_root, "--out", tmp_path / "out", "--skip-corrupt", "--workers", "1"
    )
    assert rc == 0, err
    assert "train: 8 images, 3 classes, 1 skipped" in stdout
    manifest = verify_manifest(jpeg_root, tmp_path / "out" / "imagenet_manifest.json")
    assert list(manifest["splits"]["train"]["skipped"]) == [key]
    data = ImageNet(jpeg_root, "train", eval_transform(32), exclude=manifest["splits"]["train"]["skipped"])
    assert len(data) == 8 and key not in {data.key(i) for i in range(len(data))}


def test_corrupt_jpeg_inside_a_record_is_listed_and_skipped(tmp_path, samples):
    name, data, label = samples["val"][3]
    samples["val"][3] = (name, data[:40], label)
    root = write_tfds(tmp_path / "tfds", samples)
    with pytest.raises(imagenet.CorruptImagesError, match=name) as e:
        index_dataset(root)
    assert len(e.value.corrupt) == 1
    manifest = index_dataset(root, skip_corrupt=True)
    skipped = manifest["splits"]["val"]["skipped"]
    assert manifest["splits"]["val"]["images"] == 5 and len(skipped) == 1
    assert next(iter(skipped)).startswith("imagenet2012-validation.tfrecord-00001-of-00002@")
    val = ImageNet(root, "val", eval_transform(32), exclude=skipped)
    assert [val[i][1] for i in range(len(val))] == [0, 0, 1, 2, 2]


# ---------------------------------------------------------------------------------------------- loader


def test_loader_order_and_augmentation_follow_the_seed(tf_root):
    data = ImageNet(tf_root, "train", train_transform(32))

    def epoch(seed, workers):
        batches = list(loader(data, 4, shuffle=True, workers=workers, seed=seed, drop_last=False))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    x0, y0 = epoch(0, workers=2)
    x1, y1 = epoch(0, workers=2)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert sorted(y0.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x2, y2 = epoch(1, workers=0)
    assert not torch.equal(x0, x2)
    dropped = loader(data, 4, shuffle=False, workers=0, seed=0, drop_last=True)
    assert [len(y) for _, y in dropped] == [4, 4]
