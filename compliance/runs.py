"""The runs of a submission folder: its plan, one run at a time into OUT/runs, resume, interruption, progress.

    python -m mlperf_submission.compliance submit --division closed --bench resnet --out OUT   (all runs, package)
    python -m mlperf_submission.compliance run --division closed --bench resnet --index 3 --out OUT   (run 3 only)
    python -m mlperf_submission.compliance package --out OUT                  (package the runs of OUT's plan)

OUT holds, while its runs are trained:
    OUT/plan.json                  division, benchmark, preset, resolved config and its hash, system and its hash,
                                   data and its manifest's checksum, files the config names (checkpoints) with
                                   their checksums, code commit, the number of runs and their seeds (drawn once)
    OUT/system/<system>.json       the system description the runs were trained on
    OUT/runs/result_<i>.txt        the MLPerf log of run i (`.partial` until run_stop)
    OUT/runs/result_<i>.log        its console output
    OUT/runs/result_<i>.json       written last, only when the run exited 0 and its log passed the compliance
                                   checker: the seed, the command, times, the checker's verdict and the log's
                                   sha256. A run counts only with this record and a log that still matches it.
    OUT/runs/discarded/            runs that did not count (interrupted, failed, edited), moved aside when redone

The first caller writes the plan under a file lock (OUT/.plan.lock), so the tasks of an array job agree on the
seeds; a later caller with another preset, config, system, data or checkpoint is refused, naming the difference.
Each run is trained under its own lock (OUT/runs/.result_<i>.lock), held by the training process too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlperf_submission import benchmarks
from mlperf_submission.closed.bert.checkpoint import checkpoint_prefix
from mlperf_submission.common.cli import UserError, atomic_write_text, sha256_file
from mlperf_submission.compliance import tools

PLAN_NAME = "plan.json"
PLAN_FORMAT = "mlperf_submission.plan/1"
RUNS_DIR = "runs"
SYSTEM_DIR = "system"
PLAN_LOCK = ".plan.lock"
# What OUT holds besides the package: kept when the package is rebuilt, the whole of OUT for FORCE=1.
NOT_PACKAGE = {PLAN_NAME, RUNS_DIR, SYSTEM_DIR, PLAN_LOCK}
# Data folders from `make data`: ImageNet's index, the converted and the packed BERT arrays.
DATA_MANIFESTS = ("imagenet_manifest.json", "manifest.json")
# Config fields that name a file whose content is part of the run (the phase-1 checkpoint of closed BERT).
FILE_FIELDS = ("init_checkpoint",)
# Seconds a run has, after the signal is passed on, to log run_stop aborted and exit before it is killed.
STOP_GRACE_S = 30
# Seconds to wait for a run's log to appear on a shared file system when rank 0 ran on another node.
LOG_WAIT_S = 60


class Interrupted(Exception):
    """SIGINT or SIGTERM reached submit, run or package; the current run was stopped and does not count."""

    def __init__(self, signum: int, during: str):
        super().__init__(f"{signal.Signals(signum).name} during {during}")
        self.signum = signum
        self.during = during


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """What a submit, run or reproduce command asks for; the plan adds the seeds, the commit and an id."""
    division: str
    benchmark: str
    preset: str
    overrides: tuple[str, ...]
    system_name: str
    system: dict
    data: str                      # absolute path, or "" for the built-in synthetic data
    runs: int
    seeds: tuple[int, ...] | None  # None: drawn when the plan is written
    demo: bool
    trainer: str = ""              # the division whose train.py runs (reproduce may run closed for open)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def resolved_config(division: str, benchmark: str, preset: str, overrides) -> dict:
    """The config a run of this preset and overrides trains with, as train.py resolves and validates it."""
    bench = benchmarks.get(division, benchmark)
    if preset not in bench.presets:
        raise UserError(f"unknown preset {preset!r} for {division} {benchmark}: "
                        f"choose one of {', '.join(bench.presets)}")
    cfg = bench.config(preset, overrides)
    bench.validate(cfg)
    return json.loads(canonical(dataclasses.asdict(cfg)))


def data_checksum(data: str) -> str:
    """The checksum of the manifest `make data` wrote into DATA: what a resume must find unchanged."""
    if not data:
        return "built-in synthetic data"
    for name in DATA_MANIFESTS:
        if (Path(data) / name).is_file():
            return f"{name} sha256:{sha256_file(Path(data) / name)}"
    raise UserError(f"DATA {data} has no {' or '.join(DATA_MANIFESTS)}: prepare it with `make data` first")


def input_files(cfg: dict) -> dict[str, str]:
    """sha256 of each file the config names (FILE_FIELDS): a changed checkpoint is a changed run."""
    files = {}
    for name in FILE_FIELDS:
        path = cfg.get(name) or ""
        if path:
            files[name] = " ".join(f"{p.resolve()} sha256:{sha256_file(p)}" for p in named_files(name, path))
    return files


def named_files(field: str, path: str) -> list[Path]:
    """The files behind a config's path: the file itself, or a TF checkpoint prefix's index and data shards."""
    if Path(path).is_file():
        return [Path(path)]
    prefix = Path(checkpoint_prefix(path))
    found = sorted(prefix.parent.glob(glob.escape(prefix.name) + ".data-*")) if prefix.parent.is_dir() else []
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file() or not found:
        raise UserError(f"{field} {path} not found: give a file or a TF checkpoint prefix (PREFIX.index and "
                        "PREFIX.data-* beside it)")
    return [index, *found]


def wanted_plan(req: Request) -> dict:
    """The plan a request makes, without the seeds when it draws them."""
    trainer = req.trainer or req.division
    cfg = resolved_config(trainer, req.benchmark, req.preset, req.overrides)
    return {
        "format": PLAN_FORMAT,
        "division": req.division,
        "benchmark": req.benchmark,
        "trainer": trainer,
        "preset": req.preset,
        "overrides": list(req.overrides),
        "config": cfg,
        "config_sha256": sha256_text(canonical(cfg)),
        "system_name": req.system_name,
        "system": req.system,
        "system_sha256": sha256_text(canonical(req.system)),
        "data": req.data,
        "data_checksum": data_checksum(req.data),
        "inputs": input_files(cfg),
        "demo": req.demo,
        "runs": req.runs,
        "seeds": list(req.seeds) if req.seeds is not None else None,
    }


def differences(stored: dict, wanted: dict) -> list[str]:
    """What the command asks for that the plan in OUT does not say, one phrase each."""
    out = []
    for key, what in (("division", "division"), ("benchmark", "benchmark"), ("preset", "preset"),
                      ("system_name", "system"), ("data", "DATA"), ("runs", "RUNS")):
        if stored.get(key) != wanted.get(key):
            out.append(f"{what} {wanted.get(key)!r} (the plan has {stored.get(key)!r})")
    if stored.get("system_name") == wanted.get("system_name") and stored["system_sha256"] != wanted["system_sha256"]:
        fields = sorted(k for k in {*stored["system"], *wanted["system"]}
                        if stored["system"].get(k) != wanted["system"].get(k))
        out.append(f"system description {wanted['system_name']} changed in {', '.join(fields)}")
    if stored["config_sha256"] != wanted["config_sha256"]:
        fields = sorted(k for k in {*stored["config"], *wanted["config"]}
                        if stored["config"].get(k) != wanted["config"].get(k))
        out.append("config " + ", ".join(f"{k}={wanted['config'].get(k)!r} (the plan has {stored['config'].get(k)!r})"
                                         for k in fields))
    if stored.get("data") == wanted.get("data") and stored["data_checksum"] != wanted["data_checksum"]:
        out.append(f"data manifest {wanted['data_checksum']} (the plan has {stored['data_checksum']})")
    for name in sorted({*stored.get("inputs", {}), *wanted.get("inputs", {})}):
        if stored.get("inputs", {}).get(name) != wanted.get("inputs", {}).get(name):
            out.append(f"{name} {wanted['inputs'].get(name, 'none')} "
                       f"(the plan has {stored['inputs'].get(name, 'none')})")
    if wanted.get("seeds") is not None and stored.get("seeds") != wanted["seeds"]:
        out.append(f"SEEDS {','.join(map(str, wanted['seeds']))} (the plan has {','.join(map(str, stored['seeds']))})")
    return out


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True):
    """An exclusive flock on `path` (created if absent); yields the open file, whose descriptor a child may
    inherit to hold the lock as long as it lives. With wait False, a held lock is a UserError."""
    f = open(path, "a+")  # closed below
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise UserError(f"{path} is locked: another process is training this run; wait for it or stop it") from None
        yield f
    finally:
        f.close()


def clear(out: Path) -> None:
    """Remove everything in OUT but its plan lock (FORCE=1)."""
    for entry in out.iterdir():
        if entry.name == PLAN_LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def settle_plan(out: Path, req: Request, *, force: bool = False, code_commit: str = "") -> dict:
    """The plan of OUT: written (seeds drawn) by the first caller, checked against the request by every later one."""
    wanted = wanted_plan(req)
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / PLAN_NAME
    with file_lock(out / PLAN_LOCK):
        if force:
            if any(e.name != PLAN_LOCK for e in out.iterdir()) and not plan_file.is_file():
                raise UserError(f"{out} holds no {PLAN_NAME}: FORCE=1 starts over only a submission folder; "
                                "remove it yourself or choose another OUT")
            clear(out)
        if plan_file.is_file():
            stored = load_plan(out)
            diff = differences(stored, wanted)
            if diff:
                raise UserError(f"{out} was planned differently: this command asks for {'; '.join(diff)}. Use the "
                                "plan's settings to resume, another OUT, or FORCE=1 to start this OUT over")
            if code_commit and stored.get("code_commit") != code_commit:
                print(f"note: the code is at {code_commit}, the plan was written at {stored.get('code_commit')}",
                      flush=True)
            return stored
        if any(e.name != PLAN_LOCK for e in out.iterdir()):
            raise UserError(f"{out} exists and is not empty and holds no {PLAN_NAME}: choose a new OUT or remove it")
        seeds = wanted["seeds"] or draw_seeds(req.runs)
        plan = wanted | {"seeds": seeds, "seeds_drawn": wanted["seeds"] is None, "code_commit": code_commit,
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "id": secrets.token_hex(8)}
        (out / SYSTEM_DIR).mkdir(exist_ok=True)
        atomic_write_text(out / SYSTEM_DIR / f"{req.system_name}.json", json.dumps(req.system, indent=2) + "\n")
        (out / RUNS_DIR).mkdir(exist_ok=True)
        atomic_write_text(plan_file, json.dumps(plan, indent=1) + "\n")  # last: the plan exists once it is whole
        return plan


def draw_seeds(runs: int) -> list[int]:
    seeds: set[int] = set()
    while len(seeds) < runs:
        seeds.add(secrets.randbelow(2**31 - 1) + 1)
    return list(seeds)


def load_plan(out: Path) -> dict:
    path = out / PLAN_NAME
    if not path.is_file():
        raise UserError(f"{out} holds no {PLAN_NAME}: start it with `make submit` or `make run ... OUT={out}`")
    try:
        plan = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}): restore it, or start over with FORCE=1") from None
    if plan.get("format") != PLAN_FORMAT:
        raise UserError(f"{path} is not a plan of format {PLAN_FORMAT}")
    return plan


def system_file(out: Path, plan: dict) -> Path:
    path = out / SYSTEM_DIR / f"{plan['system_name']}.json"
    if not path.is_file() or json.loads(path.read_text()) != plan["system"]:
        atomic_write_text(path, json.dumps(plan["system"], indent=2) + "\n")
    return path


def run_paths(out: Path, i: int) -> dict[str, Path]:
    runs = out / RUNS_DIR
    return {"log": runs / f"result_{i}.txt", "partial": runs / f"result_{i}.txt.partial",
            "console": runs / f"result_{i}.log", "console_partial": runs / f"result_{i}.log.partial",
            "record": runs / f"result_{i}.json", "lock": runs / f".result_{i}.lock"}


def logged_seed(log: Path):
    for line in log.read_text(errors="replace").splitlines():
        if ":::MLLOG " in line and '"key": "seed"' in line:
            with contextlib.suppress(ValueError):
                return json.loads(line.split(":::MLLOG ", 1)[1]).get("value")
    return None


def run_state(out: Path, plan: dict, i: int) -> tuple[dict | None, str]:
    """(the record of run i, "") when it counts, else (None, why not)."""
    p = run_paths(out, i)
    if not p["record"].is_file():
        if p["log"].is_file():
            return None, "its log has no record of passing (the run was interrupted or failed)"
        if p["partial"].is_file():
            return None, "it was interrupted (only a .partial log)"
        return None, "not trained yet"
    try:
        record = json.loads(p["record"].read_text())
    except ValueError:
        return None, f"its record {p['record'].name} is not valid JSON"
    if record.get("plan_id") != plan["id"] or record.get("seed") != plan["seeds"][i]:
        return None, "its record belongs to another plan"
    if not p["log"].is_file():
        return None, "its log is missing"
    if sha256_file(p["log"]) != record.get("log_sha256"):
        return None, f"{p['log'].name} was changed after it passed (its sha256 is not the one recorded)"
    if logged_seed(p["log"]) != plan["seeds"][i]:
        return None, f"{p['log'].name} does not log the plan's seed {plan['seeds'][i]}"
    verdict = tools.check_log(p["log"])
    if not verdict.passed:
        return None, "its log fails the compliance checker: " + "; ".join(verdict.summary_lines())[:300]
    return record, ""


def discard(out: Path, i: int) -> list[str]:
    """Move whatever run i left (an interrupted, failed or edited run) into OUT/runs/discarded/."""
    p = run_paths(out, i)
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for key in ("log", "partial", "console", "console_partial", "record"):
        if p[key].exists():
            dest = out / RUNS_DIR / "discarded" / f"{stamp}-{p[key].name}"
            dest.parent.mkdir(exist_ok=True)
            os.replace(p[key], dest)
            moved.append(dest.name)
    return moved


def train_command(plan: dict, i: int, *, system: Path, log: Path, nproc: int = 1, launcher: str = "") -> list[str]:
    """The one command that trains run i of a plan: its trainer, preset, seed, system, data and overrides."""
    module = benchmarks.get(plan["trainer"], plan["benchmark"]).trainer
    if launcher:
        start = [*shlex.split(launcher), "-m", module]
    elif nproc > 1:
        start = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                 module]
    else:
        start = [sys.executable, "-m", module]
    cmd = [*start, "--preset", plan["preset"], "--seed", str(plan["seeds"][i]), "--system", str(system),
           "--result-log", str(log)]
    if plan["data"]:
        cmd += ["--data", plan["data"]]
    for o in plan["overrides"]:
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


def tee(cmd: list[str], console: Path, signals: Signals, *, keep_fd: int | None = None, echo: bool = True) -> int:
    """Run `cmd` in its own process group, its output to `console` and (until a signal) the terminal; its exit
    status. Its own group, so that a Ctrl-C reaches it once, through `signals`, and not twice."""
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
            return proc.wait()
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


def train_run(out: Path, plan: dict, i: int, signals: Signals, progress: Progress | None = None, *,
              nproc: int = 1, launcher: str = "", resume_hint: str = "") -> dict:
    """Train run i of the plan into OUT/runs unless it already counts; its record. A failure is a UserError
    naming the run and its output; a signal is Interrupted once the run has stopped."""
    p = run_paths(out, i)
    seed = plan["seeds"][i]
    with file_lock(p["lock"], wait=False) as lock:
        record, why = run_state(out, plan, i)
        if record is not None:
            return record
        moved = discard(out, i)
        say = progress.line if progress else (lambda t: f"== {t}")
        print(say(f"run {i + 1}/{plan['runs']} ({p['log'].name}), seed {seed}: {why}"
                  + (f"; moved to runs/discarded/: {', '.join(moved)}" if moved else "")), flush=True)
        cmd = train_command(plan, i, system=system_file(out, plan), log=p["log"], nproc=nproc, launcher=launcher)
        signals.during = f"run {i + 1} ({p['log'].name})"
        started = time.time()
        status = tee(cmd, p["console_partial"], signals, keep_fd=lock.fileno())
        seconds = time.time() - started
        os.replace(p["console_partial"], p["console"])
        signals.check()
        if status != 0:
            raise UserError(f"run {i + 1} ({p['log'].name}, seed {seed}) failed with exit status {status}; its "
                            f"output: {p['console']}{last_error(p['console'])}. {resume_hint}".rstrip())
        deadline = time.time() + LOG_WAIT_S
        while not p["log"].is_file() and time.time() < deadline and not p["partial"].is_file():
            time.sleep(1)  # rank 0 ran on another node; its log is on its way over a shared file system
        if not p["log"].is_file():
            raise UserError(f"run {i + 1} exited 0 but left no {p['log']} (only a .partial log means it never "
                            f"logged run_stop); its output: {p['console']}")
        signals.during = f"the compliance check of {p['log'].name}"
        verdict = tools.check_log(p["log"])
        if not verdict.passed:
            raise UserError(f"run {i + 1} ({p['log']}) fails the compliance checker: "
                            f"{'; '.join(verdict.summary_lines())[:500]}; its output: {p['console']}")
        record = {"index": i, "seed": seed, "plan_id": plan["id"], "seconds": round(seconds, 3),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                  "host": os.uname().nodename, "command": cmd, "nproc": nproc, "compliance": "PASS",
                  "log_sha256": sha256_file(p["log"]), "console": p["console"].name,
                  "run_stop": run_stop_status(p["log"])}
        atomic_write_text(p["record"], json.dumps(record, indent=1) + "\n")  # the run counts from here on
    if progress:
        progress.finished(seconds)
        print(progress.line(f"run {i + 1}/{plan['runs']} passed the compliance checker in {seconds:.1f} s "
                            f"(run_stop {record['run_stop']})"), flush=True)
    return record


def last_error(console: Path) -> str:
    """The last line of a failed run's output, when it says what went wrong."""
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in console.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return f" (last line: {lines[-1][:300]})"
    return ""


