"""Decode + transform throughput per core: what bench/ and `python -m ...imagenet --bench` measure.

Measured on a shared 2-core AMD EPYC VM (Python 3.11, simplejpeg 1.9.0, torch 2.13 CPU, other jobs
running), the variants in turns: train_transform(224) 615 images/s, with uint8=True (what training uses)
590, torchvision's transforms on PIL 594 (bench/peers.py). Per image: the full-size decode 0.87 ms, the
TF1 bilinear resize to 224 x 224 0.56 ms (0.63 ms with the rounding to uint8; whole-row gathers in an
x-major layout, `_tf1_resize_xmajor`: the earlier per-pixel gathers took 0.68 ms), TF's crop sampler 0.06 ms.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image


def benchmark(transform: Callable, *, width: int = 500, height: int = 375, seconds: float = 3.0) -> float:
    """Images per CPU-second of JPEG decode + `transform` on one thread, for a synthetic width x height JPEG
    of about 110 KB at 500x375 (the ILSVRC2012 train average is about 140 GB / 1.28 M images). CPU time
    and the best of 5 rounds, so that other processes on the machine bias it less."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 90 * np.sin(xx / 37 + k) * np.cos(yy / 23 - k) for k in range(3)], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 24, rgb.shape)  # texture, so the JPEG is photo-sized
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = 0.0
    try:
        for _ in range(5):
            n, start = 0, time.process_time()
            while (elapsed := time.process_time() - start) < seconds / 5:
                with Image.open(io.BytesIO(data)) as img:
                    transform(img)
                n += 1
            best = max(best, n / elapsed)
    finally:
        torch.set_num_threads(threads)
    return best
