"""`make audit`: Graphcore's published logs re-scored as the v1.1 round scored them, our own package audited
clean (folder and archive), and planted faults, each found and named."""

from __future__ import annotations

import configparser
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from fakes import FIXTURES, LARS, REPO, fake_run, one_line_error
from helpers import MLLOG, mllog_line, run_cli
from test_compliance_cli import PUBLISHED

from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance import audit, package
from mlperf_submission.compliance.__main__ import main
from mlperf_submission.systems import load as load_system

RESNET_SYSTEMS = ("ipu-pod16-TF1", "ipu-pod64-TF1", "ipu-pod128-TF1", "ipu-pod256-TF1")


def codes(report: audit.Report) -> dict[str, list[audit.Finding]]:
    found: dict[str, list[audit.Finding]] = {}
    for f in report.findings:
        found.setdefault(f.code, []).append(f)
    return found


def fake_tree(root: Path, division: str = "closed", **per_run) -> Path:
    """A submitter folder of 5 ResNet runs written by the fake trainer; per_run: {run<index>: kwargs}."""
    sub = root / "acme"
    (sub / "systems").mkdir(parents=True)
    _, system = load_system("1xH200")
    (sub / "systems" / "sys1.json").write_text(json.dumps(system | {"division": division}))
    results = sub / "results" / "sys1" / "resnet"
    results.mkdir(parents=True)
    for i in range(5):
        kwargs = {"seed": 100 + i, "run_minutes": 30 + i, "evals": [(36, 0.76)], "division": division}
        fake_run(results / f"result_{i}.txt", **kwargs | per_run.get(f"run{i}", {}))
    return sub


def edit_lines(log: Path, edit) -> None:
    """Rewrite a log line by line: `edit(lines)` returns the new list of lines."""
    log.write_text("".join(edit(log.read_text().splitlines(keepends=True))))


def shift_run_stop(log: Path, ms: int) -> None:
    """Edit a log as a forger would: move run_stop's time_ms by `ms`."""
    lines = log.read_text().splitlines(keepends=True)
    i = next(i for i, ln in enumerate(lines) if '"key": "run_stop"' in ln)
    record = json.loads(lines[i].split(MLLOG, 1)[1])
    record["time_ms"] += ms
    lines[i] = mllog_line(record)
    log.write_text("".join(lines))


@pytest.fixture(scope="module")
def graphcore_audit(tmp_path_factory):
    folder = FIXTURES / "Graphcore"
    if not folder.is_dir():
        pytest.skip(f"the shared fixtures are not beside this checkout ({folder})")
    out = tmp_path_factory.mktemp("graphcore-audit")
    rc, printed, _ = run_cli(main, "audit", folder, "--result-id", "1.1-2040", "--out", out)
    return rc, json.loads((out / "audit.json").read_text()), (out / "audit.md").read_text(), printed


@pytest.fixture(scope="module")
def our_package(tmp_path_factory) -> Path:
    """What `make submit` writes, from 5 runs of the fake trainer (the same lifecycle and log code as train.py)."""
    tmp = tmp_path_factory.mktemp("package")
    logs = [fake_run(tmp / f"r{i}.txt", seed=11 + i, run_minutes=1 + i / 10, evals=[(36, 0.76)]) for i in range(5)]
    verdict, _ = package.build(division="closed", benchmark="resnet", system="1xH200", logs=logs, out=tmp / "out")
    assert verdict.passed, verdict.errors
    return tmp / "out"


