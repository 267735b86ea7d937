"""device=ipu: the one-line refusal without the Poplar SDK, and with the recording fake (tests/fake_poptorch.py)
the Options of each IPU preset against Graphcore's v1.1 configuration, the step's arithmetic against the
CPU path's, and a smoke run whose log passes the official checker."""

from __future__ import annotations

import dataclasses
import json
import sys

import fake_poptorch
import pytest
import torch
from helpers import log_events, run_module

from mlperf_submission.closed.bert import ipu as bert_ipu
from mlperf_submission.closed.bert import presets
from mlperf_submission.closed.bert.data import Inputs, synthetic_batch
from mlperf_submission.closed.bert.model import BertForPretraining
from mlperf_submission.closed.bert.optim import Lamb, clip_grad_norm, param_groups
from mlperf_submission.closed.bert.steps import forward
from mlperf_submission.closed.bert.train import main
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.runtime import ipu
from mlperf_submission.compliance.tools import check_log
from mlperf_submission.open.bert import presets as open_presets

PIPELINE = presets.GRAPHCORE_POD16_PIPELINE


def test_without_poptorch_one_line_exit_2_and_no_log(tmp_path):
    """The issue's acceptance command, in a fresh interpreter where `import poptorch` fails."""
    log = tmp_path / "x.txt"
    proc = run_module("mlperf_submission.closed.bert.train", "--preset", "smoke", "--set", "device=ipu", "--seed", "1",
                      "--system", "systems/ipu-pod16.json", "--result-log", log)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Poplar SDK" in proc.stderr and "enable.sh" in proc.stderr and "poptorch" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_resnet_on_ipu_is_refused_with_its_reason(tmp_path, capsys):
    from mlperf_submission.closed.resnet.train import main as resnet_main

    assert resnet_main(["--preset", "smoke", "--set", "device=ipu", "--seed", "1", "--system", "1xH200",
                        "--result-log", str(tmp_path / "r.txt")]) == 2
    assert "LARS" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("spec", "message"), [
    ("1:7/6,2:6/7,3:7/6", "places 20 attention"),
    ("1:7/5,2:7/7,3:6/7,0:4/5", "a stage must end"),
    ("1:x/6", "IPU:ATTENTION/FFN"),
    ("2:12/12,3:12/12", "numbered 0..N-1"),
])
def test_a_bad_pipeline_is_one_line(spec, message):
    with pytest.raises(UserError, match=message):
        bert_ipu.pipeline(spec, 24)


def test_graphcore_pod16_placement():
    """att_ffn_placement [[1, [7, 6]], [2, [6, 7]], [3, [7, 6]], [0, [4, 5]]] (configs/mk2/pod16-closed.json)."""
    blocks, ipus = bert_ipu.pipeline(PIPELINE, 24)
    assert ipus == 4
    assert blocks == [("embeddings", 0), ("encoder.layer.0", 1), ("encoder.layer.6.intermediate", 2),
                      ("encoder.layer.13", 3), ("encoder.layer.19.intermediate", 0)]
    assert bert_ipu.pipeline("", 24) == ([("embeddings", 0)], 1)


def narrow(cfg):
    """The preset at a tiny width (24 layers kept): its IPU options do not depend on the widths."""
    return dataclasses.replace(cfg, hidden_size=16, num_attention_heads=1, intermediate_size=32, vocab_size=200,
                               max_seq_length=16, max_predictions_per_seq=4, dataset="synthetic", unpad=False)


def built(monkeypatch, cfg):
    fake = fake_poptorch.install(monkeypatch)
    model = BertForPretraining(cfg.model_config())
    trainer, evaluator, optimizer, train_opts, eval_opts = bert_ipu.build(
        cfg, model, sorted(synthetic_batch(cfg, 1)), fake, seed=1, inst=ipu.Instances())
    return fake, model, trainer, evaluator, optimizer, train_opts, eval_opts


