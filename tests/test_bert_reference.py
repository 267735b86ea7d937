"""Closed BERT against the outputs of the MLPerf v1.1 BERT reference itself (TensorFlow), copied into
tests/reference/ (README-bert.md says where each file came from): LAMB with clipping and the warmup/poly
schedule step by step, and a checkpoint written by TensorFlow converted exactly.

    .venv/bin/python -m pytest tests/test_bert_reference.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mlperf_submission.closed.bert.checkpoint import convert_checkpoint, load_init_checkpoint
from mlperf_submission.closed.bert.model import BertForPretraining, tf_tensor_name
from mlperf_submission.closed.bert.optim import EXCLUDE_FROM_WEIGHT_DECAY, Lamb, clip_grad_norm, lr_schedule
from mlperf_submission.common.data.tensorbundle import read_tf_checkpoint

REFERENCE = Path(__file__).with_name("reference")
LAMB_RTOL = 1e-5  # issue 18: trajectories agree to 1e-5 relative (measured: see COMPLIANCE.md)
pytestmark = pytest.mark.usefixtures("one_thread")


def lamb_cases() -> dict:
    return json.loads((REFERENCE / "lamb_reference.json").read_text())


def reference_trajectory(case: dict, foreach: bool) -> list[dict[str, np.ndarray]]:
    """Our LAMB, clip and schedule fed the reference's gradients; -> the tensors after each step."""
    hp = case["hyperparameters"]
    params = {name: torch.tensor(np.array(value, np.float32), requires_grad=True)
              for name, value in case["init"].items()}
    excluded = {name for name in params if any(re.search(p, name) for p in EXCLUDE_FROM_WEIGHT_DECAY)}
    optimizer = Lamb([
        {"params": [p for n, p in params.items() if n not in excluded], "weight_decay": hp["wd"],
         "layer_adaptation": True},
        {"params": [p for n, p in params.items() if n in excluded], "weight_decay": 0.0, "layer_adaptation": False},
    ], lr=0.0, betas=(hp["beta1"], hp["beta2"]), eps=1e-6, foreach=foreach)
    after = []
    for step, grads in enumerate(case["grads"]):
        for name, p in params.items():
            p.grad = torch.tensor(np.array(grads[name], np.float32))
        clip_grad_norm(params.values(), 1.0)  # the reference's tf.clip_by_global_norm(grads, 1.0)
        lr = lr_schedule(step, base_lr=hp["init_lr"], warmup_steps=hp["warmup"], start_warmup_step=hp["start_warmup"],
                         total_steps=hp["steps"], power=hp["power"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        after.append({name: p.detach().numpy().copy() for name, p in params.items()})
    return after


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - ref| / max |ref| over one tensor (a zero bias has no scale of its own: its update does)."""
    scale = max(float(np.abs(reference).max()), 1e-12)
    return float(np.abs(ours - reference).max()) / scale


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@pytest.mark.parametrize("name", ["rcp_3072", "h200_256"])
def test_lamb_clip_and_schedule_follow_the_reference(name, foreach):
    case = lamb_cases()[name]
    assert len(case["grads"]) == len(case["after_step"]) == case["global_step_after"] == 12
    ours = reference_trajectory(case, foreach)
    worst = max(relative_error(step[t], np.array(ref[t], np.float32))
                for step, ref in zip(ours, case["after_step"], strict=True) for t in ref)
    assert worst < LAMB_RTOL, f"{name}: {worst:.2e} relative"
    # The updates themselves, not just weights that barely moved: every tensor moved, and ours as far.
    for tensor, init in case["init"].items():
        moved = np.array(case["after_step"][-1][tensor]) - np.array(init)
        assert np.abs(moved).max() > 0
        np.testing.assert_allclose(ours[-1][tensor] - np.array(init, np.float32), moved,
                                   rtol=1e-3, atol=LAMB_RTOL * np.abs(moved).max())


def test_the_fixture_exercises_warmup_clipping_and_the_exclusions():
    """Guards against a fixture that could not tell a wrong schedule, clip or exclusion from a right one."""
    rcp, h200 = lamb_cases()["rcp_3072"], lamb_cases()["h200_256"]
    hp = rcp["hyperparameters"]
    assert hp["warmup"] > 0 and hp["start_warmup"] < 0 and h200["hyperparameters"]["warmup"] == 0

    def norms(case):
        return [np.sqrt(sum(np.square(np.array(g)).sum() for g in grads.values())) for grads in case["grads"]]

    assert min(norms(rcp)) > 1.0  # clipped on every step
    assert min(norms(h200)) < 1.0 < max(norms(h200))  # clipped on some steps only
    excluded = [n for n in rcp["init"] if any(re.search(p, n) for p in EXCLUDE_FROM_WEIGHT_DECAY)]
    assert 0 < len(excluded) < len(rcp["init"])


def test_a_checkpoint_written_by_tensorflow_converts_exactly():
    prefix = REFERENCE / "tf1-bert-checkpoint" / "model.ckpt-28252"
    written = np.load(REFERENCE / "tf1-bert-checkpoint" / "values.npz")
    state, cfg, skipped = convert_checkpoint(prefix)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size,
            cfg.max_position_embeddings) == (24, 8, 16, 64, 64)
    assert len(state) == 398 and "global_step" in skipped
    assert any(name.endswith("/adam_m") for name in skipped) and any(name.endswith("/adam_v") for name in skipped)
    model = BertForPretraining(cfg)
    model.load_state_dict(state)  # strict: every parameter, nothing else
    checked = 0
    for param, tensor in state.items():
        tf_name = tf_tensor_name(param)
        value = written[tf_name.replace("/", "|")]
        expected = value.T if tf_name.endswith("/kernel") else value
        assert tensor.dtype == torch.float32
        assert np.array_equal(tensor.numpy(), expected), tf_name  # bit for bit
        checked += 1
    assert checked == len(written.files) == 398
    assert read_tf_checkpoint(prefix, ["global_step"])["global_step"] == 28252
    # The run's loader (train.load_checkpoint) takes the same path and gives the same tensors.
    loaded = load_init_checkpoint(str(prefix) + ".index", cfg)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
