"""Speed options change nothing beyond rounding: foreach optimizer steps, bf16 autocast, channels_last, the
data-loading overlap settings, and torch.compile with its untimed warm-up undone; the X.Y precision notation.

Tolerances: the foreach steps agree with the per-tensor loop to 1e-6 (LARS) and 1e-5 (LAMB) relative, fp32
rounding. Over 6 steps of a seeded tiny run, the losses with bf16 autocast, channels_last and foreach steps
stay within 5% of fp32's for ResNet-50 at width 8 (bf16 keeps 8 bits of mantissa, and batch norm over 8
channels amplifies it: 1.2-3.2% over seeds 0-3) and within 0.1% for BERT at hidden 32 (2.5e-5 seen: the
loss is dominated by the fp32 softmax over the vocabulary). torch.compile (aot_eager) reproduces the plain
run's printed losses and accuracy exactly. About 25 s on one busy core, 15 s of it the compiled run.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch

from mlperf_submission.closed.bert import data as bert_data
from mlperf_submission.closed.bert import optim as bert_optim
from mlperf_submission.closed.bert import presets as bert_presets
from mlperf_submission.closed.bert import steps as bert_steps
from mlperf_submission.closed.bert.model import BertForPretraining
from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.closed.resnet import train as resnet_train
from mlperf_submission.closed.resnet.model import ResNet50
from mlperf_submission.closed.resnet.optim import LARS, param_groups, smoothed_cross_entropy
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.data.loader import loader
from mlperf_submission.common.runtime.compile import batch_sizes, compiled, undone
from mlperf_submission.common.runtime.precision import autocast, notation

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def test_precision_notation():
    assert notation("fp32") == "32.32"
    assert notation("bf16") == "16.32" and notation("fp16") == "16.32"  # autocast keeps fp32 weights
    assert notation("fp16", torch.float16) == "16.16"
    with pytest.raises(UserError, match="unknown precision"):
        notation("fp8")


def _max_relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs() / y.abs().clamp(min=1e-3)).max().item() for x, y in zip(a, b, strict=True))


def test_foreach_lars_matches_the_per_tensor_loop():
    torch.manual_seed(0)
    plain = ResNet50(num_classes=10, width=8)
    plain.fc.bfloat16()  # a second dtype: foreach kernels run per (device, dtype)
    fast = copy.deepcopy(plain)
    loop_opt = LARS(param_groups(plain, 5e-5), lr=0.5, foreach=False)
    foreach_opt = LARS(param_groups(fast, 5e-5), lr=0.5, foreach=True)
    for _ in range(3):
        for p, q in zip(plain.parameters(), fast.parameters(), strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        loop_opt.step()
        foreach_opt.step()
    assert _max_relative_difference(list(fast.parameters()), list(plain.parameters())) < 1e-2  # bf16 fc
    fp32 = [(p, q) for p, q in zip(fast.parameters(), plain.parameters(), strict=True) if p.dtype == torch.float32]
    assert _max_relative_difference(*zip(*fp32, strict=True)) < 1e-6


@pytest.mark.parametrize("bias_correction", [True, False])
def test_foreach_lamb_matches_the_per_tensor_loop(monkeypatch, bias_correction):
    monkeypatch.setattr(bert_optim, "FOREACH_CHUNK_ELEMENTS", 5000)  # several chunks, one tensor over the limit
    torch.manual_seed(0)
    cfg = dataclasses.replace(bert_presets.smoke(), num_hidden_layers=2)
    plain = BertForPretraining(cfg.model_config())
    fast = copy.deepcopy(plain)
    opts = [bert_optim.Lamb(bert_optim.param_groups(m, 0.01), lr=0.01, bias_correction=bias_correction,
                            foreach=foreach) for m, foreach in ((plain, False), (fast, True))]
    for _ in range(3):
        for p, q in zip(plain.parameters(), fast.parameters(), strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for model, opt in zip((plain, fast), opts, strict=True):
            bert_optim.clip_grad_norm(model.parameters(), 1.0)
            opt.step()
    assert _max_relative_difference(list(fast.parameters()), list(plain.parameters())) < 1e-5
    assert [s["step"] for s in opts[1].state.values()] == [3] * len(opts[1].state)


def _resnet_losses(fast: bool, steps: int = 6) -> list[float]:
    torch.manual_seed(0)
    model = ResNet50(num_classes=10, width=8)
    memory = torch.channels_last if fast else torch.contiguous_format
    model = model.to(memory_format=memory)
    opt = LARS(param_groups(model, 5e-5), lr=0.5, foreach=fast)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 32, 32, generator=gen).contiguous(memory_format=memory)
    y = torch.randint(10, (32,), generator=gen)
    losses = []
    for _ in range(steps):
        with autocast("bf16" if fast else "fp32", CPU):
            loss = smoothed_cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _bert_losses(fast: bool, steps: int = 6) -> list[float]:
    torch.manual_seed(0)
    cfg = dataclasses.replace(bert_presets.smoke(), num_hidden_layers=2, precision="bf16" if fast else "fp32")
    model = BertForPretraining(cfg.model_config())
    opt = bert_optim.Lamb(bert_optim.param_groups(model, 0.01), lr=0.01, foreach=fast)
    batch = bert_data.synthetic_batch(cfg, 16)
    losses = []
    for _ in range(steps):
        loss, _, _ = bert_steps.forward(model, batch, cfg, CPU)
        loss.backward()
        bert_optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("losses, tolerance", [(_resnet_losses, 0.05), (_bert_losses, 1e-3)], ids=["resnet", "bert"])
def test_fast_and_plain_paths_train_alike(losses, tolerance):
    plain, fast = losses(fast=False), losses(fast=True)
    assert plain[-1] < plain[0]  # it trains
    assert fast == pytest.approx(plain, rel=tolerance)


def test_undone_restores_model_optimizer_gradients_and_rng():
    torch.manual_seed(0)
    model = ResNet50(num_classes=10, width=8)
    opt = LARS(param_groups(model, 5e-5), lr=0.5)
    smoothed_cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()  # optimizer state exists before the warm-up
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    expected_draw = torch.get_rng_state()
    with undone(model, opt):
        for _ in range(2):
            smoothed_cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
            opt.step()
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())  # BN running stats too
    buffers = [s["momentum_buffer"] for s in opt.state_dict()["state"].values()]
    assert all(torch.equal(a, b["momentum_buffer"]) for a, b in zip(buffers, before[1]["state"].values(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), expected_draw)


def test_batch_sizes_and_compile_backends():
    assert batch_sizes(100, 32, drop_last=False) == [32, 4]
    assert batch_sizes(100, 32, drop_last=True) == [32]
    assert batch_sizes(64, 32, drop_last=False) == [32]
    assert batch_sizes(10, 32, drop_last=False) == [10]
    model = torch.nn.Linear(2, 2)
    assert compiled(model, "off") is model
    with pytest.raises(ValueError, match="torch_compile"):
        compiled(model, "tensorrt")


def test_loader_overlap_settings():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    fed = loader(data, 4, shuffle=False, workers=0, seed=0, drop_last=False, prefetch_factor=4, pin_memory=True)
    assert fed.prefetch_factor is None and fed.pin_memory is torch.cuda.is_available()  # no workers: no prefetch
    fed = loader(data, 4, shuffle=False, workers=1, seed=0, drop_last=False, prefetch_factor=4)
    assert fed.prefetch_factor == 4
    with pytest.raises(ValueError, match="prefetch_factor"):
        loader(data, 4, shuffle=False, workers=1, seed=0, drop_last=False, prefetch_factor=0)


@pytest.mark.parametrize("presets", [resnet_presets, bert_presets], ids=["resnet", "bert"])
def test_real_presets_use_the_speed_options(presets):
    for name, preset in presets.PRESETS.items():
        cfg = preset()
        assert cfg.optimizer_foreach and cfg.torch_compile == "off"
        if name != "smoke":
            assert cfg.precision in ("bf16", "fp16")


def _printed(out: str) -> list[str]:
    """The figures a run prints that depend on what it computed: losses and accuracies, not speeds."""
    return re.findall(r"(?:loss|top-1) [0-9.]+", out)


@pytest.mark.slow
def test_compiled_run_reproduces_the_plain_run(tmp_path, capsys):
    """The whole training path with torch.compile (aot_eager: the same kernels, traced): its warm-up inside
    init is undone, so the run prints exactly the plain run's losses and accuracy."""
    tiny = ["synthetic_train_samples=192", "synthetic_eval_samples=64", "global_batch_size=64", "max_epochs=1",
            "eval_offset=1", "opt_learning_rate_warmup_epochs=0"]
    printed = []
    for backend in ("off", "aot_eager"):
        argv = ["--preset", "smoke", "--seed", "3", "--system", "1xH200", "--result-log",
                str(tmp_path / f"{backend}.txt")]
        argv += [a for s in [*tiny, f"torch_compile={backend}"] for a in ("--set", s)]
        assert resnet_train.main(argv) == 0
        out = capsys.readouterr().out
        assert "precision 32.32" in out
        printed.append(_printed(out))
    assert printed[0] == printed[1] and len(printed[0]) == 2