def graphcore_log_value(graphcore, system, key):
    log = graphcore / "results" / system / "bert" / "result_0.txt"
    for event in log_events(log):
        if event["key"] == key:
            return event["value"]
    raise KeyError(key)


@pytest.mark.parametrize("division", ["closed", "open"])
def test_pod16_options_are_graphcores_v11_configuration(monkeypatch, graphcore, division):
    """Each figure against Graphcore's v1.1 IPU-POD16 BERT: their configs/mk2/pod16-{closed,open}.json
    (mlcommons/training_results_v1.1 at f6f0443, Graphcore/benchmarks/bert/implementations/popart/) and the
    published logs in the fixtures (results/ipu-pod16-POPART-{closed,open}/bert/result_0.txt)."""
    cfg = presets.graphcore_pod16() if division == "closed" else open_presets.ipu_pod16()
    system = f"ipu-pod16-POPART-{division}"
    fake, model, trainer, evaluator, optimizer, opts, eval_opts = built(monkeypatch, narrow(cfg))
    # "replication_factor": 4; "gradient_accumulation_factor": 192, logged as gradient_accumulation_steps 192.
    assert opts.called("replicationFactor") == [(4,)] == eval_opts.called("replicationFactor")
    assert opts.called("Training.gradientAccumulation") == [(192,)]
    assert graphcore_log_value(graphcore, system, "gradient_accumulation_steps") == 192
    # "batches_per_step": 1.
    assert opts.called("deviceIterations") == [(1,)]
    # "batch_size": 2 packs a replica, "avg_seq_per_pack": 2: 4 sequences unpacked (closed here), 2 packs open;
    # x 4 replicas x 192 = the logged global_batch_size 3072 sequences.
    micro = ipu.micro_batch(cfg.global_batch_items, cfg)
    assert micro == (4 if division == "closed" else 2)
    assert micro * 4 * 192 * (1 if division == "closed" else 2) == graphcore_log_value(graphcore, system,
                                                                                        "global_batch_size") == 3072
    # IPUs per replica: the pipeline's stages on IPUs 0-3 (att_ffn_placement), 4 x 4 = the 16 IPUs of a POD16.
    placed = [(module, ipu_id) for module, _, ipu_id in fake.blocks]
    assert placed == [(model.get_submodule(path), i) for path, i in bert_ipu.pipeline(PIPELINE, 24)[0]]
    assert {i for _, i in placed} == {0, 1, 2, 3}
    assert opts.called("setExecutionStrategy") and eval_opts.called("setExecutionStrategy")
    # "execution_mode": "PIPELINE", where their bert.py sets autoRecomputation = RecomputationType.Pipeline.
    assert opts.called("_Popart.set") == [("autoRecomputation", ipu.RECOMPUTE_PIPELINE)]
    assert len(fake.checkpoints) == 0 and len(model.encoder.layer[0]._forward_hooks) == 1
    # "popart_dtype": "FLOAT16", "stochastic_rounding": true, "enable_half_partials": true.
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert opts.called("Precision.enableStochasticRounding") == [(True,)]
    assert opts.called("Precision.setPartialsType") == [(torch.float16,)]
    # "available_memory_proportion": [0.23, 0.23, 0.23, 0.23].
    assert opts.called("setAvailableMemoryProportion") == [({f"IPU{i}": 0.23 for i in range(4)},)]
    # "optimizer_state_offchip": true, "replicated_tensor_sharding": true.
    [(location,)] = opts.called("TensorLocations.setOptimizerLocation")
    assert location.settings == {"useOnChipStorage": False, "useReplicatedTensorSharding": True}
    # "engine_cache": the executable cache.
    assert opts.called("enableExecutableCaching") == [(cfg.ipu_executable_cache,)]
    # "optimizer": "LAMB_NO_BIAS", "lamb_m_dtype": "FLOAT16", "beta1"/"beta2", "loss_scaling" 1.0 closed and
    # 64.0 open, "gradient_clipping_norm": 1.0 closed and none open; the logged opt_lamb_beta_1/2.
    s = optimizer.settings
    assert s["bias_correction"] is False and s["first_order_momentum_accum_type"] == torch.float16
    assert s["betas"] == (graphcore_log_value(graphcore, system, "opt_lamb_beta_1"),
                          graphcore_log_value(graphcore, system, "opt_lamb_beta_2"))
    assert s["loss_scaling"] == (1.0 if division == "closed" else 64.0)
    assert getattr(optimizer, "max_grad_norm", None) == (1.0 if division == "closed" else None)
    assert [g["max_weight_norm"] for g in optimizer.param_groups if "max_weight_norm" in g] == [0.0]
    assert opts.called("Training.accumulationAndReplicationReductionType") == [(fake.ReductionType.Mean,)]


