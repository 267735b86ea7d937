"""BERT model: parameter count, MLPerf tensor names, shapes, masks, packing and initialisation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import yaml
from mlperf_logging.mllog import constants

from mlperf_submission.closed.bert.model import (
    BertConfig,
    BertForPretraining,
    mlperf_tensor_names,
    parameter_count,
)

TINY = BertConfig(
    vocab_size=97,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=24,
)
CLOSED_BERT_YAML = (
    Path(constants.__file__).resolve().parents[1]
    / "compliance_checker"
    / "training_1.1.0"
    / "closed_bert.yaml"
)


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def closed_bert_tensor_names() -> list[str]:
    """The weights_initialization list that the 1.1.0 closed_bert END rule compares against."""
    for rule in yaml.safe_load(CLOSED_BERT_YAML.read_text()):
        if "END" in rule:
            return re.findall(r'"([^"]+)"', rule["END"]["CHECK"])
    raise AssertionError("closed_bert.yaml has no END rule")


def batch(cfg: BertConfig, b: int = 2, s: int = 12, p: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, cfg.vocab_size, (b, s), generator=g)
    token_type_ids = torch.randint(0, 2, (b, s), generator=g)
    positions = torch.randint(0, s, (b, p), generator=g)
    return input_ids, token_type_ids, positions


def test_parameter_count_of_bert_large():
    # embeddings 31,782,912 + 24 layers x 12,596,224 + pooler 1,049,600 + heads 1,084,220
    assert parameter_count(BertConfig()) == 336_226_108


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(TINY, type_vocab_size=3, intermediate_size=40)])
def test_parameter_count_matches_an_allocated_model(cfg):
    assert parameter_count(cfg) == sum(p.numel() for p in BertForPretraining(cfg).parameters())


def test_tensor_names_are_the_closed_bert_list():
    expected = closed_bert_tensor_names()
    assert len(expected) == 398 and "cls/predictions/decoder/kernel" not in expected
    model = BertForPretraining(dataclasses.replace(TINY, num_hidden_layers=24))
    names = mlperf_tensor_names(model)
    assert len(names) == len(list(model.parameters())) == 398
    assert sorted(names.values()) == sorted(expected)


def test_forward_shapes():
    model = BertForPretraining(TINY).eval()
    ids, types, positions = batch(TINY)
    mlm, nsp = model(ids, types, torch.ones_like(ids), positions)
    assert mlm.shape == (2, 4, TINY.vocab_size) and nsp.shape == (2, 2)
    mlm, nsp = model(ids, types, None, positions, nsp_positions=torch.tensor([[0, 5, 7], [0, 3, 3]]))
    assert mlm.shape == (2, 4, TINY.vocab_size) and nsp.shape == (2, 3, 2)


def test_padding_content_does_not_change_real_tokens():
    model = BertForPretraining(TINY).eval()
    ids, types, _ = batch(TINY, s=12)
    mask = torch.ones_like(ids)
    mask[:, 8:] = 0
    positions = torch.tensor([[0, 3, 7], [1, 2, 6]])
    other_ids, other_types = ids.clone(), types.clone()
    other_ids[:, 8:] = (ids[:, 8:] + 5) % TINY.vocab_size
    other_types[:, 8:] = 1 - types[:, 8:]
    with torch.no_grad():
        a = model(ids, types, mask, positions)
        b = model(other_ids, other_types, mask, positions)
        c = model(other_ids, other_types, torch.ones_like(ids), positions)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a[0] - c[0]).abs().max() > 1e-5  # without the mask the padding does change them


def test_block_diagonal_mask_and_position_ids_pack_sequences_exactly():
    """Two sequences packed into one row behave as each run alone (the open division's packing)."""
    model = BertForPretraining(TINY).eval()
    ids, types, _ = batch(TINY, b=2, s=6, seed=1)
    packed_ids = torch.cat([ids[0], ids[1]])[None]  # (1, 12)
    packed_types = torch.cat([types[0], types[1]])[None]
    position_ids = torch.cat([torch.arange(6), torch.arange(6)])[None]
    mask = torch.zeros(1, 12, 12)
    mask[0, :6, :6] = mask[0, 6:, 6:] = 1
    with torch.no_grad():
        alone_mlm, alone_nsp = model(ids, types, torch.ones_like(ids), torch.tensor([[1, 4], [0, 5]]))
        mlm, nsp = model(
            packed_ids,
            packed_types,
            mask,
            torch.tensor([[1, 4, 6, 11]]),
            position_ids=position_ids,
            nsp_positions=torch.tensor([[0, 6]]),
        )
    torch.testing.assert_close(mlm[0], alone_mlm.reshape(4, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nsp[0], alone_nsp, rtol=1e-5, atol=1e-5)


def test_initialisation_is_truncated_normal_with_unit_layernorm_and_zero_bias():
    cfg = dataclasses.replace(TINY, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    model = BertForPretraining(cfg)
    for name, p in model.named_parameters():
        if "LayerNorm.weight" in name:
            assert torch.all(p == 1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert p.abs().max() <= 2 * cfg.initializer_range, name
    words = model.embeddings.word_embeddings.weight
    # A normal truncated at 2 sigma has standard deviation 0.8796 sigma.
    assert words.std().item() == pytest.approx(0.8796 * cfg.initializer_range, rel=0.05)


def test_decoder_is_tied_to_the_word_embeddings():
    model = BertForPretraining(TINY).eval()
    assert not any(
        p.shape == (TINY.vocab_size, TINY.hidden_size) for n, p in model.named_parameters() if "heads" in n
    )
    ids, types, positions = batch(TINY)
    mlm, _ = model(ids, types, None, positions)
    mlm.sum().backward()
    assert model.embeddings.word_embeddings.weight.grad[ids.unique()].abs().sum() > 0
    # Every row gets decoder gradient, including words absent from the input.
    absent = sorted(set(range(TINY.vocab_size)) - set(ids.flatten().tolist()))
    assert model.embeddings.word_embeddings.weight.grad[absent].abs().sum(-1).min() > 0


def test_config_is_frozen_keyword_only_and_checked():
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        BertConfig(30522)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'hidden_size'"):
        TINY.hidden_size = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        BertConfig(hidden_size=100, num_attention_heads=16)
