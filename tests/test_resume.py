"""A submission survives interruption: the plan in OUT, runs kept as they pass, resume, one run per job, and the
faults of issue 13 (a signal, kill -9 of the trainer, a run that raises, a full disk, a log edited by hand).
The fault tests exercise the machinery around runs, so the fake trainer (tests/fake_trainer.py: a whole passing
log through the real Run and MLLog in a second) trains them; two torchrun nodes run the real smoke trainer."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import REPO, fake_trainer_env, one_line_error
from helpers import free_port, log_events, mllog_line, run_module

from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance import plan as planning
from mlperf_submission.compliance import runs
from mlperf_submission.compliance.tools import PACKAGE_SUCCESS, check_log
from mlperf_submission.systems import load as load_system

SUBMIT = ["--division", "closed", "--bench", "resnet"]


def compliance(*args, **kw) -> subprocess.CompletedProcess:
    return run_module("mlperf_submission.compliance", *args, timeout=900, **kw)


def fake_compliance(folder: Path, *args, **kw) -> subprocess.CompletedProcess:
    """`compliance` with the fake trainer training the runs."""
    return compliance(*args, env=fake_trainer_env(folder), **kw)


def digests(folder: Path, names) -> dict:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited {proc.returncode} before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def request(**changes) -> planning.Request:
    _, system = load_system("1xH200")
    fields = dict(division="closed", benchmark="resnet", preset="smoke", overrides=(), system_name="1xH200",
                  system=system, data="", runs=5, seeds=None, demo=True)
    return planning.Request(**(fields | changes))


# --- the plan: fast, no training --------------------------------------------------------------------------


def test_a_different_request_for_an_existing_out_is_refused_naming_the_difference(tmp_path):
    out = tmp_path / "sub"
    plan = planning.settle_plan(out, request())
    assert len(set(plan.seeds)) == 5 and plan.config["global_batch_size"] == 128
    assert planning.settle_plan(out, request()) == plan  # the same request: the same plan, seeds and all
    cases = [
        (request(preset="1xH200"), "preset '1xH200' (the plan has 'smoke')"),
        (request(overrides=("opt_base_learning_rate=1.5",)), "config opt_base_learning_rate=1.5 (the plan has"),
        (request(system=request().system | {"host_memory_capacity": "1 TB"}),
         "system description 1xH200 changed in host_memory_capacity"),
        (request(seeds=(1, 2, 3, 4, 5)), "SEEDS 1,2,3,4,5 (the plan has"),
    ]
    data = tmp_path / "imagenet"
    data.mkdir()
    (data / "imagenet_manifest.json").write_text("{}")
    cases.append((request(data=str(data)), f"DATA '{data}' (the plan has '')"))
    for req, message in cases:
        with pytest.raises(UserError, match="planned differently") as e:
            planning.settle_plan(out, req)
        assert message in str(e.value) and "FORCE=1" in str(e.value)
    assert planning.load_plan(out) == plan
    fresh = planning.settle_plan(out, request(preset="1xH200"), force=True)  # FORCE=1 starts over
    assert fresh.preset == "1xH200" and fresh.id != plan.id
    # A folder that is not a submission folder is never cleared.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no plan.json"):
        planning.settle_plan(tmp_path / "other", request(), force=True)


def test_a_changed_checkpoint_is_a_changed_plan(tmp_path):
    ckpt = tmp_path / "phase1.pt"
    ckpt.write_bytes(b"weights v1")
    _, system = load_system("1xH200")
    req = request(benchmark="bert", overrides=(f"init_checkpoint={ckpt}",), runs=10)
    out = tmp_path / "sub"
    plan = planning.settle_plan(out, req)
    assert plan.inputs["init_checkpoint"].endswith("sha256:" + hashlib.sha256(b"weights v1").hexdigest())
    ckpt.write_bytes(b"weights v2")
    with pytest.raises(UserError, match="init_checkpoint .* \\(the plan has .*sha256"):
        planning.settle_plan(out, req)


def settle(out: str, queue) -> None:
    queue.put(planning.settle_plan(Path(out), request()).seeds)


def test_the_tasks_of_an_array_job_agree_on_the_seeds(tmp_path):
    queue = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=settle, args=(str(tmp_path / "sub"), queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    seeds = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert all(s == seeds[0] for s in seeds) and len(set(seeds[0])) == 5


def test_run_and_package_refuse_bad_input(tmp_path):
    proc = compliance("run", *SUBMIT, "--index", "5", "--out", str(tmp_path / "o"))
    one_line_error(proc.returncode, proc.stderr, "INDEX=5 is not a run of the plan: give 0..4")
    proc = compliance("package", "--out", str(tmp_path / "none"))
    one_line_error(proc.returncode, proc.stderr, "holds no plan.json")


RUN_SIGNALLED = """
import os, signal, sys, time
from mlperf_submission.common.mllog import MLLog
from mlperf_submission.common.run import Run, Submission
sub = Submission(org="a", platform="p", division="open", status="onprem", benchmark="resnet")
with Run(MLLog(sys.argv[1]), sub, seed=1, hyperparameters={}, train_samples=1, eval_samples=1) as run:
    run.start()
    os.kill(os.getpid(), int(sys.argv[2]))
    time.sleep(30)
