"""What a rehearsal measured and forecasts: OUT/rehearsal.json and OUT/rehearsal.md (compliance/rehearse.py).

Figures come from three places: the stages' wall-clock seconds (rehearse.py), the MLPerf log's own timestamps
(init, the timed training, the eval) and the run's RESULT_LOG.rehearsal.json (per micro-step data wait and
compute, samples, peak memory; common/rehearsal.py). Samples per second leave out the first micro-step when
there are more (it pays for one-off allocations and the loader's first batches); the forecast applies the
measured per-sample speed to the preset's micro-batch, so a rehearsal at a smaller micro-batch forecasts
the preset conservatively.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..closed.bert import presets as bert_presets
from ..closed.resnet import presets as resnet_presets
from ..common.cli import atomic_write_text
from ..common.runtime import memory
from . import forecast, tools

TARGET_CHECK = "Failed checks for eval_accuracy"  # the quality target: the one check no rehearsal can pass
EVAL_SET = {"resnet": resnet_presets.IMAGENET_VAL, "bert": bert_presets.WIKI_EVAL_SAMPLES}
SAMPLES_PER_UNIT = {"resnet": resnet_presets.IMAGENET_TRAIN, "bert": 1}  # RCP epochs (ResNet), samples (BERT)


def log_times(log: Path) -> dict[str, float]:
    """Seconds from init_start of each timed key the log holds (the first of each)."""
    times = {}
    for line in log.read_text(errors="replace").splitlines():
        if ":::MLLOG " in line:
            rec = json.loads(line.split(":::MLLOG ", 1)[1])
            times.setdefault(rec["key"], rec["time_ms"] / 1000)
    start = times.get("init_start", 0.0)
    return {k: v - start for k, v in times.items() if k in ("init_start", "run_start", "eval_start", "eval_stop",
                                                               "run_stop")}


def checker_verdict(verdict: tools.LogVerdict) -> dict:
    """The official verdict, and whether its only failure is the quality target."""
    others = [e for e in verdict.errors if not e.strip().startswith(TARGET_CHECK)]
    return {"passed": verdict.passed, "passed_but_target": verdict.passed or not others,
            "errors": verdict.summary_lines()}


def speed(figures: dict) -> dict:
    """Samples per second, data-wait share and micro-step seconds, from the run's per-micro-step timers."""
    wait, compute = figures["data_wait_s"], figures["compute_s"]
    skip = 1 if len(wait) > 1 else 0
    steady = [w + c for w, c in zip(wait[skip:], compute[skip:], strict=True)]
    per_micro = figures["samples"] / max(1, figures["micro_steps"])
    seconds = sum(steady)
    return {"micro_steps": figures["micro_steps"], "steps_done": figures["steps_done"],
            "samples_per_s": per_micro * len(steady) / seconds if seconds else 0.0,
            "data_wait_share": sum(wait[skip:]) / seconds if seconds else 0.0,
            "micro_step_s": seconds / len(steady) if steady else 0.0, "first_micro_step_s": wait[0] + compute[0],
            "measured_micro_steps": len(steady)}


def preset_facts(bench: str, cfg, gpus: int) -> tuple[dict, dict, int, int]:
    """(logged hyperparameters as a real run logs them, what the reference fixes beyond the RCP table,
    evals before convergence at `mean`'s unit -> a function, the eval interval) for the preset."""
    if bench == "resnet":
        logged = resnet_presets.hyperparameters(cfg, resnet_presets.IMAGENET_TRAIN)
        logged.setdefault("model_bn_span", cfg.model_bn_span or cfg.global_batch_size // (
            gpus * cfg.gradient_accumulation_steps))
        return logged, {}, cfg.eval_offset or cfg.eval_every, cfg.eval_every
    logged = bert_presets.hyperparameters(cfg)
    implicit = {"opt_lamb_bias_correction": (cfg.opt_lamb_bias_correction, True)}
    return logged, implicit, bert_presets.eval_interval(cfg), bert_presets.eval_interval(cfg)


