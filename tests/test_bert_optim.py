"""LAMB steps against hand-computed numbers, parameter groups, schedule, clipping, losses and metric."""

from __future__ import annotations

import math

import pytest
import torch

from mlperf_submission.closed.bert.model import BertConfig, BertForPretraining, mlperf_tensor_names
from mlperf_submission.closed.bert.optim import (
    Lamb,
    clip_grad_norm,
    lr_schedule,
    mlm_loss_and_accuracy,
    nsp_loss,
    param_groups,
)

B1, B2, EPS, WD, LR = 0.9, 0.999, 1e-6, 0.01, 0.1


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def lamb(w: torch.Tensor, b: torch.Tensor, **kwargs) -> Lamb:
    """w: decayed and trust-ratio adapted; b: excluded (no decay, no ratio), as param_groups makes them."""
    return Lamb(
        [
            {"params": [w], "weight_decay": WD, "layer_adaptation": True},
            {"params": [b], "weight_decay": 0.0, "layer_adaptation": False},
        ],
        lr=LR,
        betas=(B1, B2),
        eps=EPS,
        **kwargs,
    )


def test_two_lamb_steps_match_hand_computation():
    w = t(3.0, 4.0).requires_grad_()
    b = t(0.5, -0.5).requires_grad_()
    opt = lamb(w, b)

    # Step 1, g = (0.3, -0.4): m = 0.1 g, v = 0.001 g^2, so m_hat = g and sqrt(v_hat) = |g|.
    w.grad, b.grad = t(0.3, -0.4), t(0.2, -0.1)
    opt.step()
    u = [0.3 / (0.3 + 1e-6) + 0.01 * 3.0, -0.4 / (0.4 + 1e-6) + 0.01 * 4.0]
    ratio = 5.0 / math.sqrt(u[0] ** 2 + u[1] ** 2)  # ||w|| = 5
    w1 = [3.0 - 0.1 * ratio * u[0], 4.0 - 0.1 * ratio * u[1]]
    torch.testing.assert_close(w.detach(), t(*w1), rtol=1e-12, atol=1e-12)
    b1 = [0.5 - 0.1 * 0.2 / (0.2 + 1e-6), -0.5 + 0.1 * 0.1 / (0.1 + 1e-6)]  # no decay, ratio 1
    torch.testing.assert_close(b.detach(), t(*b1), rtol=1e-12, atol=1e-12)

    # Step 2, g = (0.1, 0.2): m = 0.9 m1 + 0.1 g; v = 0.999 v1 + 0.001 g^2; corrections 1-0.9^2, 1-0.999^2.
    w.grad, b.grad = t(0.1, 0.2), t(0.0, 0.0)
    opt.step()
    m = [0.9 * 0.03 + 0.1 * 0.1, 0.9 * -0.04 + 0.1 * 0.2]  # (0.037, -0.016)
    v = [0.999 * 0.00009 + 0.001 * 0.01, 0.999 * 0.00016 + 0.001 * 0.04]
    m_hat = [x / 0.19 for x in m]
    v_hat = [x / 0.001999 for x in v]
    u = [m_hat[i] / (math.sqrt(v_hat[i]) + 1e-6) + 0.01 * w1[i] for i in range(2)]
    ratio = math.sqrt(w1[0] ** 2 + w1[1] ** 2) / math.sqrt(u[0] ** 2 + u[1] ** 2)
    w2 = [w1[i] - 0.1 * ratio * u[i] for i in range(2)]
    torch.testing.assert_close(w.detach(), t(*w2), rtol=1e-12, atol=1e-12)


def test_lamb_without_bias_correction():
    w = t(3.0, 4.0).requires_grad_()
    b = t(0.0).requires_grad_()
    opt = lamb(w, b, bias_correction=False)
    w.grad, b.grad = t(0.3, -0.4), t(0.0)
    opt.step()
    # m = 0.1 g, sqrt(v) = sqrt(0.001) |g|: the raw moments (Graphcore's LAMB_NO_BIAS).
    s = math.sqrt(0.001)
    u = [0.03 / (s * 0.3 + 1e-6) + 0.03, -0.04 / (s * 0.4 + 1e-6) + 0.04]
    ratio = 5.0 / math.sqrt(u[0] ** 2 + u[1] ** 2)
    torch.testing.assert_close(w.detach(), t(3.0 - 0.1 * ratio * u[0], 4.0 - 0.1 * ratio * u[1]))


def test_trust_ratio_is_one_for_zero_weights():
    w = t(0.0, 0.0).requires_grad_()
    b = t(0.0).requires_grad_()
    opt = lamb(w, b)
    w.grad, b.grad = t(0.5, -2.0), t(0.0)
    opt.step()
    # ||w|| = 0: ratio 1, and the decay term is 0, so w = -lr * g / (|g| + eps).
    torch.testing.assert_close(w.detach(), t(-0.1 * 0.5 / (0.5 + 1e-6), 0.1 * 2.0 / (2.0 + 1e-6)))


