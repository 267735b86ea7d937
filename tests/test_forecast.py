"""The RCP forecast (compliance/forecast.py) against the official RCP checker's own tables and numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlperf_logging.rcp_checker import rcp_checker

from mlperf_submission.closed.bert import presets as bert_presets
from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.compliance import forecast

TABLES = Path(rcp_checker.__file__).parent / "training_1.1.0"


def olympic_mean(values: list[float]) -> float:
    values = sorted(values)
    return float(np.mean(values[1:-1]))


@pytest.mark.parametrize(("bench", "batch", "name"),
                         [("resnet", 1632, "resnet_ref_1632"), ("bert", 256, "bert_ref_256")])
def test_an_rcp_at_the_batch_gives_the_checkers_mean_and_fastest_mean(bench, batch, name):
    raw = json.loads((TABLES / f"rcps_{bench}.json").read_text())[name]
    official = rcp_checker.RCP_Checker("training", "1.1.0", bench, False).rcp_data[name]
    r = forecast.rcp_for(bench, batch)
    assert (r["status"], r["name"]) == ("exists", name)
    assert r["mean"] == pytest.approx(olympic_mean(raw["Epochs to converge"]), rel=1e-12)
    assert r["fastest_mean"] == pytest.approx(official["Min Epochs"], rel=1e-12) and r["fastest_mean"] < r["mean"]


def test_a_batch_between_rcps_is_interpolated_as_the_checker_does():
    raw = json.loads((TABLES / "rcps_resnet.json").read_text())
    low, high = (olympic_mean(raw[f"resnet_ref_{b}"]["Epochs to converge"]) for b in (1632, 3264))
    r = forecast.rcp_for("resnet", 2000)
    assert r["status"] == "interpolated" and r["mean"] == pytest.approx(np.interp(2000, [1632, 3264], [low, high]))
    c = rcp_checker.RCP_Checker("training", "1.1.0", "resnet", False)
    _, official = c._create_interp_rcp(2000, c._find_rcp(1632, "pruned_rcps"), c._find_rcp(3264, "pruned_rcps"))
    assert r["fastest_mean"] == pytest.approx(official["Min Epochs"])


def test_below_the_smallest_and_above_the_largest_batch():
    below, above = forecast.rcp_for("bert", 128), forecast.rcp_for("bert", 20000)
    assert below["status"] == "below" and below["name"] == "bert_ref_256" and "below the smallest" in below["message"]
    assert above["status"] == "missing" and above["mean"] is None and "must provide RCPs" in above["message"]
    assert forecast.time_to_train(above, samples_per_unit=1, samples_per_s=10.0, evals=1, eval_s=1.0,
                                  runs=10)["per_run_s"] is None


def test_hyperparameters_against_the_rcp_set():
    cfg = bert_presets.h200()
    rcp = forecast.rcp_for("bert", cfg.global_batch_size)
    implicit = {"opt_lamb_bias_correction": (cfg.opt_lamb_bias_correction, True)}
    assert forecast.hyperparameter_differences("bert", rcp, bert_presets.hyperparameters(cfg), implicit) == []
    for pod, differing in ((bert_presets.graphcore_pod16(), {"opt_lamb_beta_1", "opt_lamb_beta_2", "num_warmup_steps",
                                                             "opt_lamb_bias_correction"}),
                           (bert_presets.ipu_pod16(), set())):  # pod16: the RCP's set on Graphcore's layout
        found = forecast.hyperparameter_differences("bert", forecast.rcp_for("bert", 3072),
                                                    bert_presets.hyperparameters(pod),
                                                    {"opt_lamb_bias_correction": (pod.opt_lamb_bias_correction, True)})
        assert {d.split(":")[0] for d in found} == differing
    resnet = resnet_presets.h200()
    logged = resnet_presets.hyperparameters(resnet, resnet_presets.IMAGENET_TRAIN) | {"model_bn_span": 204}
    found = forecast.hyperparameter_differences("resnet", forecast.rcp_for("resnet", 1632), logged)
    assert found == []  # whole global batches an epoch, as the reference: the RCP's 27,476 decay steps
    logged["lars_opt_learning_rate_decay_steps"] += 35  # a partial batch an epoch counted: a difference named
    assert [d.split(":")[0] for d in forecast.hyperparameter_differences(
        "resnet", forecast.rcp_for("resnet", 1632), logged)] == ["opt_learning_rate_decay_steps"]
    assert forecast.decay_steps_note("resnet", forecast.rcp_for("resnet", 1632)) == ""


def test_resnet_decay_steps_are_held_to_the_references_arithmetic_not_the_tables_fractional_count():
    """8xA100 (3264): the RCP table lists 14,523 (1,281,167 x 37 / 3264 fractional steps); the reference's
    code computes 392 x 37 + 1 = 14,505 for the same 37 decay epochs. Ours logs 14,505 and is not named as a
    difference; the ceil-rounded epoch (393 steps: 14,542) is."""
    cfg = resnet_presets.dgxa100()
    rcp = forecast.rcp_for("resnet", cfg.global_batch_size)
    assert (rcp["batch"], rcp["hyperparameters"]["opt_learning_rate_decay_steps"]) == (3264, 14523)
    logged = resnet_presets.hyperparameters(cfg, resnet_presets.IMAGENET_TRAIN) | {"model_bn_span": 204}
    assert logged["lars_opt_learning_rate_decay_steps"] == forecast.reference_decay_steps(14523, 3264) == 14505
    assert forecast.hyperparameter_differences("resnet", rcp, logged) == []
    assert "14,505 for the same 37 decay epochs" in forecast.decay_steps_note("resnet", rcp)
    logged["lars_opt_learning_rate_decay_steps"] = 393 * 37 + 1
    assert [d.split(":")[0] for d in forecast.hyperparameter_differences("resnet", rcp, logged)] == [
        "opt_learning_rate_decay_steps"]


def test_time_to_train_is_converged_samples_at_the_measured_speed_plus_evals():
    rcp = forecast.rcp_for("resnet", 1632)
    t = forecast.time_to_train(rcp, samples_per_unit=1_281_167, samples_per_s=1000.0, evals=9, eval_s=20.0, runs=5)
    assert t["per_run_s"] == pytest.approx(35.0 * 1_281_167 / 1000 + 180)
    assert t["submission_s"] == pytest.approx(5 * t["per_run_s"]) and t["fastest_per_run_s"] < t["per_run_s"]
