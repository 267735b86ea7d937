"""The measurements of `make bench`. Each function runs in a fresh process (so that its peak memory is its
own) and returns plain numbers; `__main__.py` lays them side by side.

Timing (`timing.measure_alternating`): the first step of each part runs under torch.utils.flop_counter (it
counts the matmul, convolution and attention FLOPs of forward and backward, and warms up caches and
kernels), then `warmup_steps - 1` untimed rounds and `timed_steps` timed ones, every part of a group in
turns; each part keeps its rounds, and a row is a sum of parts (`terms`, read by `figures`). Peak memory:
the process's peak resident set on CPU (so it includes Python and torch, ~0.3-0.5 GiB), torch's peak
allocation on CUDA.

BERT-Large on a CPU is measured at two layer counts of the real width, both held and timed in the same
rounds, and scaled to 24 layers by a straight line through the measured points (time per step = fixed part
+ layers x per-layer part; FLOPs likewise, which is exact): the embeddings, heads and their optimizer
update are measured, not estimated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from ..closed.bert import data as bert_data
from ..closed.bert import optim as bert_optim
from ..closed.bert import presets as bert_presets
from ..closed.bert import steps as bert_steps
from ..closed.bert.model import BertForPretraining
from ..closed.resnet import presets as resnet_presets
from ..closed.resnet import steps as resnet_steps
from ..common import training
from ..common.data import bert_wiki, imagenet, packing
from ..common.data.imagenet.bench import benchmark
from ..common.runtime import distributed
from ..common.runtime.compile import compiled, undone
from ..common.runtime.precision import notation
from ..open.bert import presets as open_bert_presets
from . import peers
from .scales import Scale
from .timing import measure_alternating, peak_memory_mib, pick_device, scaled, sync, tf32

MAX_PREDICTIONS = 76  # masked positions per sequence of the MLPerf data at 512
MASKED_FRACTION = 0.15


# ---------------------------------------------------------------------------------------------- ResNet-50


RESNET_IMPLS = ("ours", "ours-plain", "peer-defaults", "peer-best")


def resnet_global_batch() -> int:
    """Images per optimizer step in training (the 1xH200 preset's, 1632): one update is shared by them all,
    for ours and the peers alike, not charged to the few images of one timed batch."""
    return resnet_presets.h200().global_batch_size


def resnet(scale: Scale, device_name: str, impls: tuple[str, ...] = RESNET_IMPLS) -> dict[str, dict]:
    """Training steps of ResNet-50 on one batch of random images, timed in turns in this process
    (`measure_alternating`, so drift on a shared machine hits each alike): impl "ours" (the 1xH200 preset's
    speed settings), "ours-plain" (the same code with every speed option off), "peer-defaults" or
    "peer-best" -> {impl: row}. Each step is its forward-backward and its update, timed apart and combined as
    training runs them: the update once per `resnet_global_batch()` images. Peak memory is the process's,
    over all of them."""
    device = pick_device(device_name)
    torch.manual_seed(0)
    images = torch.randn(scale.resnet_batch, 3, scale.resnet_image_size, scale.resnet_image_size)
    labels = torch.randint(1000, (scale.resnet_batch,))
    built = {impl: resnet_step(impl, images, labels, device) for impl in impls}
    steps = {}
    for impl, ((_, forward_backward, update), _, _) in built.items():  # an update always after its backward
        steps |= {f"{impl} fb": forward_backward, f"{impl} update": update}
    measured = measure_alternating(steps, scale, device)
    per = resnet_global_batch()
    return {impl: {**_combined(measured[f"{impl} fb"], measured[f"{impl} update"], scale.resnet_batch, per),
                   "samples": scale.resnet_batch, "precision": notation(precision),
                   "tf32": tf32(device, convolutions=True) if precision == "fp32" else None,
                   "settings": f"{settings}, update per {per} images", "peak_memory_mib": peak_memory_mib(device),
                   "threads": torch.get_num_threads()}
            for impl, (_, precision, settings) in built.items()}


def resnet_step(impl: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """-> ((model, forward_backward, update), precision, settings): one training step of `impl` on (images,
    labels), as two closures. The batch is copied to the device here, once, for ours and the peers alike, so the
    timed steps hold no copy."""
    if impl.startswith("peer"):
        best = impl == "peer-best"
        precision = ("fp16" if device.type == "cuda" else "bf16") if best else "fp32"
        settings = ("autocast " + precision + ", channels_last" if best else "fp32, NCHW") + ", SGD"
        return peers.torchvision_step(images, labels, device, best=best), precision, settings
    cfg = resnet_presets.h200()
    if impl == "ours-plain":
        cfg = dataclasses.replace(cfg, precision="fp32", channels_last=False, optimizer_foreach=False,
                                  torch_compile="off")
    steps, compile_s = our_resnet_step(cfg, images, labels, device)
    settings = (f"{cfg.precision}, {'channels_last' if cfg.channels_last else 'NCHW'}, "
                f"{'foreach' if cfg.optimizer_foreach else 'per-tensor'} LARS"
                + (f", torch.compile {cfg.torch_compile} ({compile_s:.1f} s to compile, untimed)"
                   if cfg.torch_compile != "off" else ""))
    return steps, cfg.precision, settings


def our_resnet_step(cfg: resnet_presets.ResNetConfig, images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device) -> tuple[tuple[torch.nn.Module, Callable[[], None], Callable[[], None]],
                                                   float]:
    """closed/resnet/steps.py's own step (`build`, `to_device`, and `train_step`'s two halves: `micro_step`
    and the update) on one rank, on a batch copied to the device before the closures are returned; learning
    rate 1 (LARS scales it per tensor). With `cfg.torch_compile` on, the model is compiled as the trainer
    compiles it and one step is run and undone here, untimed -> ((model, forward_backward, update), seconds
    that first step took: the compile time; 0 when off)."""
    model, optimizer, replica, scaler = resnet_steps.build(resnet_steps.resnet50(cfg), cfg,
                                                           distributed.Dist(device=device))
    x, y = resnet_steps.to_device(images, labels, cfg, device)
    compile_s = 0.0
    if cfg.torch_compile != "off":
        plain, model = model, compiled(model, cfg.torch_compile)
        started = time.perf_counter()
        with undone(plain, optimizer, scaler):
            resnet_steps.train_step(model, replica, optimizer, scaler, x, y, cfg, 0.0)
            sync(device)
        compile_s = time.perf_counter() - started

    def forward_backward():  # train_step's first half; its second is the update below
        resnet_steps.micro_step(model, replica, scaler, x, y, cfg, reduce=True, first=True)

    def update():
        training.update(replica, optimizer, scaler, 1.0, zero_grad=False)

    return (model, forward_backward, update), compile_s


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
    """closed/bert/steps.py's model, LAMB, clip and step functions (`micro_step`, `optimizer_step`), on one
    device without the loader; each batch is forwarded as its layout says (padded or unpadded rows), and as
    cfg says or the config given with it."""
    model = BertForPretraining(cfg.model_config()).to(device)
    replica = distributed.Dist(device=device).replicate(model, bert_steps.lamb(model, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    clip = functools.partial(bert_optim.clip_grad_norm, list(model.parameters()), cfg.max_grad_norm)
    return _Timed(model.parameters(),
                  lambda batch, c=cfg: bert_steps.micro_step(model, replica, scaler, batch, c, device, reduce=True),
                  lambda: bert_steps.optimizer_step(replica, replica.optimizer, scaler, clip, cfg, step=0))


def hf(scale: Scale, layers: int, seq_len: int, device: torch.device, best: bool) -> tuple[_Timed, str]:
    hidden, heads, intermediate, vocab = scale.bert_shape
    model, forward_backward, update, attention = peers.hf_bert(layers=layers, hidden=hidden, heads=heads,
                                                               intermediate=intermediate, vocab=vocab, seq_len=seq_len,
                                                               device=device, best=best)
    return _Timed(model.parameters(), forward_backward, update), attention


def _combined(fb: dict, update: dict, samples: float, per: int | None = None) -> dict:
    """A row from its two timings: the forward-backward of `samples`, plus their share of one update of a
    global batch of `per` samples (BERT's `global_batch()` when None)."""
    per = per or global_batch()
    step_s = fb["step_s"] + update["step_s"] * samples / per
    # Only the forward-backward's slope decides whether the row is a measurement: the update is a few per
    # cent of the step at most (update_share), so noise in its slope cannot make up the row's figure.
    flag = {"unreliable": f"forward-backward: {fb['unreliable']}"} if "unreliable" in fb else {}
    if "rounds" in fb and "rounds" in update:
        flag["rounds"] = [f + u * samples / per for f, u in zip(fb["rounds"], update["rounds"], strict=True)]
        flag["terms"] = _terms(fb) + [[c * samples / per, r] for c, r in _terms(update)]
    return {**fb, **flag, "step_s": step_s, "forward_backward_s": fb["step_s"], "update_s": update["step_s"],
            "update_share": update["step_s"] * samples / per / step_s, "global_batch": per}


def _terms(timing: dict) -> list[list]:
    """A timing as a sum of timed parts, [[coefficient, rounds], ...] (`figures`): a scaled one's line, or
    itself."""
    return timing.get("terms") or [[1.0, timing["rounds"]]]


def _time_impls(scale: Scale, layer_counts, timed_steps: int, device, make) -> dict[str, dict]:
    """`make(layers)` -> {impl: (_Timed, batch)} for every layer count, all built first and held together, so
    that every forward-backward and every update, at every layer count, is timed in the same rounds (a change
    in the machine's speed then moves both points of a slope alike, instead of one phase's points against the
    other's); -> {impl: {"fb": scaled timing, "update": scaled timing}}."""
    timing = dataclasses.replace(scale, timed_steps=timed_steps)
    steps, held = {}, []
    for layers in layer_counts:
        torch.manual_seed(0)
        made = make(layers)
        held.append(made)
        # Batches on the device before timing, for ours and the peers alike: the copy is the loader's overlap.
        for impl, (timed, batch) in made.items():
            args = batch if isinstance(batch, tuple) else (batch,)
            steps[f"{impl} fb {layers}"] = timed.forward_backward(_on(device, args[0]), *args[1:])
            if impl != "ours-jagged":  # its update is ours': the same model
                steps[f"{impl} update {layers}"] = timed.update
    uncounted = tuple(f"ours-jagged fb {layers}" for layers in layer_counts)
    points: dict[str, dict[str, dict]] = {}
    for name, point in measure_alternating(steps, timing, device, uncounted=uncounted).items():
        impl, part, layers = name.rsplit(" ", 2)
        points.setdefault(impl, {}).setdefault(part, {})[int(layers)] = point
    del held, steps
    return {impl: {part: scaled(p) for part, p in parts.items()} for impl, parts in points.items()}


def _on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _synthetic_items(cfg: bert_presets.BertRunConfig, n: int, lengths: np.ndarray | None = None) -> list[dict]:
    arrays = bert_wiki.synthetic_instances(n, seq_len=cfg.max_seq_length, vocab_size=cfg.vocab_size,
                                           max_pred=cfg.max_predictions_per_seq, seed=0, split="eval", lengths=lengths)
    dataset = bert_data.ArrayDataset(arrays)
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
        made = {"ours": (ours(cfg, device), bert_data.collate(cfg)(items))}
        if "ours-plain" in impls:
            made["ours-plain"] = (ours(plain, device), bert_data.collate(plain)(items))
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
                     "tf32": tf32(device, convolutions=False) if row_precision == "fp32" else None,
                     "padding": float(1 - mask.sum() / mask.numel()), "peak_memory_mib": peak_memory_mib(device),
                     "threads": torch.get_num_threads()}
    return out


