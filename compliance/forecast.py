"""What the official RCP tables say about a preset, and how long its runs would take at a measured speed.

    from mlperf_submission.compliance import forecast
    rcp = forecast.rcp_for("bert", 256)            # exists / interpolated / missing, mean and fastest mean
    forecast.hyperparameter_differences("bert", rcp, logged, reference_implicit)
    forecast.time_to_train(rcp, samples_per_epoch, samples_per_s, evals, eval_s, runs)

The RCPs are the `training_1.1.0/rcps_<benchmark>.json` files mlperf-logging ships, read through its own
`rcp_checker.RCP_Checker` with the pruned RCPs, as the package checker runs it: an RCP at the batch size, an
interpolation between the two pruned RCPs around it, the smallest RCP for a batch below every RCP (a run passes
only if it converges no faster than that one allows), or none above the largest (the submitter must provide
RCPs: mlcommons/training issue 755). "Epochs to converge" are epochs for ResNet and samples for BERT. The
fastest mean the checker allows is its `Min Epochs`: the smallest mean a submission's olympic mean may have
before the one-sided t-test at alpha 0.05 rejects it.
"""

from __future__ import annotations

import math

from mlperf_logging.rcp_checker import rcp_checker

from ..closed.resnet.presets import IMAGENET_TRAIN
from . import tools

RCP_PASS = "pruned_rcps"  # as the package checker runs the RCP checker (compliance/tools.check_rcp)
# RCP table key -> the logged hyperparameter keys that hold it, first found wins.
LOGGED_AS = {
    "optimizer": ("opt_name",),
    "epsilon": ("lars_epsilon",),
    "opt_end_learning_rate": ("lars_opt_end_learning_rate", "sgd_opt_end_learning_rate"),
    "num_warmup_steps": ("num_warmup_steps", "opt_learning_rate_warmup_steps"),
}
# Not a convergence hyperparameter: how a step is split into micro-batches leaves the mathematics unchanged.
NOT_CONVERGENCE = ("gradient_accumulation_steps",)


def checker(benchmark: str) -> rcp_checker.RCP_Checker:
    return rcp_checker.RCP_Checker(tools.USAGE, tools.RULESET, benchmark, False)


def _record(rec: dict, name: str = "") -> dict:
    return {"name": name, "batch": rec["BS"], "mean": float(rec["RCP Mean"]), "fastest_mean": float(rec["Min Epochs"]),
            "stdev": float(rec["RCP Stdev"]), "hyperparameters": dict(rec["Hyperparams"])}


def rcp_for(benchmark: str, batch: int) -> dict:
    """The RCP verdict for a global batch: status (exists, interpolated, below, missing), what it is
    compared with (mean and fastest allowed mean, in the table's unit), and a sentence."""
    c = checker(benchmark)
    unit = "samples" if benchmark == "bert" else "epochs"
    names = {id(v): k for k, v in c._get_rcp_data(RCP_PASS).items()}
    found = c._find_rcp(batch, RCP_PASS)
    if found is not None:
        return {"status": "exists", "unit": unit, **_record(found, names[id(found)]),
                "message": f"RCP {names[id(found)]} exists at batch {batch}"}
    low, high = c._find_top_min_rcp(batch, RCP_PASS), c._find_bottom_max_rcp(batch, RCP_PASS)
    batches = sorted(r["BS"] for r in c._get_rcp_data(RCP_PASS).values())
    if low is not None and high is not None:
        name, rec = c._create_interp_rcp(batch, low, high)
        return {"status": "interpolated", "unit": unit, **_record(rec, name), "hyperparameters": {},
                "message": f"RCP interpolated between batches {low['BS']} and {high['BS']}"}
    if high is not None:
        smallest = c._find_min_rcp(RCP_PASS)
        return {"status": "below", "unit": unit, **_record(smallest, names[id(smallest)]),
                "message": f"batch {batch} is below the smallest RCP batch {batches[0]}: the checker compares with "
                           f"it (passes only if the runs converge no faster than it allows; otherwise the "
                           f"submitter must provide RCPs at batch {batch})"}
    return {"status": "missing", "unit": unit, "name": "", "batch": batch, "mean": None, "fastest_mean": None,
            "stdev": None, "hyperparameters": {},
            "message": f"no RCP: batch {batch} is above the largest RCP batch {batches[-1]}; the submitter must "
                       "provide RCPs (mlcommons/training issue 755)"}


