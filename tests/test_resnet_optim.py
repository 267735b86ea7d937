import math

import pytest
import torch
from torch import nn

from mlperf_submission.closed.resnet.model import ResNet50
from mlperf_submission.closed.resnet.optim import (
    LABEL_SMOOTHING,
    LARS,
    param_groups,
    poly_schedule,
    sgd,
    sgd_param_groups,
    smoothed_cross_entropy,
)

LR, MOMENTUM, WD, EETA = 0.5, 0.9, 0.01, 0.001


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def toy_lars(w: torch.Tensor, b: torch.Tensor, epsilon: float = 0.0) -> LARS:
    """w is a LARS-scaled weight; b is excluded without decay, as param_groups makes BN and bias groups."""
    return LARS(
        [
            {"params": [w], "weight_decay": WD, "lars_exclude": False},
            {"params": [b], "weight_decay": 0.0, "lars_exclude": True},
        ],
        lr=LR,
        momentum=MOMENTUM,
        eeta=EETA,
        epsilon=epsilon,
    )


def test_lars_one_step_by_hand():
    w = nn.Parameter(t(3.0, 4.0))  # |w| = 5
    b = nn.Parameter(t(1.0, -2.0))
    opt = toy_lars(w, b)
    w.grad = t(0.6, 0.8)  # |g| = 1
    b.grad = t(0.5, 0.25)
    opt.step()
    # trust = 0.001 * 5 / (1 + 0.01 * 5) = 0.005 / 1.05
    # d = g + 0.01 * w = (0.63, 0.84) = 1.05 * (0.6, 0.8)
    # v = 0.5 * (0.005 / 1.05) * 1.05 * (0.6, 0.8) = 0.0025 * (0.6, 0.8) = (0.0015, 0.002)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], t(0.0015, 0.002))
    torch.testing.assert_close(w.detach(), t(3.0 - 0.0015, 4.0 - 0.002))
    # excluded: v = 0.5 * (0.5, 0.25) = (0.25, 0.125); no decay, no trust ratio
    torch.testing.assert_close(opt.state[b]["momentum_buffer"], t(0.25, 0.125))
    torch.testing.assert_close(b.detach(), t(0.75, -2.125))


def test_lars_epsilon_in_denominator():
    w = nn.Parameter(t(3.0, 4.0))
    b = nn.Parameter(t(0.0))
    opt = toy_lars(w, b, epsilon=1.0)
    w.grad = t(0.6, 0.8)
    opt.step()
    # trust = 0.005 / (1 + 0.05 + 1) = 0.005 / 2.05; v = 0.5 * trust * (0.63, 0.84)
    trust = 0.005 / 2.05
    torch.testing.assert_close(w.detach(), t(3.0 - 0.5 * trust * 0.63, 4.0 - 0.5 * trust * 0.84))
    assert b.item() == 0.0  # no grad, untouched


def test_lars_momentum_accumulates_over_two_steps():
    w = nn.Parameter(t(3.0, 4.0))
    b = nn.Parameter(t(1.0, -2.0))
    opt = toy_lars(w, b)
    w.grad, b.grad = t(0.6, 0.8), t(0.5, 0.25)
    opt.step()
    w.grad, b.grad = t(1.2, 1.6), t(-1.0, 0.5)  # |g| = 2
    opt.step()
    # after step 1: w = (2.9985, 3.998) = 4.9975 * (0.6, 0.8), so |w| = 4.9975; v = (0.0015, 0.002)
    trust = 0.001 * 4.9975 / (2.0 + 0.01 * 4.9975)
    d = (1.2 + 0.01 * 2.9985, 1.6 + 0.01 * 3.998)
    v = (0.9 * 0.0015 + 0.5 * trust * d[0], 0.9 * 0.002 + 0.5 * trust * d[1])
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], t(*v))
    torch.testing.assert_close(w.detach(), t(2.9985 - v[0], 3.998 - v[1]))
    # excluded: v = 0.9 * (0.25, 0.125) + 0.5 * (-1.0, 0.5) = (-0.275, 0.3625)
    torch.testing.assert_close(opt.state[b]["momentum_buffer"], t(-0.275, 0.3625))
    torch.testing.assert_close(b.detach(), t(0.75 + 0.275, -2.125 - 0.3625))


def test_lars_zero_weight_norm_gives_trust_one():
    w = nn.Parameter(t(0.0, 0.0))
    opt = LARS([w], lr=LR, momentum=MOMENTUM, weight_decay=WD, eeta=EETA)
    w.grad = t(0.6, 0.8)
    opt.step()
    # trust = 1; v = 0.5 * (g + 0.01 * 0) = (0.3, 0.4)
    torch.testing.assert_close(w.detach(), t(-0.3, -0.4))


def test_lars_zero_grad_norm_gives_trust_one():
    w = nn.Parameter(t(3.0, 4.0))
    opt = LARS([w], lr=LR, momentum=MOMENTUM, weight_decay=WD, eeta=EETA)
    w.grad = t(0.0, 0.0)
    opt.step()
    # trust = 1; v = 0.5 * (0 + 0.01 * (3, 4)) = (0.015, 0.02)
    torch.testing.assert_close(w.detach(), t(2.985, 3.98))
    assert torch.isfinite(opt.state[w]["momentum_buffer"]).all()