def test_one_ipu_step_is_the_cpu_step(monkeypatch, one_thread):
    """2 replicas x 2 accumulation steps of 8 through the fake's PopTorch semantics give the weights of one
    CPU step of the same 32 sequences as train.py takes it: mean gradient, clip to 1.0, LAMB."""
    cfg = dataclasses.replace(presets.smoke(), device="ipu", ipu_replicas=2, gradient_accumulation_steps=2,
                              opt_lamb_bias_correction=False, ipu_pipeline=PIPELINE, unpad=False)
    torch.manual_seed(0)
    fake, model, trainer, evaluator, optimizer, opts, _ = built(monkeypatch, cfg)
    reference = BertForPretraining(cfg.model_config())
    reference.load_state_dict(model.state_dict())
    batch = synthetic_batch(cfg, 32)
    keys = sorted(batch)
    trainer.compile(*(batch[k] for k in keys))
    ipu.set_lr(trainer, optimizer, 0.01)
    losses = trainer(*(batch[k] for k in keys))
    assert losses.shape == (2,) and trainer.lrs == [[0.01, 0.01]]

    cpu = Lamb(param_groups(reference, cfg.opt_lamb_weight_decay_rate), lr=0.01, betas=(0.9, 0.999), eps=1e-6,
               bias_correction=False)
    for i in range(4):
        part = {k: v[8 * i:8 * (i + 1)] for k, v in batch.items()}
        loss, _, _ = forward(reference, part, cfg, torch.device("cpu"))
        (loss / 4).backward()
    clip_grad_norm(list(reference.parameters()), 1.0)
    cpu.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_padded_eval_adds_nothing():
    data = Inputs().datasets(presets.smoke(), None)[1]
    padded = bert_ipu.PaddedEval(data, 48)
    assert len(data) == 512 and len(padded) == 528
    assert padded[527]["masked_lm_weights"].sum() == 0 and padded[511]["masked_lm_weights"].sum() > 0


def test_an_init_past_the_checkers_30_minutes_is_refused(monkeypatch):
    fake = fake_poptorch.install(monkeypatch)
    model = fake.inferenceModel(torch.nn.Identity(), options=fake.Options())
    with pytest.raises(UserError, match="past the 30 minutes"):
        ipu.compile_in_init([(model, [torch.zeros(1)])], init_started=-ipu.INIT_CHECKER_S, is_main=False)


def test_poprun_replicas_must_match(monkeypatch):
    class Popdist:
        @staticmethod
        def getNumTotalReplicas():
            return 8

    fake_poptorch.install(monkeypatch)
    monkeypatch.setattr(ipu, "instances", lambda env: ipu.Instances(index=0, count=2, popdist=Popdist))
    with pytest.raises(UserError, match="--num-replicas 4"):
        ipu.ranks(dataclasses.replace(presets.ipu_pod16(), device="ipu"), 3072, env={})