def hyperparameter_differences(benchmark: str, rcp: dict, logged: dict, implicit: dict | None = None) -> list[str]:
    """Each hyperparameter of the RCP's set that the preset logs differently, as 'name: preset X, RCP Y';
    `implicit` adds what the reference's code fixes but the table does not list, as {name: (preset, reference)}."""
    out = []
    for key, wanted in rcp["hyperparameters"].items():
        if key in NOT_CONVERGENCE:
            continue
        if benchmark == "resnet" and key == "opt_learning_rate_decay_steps":
            wanted = reference_decay_steps(wanted, rcp["batch"])
        candidates = (*LOGGED_AS.get(key, ()), key, f"lars_{key}", f"sgd_{key}")
        have = next((logged[k] for k in candidates if k in logged), None)
        if have is None:
            out.append(f"{key}: not logged by the preset, RCP {wanted}")
        elif not _same(have, wanted):
            out.append(f"{key}: preset {have}, RCP {wanted}")
    for key, (have, reference) in (implicit or {}).items():
        if not _same(have, reference):
            out.append(f"{key}: preset {have}, reference (and so the RCP) {reference}")
    return out


def decay_epochs(table_steps: int, batch: int) -> int:
    """The decay epochs an RCP table's `opt_learning_rate_decay_steps` stand for (its `+ 1` off, rounded)."""
    return round((table_steps - 1) * batch / IMAGENET_TRAIN)


def reference_decay_steps(table_steps: int, batch: int) -> int:
    """The decay steps the reference's code computes for the RCP's schedule: its decay epochs x whole global
    batches an epoch (`NUM_IMAGES['train'] // batch_size`), + 1. Equal to the table at 1632 (27,476); at 3264
    the table's 14,523 counts 1,281,167 x 37 / 3264 = 14,522.98 fractional steps, where the reference's
    arithmetic gives 392 x 37 + 1 = 14,505 for the same 37 epochs. The RCP checker compares no hyperparameter;
    the accepted v1.1 results at 3264 log 37 (NVIDIA's MXNet counts epochs), so the reference's arithmetic is
    what a closed run is held to."""
    return IMAGENET_TRAIN // batch * decay_epochs(table_steps, batch) + 1


def decay_steps_note(benchmark: str, rcp: dict) -> str:
    """A line for the report where the RCP table's decay steps differ from the reference's arithmetic, or ""."""
    table = rcp["hyperparameters"].get("opt_learning_rate_decay_steps")
    if benchmark != "resnet" or table is None:
        return ""
    batch, reference = rcp["batch"], reference_decay_steps(table, rcp["batch"])
    if reference == table:
        return ""
    return (f"opt_learning_rate_decay_steps: the RCP table lists {table:,}, the reference's code computes "
            f"{reference:,} for the same {decay_epochs(table, batch)} decay epochs ({IMAGENET_TRAIN:,} // {batch} "
            f"= {IMAGENET_TRAIN // batch} steps an epoch); compared with the reference's")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return str(a).lower() == str(b).lower()


def time_to_train(rcp: dict, *, samples_per_unit: int, samples_per_s: float, evals: int, eval_s: float,
                  runs: int) -> dict:
    """Seconds per run (samples to converge at the measured speed, plus its evals) and per submission, for the
    RCP mean and for the fastest mean the checker allows; None without an RCP."""
    if rcp["mean"] is None or samples_per_s <= 0:
        return {"per_run_s": None, "fastest_per_run_s": None, "submission_s": None, "runs": runs}
    per_run = rcp["mean"] * samples_per_unit / samples_per_s + evals * eval_s
    fastest = rcp["fastest_mean"] * samples_per_unit / samples_per_s + evals * eval_s
    return {"samples_to_converge": rcp["mean"] * samples_per_unit, "per_run_s": per_run,
            "fastest_per_run_s": fastest, "submission_s": per_run * runs, "runs": runs, "evals": evals,
            "eval_s": eval_s}
