"""Run supervision: each run of a plan (`compliance/plan.py`) trained into OUT/runs, resumed, interrupted, reported.

    python -m mlperf_submission.compliance submit --division closed --bench resnet --out OUT   (all runs, package)
    python -m mlperf_submission.compliance run --division closed --bench resnet --index 3 --out OUT   (run 3 only)
    python -m mlperf_submission.compliance package --out OUT                  (package the runs of OUT's plan)

OUT holds, while its runs are trained:
    OUT/plan.json                  the plan (`compliance/plan.py`): preset, config, system, data, inputs, seeds
    OUT/system/<system>.json       the system description the runs were trained on
    OUT/runs/result_<i>.txt        the MLPerf log of run i (`.partial` until run_stop)
    OUT/runs/result_<i>.log        its console output
    OUT/runs/result_<i>.json       written last, only when the run exited 0 and its log passed the compliance
                                   checker: the seed, the command, times, the checker's verdict and the log's
                                   sha256. A run counts only with this record and a log that still matches it.
    OUT/runs/discarded/            runs that did not count (interrupted, failed, edited), moved aside when redone

Each run is trained under its own lock (OUT/runs/.result_<i>.lock), held by the training process too. A run
killed by a signal is reported with the signal's likely cause and the run's peak resident memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .. import benchmarks
from ..common.cli import UserError, atomic_write_text, sha256_file
from . import tools
from .plan import RUNS_DIR, Plan, Request, file_lock, settle_plan, system_file
from .score import parse_run

# Seconds a run has, after the signal is passed on, to log run_stop aborted and exit before it is killed.
STOP_GRACE_S = 30
# Seconds to wait for a run's log to appear on a shared file system when rank 0 ran on another node.
LOG_WAIT_S = 60
# What a signal that ended a run most likely means (Linux; the kernel's OOM killer sends SIGKILL).
SIGNAL_CAUSES = {
    signal.SIGKILL: "most likely the out-of-memory killer (or a scheduler enforcing a limit)",
    signal.SIGSEGV: "a segmentation fault in native code (an extension, a driver or a library)",
    signal.SIGBUS: "a bus error: often a full /dev/shm (the data workers' shared memory) or a truncated mapped file",
    signal.SIGABRT: "aborted by native code (a failed assertion or an uncaught C++ exception)",
    signal.SIGTERM: "terminated by another process (a scheduler's time limit, or a user)",
    signal.SIGINT: "interrupted (Ctrl-C)",
    signal.SIGILL: "an illegal instruction: native code built for another CPU",
    signal.SIGFPE: "an arithmetic fault in native code",
}


class Interrupted(Exception):
    """SIGINT or SIGTERM reached submit, run or package; the current run was stopped and does not count."""

    def __init__(self, signum: int, during: str):
        super().__init__(f"{signal.Signals(signum).name} during {during}")
        self.signum = signum
        self.during = during


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """The files of run i in OUT/runs."""
    log: Path              # the MLPerf log, result_<i>.txt
    partial: Path          # the log until run_stop
    console: Path          # the console output, result_<i>.log
    console_partial: Path  # the console output while the run trains
    record: Path           # result_<i>.json: the run counts
    lock: Path             # held while the run trains

    def leftovers(self) -> tuple[Path, ...]:
        """What a run that does not count may have left, moved aside when it is redone."""
        return self.log, self.partial, self.console, self.console_partial, self.record


def run_paths(out: Path, i: int) -> RunPaths:
    runs = out / RUNS_DIR
    return RunPaths(log=runs / f"result_{i}.txt", partial=runs / f"result_{i}.txt.partial",
                    console=runs / f"result_{i}.log", console_partial=runs / f"result_{i}.log.partial",
                    record=runs / f"result_{i}.json", lock=runs / f".result_{i}.lock")


def run_state(out: Path, plan: Plan, i: int) -> tuple[dict | None, str]:
    """(the record of run i, "") when it counts, else (None, why not)."""
    p = run_paths(out, i)
    if not p.record.is_file():
        if p.log.is_file():
            return None, "its log has no record of passing (the run was interrupted or failed)"
        if p.partial.is_file():
            return None, "it was interrupted (only a .partial log)"
        return None, "not trained yet"
    try:
        record = json.loads(p.record.read_text())
    except ValueError:
        return None, f"its record {p.record.name} is not valid JSON"
    if record.get("plan_id") != plan.id or record.get("seed") != plan.seeds[i]:
        return None, "its record belongs to another plan"
    if not p.log.is_file():
        return None, "its log is missing"
    if sha256_file(p.log) != record.get("log_sha256"):
        return None, f"{p.log.name} was changed after it passed (its sha256 is not the one recorded)"
    if parse_run(p.log)["seed"] != plan.seeds[i]:
        return None, f"{p.log.name} does not log the plan's seed {plan.seeds[i]}"
    verdict = tools.check_log(p.log)
    if not verdict.passed:
        return None, "its log fails the compliance checker: " + "; ".join(verdict.summary_lines())[:300]
    return record, ""


def discard(out: Path, i: int) -> list[str]:
    """Move whatever run i left (an interrupted, failed or edited run) into OUT/runs/discarded/."""
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in run_paths(out, i).leftovers():
        if path.exists():
            dest = out / RUNS_DIR / "discarded" / f"{stamp}-{path.name}"
            dest.parent.mkdir(exist_ok=True)
            os.replace(path, dest)
            moved.append(dest.name)
    return moved


def train_command(plan: Plan, i: int, *, system: Path, log: Path, nproc: int = 1, launcher: str = "") -> list[str]:
    """The one command that trains run i of a plan: its trainer, preset, seed, system, data and overrides."""
    module = benchmarks.get(plan.trainer, plan.benchmark).trainer
    if launcher:
        start = [*shlex.split(launcher), "-m", module]
    elif nproc > 1:
        start = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                 module]
    else:
        start = [sys.executable, "-m", module]
    cmd = [*start, "--preset", plan.preset, "--seed", str(plan.seeds[i]), "--system", str(system),
           "--result-log", str(log)]
    if plan.data:
        cmd += ["--data", plan.data]
    for o in plan.overrides:
        cmd += ["--set", o]
    return cmd


class Signals:
    """SIGINT and SIGTERM while a run trains: passed on to the run's process group (the run logs run_stop aborted
    and exits), its output no longer echoed; outside a run they raise Interrupted at once."""

    def __init__(self):
        self.signum = 0
        self.child: subprocess.Popen | None = None
        self.during = "setup"
        self._old = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        if self.signum:
            return  # a second Ctrl-C while the run stops: the grace timer ends it
        self.signum = signum
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)
            timer = threading.Timer(STOP_GRACE_S, self._kill, args=(child,))
            timer.daemon = True
            timer.start()
        else:
            raise Interrupted(signum, self.during)

    @staticmethod
    def _kill(child: subprocess.Popen) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

    def check(self) -> None:
        if self.signum:
            raise Interrupted(self.signum, self.during)


@dataclasses.dataclass(frozen=True)
class Exit:
    """How a process ended: its exit status (negative: the signal that ended it) and its peak resident memory."""
    status: int
    peak_kib: int | None   # ru_maxrss of the process and the children it waited for, KiB; None when unknown

    def killed(self) -> str:
        """For a process ended by a signal: which, its likely cause and the peak memory; else ""."""
        if self.status >= 0:
            return ""
        try:
            sig = signal.Signals(-self.status)
        except ValueError:
            return f"killed by signal {-self.status}"
        text = f"killed ({sig.name}): {SIGNAL_CAUSES.get(sig, signal.strsignal(sig) or 'no known cause')}"
        if self.peak_kib is not None:
            text += f"; its peak resident memory was {self.peak_kib / 2**20:.1f} GiB"
            with contextlib.suppress(ValueError, OSError):
                total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                text += f" of this machine's {total / 2**30:.1f} GiB"
        return text


def reap(proc: subprocess.Popen) -> Exit:
    """Wait for `proc` with wait4, which gives its own resource usage (RUSAGE_CHILDREN would mix in every run
    of this process so far)."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # reaped already (the grace timer's poll): the status without the usage
        return Exit(proc.wait(), None)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so that Popen does not wait for it again
    return Exit(proc.returncode, usage.ru_maxrss if usage.ru_maxrss > 0 else None)