def micro_batch() -> int:
    """Sequences per micro-batch on one device of the 1xH200 preset (64): what closed BERT lays out at once."""
    cfg = bert_presets.h200()
    return cfg.global_batch_size // cfg.gradient_accumulation_steps


def closed_layout(lengths: np.ndarray, seq_len: int, timed: int) -> tuple[np.ndarray, dict]:
    """Closed BERT's unpadded layout of one micro-batch (`lengths`, first-fit as `packing.unpadded_batch`) ->
    (about `timed` sequences' worth of its rows, spread evenly over the layout: (k, K) indices, -1 empty;
    the layout's efficiency: sequences per row and real tokens per row slot, of the whole and of the rows
    timed)."""
    rows = packing.first_fit_rows(lengths, seq_len)
    k = min(len(rows), max(1, round(timed * len(rows) / len(lengths))))
    chosen = rows[np.unique(np.linspace(0, len(rows) - 1, k).round().astype(int))]
    members = chosen[chosen >= 0]
    return chosen, {"micro_batch": len(lengths), "rows": len(rows), "sequences_per_row": len(lengths) / len(rows),
                    "real_tokens_per_slot": float(lengths.sum() / (len(rows) * seq_len)),
                    "timed_rows": len(chosen), "timed_sequences": len(members),
                    "timed_real_tokens_per_slot": float(lengths[members].sum() / (len(chosen) * seq_len))}


