"""Closed BERT's unpadded layout: the sequences of a batch in fewer rows, with the padded batch's loss,
masked-LM accuracy counts and gradients, up to float summation order.

Tolerances: fp32 on one thread; the loss agrees to 1e-6 relative (summation order of the same terms) and every
gradient tensor to 1e-4 relative / 1e-6 absolute (attention softmax over a different number of masked keys,
each 0.0, and a different matmul blocking).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mlperf_submission.closed.bert import data as bert_data
from mlperf_submission.closed.bert import presets
from mlperf_submission.closed.bert import steps as bert_steps
from mlperf_submission.closed.bert.model import BertForPretraining, Jagged
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data import bert_wiki, packing
from mlperf_submission.common.runtime import distributed

pytestmark = pytest.mark.usefixtures("one_thread")
SEQ, BATCH = 64, 24


def cfg(**changes) -> presets.BertRunConfig:
    return dataclasses.replace(presets.smoke(), max_seq_length=SEQ, max_predictions_per_seq=10, num_hidden_layers=2,
                               **changes)


@pytest.fixture(scope="module")
def items():
    """BATCH sequences of Wikipedia's length mix (about half of a padded row is padding), as loader items."""
    lengths = bert_wiki.wikipedia_lengths(BATCH, SEQ, seed=3)
    arrays = bert_wiki.synthetic_instances(BATCH, seq_len=SEQ, vocab_size=1000, max_pred=10, seed=0, lengths=lengths)
    dataset = bert_data.ArrayDataset(arrays)
    return [dataset[i] for i in range(BATCH)]


def test_first_fit_puts_every_sequence_once_in_rows_that_fit():
    lengths = np.array([64, 5, 30, 33, 31, 20, 12, 64, 7])
    rows = packing.first_fit_rows(lengths, 64)
    members = rows[rows >= 0]
    assert sorted(members.tolist()) == list(range(len(lengths)))
    assert all(lengths[r[r >= 0]].sum() <= 64 for r in rows)
    assert len(rows) == 5  # 266 tokens: the fewest rows of 64 that can hold them
    with pytest.raises(ValueError, match="more than 64"):
        packing.first_fit_rows(np.array([65]), 64)


def test_unpadded_rows_hold_the_same_sequences_in_fewer_rows(items):
    batch = bert_data.unpadded_collate(items)
    lengths = torch.stack([item["input_mask"] for item in items]).sum(1)
    assert int(batch["nsp_weights"].sum()) == BATCH
    assert (batch["sequence_ids"] > 0).sum() == lengths.sum()  # every real token once, no padding between
    assert len(batch["input_ids"]) < BATCH / 1.5
    assert sorted(batch["next_sentence_labels"][batch["nsp_weights"] > 0].tolist()) == sorted(
        int(item["next_sentence_labels"]) for item in items)


def _loss_and_grads(model, batch, c):
    model.zero_grad()
    loss, correct, count = bert_steps.forward(model, batch, c, torch.device("cpu"))
    loss.backward()
    return loss.detach(), correct, count, [p.grad.clone() for p in model.parameters()]


def test_unpadded_loss_accuracy_and_gradients_equal_the_padded_batch(items):
    unpadded, padded = cfg(), cfg(unpad=False)
    torch.manual_seed(0)
    model = BertForPretraining(unpadded.model_config())  # smoke: dropout 0, so both see one function
    want = _loss_and_grads(model, torch.utils.data.default_collate(items), padded)
    got = _loss_and_grads(model, bert_data.unpadded_collate(items), unpadded)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    assert (got[1], got[2]) == (want[1], want[2])  # the masked-LM hits and their count, exactly
    for g, w in zip(got[3], want[3], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_closed_lays_out_batches_unpadded_unless_told_and_refuses_compile_with_it():
    assert presets.smoke().unpad and bert_data.collate(presets.smoke()) is bert_data.unpadded_collate
    assert bert_data.collate(cfg(unpad=False)) is None
    assert "sequence_ids" in bert_data.synthetic_batch(cfg(), 4)
    assert "sequence_ids" not in bert_data.synthetic_batch(cfg(unpad=False), 4)
    smoke = presets.smoke()
    with pytest.raises(UserError, match="torch_compile needs fixed shapes"):
        presets.validate_closed(dataclasses.replace(smoke, torch_compile="aot_eager"))
    presets.validate_closed(dataclasses.replace(smoke, torch_compile="aot_eager", unpad=False))
    with pytest.raises(UserError, match="loss_averaging is per_token"):
        presets.validate_closed(dataclasses.replace(smoke, loss_averaging="per_sequence"))


def test_jagged_attention_equals_the_block_mask(items):
    """Variable-length attention on nested tensors: the block-diagonal mask's loss and gradients."""
    block, jagged = cfg(), cfg(unpad_attention="jagged")
    torch.manual_seed(0)
    model = BertForPretraining(block.model_config())
    batch = bert_data.unpadded_collate(items)
    layout = Jagged.of(batch["sequence_ids"])
    assert len(layout.offsets) == BATCH + 1 and int(layout.offsets[-1]) == int((batch["sequence_ids"] > 0).sum())
    want, got = _loss_and_grads(model, batch, block), _loss_and_grads(model, batch, jagged)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    assert (got[1], got[2]) == (want[1], want[2])
    for g, w in zip(got[3], want[3], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_each_micro_batchs_sequences_over_all_ranks_are_read_on_the_host():
    """Packs of 1-3 sequences: the counts from the sampler's order equal the sum of what the ranks' loaders
    deliver, micro-batch by micro-batch, with no collective."""
    per_item = np.random.default_rng(0).integers(1, 4, size=103)
    ranks, batch = 3, 5
    samplers = [distributed.EpochSampler(len(per_item), ranks, r, seed=7) for r in range(ranks)]
    for epoch in (1, 2):
        for s in samplers:
            s.set_epoch(epoch)
        batches = len(samplers[0]) // batch
        got = samplers[0].batch_sums(per_item, ranks * batch, batches)
        shards = [list(s) for s in samplers]
        want = [sum(int(per_item[i]) for shard in shards for i in shard[k * batch:(k + 1) * batch])
                for k in range(batches)]
        assert got == want
    assert samplers[0].batch_sums(None, 15, 4) == [15] * 4
    dataset = bert_data.ArrayDataset({"nsp_weights": np.array([[1, 1, 0], [1, 0, 0]], np.float32)})
    assert dataset.item_sequences.tolist() == [2, 1] and dataset.sequences == 3
