"""Closed BERT: presets and rules, the eval cadence and the stop rule, the phase-1 checkpoint required, and a
one-run smoke training whose log passes."""

from __future__ import annotations

import dataclasses
import re

import pytest
from fakes import BERT, fake_run, reference_tensors
from helpers import eval_accuracies, log_events

from mlperf_submission.closed.bert import presets
from mlperf_submission.closed.bert.train import main as train_main
from mlperf_submission.common import config
from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance.tools import check_log


@pytest.mark.parametrize("gbs,interval", [(3072, 175_000), (6144, 200_000), (448, 150_000)])
def test_reference_eval_interval(gbs, interval):
    # MLPERF_V11.md: FLOOR(0.05*(230.23*GBS+3000000), 25000), as the Graphcore and NVIDIA logs show.
    assert presets.reference_eval_interval(gbs) == interval


CKPT = "/data/bert/phase1/model.ckpt-28252"


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_is_closed_compliant(name):
    cfg = presets.PRESETS[name]()
    if cfg.dataset == "wiki":
        with pytest.raises(UserError, match="CKPT=/data/bert/phase1/model.ckpt-28252"):
            presets.validate_closed(cfg)  # a real run needs the phase-1 checkpoint
        cfg = dataclasses.replace(cfg, init_checkpoint=CKPT)
    presets.validate_closed(cfg)
    hp = presets.hyperparameters(cfg)
    assert {"opt_epsilon", "opt_lamb_weight_decay_rate", "start_warmup_step", "num_warmup_steps"} <= set(hp)


def test_the_closed_checker_accepts_opt_lamb_bias_correction(tmp_path):
    """The official 1.1.0 closed BERT checker passes a log that says opt_lamb_bias_correction false."""
    log = fake_run(tmp_path / "result_0.txt", benchmark="bert", evals=[(3_072_000, 0.73)],
                   hyperparameters=BERT | {"opt_lamb_bias_correction": False})
    assert '"key": "opt_lamb_bias_correction", "value": false' in log.read_text()
    verdict = check_log(log)
    assert verdict.passed, verdict.errors


def test_real_presets_are_the_rcps_and_graphcores_pod16_is_named_and_flagged():
    """Every real preset but `pod16-graphcore` carries the RCP's hyperparameters at its batch; Graphcore's POD16
    values differ in four fields, each named; a batch with no RCP is named too."""
    for name in ("8xA100", "pod16", "1xH200"):
        assert presets.rcp_differences(presets.PRESETS[name]()) == [], name
    assert presets.rcp_differences(presets.graphcore_pod16()) == [
        "opt_learning_rate_warmup_steps 0 (RCP 100)", "opt_lamb_beta_1 0.62 (RCP 0.66)",
        "opt_lamb_beta_2 0.996 (RCP 0.998)", "opt_lamb_bias_correction False (RCP True)"]
    assert presets.rcp_differences(dataclasses.replace(presets.dgxa100(), global_batch_size=2048))[0].startswith(
        "global_batch_size 2048 (RCPs at 256, 448, 1536, 3072")
    assert "opt_lamb_bias_correction" not in presets.hyperparameters(presets.ipu_pod16())
    assert presets.hyperparameters(presets.graphcore_pod16())["opt_lamb_bias_correction"] is False
    # What a closed `make submit` prints before training (compliance/submit.py).
    assert presets.rcp_warning("pod16", ()) == ""
    warning = presets.rcp_warning("8xA100", ("opt_lamb_beta_1=0.7",))
    assert warning.startswith("WARNING: preset 8xA100 matches no v1.1 BERT RCP") and warning.endswith(
        "opt_lamb_beta_1 0.7 (RCP 0.66)")


