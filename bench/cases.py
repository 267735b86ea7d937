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
from pathlib import Path

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
from mlperf_submission.common.runtime import distributed
from mlperf_submission.common.runtime.precision import autocast, notation
from mlperf_submission.open.bert import presets as open_bert_presets

FULL_LAYERS = BertConfig().num_hidden_layers  # 24
MAX_PREDICTIONS = 76  # masked positions per sequence of the MLPerf data at 512
MASKED_FRACTION = 0.15
WIKIPEDIA_HISTOGRAM = Path(bert_wiki.__file__).with_name("wikipedia_seqlen_histogram.txt")


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
    packed_rows: int                      # rows of the longer length per step, packed or padded
    packed_layers: tuple[int, ...]        # layer counts of the packed-vs-padded rows (bert_layers' rule)
    packed_timed_steps: int               # their timed steps: the ratio of two extrapolations needs more
    packing_sample: int = 16384           # Wikipedia-length sequences drawn and packed into the plan
    warmup_steps: int = 1
    timed_steps: int = 3
    decode_seconds: float = 3.0           # CPU-seconds per decode measurement


def cpu() -> Scale:
    """A 2-core CPU: whole ResNet-50 at 224 px, BERT-Large at 1 and 2 layers, 1,024 tokens per step."""
    return Scale(name="cpu", matmul_size=2048, resnet_image_size=224, resnet_batch=16, bert_seq_lengths=(128, 512),
                 bert_batches=(8, 2), bert_layers=(1, 2), packed_rows=4,
                 packed_layers=(1, 4), packed_timed_steps=6)


def gpu() -> Scale:
    """One GPU: whole models at batches that keep a modern GPU busy."""
    return Scale(name="gpu", matmul_size=8192, resnet_image_size=224, resnet_batch=256, bert_seq_lengths=(128, 512),
                 bert_batches=(256, 32), bert_layers=(FULL_LAYERS,), packed_rows=32,
                 packed_layers=(FULL_LAYERS,), packed_timed_steps=10, warmup_steps=3,
                 timed_steps=10)