def tee(cmd: list[str], console: Path, signals: Signals, *, keep_fd: int | None = None, echo: bool = True) -> Exit:
    """Run `cmd` in its own process group, its output to `console` and (until a signal) the terminal; its exit
    status and peak memory. Its own group, so that a Ctrl-C reaches it once, through `signals`, and not twice."""
    with open(console, "wb") as f:
        proc = None
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=(keep_fd,) if keep_fd is not None else ())
            signals.child = proc
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if echo and not signals.signum:
                    # bytes where stdout has them; a text-only stream (a caller capturing it) gets text
                    raw = getattr(sys.stdout, "buffer", None)
                    raw.write(line) if raw is not None else sys.stdout.write(line.decode(errors="replace"))
                    sys.stdout.flush()
            return reap(proc)
        finally:
            signals.child = None
            if proc is not None and proc.poll() is None:  # leaving on an error of our own: do not leave the run
                Signals._kill(proc)
                proc.wait()


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """One line per run: runs done of the total, time elapsed, and an estimate of the rest from the runs' times."""

    def __init__(self, total: int, times: list[float]):
        self.total = total
        self.times = list(times)   # seconds of the runs that count, this session's and those kept
        self.started = time.time()

    @property
    def done(self) -> int:
        return len(self.times)

    def estimate(self) -> str:
        if not self.times:
            return "estimate after the first run"
        return f"about {clock(sum(self.times) / len(self.times) * (self.total - self.done))} left"

    def line(self, text: str) -> str:
        return (f"== [{self.done}/{self.total} runs done, {clock(time.time() - self.started)} elapsed, "
                f"{self.estimate()}] {text}")

    def finished(self, seconds: float) -> None:
        self.times.append(seconds)


