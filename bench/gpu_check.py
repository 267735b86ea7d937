"""`make gpu-check`: everything this package does on a CUDA GPU, checked in one short run (under 10 minutes).

    python -m mlperf_submission.bench.gpu_check [--out out/gpu-check] [--budget 540]

Parts, each with its own time limit inside an overall budget (a part that would start past the budget is
recorded as skipped, one past its limit as timed out; the rest still run):
  1. environment: GPU name, memory and compute capability, driver, torch and its CUDA, cuDNN and NCCL
     builds, and the bf16 / fp32 matmul peak measured on the GPU;
  2. closed ResNet and closed BERT smoke runs on CUDA (the trainers as subprocesses, `--set device=cuda`),
     eager and under torch.compile (inductor), each log checked by the official compliance checker as
     `make check` does; their timed regions (run_start to run_stop) side by side;
  3. the GPU rows of `make bench` (`python -m mlperf_submission.bench --device cuda`: ours and the peers,
     throughput, memory and MFU against the measured peak), its JSON and Markdown kept;
  4. closed ResNet and closed BERT `1xH200` rehearsals (`make rehearse`: the real presets at full size on
     generated full-format data, 2 steps or 60 s of training, one bounded eval; compliance/rehearse.py).
Every part runs as a child process in its own process group, killed whole (its own children too) when it
runs past its limit, so nothing of it holds the GPU in the later parts. Writes OUT/gpu_check.json and
OUT/gpu_check.md (with the run logs and the bench's output beside them), both rewritten after every part,
so a run killed from outside still leaves its finished parts readable there. Without a CUDA GPU it prints
one line saying so, writes nothing and exits 0; exit 1 when a part failed or timed out, or when nvidia-smi
lists a GPU that this torch cannot use (a CPU-only build, or a driver it does not match).

On a machine without network, with its own CUDA torch: the offline install of README "On a GPU"
(`make wheels` where there is network, then `pip install --no-index --no-deps --target .pkgs .whl/*.whl`
there), then `PYTHONPATH=$PWD/.pkgs make gpu-check PY=python3 BUDGET=450`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import benchmarks
from ..common.cli import ArgumentParser, UserError, atomic_write_text, entry_point
from ..common.evidence import git_commit, ratio_text

FORMAT = "mlperf_submission.gpu_check/1"
# The most seconds each part may take. The parts run in this order, the most telling first, and each gets
# at most what is left of the budget (540 s by default: a minute of the 10 left for start-up and writing),
# so a slow early part costs the torch.compile runs at the end, never the 10-minute bound.
LIMITS = {"environment": 60, "resnet smoke, eager": 90, "bert smoke, eager": 120, "bench, GPU rows": 240,
          "resnet smoke, torch.compile": 150, "bert smoke, torch.compile": 180,
          "resnet 1xH200 rehearsal": 150, "bert 1xH200 rehearsal": 200}


def visible_gpus() -> list[str]:
    """The GPUs that `nvidia-smi -L` lists (none where there is no nvidia-smi or it fails)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")] if out.returncode == 0 else []


def no_gpu() -> tuple[str, int] | None:
    """None where a CUDA GPU is usable; else the one line that says why not, and the exit status: 0 on a
    machine without an NVIDIA GPU (nothing to check), 1 where nvidia-smi lists one that this torch cannot use."""
    if torch.version.cuda is not None and torch.cuda.is_available():
        return None
    why = (f"this torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
           else "torch has CUDA but sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?)")
    listed = visible_gpus()
    if listed:
        return f"gpu-check: error: nvidia-smi lists {len(listed)} GPU(s) ({listed[0]}), but {why}", 1
    return f"gpu-check: skipped, no GPU: {why}", 0


