"""What ResNet's training loop reads (closed/resnet/train.py): the built-in synthetic images, the ImageNet folder
checked against its manifest from `make data`, the sample counts the log states, and the loaders.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...common.cli import UserError
from ...common.data import imagenet
from ...common.data.loader import loader
from ...common.data.synthetic import synthetic_images
from ...common.runtime import distributed
from . import presets


class SyntheticImages(torch.utils.data.Dataset):
    """The built-in synthetic images, with the reference's random horizontal flip at train time."""

    def __init__(self, cfg: presets.ResNetConfig, split: str):
        n = cfg.synthetic_train_samples if split == "train" else cfg.synthetic_eval_samples
        self.images, self.labels = synthetic_images(n, num_classes=cfg.num_classes, image_size=cfg.image_size,
                                                    seed=cfg.synthetic_seed, split=split)
        self.flip = split == "train"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(2)
        return x, self.labels[i]


def checked_manifest(data: Path) -> dict:
    """The dataset's manifest from `make data`, verified against the folder, before any log is written."""
    manifest_path = data / imagenet.MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserError(f"{data} has no {imagenet.MANIFEST_NAME}: check and index it first with "
                        f"`make data BENCH=resnet SRC={data}`")
    try:
        return imagenet.verify_manifest(data, manifest_path)
    except imagenet.ImageNetError as e:
        raise UserError(f"{e} (re-run `make data BENCH=resnet SRC={data}`)") from None


def datasets(cfg: presets.ResNetConfig, data: Path | None, manifest: dict | None):
    if cfg.dataset == "synthetic":
        return SyntheticImages(cfg, "train"), SyntheticImages(cfg, "val")
    # Training batches in uint8: a quarter of float32's bytes through the workers' shared memory and to the
    # device, which normalises them (`to_device`); the pixels rounded to integers (COMPLIANCE.md). Eval stays
    # float32, the reference's eval pixels bit-exact: 50,000 images, a small share of the run's copies.
    augment = imagenet.train_transform(cfg.image_size, reduced_decode=cfg.reduced_decode, uint8=True)
    train = imagenet.ImageNet(data, "train", augment, manifest=manifest)
    val = imagenet.ImageNet(data, "val", imagenet.eval_transform(cfg.image_size), manifest=manifest)
    return train, val


def sample_counts(cfg: presets.ResNetConfig, manifest: dict | None) -> tuple[int, int, int]:
    """(train, eval, classes) as counted from the data: by `make data` (the manifest) for ImageNet."""
    if manifest is None:
        return cfg.synthetic_train_samples, cfg.synthetic_eval_samples, cfg.num_classes
    splits = manifest["splits"]
    if "train" not in splits or "val" not in splits:
        raise UserError("the dataset needs both a train and a val split: add the missing one and re-run "
                        "`make data BENCH=resnet SRC=...`")
    return splits["train"]["images"], splits["val"]["images"], splits["train"]["classes"]


def loaders(cfg, train_set, val_set, dist: distributed.Dist, seed: int, local_batch: int):
    # One seeded permutation per epoch over all ranks (one rank too), so R ranks x batch b train what one
    # rank x batch R*b would; whole global batches only (the reference drops the remainder); every eval
    # sample exactly once, counts summed afterwards.
    sampler = distributed.train_sampler(
        train_set, dist, seed, per_rank=presets.epoch_samples(cfg, len(train_set), dist.world_size))
    loading = dict(prefetch_factor=cfg.prefetch_factor, pin_memory=cfg.pin_memory)
    train = loader(train_set, local_batch, shuffle=False, workers=cfg.data_workers, seed=seed + dist.rank,
                   drop_last=True, sampler=sampler, **loading)
    val = loader(distributed.eval_shard(val_set, dist), local_batch, shuffle=False, workers=cfg.data_workers,
                 seed=seed, drop_last=False, **loading)
    return train, sampler, val