@pytest.mark.parametrize("assignment,message", [
    ("num_hidden_layers=12", "num_hidden_layers is 24"),
    ("hidden_size=64", "hidden_size 1024 (not 64)"),
    ("num_attention_heads=8", "num_attention_heads 16 (not 8)"),
    ("intermediate_size=1024", "intermediate_size 4096 (not 1024)"),
    ("vocab_size=30528", "vocab_size 30522 (not 30528)"),
    ("dropout=0.0", "dropout 0.1 (not 0.0)"),
    ("max_seq_length=128", "max_seq_length 512 (not 128)"),
    ("max_predictions_per_seq=20", "max_predictions_per_seq 76 (not 20)"),
    ("max_grad_norm=100", "max_grad_norm is 1.0 (the reference's; not 100.0)"),
    ("eval_interval_samples=1000", "every 175000 samples"),
    ("max_samples=99999999", "beyond the schedule"),
    ("target_accuracy=0.7", "target_accuracy is 0.72"),
    ("gradient_accumulation_steps=5", "multiple"),
    ("opt_lamb_beta_2=1.0", "betas in"),
    ("init_checkpoint=", "phase-1 checkpoint"),
])
def test_validate_closed_rejects_set_changes_of_what_the_rules_fix(assignment, message):
    cfg = config.override(dataclasses.replace(presets.dgxa100(), init_checkpoint=CKPT), [assignment])
    with pytest.raises(UserError, match=re.escape(message)):
        presets.validate_closed(cfg)


def test_the_smoke_demonstration_may_change_sizes_but_not_the_recipe():
    presets.validate_closed(config.override(presets.smoke(), ["hidden_size=64", "max_seq_length=64",
                                                              "synthetic_eval_samples=100"]))
    for fixed in ("max_grad_norm=0.5", "num_hidden_layers=2", "target_accuracy=0.5"):
        with pytest.raises(UserError, match=f"not allowed in the closed division: {fixed.split('=')[0]} is "):
            presets.validate_closed(config.override(presets.smoke(), [fixed]))


def test_a_real_preset_without_the_phase1_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    data, log = tmp_path / "data", tmp_path / "out" / "result_0.txt"
    data.mkdir()
    assert train_main(["--preset", "1xH200", "--seed", "1", "--system", "1xH200", "--result-log", str(log),
                       "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "make submit ... CKPT=" in err
    assert not (tmp_path / "out").exists() and not list(data.iterdir())
    # A checkpoint that is not there, or of another model size, is refused just as early.
    assert train_main(["--preset", "1xH200", "--seed", "1", "--system", "1xH200", "--result-log", str(log),
                       "--data", str(data), "--ckpt", str(tmp_path / "model.ckpt-1")]) == 2
    assert "model.ckpt-1.index not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_real_data_must_hold_the_10000_eval_samples(tmp_path):
    from mlperf_submission.closed.bert.data import verify
    from mlperf_submission.common.data import bert_wiki

    bert_wiki.write_synthetic(tmp_path / "d", num_train=16, num_eval=12, seq_len=16, vocab_size=200, max_pred=3,
                              seed=0)
    with pytest.raises(UserError, match="eval split holds 12 samples; the closed rules evaluate on the 10,000"):
        verify(presets.h200(), tmp_path / "d")


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
def test_an_unconverged_run_evaluates_on_the_cadence_only_and_stops_aborted_at_its_limit(tmp_path, one_thread):
    """Limit 2,000 samples, cadence 1,600, 32 a step: one eval at 1,600, none at the limit (2,016 trained)."""
    log = tmp_path / "result_0.txt"
    assert train_main(["--preset", "smoke", "--seed", "1", "--system", "1xH200", "--result-log", str(log),
                       "--set", "max_samples=2000"]) == 0
    logged = log_events(log)
    assert [samples for samples, _ in eval_accuracies(log)] == [1600]
    assert logged[-1]["key"] == "run_stop" and logged[-1]["metadata"]["status"] == "aborted"
    # train_samples: what was trained, once, just before run_stop (NVIDIA's v1.1 BERT), not the corpus size
    assert [e["value"] for e in logged if e["key"] == "train_samples"] == [2016]
    assert logged[-2]["key"] == "train_samples"
    blocks = [e["key"] for e in logged if e["key"] in ("block_start", "block_stop")]
    assert blocks == ["block_start", "block_stop"] * 2