def test_lars_steps_a_model_in_float32():
    torch.manual_seed(0)
    model = ResNet50(num_classes=10, width=8)
    opt = LARS(param_groups(model, 5e-5), lr=1.0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    smoothed_cross_entropy(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lars_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="invalid LARS hyperparameters: lr=-1.0 "):
        LARS([nn.Parameter(t(1.0))], lr=-1.0)


SCHEDULE = dict(base_lr=10.0, end_lr=1e-4, warmup_steps=100, decay_steps=400)


@pytest.mark.parametrize(
    "step, lr",
    [
        (0, 0.0),  # warmup starts from 0: 10 * 0 / 100
        (50, 5.0),  # 10 * 50 / 100
        (99, 9.9),  # 10 * 99 / 100
        (100, 10.0),  # end of warmup: (10 - 1e-4) * 1**2 + 1e-4
        (200, 9.9999 * 0.75**2 + 1e-4),  # 100 of 400 decay steps: 5.62504375
        (300, 9.9999 * 0.25 + 1e-4),  # mid-decay: 2.500075
        (499, 9.9999 * (1 / 400) ** 2 + 1e-4),
        (500, 1e-4),  # end of decay
        (10_000, 1e-4),  # beyond: clamped to end_lr
    ],
)
def test_poly_schedule_values(step, lr):
    assert poly_schedule(step, **SCHEDULE) == pytest.approx(lr, rel=1e-12, abs=1e-15)


def test_poly_schedule_power_and_no_warmup():
    assert poly_schedule(300, **SCHEDULE, power=1.0) == pytest.approx(9.9999 * 0.5 + 1e-4)
    assert poly_schedule(0, base_lr=2.0, end_lr=0.0, warmup_steps=0, decay_steps=10) == 2.0
    assert poly_schedule(5, base_lr=2.0, end_lr=0.0, warmup_steps=0, decay_steps=10) == pytest.approx(0.5)


@pytest.mark.parametrize("step, warmup_steps, decay_steps", [(-1, 10, 10), (0, -1, 10), (0, 10, 0)])
def test_poly_schedule_rejects_bad_arguments(step, warmup_steps, decay_steps):
    with pytest.raises(ValueError, match="invalid schedule: "):
        poly_schedule(step, base_lr=1.0, end_lr=0.0, warmup_steps=warmup_steps, decay_steps=decay_steps)


def test_param_groups_exclude_bn_and_bias():
    conv, bn, fc = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Linear(4, 2)
    groups = param_groups(nn.Sequential(conv, bn, fc), 5e-5)
    decayed, excluded = groups
    assert decayed["weight_decay"] == 5e-5 and decayed["lars_exclude"] is False
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] is True
    assert {id(p) for p in decayed["params"]} == {id(conv.weight), id(fc.weight)}
    assert {id(p) for p in excluded["params"]} == {id(conv.bias), id(bn.weight), id(bn.bias), id(fc.bias)}


def test_param_groups_on_resnet():
    model = ResNet50(num_classes=10, width=8)
    decayed, excluded = param_groups(model, 1e-4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(decayed["params"]) == len(convs) + 1 == 54  # 53 convs + FC weight
    assert len(excluded["params"]) == 2 * len(bns) + 1 == 107  # BN gamma/beta + FC bias
    assert len(decayed["params"]) + len(excluded["params"]) == len(list(model.parameters()))


def test_sgd_groups_are_the_references_l2_regularisers():
    """Keras l2(wd) on every conv and dense kernel and on the dense bias (gradient 2 x wd x w); none on BN."""
    model = ResNet50(num_classes=10, width=8)
    decayed, plain = sgd_param_groups(model, 1e-4)
    bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert decayed["weight_decay"] == 2e-4 and plain["weight_decay"] == 0.0
    assert decayed["lars_exclude"] and plain["lars_exclude"]
    assert {id(p) for p in plain["params"]} == bn
    assert len(decayed["params"]) == 53 + 2  # 53 conv kernels, the FC kernel and the FC bias
    assert any(p is model.fc.bias for p in decayed["params"])


@pytest.mark.parametrize("foreach", [True, False])
def test_sgd_step_is_keras_momentum_with_l2(foreach):
    """Keras SGD(momentum): accum = m * accum - lr * (g + 2 wd w); w += accum. Two steps at different lr show
    the learning rate sits inside the buffer."""
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        model[0].bias.fill_(0.5)
    opt = sgd(model, lr=0.1, momentum=0.9, weight_decay=0.05, foreach=foreach)
    w, b = torch.tensor([[1.0, -2.0]]), torch.tensor([0.5])
    accum_w, accum_b = torch.zeros(1, 2), torch.zeros(1)
    for lr, g in ((0.1, 1.0), (0.4, -0.5)):
        for group in opt.param_groups:
            group["lr"] = lr
        model[0].weight.grad = torch.full((1, 2), g)
        model[0].bias.grad = torch.full((1,), g)
        opt.step()
        accum_w = 0.9 * accum_w - lr * (g + 2 * 0.05 * w)
        accum_b = 0.9 * accum_b - lr * (g + 2 * 0.05 * b)
        w, b = w + accum_w, b + accum_b
        torch.testing.assert_close(model[0].weight.detach(), w)
        torch.testing.assert_close(model[0].bias.detach(), b)


def test_smoothed_cross_entropy_by_hand():
    logits, target = t(0.0, math.log(3.0)).reshape(1, 2), torch.tensor([1])
    # p = (1/4, 3/4); smoothed target = (0.05, 0.95)
    expected = -(0.05 * math.log(0.25) + 0.95 * math.log(0.75))
    assert LABEL_SMOOTHING == 0.1
    assert smoothed_cross_entropy(logits, target).item() == pytest.approx(expected)
