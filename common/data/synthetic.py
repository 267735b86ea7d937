"""Built-in synthetic image data: the embedded default when no dataset is given.

Deterministic from a seed, with class structure that a short run must learn: each class has a smooth
random prototype pattern; a sample is its class prototype at a random contrast, plus a weaker
prototype of another class as a distractor, a random shift, and pixel noise. Nothing here is
ImageNet; results on it are demonstrations, never MLPerf results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SPLIT_OFFSET = {"train": 0, "val": 1_000_003}


def prototypes(num_classes: int, image_size: int, seed: int) -> torch.Tensor:
    """(classes, 3, size, size) smooth patterns, unit variance: random 4x4 grids upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return (protos - protos.mean(dim=(1, 2, 3), keepdim=True)) / protos.std(dim=(1, 2, 3), keepdim=True)


def synthetic_images(
    num_samples: int,
    *,
    num_classes: int,
    image_size: int,
    seed: int,
    split: str,
    noise: float = 1.0,
    distractor: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (N, 3, S, S), labels int64 (N,)); the same arguments give the same tensors."""
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"split must be train or val, not {split!r}")
    protos = prototypes(num_classes, image_size, seed)
    g = torch.Generator().manual_seed(seed + _SPLIT_OFFSET[split])
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    others = (labels + torch.randint(1, num_classes, (num_samples,), generator=g)) % num_classes
    contrast = 0.5 + torch.rand(num_samples, 1, 1, 1, generator=g)
    images = contrast * protos[labels] + distractor * protos[others]
    shifts = torch.randint(-image_size // 8, image_size // 8 + 1, (num_samples, 2), generator=g)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        images[i] = torch.roll(images[i], shifts=(dy, dx), dims=(1, 2))
    images += noise * torch.randn(images.shape, generator=g)
    return images, labels