def test_graphcore_audit_matches_the_published_scores_and_the_rounds_verdicts(graphcore_audit):
    rc, report, md, printed = graphcore_audit
    scores = {(b["system"], b["benchmark"]): b for b in report["benchmarks"]}
    assert set(scores) == set(PUBLISHED)
    for key, minutes in PUBLISHED.items():
        assert f"{scores[key]['minutes']:.3f}" == f"{minutes:.3f}", key
        assert f"| {key[0]} | {scores[key]['division']} | {key[1]} | {minutes:.3f} |" in md
    findings = [(f["severity"], f["code"], f["where"]) for f in report["findings"]]
    # The round's tool passes every converged run; the one aborted ResNet run per system fails under both
    # tools (eval_accuracy below 0.759) and is dropped, with a note that names it.
    for b in report["benchmarks"]:
        for r in b["runs"]:
            assert r["round_passed"] == (r["status"] == "success"), (b["system"], r["file"])
    for system in RESNET_SYSTEMS:
        runs = scores[(system, "resnet")]["runs"]
        (aborted,) = [r for r in runs if r["status"] == "aborted"]
        assert not aborted["passed"] and not aborted["round_passed"] and not aborted["counted"]
        assert any("eval_accuracy" in e for e in aborted["errors"])
        assert ("note", "dropped-run", f"results/{system}/resnet/{aborted['file']}") in findings
    # 4.1.68 fails every 2021 closed log on weights_initialization; the difference is named and explained.
    for b in report["benchmarks"]:
        difference = [f for f in report["findings"] if f["code"] == "verdict-difference" and f["where"] == b["path"]]
        if b["division"] == "closed":
            assert all(not r["passed"] for r in b["runs"])
            assert "weights_initialization" in difference[0]["message"] and "1.1.0-rc4" in difference[0]["message"]
            assert b["seeds"]["passed"] and b["seeds"]["round_passed"] and b["seeds"]["distinct"]
        else:
            assert not difference and all(r["passed"] for r in b["runs"]) and b["rcp"] is None
    topics = [d["topic"] for d in report["differences"]]
    assert topics[0] == "weights_initialization" and {"RCP tables", "RCP statistics", "BERT samples"} <= set(topics)
    assert all(d["source"] for d in report["differences"])
    # The RCP checker fails closed BERT on POD16 and POD64 under 4.1.68's rule and the round's (every RCP; the
    # round's own checker failed them too, MLPERF_V11.md §3): the only errors, each saying MLCommons published it.
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert sorted((f["code"], f["where"]) for f in errors) == [
        ("rcp-fail", "results/ipu-pod16-POPART-closed/bert"), ("rcp-fail", "results/ipu-pod64-POPART-closed/bert")]
    assert all("MLCommons published it nonetheless (as 1.1-20" in f["message"] for f in errors)
    assert rc == 1 and report["findings"][0]["severity"] == "error"
    for b in report["benchmarks"]:
        if b["division"] == "closed":
            failing = b["system"] in ("ipu-pod16-POPART-closed", "ipu-pod64-POPART-closed")
            assert (b["rcp"]["passed"], b["rcp"]["round_passed"]) == (not failing, not failing), b["system"]
            assert not b["rcp"]["bert_train_samples"]   # Graphcore's epoch_num counts samples
            n = len(b["runs"])
            ok = sum(r["round_passed"] for r in b["runs"])
            assert f"| 0/{n} / {ok}/{n} |" in md       # both counts in the compliance column
    # Graphcore's BERT epoch_num counts samples: the convergence point is read there, and says so.
    pod128 = scores[("ipu-pod128-POPART-closed", "bert")]
    assert pod128["convergence"]["sources"] == ["epoch_num"] and min(pod128["convergence"]["points"]) >= 3_000_000
    assert ("warning", "init-time", "results/ipu-pod64-POPART-open/bert/result_0.txt") in findings
    # Convergence points, hyperparameters and the published figure.
    pod16 = scores[("ipu-pod16-TF1", "resnet")]
    assert pod16["convergence"] == {"unit": "epochs", "points": [38] * 5, "sources": ["epoch_num"],
                                    "olympic_mean": 38.0}
    assert pod16["hyperparameters"]["global_batch_size"] == 3200 and not pod16["hyperparameter_diff"]
    assert [r["seed"] for r in pod16["runs"]] == [1, 2, 3, 4, 5]
    assert report["result_id"]["match"] and ("note", "result-id-match", "results/ipu-pod16-TF1/resnet") in findings
    assert "Result ID 1.1-2040: MATCH" in md and printed.startswith("# MLPerf Training v1.1 audit")
    print(f"Graphcore audit: {sum(len(b['runs']) for b in report['benchmarks'])} logs in {report['elapsed_s']} s")