def run_stop_status(log: Path) -> str:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"key": "run_stop"' in line:
            return json.loads(line.split(":::MLLOG ", 1)[1]).get("metadata", {}).get("status", "?")
    return "?"


def train_all(out: Path, plan: dict, signals: Signals, *, nproc: int = 1, resume_hint: str = "") -> list[Path]:
    """Every run of the plan that does not count yet, in order, with progress; the logs of all runs."""
    states = [run_state(out, plan, i) for i in range(plan["runs"])]
    kept = [r for r, _ in states if r is not None]
    for r in kept:
        print(f"== run {r['index'] + 1}/{plan['runs']} kept: it passed in {r['seconds']:.1f} s "
              f"and its log is unchanged", flush=True)
    progress = Progress(plan["runs"], [r["seconds"] for r in kept])
    for i, (record, _) in enumerate(states):
        if record is None:
            train_run(out, plan, i, signals, progress, nproc=nproc, resume_hint=resume_hint)
    return [run_paths(out, i)["log"] for i in range(plan["runs"])]


def missing_runs(out: Path, plan: dict) -> list[str]:
    """Why each run that does not count does not, for `make package`."""
    return [f"run {i + 1} ({run_paths(out, i)['log'].name}): {why}"
            for i in range(plan["runs"]) for record, why in [run_state(out, plan, i)] if record is None]


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
