"""torch.compile in the training paths: compilation and warm-up inside the untimed init, then undone.

    model = compiled(model, cfg.torch_compile)       # "off", "inductor" or "aot_eager"
    if needs_warm_up(cfg.torch_compile, device):     # compiled, or eager on CUDA
        with undone(raw_model, optimizer):           # state, gradients and RNG put back afterwards
            ...forward and backward on synthetic batches of every shape the run will see...
    run.start()

torch.compile traces and generates code on the first call with each new input shape and mode (train or
eval), which takes seconds to minutes; done inside the timed region it would be charged to the result.
Warming up on synthetic batches (never the training data) of every batch size the loaders produce (see
`batch_sizes`) compiles everything before `run_start`; `undone` then restores what the warm-up touched:
parameters and buffers (batch-norm running statistics), optimizer state, gradients and every RNG.
"inductor" generates fused kernels (a C++ compiler on CPU, Triton on GPU); "aot_eager" traces forward and
backward the same way but runs them eagerly, which checks the mechanics in seconds (the tests use it).
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch import nn

BACKENDS = ("off", "inductor", "aot_eager")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


def compiled(model: nn.Module, backend: str) -> nn.Module:
    """`model` itself for "off", else torch.compile'd with static shapes (each batch size compiled once)."""
    if backend not in BACKENDS:
        raise ValueError(f"torch_compile must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "off":
        return model
    return torch.compile(model, backend=backend, dynamic=False)


def needs_warm_up(backend: str, device: torch.device) -> bool:
    """Whether a run warms up (then undoes it) before `run_start`: always under torch.compile, which compiles
    there; and on CUDA in eager mode too, whose first step pays for the lazy CUDA initialisation (the CUDA
    context's modules, cuBLAS and cuDNN handles and workspaces, cuDNN's benchmark search of each shape, the
    caching allocator's first blocks) that would otherwise fall inside the timed region. Not on an eager CPU
    run: it has no such first-step cost worth a step of init."""
    if backend not in BACKENDS:
        raise ValueError(f"torch_compile must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend != "off" or device.type == "cuda"


def batch_sizes(samples: int, batch: int, *, drop_last: bool) -> list[int]:
    """The distinct batch sizes a loader of `samples` items in batches of `batch` produces."""
    sizes = [batch] if samples >= batch else []
    if samples % batch and not drop_last:
        sizes.append(samples % batch)
    return sizes


@contextlib.contextmanager
def undone(*stateful: Stateful) -> Iterator[None]:
    """Run the block, then restore the state of each module, optimizer or grad scaler, clear the modules'
    gradients, and restore the torch (CPU and CUDA), numpy and Python RNGs."""
    saved = [copy.deepcopy(obj.state_dict()) for obj in stateful]
    rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        for obj, state in zip(stateful, saved, strict=True):
            obj.load_state_dict(state)
            if isinstance(obj, nn.Module):
                obj.zero_grad(set_to_none=True)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
