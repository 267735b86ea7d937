"""common/training.py: the update that ends each step, in the order both trainers relied on, and the
shared command line."""

from __future__ import annotations

import pytest
import torch

from mlperf_submission.closed.bert import train as bert_train
from mlperf_submission.closed.resnet import train as resnet_train
from mlperf_submission.common import training


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


def test_both_trainers_take_the_shared_options_and_bert_its_checkpoint(tmp_path):
    common = ["--seed", "3", "--system", "1xH200", "--result-log", str(tmp_path / "r.txt"), "--set", "a=1"]
    for module in (resnet_train, bert_train):
        args = module.parse_args(common)
        assert (args.preset, args.seed, args.data, args.overrides) == ("smoke", 3, None, ["a=1"])
    assert bert_train.parse_args([*common, "--ckpt", "x.pt"]).ckpt == "x.pt"
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
        resnet_train.parse_args([*common, "--ckpt", "x.pt"])