def evals_until(mean: float | None, first: float, every: float) -> int:
    """Evals a run makes before its RCP mean convergence point (the first at `first`, then every `every`)."""
    if mean is None:
        return 0
    return max(1, math.ceil((mean - first) / every) + 1)


def prediction(bench: str, cfg, gpus: int, measured: dict, eval_s_per_1000: float | None) -> dict:
    rcp = forecast.rcp_for(bench, cfg.global_batch_size)
    logged, implicit, first, every = preset_facts(bench, cfg, gpus)
    differences = forecast.hyperparameter_differences(bench, rcp, logged, implicit)
    evals = evals_until(rcp["mean"], first, every)
    eval_s = (eval_s_per_1000 or 0.0) * EVAL_SET[bench] / 1000
    times = forecast.time_to_train(rcp, samples_per_unit=SAMPLES_PER_UNIT[bench],
                                   samples_per_s=measured["samples_per_s"], evals=evals, eval_s=eval_s,
                                   runs=tools.REQUIRED_RUNS[bench])
    notes = [n for n in (forecast.decay_steps_note(bench, rcp),) if n]
    return {"rcp": rcp, "hyperparameter_differences": differences, "hyperparameter_notes": notes, "time": times}


def memory_figures(figures: dict, estimates: dict, system: dict) -> dict:
    out = {"peak_host_bytes": figures["peak_host_bytes"], "estimate_rehearsed_bytes": estimates["rehearsed_bytes"],
           "estimate_preset_bytes": estimates["preset_bytes"], "preset_local_batch": estimates["preset_local_batch"],
           "rehearsed_local_batch": figures["local_batch"]}
    if "peak_gpu_bytes" in figures:
        out["peak_gpu_bytes"] = figures["peak_gpu_bytes"]
        out["accelerator_memory_capacity"] = system.get("accelerator_memory_capacity", "")
        out["capacity_bytes"] = memory.capacity_bytes(out["accelerator_memory_capacity"])
    return out


def build(*, args, plan, cmd: list[str], log: Path, stages: dict, notes: dict, verdict, figures: dict,
          estimates: dict, preset_cfg, gpus: int) -> dict:
    times = log_times(log)
    measured = speed(figures)
    eval_samples = figures.get("eval_samples", 0)
    eval_s = times.get("eval_stop", 0.0) - times.get("eval_start", 0.0)
    measured["eval_s_per_1000"] = eval_s / eval_samples * 1000 if eval_samples else None
    warnings = list(figures["warnings"])
    warnings += [notes[k] for k in ("fitted", "precision") if k in notes]
    if plan.config.get("data_workers", 0) > (os.cpu_count() or 1):
        warnings.append(f"data_workers={plan.config['data_workers']} on {os.cpu_count()} CPU cores: the workers "
                        "compete with the training step for the cores")
    device = figures.get("gpu_name") or figures["device"]
    accelerator = plan.system.get("accelerator_model_name") or "none"
    warnings.append(f"the forecast is for the device measured ({device}); the system description names "
                    f"{accelerator}")
    return {
        "benchmark": args.bench, "division": args.division, "preset": args.preset, "command": cmd,
        "log": str(log), "stages_s": stages,
        "log_s": {"init": times.get("run_start", 0.0), "train": times.get("eval_start", 0.0) - times.get(
            "run_start", 0.0), "eval": eval_s, "to_run_stop": times.get("run_stop", 0.0)},
        "measured": measured | {"device": device, "eval_samples": eval_samples, "samples": figures["samples"]},
        "memory": memory_figures(figures, estimates, plan.system),
        "checker": checker_verdict(verdict),
        "forecast": prediction(args.bench, preset_cfg, gpus, measured, measured["eval_s_per_1000"]),
        "data": notes.get("data", {}), "warnings": warnings,
    }


def _hours(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 3600:,.1f} h"


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / memory.GIB:.1f} GiB"


