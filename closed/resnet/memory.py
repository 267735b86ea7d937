"""ResNet-50's memory per rank at a local batch of images, from its shapes (common/runtime/memory.py checks it).

The activations: the model is run on the meta device (shapes only, no memory, no arithmetic) at batch 2 and 4
under `saved_tensors_hooks`, and the per-image difference of the bytes autograd keeps is scaled by the
precision (every saved activation of a conv / batch norm / ReLU network is 16-bit under autocast). The same
count holds on the CPU and on CUDA: the layers keep the same tensors on both.
"""

from __future__ import annotations

import torch

from ...common.runtime import memory
from .model import ResNet50


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(all bytes, the largest tensor's bytes) that autograd keeps for the backward pass of model(x)."""
    sizes = {}

    def pack(t):
        sizes[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(sizes.values()), max(sizes.values())


def estimate(cfg, local_batch: int, device_type: str = "cuda") -> memory.Estimate:
    """ResNet-50 at `local_batch` images of cfg.image_size: activations from the model run on the meta device
    (at batch 2 and 4: batch norm needs more than one value per channel, 1 x 1 at the last stage of a small
    image); the transients are the largest activation's gradient and the one it is computed from."""
    with torch.device("meta"):
        model = ResNet50(num_classes=cfg.num_classes, width=cfg.model_width)
        (two, _), (four, largest) = (_saved_bytes(model, torch.empty(n, 3, cfg.image_size, cfg.image_size))
                                     for n in (2, 4))
    params = sum(p.numel() for p in model.parameters())
    scale = 0.5 if memory.low_precision(cfg.precision) else 1.0  # measured in fp32
    per_image = (four - two) / 2 * scale
    optimizer = "lars" if cfg.opt_name == "lars" else "sgd"
    return memory.Estimate(**memory.states(params, cfg.precision, optimizer, cfg.optimizer_foreach),
                           activations=int(per_image * local_batch),
                           transients=int(2 * largest / 4 * scale * local_batch),
                           context=memory.context_bytes(device_type))


def sample_bytes(cfg, split: str = "train") -> int:
    """Bytes of one sample as the data workers hand it over: a 3 x S x S image, uint8 for training and float32
    for eval (the reference's eval pixels exactly), and an int64 label."""
    return 3 * cfg.image_size * cfg.image_size * (1 if split == "train" else 4) + 8


def shm_sample_bytes(cfg) -> int:
    """Bytes per sample in /dev/shm at the worst moment: ResNet evaluates between epochs, when the training
    loader holds none, so the larger of the two, eval's float32 images."""
    return max(sample_bytes(cfg, "train"), sample_bytes(cfg, "eval"))
