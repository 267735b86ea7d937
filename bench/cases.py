"""The measurements of `make bench`. Each function runs in a fresh process (so that its peak memory is its
own) and returns plain numbers; `__main__.py` lays them side by side.

Timing: the first step runs under torch.utils.flop_counter (it counts the matmul, convolution and attention
FLOPs of forward and backward, and warms up caches and kernels), then `warmup_steps - 1` more untimed
steps, then the median of `timed_steps` steps. Peak memory: the process's peak resident set on CPU (so it
includes Python and torch, ~0.3-0.5 GiB), torch's peak allocation on CUDA.

BERT-Large on a CPU is measured at a few layers of the real width and scaled to 24 layers by a straight
line through the measured points (time per step = fixed part + layers x per-layer part; FLOPs likewise,
which is exact): the embeddings, heads and their optimizer update are measured, not estimated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils import flop_counter

from mlperf_submission.bench import peers
from mlperf_submission.closed.bert import optim as bert_optim
from mlperf_submission.closed.bert import presets as bert_presets
from mlperf_submission.closed.bert import train as bert_train
from mlperf_submission.closed.bert.model import BertConfig, BertForPretraining
from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.closed.resnet import train as resnet_train
from mlperf_submission.common.data import bert_wiki, imagenet, packing
from mlperf_submission.common.data.imagenet.bench import benchmark
from mlperf_submission.common.runtime import distributed
from mlperf_submission.common.runtime.compile import compiled, undone
from mlperf_submission.common.runtime.precision import notation
from mlperf_submission.open.bert import presets as open_bert_presets

FULL_LAYERS = BertConfig().num_hidden_layers  # 24
MAX_PREDICTIONS = 76  # masked positions per sequence of the MLPerf data at 512
MASKED_FRACTION = 0.15


@dataclass(frozen=True, kw_only=True)
class Scale:
    name: str
    matmul_size: int                      # n of the n x n x n matmuls that measure the peak
    resnet_image_size: int
    resnet_batch: int
    bert_seq_lengths: tuple[int, int]     # "seq 128" and "seq 512"
    bert_batches: tuple[int, int]         # sequences per step at each length
    bert_layers: tuple[int, ...]          # layer counts run; scaled to FULL_LAYERS when not already there
    bert_shape: tuple[int, int, int, int] = (1024, 16, 4096, 30522)  # hidden, heads, intermediate, vocab
    wiki_batch: int                       # Wikipedia-length sequences per micro-batch at the longer length
    wiki_layers: tuple[int, ...]          # layer counts of the Wikipedia rows (bert_layers' rule)
    wiki_timed_steps: int                 # their timed steps: the ratio of two extrapolations needs more
    packing_sample: int = 16384           # Wikipedia-length sequences drawn and packed into open BERT's plan
    warmup_steps: int = 1
    timed_steps: int = 3
    decode_seconds: float = 3.0           # CPU-seconds per decode measurement


def cpu() -> Scale:
    """A 2-core CPU: whole ResNet-50 at 224 px, BERT-Large at 1 and 2 layers, 1,024 tokens per step."""
    return Scale(name="cpu", matmul_size=2048, resnet_image_size=224, resnet_batch=16, bert_seq_lengths=(128, 512),
                 bert_batches=(8, 2), bert_layers=(1, 3), wiki_batch=8, wiki_layers=(1, 2), wiki_timed_steps=4)


def gpu() -> Scale:
    """One GPU: whole models at batches that keep a modern GPU busy."""
    return Scale(name="gpu", matmul_size=8192, resnet_image_size=224, resnet_batch=256, bert_seq_lengths=(128, 512),
                 bert_batches=(256, 32), bert_layers=(FULL_LAYERS,), wiki_batch=64,
                 wiki_layers=(FULL_LAYERS,), wiki_timed_steps=10, warmup_steps=3,
                 timed_steps=10)


def quick() -> Scale:
    """Seconds, for the tests: every code path at toy sizes. Its figures mean nothing."""
    return Scale(name="quick", matmul_size=128, resnet_image_size=32, resnet_batch=2, bert_seq_lengths=(16, 32),
                 bert_batches=(2, 2), bert_layers=(1, 2), bert_shape=(64, 2, 128, 512), wiki_batch=4,
                 wiki_layers=(1, 2), wiki_timed_steps=1, packing_sample=256,
                 timed_steps=1, decode_seconds=0.2)


SCALES = {"cpu": cpu, "gpu": gpu, "quick": quick}


# ---------------------------------------------------------------------------------------------- measuring


def _sdpa_cpu(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_sdpa_cpu._get_raw = _sdpa_cpu_backward._get_raw = True
# torch counts the CUDA attention kernels but not the CPU one; the same formulas for it.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
                  torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward}


def _sync(device: torch.device) -> None:
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
    """`measure` for steps that are compared with each other: warmed up one after the other, then timed in
    turns (a, b, a, b, ...), so that a change in the machine's speed during the run hits each alike. The
    steps named in `uncounted` are not FLOP-counted (flops 0): the counter cannot follow nested tensors."""
    out, times = {}, {name: [] for name in steps}
    for name, step in steps.items():
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
        if name in uncounted:
            step()
        else:
            with counter:
                step()
        for _ in range(scale.warmup_steps - 1):
            step()
        out[name] = {"flops": counter.get_total_flops() if name not in uncounted else 0}
    _sync(device)
    for _ in range(scale.timed_steps):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - started)
    return {name: {**out[name], "step_s": statistics.median(times[name])} for name in steps}


def scaled(points: dict[int, dict]) -> dict:
    """Step time and FLOPs at FULL_LAYERS from measurements at other layer counts (a straight line)."""
    if FULL_LAYERS in points:
        return {**points[FULL_LAYERS], "scaled_from": []}
    (l1, a), (l2, b) = sorted(points.items())[0], sorted(points.items())[-1]
    out = {}
    for key in ("step_s", "flops"):
        per_layer = max(b[key] - a[key], 0) / (l2 - l1)  # max: timing noise must not give a negative slope
        out[key] = a[key] + (FULL_LAYERS - l1) * per_layer
    if b["step_s"] <= a["step_s"]:  # more layers took no longer: noise swamped the slope, so no figure
        out["unreliable"] = f"{l2} layers timed no slower than {l1}"
    return {**out, "scaled_from": sorted(points), "measured": {str(n): p for n, p in sorted(points.items())}}


def with_threads(threads: int, fn: Callable, *args):
    """fn(*args) with `threads` intra-op threads (0: leave torch's default). Module-level, so that a spawned
    process (`__main__.run`) can unpickle it."""
    if threads:
        torch.set_num_threads(threads)
    return fn(*args)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def matmul_peak(scale: Scale, device_name: str) -> dict:
    """FLOP/s of an n x n x n matmul in fp32 and bf16: the best of 5 after 2 untimed."""
    device = pick_device(device_name)
    n, out = scale.matmul_size, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        c = torch.empty(n, n, device=device, dtype=dtype)
        times = []
        for i in range(7):
            _sync(device)
            started = time.perf_counter()
            torch.mm(a, b, out=c)
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - started)
        out[name] = 2 * n**3 / min(times)
    return {"flops_per_s": out, "threads": torch.get_num_threads(), "size": n}


# ---------------------------------------------------------------------------------------------- ResNet-50


RESNET_IMPLS = ("ours", "ours-plain", "peer-defaults", "peer-best")


def resnet(scale: Scale, device_name: str, impls: tuple[str, ...] = RESNET_IMPLS) -> dict[str, dict]:
    """Training steps of ResNet-50 on one batch of random images, timed in turns in this process
    (`measure_alternating`, so drift on a shared machine hits each alike): impl "ours" (the 1xH200 preset's
    speed settings), "ours-plain" (the same code with every speed option off), "peer-defaults" or
    "peer-best" -> {impl: row}. Peak memory is the process's, over all of them."""
    device = pick_device(device_name)
    torch.manual_seed(0)
    images = torch.randn(scale.resnet_batch, 3, scale.resnet_image_size, scale.resnet_image_size)
    labels = torch.randint(1000, (scale.resnet_batch,))
    built = {impl: resnet_step(impl, images, labels, device) for impl in impls}
    measured = measure_alternating({impl: step for impl, (step, _, _) in built.items()}, scale, device)
    return {impl: {**measured[impl], "samples": scale.resnet_batch, "precision": notation(precision),
                   "settings": settings, "peak_memory_mib": peak_memory_mib(device),
                   "threads": torch.get_num_threads()}
            for impl, (_, precision, settings) in built.items()}


def resnet_step(impl: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """-> (step, precision, settings): one training step of `impl` on (images, labels), a closure. The batch
    is copied to the device here, once, for ours and the peers alike, so the timed step holds no copy."""
    if impl.startswith("peer"):
        best = impl == "peer-best"
        precision = ("fp16" if device.type == "cuda" else "bf16") if best else "fp32"
        settings = ("autocast " + precision + ", channels_last" if best else "fp32, NCHW") + ", SGD"
        return peers.torchvision_step(images, labels, device, best=best), precision, settings
    cfg = resnet_presets.h200()
    if impl == "ours-plain":
        cfg = dataclasses.replace(cfg, precision="fp32", channels_last=False, optimizer_foreach=False,
                                  torch_compile="off")
    step, compile_s = our_resnet_step(cfg, images, labels, device)
    settings = (f"{cfg.precision}, {'channels_last' if cfg.channels_last else 'NCHW'}, "
                f"{'foreach' if cfg.optimizer_foreach else 'per-tensor'} LARS"
                + (f", torch.compile {cfg.torch_compile} ({compile_s:.1f} s to compile, untimed)"
                   if cfg.torch_compile != "off" else ""))
    return step, cfg.precision, settings


def our_resnet_step(cfg: resnet_presets.ResNetConfig, images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device) -> tuple[Callable[[], None], float]:
    """closed/resnet/train.py's own step (`build`, `to_device`, `train_step`) on one rank, on a batch
    copied to the device before the closure is returned; learning rate 1 (LARS scales it per tensor).
    With `cfg.torch_compile` on, the model is compiled as the trainer compiles it and one step is run and
    undone here, untimed -> (step, seconds that first step took: the compile time; 0 when off)."""
    model, optimizer, replica, scaler = resnet_train.build(cfg, distributed.Dist(device=device))
    x, y = resnet_train.to_device(images, labels, cfg, device)
    compile_s = 0.0
    if cfg.torch_compile != "off":
        plain, model = model, compiled(model, cfg.torch_compile)
        started = time.perf_counter()
        with undone(plain, optimizer, scaler):
            resnet_train.train_step(model, replica, optimizer, scaler, x, y, cfg, 0.0)
            _sync(device)
        compile_s = time.perf_counter() - started

    def step():
        resnet_train.train_step(model, replica, optimizer, scaler, x, y, cfg, 1.0)

    return step, compile_s


# ---------------------------------------------------------------------------------------------- BERT-Large


def predictions(seq_len: int) -> int:
    """Masked positions per sequence: 15 % of the tokens, at most 76 (20 at 128, 76 at 512, as MLPerf's)."""
    return min(MAX_PREDICTIONS, math.ceil(MASKED_FRACTION * seq_len))


def bert_config(scale: Scale, seq_len: int, layers: int, precision: str, **changes) -> bert_presets.BertRunConfig:
    hidden, heads, intermediate, vocab = scale.bert_shape
    return dataclasses.replace(bert_presets.h200(), num_hidden_layers=layers, hidden_size=hidden,
                               num_attention_heads=heads, intermediate_size=intermediate, vocab_size=vocab,
                               max_seq_length=seq_len, max_predictions_per_seq=predictions(seq_len),
                               precision=precision, **changes)


def global_batch() -> int:
    """Sequences per optimizer step in training (the 1xH200 preset's): each row's update is charged to the
    sequences of a whole global batch, as in training, not to the few of one timed micro-batch."""
    return bert_presets.h200().global_batch_size


class _Timed:
    """One model's forward-backward and optimizer update as two steps to time. The update puts back the
    gradients of the last forward-backward first (the update sets them to None), so that it always has them."""

    def __init__(self, params, forward_backward, update):
        self.params, self._forward_backward, self._update, self._grads = list(params), forward_backward, update, None

    def forward_backward(self, batch, *args) -> Callable[[], None]:
        return functools.partial(self._forward_backward, batch, *args)

    def update(self) -> None:
        if self._grads is None or any(p.grad is not None for p in self.params):
            self._grads = [p.grad for p in self.params]
        for p, g in zip(self.params, self._grads, strict=True):
            p.grad = g
        self._update()


def ours(cfg: bert_presets.BertRunConfig, device: torch.device) -> _Timed:
    """closed/bert/train.py's model, LAMB, clip and step functions (`micro_step`, `optimizer_step`), on one
    device without the loader; each batch is forwarded as its layout says (padded or unpadded rows), and as
    cfg says or the config given with it."""
    model = BertForPretraining(cfg.model_config()).to(device)
    replica = distributed.Dist(device=device).replicate(model, bert_train.lamb(model, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    clip = functools.partial(bert_optim.clip_grad_norm, list(model.parameters()), cfg.max_grad_norm)
    return _Timed(model.parameters(),
                  lambda batch, c=cfg: bert_train.micro_step(model, replica, scaler, batch, c, device, reduce=True),
                  lambda: bert_train.optimizer_step(replica, replica.optimizer, scaler, clip, cfg, step=0))


def hf(scale: Scale, layers: int, seq_len: int, device: torch.device, best: bool) -> tuple[_Timed, str]:
    hidden, heads, intermediate, vocab = scale.bert_shape
    model, forward_backward, update, attention = peers.hf_bert(layers=layers, hidden=hidden, heads=heads,
                                                               intermediate=intermediate, vocab=vocab, seq_len=seq_len,
                                                               device=device, best=best)
    return _Timed(model.parameters(), forward_backward, update), attention


def _combined(fb: dict, update: dict, sequences: float) -> dict:
    """A row from its two timings: the forward-backward of `sequences`, plus their share of one update of a
    global batch."""
    step_s = fb["step_s"] + update["step_s"] * sequences / global_batch()
    # Only the forward-backward's slope decides whether the row is a measurement: the update is a few per
    # cent of the step at most (update_share), so noise in its slope cannot make up the row's figure.
    flag = {"unreliable": f"forward-backward: {fb['unreliable']}"} if "unreliable" in fb else {}
    return {**fb, **flag, "step_s": step_s,
            "forward_backward_s": fb["step_s"], "update_s": update["step_s"],
            "update_share": update["step_s"] * sequences / global_batch() / step_s, "global_batch": global_batch()}


def _time_impls(scale: Scale, layer_counts, timed_steps: int, device, make) -> dict[str, dict]:
    """Per layer count, `make(layers)` -> {impl: (_Timed, batch)}; every forward-backward and every update is
    timed in turns in this process; -> {impl: {"fb": scaled timing, "update": scaled timing}}."""
    points: dict[str, dict[str, dict]] = {}
    timing = dataclasses.replace(scale, timed_steps=timed_steps)
    for layers in layer_counts:
        torch.manual_seed(0)
        made = make(layers)
        # Batches on the device before timing, for ours and the peers alike: the copy is the loader's overlap.
        steps = {f"{impl} fb": timed.forward_backward(_on(device, args[0]), *args[1:])
                 for impl, (timed, batch) in made.items() for args in [batch if isinstance(batch, tuple) else (batch,)]}
        steps |= {f"{impl} update": timed.update for impl, (timed, _) in made.items() if impl != "ours-jagged"}
        for name, point in measure_alternating(steps, timing, device, uncounted=("ours-jagged fb",)).items():
            impl, part = name.rsplit(" ", 1)
            points.setdefault(impl, {}).setdefault(part, {})[layers] = point
        del made, steps
    return {impl: {part: scaled(p) for part, p in parts.items()} for impl, parts in points.items()}


def _on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _synthetic_items(cfg: bert_presets.BertRunConfig, n: int, lengths: np.ndarray | None = None) -> list[dict]:
    arrays = bert_wiki.synthetic_instances(n, seq_len=cfg.max_seq_length, vocab_size=cfg.vocab_size,
                                           max_pred=cfg.max_predictions_per_seq, seed=0, split="eval", lengths=lengths)
    dataset = bert_train.ArrayDataset(arrays)
    return [dataset[i] for i in range(n)]


def bert(scale: Scale, device_name: str, which: int) -> dict[str, dict]:
    """BERT-Large at scale.bert_seq_lengths[which] on full rows of the synthetic corpus (the MLPerf
    reference's length rule: 90 % full-length): ours (the 1xH200 preset's settings, unpadded rows), ours with
    the speed options off (fp32, per-tensor LAMB; at the shorter length), HF transformers with its defaults
    and at its best, timed in turns: -> {impl: row}."""
    device = pick_device(device_name)
    seq_len, batch_size = scale.bert_seq_lengths[which], scale.bert_batches[which]
    precision = bert_presets.h200().precision
    impls = ("ours", "ours-plain", "hf-defaults", "hf-best") if which == 0 else ("ours", "hf-defaults", "hf-best")
    padded = {}

    def make(layers):
        cfg = bert_config(scale, seq_len, layers, precision)
        plain = dataclasses.replace(cfg, precision="fp32", optimizer_foreach=False)
        items = _synthetic_items(cfg, batch_size)
        padded["batch"] = torch.utils.data.default_collate(items)
        made = {"ours": (ours(cfg, device), bert_train.collate(cfg)(items))}
        if "ours-plain" in impls:
            made["ours-plain"] = (ours(plain, device), bert_train.collate(plain)(items))
        for impl in ("hf-defaults", "hf-best"):
            timed, padded[impl] = hf(scale, layers, seq_len, device, best=impl == "hf-best")
            made[impl] = (timed, padded["batch"])
        return made

    timings = _time_impls(scale, scale.bert_layers, scale.timed_steps, device, make)
    mask = padded["batch"]["input_mask"]
    out = {}
    for impl in impls:
        t = timings[impl]
        row_precision = "fp32" if impl in ("ours-plain", "hf-defaults") else precision
        if impl.startswith("hf"):
            settings = (f"{row_precision}, attention {padded[impl]}, MLM head at every position, fused AdamW, "
                        "padded rows")
        else:
            settings = (f"{row_precision}, SDPA, MLM head at masked positions, "
                        f"{'per-tensor' if impl == 'ours-plain' else 'foreach'} LAMB, unpadded rows")
        out[impl] = {**_combined(t["fb"], t["update"], batch_size), "samples": batch_size,
                     "precision": notation(row_precision), "settings": settings,
                     "padding": float(1 - mask.sum() / mask.numel()), "peak_memory_mib": peak_memory_mib(device),
                     "threads": torch.get_num_threads()}
    return out


def bert_wikipedia(scale: Scale, device_name: str) -> dict[str, dict]:
    """BERT-Large at the longer length on sequences of the MLPerf Wikipedia length mix (bert_wiki's
    `wikipedia_lengths`: about half of a padded row is padding): ours as closed BERT trains (each batch's
    sequences in unpadded rows, `packing.unpadded_batch`), ours on the padded rows (`unpad=false`), ours on
    rows packed offline as open BERT packs the whole dataset (the 1xH200 open preset's algorithm and depth,
    `packing.pack_arrays`), and HF transformers with its defaults and at its best (rows padded to the batch's
    longest sequence), every forward-backward and update timed in turns: -> {impl: row}."""
    device = pick_device(device_name)
    seq_len, n, precision = scale.bert_seq_lengths[1], scale.wiki_batch, bert_presets.h200().precision
    lengths = bert_wiki.wikipedia_lengths(scale.packing_sample, seq_len, seed=0)
    open_cfg = open_bert_presets.h200()
    plan = packing.ALGORITHMS[open_cfg.packing](packing.histogram(lengths, seq_len), seq_len,
                                                open_cfg.max_sequences_per_pack)
    packs = packing.assign(lengths, plan, seed=0)
    open_rows = max(1, round(n / plan.speedup))  # about the micro-batch's sequences, as packs
    shown = {}

    def make(layers):
        cfg = bert_config(scale, seq_len, layers, precision)
        jagged = dataclasses.replace(cfg, unpad_attention="jagged")
        batch = _synthetic_items(cfg, n, lengths[:n])
        padded = torch.utils.data.default_collate(batch)
        members = packs[:open_rows]
        flat = members[members >= 0]  # the sequences of the first packs, made alone, then packed as planned
        arrays = {k: torch.stack([item[k] for item in _synthetic_items(cfg, len(flat), lengths[flat])]).numpy()
                  for k in batch[0]}
        local = np.full(members.shape, -1)
        local[members >= 0] = np.arange(len(flat))
        open_batch = {k: torch.from_numpy(v) for k, v in
                      packing.pack_arrays(arrays, local, open_cfg.max_sequences_per_pack).items()}
        longest = int(padded["input_mask"].sum(1).max())
        trimmed = {k: v[:, :longest] if v.dim() == 2 and v.shape[1] == seq_len else v for k, v in padded.items()}
        unpadded = bert_train.unpadded_collate(batch)
        shown.update(rows=len(unpadded["input_ids"]), longest=longest,
                     open_sequences=int(open_batch["nsp_weights"].sum()), padding=float(
                         1 - padded["input_mask"].sum() / padded["input_mask"].numel()))
        model = ours(cfg, device)  # one model for our three layouts: they then share its memory
        made = {"ours": (model, unpadded), "ours-jagged": (model, (unpadded, jagged)), "ours-padded": (model, padded),
                "ours-packed": (model, open_batch)}
        for impl in ("hf-defaults", "hf-best"):
            timed, shown[impl] = hf(scale, layers, seq_len, device, best=impl == "hf-best")
            made[impl] = (timed, trimmed)
        return made

    timings = _time_impls(scale, scale.wiki_layers, scale.wiki_timed_steps, device, make)
    # One model, one update; the jagged forward-backward is not counted: the same useful work as ours.
    timings["ours-jagged"] = {"fb": {**timings["ours-jagged"]["fb"], "flops": timings["ours"]["fb"]["flops"]},
                              "update": timings["ours"]["update"]}
    rows_of = {"ours": shown["rows"], "ours-jagged": shown["rows"], "ours-padded": n, "ours-packed": open_rows,
               "hf-defaults": n, "hf-best": n}
    sequences = {impl: n for impl in rows_of} | {"ours-packed": open_rows * plan.speedup}
    how = {"ours": f"closed BERT's unpadded rows: {n} sequences in {shown['rows']} rows, block-diagonal mask",
           "ours-jagged": "the same unpadded rows, unpad_attention=jagged (nested-tensor attention)",
           "ours-padded": f"unpad=false: {n} padded rows",
           "ours-packed": f"open BERT's {open_cfg.packing.upper()} packs (at most {open_cfg.max_sequences_per_pack}, "
                          f"{plan.speedup:.3f} sequences a pack over a plan of {plan.sequences:,}): {open_rows} rows",
           "hf-defaults": f"{n} rows padded to the batch's longest ({shown['longest']}), attention "
                          f"{shown['hf-defaults']}, MLM head at every position",
           "hf-best": f"{n} rows padded to the batch's longest ({shown['longest']}), attention "
                      f"{shown['hf-best']}, MLM head at every position"}
    out = {}
    for impl, rows_n in rows_of.items():
        row_precision = "fp32" if impl == "hf-defaults" else precision
        optimizer = "fused AdamW" if impl.startswith("hf") else "foreach LAMB"
        out[impl] = {**_combined(timings[impl]["fb"], timings[impl]["update"], sequences[impl]),
                     "samples": sequences[impl], "rows": rows_n, "precision": notation(row_precision),
                     "settings": f"{row_precision}, {how[impl]}, {optimizer} per {global_batch()} sequences",
                     "padding": shown["padding"], "peak_memory_mib": peak_memory_mib(device),
                     "threads": torch.get_num_threads()}
    out["ours-packed"]["timed_sequences"] = shown["open_sequences"]
    return out


# ---------------------------------------------------------------------------------------------- ImageNet decode


def decode(scale: Scale, impl: str) -> dict:
    """Images per CPU-second, one thread, of JPEG decode + training augmentation to 224 px: "ours"
    (common/data/imagenet/ as training uses it: the reference's preprocessing: TF's crop sampler,
    full-size libjpeg-turbo decode, TF1 bilinear resize, rounded to uint8 for the device to normalise) or
    "plain" (torchvision's transforms on PIL, in plain PIL and torch, normalised float32)."""
    transform = imagenet.train_transform(224, uint8=True) if impl == "ours" else peers.torchvision_train_transform
    rate = benchmark(transform, seconds=scale.decode_seconds)
    settings = ("full-size fast-DCT decode, TF crop sampler, TF1 bilinear resize, uint8 out" if impl == "ours"
                else "full decode, PIL crop + bilinear resize, ToTensor, Normalize")
    return {"samples_per_s": rate, "settings": settings, "threads": 1,
            "peak_memory_mib": peak_memory_mib(torch.device("cpu"))}
