"""Packed BERT: several sequences in one row of the batch, with no cross-contamination between them.

The weights are closed BERT's (`closed/bert/model.py`, unchanged); only the inputs differ. A pack of k
sequences carries, per token, the id of the sequence it belongs to (`sequence_ids`, 1..k, 0 for padding),
from which each token's attention is limited to its own sequence (a block-diagonal mask); position ids
restart at 0 with each sequence; segment ids are each sequence's own; the masked-LM predictions of all k
sequences share one list (`masked_lm_sequence` says whose each is); NSP is read through each sequence's own
[CLS] (`nsp_positions`). Every sequence's logits are then those of the same sequence run alone, up to float
summation order (tests/test_open_bert.py).

Loss averaging (Krell et al., arXiv 2107.02027, §4): `per_token` is the reference's masked-LM loss, the mean
over all masked tokens of the batch; `per_sequence` first takes each sequence's own mean, as an unpacked
batch of one sequence would, then the mean over the sequences, so that a short sequence packed beside a long
one weighs what it would weigh unpacked.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mlperf_submission.closed.bert.model import BertForPretraining

LossAveraging = Literal["per_sequence", "per_token"]


def packed_attention_mask(sequence_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) sequence ids -> (B, S, S) bool, True where query and key belong to the same sequence.

    Padding keys (id 0) are hidden from every query; a padding query sees nothing and gets the uniform
    attention of the additive mask, which no real token reads.
    """
    same = sequence_ids[:, :, None] == sequence_ids[:, None, :]  # (B, S, S)
    return same & (sequence_ids[:, None, :] > 0)


def forward_packed(model: BertForPretraining, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mlm_logits (B, Q, V), nsp_logits (B, K, 2)) for a batch of packs."""
    return model(batch["input_ids"], batch["segment_ids"], packed_attention_mask(batch["sequence_ids"]),
                 batch["masked_lm_positions"], position_ids=batch["position_ids"].long(),
                 nsp_positions=batch["nsp_positions"])


def per_sequence_losses(
    mlm_logits: torch.Tensor, nsp_logits: torch.Tensor, batch: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per-sequence sums for a batch of packs, each (B, K), slot k for the (k+1)-th sequence of a pack:

    mlm_nll (sum over the sequence's masked tokens), mlm_count (its number of weighted predictions),
    mlm_correct (weighted hits), nsp_nll (its NSP cross-entropy); `nsp_weights` marks the real sequences.
    """
    k = nsp_logits.shape[1]
    log_probs = F.log_softmax(mlm_logits.float(), dim=-1)  # (B, Q, V)
    ids = batch["masked_lm_ids"].long()
    nll = -log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (B, Q)
    hit = (log_probs.argmax(-1) == ids).float()  # (B, Q)
    owner = F.one_hot(batch["masked_lm_sequence"].long(), k + 1)[..., 1:].float()  # (B, Q, K); 0 = padding
    owner = owner * batch["masked_lm_weights"].float().unsqueeze(-1)
    nsp_labels = batch["next_sentence_labels"].long()
    nsp_nll = F.cross_entropy(nsp_logits.float().transpose(1, 2), nsp_labels.clamp(min=0), reduction="none")
    return {
        "mlm_nll": torch.einsum("bq,bqk->bk", nll, owner),
        "mlm_count": owner.sum(1),
        "mlm_correct": torch.einsum("bq,bqk->bk", hit, owner).detach(),
        "nsp_nll": nsp_nll * batch["nsp_weights"].float(),  # (B, K)
    }


def packed_loss(parts: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                averaging: LossAveraging) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (loss, correct, count): masked-LM loss averaged as `averaging` says, plus the mean NSP loss over
    the real sequences; correct and count as closed BERT's, for the weighted masked-LM accuracy."""
    sequences = batch["nsp_weights"].float()  # (B, K)
    num_sequences = sequences.sum().clamp(min=1)
    if averaging == "per_token":
        mlm = parts["mlm_nll"].sum() / (parts["mlm_count"].sum() + 1e-5)
    else:
        mlm = (parts["mlm_nll"] / (parts["mlm_count"] + 1e-5) * sequences).sum() / num_sequences
    nsp = parts["nsp_nll"].sum() / num_sequences
    return mlm + nsp, parts["mlm_correct"].sum(), parts["mlm_count"].sum().detach()
