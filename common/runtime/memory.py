"""Per-GPU memory and /dev/shm of a preset, estimated from its shapes, before anything runs.

    python -m mlperf_submission.common.runtime.memory --bench bert --preset 8xA100 [--gpus 8] [--system FILE]
    python -m mlperf_submission.common.runtime.memory --bench resnet --preset 1xH200 --shm

The first prints the per-GPU estimate (parameters, gradients, optimizer state, 16-bit weight copies,
activations saved for the backward pass, transients) and, with --system, whether it fits the accelerator
that the system description names. The second prints the shared memory (/dev/shm) the data workers of one
node need, which is what a container's `--shm-size` must give (`--ipc=host` gives the host's). --gpus is
the ranks of the job, one per GPU on one node; by default the count in the preset's name (8xA100: 8).

The trainers call `refuse_unfit` before the result log is opened: a CUDA run whose estimate exceeds the
memory of the GPU its system JSON names stops with a one-line error and writes nothing.

How the activations are counted (bytes kept for the backward pass, per micro-batch):
- BERT, per token and layer, with c = 2 under 16-bit autocast and 4 in fp32, h the hidden and i the
  intermediate width: the inputs of the query, key and value projections (3 casts of the fp32 layer input
  under autocast, each c h; one shared 4 h tensor in fp32), what a fused attention kernel keeps (q, k, v
  and the output, 4 c h; CUDA's flash and memory-efficient SDPA keep no S x S probabilities), the output
  projection's input (c h), the two residual sums that the LayerNorms keep (fp32 under autocast too: the
  residual stream stays fp32, 4 h each), the intermediate projection's input (c h), GELU's input and the
  output projection's input (c i each), and a 1-byte dropout mask per dropout (two of h). BERT-Large in
  fp16: 44 h bytes a token a layer. Then the embeddings (the LayerNorm's fp32 input and a mask), the
  masked-LM head at its masked positions (a few h each, the logits in c and their fp32 log-softmax,
  (c + 4) x vocabulary), and one layer's worth again for the gradients in flight during the backward pass.
- ResNet-50: the model is run on the meta device (shapes only, no memory, no arithmetic) at batch 1 and 2
  under `saved_tensors_hooks`, and the per-image difference of the bytes autograd keeps is scaled by the
  precision (every saved activation of a conv / batch norm / ReLU network is 16-bit under autocast).

Fixed costs: fp32 parameters and gradients (DDP's gradients are its buckets: `gradient_as_bucket_view`),
optimizer state (LAMB: 2 tensors a parameter; LARS and SGD: 1), one fp32 temporary a parameter for the
foreach optimizer step, the 16-bit weight copies autocast caches for a step, and 1 GiB for the CUDA
context, cuBLAS/cuDNN workspaces and NCCL buffers. A preset fits when the estimate is at most 90 % of the
GPU's memory: the rest is left to the caching allocator's fragmentation (a margin, not a measurement).
The estimate is of this code's tensors, not a measurement on a GPU: `make gpu-check` records the peak
that a smoke run allocates where a GPU is at hand.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
from dataclasses import dataclass

import torch

from mlperf_submission.common.cli import ArgumentParser, UserError, entry_point

GIB = 2**30
CONTEXT_BYTES = GIB     # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers
USABLE_FRACTION = 0.9   # of the GPU's memory; the rest for the caching allocator's fragmentation
OPTIMIZER_STATES = {"lamb": 2, "lars": 1, "sgd": 1}  # fp32 tensors per parameter


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU, by what holds them."""

    parameters: int
    gradients: int
    optimizer: int
    weight_copies: int
    activations: int
    transients: int
    context: int = CONTEXT_BYTES

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))

    def describe(self) -> str:
        parts = ", ".join(f"{f.name} {getattr(self, f.name) / GIB:.1f}" for f in dataclasses.fields(self))
        return f"{self.total / GIB:.1f} GiB ({parts})"


def _low_precision(precision: str) -> bool:
    return precision in ("fp16", "bf16")


def _states(params: int, precision: str, optimizer: str, foreach: bool) -> dict[str, int]:
    return {"parameters": 4 * params, "gradients": 4 * params,
            "optimizer": 4 * params * (OPTIMIZER_STATES[optimizer] + foreach),
            "weight_copies": 2 * params if _low_precision(precision) else 0}


def _meta_parameters(make) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in make().parameters())


def bert_layer_bytes_per_token(hidden: int, intermediate: int, precision: str, dropout: float) -> int:
    """Bytes one encoder layer keeps for the backward pass per token (see the module's docstring)."""
    c = 2 if _low_precision(precision) else 4
    qkv_inputs = 3 * c * hidden if c == 2 else 4 * hidden
    attention = 4 * c * hidden + c * hidden      # q, k, v, output; the output projection's input
    residuals = 2 * 4 * hidden                   # the two LayerNorms' fp32 inputs
    mlp = c * hidden + 2 * c * intermediate      # intermediate's input, GELU's input, output's input
    masks = 2 * hidden if dropout > 0 else 0
    return qkv_inputs + attention + residuals + mlp + masks


