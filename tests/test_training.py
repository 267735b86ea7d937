"""common/training.py: the update that ends each step, in the order both trainers relied on, and the
shared command line."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
import torch

from mlperf_submission.closed.bert import presets as bert_presets
from mlperf_submission.closed.bert import steps as bert_steps
from mlperf_submission.closed.bert import train as bert_train
from mlperf_submission.closed.resnet import steps as resnet_steps
from mlperf_submission.closed.resnet import train as resnet_train
from mlperf_submission.common import training
from mlperf_submission.common.runtime import precision

from .helpers import log_events


class Recorder:
    """A replica, optimizer and scaler that record what update() does to them, in order."""

    def __init__(self):
        self.calls: list[str] = []
        self.param_groups = [{"lr": 1.0}, {"lr": 2.0}]

    def reduce_gradients(self):
        self.calls.append("reduce")

    def step(self, scaler):
        assert scaler is self
        self.calls.append(f"step lr={[g['lr'] for g in self.param_groups]}")

    def unscale_(self, optimizer):
        self.calls.append("unscale")

    def update(self):
        self.calls.append("scaler.update")

    def is_enabled(self):
        return False  # a scaler that never skips (fp32, bf16)

    def zero_grad(self):
        self.calls.append("zero_grad")

    def clip(self):
        self.calls.append("clip")


@pytest.mark.parametrize("clip,before,order", [
    (False, False, ["reduce", "step lr=[0.5, 0.5]", "scaler.update", "zero_grad"]),
    (True, False, ["reduce", "unscale", "clip", "step lr=[0.5, 0.5]", "scaler.update", "zero_grad"]),
    (True, True, ["unscale", "clip", "reduce", "step lr=[0.5, 0.5]", "scaler.update", "zero_grad"]),
    (False, True, ["reduce", "step lr=[0.5, 0.5]", "scaler.update", "zero_grad"]),  # nothing to clip: still reduced
])
def test_update_reduces_once_clips_the_unscaled_gradient_and_sets_lr_everywhere(clip, before, order):
    r = Recorder()
    training.update(r, r, r, 0.5, clip=r.clip if clip else None, clip_before_allreduce=before)
    assert r.calls == order


def test_update_steps_a_real_optimizer_with_the_given_lr():
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([{"params": [p]}, {"params": [torch.nn.Parameter(torch.ones(1))]}], lr=9.0)
    p.grad = torch.full((3,), 2.0)

    class Replica:
        def reduce_gradients(self):
            pass

        def step(self, scaler):
            scaler.step(optimizer)

    training.update(Replica(), optimizer, torch.amp.GradScaler("cpu", enabled=False), 0.25)
    assert torch.equal(p.detach(), torch.full((3,), 0.5)) and p.grad is None
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.25]


def test_an_fp16_overflow_skips_the_update_and_says_so():
    """An inf in a gradient: the scaler skips the step and backs off its scale, and update() returns False, so
    that the trainers advance neither the learning-rate schedule nor the sample count; the next finite
    gradient steps again and returns True."""
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)

    class Replica:
        def reduce_gradients(self):
            pass

        def step(self, scaler):
            scaler.step(optimizer)

    scaler.scale(p.sum()).backward()
    p.grad[1] = float("inf")  # forced overflow
    assert training.update(Replica(), optimizer, scaler, 0.5) is False
    assert torch.equal(p.detach(), torch.ones(3)) and scaler.get_scale() == 2.0**15
    scaler.scale(p.sum()).backward()
    assert training.update(Replica(), optimizer, scaler, 0.5) is True
    assert torch.allclose(p.detach(), torch.full((3,), 0.5))


@pytest.mark.parametrize("bench", ["bert", "resnet"])
def test_an_fp16_overflow_in_the_training_loop_advances_neither_schedule_nor_sample_count(
        bench, tmp_path, monkeypatch, one_thread):
    """The whole smoke loop at fp16 with its real GradScaler (autocast stood in by bf16: CPU has no fp16 path
    here), an inf put into a gradient before the third update: that update is skipped, the next one is
    scheduled at the same step, and BERT's logged train_samples count only the applied steps."""
    module, steps = (bert_train, bert_steps) if bench == "bert" else (resnet_train, resnet_steps)
    monkeypatch.setattr(steps, "autocast", lambda precision, device: torch.autocast("cpu", dtype=torch.bfloat16))
    monkeypatch.setattr(precision, "check", lambda precision, device: None)
    scheduled, applied = [], []
    real_lr, real_update = steps.learning_rate, training.update
    monkeypatch.setattr(steps, "learning_rate", lambda cfg, step, *a: scheduled.append(step) or real_lr(cfg, step, *a))

    def update(replica, optimizer, scaler, lr, **kwargs):
        assert scaler.is_enabled()
        if len(applied) == 2:  # what an fp16 overflow leaves in a gradient
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            grads[0].view(-1)[0] = float("inf")
        applied.append(real_update(replica, optimizer, scaler, lr, **kwargs))
        return applied[-1]

    monkeypatch.setattr(training, "update", update)
    bound = ["max_samples=192"] if bench == "bert" else ["max_epochs=1", "eval_offset=1"]
    log = tmp_path / "result_0.txt"
    args = ["--preset", "smoke", "--seed", "1", "--system", "1xH200", "--result-log", str(log)]
    assert module.main([*args, "--set", "precision=fp16", *(f"--set={b}" for b in bound)]) == 0
    assert applied[:4] == [True, True, False, True] and all(applied[3:])
    assert scheduled[:5] == [0, 1, 2, 2, 3] and scheduled[4:] == list(range(3, len(scheduled) - 1))
    if bench == "bert":  # 32 sequences a step; 7 updates, one skipped: 6 x 32 trained
        assert [e["value"] for e in log_events(log) if e["key"] == "train_samples"] == [32 * sum(applied)] == [192]


