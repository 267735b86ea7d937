"""The DataLoader every benchmark uses: seeded order and augmentation, workers, pinned memory."""

from __future__ import annotations

import random

import numpy as np
import torch


def _seed_worker(worker_id: int) -> None:
    # torch has already seeded this worker's global RNG with base_seed + worker_id, base_seed drawn from the
    # loader's seeded generator (so it differs per epoch and per worker); numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    seed: int,
    drop_last: bool,
    sampler: torch.utils.data.Sampler | None = None,
    prefetch_factor: int = 2,
    pin_memory: bool = True,
    collate=None,
) -> torch.utils.data.DataLoader:
    """DataLoader whose order and augmentation follow `seed`.

    The shuffle order comes from a generator seeded with `seed`; with workers > 0 each worker's global torch
    RNG (which the transforms use) is seeded from it too, and workers persist across epochs. With
    workers == 0 the transforms use the calling process's global RNG, which the caller seeds. Under data
    parallelism give each rank its own seed, or pass a `sampler`.

    Overlap with compute: each worker keeps `prefetch_factor` batches decoded ahead, and with `pin_memory`
    (only when CUDA is available; it means nothing on CPU) batches land in page-locked memory, so that
    `.to(device, non_blocking=True)` copies asynchronously while the previous step runs. `collate` (items ->
    batch, run in the workers) replaces torch's stacking of the items.
    """
    if prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be at least 1, not {prefetch_factor}")
    if sampler is not None and shuffle:
        raise ValueError("shuffle=True with a sampler: let the sampler shuffle (e.g. DistributedSampler)")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch_factor if workers > 0 else None,
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=generator,
        drop_last=drop_last,
        collate_fn=collate,
    )
