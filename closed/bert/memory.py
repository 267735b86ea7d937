"""BERT's memory per rank at a local batch of rows, from its shapes (common/runtime/memory.py checks it).

How the activations are counted (bytes kept for the backward pass, per micro-batch), with c = 2 under 16-bit
autocast and 4 in fp32, h the hidden and i the intermediate width, per token and layer: the inputs of the
query, key and value projections (3 casts of the fp32 layer input under autocast, each c h; one shared 4 h
tensor in fp32), what the attention kernel keeps, the output projection's input (c h), the two residual sums
that the LayerNorms keep (fp32 under autocast too: the residual stream stays fp32, 4 h each), the
intermediate projection's input (c h), GELU's input and the output projection's input (c i each), and a
1-byte dropout mask per dropout (two of h). Then the embeddings (the LayerNorm's fp32 input and a mask), the
masked-LM head at its masked positions (a few h each, the logits in c and their fp32 log-softmax,
(c + 4) x vocabulary), and one layer's worth again for the gradients in flight during the backward pass.

The attention kernel: on CUDA a fused one (flash or memory-efficient SDPA) keeps q, k, v and the output, 4 c h,
and no S x S probabilities: BERT-Large in fp16 keeps 44 h bytes a token a layer. On the CPU, which kernel
torch picks depends on the mask and the dropout (with dropout it falls back to the explicit softmax, which
keeps the fp32 S x S probabilities of every head: about 1.1 GiB a layer for 64 rows of 512 tokens), so it
is measured: one scaled-dot-product attention of the config's heads and length, with its mask and dropout,
run on the CPU at 1 and 2 rows under `saved_tensors_hooks`, the difference being one row's bytes.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ...common.data.bert_wiki import feature_specs
from ...common.runtime import memory
from .model import BertForPretraining


def layer_bytes_per_token(hidden: int, intermediate: int, precision: str, dropout: float,
                          attention: int | None = None) -> int:
    """Bytes one encoder layer keeps for the backward pass per token (see the module's docstring); `attention`
    the attention kernel's own bytes a token where measured, else a fused kernel's 4 c h."""
    c = 2 if memory.low_precision(precision) else 4
    qkv_inputs = 3 * c * hidden if c == 2 else 4 * hidden
    kernel = 4 * c * hidden if attention is None else attention   # q, k, v, output
    projection = c * hidden                                       # the output projection's input
    residuals = 2 * 4 * hidden                   # the two LayerNorms' fp32 inputs
    mlp = c * hidden + 2 * c * intermediate      # intermediate's input, GELU's input, output's input
    masks = 2 * hidden if dropout > 0 else 0
    return qkv_inputs + kernel + projection + residuals + mlp + masks


def _saved_bytes(rows: int, heads: int, length: int, head_size: int, mask_rows: int, dropout: float,
                 precision: str) -> int:
    sizes = {}

    def pack(t):
        sizes[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    q, k, v = (torch.zeros(rows, heads, length, head_size, requires_grad=True) for _ in range(3))
    mask = None if mask_rows == 0 else torch.ones(rows, 1, mask_rows, length, dtype=torch.bool)
    # 16-bit autocast on the CPU is bf16 (the trainer refuses fp16 there, after this estimate)
    low = torch.autocast("cpu", dtype=torch.bfloat16, enabled=memory.low_precision(precision))
    with low, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return sum(sizes.values())


@functools.lru_cache(maxsize=16)
def cpu_attention_bytes_per_row(heads: int, length: int, head_size: int, mask_rows: int, dropout: float,
                                precision: str) -> int:
    """What the CPU's scaled-dot-product attention keeps for one row of `length` tokens, measured (see the
    module's docstring); `mask_rows` length for unpadded rows' block-diagonal mask, 1 for padded rows' key
    mask, 0 for none (jagged attention)."""
    one, two = (_saved_bytes(n, heads, length, head_size, mask_rows, dropout, precision) for n in (1, 2))
    return two - one


def _mask_rows(cfg) -> int:
    if not cfg.unpad:
        return 1
    return cfg.max_seq_length if cfg.unpad_attention == "block" else 0


def estimate(cfg, local_batch: int, device_type: str = "cuda") -> memory.Estimate:
    """BERT (closed or open: a packed row is one row of max_seq_length tokens) at `local_batch` rows."""
    model_cfg = cfg.model_config()
    params = memory.meta_parameters(lambda: BertForPretraining(model_cfg))
    c = 2 if memory.low_precision(cfg.precision) else 4
    tokens = local_batch * cfg.max_seq_length
    if device_type == "cuda":
        layer = layer_bytes_per_token(cfg.hidden_size, cfg.intermediate_size, cfg.precision, cfg.dropout) * tokens
    else:
        row = cpu_attention_bytes_per_row(cfg.num_attention_heads, cfg.max_seq_length,
                                          cfg.hidden_size // cfg.num_attention_heads, _mask_rows(cfg), cfg.dropout,
                                          cfg.precision)
        layer = (layer_bytes_per_token(cfg.hidden_size, cfg.intermediate_size, cfg.precision, cfg.dropout, 0)
                 * tokens + row * local_batch)
    embeddings = (4 * cfg.hidden_size + (cfg.hidden_size if cfg.dropout > 0 else 0)) * tokens
    positions = local_batch * cfg.max_predictions_per_seq
    head = positions * ((3 * c + 4) * cfg.hidden_size + (c + 4) * cfg.vocab_size)
    return memory.Estimate(**memory.states(params, cfg.precision, "lamb", cfg.optimizer_foreach),
                           activations=cfg.num_hidden_layers * layer + embeddings + head, transients=layer,
                           context=memory.context_bytes(device_type))


def sample_bytes(cfg) -> int:
    """Bytes of one sample as the data workers hand it over: the loader's int64 features and float32 weights
    at the preset's lengths (the same for both splits)."""
    specs = feature_specs(cfg.max_seq_length, cfg.max_predictions_per_seq)
    sizes = [4 if kind == "float32" else 8 for _, kind, _, _ in specs.values()]
    counts = [int(torch.tensor(shape).prod()) if shape else 1 for shape, _, _, _ in specs.values()]
    return sum(s * n for s, n in zip(sizes, counts, strict=True))


def shm_sample_bytes(cfg) -> int:
    """Bytes per sample in /dev/shm at the worst moment: BERT evaluates in the middle of an epoch, while the
    training loader's batches wait in shared memory, so both loaders count."""
    return 2 * sample_bytes(cfg)