def run_group(cmd: list[str], limit: float, log: Path) -> str:
    """cmd in its own process group, its stdout and stderr kept in `log` -> its stdout. Past `limit` seconds
    the whole group is killed (the trainers' and the bench's own children too) and TimeoutExpired raised;
    exit status not 0: RuntimeError with the last line of stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        log.write_text(out + err)
        raise
    finally:
        _kill_group(proc.pid)  # a child it left behind would hold the GPU in the next part
    log.write_text(out + err)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(err.strip().splitlines() or ['?'])[-1]}")
    return out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # the group has no process left
        pass


def environment() -> dict:
    """The GPU, its software and the matmul peak measured on it (run in a child: `--environment`)."""
    props = torch.cuda.get_device_properties(0)
    driver = ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        pass
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        n = 8192
        a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        start, reps = time.perf_counter(), 20
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        peaks[str(dtype).removeprefix("torch.")] = 2 * n**3 * reps / (time.perf_counter() - start)
        del a, b
    nccl = torch.cuda.nccl.version()  # a tuple in torch 2, an int before
    return {"gpu": props.name, "gpu_count": torch.cuda.device_count(), "memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}", "driver": driver or "nvidia-smi not found",
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
            "matmul_tflops": {k: v / 1e12 for k, v in peaks.items()}}


def log_times(log: Path) -> dict:
    """run_start to run_stop of a result log, in seconds, and its status."""
    events = {}
    for line in log.read_text().splitlines():
        if ":::MLLOG " in line:
            e = json.loads(line.split(":::MLLOG ", 1)[1])
            events[e["key"]] = e
    return {"timed_s": (events["run_stop"]["time_ms"] - events["run_start"]["time_ms"]) / 1000,
            "status": events["run_stop"]["metadata"].get("status")}


def smoke_run(bench: str, compile_backend: str, folder: Path) -> Callable[[float], dict]:
    """A part: the closed smoke run of `bench` on CUDA, its log checked by the official checker."""

    def part(limit: float) -> dict:
        from ..compliance.tools import check_log

        log = folder / f"{bench}_{compile_backend}.txt"
        cmd = [sys.executable, "-m", benchmarks.get("closed", bench).trainer, "--preset", "smoke", "--seed", "1",
               "--system", "1xH200", "--result-log", str(log), "--set", "device=cuda",
               "--set", f"torch_compile={compile_backend}"]
        if bench == "bert" and compile_backend != "off":
            cmd += ["--set", "unpad=false"]  # compiled shapes must not change: unpadded rows do
        started = time.time()
        run_group(cmd, limit, folder / f"{bench}_{compile_backend}.out")
        verdict = check_log(log)
        result = {"command": " ".join(cmd[2:]), "wall_s": time.time() - started, **log_times(log),
                  "checker_passed": verdict.passed, "checker_errors": verdict.errors[:3]}
        if not verdict.passed:
            raise RuntimeError(f"the compliance checker failed the log: {verdict.errors[:1]}")
        return result

    return part


def bench_rows(folder: Path) -> Callable[[float], dict]:
    def part(limit: float) -> dict:
        out = folder / "bench"
        # 30 s of settling at most: the part's limit holds the whole bench (10 rounds per group on a GPU)
        cmd = [sys.executable, "-m", "mlperf_submission.bench", "--device", "cuda", "--settle-s", "30",
               "--out", str(out)]
        run_group(cmd, limit, folder / "bench.out")
        result = json.loads((out / "bench.json").read_text())
        keep = ("group", "name", "settings", "precision", "tf32", "samples", "samples_per_s", "step_s",
                "peak_memory_mib", "mfu", "error")
        return {"peak_tflops": {k: v / 1e12 for k, v in result["peak"]["flops_per_s"].items()},
                "peak_disturbed": result["peak"]["disturbed"],
                "rows": [{k: r[k] for k in keep if k in r} for r in result["rows"]], "ratios": result["ratios"]}

    return part


def rehearsal(bench: str, folder: Path) -> Callable[[float], dict]:
    """A part: `make rehearse BENCH=bench PRESET=1xH200` on this GPU; its stages, speed, memory and forecast."""

    def part(limit: float) -> dict:
        out = folder / f"rehearse-{bench}"
        cmd = [sys.executable, "-m", "mlperf_submission.compliance", "rehearse", "--bench", bench, "--preset", "1xH200",
               "--system", "1xH200", "--steps", "2", "--budget", "60", "--out", str(out)]
        run_group(cmd, limit, folder / f"rehearse-{bench}.out")
        r = json.loads((out / "rehearsal.json").read_text())
        return {**r["stages_s"], "samples_per_s": r["measured"]["samples_per_s"],
                "data_wait_share": r["measured"]["data_wait_share"],
                "peak_gpu_gib": r["memory"].get("peak_gpu_bytes", 0) / 2**30,
                "estimate_gib": r["memory"]["estimate_rehearsed_bytes"] / 2**30,
                "forecast_run_h": (r["forecast"]["time"]["per_run_s"] or 0) / 3600}

    return part


def run_part(name: str, fn: Callable[[float], dict], limit: float, left: float) -> dict:
    """One part under min(its limit, the budget left): its status, seconds and result or error line."""
    if left < 10:
        return {"name": name, "status": "skipped", "seconds": 0.0, "detail": "out of the overall time budget"}
    started = time.time()
    try:
        result = fn(min(limit, left))
        status, detail = "passed", result
    except subprocess.TimeoutExpired as e:
        status, detail = "timed out", f"over {e.timeout:.0f} s"
    except Exception as e:  # a part's failure is its result; the other parts still run
        status, detail = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return {"name": name, "status": status, "seconds": time.time() - started, "detail": detail}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def markdown(report: dict) -> str:
    lines = ["# `make gpu-check`", "", f"- command: `{report['command']}`", f"- commit: {report['commit']}",
             f"- when: {report['started']}, {report['seconds']:.0f} s in all"
             + ("" if report.get("finished") else " (unfinished: the parts done so far)"), "",
             "| part | status | seconds | result |", "|---|---|---|---|"]
    for p in report["parts"]:
        detail = p["detail"]
        if isinstance(detail, dict):
            detail = ", ".join(f"{k} {_cell(v)}" for k, v in detail.items() if not isinstance(v, (list, dict)))
        lines.append(f"| {p['name']} | {p['status']} | {p['seconds']:.0f} | {detail} |")
    env = next((p["detail"] for p in report["parts"] if p["name"] == "environment" and p["status"] == "passed"), None)
    if env:
        peaks = ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in env["matmul_tflops"].items())
        lines += ["", f"Matmul peak measured: {peaks}."]
    bench = next((p["detail"] for p in report["parts"] if p["name"].startswith("bench") and p["status"] == "passed"),
                 None)
    if bench:
        lines += ["", "| bench group | implementation | settings | samples/s | s/step | peak MiB | MFU |",
                  "|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            lines.append(f"| {r['group']} | {r['name']} | {r.get('settings', r.get('error', ''))} | "
                         f"{_cell(r.get('samples_per_s'))} | {_cell(r.get('step_s'))} | "
                         f"{_cell(r.get('peak_memory_mib'))} | {mfu} |")
        lines += ["", "| ratio | group | value |", "|---|---|---|"]
        lines += [f"| {q['ratio']} | {q['group']} | {ratio_text(q)} |" for q in bench["ratios"]]
    return "\n".join(lines) + "\n"


def write(folder: Path, report: dict) -> None:
    """The report as folder/gpu_check.json and .md, each replaced whole (main rewrites them after every part)."""
    atomic_write_text(folder / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(folder / "gpu_check.md", markdown(report))


def environment_part(folder: Path) -> Callable[[float], dict]:
    def part(limit: float) -> dict:
        cmd = [sys.executable, "-m", "mlperf_submission.bench.gpu_check", "--environment"]
        return json.loads(run_group(cmd, limit, folder / "environment.out"))

    return part


def plan(folder: Path) -> list[tuple[str, float, Callable[[float], dict]]]:
    """(name, limit in seconds, part) in the order run."""
    parts = [("environment", environment_part(folder)),
             ("resnet smoke, eager", smoke_run("resnet", "off", folder)),
             ("bert smoke, eager", smoke_run("bert", "off", folder)),
             ("bench, GPU rows", bench_rows(folder)),
             ("resnet 1xH200 rehearsal", rehearsal("resnet", folder)),
             ("bert 1xH200 rehearsal", rehearsal("bert", folder)),
             ("resnet smoke, torch.compile", smoke_run("resnet", "inductor", folder)),
             ("bert smoke, torch.compile", smoke_run("bert", "inductor", folder))]
    return [(name, LIMITS[name], fn) for name, fn in parts]


def fresh_folder(out: Path) -> None:
    """An empty `out`: a previous gpu-check's folder is replaced, any other folder refused (never deleted)."""
    if out.exists() and any(out.iterdir()):
        if not (out / "gpu_check.json").is_file():
            raise UserError(f"{out} exists and is not a gpu-check folder (no gpu_check.json): give another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/gpu-check"))
    p.add_argument("--budget", type=float, default=540, help="seconds for all the parts together")
    p.add_argument("--environment", action="store_true", help="only print the environment part's JSON (a child)")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget must be positive seconds, not {args.budget:g}")
    skip = no_gpu()
    if skip is not None:
        print(skip[0])
        return skip[1]
    if args.environment:
        print(json.dumps(environment()))
        return 0
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.time()
    command = "python -m mlperf_submission.bench.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    fresh_folder(args.out)
    report = {"format": FORMAT, "command": command, "commit": git_commit(), "started": started, "seconds": 0.0,
              "budget_s": args.budget, "finished": False, "parts": []}
    for name, limit, fn in plan(args.out):
        part = run_part(name, fn, limit, args.budget - (time.time() - clock))
        print(f"gpu-check: {name}: {part['status']} ({part['seconds']:.0f} s)", flush=True)
        report["parts"].append(part)
        report["seconds"] = time.time() - clock
        write(args.out, report)
    report["finished"] = True
    write(args.out, report)
    print(f"gpu-check: wrote {args.out / 'gpu_check.md'} and gpu_check.json")
    return 0 if all(p["status"] == "passed" for p in report["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