def train_run(out: Path, plan: Plan, i: int, signals: Signals, progress: Progress | None = None, *,
              nproc: int = 1, launcher: str = "", resume_hint: str = "") -> dict:
    """Train run i of the plan into OUT/runs unless it already counts; its record. A failure is a UserError
    naming the run and its output; a signal is Interrupted once the run has stopped."""
    p = run_paths(out, i)
    seed = plan.seeds[i]
    with file_lock(p.lock, wait=False) as lock:
        record, why = run_state(out, plan, i)
        if record is not None:
            return record
        moved = discard(out, i)
        say = progress.line if progress else (lambda t: f"== {t}")
        print(say(f"run {i + 1}/{plan.runs} ({p.log.name}), seed {seed}: {why}"
                  + (f"; moved to runs/discarded/: {', '.join(moved)}" if moved else "")), flush=True)
        cmd = train_command(plan, i, system=system_file(out, plan), log=p.log, nproc=nproc, launcher=launcher)
        signals.during = f"run {i + 1} ({p.log.name})"
        started = time.time()
        ended = tee(cmd, p.console_partial, signals, keep_fd=lock.fileno())
        seconds = time.time() - started
        os.replace(p.console_partial, p.console)
        signals.check()
        if ended.status != 0:
            how = f"was {ended.killed()}" if ended.killed() else f"failed with exit status {ended.status}"
            last = "" if ended.killed() else last_error(p.console)
            raise UserError(f"run {i + 1} ({p.log.name}, seed {seed}) {how}; its output: {p.console}{last}. "
                            f"{resume_hint}".rstrip())
        check_landed_log(p, i, signals)
        record = {"index": i, "seed": seed, "plan_id": plan.id, "seconds": round(seconds, 3),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                  "host": os.uname().nodename, "command": cmd, "nproc": nproc, "compliance": "PASS",
                  "log_sha256": sha256_file(p.log), "console": p.console.name,
                  "run_stop": parse_run(p.log)["status"] or "?"}
        atomic_write_text(p.record, json.dumps(record, indent=1) + "\n")  # the run counts from here on
    if progress:
        progress.finished(seconds)
        print(progress.line(f"run {i + 1}/{plan.runs} passed the compliance checker in {seconds:.1f} s "
                            f"(run_stop {record['run_stop']})"), flush=True)
    return record


