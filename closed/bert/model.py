"""BERT-Large with the pretraining heads, as the MLCommons v1.1 reference (`language_model/tensorflow/bert`,
`modeling.py` and `run_pretraining.py`) defines it, in plain torch.nn.

Post-LayerNorm transformer encoder, tanh-approximated GELU, LayerNorm eps 1e-12, truncated-normal(0.02)
initialisation cut at two standard deviations (TF's `truncated_normal_initializer`), masked-LM head
evaluated only at `masked_lm_positions` with its decoder tied to the word embeddings, NSP head on the
pooled [CLS]. Masks are boolean (True = attend), which lets scaled-dot-product attention choose its fused
kernels; the reference adds -10000 to the logits of masked keys, whose softmax weight exp(-10000) is 0.0 in
float32 and bfloat16 alike, so the attention of every real token is the same.

Unpadded rows (`forward_packed`; the layout of common/data/packing/rows.py, made per batch in closed BERT and
ahead in the open division): sequences concatenated without padding, `sequence_ids` (1..k, 0 = padding)
limiting attention to each token's own sequence, positions restarting per sequence, NSP at each sequence's
own [CLS]. Every sequence's logits are those of the padded batch, to rounding (tests/test_bert_unpadded.py).

`mlperf_tensor_names` gives the 398 TF-style names that the closed_bert compliance rules list for
`weights_initialization`; `parameter_count` counts parameters from the config alone.
BERT-Large (`BertConfig()`): 336,226,108 parameters including both heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")


UnpaddedAttention = Literal["block", "jagged"]


@dataclass(frozen=True)
class Jagged:
    """Where the sequences of unpadded rows lie, for variable-length attention over them alone: `tokens`
    (T,) the flat (B*S) index of every real token, sequence after sequence; `offsets` (n+1,) where each of
    the n sequences starts among them."""

    tokens: torch.Tensor
    offsets: torch.Tensor

    @staticmethod
    def of(sequence_ids: torch.Tensor) -> Jagged:
        """From (B, S) sequence ids (1..k < S within a row, 0 for padding). One host sync: the sequence count."""
        flat, s = sequence_ids.reshape(-1), sequence_ids.shape[1]
        tokens = torch.nonzero(flat > 0).squeeze(1)  # (T,) in row order: each sequence's tokens adjacent
        key = torch.div(tokens, s, rounding_mode="floor") * s + flat[tokens]  # one value per (row, sequence)
        _, counts = torch.unique_consecutive(key, return_counts=True)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return Jagged(tokens, offsets)


def attention_mask_4d(attention_mask: torch.Tensor | Jagged | None) -> torch.Tensor | Jagged | None:
    """(B, S) padding mask or (B, S, S) query-by-key mask (1 = attend) -> boolean (B, 1, 1|S, S); a Jagged
    layout as it is."""
    if attention_mask is None or isinstance(attention_mask, Jagged):
        return attention_mask
    if attention_mask.dim() == 2:
        mask = attention_mask[:, None, None, :]  # (B, 1, 1, S): same keys for every query
    elif attention_mask.dim() == 3:
        mask = attention_mask[:, None, :, :]  # (B, 1, S, S): e.g. block-diagonal for unpadded rows
    else:
        raise ValueError(f"attention_mask must be (B, S) or (B, S, S), got {tuple(attention_mask.shape)}")
    # Every query must see a key, or its softmax is NaN and 0 * NaN reaches real tokens through the values:
    # padded rows always hold [CLS]; in unpadded rows padding sees padding (`packed_attention_mask`).
    return mask.bool()


def packed_attention_mask(sequence_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) sequence ids -> (B, S, S) bool, True where query and key belong to the same sequence.

    The padding at a row's end (id 0) is one more block: real tokens never see it, and its own queries see
    only padding, which no real token reads.
    """
    return sequence_ids[:, :, None] == sequence_ids[:, None, :]


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids):
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )  # (B, S, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention: the reference's `attention/self` scope."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x, mask):
        b, s, h = x.shape
        if isinstance(mask, Jagged):
            return self._jagged(x, mask)

        def heads(t):
            return t.view(b, s, self.num_heads, h // self.num_heads).transpose(1, 2)  # (B, N, S, D)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )  # (B, N, S, D); scale 1/sqrt(D) as in the reference
        return context.transpose(1, 2).reshape(b, s, h)  # (B, S, H)

    def _jagged(self, x, layout: Jagged):
        """Attention of each sequence over itself alone, as nested (jagged) tensors: no mask, and no
        arithmetic on the padding at the rows' ends, whose outputs stay 0 (no real token reads them)."""
        b, s, h = x.shape
        d = h // self.num_heads

        def heads(t):  # (B, S, H) -> (n sequences, N, j, D)
            flat = t.reshape(b * s, h).index_select(0, layout.tokens).view(-1, self.num_heads, d)  # (T, N, D)
            return torch.nested.nested_tensor_from_jagged(flat, layout.offsets).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
            dropout_p=self.dropout_p if self.training else 0.0,
        ).transpose(1, 2).values()  # (T, N, D)
        out = context.new_zeros(b * s, h).index_copy(0, layout.tokens, context.reshape(-1, h))
        return out.view(b, s, h)