def test_param_groups_exclude_layernorm_and_bias_as_the_reference():
    model = BertForPretraining(
        BertConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16
        )
    )
    decay, no_decay = param_groups(model, 0.01)
    assert (decay["weight_decay"], decay["layer_adaptation"]) == (0.01, True)
    assert (no_decay["weight_decay"], no_decay["layer_adaptation"]) == (0.0, False)
    names = mlperf_tensor_names(model)
    tf = {id(p): names[n] for n, p in model.named_parameters()}
    decayed = sorted(tf[id(p)] for p in decay["params"])
    excluded = sorted(tf[id(p)] for p in no_decay["params"])
    # Per layer: 6 kernels; plus 3 embedding tables, the pooler and transform kernels, NSP output_weights.
    assert len(decayed) == 6 * 2 + 3 + 1 + 1 + 1
    assert "cls/seq_relationship/output_weights" in decayed and "bert/embeddings/word_embeddings" in decayed
    assert all(n.endswith(("kernel", "embeddings", "output_weights")) for n in decayed)
    assert all(n.endswith(("gamma", "beta", "bias")) for n in excluded)
    assert "cls/predictions/output_bias" in excluded and len(decayed) + len(excluded) == len(names)


@pytest.mark.parametrize(
    "step,kwargs,expected",
    [
        (0, {}, 0.0),  # the first update of a warmup has learning rate 0, as TF's global_step 0
        (5, {}, 0.002),  # 4e-3 * 5 / 10
        (10, {}, 0.0036),  # warmup over: 4e-3 * (1 - 10 / 100)
        (55, {}, 0.0018),  # 4e-3 * 0.45
        (100, {}, 0.0),
        (150, {}, 0.0),  # held at end_lr past total_steps
        (50, {"power": 2.0}, 0.001),  # 4e-3 * 0.5^2
        (50, {"end_lr": 1e-4}, 0.00205),  # (4e-3 - 1e-4) * 0.5 + 1e-4
        (0, {"start_warmup_step": -5}, 0.002),  # 4e-3 * (0 + 5) / 10
        (10, {"start_warmup_step": 20}, 0.0),  # before the warmup starts
        (25, {"start_warmup_step": 20}, 0.002),  # 4e-3 * (25 - 20) / 10
        (30, {"start_warmup_step": 20}, 0.0028),  # decay counts absolute steps: 4e-3 * 0.7
        (0, {"warmup_steps": 0}, 0.004),
    ],
)
def test_lr_schedule(step, kwargs, expected):
    args = {"base_lr": 4e-3, "warmup_steps": 10, "start_warmup_step": 0, "total_steps": 100} | kwargs
    assert lr_schedule(step, **args) == pytest.approx(expected, abs=1e-15)


def test_clip_grad_norm_is_tf_clip_by_global_norm():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    assert clip_grad_norm([a, b], 1.0).item() == pytest.approx(13.0)
    torch.testing.assert_close(a.grad, torch.tensor([3 / 13, 4 / 13]))
    torch.testing.assert_close(b.grad, torch.tensor([12 / 13]))
    assert clip_grad_norm([a, b], 2.0).item() == pytest.approx(1.0)  # below max_norm: unchanged
    torch.testing.assert_close(b.grad, torch.tensor([12 / 13]))


def test_mlm_loss_and_weighted_accuracy():
    logits = torch.tensor(
        [
            [
                [math.log(2.0), 0.0, 0.0, 0.0],  # label 0: right, p = 2/5
                [1.0, 0.0, 0.0, 0.0],  # label 2: wrong, p = 1/(e + 3)
                [0.0, 0.0, 5.0, 0.0],  # weight 0: padding, ignored
            ]
        ]
    )
    ids, weights = torch.tensor([[0, 2, 1]]), torch.tensor([[1.0, 1.0, 0.0]])
    loss, correct, count = mlm_loss_and_accuracy(logits, ids, weights)
    assert loss.item() == pytest.approx((math.log(5 / 2) + math.log(math.e + 3)) / (2 + 1e-5), rel=1e-6)
    assert (correct.item(), count.item()) == (1.0, 2.0)
    # Accuracy over an eval set is sum(correct) / sum(weights), not a mean of per-batch accuracies.
    _, correct2, count2 = mlm_loss_and_accuracy(logits[:, :1], ids[:, :1], weights[:, :1])
    assert (correct + correct2) / (count + count2) == pytest.approx(2 / 3)


def test_nsp_loss_is_cross_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    assert nsp_loss(logits, torch.tensor([1, 0])).item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2)
    assert nsp_loss(logits[None], torch.tensor([[1, 0]])).item() == pytest.approx(
        (math.log(4 / 3) + math.log(2)) / 2
    )


def test_a_few_lamb_steps_reduce_the_pretraining_loss():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForPretraining(cfg)
    opt = Lamb(param_groups(model, 0.01), lr=0.05)
    ids = torch.randint(0, 40, (4, 16))
    positions, labels = torch.tensor([[1, 5, 9]] * 4), torch.randint(0, 40, (4, 3))
    losses = []
    for _ in range(10):
        mlm, nsp = model(ids, torch.zeros_like(ids), None, positions)
        loss = mlm_loss_and_accuracy(mlm, labels, torch.ones(4, 3))[0] + nsp_loss(
            nsp, torch.tensor([0, 1, 0, 1])
        )
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
