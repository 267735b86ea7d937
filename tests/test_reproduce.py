"""`make reproduce`: logged hyperparameters mapped onto our presets, the pipeline end to end with a stand-in
trainer (cheap: it writes logs with the fake trainer), and once with the real smoke trainer (slow)."""

from __future__ import annotations

import json
import sys

import pytest
from fakes import BERT, FIXTURES, LARS, fake_train_command, one_line_error
from helpers import run_cli
from test_audit import fake_tree

from mlperf_submission.compliance import audit, reproduce
from mlperf_submission.compliance.__main__ import main as compliance_main
from mlperf_submission.compliance.tools import check_log


def test_reference_hyperparameters_map_onto_the_matching_preset():
    # decay steps 14523 at batch 3264 are 37.05 epochs of 392 steps: 2 warmup + 37 = our train_epochs 39.
    plan = reproduce.plan("resnet", "closed", LARS | {"eval_samples": 50000, "label_smoothing": 0.1}, first_eval=3)
    assert (plan.trainer_division, plan.preset, plan.overrides, plan.problem) == ("closed", "8xA100", (), "")
    assert plan.unmapped == ("label_smoothing=0.1",)
    assert any("37.05 epochs of 392 steps" in n for n in plan.notes)
    mapped, _, _ = reproduce.map_hyperparameters("resnet", LARS, first_eval=3)
    assert mapped["train_epochs"] == 39 and mapped["eval_offset"] == 3 and mapped["opt_base_learning_rate"] == 10.5

    logged = BERT | {"max_sequence_length": 512, "opt_lamb_learning_rate_decay_poly_power": 2.0}
    plan = reproduce.plan("bert", "closed", logged, eval_interval=175_000)
    assert plan.preset == "8xA100" and plan.overrides == ("gradient_accumulation_steps=1",) and not plan.problem
    assert plan.unmapped == ("opt_lamb_learning_rate_decay_poly_power=2.0 (our trainer fixes 1.0)",)
    # A mapping that our closed rules refuse is kept, with the reason, for the real scale to refuse.
    plan = reproduce.plan("resnet", "closed", LARS | {"lars_epsilon": 0.1})
    assert "LARS epsilon is fixed to 0" in plan.problem


@pytest.mark.parametrize("system,bench,preset,overrides", [
    ("ipu-pod16-TF1", "resnet", "pod16", ()),
    ("ipu-pod128-TF1", "resnet", "pod16", ("global_batch_size=5120", "gradient_accumulation_steps=2",
                                          "opt_weight_decay=0.0001", "opt_base_learning_rate=11.2",
                                          "train_epochs=43", "eval_offset=1")),
    ("ipu-pod16-POPART-closed", "bert", "pod16-graphcore", ()),
])
def test_graphcore_results_map_onto_our_presets(graphcore, system, bench, preset, overrides):
    source, _ = reproduce.find_benchmark(graphcore, system, bench)
    first = source.runs[0]
    plan = reproduce.plan(bench, source.score.division, source.hyperparameters, first_eval=first.facts.first_eval,
                          eval_interval=first.facts.eval_interval)
    assert (plan.preset, plan.overrides, plan.unmapped, plan.problem) == (preset, overrides, (), "")
    if system == "ipu-pod128-TF1":   # Graphcore logged both; the one the rules check wins
        assert any("lars_opt_weight_decay is used" in n for n in plan.notes)


def test_an_open_result_runs_on_the_open_trainer(graphcore):
    source, _ = reproduce.find_benchmark(graphcore, "ipu-pod16-POPART-open", "bert")
    plan = reproduce.plan("bert", "open", source.hyperparameters)
    # open/bert's own pod16 preset carries Graphcore's POD16 open values.
    assert (plan.trainer_division, plan.preset, plan.overrides, plan.problem, plan.notes) == (
        "open", "pod16", (), "", ())


def test_a_missing_open_trainer_falls_back_to_the_closed_one(monkeypatch):
    # open/<bench> absent from the registry of benchmarks: the closed trainer runs, and the plan says so.
    registry = {k: v for k, v in reproduce.benchmarks.REGISTRY.items() if k != ("open", "bert")}
    monkeypatch.setattr(reproduce.benchmarks, "REGISTRY", registry)
    division, note = reproduce.trainer_division("open", "bert")
    assert division == "closed" and "closed bert trainer runs" in note
    assert reproduce.trainer_division("open", "resnet") == ("open", "")


def test_reproduce_end_to_end_with_a_stand_in_trainer(tmp_path, monkeypatch):
    """Audited seeds in, 5 runs through submit's machinery, a packaged tree that audits clean, the comparison."""
    sub = fake_tree(tmp_path)
    calls = []
    monkeypatch.setattr(reproduce.runs, "train_command", stand_in_trainer(calls))
    out = tmp_path / "repro"
    rc, printed, _ = run_cli(compliance_main, "reproduce", "--sub", sub, "--out", out)
    assert rc == 0, printed
    assert calls == [("closed", "resnet", "smoke", s) for s in (100, 101, 102, 103, 104)]
    assert "SMOKE SCALE, DEMONSTRATION" in printed and "NOTHING about the published result" in printed
    assert "| score (minutes) | 32.000 published, 32.000 audited | 0.500 |" in printed
    record = json.loads((out / "reproduce.json").read_text())
    assert record["packaged"] and record["seeds"] == [100, 101, 102, 103, 104]
    assert record["plan"]["preset"] == "8xA100" and record["ran_preset"] == "smoke"
    assert [r["convergence_point"] for r in record["ours"]["runs"]] == [4] * 5
    assert record["audited"]["olympic_convergence"] == 36.0 and record["our_batch"] == 128
    # What `make submit` packages for a demonstration audits clean: the RCP bypass and the demo are notes.
    report = audit.audit(out)
    assert not [f for f in report.findings if f.severity != "note"], report.findings
    assert {f.code for f in report.findings} == {"rcp-bypass", "demonstration"}
    assert (out / "audit.md").is_file() and list(out.glob("*.tar.gz"))