def bert(cfg, local_batch: int) -> Estimate:
    """BERT (closed or open: a packed row is one row of max_seq_length tokens) at `local_batch` rows."""
    from mlperf_submission.closed.bert.model import BertForPretraining

    model_cfg = cfg.model_config()
    params = _meta_parameters(lambda: BertForPretraining(model_cfg))
    c = 2 if _low_precision(cfg.precision) else 4
    tokens = local_batch * cfg.max_seq_length
    layer = bert_layer_bytes_per_token(cfg.hidden_size, cfg.intermediate_size, cfg.precision, cfg.dropout) * tokens
    embeddings = (4 * cfg.hidden_size + (cfg.hidden_size if cfg.dropout > 0 else 0)) * tokens
    positions = local_batch * cfg.max_predictions_per_seq
    head = positions * ((3 * c + 4) * cfg.hidden_size + (c + 4) * cfg.vocab_size)
    return Estimate(**_states(params, cfg.precision, "lamb", cfg.optimizer_foreach),
                    activations=cfg.num_hidden_layers * layer + embeddings + head, transients=layer)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(all bytes, the largest tensor's bytes) that autograd keeps for the backward pass of model(x)."""
    sizes = {}

    def pack(t):
        sizes[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(sizes.values()), max(sizes.values())


def resnet(cfg, local_batch: int) -> Estimate:
    """ResNet-50 at `local_batch` images of cfg.image_size: activations from the model run on the meta device
    (at batch 2 and 4: batch norm needs more than one value per channel, 1 x 1 at the last stage of a small
    image); the transients are the largest activation's gradient and the one it is computed from."""
    from mlperf_submission.closed.resnet.model import ResNet50

    with torch.device("meta"):
        model = ResNet50(num_classes=cfg.num_classes, width=cfg.model_width)
        (two, _), (four, largest) = (_saved_bytes(model, torch.empty(n, 3, cfg.image_size, cfg.image_size))
                                     for n in (2, 4))
    params = sum(p.numel() for p in model.parameters())
    scale = 0.5 if _low_precision(cfg.precision) else 1.0  # measured in fp32
    per_image = (four - two) / 2 * scale
    optimizer = "lars" if cfg.opt_name == "lars" else "sgd"
    return Estimate(**_states(params, cfg.precision, optimizer, cfg.optimizer_foreach),
                    activations=int(per_image * local_batch), transients=int(2 * largest / 4 * scale * local_batch))


ESTIMATES = {"bert": bert, "resnet": resnet}


def capacity_bytes(text: str) -> int | None:
    """'141 GB' -> 141e9, '40 GiB' -> 40 x 2**30, '80GB HBM2e' -> 80e9; None where no size is given."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*(TiB|TB|GiB|GB|MiB|MB)\b", text or "", re.IGNORECASE)
    if m is None:
        return None
    unit = m.group(2).lower()
    scale = {"tib": 2**40, "tb": 10**12, "gib": GIB, "gb": 10**9, "mib": 2**20, "mb": 10**6}[unit]
    return int(float(m.group(1)) * scale)


def fits(estimate: Estimate, capacity: int) -> bool:
    return estimate.total <= USABLE_FRACTION * capacity


def refuse_unfit(benchmark: str, cfg, local_batch: int, system: dict, device: torch.device) -> None:
    """UserError, before any log, for a CUDA run whose estimate exceeds the GPU the system description names
    (its accelerator_memory_capacity). Nothing is checked off CUDA, or where the system names no memory."""
    if device.type != "cuda":
        return
    capacity = capacity_bytes(system.get("accelerator_memory_capacity", ""))
    if capacity is None:
        return
    estimate = ESTIMATES[benchmark](cfg, local_batch)
    if not fits(estimate, capacity):
        gpu = system.get("accelerator_model_name") or "the GPU"
        raise UserError(
            f"{benchmark} at {local_batch} per GPU x {cfg.gradient_accumulation_steps} accumulation steps, "
            f"{cfg.precision}, needs about {estimate.total / GIB:.1f} GiB per GPU, more than {USABLE_FRACTION:.0%} "
            f"of {gpu}'s {system['accelerator_memory_capacity']}: raise gradient_accumulation_steps (the global "
            f"batch stays), e.g. --set gradient_accumulation_steps={2 * cfg.gradient_accumulation_steps}")


def sample_bytes(benchmark: str, cfg, split: str = "train") -> int:
    """Bytes of one sample as the data workers hand it over: ResNet a 3 x S x S image, uint8 for training and
    float32 for eval (the reference's eval pixels exactly), and an int64 label; BERT the loader's int64
    features and float32 weights at the preset's lengths, both splits."""
    if benchmark == "resnet":
        return 3 * cfg.image_size * cfg.image_size * (1 if split == "train" else 4) + 8
    from mlperf_submission.common.data.bert_wiki import feature_specs

    specs = feature_specs(cfg.max_seq_length, cfg.max_predictions_per_seq)
    sizes = [4 if kind == "float32" else 8 for _, kind, _, _ in specs.values()]
    counts = [int(torch.tensor(shape).prod()) if shape else 1 for shape, _, _, _ in specs.values()]
    return sum(s * n for s, n in zip(sizes, counts, strict=True))


def shm_bytes(benchmark: str, cfg, local_batch: int, ranks_per_node: int) -> int:
    """The /dev/shm one node's data workers need: per rank, each worker's `prefetch_factor` batches in flight
    plus the two the main process holds, at the local batch. BERT evaluates in the middle of an epoch, while
    the training loader's batches wait in shared memory: both loaders count. ResNet evaluates between
    epochs, when the training loader holds none: the larger of the two, eval's float32 images."""
    if cfg.data_workers == 0:
        return 0
    batches = cfg.data_workers * cfg.prefetch_factor + 2
    train, evaluation = sample_bytes(benchmark, cfg, "train"), sample_bytes(benchmark, cfg, "eval")
    per_sample = max(train, evaluation) if benchmark == "resnet" else train + evaluation
    return ranks_per_node * batches * local_batch * per_sample


def shm_size(nbytes: int) -> str:
    """The docker `--shm-size` for `nbytes`: whole GiB rounded up, plus 1 GiB for NCCL's intra-node buffers."""
    return f"{-(-nbytes // GIB) + 1}g"


def gpus_in_name(preset: str) -> int:
    """The accelerators a preset's name counts: 8xA100 8, pod16 16, smoke 1."""
    m = re.match(r"(\d+)x|pod(\d+)$", preset)
    return int(m.group(1) or m.group(2)) if m else 1


def preset_config(benchmark: str, division: str, preset: str, overrides=()):
    from mlperf_submission.common import config

    presets = importlib.import_module(f"mlperf_submission.{division}.{benchmark}.presets")
    return config.override(config.select(presets.PRESETS, preset), list(overrides))


def local_batch_of(benchmark: str, cfg, gpus: int) -> int:
    items = cfg.global_batch_items if benchmark == "bert" else cfg.global_batch_size
    replicas = gpus * cfg.gradient_accumulation_steps
    if items % replicas:
        raise UserError(f"the global batch {items} is not a multiple of {gpus} GPU(s) x "
                        f"{cfg.gradient_accumulation_steps} accumulation steps")
    return items // replicas


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.common.runtime.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", choices=sorted(ESTIMATES), required=True)
    p.add_argument("--division", choices=("closed", "open"), default="closed")
    p.add_argument("--preset", required=True)
    p.add_argument("--gpus", type=int, help="ranks, one per GPU on one node (default: the preset name's count)")
    p.add_argument("--system", help="system JSON: say whether the estimate fits its accelerator")
    p.add_argument("--shm", action="store_true", help="the /dev/shm the data workers need, and --shm-size")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    cfg = preset_config(args.bench, args.division, args.preset, args.overrides)
    gpus = args.gpus or gpus_in_name(args.preset)
    local = local_batch_of(args.bench, cfg, gpus)
    if args.shm:
        need = shm_bytes(args.bench, cfg, local, gpus)
        print(f"{args.division} {args.bench} {args.preset}: {gpus} rank(s) x {cfg.data_workers} workers x "
              f"prefetch {cfg.prefetch_factor} at {local} per GPU: /dev/shm {need / GIB:.2f} GiB; "
              f"docker run --shm-size={shm_size(need)} (or --ipc=host)")
        return 0
    estimate = ESTIMATES[args.bench](cfg, local)
    line = f"{args.division} {args.bench} {args.preset} at {local} per GPU, {cfg.precision}: {estimate.describe()}"
    if args.system:
        from mlperf_submission.systems import load as load_system

        _, system = load_system(args.system)
        capacity = capacity_bytes(system["accelerator_memory_capacity"])
        if capacity is None:
            raise UserError(f"system {args.system} gives no accelerator_memory_capacity (e.g. \"80 GB\")")
        line += (f"; {'fits' if fits(estimate, capacity) else 'does NOT fit'} {system['accelerator_model_name']} "
                 f"{system['accelerator_memory_capacity']} ({USABLE_FRACTION:.0%} usable)")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
