"""Packed BERT: each sequence of a pack gets the logits and losses it gets when run alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mlperf_submission.closed.bert.model import BertConfig, BertForPretraining, forward_packed, packed_attention_mask
from mlperf_submission.closed.bert.optim import mlm_loss_and_accuracy, nsp_loss, packed_loss, per_sequence_losses
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data import packing
from mlperf_submission.common.data.bert_wiki import synthetic_instances
from mlperf_submission.common.data.packing.write import write_packed
from mlperf_submission.open.bert import presets

SEQ, MAX_PRED, K = 32, 6, 3
# Lengths of the unpacked sequences, and packs of 1, 2 and 3 of them, each full (no padding) or not.
LENGTHS = [32, 25, 20, 12, 20, 6, 10, 12, 10, 10, 12, 8]
PACKS = {
    "1 full": [[0]], "1 padded": [[1]],
    "2 full": [[2, 3]], "2 padded": [[4, 5]],
    "3 full": [[6, 7, 8]], "3 padded": [[9, 10, 11]],
    "mixed batch": [[0], [4, 5], [9, 10, 11], [2, 3]],
}


@pytest.fixture(scope="module")
def unpacked():
    return synthetic_instances(len(LENGTHS), seq_len=SEQ, vocab_size=128, max_pred=MAX_PRED, seed=0,
                               lengths=np.array(LENGTHS))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=SEQ, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForPretraining(cfg).eval()


def as_packs(members: list[list[int]]) -> np.ndarray:
    """Sequence indices per pack -> (packs, K), -1 for empty slots, as packing.assign returns them."""
    out = np.full((len(members), K), -1)
    for row, m in enumerate(members):
        out[row, : len(m)] = m
    return out


def tensors(arrays):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def run_alone(model, unpacked, i):
    """One sequence, unpacked, through closed BERT's path -> (mlm logits of its predictions, nsp logits, losses)."""
    b = tensors({k: v[i : i + 1] for k, v in unpacked.items()})
    mlm, nsp = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    loss, _, count = mlm_loss_and_accuracy(mlm, b["masked_lm_ids"], b["masked_lm_weights"])
    n = int(count)
    return mlm[0, :n], nsp[0], loss, nsp_loss(nsp, b["next_sentence_labels"])