@pytest.mark.slow
def test_a_smoke_run_through_the_fake_passes_the_checker(monkeypatch, tmp_path, one_thread):
    """The smoke preset on 2 replicas x 2 accumulation steps of Graphcore's 4-IPU pipeline, through the fake."""
    fake = fake_poptorch.install(monkeypatch)
    log = tmp_path / "result_0.txt"
    assert main(["--preset", "smoke", "--seed", "5", "--system", "1xH200", "--result-log", str(log),
                 "--set", "device=ipu", "--set", "ipu_replicas=2", "--set", "gradient_accumulation_steps=2",
                 "--set", f"ipu_pipeline={PIPELINE}", "--set", f"ipu_executable_cache={tmp_path / 'cache'}"]) == 0
    verdict = check_log(log)
    assert verdict.passed, verdict.errors
    events = log_events(log)
    keys = [e["key"] for e in events]
    assert keys.index("init_stop") < keys.index("run_start") < keys.index("eval_accuracy")
    assert events[-1]["metadata"]["status"] == "success"
    trainer, evaluator = fake.models[1], fake.models[0]
    evals = sum(1 for k in keys if k == "eval_accuracy")
    # 512 eval sequences in calls of 8 x 2 replicas x 2 device iterations: 16 calls an eval.
    assert evaluator.calls == 16 * evals and trainer.calls == len(trainer.lrs)
    assert trainer.options.called("replicationFactor") == [(2,)]
    assert {i for _, _, i in fake.blocks} == {0, 1, 2, 3}


@pytest.mark.slow
def test_open_packed_bert_runs_through_the_fake(monkeypatch, tmp_path, one_thread):
    """Packed train and eval splits hold different predictions per pack: each graph compiles with its own
    split's shapes (the fake refuses a call whose shapes differ from the compiled ones). One eval, then the
    sample limit: the log ends aborted and still passes the checker."""
    from mlperf_submission.open.bert.train import main as open_main

    fake_poptorch.install(monkeypatch)
    system = json.loads(open("systems/1xH200.json").read()) | {"division": "open"}
    (tmp_path / "open.json").write_text(json.dumps(system))
    log = tmp_path / "result_0.txt"
    assert open_main(["--preset", "smoke", "--seed", "5", "--system", str(tmp_path / "open.json"),
                      "--result-log", str(log), "--set", "device=ipu", "--set", "ipu_replicas=2",
                      "--set", "max_samples=1700", "--set", f"ipu_executable_cache={tmp_path / 'cache'}"]) == 0
    verdict = check_log(log)
    assert verdict.passed, verdict.errors
    events = log_events(log)
    assert sum(e["key"] == "eval_accuracy" for e in events) == 1 and events[-1]["metadata"]["status"] == "aborted"


def test_closed_real_data_on_ipus_checks_the_checkpoints_identity_before_the_log(monkeypatch, tmp_path):
    """As on CPUs and GPUs: an unmeasured phase-1 checkpoint is one line, before any log is written."""
    from mlperf_submission.closed.bert import train as bert_train
    from mlperf_submission.common import training

    fake_poptorch.install(monkeypatch)
    ckpt = tmp_path / "phase1.pt"
    ckpt.write_bytes(b"weights")
    cfg = dataclasses.replace(presets.smoke(), dataset="wiki", device="ipu", init_checkpoint=str(ckpt))
    log = tmp_path / "out" / "result_0.txt"
    run_args = training.Invocation.from_args(bert_train.parse_args(
        ["--seed", "1", "--system", "1xH200", "--result-log", str(log)]))
    inputs = Inputs(verify=lambda cfg, data: None)
    with pytest.raises(UserError, match="unmeasured .*init_checkpoint_override=REASON"):
        bert_ipu.train(cfg, run_args, division="closed", inputs=inputs)
    assert not log.parent.exists()


def test_poprun_is_recognised_by_its_environment(monkeypatch):
    assert ipu.instances({"PATH": "/bin"}) == ipu.Instances()
    monkeypatch.setitem(sys.modules, "popdist", None)  # `import popdist` fails, as without the SDK's wheel
    with pytest.raises(UserError, match="popdist"):
        ipu.instances({"POPDIST_NUM_INSTANCES": "2"})
