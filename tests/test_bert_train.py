"""Closed BERT: presets and rules, the eval cadence, and a one-run smoke training whose log passes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from fakes import reference_tensors

from mlperf_submission.closed.bert import presets
from mlperf_submission.closed.bert.train import main as train_main
from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance.tools import check_log


@pytest.mark.parametrize("gbs,interval", [(3072, 175_000), (6144, 200_000), (448, 150_000)])
def test_reference_eval_interval(gbs, interval):
    # MLPERF_V11.md: FLOOR(0.05*(230.23*GBS+3000000), 25000), as the Graphcore and NVIDIA logs show.
    assert presets.reference_eval_interval(gbs) == interval


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_is_closed_compliant(name):
    cfg = presets.PRESETS[name]()
    presets.validate_closed(cfg)
    hp = presets.hyperparameters(cfg)
    assert {"opt_epsilon", "opt_lamb_weight_decay_rate", "start_warmup_step", "num_warmup_steps"} <= set(hp)


@pytest.mark.parametrize("change,message", [
    ({"num_hidden_layers": 12}, "24 layers"),
    ({"dataset": "wiki", "hidden_size": 64}, "hidden 1024"),
    ({"eval_interval_samples": 1000}, "every 175000 samples"),
    ({"target_accuracy": 0.7}, "target"),
    ({"gradient_accumulation_steps": 5}, "multiple"),
])
def test_validate_closed_rejects_what_the_rules_forbid(change, message):
    with pytest.raises(UserError, match=message):
        presets.validate_closed(dataclasses.replace(presets.dgxa100(), **change))


def test_smoke_model_keeps_the_398_tensors():
    from mlperf_submission.closed.bert.model import BertForPretraining, mlperf_tensor_names

    names = mlperf_tensor_names(BertForPretraining(presets.smoke().model_config()))
    assert sorted(names.values()) == sorted(reference_tensors("bert"))


def test_wiki_preset_needs_data_and_writes_nothing_without_it(tmp_path):
    log = tmp_path / "r.txt"
    assert train_main(["--preset", "8xA100", "--seed", "1", "--system", "1xH200", "--result-log", str(log)]) == 2
    assert train_main(["--preset", "8xA100", "--seed", "1", "--system", "1xH200", "--result-log", str(log),
                       "--data", str(tmp_path)]) == 2
    assert not log.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_one_smoke_run_reaches_the_target_and_passes_the_checker(tmp_path):
    log = tmp_path / "result_0.txt"
    proc = subprocess.run([sys.executable, "-m", "mlperf_submission.closed.bert.train", "--preset", "smoke",
                           "--seed", "5", "--system", "1xH200", "--result-log", str(log)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "run_stop: success" in proc.stdout, proc.stdout[-2000:]
    verdict = check_log(log)
    assert verdict.passed, verdict.errors
    events = [json.loads(ln.split(":::MLLOG ", 1)[1]) for ln in log.read_text().splitlines()]
    evals = [e for e in events if e["key"] == "eval_accuracy"]
    interval = presets.eval_interval(presets.smoke())
    assert [e["metadata"]["epoch_num"] for e in evals] == [interval * (i + 1) for i in range(len(evals))]
    assert evals[-1]["value"] >= 0.72