"""


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_inside_a_run_logs_aborted_and_exits_quietly_with_the_shells_status(tmp_path, sig, status):
    log = tmp_path / "r.txt"
    proc = subprocess.run([sys.executable, "-c", RUN_SIGNALLED, str(log), str(int(sig))], capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (status, "")
    assert log_events(log)[-1]["metadata"]["status"] == "aborted"


# --- interruption and resume: the fake trainer -------------------------------------------------------------


def test_sigint_to_the_process_group_after_two_runs_then_the_same_command_resumes(tmp_path):
    """The acceptance test of issue 13, through make, as a user types it."""
    out = tmp_path / "X"
    make = ["make", "-s", "submit", "DIVISION=closed", "BENCH=resnet", f"OUT={out}", f"PY={sys.executable}"]
    with open(tmp_path / "first.txt", "w") as first:
        proc = subprocess.Popen(make, cwd=REPO, stdout=first, stderr=subprocess.STDOUT, start_new_session=True,
                                env=fake_trainer_env(tmp_path, FAKE_TRAINER_PAUSE="result_2.txt"))
        wait_for(lambda: (out / "runs" / "result_1.json").is_file() and (out / "runs" / "result_2.txt.partial")
                 .is_file() and "run_start" in (out / "runs" / "result_2.txt.partial").read_text(), proc,
                 "third run started")
        kept = digests(out / "runs", [f"result_{i}.{ext}" for i in (0, 1) for ext in ("txt", "json", "log")])
        os.killpg(proc.pid, signal.SIGINT)
        started = time.time()
        proc.wait(timeout=60)
        stopped_in = time.time() - started
    printed = (tmp_path / "first.txt").read_text()
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed, printed[-3000:]
    assert (f"interrupted by SIGINT during run 3 (result_2.txt); 2 run(s) that passed are kept in {out / 'runs'}"
            f" (a stopped run does not count). Resume with: make submit DIVISION=closed BENCH=resnet OUT={out}"
            in printed)
    aborted = out / "runs" / "result_2.txt"
    assert log_events(aborted)[-1]["metadata"]["status"] == "aborted"
    assert not (out / "runs" / "result_2.json").exists()

    started = time.time()
    again = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=900, env=fake_trainer_env(tmp_path))
    resumed_in = time.time() - started
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.rstrip().endswith(PACKAGE_SUCCESS)
    assert "run 1/5 kept" in again.stdout and "run 2/5 kept" in again.stdout
    assert "run 3/5 (result_2.txt)" in again.stdout and "its log has no record of passing" in again.stdout
    assert digests(out / "runs", kept) == kept
    logs = sorted(out.glob("closed/DEMO/results/demo-local/resnet/result_*.txt"))
    assert len(logs) == 5 and all(check_log(p).passed for p in logs)
    assert [p.read_bytes() for p in logs[:2]] == [(out / "runs" / f"result_{i}.txt").read_bytes() for i in (0, 1)]
    assert any(p.name.endswith("result_2.txt") for p in (out / "runs" / "discarded").iterdir())
    print(f"stopped {stopped_in:.1f} s after SIGINT; resume (3 runs + package) {resumed_in:.1f} s")


def test_sigterm_to_make_run_stops_the_run_aborted_and_exits_143(tmp_path):
    out = tmp_path / "sub"
    with open(tmp_path / "out.txt", "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mlperf_submission.compliance", "run", *SUBMIT, "--index", "0",
                                 "--out", str(out)], stdout=f, stderr=subprocess.STDOUT,
                                env=fake_trainer_env(tmp_path, FAKE_TRAINER_PAUSE="result_0.txt"))
        partial = out / "runs" / "result_0.txt.partial"
        wait_for(lambda: partial.is_file() and "run_start" in partial.read_text(), proc, "run_start")
        proc.send_signal(signal.SIGTERM)  # to run alone: it passes the signal on to the trainer
        assert proc.wait(timeout=60) == 143
    printed = (tmp_path / "out.txt").read_text()
    assert "Traceback" not in printed and "interrupted by SIGTERM during run 1 (result_0.txt)" in printed
    log = out / "runs" / "result_0.txt"
    assert '"status": "aborted"' in log.read_text().splitlines()[-1]
    record, why = runs.run_state(out, planning.load_plan(out), 0)
    assert record is None and "no record of passing" in why  # an aborted log never counts, checker or not


def test_kill_9_of_the_trainer_mid_run_then_resume_redoes_that_run_only(tmp_path):
    out = tmp_path / "sub"
    assert fake_compliance(tmp_path, "run", *SUBMIT, "--index", "0", "--out", out).returncode == 0
    kept = digests(out / "runs", ["result_0.txt", "result_0.json"])
    with open(tmp_path / "out.txt", "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mlperf_submission.compliance", "run", *SUBMIT, "--index", "1",
                                 "--out", str(out)], stdout=f, stderr=subprocess.STDOUT, text=True,
                                env=fake_trainer_env(tmp_path, FAKE_TRAINER_PAUSE="result_1.txt"))
        partial = out / "runs" / "result_1.txt.partial"
        wait_for(lambda: partial.is_file() and "run_start" in partial.read_text(), proc, "run_start")
        (trainer,) = children(proc.pid)
        os.kill(trainer, signal.SIGKILL)
        assert proc.wait(timeout=60) == 2
    printed = (tmp_path / "out.txt").read_text()
    seed = planning.load_plan(out).seeds[1]
    assert f"error: run 2 (result_1.txt, seed {seed}) was killed (SIGKILL): most likely the out-of-memory killer" \
           in printed and f"its output: {out / 'runs' / 'result_1.log'}." in printed and "(last line:" not in printed
    plan = planning.load_plan(out)
    assert [runs.run_state(out, plan, i)[1] for i in range(3)] == [
        "", "it was interrupted (only a .partial log)", "not trained yet"]
    again = fake_compliance(tmp_path, "run", *SUBMIT, "--index", "1", "--out", out)
    assert again.returncode == 0 and "run 2/5 (result_1.txt)" in again.stdout and "run 1/5" not in again.stdout
    assert digests(out / "runs", kept) == kept and runs.run_state(out, plan, 1)[0] is not None
    assert sorted(p.name.split("-", 2)[2] for p in (out / "runs" / "discarded").iterdir()) == [
        "result_1.log", "result_1.txt.partial"]


def test_a_run_that_raises_mid_submit_stops_naming_it_and_the_same_command_redoes_it(tmp_path):
    out = tmp_path / "sub"
    env = fake_trainer_env(tmp_path, FAKE_TRAINER_RAISE="12")  # raises after run_start: a crash in the timed loop
    proc = compliance("submit", *SUBMIT, "--seeds", "11,12,13,14,15", "--out", out, env=env)
    one_line_error(proc.returncode, proc.stderr, f"run 2 (result_1.txt, seed 12) failed with exit status 1; its "
                   f"output: {out / 'runs' / 'result_1.log'} (last line: RuntimeError: injected fault")
    assert "The runs that passed are kept: resume with `make submit DIVISION=closed BENCH=resnet SEEDS=" \
        in proc.stderr
    assert "injected fault" in (out / "runs" / "result_1.log").read_text()
    assert not (out / "runs" / "result_2.txt.partial").exists()  # submit stopped at the failed run
    kept = digests(out / "runs", ["result_0.txt"])
    again = fake_compliance(tmp_path, "submit", *SUBMIT, "--seeds", "11,12,13,14,15", "--out", out)
    assert again.returncode == 0 and again.stdout.rstrip().endswith(PACKAGE_SUCCESS), again.stderr[-2000:]
    assert "run 1/5 kept" in again.stdout and digests(out / "runs", kept) == kept


def test_a_log_edited_by_hand_is_detected_and_redone(tmp_path):
    out = tmp_path / "sub"
    assert fake_compliance(tmp_path, "run", *SUBMIT, "--index", "0", "--out", out).returncode == 0
    log = out / "runs" / "result_0.txt"
    lines = log.read_text().splitlines(keepends=True)
    stop = log_events(log)[-1]
    stop["time_ms"] -= 60_000  # a minute off the time to train
    log.write_text("".join(lines[:-1]) + mllog_line(stop))
    again = fake_compliance(tmp_path, "run", *SUBMIT, "--index", "0", "--out", out)
    assert again.returncode == 0, again.stderr
    assert "result_0.txt was changed after it passed (its sha256 is not the one recorded)" in again.stdout
    assert "moved to runs/discarded/" in again.stdout
    record, _ = runs.run_state(out, planning.load_plan(out), 0)
    assert record is not None and log_events(log)[-1] != stop


def small_files(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_while_the_log_is_written_is_a_clear_error_and_resume_works_once_there_is_room(tmp_path):
    """Files above 16 KiB cannot be written (RLIMIT_FSIZE: write() fails as on a full disk): the plan and the
    console output fit, the result log (the fake trainer's, about 40 KB, as the smoke trainer's 43 KB) does not."""
    out = tmp_path / "sub"
    proc = fake_compliance(tmp_path, "run", *SUBMIT, "--index", "0", "--out", out, preexec_fn=small_files(16 << 10))
    one_line_error(proc.returncode, proc.stderr, "run 1 (result_0.txt, seed ")
    assert "(last line: OSError: [Errno 27] File too large" in proc.stderr
    assert not (out / "runs" / "result_0.txt").exists() and not (out / "runs" / "result_0.json").exists()
    again = fake_compliance(tmp_path, "run", *SUBMIT, "--index", "0", "--out", out)
    assert again.returncode == 0 and "it was interrupted (only a .partial log)" in again.stdout, again.stderr
    assert runs.run_state(out, planning.load_plan(out), 0)[0] is not None


@pytest.mark.slow
def test_two_torchrun_nodes_on_one_machine_train_one_run_of_the_plan(tmp_path):
    """Two torchrun launchers (--nnodes=2, c10d rendezvous on 127.0.0.1, one process each), each started by
    `make run` as on two nodes of a cluster: node 0 keeps the books, one log, and it passes."""
    out = tmp_path / "sub"
    launcher = (f"{sys.executable} -m torch.distributed.run --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d "
                f"--rdzv_endpoint=127.0.0.1:{free_port()} --rdzv_id=issue13")
    args = ["run", *SUBMIT, "--index", "0", "--out", str(out), "--launcher", launcher]
    # Two nodes sharing this machine's cores: one intra-op thread each (what torchrun sets for several processes
    # on one node), or their OpenMP threads spin against each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "mlperf_submission.compliance", *args, "--node", str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for n in (0, 1)]
    outputs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    log = out / "runs" / "result_0.txt"
    assert check_log(log).passed and runs.run_state(out, planning.load_plan(out), 0)[0] is not None
    assert '"key": "global_batch_size"' in log.read_text() and list((out / "runs").glob("result_*.txt")) == [log]