class BertLayer(nn.Module):
    """attention/self -> attention/output (dense, dropout, residual, LayerNorm) -> intermediate -> output."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertSelfAttention(cfg)
        self.attention_output = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attention_LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.output_LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, mask):
        a = self.attention_LayerNorm(
            x + self.dropout(self.attention_output(self.attention(x, mask)))
        )  # (B, S, H)
        f = F.gelu(self.intermediate(a), approximate="tanh")  # (B, S, I)
        return self.output_LayerNorm(a + self.dropout(self.output(f)))  # (B, S, H)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """dense + tanh on the hidden state of a [CLS] token; any leading shape (..., H)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, cls_hidden):
        return torch.tanh(self.dense(cls_hidden))


class BertPretrainingHeads(nn.Module):
    """`cls/predictions` (transform, tied decoder, output bias) and `cls/seq_relationship`."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.transform_LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2)

    def masked_lm(self, hidden, word_embeddings):
        t = self.transform_LayerNorm(F.gelu(self.transform(hidden), approximate="tanh"))  # (B, P, H)
        return F.linear(t, word_embeddings, self.output_bias)  # (B, P, V)

    def next_sentence(self, pooled):
        return self.seq_relationship(pooled)  # (..., 2)


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden (B, S, H), positions (B, P) -> (B, P, H); the reference's `gather_indexes`."""
    index = positions.long().unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, P, H)
    return torch.gather(hidden, 1, index)


class BertForPretraining(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)
        self.heads = BertPretrainingHeads(cfg)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.cfg.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertPretrainingHeads):
            nn.init.zeros_(module.output_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor | Jagged | None,
        masked_lm_positions: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        nsp_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mlm_logits (B, P, V), nsp_logits (B, 2), or (B, K, 2) when nsp_positions (B, K) is given).

        input_ids, token_type_ids: (B, S). attention_mask: (B, S) padding mask or (B, S, S) full mask,
        1 where attention is allowed, or the Jagged layout of unpadded rows. position_ids: (B, S), default
        0..S-1 (unpadded rows restart it with each sequence).
        """
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, S, H)
        x = self.encoder(x, attention_mask_4d(attention_mask))  # (B, S, H)
        word_embeddings = self.embeddings.word_embeddings.weight  # (V, H), the tied decoder
        mlm_logits = self.heads.masked_lm(gather_positions(x, masked_lm_positions), word_embeddings)
        cls = x[:, 0] if nsp_positions is None else gather_positions(x, nsp_positions)  # (B, H) | (B, K, H)
        return mlm_logits, self.heads.next_sentence(self.pooler(cls))


def forward_packed(model: BertForPretraining, batch: dict[str, torch.Tensor],
                   attention: UnpaddedAttention = "block") -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mlm_logits (B, Q, V), nsp_logits (B, K, 2)) for a batch of unpadded rows (see the module docstring),
    each sequence attending over itself through a block-diagonal mask or as a jagged (nested) tensor."""
    ids = batch["sequence_ids"]
    layout = packed_attention_mask(ids) if attention == "block" else Jagged.of(ids)
    return model(batch["input_ids"], batch["segment_ids"], layout,
                 batch["masked_lm_positions"], position_ids=batch["position_ids"].long(),
                 nsp_positions=batch["nsp_positions"])


