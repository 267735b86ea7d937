"""Timing for `make bench`: a step's FLOPs and its time over alternating rounds, the straight line that scales
a few BERT layers to 24, and the matmul peak. Each round times every compared step once, in turns, so that
a change in the machine's speed hits each alike; the rounds are kept, so that every figure and every ratio
of two has its spread.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils import flop_counter

from ..common.runtime import distributed
from .scales import FULL_LAYERS, Scale


def _sdpa_cpu(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_sdpa_cpu._get_raw = _sdpa_cpu_backward._get_raw = True
# torch counts the CUDA attention kernels but not the CPU one; the same formulas for it.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
                  torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward}


# glibc's malloc gives a large freed block back to the OS (above its mmap threshold each is a mapping of its
# own), so each step maps, faults in and zeroes its activations afresh. On the 2-core VM that made the first
# rounds of a BERT group up to 2x slower and later ones wander by +-15 %, with several models in one process
# taking turns. These keep freed memory in the heap for the next step, as CUDA's caching allocator does on a
# GPU and as PyTorch's CPU performance guide advises (there with jemalloc or tcmalloc): every case process,
# ours and the peers' alike, starts with them, unless the user has set them. Other allocators ignore them.
STEADY_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


@contextlib.contextmanager
def steady_malloc():
    """STEADY_MALLOC in this process's environment (where not set already) while it spawns a case process,
    then the environment as it was -> the values the spawned process gets."""
    saved = {name: os.environ.get(name) for name in STEADY_MALLOC}
    for name, value in STEADY_MALLOC.items():
        os.environ.setdefault(name, value)
    try:
        yield {name: os.environ[name] for name in STEADY_MALLOC}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(step: Callable[[], None], scale: Scale, device: torch.device) -> dict:
    """FLOPs of one step (counted in the first warm-up step) and the median seconds of the timed steps."""
    return measure_alternating({"step": step}, scale, device)["step"]


def measure_alternating(steps: dict[str, Callable[[], None]], scale: Scale, device: torch.device,
                        uncounted: tuple[str, ...] = ()) -> dict:
    """`measure` for steps that are compared with each other: each run once under the FLOP counter, then
    `warmup_steps - 1` untimed rounds and `timed_steps` timed ones in turns (a, b, a, b, ...), so that a
    change in the machine's speed during the run hits each alike. The untimed rounds run in the timed order:
    what a step finds of the others' memory (on a CPU, the heap's layout after them) is then already as in
    the timed rounds, whose first was otherwise up to 2x slower. The steps named in `uncounted` are not
    FLOP-counted (flops 0): the counter cannot follow nested tensors."""
    out, times = {}, {name: [] for name in steps}
    for name, step in steps.items():
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
        if name in uncounted:
            step()
        else:
            with counter:
                step()
        out[name] = {"flops": counter.get_total_flops() if name not in uncounted else 0}
    for _ in range(scale.warmup_steps - 1):
        for step in steps.values():
            step()
    sync(device)
    for _ in range(scale.timed_steps):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - started)
    return {name: {**out[name], "step_s": statistics.median(times[name]), "rounds": times[name]} for name in steps}


def scaled(points: dict[int, dict]) -> dict:
    """Step time and FLOPs at FULL_LAYERS from measurements at other layer counts (a straight line through
    each point's median), with the line as `terms` of the points' rounds, and each round's own line."""
    if FULL_LAYERS in points:
        return {**points[FULL_LAYERS], "scaled_from": []}  # its own rounds are its one part (`cases._terms`)
    (l1, a), (l2, b) = sorted(points.items())[0], sorted(points.items())[-1]
    out = {}
    for key in ("step_s", "flops"):
        per_layer = max(b[key] - a[key], 0) / (l2 - l1)  # max: timing noise must not give a negative slope
        out[key] = a[key] + (FULL_LAYERS - l1) * per_layer
    if b["step_s"] <= a["step_s"]:  # more layers took no longer: noise swamped the slope, so no figure
        out["unreliable"] = f"{l2} layers timed no slower than {l1}"
    if "rounds" in a and "rounds" in b:  # the line through each round's pair: the scaled figure's own spread
        slopes = [(y - x) / (l2 - l1) for x, y in zip(a["rounds"], b["rounds"], strict=True)]
        out["rounds"] = [x + (FULL_LAYERS - l1) * max(slope, 0) for x, slope in zip(a["rounds"], slopes, strict=True)]
        out["per_layer_s"] = {"median": statistics.median(slopes), "min": min(slopes), "max": max(slopes)}
        # The same line as a sum of the two points (`figures`: each point's median over the rounds).
        k = (FULL_LAYERS - l1) / (l2 - l1)
        out["terms"] = [[1 - k, a["rounds"]], [k, b["rounds"]]]
    return {**out, "scaled_from": sorted(points), "measured": {str(n): p for n, p in sorted(points.items())}}


def with_threads(threads: int, fn: Callable, *args):
    """fn(*args) with `threads` intra-op threads (0: leave torch's default). Module-level, so that a spawned
    process (`__main__.run`) can unpickle it."""
    if threads:
        torch.set_num_threads(threads)
    return fn(*args)


def pick_device(name: str) -> torch.device:
    """The device, its backends tuned as the trainers tune them (`cudnn.benchmark` on CUDA)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    distributed.tune_backends(device)
    return device


def tf32(device: torch.device, convolutions: bool) -> bool | None:
    """Whether this process runs fp32 convolutions (or matmuls) in TF32 on `device`: cuDNN's flag (on by
    PyTorch's default) or cuBLAS's (off by default); None off CUDA, where there is no TF32."""
    if device.type != "cuda":
        return None
    return bool(torch.backends.cudnn.allow_tf32 if convolutions else torch.backends.cuda.matmul.allow_tf32)


def release(device: torch.device) -> None:
    """Between two cases in one process: drop what the last one held, and start its peak memory afresh."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _best_matmul(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, reps: int = 5) -> float:
    """FLOP/s of an (m x k) @ (k x n) matmul: the best of `reps` after 2 untimed."""
    a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
    c = torch.empty(m, n, device=device, dtype=dtype)
    times = []
    for i in range(reps + 2):
        sync(device)
        started = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return 2 * m * k * n / min(times)


def peak_shapes(n: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the peak: square, tall and deep, the same FLOPs each (a machine's best shape differs)."""
    return [(n, n, n), (2 * n, n // 2, n), (n // 2, 2 * n, n)]


def matmul_peak(scale: Scale, device_name: str) -> dict:
    """FLOP/s of fp32 (as this process leaves TF32 for matmuls: off by default), bf16 and, on CUDA, tf32 (fp32
    with TF32 allowed) matmuls: the best over `peak_shapes(scale.matmul_size)`, each the best of 5 after 2."""
    device = pick_device(device_name)
    kinds = [("fp32", torch.float32, None), ("bf16", torch.bfloat16, None)]
    if device.type == "cuda":
        kinds.append(("tf32", torch.float32, True))
    out = {}
    for name, dtype, allow in kinds:
        before = torch.backends.cuda.matmul.allow_tf32
        if allow is not None:
            torch.backends.cuda.matmul.allow_tf32 = allow
        try:
            out[name] = max(_best_matmul(*shape, dtype, device) for shape in peak_shapes(scale.matmul_size))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
    return {"flops_per_s": out, "threads": torch.get_num_threads(), "size": scale.matmul_size,
            "shapes": peak_shapes(scale.matmul_size), "tf32_matmul": tf32(device, convolutions=False),
            "tf32_convolutions": tf32(device, convolutions=True)}