def stand_in_trainer(calls: list, fail_seed: int | None = None):
    """A runs.train_command that writes a converged fake log, or exits 1 for `fail_seed`."""
    def train_command(plan, i, *, system, log, nproc=1, launcher=""):
        seed = plan.seeds[i]
        calls.append((plan.trainer, plan.benchmark, plan.preset, seed))
        if seed == fail_seed:
            return [sys.executable, "-c", "raise SystemExit(1)"]
        return fake_train_command(plan, i, system=system, log=log, run_minutes=0.5,
                                  hyperparameters=LARS | {"global_batch_size": 128}, evals=[(4, 0.77)])

    return train_command


def test_a_failed_run_keeps_the_finished_runs_logs_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    from mlperf_submission.compliance.__main__ import main

    sub = fake_tree(tmp_path)
    calls = []
    monkeypatch.setattr(reproduce.runs, "train_command", stand_in_trainer(calls, fail_seed=102))
    out = tmp_path / "repro"
    assert main(["reproduce", "--sub", str(sub), "--runs", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run 3 (result_2.txt, seed 102) failed with exit status 1" in err and err.count("\n") == 1
    assert f"The runs that passed are kept: resume with `make reproduce SUB={sub} RUNS=4 OUT={out}`" in err
    assert [c[3] for c in calls] == [100, 101, 102]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "runs").glob("result_*")) == [
        "runs/result_0.json", "runs/result_0.log", "runs/result_0.txt", "runs/result_1.json", "runs/result_1.log",
        "runs/result_1.txt", "runs/result_2.log"]
    assert all(check_log(out / "runs" / f"result_{i}.txt").passed for i in (0, 1))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary folder left
    monkeypatch.setattr(reproduce.runs, "train_command", stand_in_trainer(calls))
    assert main(["reproduce", "--sub", str(sub), "--runs", "4", "--out", str(out)]) == 0
    assert [c[3] for c in calls] == [100, 101, 102, 102, 103]   # the two that passed were kept


@pytest.mark.parametrize("argv,message", [
    (["reproduce"], "give RESULT_ID="),
    (["reproduce", "--result-id", "1.1-9999"], "unknown result ID"),
    (["reproduce", "--result-id", "1.1-2040"], "or RESULTS=<a checkout"),
    (["reproduce", "--sub", "x", "--data", "nowhere"], "does not exist"),
])
def test_reproduce_refuses_bad_input(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from mlperf_submission.compliance.__main__ import main

    one_line_error(main(argv), capsys.readouterr().err, message)
    assert list(tmp_path.iterdir()) == []


def test_reproduce_refuses_too_many_runs_and_an_ambiguous_folder(tmp_path, capsys, monkeypatch):
    from mlperf_submission.compliance.__main__ import main

    cwd = tmp_path / "cwd"   # where a default OUT would go
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    sub = fake_tree(tmp_path)
    assert main(["reproduce", "--sub", str(sub), "--runs", "6", "--out", str(tmp_path / "o")]) == 2
    assert "RUNS must be 1..5" in capsys.readouterr().err
    (sub / "results" / "sys2").mkdir()
    (sub / "results" / "sys1" / "resnet").rename(sub / "results" / "sys2" / "resnet")
    fake_tree(tmp_path / "other")
    (tmp_path / "other" / "acme" / "results" / "sys1").rename(sub / "results" / "sys1")
    assert main(["reproduce", "--sub", str(sub)]) == 2
    assert "2 results match" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and list(cwd.iterdir()) == []


@pytest.mark.slow
def test_reproduce_a_published_result_at_smoke_scale_with_the_real_trainer(graphcore, tmp_path, monkeypatch):
    """One run of the real smoke trainer with the first seed of 1.1-2040 (11-19 s on 2 idle cores)."""
    # One intra-op thread in the trainer's process: as fast at smoke shapes, and no OpenMP spin-waits when
    # the 2 cores are shared (conftest's one_thread, for a subprocess).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "repro"
    rc, printed, _ = run_cli(compliance_main, "reproduce", "--result-id", "1.1-2040", "--results-root", FIXTURES,
                             "--runs", "1", "--out", out)
    assert rc == 0, printed
    assert "!!! SMOKE SCALE, DEMONSTRATION" in printed and "28.335 published" in printed
    assert "runs/ only: 1 run(s), the rules need 5 to package" in printed
    log = out / "runs" / "result_0.txt"
    assert check_log(log).passed
    record = json.loads((out / "reproduce.json").read_text())
    assert record["seeds"] == [1] and record["plan"]["preset"] == "pod16" and record["published_minutes"] == 28.335
    assert record["ours"]["runs"][0]["status"] == "success"
    assert FIXTURES.is_dir()