def test_registry_entries_agree_with_the_published_logs(graphcore_audit):
    _, report, _, _ = graphcore_audit
    scores = {(b["system"], b["benchmark"]): b for b in report["benchmarks"]}
    entries = audit.registry()
    # Every v1.1 system row: 92 IDs from 1.1-2000 without a gap, 86 closed then 6 open, each inferred with its reason.
    assert list(entries) == [f"1.1-{2000 + i}" for i in range(92)]
    divisions = [e["division"] for e in entries.values()]
    assert divisions == ["closed"] * 86 + ["open"] * 6
    assert all(e["mapping"] == "inferred" and e["source"].startswith("numbering") and e["certain"]
               for e in entries.values())
    assert len({(e["submitter"], e["system"]) for e in entries.values()}) == 92
    # Graphcore's rows are where its page puts them (MLPERF_V11.md §1c), with the minutes of its logs.
    graphcore = {e["id"]: e for e in entries.values() if e["submitter"] == "Graphcore"}
    assert [i for i, e in graphcore.items() if "resnet" in e["benchmarks"]] == ["1.1-2040", "1.1-2042", "1.1-2044",
                                                                              "1.1-2045"]
    assert [i for i, e in graphcore.items() if e["division"] == "open"] == ["1.1-2087", "1.1-2088", "1.1-2089"]
    assert graphcore["1.1-2040"]["system"] == "ipu-pod16-TF1"
    assert graphcore["1.1-2087"]["system"] == "ipu-pod128-POPART-open"
    for entry in graphcore.values():
        for bench, published in entry["benchmarks"].items():
            audited = scores[(entry["system"], bench)]
            assert audited["division"] == entry["division"]
            assert f"{audited['minutes']:.3f}" == f"{published['minutes']:.3f}", entry["id"]
            assert published["results_path"] == f"Graphcore/results/{entry['system']}/{bench}"


def test_registry_is_installed_with_the_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "*.json" in cfg["options.package_data"]["mlperf_submission.compliance"]
    assert audit.REGISTRY.parent == REPO / "compliance" and audit.REGISTRY.is_file()


def test_a_tampered_graphcore_log_is_found(graphcore_audit, tmp_path):
    gc = tmp_path / "Graphcore"
    for system in ("ipu-pod16-TF1", "ipu-pod16-POPART-open"):
        shutil.copytree(FIXTURES / "Graphcore" / "results" / system, gc / "results" / system)
        (gc / "systems").mkdir(exist_ok=True)
        shutil.copy(FIXTURES / "Graphcore" / "systems" / f"{system}.json", gc / "systems")
    shift_run_stop(gc / "results/ipu-pod16-TF1/resnet/result_2.txt", -30_000)      # half a minute faster
    shift_run_stop(gc / "results/ipu-pod16-POPART-open/bert/result_4.txt", -5_000)
    report = audit.audit(gc, entry=audit.lookup("1.1-2040"))
    found = codes(report)
    assert [f.where for f in found["time-order"]] == ["results/ipu-pod16-POPART-open/bert/result_4.txt",
                                                     "results/ipu-pod16-TF1/resnet/result_2.txt"]
    assert all("(run_stop) is" in f.message for f in found["time-order"])
    # BERT's run_stop also carries Graphcore's own TTT, which no longer agrees with the timestamps.
    assert [f.where for f in found["ttt-mismatch"]] == ["results/ipu-pod16-POPART-open/bert/result_4.txt"]
    assert "1.1-2040" in found["result-id-mismatch"][0].message and not report.result_id["match"]
    assert f"{report.result_id['audited_minutes']:.3f}" == "28.334"


def test_our_package_audits_clean_as_a_folder_and_as_an_archive(our_package, tmp_path, monkeypatch):
    (archive,) = our_package.glob("*.tar.gz")
    monkeypatch.chdir(tmp_path)
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("mlperf-audit.*"))
    listed = len((our_package / "manifest.sha256").read_text().splitlines())
    reports = [audit.audit(p) for p in (our_package, our_package / "closed" / "ExampleOrg", archive)]
    for report in reports:
        assert not [f for f in report.findings if f.severity != "note"], report.findings
        assert report.manifest.verified == listed and not (report.manifest.mismatched or report.manifest.unlisted)
        (bench,) = report.benchmarks
        assert bench.score.valid and bench.rcp["passed"] and bench.seeds["passed"] and bench.seeds["distinct"]
        assert [r.score.seed for r in bench.runs] == [11, 12, 13, 14, 15]
    assert reports[2].kind == "archive"
    assert reports[0].benchmarks[0].score.minutes == reports[2].benchmarks[0].score.minutes
    # The archive was read without unpacking into the working tree; its temporary folder is gone.
    assert list(tmp_path.iterdir()) == [] and set(scratch.glob("mlperf-audit.*")) == before
    rc, printed, _ = run_cli(main, "audit", archive, "--out", tmp_path / "report")
    assert rc == 0 and "**CLEAN**" in printed
    assert json.loads((tmp_path / "report" / "audit.json").read_text())["kind"] == "archive"