def stage_table(r: dict) -> list[str]:
    m, mem, log_s = r["measured"], r["memory"], r["log_s"]
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {s:.1f} |" for name, s in r["stages_s"].items()]
    lines += [f"| (log) init: model, checkpoint, warm-up | {log_s['init']:.1f} |",
              f"| (log) training: {m['micro_steps']} micro-steps, {m['steps_done']} optimizer steps | "
              f"{log_s['train']:.1f} |",
              f"| (log) eval of {m['eval_samples']} samples | {log_s['eval']:.1f} |",
              "", "| figure | value |", "|---|---|",
              f"| device | {m['device']} |", f"| samples per second | {m['samples_per_s']:.2f} |",
              f"| micro-step (steady / first) | {m['micro_step_s']:.2f} s / {m['first_micro_step_s']:.2f} s |",
              f"| data-wait share | {m['data_wait_share']:.1%} |",
              f"| eval seconds per 1,000 samples | {m['eval_s_per_1000'] or 0:.1f} |",
              f"| peak host memory | {_gib(mem['peak_host_bytes'])} |",
              f"| estimate at the rehearsed micro-batch {mem['rehearsed_local_batch']} | "
              f"{_gib(mem['estimate_rehearsed_bytes'])} |",
              f"| estimate at the preset's micro-batch {mem['preset_local_batch']} | "
              f"{_gib(mem['estimate_preset_bytes'])} |"]
    if "peak_gpu_bytes" in mem:
        lines.append(f"| peak GPU memory (capacity {mem['accelerator_memory_capacity'] or 'not given'}) | "
                     f"{_gib(mem['peak_gpu_bytes'])} |")
    return lines


def forecast_lines(r: dict) -> list[str]:
    f, m = r["forecast"], r["measured"]
    rcp, t = f["rcp"], f["time"]
    lines = [f"## Forecast (RCPs of the v1.1 ruleset): {rcp['message']}"]
    if rcp["mean"] is not None:
        lines.append(f"- RCP mean {rcp['mean']:,.1f} {rcp['unit']} to converge; fastest mean the checker allows "
                     f"{rcp['fastest_mean']:,.1f}")
    lines += [f"- hyperparameter differs from the RCP set: {d}" for d in f["hyperparameter_differences"]]
    lines += [f"- note: {n}" for n in f.get("hyperparameter_notes", ())]
    if not f["hyperparameter_differences"] and rcp["hyperparameters"]:
        lines.append("- hyperparameters: the RCP set's")
    lines.append(f"- time to train per run at {m['samples_per_s']:.2f} samples/s on {m['device']}: "
                 f"{_hours(t['per_run_s'])} (fastest allowed {_hours(t['fastest_per_run_s'])}); {t['runs']} runs: "
                 f"{_hours(t['submission_s'])}, plus init {r['log_s']['init']:.0f} s a run")
    return lines


def markdown(r: dict) -> str:
    c = r["checker"]
    verdict = "PASS" if c["passed"] else "FAIL" + (" (only the quality target, which a rehearsal cannot reach)"
                                                    if c["passed_but_target"] else "")
    data = r["data"]
    source = "your DATA" if data.get("data") == "given" else (
        f"generated {data.get('data')} ({'reused from the cache' if data.get('cached') else 'made now'})")
    lines = [f"# Rehearsal: {r['division']} {r['benchmark']} {r['preset']} (never a valid result)", "",
             f"Data: {source}. Command: `{' '.join(r['command'])}`", "", *stage_table(r), "",
             f"Compliance checker: {verdict} ({r['log']})"]
    lines += [f"- {e}" for e in c["errors"]]
    lines += ["", *forecast_lines(r), "", "## Warnings"] + [f"- {w}" for w in r["warnings"]]
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict) -> None:
    atomic_write_text(out / "rehearsal.json", json.dumps(result, indent=1, default=str) + "\n")
    atomic_write_text(out / "rehearsal.md", markdown(result))
