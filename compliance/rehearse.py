"""`make rehearse`: a real preset end to end at full size for a few steps, measured, with a forecast.

    python -m mlperf_submission.compliance rehearse --bench resnet|bert --preset 1xH200 [--division closed]
        [--system NAME|FILE] [--data DIR] [--ckpt PREFIX] [--steps 2] [--budget 300] [--out DIR]
        [--imagenet-layout jpeg|tfds]
    make rehearse BENCH=bert PRESET=1xH200 [DIVISION= SYSTEM= DATA= CKPT= STEPS= BUDGET= OUT= LAYOUT=]

Without DATA it generates full-format data once (cached under out/cache/: ILSVRC2012 JPEG folders or, with
LAYOUT=tfds, tfds imagenet2012 TFRecord shards; or MLPerf
BERT TFRecords and a full-size TF1 phase-1 checkpoint), then runs `make data` on it as a user would, then the
preset's training command, the very argv `make submit` runs for run 0 (runs.train_command) plus the rehearsal
switch (common/rehearsal.py): STEPS optimizer steps or BUDGET seconds of training, whichever comes first, one
eval on a bounded slice, run_stop `aborted`, a log labelled a rehearsal (system name, status research). Where
the preset's micro-batch would not fit this machine's memory, it raises gradient_accumulation_steps (the global
batch stays) and says so. OUT gets rehearsal.md and rehearsal.json (every stage's seconds, samples per second,
data-wait share, eval seconds per 1,000 samples, peak memory against the package's estimate, the official
checker's verdict, the RCP forecast) and the log. Exit 0 when the log passes the compliance checker in every
check but the quality target (which no rehearsal of a few steps reaches), 1 otherwise, 2 on bad input.

Measured on the idle 2-core AMD EPYC VM (24 GB, torch 2.13 CPU), cold cache, default STEPS and BUDGET:
`make rehearse BENCH=resnet PRESET=1xH200` took 8 min 21 s (generating 4,000 JPEGs 27 s, `make data` 4 s,
init 3 s, 16 micro-steps of 204 images at 8 accumulation steps, fitted to the memory, 445 s: 2 optimizer
steps, 25.8 s a micro-step, 0.7 % of it waiting for data; an eval of 256 images 12 s; peak host memory 9.2
GiB against an estimate of 12.6 GiB) and exited 0; `make rehearse BENCH=bert PRESET=1xH200` 6 min 59 s (the
4.0 GB checkpoint and TFRecords 22 s, `make data` 2 s, init with the checkpoint's conversion 21 s, 32
micro-steps of 2 sequences at 128 accumulation steps 304 s, an eval of 64 sequences 59 s; peak 8.5 GiB
against an estimate of 10.4 GiB), exit 0. A warm cache skips the generation (its checksums are read again:
BERT 10 s instead of 22 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from .. import benchmarks
from ..closed.bert import checkpoint, rehearsal_data
from ..closed.bert import presets as bert_presets
from ..common import rehearsal as switch
from ..common.cli import UserError, atomic_write_text
from ..common.data.generate import imagenet as imagenet_generator
from ..common.run import BENCHMARKS, DIVISIONS
from ..common.runtime import memory
from ..systems import load as load_system
from . import plan as planning
from . import rehearse_report, runs, submit, tools

HOST_FRACTION = 0.6  # of MemAvailable a CPU rehearsal may plan for: the rest for the OS, page cache, workers
EVAL_SAMPLES = {"resnet": 256, "bert": 64}  # the bounded eval slice (BERT-Large at 512 is slow on a CPU)


def add_arguments(p) -> None:
    p.add_argument("--bench", required=True, choices=BENCHMARKS)
    p.add_argument("--division", default="closed", choices=DIVISIONS)
    p.add_argument("--preset", required=True, help="a real preset, e.g. 1xH200, 8xA100, pod16")
    p.add_argument("--system", default="", help="system description (default: this machine)")
    p.add_argument("--data", default="", help="your prepared dataset (default: generated full-format data)")
    p.add_argument("--ckpt", default="", help="BERT phase-1 checkpoint (default: a generated full-size one)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps at the preset's global batch")
    p.add_argument("--budget", type=float, default=300.0, help="seconds of training, at least one micro-step")
    p.add_argument("--out", type=Path, help="output folder (default out/rehearse-<bench>-<preset>-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field (repeatable)")
    p.add_argument("--imagenet-layout", choices=imagenet_generator.LAYOUTS, default="jpeg",
                   help="generated ImageNet: ILSVRC2012 JPEG folders, or tfds imagenet2012 TFRecord shards")
    p.add_argument("--cache", type=Path, default=Path("out/cache"), help=argparse.SUPPRESS)
    p.add_argument("--scale", default="", help=argparse.SUPPRESS)  # tests: generator sizes as JSON


class Stages:
    """Each stage's seconds, with a progress line as it starts and ends."""

    def __init__(self):
        self.started = time.time()
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"== [{runs.clock(time.time() - self.started)}] {name} ...", flush=True)
        t = time.time()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.time() - t, 3)
        print(f"== [{runs.clock(time.time() - self.started)}] {name}: {self.seconds[name]:.1f} s", flush=True)
        return result