def test_a_tampered_log_in_a_package_is_named(our_package, tmp_path):
    copy = shutil.copytree(our_package, tmp_path / "sub")
    log = copy / "closed/ExampleOrg/results/1xH200/resnet/result_1.txt"
    shift_run_stop(log, -20_000)
    found = codes(audit.audit(copy))
    assert [f.where for f in found["manifest-mismatch"]] == ["closed/ExampleOrg/results/1xH200/resnet/result_1.txt"]
    assert [f.where for f in found["time-order"]] == ["closed/ExampleOrg/results/1xH200/resnet/result_1.txt"]


def test_a_missing_result_file_is_named(our_package, tmp_path):
    copy = shutil.copytree(our_package, tmp_path / "sub")
    (copy / "closed/ExampleOrg/results/1xH200/resnet/result_3.txt").unlink()
    report = audit.audit(copy)
    found = codes(report)
    assert "4 of the 5 result files" in found["missing-result-file"][0].message
    assert "absent: result_3.txt" in found["missing-result-file"][0].message
    assert [f.where for f in found["manifest-missing-file"]] == ["closed/ExampleOrg/results/1xH200/resnet/result_3.txt"]
    assert report.count("error") == 2


def test_a_manifest_mismatch_in_an_archive_is_named(our_package, tmp_path):
    (archive,) = our_package.glob("*.tar.gz")
    forged = tmp_path / archive.name
    target = "closed/ExampleOrg/systems/1xH200.json"
    with tarfile.open(archive) as src, tarfile.open(forged, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == target:
                data += b"\n"
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
        extra = tarfile.TarInfo("closed/ExampleOrg/results/1xH200/resnet/notes.txt")
        extra.size = 3
        dst.addfile(extra, io.BytesIO(b"hi\n"))
    found = codes(audit.audit(forged))
    assert [f.where for f in found["manifest-mismatch"]] == [target]
    assert [f.where for f in found["manifest-unlisted-file"]] == ["closed/ExampleOrg/results/1xH200/resnet/notes.txt"]


def test_a_mixed_batch_size_is_named(tmp_path):
    sub = fake_tree(tmp_path, run2={"hyperparameters": LARS | {"global_batch_size": 4096}})
    report = audit.audit(sub)
    found = codes(report)
    (mixed,) = found["mixed-batch-size"]
    assert "result_2.txt 4096" in mixed.message and "result_0.txt 3264" in mixed.message
    (bench,) = report.benchmarks
    assert bench.hyperparameter_diff["global_batch_size"]["result_2.txt"] == 4096
    assert "global_batch_size" not in bench.hyperparameters
    assert "crashed: KeyError: None" in found["rcp-fail"][0].message  # 4.1.68 on mixed batch sizes


def test_two_aborted_runs_are_named(tmp_path):
    sub = fake_tree(tmp_path, run1={"evals": [(36, 0.70)]}, run3={"evals": [(36, 0.71)]})
    report = audit.audit(sub)
    found = codes(report)
    (too_many,) = found["too-many-failed-runs"]
    assert "2 runs fail compliance (result_1.txt, result_3.txt; status aborted, aborted)" in too_many.message
    (bench,) = report.benchmarks
    assert bench.score.minutes is None and not bench.score.valid and bench.convergence["olympic_mean"] is None
    assert "Insufficient convergence" in found["rcp-fail"][0].message


def test_a_repeated_seed_is_named(tmp_path):
    sub = fake_tree(tmp_path, run4={"seed": 100})
    found = codes(audit.audit(sub))
    (duplicate,) = found["duplicate-seed"]
    assert "seed(s) 100 repeat" in duplicate.message and "[100, 101, 102, 103, 100]" in duplicate.message
    assert "already logs the same seed" in found["seed-check"][0].message
    assert found["seed-check"][0].severity == "error" and "missing-seed" not in found


def test_a_missing_seed_is_named_with_the_rounds_severity(tmp_path):
    def without_seed(lines):
        return [ln for ln in lines if '"key": "seed"' not in ln]

    # No run logs a seed, as in closed trees of the 1.1.0-rc4 era: the round's checker passed them.
    sub = fake_tree(tmp_path / "none")
    for log in sorted((sub / "results/sys1/resnet").glob("result_*.txt")):
        edit_lines(log, without_seed)
    found = codes(audit.audit(sub))
    (missing,) = found["missing-seed"]
    assert missing.severity == "warning" and "5 of 5 runs log no seed" in missing.message
    assert "passed this" in missing.message and "duplicate-seed" not in found
    assert found["seed-check"][0].severity == "note"
    # One run without a seed after runs that log one: the round's checker failed that too.
    sub = fake_tree(tmp_path / "one")
    edit_lines(sub / "results/sys1/resnet/result_3.txt", without_seed)
    found = codes(audit.audit(sub))
    (missing,) = found["missing-seed"]
    assert missing.severity == "error" and "1 of 5 runs log no seed (result_3.txt)" in missing.message
    assert "duplicate-seed" not in found and found["seed-check"][0].severity == "error"


def test_an_unparseable_log_is_named_and_the_others_are_audited(tmp_path):
    """An MLLOG line without metadata makes the official parser raise KeyError: one finding, not a traceback."""
    sub = fake_tree(tmp_path)
    line = mllog_line({"namespace": "", "time_ms": 1.7e12, "event_type": "POINT_IN_TIME", "key": "x", "value": 1})
    edit_lines(sub / "results/sys1/resnet/result_2.txt", lambda lines: [*lines[:5], line, *lines[5:]])
    rc, printed, _ = run_cli(main, "audit", sub, "--out", tmp_path / "report")
    assert rc == 1
    report = json.loads((tmp_path / "report" / "audit.json").read_text())
    findings = {(f["code"], f["where"]): f for f in report["findings"]}
    bad = findings[("unparseable-log", "results/sys1/resnet/result_2.txt")]
    assert bad["severity"] == "error" and "KeyError: 'metadata' (line 6 lacks metadata)" in bad["message"]
    assert "unparseable log" in findings[("dropped-run", "results/sys1/resnet/result_2.txt")]["message"]
    # The other four runs are read and scored: the bad one is dropped as a failed run (olympic mean of 31..33).
    (bench,) = report["benchmarks"]
    assert [r["counted"] for r in bench["runs"]] == [True, True, False, True, True]
    assert bench["minutes"] == pytest.approx(32 + 2 / 3) and bench["hyperparameters"]["global_batch_size"] == 3264
    assert not bench["hyperparameter_diff"] and ("mixed-batch-size", "results/sys1/resnet") not in findings
    assert "unparseable-log" in printed and "Traceback" not in printed


def test_an_aborted_open_run_that_passes_compliance_is_scored_with_a_warning(tmp_path):
    """The open rules do not check convergence: an aborted run passes and the summarizer counts its time."""
    sub = fake_tree(tmp_path, division="open", run1={"evals": [(36, 0.70)], "run_minutes": 31.5})
    report = audit.audit(sub)
    (bench,) = report.benchmarks
    aborted = bench.runs[1].score
    assert bench.score.division == "open" and aborted.status == "aborted" and aborted.passed and aborted.counted
    assert bench.score.minutes == pytest.approx((31.5 + 32 + 33) / 3) and bench.score.valid
    (warning,) = codes(report)["aborted-run-scored"]
    assert warning.severity == "warning" and warning.where == "results/sys1/resnet/result_1.txt"
    assert "status aborted" in warning.message and "31.500 min" in warning.message
    assert not [f for f in report.findings if f.severity == "error"]


def test_an_archive_member_outside_the_archive_is_refused(tmp_path, monkeypatch):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        member = tarfile.TarInfo("../outside.txt")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(UserError, match="points outside the archive"):
        audit.audit(evil)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tar")
    with pytest.raises(UserError, match="not a readable archive"):
        audit.audit(broken)
    assert not (tmp_path.parent / "outside.txt").exists()


@pytest.mark.parametrize("argv,message", [
    (["audit", "no/such/folder"], "no folder or archive"),
    (["audit"], "give SUB="),
    (["audit", ".", "--result-id", "1.1-9999"], "unknown result ID '1.1-9999'"),
    (["audit", "--result-id", "1.1-2040"], "or RESULTS=<a checkout"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(main(argv), capsys.readouterr().err, message)
    assert list(tmp_path.iterdir()) == []


def test_a_result_id_that_the_folder_does_not_hold_is_refused(tmp_path, capsys):
    sub = fake_tree(tmp_path)
    assert main(["audit", str(sub), "--result-id", "1.1-2040", "--out", str(tmp_path / "r")]) == 2
    assert "has no results/ipu-pod16-TF1/resnet" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