def quick() -> Scale:
    """Seconds, for the tests: every code path at toy sizes. Its figures mean nothing."""
    return Scale(name="quick", matmul_size=128, resnet_image_size=32, resnet_batch=2, bert_seq_lengths=(16, 32),
                 bert_batches=(2, 2), bert_layers=(1, 2), bert_shape=(64, 2, 128, 512), packed_rows=2,
                 packed_layers=(1, 2), packed_timed_steps=1, packing_sample=256,
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


def measure_alternating(steps: dict[str, Callable[[], None]], scale: Scale, device: torch.device) -> dict:
    """`measure` for steps that are compared with each other: warmed up one after the other, then timed in
    turns (a, b, a, b, ...), so that a change in the machine's speed during the run hits each alike."""
    out, times = {}, {name: [] for name in steps}
    for name, step in steps.items():
        with flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
            step()
        for _ in range(scale.warmup_steps - 1):
            step()
        out[name] = {"flops": counter.get_total_flops()}
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
        cfg = dataclasses.replace(cfg, precision="fp32", channels_last=False, optimizer_foreach=False)
    settings = (f"{cfg.precision}, {'channels_last' if cfg.channels_last else 'NCHW'}, "
                f"{'foreach' if cfg.optimizer_foreach else 'per-tensor'} LARS")
    return our_resnet_step(cfg, images, labels, device), cfg.precision, settings


def our_resnet_step(cfg: resnet_presets.ResNetConfig, images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device):
    """closed/resnet/train.py's own step (`build`, `to_device`, `train_step`) on one rank, on a batch
    copied to the device before the closure is returned; learning rate 1 (LARS scales it per tensor)."""
    model, optimizer, replica, scaler = resnet_train.build(cfg, distributed.Dist(device=device))
    x, y = resnet_train.to_device(images, labels, cfg, device)

    def step():
        resnet_train.train_step(model, replica, optimizer, scaler, x, y, cfg, 1.0)

    return step


# ---------------------------------------------------------------------------------------------- BERT-Large


def predictions(seq_len: int) -> int:
    """Masked positions per sequence: 15 % of the tokens, at most 76 (20 at 128, 76 at 512, as MLPerf's)."""
    return min(MAX_PREDICTIONS, math.ceil(MASKED_FRACTION * seq_len))


def bert_config(scale: Scale, seq_len: int, layers: int, precision: str) -> bert_presets.BertRunConfig:
    hidden, heads, intermediate, vocab = scale.bert_shape
    return dataclasses.replace(bert_presets.h200(), num_hidden_layers=layers, hidden_size=hidden,
                               num_attention_heads=heads, intermediate_size=intermediate, vocab_size=vocab,
                               max_seq_length=seq_len, max_predictions_per_seq=predictions(seq_len),
                               precision=precision)


def bert(scale: Scale, device_name: str, which: int, impl: str) -> dict:
    """Training steps of BERT-Large at scale.bert_seq_lengths[which] on the synthetic corpus (the MLPerf
    reference's length rule: 90 % full-length): impl "ours" (the 1xH200 preset's settings), "ours-plain"
    (fp32, per-tensor LAMB), "hf-defaults" or "hf-best"."""
    device = pick_device(device_name)
    seq_len, batch_size = scale.bert_seq_lengths[which], scale.bert_batches[which]
    ours = bert_presets.h200()
    precision = "fp32" if impl in ("ours-plain", "hf-defaults") else ours.precision
    points, settings = {}, ""
    for layers in scale.bert_layers:
        torch.manual_seed(0)
        cfg = bert_config(scale, seq_len, layers, precision)
        batch = bert_train.synthetic_batch(cfg, batch_size)
        if impl.startswith("hf"):
            hidden, heads, intermediate, vocab = scale.bert_shape
            step, attention = peers.hf_bert_step(batch, layers=layers, hidden=hidden, heads=heads,
                                                 intermediate=intermediate, vocab=vocab, device=device,
                                                 best=impl == "hf-best")
            settings = f"{precision}, attention {attention}, MLM head at every position, fused AdamW"
        else:
            foreach = impl == "ours"
            step = _our_bert_step(dataclasses.replace(cfg, optimizer_foreach=foreach), batch, device)
            settings = (f"{precision}, SDPA, MLM head at masked positions, "
                        f"{'foreach' if foreach else 'per-tensor'} LAMB")
        points[layers] = measure(step, scale, device)
        del step
    padding = 1 - batch["input_mask"].sum().item() / batch["input_mask"].numel()
    return {**scaled(points), "samples": batch_size, "precision": notation(precision), "settings": settings,
            "padding": padding, "peak_memory_mib": peak_memory_mib(device),
            "threads": torch.get_num_threads()}


def _our_bert_step(cfg: bert_presets.BertRunConfig, batch: dict, device: torch.device, forward=bert_train.forward):
    """The training step of closed/bert/train.py, without the data loader and the distributed wrapper."""
    return _our_bert_steps(cfg, {"step": batch}, device, forward)["step"]


def _our_bert_steps(cfg: bert_presets.BertRunConfig, batches: dict, device: torch.device, forward=bert_train.forward):
    """{name: training step on batches[name]}, all on one model and optimizer: steps compared with each other
    then share their memory, which on a CPU moves a step's time by several per cent from one model to the
    next."""
    model = BertForPretraining(cfg.model_config()).to(device)
    optimizer = bert_optim.Lamb(bert_optim.param_groups(model, cfg.opt_lamb_weight_decay_rate),
                                lr=cfg.opt_base_learning_rate, betas=(cfg.opt_lamb_beta_1, cfg.opt_lamb_beta_2),
                                eps=cfg.opt_epsilon, foreach=cfg.optimizer_foreach)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def step(batch):
        loss, _, _ = forward(model, batch, cfg, device)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        bert_optim.clip_grad_norm(model.parameters(), cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return {name: functools.partial(step, batch) for name, batch in batches.items()}


def wikipedia_lengths(n: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """n sequence lengths drawn from the MLPerf Wikipedia histogram at 512, scaled to seq_len."""
    lengths, counts = np.loadtxt(WIKIPEDIA_HISTOGRAM, dtype=np.int64, unpack=True)
    drawn = np.random.default_rng(seed).choice(lengths, size=n, p=counts / counts.sum())
    return np.clip(np.rint(drawn * seq_len / 512), 8, seq_len).astype(np.int64)


def rows(lengths: np.ndarray, packs: list[list[int]], seq_len: int, vocab: int, seed: int = 0,
         width: int | None = None) -> dict:
    """A batch of rows holding the sequences of `packs` in model.py's input format. One sequence per row:
    a (B, S) padding mask; several: a block-diagonal (B, S, S) mask, positions restarting at each sequence,
    the NSP heads at each sequence's first token (-100 labels on empty slots). Masked-LM arrays are `width`
    wide (as the data's fixed predictions per row), or as wide as the most any row holds."""
    gen = torch.Generator().manual_seed(seed)
    packed = max(len(p) for p in packs) > 1
    b, slots = len(packs), max(len(p) for p in packs)
    tokens = torch.zeros(b, seq_len, dtype=torch.long)
    out = {"input_ids": tokens, "segment_ids": tokens.clone(), "position_ids": tokens.clone(),
           "attention_mask": torch.zeros(b, seq_len, seq_len) if packed else torch.zeros(b, seq_len),
           "nsp_positions": torch.zeros(b, slots, dtype=torch.long),
           "next_sentence_labels": torch.full((b, slots), -100, dtype=torch.long)}
    masked = [[] for _ in packs]
    for r, pack in enumerate(packs):
        start = 0
        for k, i in enumerate(pack):
            n, end = int(lengths[i]), start + int(lengths[i])
            out["input_ids"][r, start:end] = torch.randint(5, vocab, (n,), generator=gen)
            out["segment_ids"][r, start + n // 2 : end] = 1
            out["position_ids"][r, start:end] = torch.arange(n)
            if packed:
                out["attention_mask"][r, start:end, start:end] = 1
            else:
                out["attention_mask"][r, start:end] = 1
            out["nsp_positions"][r, k] = start
            out["next_sentence_labels"][r, k] = int(torch.randint(2, (), generator=gen))
            chosen = torch.randperm(n - 1, generator=gen)[: predictions(n)] + 1 + start
            masked[r] += chosen.tolist()
            start = end
    width = width or max(len(m) for m in masked)
    out["masked_lm_positions"] = torch.zeros(b, width, dtype=torch.long)
    out["masked_lm_ids"] = torch.zeros(b, width, dtype=torch.long)
    out["masked_lm_weights"] = torch.zeros(b, width)
    for r, m in enumerate(masked):
        out["masked_lm_positions"][r, : len(m)] = torch.tensor(m)
        out["masked_lm_ids"][r, : len(m)] = torch.randint(5, vocab, (len(m),), generator=gen)
        out["masked_lm_weights"][r, : len(m)] = 1.0
    if not packed:  # as the padded data: positions 0..S-1, one NSP head on [CLS]
        del out["position_ids"], out["nsp_positions"]
        out["next_sentence_labels"] = out["next_sentence_labels"][:, 0]
    return out


def rows_forward(model, batch, cfg, device):
    """-> (loss, correct, count) for a batch made by `rows`, packed or not."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with autocast(cfg.precision, device):
        mlm_logits, nsp_logits = model(b["input_ids"], b["segment_ids"], b["attention_mask"], b["masked_lm_positions"],
                                       position_ids=b.get("position_ids"), nsp_positions=b.get("nsp_positions"))
    loss, correct, count = bert_optim.mlm_loss_and_accuracy(mlm_logits, b["masked_lm_ids"], b["masked_lm_weights"])
    return loss + bert_optim.nsp_loss(nsp_logits, b["next_sentence_labels"]), correct, count


def bert_packing(scale: Scale, device_name: str) -> dict[str, dict]:
    """Training steps of our BERT-Large at the longer length on Wikipedia-length sequences, padded (one per
    row) and packed as open BERT packs them (the 1xH200 open preset's algorithm and sequences per pack),
    timed in turns on one model: -> {"padded": row, "packed": row}.

    `scale.packing_sample` lengths are drawn from the Wikipedia histogram and packed into a plan; a step
    trains `scale.packed_rows` rows: the first sequences, one per row, or the first packs of the plan (in
    the plan's seeded random order). Sequences per step = rows x sequences per row over the whole plan (1
    padded), because over an epoch every pack is trained and a row costs the same whatever it holds: every
    query attends over all S keys, masked or not. The timed rows' own count is reported beside it."""
    device = pick_device(device_name)
    seq_len, precision = scale.bert_seq_lengths[1], bert_presets.h200().precision
    lengths = wikipedia_lengths(scale.packing_sample, seq_len)
    open_cfg = open_bert_presets.h200()
    plan = packing.ALGORITHMS[open_cfg.packing](packing.histogram(lengths, seq_len), seq_len,
                                                open_cfg.max_sequences_per_pack)
    layouts = {
        "padded": ([[i] for i in range(len(lengths))], 1.0, "padded, one sequence per row"),
        "packed": ([[int(i) for i in pack if i >= 0] for pack in packing.assign(lengths, plan, seed=0)],
                   plan.speedup, f"{open_cfg.packing.upper()} plan of {plan.sequences:,} sequences: "
                                 f"{plan.packs:,} rows, {plan.speedup:.3f} sequences per row, at most "
                                 f"{open_cfg.max_sequences_per_pack}, block-diagonal attention"),
    }
    # Predictions per row as the data lays them out: 76 per padded sequence (max_predictions_per_seq), and
    # per pack the most any pack of the plan holds (`make data PACK=`'s default max_pred_per_pack).
    widths = {"padded": predictions(seq_len),
              "packed": max(sum(predictions(int(lengths[i])) for i in pack) for pack in layouts["packed"][0])}
    batches = {name: rows(lengths, packs[: scale.packed_rows], seq_len, scale.bert_shape[3], width=widths[name])
               for name, (packs, _, _) in layouts.items()}
    points, timing = {name: {} for name in layouts}, dataclasses.replace(scale, timed_steps=scale.packed_timed_steps)
    for layers in scale.packed_layers:
        torch.manual_seed(0)
        steps = _our_bert_steps(bert_config(scale, seq_len, layers, precision), batches, device, forward=rows_forward)
        for name, point in measure_alternating(steps, timing, device).items():
            points[name][layers] = point
        del steps
    out = {}
    for name, (packs, per_row, how) in layouts.items():
        real = lengths[[i for pack in packs for i in pack]].sum()
        out[name] = {**scaled(points[name]), "samples": scale.packed_rows * per_row, "rows": scale.packed_rows,
                     "sequences_per_row": per_row, "timed_sequences": sum(len(p) for p in packs[: scale.packed_rows]),
                     "predictions_per_row": widths[name],
                     "precision": notation(precision),
                     "settings": f"{scale.packed_rows} rows of {seq_len} per step; {how}",
                     "padding": float(1 - real / (len(packs) * seq_len)), "peak_memory_mib": peak_memory_mib(device),
                     "threads": torch.get_num_threads()}
    return out


# ---------------------------------------------------------------------------------------------- ImageNet decode


def decode(scale: Scale, impl: str) -> dict:
    """Images per CPU-second, one thread, of JPEG decode + training augmentation to 224 px: "ours"
    (common/data/imagenet.py as training uses it: the reference's preprocessing: TF's crop sampler,
    full-size libjpeg-turbo decode, TF1 bilinear resize, rounded to uint8 for the device to normalise) or
    "plain" (torchvision's transforms on PIL, in plain PIL and torch, normalised float32)."""
    transform = imagenet.train_transform(224, uint8=True) if impl == "ours" else peers.torchvision_train_transform
    rate = imagenet.benchmark(transform, seconds=scale.decode_seconds)
    settings = ("full-size fast-DCT decode, TF crop sampler, TF1 bilinear resize, uint8 out" if impl == "ours"
                else "full decode, PIL crop + bilinear resize, ToTensor, Normalize")
    return {"samples_per_s": rate, "settings": settings, "threads": 1,
            "peak_memory_mib": peak_memory_mib(torch.device("cpu"))}