def check_landed_log(p: RunPaths, i: int, signals: Signals) -> None:
    """The compliance check of a run that exited 0, once its log is here: a UserError unless it passes."""
    deadline = time.time() + LOG_WAIT_S
    while not p.log.is_file() and time.time() < deadline and not p.partial.is_file():
        time.sleep(1)  # rank 0 ran on another node; its log is on its way over a shared file system
    if not p.log.is_file():
        raise UserError(f"run {i + 1} exited 0 but left no {p.log} (only a .partial log means it never "
                        f"logged run_stop); its output: {p.console}")
    signals.during = f"the compliance check of {p.log.name}"
    verdict = tools.check_log(p.log)
    if not verdict.passed:
        raise UserError(f"run {i + 1} ({p.log}) fails the compliance checker: "
                        f"{'; '.join(verdict.summary_lines())[:500]}; its output: {p.console}")


def last_error(console: Path) -> str:
    """The last line of a failed run's output, when it says what went wrong."""
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in console.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return f" (last line: {lines[-1][:300]})"
    return ""


def train_all(out: Path, plan: Plan, signals: Signals, *, nproc: int = 1, resume_hint: str = "") -> list[Path]:
    """Every run of the plan that does not count yet, in order, with progress; the logs of all runs."""
    states = [run_state(out, plan, i) for i in range(plan.runs)]
    kept = [r for r, _ in states if r is not None]
    for r in kept:
        print(f"== run {r['index'] + 1}/{plan.runs} kept: it passed in {r['seconds']:.1f} s "
              f"and its log is unchanged", flush=True)
    progress = Progress(plan.runs, [r["seconds"] for r in kept])
    for i, (record, _) in enumerate(states):
        if record is None:
            train_run(out, plan, i, signals, progress, nproc=nproc, resume_hint=resume_hint)
    return [run_paths(out, i).log for i in range(plan.runs)]


def missing_runs(out: Path, plan: Plan) -> list[str]:
    """Why each run that does not count does not, for `make package`."""
    return [f"run {i + 1} ({run_paths(out, i).log.name}): {why}"
            for i in range(plan.runs) for record, why in [run_state(out, plan, i)] if record is None]


@dataclasses.dataclass
class Session:
    """One submit, run or reproduce command in OUT: its signal handling, and the plan it settled."""
    out: Path
    signals: Signals
    again: str                     # the command that resumes this one
    plan: Plan | None = None
    status: int | None = None      # the shell's status (128 + the signal) when a signal interrupted it

    def settle(self, req: Request, *, force: bool = False, code_commit: str = "") -> Plan:
        self.plan = settle_plan(self.out, req, force=force, code_commit=code_commit)
        return self.plan

    def train_all(self, *, nproc: int = 1) -> list[Path]:
        return train_all(self.out, self.plan, self.signals, nproc=nproc,
                         resume_hint=f"The runs that passed are kept: resume with `{self.again}`")


@contextlib.contextmanager
def session(out: Path, again: str) -> Iterator[Session]:
    """SIGINT and SIGTERM handled (`Signals`), a full disk one line (`disk_errors`), and an interruption one
    line saying what is kept and how to resume, with the shell's status in `Session.status`; the caller returns
    that status when it is set."""
    s = Session(out=out, signals=Signals(), again=again)
    with s.signals:
        try:
            with disk_errors(str(out), f"`{again}`"):
                yield s
        except Interrupted as e:
            runs = out / RUNS_DIR
            kept = sum(1 for _ in runs.glob("result_*.json")) if runs.is_dir() else 0
            print(f"interrupted by {signal.Signals(e.signum).name} during {e.during}; {kept} run(s) that passed are "
                  f"kept in {runs} (a stopped run does not count). Resume with: {again}", flush=True)
            s.status = 128 + e.signum


@contextlib.contextmanager
def disk_errors(what: str, again: str):
    """A full disk (or quota, or file-size limit) while writing becomes one line saying what to do."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise UserError(f"{e.strerror} while writing {e.filename or what}: nothing half-written was kept; free "
                        f"space and run {again} again") from None