def system_for(args) -> tuple[str, dict]:
    """The system description the run logs, relabelled: a rehearsal is never a result."""
    if args.system:
        stem, system = load_system(args.system)
    else:
        stem, system = planning.DEMO_SYSTEM, planning.demo_system("DEMO", args.division)
    name = f"REHEARSAL {system['system_name']} (not a valid result)"
    return f"rehearsal-{stem}", system | {"division": args.division, "status": "research", "system_name": name,
                                          "sw_notes": "REHEARSAL: a few steps of a real preset, never a result"}


def generated_data(args, stages: Stages, out: Path) -> tuple[str, str, dict]:
    """(DATA, CKPT, notes): the user's, checked, or generated (cached) and prepared with `make data`."""
    scale = json.loads(args.scale) if args.scale else {}
    if args.data:
        planning.data_checksum(str(Path(args.data).resolve()))  # a prepared dataset, or a UserError
        return args.data, args.ckpt, {"data": "given"}
    if args.bench == "resnet":
        # An epoch is whole global batches (the reference drops the remainder): at least one of the preset's.
        classes = scale.get("classes", 1000)
        scale.setdefault("train_per_class", max(3, -(-preset_config(args).global_batch_size // classes)))
        shown = {"jpeg": "JPEG folders", "tfds": "tfds TFRecord shards"}[args.imagenet_layout]
        folder, hit = stages.run(f"generate ImageNet ({shown})", imagenet_generator.generate,
                                 layout=args.imagenet_layout, cache=args.cache, **scale)
        stages.run("make data (ImageNet index and checksums)", runs_quiet,
                   data_command("resnet", src=str(folder), out=str(folder)), out / "make_data.log")
        return str(folder), "", {"data": str(folder), "cached": hit}
    folder, hit = stages.run("generate BERT TFRecords and phase-1 checkpoint", rehearsal_data.generate,
                             cache=args.cache, **scale)
    files, prepared = rehearsal_data.paths(folder), out / "bert-data"
    stages.run("make data (BERT TFRecords to arrays)", runs_quiet,
               data_command("bert", src=files["train"], out=str(prepared), eval_file=files["eval"]),
               out / "make_data.log")
    return str(prepared), args.ckpt or files["ckpt"], {"data": str(folder), "cached": hit}


def data_command(bench: str, *, src: str, out: str, eval_file: str = "") -> list[str]:
    """What `make data BENCH=... SRC=... [EVAL=] OUT=...` runs (the Makefile's recipe)."""
    if bench == "resnet":
        return [sys.executable, "-m", "mlperf_submission.common.data.imagenet", src, "--out", out]
    return [sys.executable, "-m", "mlperf_submission.common.data.bert_wiki", "convert", "--train", src,
            "--eval", eval_file, "--out", out]


def runs_quiet(cmd: list[str], console: Path) -> None:
    with runs.Signals() as signals:
        failed(runs.tee(cmd, console, signals, echo=False), f"`{' '.join(cmd)}`", console)


def failed(ended: runs.Exit, what: str, console: Path) -> None:
    """One line for a command that did not exit 0: the signal and its likely cause (SIGKILL: the out-of-memory
    killer) with its peak memory, or the exit status and its last line of output."""
    if ended.status == 0:
        return
    how = ended.killed() or f"failed with exit status {ended.status}{runs.last_error(console)}"
    raise UserError(f"{what} {how}: see {console}")


def check_ckpt(bench: str, division: str, ckpt: str) -> None:
    """A checkpoint that is not BERT-Large's phase 1 is one line before anything runs."""
    if not ckpt or bench != "bert":
        return
    try:
        checkpoint.check_init_checkpoint(ckpt, bert_presets.h200().model_config())
    except checkpoint.CheckpointError as e:
        raise UserError(f"CKPT is not a BERT-Large phase-1 checkpoint: {e}") from None


def fitted(bench: str, cfg: dict, overrides: tuple[str, ...], gpus: int) -> tuple[tuple[str, ...], str]:
    """Overrides with gradient_accumulation_steps raised (to the next multiple that divides the batch) until the
    micro-batch's memory estimate fits this machine (the GPU's memory, or on a CPU a share of the available host
    memory); and a sentence when raised, or when even one sample a micro-step does not fit."""
    config = benchmarks.get(cfg["division"], bench).config(cfg["preset"], overrides)
    capacity, where = available_memory()
    preset_accumulation = config.gradient_accumulation_steps
    per_rank = (config.global_batch_items if bench == "bert" else config.global_batch_size) // gpus
    choices = [a for a in range(preset_accumulation, per_rank + 1)
               if per_rank % a == 0 and a % preset_accumulation == 0]
    for accumulation in choices:
        need = estimate_bytes(config, per_rank // accumulation)
        if need <= capacity:
            break
    if accumulation == preset_accumulation and need <= capacity:
        return overrides, ""
    local = per_rank // accumulation
    note = (f"the preset's micro-batch of {per_rank // preset_accumulation} needs more memory than {where}: "
            f"rehearsing at {local} x {accumulation} accumulation steps (same global batch {per_rank * gpus}; "
            f"estimate {need / memory.GIB:.1f} GiB); the forecast scales back to the preset's")
    if need > capacity:
        note += f" (even this is over {capacity / memory.GIB:.1f} GiB: the run may be killed for memory)"
    return (*overrides, f"gradient_accumulation_steps={accumulation}"), note


def device_precision(cfg, overrides: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """fp16 (autocast with a loss scaler) is the CUDA path: without CUDA the rehearsal runs bf16, the same
    16-bit activations and shapes, and says so; the forecast keeps the preset's own hyperparameters."""
    if cfg.precision != "fp16" or cfg.device == "ipu" or torch.cuda.is_available():
        return overrides, ""
    return (*overrides, "precision=bf16"), ("the preset's fp16 needs CUDA: rehearsing at bf16 on this machine "
                                            "(same 16-bit activations and shapes, no loss scaler)")


def replicas(cfg, preset: str) -> int:
    """Data-parallel replicas of the preset's own layout: its IPU replicas (pod16: 4 pipelines of 4 IPUs), else
    one an accelerator (8xA100: 8); the preset's micro-batch is the global batch over these and its
    accumulation."""
    return getattr(cfg, "ipu_replicas", 0) or benchmarks.accelerators(preset)


def estimates(args, plan: planning.Plan, rehearsed_local: int, preset_cfg, gpus: int) -> dict:
    """The package's memory estimate at the rehearsed micro-batch and at the preset's own."""
    items = preset_cfg.global_batch_items if args.bench == "bert" else preset_cfg.global_batch_size
    preset_local = items // (gpus * preset_cfg.gradient_accumulation_steps)
    return {"rehearsed_bytes": estimate_bytes(preset_config(args, plan.overrides), rehearsed_local),
            "preset_bytes": estimate_bytes(preset_cfg, preset_local), "preset_local_batch": preset_local}


def estimate_bytes(cfg, local_batch: int) -> int:
    """The package's own memory estimate (common/runtime/memory.py, the formula beside each model) on this
    machine's device, the one the trainer checks before its log: the one call site."""
    return memory.needed(cfg, local_batch, "cuda" if torch.cuda.is_available() else "cpu").total


def available_memory() -> tuple[int, str]:
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        return int(memory.USABLE_FRACTION * total), f"{memory.USABLE_FRACTION:.0%} of this GPU's memory"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(int(line.split()[1]) * 1024 * HOST_FRACTION), f"{HOST_FRACTION:.0%} of the available host memory"
    return 2**62, "this machine"


def request_args(args, data: str, ckpt: str) -> argparse.Namespace:
    """The arguments `make submit` would get for the same preset, system, data and checkpoint."""
    return argparse.Namespace(division=args.division, bench=args.bench, preset=args.preset, system=args.system,
                              data=data, ckpt=ckpt, runs=1, seeds="", out=None, org="DEMO", nproc=1,
                              overrides=list(args.overrides))


def command(args, out: Path, data: str, ckpt: str, notes: dict) -> tuple[list[str], dict, Path]:
    """(the training argv, the plan, the log path): submit's run-0 command plus the rehearsal switch."""
    req = submit.request(request_args(args, data, ckpt))
    stem, system = system_for(args)
    gpus = benchmarks.accelerators(args.preset) if torch.cuda.is_available() else 1
    overrides, note = fitted(args.bench, {"division": args.division, "preset": args.preset}, req.overrides, gpus)
    if note:
        notes["fitted"] = note
    overrides, note = device_precision(preset_config(args, overrides), overrides)
    if note:
        notes["precision"] = note
    req = dataclasses.replace(req, overrides=overrides, system_name=stem, system=system)
    plan = dataclasses.replace(planning.wanted_plan(req), seeds=planning.draw_seeds(1))
    system_file = out / planning.SYSTEM_DIR / f"{stem}.json"
    atomic_write_text(system_file, json.dumps(system, indent=2) + "\n")
    log = out / "result_0.txt"
    evals = EVAL_SAMPLES[args.bench]
    cmd = [*runs.train_command(plan, 0, system=system_file, log=log),
           switch.SWITCH, switch.switch_value(args.steps, args.budget, evals)]
    return cmd, plan, log


def main(args) -> int:
    if args.steps < 1 or args.budget <= 0:
        raise UserError("STEPS must be >= 1 and BUDGET > 0 seconds")
    preset_config(args)  # an unknown preset or field is one line; the whole config is validated with its data
    check_ckpt(args.bench, args.division, args.ckpt)
    out = args.out or Path("out") / f"rehearse-{args.bench}-{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: choose a new OUT")
    out.mkdir(parents=True, exist_ok=True)
    stages, notes = Stages(), {}
    data, ckpt, notes["data"] = generated_data(args, stages, out)
    cmd, plan, log = command(args, out, data, ckpt, notes)
    print(f"== training command: {' '.join(cmd)}", flush=True)
    ended = stages.run("train (init, steps, eval)", train, cmd, out / "result_0.log")
    failed(ended, "the rehearsal run", out / "result_0.log")
    figures = json.loads(switch.figures_path(log).read_text())
    preset_cfg = preset_config(args)
    gpus = replicas(preset_cfg, args.preset)
    result = rehearse_report.build(args=args, plan=plan, cmd=cmd, log=log, stages=stages.seconds, notes=notes,
                                   verdict=tools.check_log(log), figures=figures, preset_cfg=preset_cfg, gpus=gpus,
                                   estimates=estimates(args, plan, figures["local_batch"], preset_cfg, gpus))
    rehearse_report.write(out, result)
    print((out / "rehearsal.md").read_text())
    return 0 if result["checker"]["passed_but_target"] else 1


def train(cmd: list[str], console: Path) -> runs.Exit:
    with runs.Signals() as signals:
        return runs.tee(cmd, console, signals)


def preset_config(args, overrides=()):
    """The preset's config object with the rehearsal's overrides."""
    return benchmarks.get(args.division, args.bench).config(args.preset, [*args.overrides, *overrides])