@pytest.mark.parametrize("module", [bert_train, resnet_train])
def test_fp16_off_cuda_is_refused_before_the_log(module, tmp_path, capsys):
    log = tmp_path / "out" / "result_0.txt"
    assert module.main(["--preset", "smoke", "--seed", "1", "--system", "1xH200", "--result-log", str(log),
                        "--set", "precision=fp16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fp16 needs a CUDA device; on cpu use --set precision=bf16" in err
    assert not log.parent.exists()


def test_both_trainers_take_the_shared_options_and_bert_its_checkpoint(tmp_path):
    common = ["--seed", "3", "--system", "1xH200", "--result-log", str(tmp_path / "r.txt"), "--set", "a=1"]
    for module in (resnet_train, bert_train):
        args = module.parse_args(common)
        assert (args.preset, args.seed, args.data, args.overrides) == ("smoke", 3, None, ["a=1"])
    assert bert_train.parse_args([*common, "--ckpt", "x.pt"]).ckpt == "x.pt"
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
        resnet_train.parse_args([*common, "--ckpt", "x.pt"])
    run_args = training.Invocation.from_args(bert_train.parse_args(common))
    assert run_args == training.Invocation(preset="smoke", seed=3, system="1xH200", result_log=tmp_path / "r.txt")


def test_step_bounds_of_three_micro_batches_a_step():
    bounds = [(True, False), (False, False), (False, True), (True, False), (False, False)]  # no short step
    assert [training.step_bounds(i, 3) for i in range(5)] == bounds


@pytest.mark.parametrize("device", ["cpu", "ipu"])
def test_the_ipu_fields_are_printed_only_on_the_ipu(capsys, device):
    cfg = dataclasses.replace(bert_presets.smoke(), device=device)
    dist = types.SimpleNamespace(is_main=True, world_size=1, device=torch.device("cpu"))
    training.announce("bert", "closed", training.Invocation("smoke", 1, "1xH200", Path("r.txt")), cfg, dist, 8)
    printed = capsys.readouterr().out
    assert "max_seq_length" in printed
    assert ("ipu_pipeline" in printed) == (device == "ipu") and ("ipu_replicas" in printed) == (device == "ipu")