def _packed(cfg, rows: np.ndarray, lengths: np.ndarray) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The sequences of `rows` (indices into `lengths`, -1 empty) made alone -> (them, padded; them in those
    rows, as `packing.pack_arrays` lays out packed or unpadded rows)."""
    flat = rows[rows >= 0]
    items = _synthetic_items(cfg, len(flat), lengths[flat])
    arrays = {k: torch.stack([item[k] for item in items]).numpy() for k in items[0]}
    local = np.full(rows.shape, -1)
    local[rows >= 0] = np.arange(len(flat))
    return items, {k: torch.from_numpy(v) for k, v in packing.pack_arrays(arrays, local, rows.shape[1]).items()}


def open_packs(lengths: np.ndarray, seq_len: int):
    """Open BERT's offline plan over `lengths` (the 1xH200 open preset's algorithm and depth) -> (plan, packs:
    (P, K) indices into lengths, -1 empty; its efficiency: sequences per row, real tokens per row slot)."""
    open_cfg = open_bert_presets.h200()
    plan = packing.ALGORITHMS[open_cfg.packing](packing.histogram(lengths, seq_len), seq_len,
                                                open_cfg.max_sequences_per_pack)
    packs = packing.assign(lengths, plan, seed=0)
    return plan, packs, {"sequences_per_row": plan.speedup,
                         "real_tokens_per_slot": float(lengths[packs[packs >= 0]].sum() / (len(packs) * seq_len))}


def _wiki_how(layout: dict, open_rows: int, plan, longest: int, shown: dict) -> dict[str, str]:
    """What each Wikipedia row lays out, in words."""
    open_cfg, n, k = open_bert_presets.h200(), layout["timed_sequences"], layout["timed_rows"]
    return {"ours": f"closed BERT's unpadded rows of a micro-batch of {layout['micro_batch']}: "
                   f"{layout['sequences_per_row']:.2f} sequences a row; {k} of its rows timed ({n} sequences), "
                   "credited at that rate, block-diagonal mask",
           "ours-jagged": "the same unpadded rows, unpad_attention=jagged (nested-tensor attention)",
           "ours-padded": f"unpad=false: {n} padded rows",
           "ours-packed": f"open BERT's {open_cfg.packing.upper()} packs (at most {open_cfg.max_sequences_per_pack}, "
                          f"{plan.speedup:.3f} sequences a pack over a plan of {plan.sequences:,}): {open_rows} rows",
           "hf-defaults": f"{n} rows padded to the micro-batch's longest ({longest}), attention "
                          f"{shown['hf-defaults']}, MLM head at every position",
           "hf-best": f"{n} rows padded to the micro-batch's longest ({longest}), attention "
                      f"{shown['hf-best']}, MLM head at every position"}


def bert_wikipedia(scale: Scale, device_name: str) -> dict[str, dict]:
    """BERT-Large at the longer length on sequences of the MLPerf Wikipedia length mix (bert_wiki's
    `wikipedia_lengths`: about half of a padded row is padding): ours as closed BERT trains (the unpadded
    layout of one micro-batch of the 1xH200 preset, `closed_layout`, of which about scale.wiki_batch
    sequences' rows are timed), ours on those sequences' padded rows (`unpad=false`), ours on rows packed
    offline as open BERT packs the whole dataset (the 1xH200 open preset's algorithm and depth), and HF
    transformers with its defaults and at its best (padded rows, trimmed to the micro-batch's longest
    sequence), every forward-backward and update timed in turns: -> {impl: row}."""
    device = pick_device(device_name)
    seq_len, precision = scale.bert_seq_lengths[1], bert_presets.h200().precision
    lengths = bert_wiki.wikipedia_lengths(scale.packing_sample, seq_len, seed=0)
    plan, packs, open_layout = open_packs(lengths, seq_len)
    micro = lengths[:micro_batch()]
    closed_rows, layout = closed_layout(micro, seq_len, scale.wiki_batch)
    n, longest, shown = layout["timed_sequences"], int(micro.max()), {}
    open_rows = max(1, round(n / plan.speedup))  # about the same sequences, as packs

    def make(layers):
        cfg = bert_config(scale, seq_len, layers, precision)
        jagged = dataclasses.replace(cfg, unpad_attention="jagged")
        items, unpadded = _packed(cfg, closed_rows, micro)
        padded = torch.utils.data.default_collate(items)
        open_batch = _packed(cfg, packs[:open_rows], lengths)[1]
        trimmed = {k: v[:, :longest] if v.dim() == 2 and v.shape[1] == seq_len else v for k, v in padded.items()}
        shown.update(open_sequences=int(open_batch["nsp_weights"].sum()), padding=float(
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
    k = layout["timed_rows"]
    rows_of = {"ours": k, "ours-jagged": k, "ours-padded": n, "ours-packed": open_rows, "hf-defaults": n, "hf-best": n}
    # A row costs the same whichever sequences fill it: the timed rows are credited with the sequences per row
    # of the whole micro-batch's layout, as the packed rows are with the plan's (FLOPs scaled alike).
    unpadded = k * layout["sequences_per_row"]
    sequences = {impl: n for impl in rows_of} | {"ours": unpadded, "ours-jagged": unpadded,
                                                 "ours-packed": open_rows * plan.speedup}
    how, out = _wiki_how(layout, open_rows, plan, longest, shown), {}
    for impl, rows_n in rows_of.items():
        row_precision = "fp32" if impl == "hf-defaults" else precision
        optimizer = "fused AdamW" if impl.startswith("hf") else "foreach LAMB"
        out[impl] = {**_combined(timings[impl]["fb"], timings[impl]["update"], sequences[impl]),
                     "samples": sequences[impl], "rows": rows_n, "precision": notation(row_precision),
                     "tf32": tf32(device, convolutions=False) if row_precision == "fp32" else None,
                     "settings": f"{row_precision}, {how[impl]}, {optimizer} per {global_batch()} sequences",
                     "padding": shown["padding"], "peak_memory_mib": peak_memory_mib(device),
                     "threads": torch.get_num_threads()}
    for impl in ("ours", "ours-jagged"):
        out[impl] |= {"layout": layout, "flops": out[impl]["flops"] * unpadded / n}
    out["ours-packed"] |= {"timed_sequences": shown["open_sequences"], "layout": open_layout}
    return out


# ---------------------------------------------------------------------------------------------- ImageNet decode


DECODE_IMPLS = ("ours", "plain")


def decode(scale: Scale) -> dict[str, dict]:
    """Images per CPU-second, one thread, of JPEG decode + training augmentation to 224 px: "ours"
    (common/data/imagenet/ as training uses it: the reference's preprocessing: TF's crop sampler,
    full-size libjpeg-turbo decode, TF1 bilinear resize, rounded to uint8 for the device to normalise) and
    "plain" (torchvision's transforms on PIL, in plain PIL and torch, normalised float32), in
    `scale.timed_steps` alternating rounds of `scale.decode_seconds` each: -> {impl: row}."""
    transforms = {"ours": imagenet.train_transform(224, uint8=True), "plain": peers.torchvision_train_transform}
    rates = {impl: [] for impl in DECODE_IMPLS}
    for _ in range(scale.timed_steps):
        for impl in DECODE_IMPLS:
            rates[impl].append(benchmark(transforms[impl], seconds=scale.decode_seconds))
    settings = {"ours": "full-size fast-DCT decode, TF crop sampler, TF1 bilinear resize, uint8 out",
                "plain": "full decode, PIL crop + bilinear resize, ToTensor, Normalize"}
    return {impl: {"samples_per_s": statistics.median(rates[impl]), "samples_per_s_rounds": rates[impl],
                   "settings": settings[impl], "threads": 1, "peak_memory_mib": peak_memory_mib(torch.device("cpu"))}
            for impl in DECODE_IMPLS}