@pytest.mark.parametrize("case", PACKS)
def test_each_packed_sequence_equals_the_sequence_run_alone(model, unpacked, case):
    packs = PACKS[case]
    b = tensors(packing.pack_arrays(unpacked, as_packs(packs), K))
    with torch.no_grad():
        mlm, nsp = forward_packed(model, b)
        parts = per_sequence_losses(mlm, nsp, b)
    for row, members in enumerate(packs):
        for slot, i in enumerate(members):
            alone_mlm, alone_nsp, alone_loss, alone_nsp_loss = run_alone(model, unpacked, i)
            mine = (b["masked_lm_sequence"][row] == slot + 1) & (b["masked_lm_weights"][row] > 0)
            torch.testing.assert_close(mlm[row, mine], alone_mlm, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(nsp[row, slot], alone_nsp, rtol=1e-5, atol=1e-5)
            mean_nll = parts["mlm_nll"][row, slot] / (parts["mlm_count"][row, slot] + 1e-5)
            torch.testing.assert_close(mean_nll, alone_loss, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(parts["nsp_nll"][row, slot], alone_nsp_loss, rtol=1e-5, atol=1e-5)
        assert b["nsp_weights"][row].sum() == len(members)


def test_per_token_loss_and_its_gradients_equal_the_padded_batch(model, unpacked):
    """The reference's loss over a padded batch = the packed per-token loss over the same sequences."""
    members = PACKS["mixed batch"]
    order = np.concatenate(members)
    padded = tensors({k: v[order] for k, v in unpacked.items()})
    packed = tensors(packing.pack_arrays(unpacked, as_packs(members), K))

    model.zero_grad()
    mlm, nsp = model(padded["input_ids"], padded["segment_ids"], padded["input_mask"], padded["masked_lm_positions"])
    reference, correct, count = mlm_loss_and_accuracy(mlm, padded["masked_lm_ids"], padded["masked_lm_weights"])
    reference = reference + nsp_loss(nsp, padded["next_sentence_labels"])
    reference.backward()
    expected = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    mlm, nsp = forward_packed(model, packed)
    loss, packed_correct, packed_count = packed_loss(per_sequence_losses(mlm, nsp, packed), packed, "per_token")
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert (packed_correct, packed_count) == (correct, count)
    for got, want in zip((p.grad for p in model.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_per_sequence_averaging_weighs_every_sequence_alike(model, unpacked):
    packs = PACKS["mixed batch"]
    b = tensors(packing.pack_arrays(unpacked, as_packs(packs), K))
    with torch.no_grad():
        parts = per_sequence_losses(*forward_packed(model, b), b)
        per_sequence, _, _ = packed_loss(parts, b, "per_sequence")
        per_token, _, _ = packed_loss(parts, b, "per_token")
        alone = [run_alone(model, unpacked, i) for i in np.concatenate(packs)]
    expected = torch.stack([mlm_loss + nsp for _, _, mlm_loss, nsp in alone]).mean()
    torch.testing.assert_close(per_sequence, expected, rtol=1e-5, atol=1e-6)
    assert abs(per_sequence - per_token) > 1e-3  # the sequences have 2 to 5 predictions: the two differ


def test_attention_mask_is_block_diagonal_and_padding_sees_only_padding():
    ids = torch.tensor([[1, 1, 2, 2, 2, 0, 0]])
    mask = packed_attention_mask(ids)[0].int()
    assert mask.tolist() == [
        [1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1, 1],
    ]


def test_open_presets_pack_and_keep_the_quality_target():
    for name, make in presets.PRESETS.items():
        cfg = make()
        presets.validate_open(cfg)
        assert cfg.global_batch_items * cfg.sequences_per_pack == cfg.global_batch_size, name
    pod16 = presets.ipu_pod16()
    assert (pod16.global_batch_items, pod16.max_grad_norm, pod16.loss_averaging) == (1536, 0.0, "per_sequence")
    with pytest.raises(UserError, match="quality target"):
        presets.validate_open(dataclasses.replace(pod16, target_accuracy=0.7))
    with pytest.raises(UserError, match="multiple of sequences_per_pack"):
        presets.validate_open(dataclasses.replace(pod16, global_batch_size=3071))
    with pytest.raises(UserError, match="torch_compile"):
        presets.validate_open(dataclasses.replace(pod16, torch_compile="inductor"))
    with pytest.raises(UserError, match="unpad=false is closed BERT's"):
        presets.validate_open(dataclasses.replace(pod16, unpad=False))
    with pytest.raises(UserError, match="nnlshp packs at most 3"):
        presets.validate_open(dataclasses.replace(pod16, max_sequences_per_pack=4))
    presets.validate_open(dataclasses.replace(pod16, max_sequences_per_pack=8, packing="spfhp"))


def test_nsp_of_empty_slots_costs_nothing(model, unpacked):
    b = tensors(packing.pack_arrays(unpacked, as_packs([[0]]), K))
    with torch.no_grad():
        parts = per_sequence_losses(*forward_packed(model, b), b)
    assert parts["nsp_nll"][0, 1:].abs().sum() == 0 and parts["mlm_count"][0, 1:].sum() == 0


def test_datasets_on_storage_state_their_sequences_through_the_seam(tmp_path):
    """Closed reads a converted folder one sequence an item; open reads its packs, each with its own count."""
    from mlperf_submission.closed.bert import data as closed_data
    from mlperf_submission.closed.bert import presets as closed_presets
    from mlperf_submission.common.data import bert_wiki
    from mlperf_submission.open.bert.train import packed_split

    bert_wiki.write_synthetic(tmp_path / "wiki", num_train=40, num_eval=12, seq_len=32, vocab_size=200, max_pred=4,
                              seed=1)
    train, val = closed_data.datasets(dataclasses.replace(closed_presets.smoke(), dataset="wiki"), tmp_path / "wiki")
    assert (train.sequences, val.sequences, train.item_sequences) == (40, 12, None) and len(train) == 40
    write_packed(tmp_path / "wiki", tmp_path / "packed", algorithm="spfhp", max_per_pack=3)
    packs = packed_split(tmp_path / "packed", "train")
    assert packs.sequences == 40 == int(packs.item_sequences.sum()) and len(packs.item_sequences) == len(packs)
    assert set(packs[0]) >= {"input_ids", "nsp_weights"}
