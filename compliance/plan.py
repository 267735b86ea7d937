"""The plan of a submission folder: what its runs train (preset, config, system, data, inputs) and their seeds.

OUT/plan.json holds division, benchmark, preset, resolved config and its hash, system and its hash, data and its
manifest's checksum, files the config names (checkpoints) with their checksums, code commit, the number of runs
and their seeds (drawn once). The first caller writes it under a file lock (OUT/.plan.lock), so the tasks of an
array job agree on the seeds; a later caller with another preset, config, system, data or checkpoint is refused,
naming the difference. Run supervision (training, resume, signals) is `compliance/runs.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import platform
import secrets
import shutil
import time
from pathlib import Path

from .. import benchmarks
from ..closed.bert import phase1
from ..closed.bert.checkpoint import checkpoint_prefix
from ..common.cli import UserError, atomic_write_text, sha256_file
from ..systems import DEMO_NOTE, describe_local
from ..systems import load as load_system

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
DEMO_SYSTEM = "demo-local"
DEMO_RCP_REASON = ("a demonstration on built-in synthetic data at a scaled size: its convergence cannot be "
                   "compared with the reference convergence points, which are for the real dataset and model")


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """OUT/plan.json, field for field in the order it is written."""
    format: str
    division: str
    benchmark: str
    trainer: str                   # the division whose train.py runs
    preset: str
    overrides: tuple[str, ...]
    config: dict                   # the resolved config, as train.py resolves and validates it
    config_sha256: str
    system_name: str
    system: dict
    system_sha256: str
    data: str
    data_checksum: str
    inputs: dict[str, str]         # FILE_FIELDS name -> "path sha256:..." of each file behind it
    demo: bool
    runs: int
    seeds: tuple[int, ...] | None  # None only in a wanted plan that draws them
    code_commit: str = ""
    created: str = ""
    id: str = ""
    seeds_drawn: bool = False      # by the package (draw_seeds), not given by hand: the package README says which

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict, source: Path) -> Plan:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) - names or {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - set(d):
            raise UserError(f"{source} does not hold the fields of a plan of format {PLAN_FORMAT}: restore it, or "
                            "start over with FORCE=1")
        seeds = tuple(d["seeds"]) if d["seeds"] is not None else None
        return cls(**(d | {"overrides": tuple(d["overrides"]), "seeds": seeds}))


def demo_system(org: str, division: str) -> dict:
    """A description of this machine for a demonstration on synthetic data, saying it is not a valid result."""
    return describe_local(
        org=org, division=division, notes=DEMO_NOTE,
        system_name=f"DEMO {platform.machine()} CPU x{os.cpu_count()} (synthetic data, not a valid result)")


def request(*, division: str, benchmark: str, preset: str, overrides: tuple[str, ...], system: str, org: str,
            data: str, ckpt: str, runs: int, seeds: tuple[int, ...] | None) -> Request:
    """The request of submit, run and reproduce: DATA, PRESET, SYSTEM and CKPT checked, the demonstration's
    system and phase-1 checkpoint filled in; bad input is a UserError before anything is written."""
    demo = not data
    preset = preset or ("smoke" if demo else "")
    data = prepared_data(data)
    if not preset:
        raise UserError("with DATA given, name a PRESET too (e.g. PRESET=1xH200): see the presets in the README")
    if system:
        stem, desc = load_system(system)
        if desc["division"] != division:
            raise UserError(f"system {stem} is described for division {desc['division']!r}, not {division!r}")
    else:
        stem, desc = DEMO_SYSTEM, demo_system(org, division)
    # Closed BERT's phase-1 checkpoint: CKPT, or for the demonstration the smoke one, made once before any run;
    # as a config field it is part of the plan (path and sha256), so a changed checkpoint is a changed run.
    found = phase1.submission_checkpoint(division, benchmark, preset, overrides, ckpt)
    if found:
        overrides += (f"init_checkpoint={Path(found).resolve()}",)
    return Request(division=division, benchmark=benchmark, preset=preset, overrides=overrides, system_name=stem,
                   system=desc, data=data, runs=runs, seeds=seeds, demo=demo)


def prepared_data(data: str) -> str:
    """DATA as an absolute path ("" for the built-in synthetic data); a UserError when it does not exist."""
    if not data:
        return ""
    if not Path(data).exists():
        raise UserError(f"DATA path {data} does not exist: prepare it with `make data` first")
    return str(Path(data).resolve())


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


def wanted_plan(req: Request) -> Plan:
    """The plan a request makes, without the seeds when it draws them."""
    trainer = req.trainer or req.division
    cfg = resolved_config(trainer, req.benchmark, req.preset, req.overrides)
    return Plan(format=PLAN_FORMAT, division=req.division, benchmark=req.benchmark, trainer=trainer,
                preset=req.preset, overrides=tuple(req.overrides), config=cfg,
                config_sha256=sha256_text(canonical(cfg)), system_name=req.system_name, system=req.system,
                system_sha256=sha256_text(canonical(req.system)),
                data=req.data, data_checksum=data_checksum(req.data), inputs=input_files(cfg), demo=req.demo,
                runs=req.runs, seeds=req.seeds)


def changed_fields(stored: dict, wanted: dict) -> list[str]:
    return sorted(k for k in {*stored, *wanted} if stored.get(k) != wanted.get(k))


def differences(stored: Plan, wanted: Plan) -> list[str]:
    """What the command asks for that the plan in OUT does not say, one phrase each."""
    out = [f"{what} {getattr(wanted, key)!r} (the plan has {getattr(stored, key)!r})"
           for key, what in (("division", "division"), ("benchmark", "benchmark"), ("preset", "preset"),
                             ("system_name", "system"), ("data", "DATA"), ("runs", "RUNS"))
           if getattr(stored, key) != getattr(wanted, key)]
    if stored.system_name == wanted.system_name and stored.system_sha256 != wanted.system_sha256:
        out.append(f"system description {wanted.system_name} changed in "
                   f"{', '.join(changed_fields(stored.system, wanted.system))}")
    if stored.config_sha256 != wanted.config_sha256:
        out.append("config " + ", ".join(f"{k}={wanted.config.get(k)!r} (the plan has {stored.config.get(k)!r})"
                                         for k in changed_fields(stored.config, wanted.config)))
    if stored.data == wanted.data and stored.data_checksum != wanted.data_checksum:
        out.append(f"data manifest {wanted.data_checksum} (the plan has {stored.data_checksum})")
    for name in changed_fields(stored.inputs, wanted.inputs):
        out.append(f"{name} {wanted.inputs.get(name, 'none')} (the plan has {stored.inputs.get(name, 'none')})")
    if wanted.seeds is not None and stored.seeds != wanted.seeds:
        out.append(f"SEEDS {','.join(map(str, wanted.seeds))} (the plan has {','.join(map(str, stored.seeds))})")
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


def settle_plan(out: Path, req: Request, *, force: bool = False, code_commit: str = "") -> Plan:
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
            if code_commit and stored.code_commit != code_commit:
                print(f"note: the code is at {code_commit}, the plan was written at {stored.code_commit}", flush=True)
            return stored
        if any(e.name != PLAN_LOCK for e in out.iterdir()):
            raise UserError(f"{out} exists and is not empty and holds no {PLAN_NAME}: choose a new OUT or remove it")
        plan = dataclasses.replace(wanted, seeds=wanted.seeds or draw_seeds(req.runs), code_commit=code_commit,
                                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), id=secrets.token_hex(8),
                                   seeds_drawn=wanted.seeds is None)
        (out / SYSTEM_DIR).mkdir(exist_ok=True)
        atomic_write_text(out / SYSTEM_DIR / f"{req.system_name}.json", json.dumps(req.system, indent=2) + "\n")
        (out / RUNS_DIR).mkdir(exist_ok=True)
        atomic_write_text(plan_file, plan.to_json())  # last: the plan exists once it is whole
        return plan


def draw_seeds(runs: int) -> tuple[int, ...]:
    seeds: set[int] = set()
    while len(seeds) < runs:
        seeds.add(secrets.randbelow(2**31 - 1) + 1)
    return tuple(seeds)


def load_plan(out: Path) -> Plan:
    path = out / PLAN_NAME
    if not path.is_file():
        raise UserError(f"{out} holds no {PLAN_NAME}: start it with `make submit` or `make run ... OUT={out}`")
    try:
        plan = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}): restore it, or start over with FORCE=1") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise UserError(f"{path} is not a plan of format {PLAN_FORMAT}")
    return Plan.from_dict(plan, path)


def system_file(out: Path, plan: Plan) -> Path:
    path = out / SYSTEM_DIR / f"{plan.system_name}.json"
    if not path.is_file() or json.loads(path.read_text()) != plan.system:
        atomic_write_text(path, json.dumps(plan.system, indent=2) + "\n")
    return path