_LAYER_TENSORS = {
    "attention.query": "attention/self/query",
    "attention.key": "attention/self/key",
    "attention.value": "attention/self/value",
    "attention_output": "attention/output/dense",
    "attention_LayerNorm": "attention/output/LayerNorm",
    "intermediate": "intermediate/dense",
    "output": "output/dense",
    "output_LayerNorm": "output/LayerNorm",
}
_OTHER_TENSORS = {
    "embeddings.word_embeddings.weight": "bert/embeddings/word_embeddings",
    "embeddings.position_embeddings.weight": "bert/embeddings/position_embeddings",
    "embeddings.token_type_embeddings.weight": "bert/embeddings/token_type_embeddings",
    "embeddings.LayerNorm.weight": "bert/embeddings/LayerNorm/gamma",
    "embeddings.LayerNorm.bias": "bert/embeddings/LayerNorm/beta",
    "pooler.dense.weight": "bert/pooler/dense/kernel",
    "pooler.dense.bias": "bert/pooler/dense/bias",
    "heads.transform.weight": "cls/predictions/transform/dense/kernel",
    "heads.transform.bias": "cls/predictions/transform/dense/bias",
    "heads.transform_LayerNorm.weight": "cls/predictions/transform/LayerNorm/gamma",
    "heads.transform_LayerNorm.bias": "cls/predictions/transform/LayerNorm/beta",
    "heads.output_bias": "cls/predictions/output_bias",
    "heads.seq_relationship.weight": "cls/seq_relationship/output_weights",
    "heads.seq_relationship.bias": "cls/seq_relationship/output_bias",
}


def tf_tensor_name(param_name: str) -> str:
    """One parameter name -> its TF name in the reference checkpoint and the compliance list."""
    if param_name in _OTHER_TENSORS:
        return _OTHER_TENSORS[param_name]
    prefix, _, rest = param_name.partition(".layer.")
    index, _, rest = rest.partition(".")
    module, _, kind = rest.rpartition(".")
    if prefix != "encoder" or not index.isdigit() or module not in _LAYER_TENSORS:
        raise KeyError(f"no MLPerf tensor name for parameter {param_name!r}")
    scope = _LAYER_TENSORS[module]
    if scope.endswith("LayerNorm"):
        leaf = {"weight": "gamma", "bias": "beta"}[kind]
    else:
        leaf = {"weight": "kernel", "bias": "bias"}[kind]
    return f"bert/encoder/layer_{index}/{scope}/{leaf}"


def mlperf_tensor_names(model: nn.Module) -> dict[str, str]:
    """Every parameter name -> TF-style tensor name (the 398 of closed_bert.yaml at 24 layers).

    TF dense kernels are (in, out), the transpose of nn.Linear.weight; every other tensor keeps its shape
    (`cls/seq_relationship/output_weights` is (2, H) in both).
    """
    return {name: tf_tensor_name(name) for name, _ in model.named_parameters()}


def parameter_count(cfg: BertConfig) -> int:
    """Number of parameters of BertForPretraining(cfg), computed from shapes alone."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + n_out

    embeddings = (v + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    layer = 4 * linear(h, h) + linear(h, i) + linear(i, h) + 2 * (2 * h)
    pooler = linear(h, h)
    heads = linear(h, h) + 2 * h + v + linear(h, 2)  # the decoder weight is the word embeddings
    return embeddings + cfg.num_hidden_layers * layer + pooler + heads
