"""`make reproduce`: re-run a published or audited result with this package, and compare.

    python -m mlperf_submission.compliance reproduce --result-id 1.1-2040 (--sub DIR | --results-root DIR)
    python -m mlperf_submission.compliance reproduce --sub DIR [--result-system NAME] [--bench resnet|bert]
        [--data DIR --system FILE] [--runs N] [--nproc N] [--out DIR]

Reads the audited runs' hyperparameters, batch size and seeds from their logs, maps them onto the closest
preset of this package for that benchmark and division (plus `--set` overrides for what differs), and
trains runs with the audited seeds on this machine through `make submit`'s machinery (a plan in OUT, each run
into OUT/runs as it passes, progress per run; the same command again resumes, `compliance/runs.py`). Without --data
the runs use the `smoke` preset on built-in synthetic data: a DEMONSTRATION of the pipeline whose minutes
and convergence say nothing about the published result, as the output says loudly. With as many runs as
the rules require (5 ResNet, 10 BERT) the runs are packaged (tree, manifest, archive) and audited like
any submission (the package in OUT, beside the runs); with fewer (--runs) their logs stay in OUT/runs/
unpackaged. Prints, and writes to OUT/reproduce.md and OUT/reproduce.json, the published score and convergence
points beside ours. When a run fails, the runs finished before it are kept in OUT/runs/ and the exit status is 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from .. import benchmarks
from ..common import config
from ..common.cli import UserError, atomic_write_text
from ..common.run import BENCHMARKS
from . import audit, package, runs, tools
from . import score as scoring
from .plan import Plan as RunPlan
from .plan import prepared_data
from .plan import request as build_request

# Logged key -> preset field, for values that carry over as they are. The names follow the v1.1 rules
# (CHECKERS.md §3-4): ResNet logs lars_* or sgd_* by optimizer, BERT the reference's LAMB names.
RESNET_FIELDS = {
    "global_batch_size": "global_batch_size", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "opt_name": "opt_name",
    "lars_opt_base_learning_rate": "opt_base_learning_rate", "sgd_opt_base_learning_rate": "opt_base_learning_rate",
    "lars_opt_end_learning_rate": "opt_end_learning_rate", "sgd_opt_end_learning_rate": "opt_end_learning_rate",
    "lars_opt_learning_rate_decay_poly_power": "opt_learning_rate_decay_poly_power",
    "sgd_opt_learning_rate_decay_poly_power": "opt_learning_rate_decay_poly_power",
    "lars_opt_learning_rate_warmup_epochs": "opt_learning_rate_warmup_epochs",
    "opt_learning_rate_warmup_epochs": "opt_learning_rate_warmup_epochs",
    "lars_opt_momentum": "opt_momentum", "sgd_opt_momentum": "opt_momentum",
    "lars_opt_weight_decay": "opt_weight_decay", "sgd_opt_weight_decay": "opt_weight_decay",
    "opt_weight_decay": "opt_weight_decay", "lars_epsilon": "lars_epsilon", "model_bn_span": "model_bn_span",
}
BERT_FIELDS = {
    "global_batch_size": "global_batch_size", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "opt_base_learning_rate": "opt_base_learning_rate", "opt_epsilon": "opt_epsilon",
    "opt_lamb_beta_1": "opt_lamb_beta_1", "opt_lamb_beta_2": "opt_lamb_beta_2",
    "opt_lamb_weight_decay_rate": "opt_lamb_weight_decay_rate",
    "opt_learning_rate_warmup_steps": "opt_learning_rate_warmup_steps", "start_warmup_step": "start_warmup_step",
    "opt_learning_rate_training_steps": "opt_learning_rate_training_steps", "max_sequence_length": "max_seq_length",
    "max_predictions_per_seq": "max_predictions_per_seq",
}
# Logged keys that our trainers fix instead of configuring, with the value they fix.
FIXED = {"bert": {"opt_lamb_learning_rate_decay_poly_power": 1.0}}   # our LAMB schedule decays linearly
DATA_KEYS = {"train_samples", "eval_samples"}                       # sizes of the dataset, not of the preset
# A ResNet decay length below this many is a count of epochs (Graphcore logged 38), above it of steps.
EPOCHS_NOT_STEPS = 200


@dataclass(frozen=True, kw_only=True)
class Plan:
    benchmark: str
    division: str                   # of the audited result
    trainer_division: str           # whose train.py runs: closed while open/<benchmark> has no trainer yet
    preset: str                     # the closest real-scale preset
    overrides: tuple[str, ...]      # field=value, for what the logs say and the preset does not
    unmapped: tuple[str, ...]       # logged hyperparameters our config cannot express
    notes: tuple[str, ...]
    problem: str = ""               # why our rules refuse the mapped config at real scale, if they do


def trainer_division(division: str, benchmark: str) -> tuple[str, str]:
    """The division whose trainer runs, and a note when it is not the audited one."""
    if division == "open" and ("open", benchmark) not in benchmarks.REGISTRY:
        return "closed", (f"open/{benchmark} has no presets and train.py yet: the closed {benchmark} trainer runs "
                          "with the audited hyperparameters, without the open result's own changes "
                          "(e.g. packed sequences)")
    return division, ""


def map_hyperparameters(benchmark: str, logged: dict, *, first_eval: float | None = None,
                        eval_interval: float | None = None) -> tuple[dict, list[str], list[str]]:
    """Logged hyperparameters -> (preset field values, what no field expresses, notes)."""
    # Imported here: the BERT presets import the model, hence torch, which `audit` alone does not need.
    from ..closed.bert.presets import reference_eval_interval
    from ..closed.resnet.presets import IMAGENET_TRAIN

    table = RESNET_FIELDS if benchmark == "resnet" else BERT_FIELDS
    mapped, unmapped, notes = {}, [], []
    source: dict[str, str] = {}
    # The optimizer's own key (lars_*, sgd_*) is the one the rules check: it wins over a generic one
    # (Graphcore's POD128/256 logs say opt_weight_decay 5e-05 and lars_opt_weight_decay 0.0001).
    for key in sorted(logged, key=lambda k: k.startswith(("lars_", "sgd_"))):
        if key not in table:
            continue
        f = table[key]
        if f in mapped and not same(mapped[f], logged[key]):
            notes.append(f"{source[f]}={mapped[f]} and {key}={logged[key]} both logged: {key} is used")
        mapped[f], source[f] = logged[key], key
    for key, value in logged.items():
        if key in table or key in DATA_KEYS:
            continue
        if key in FIXED.get(benchmark, {}):
            if value != FIXED[benchmark][key]:
                unmapped.append(f"{key}={value} (our trainer fixes {FIXED[benchmark][key]})")
        elif benchmark == "bert" and key == "num_warmup_steps":
            if value != mapped.get("opt_learning_rate_warmup_steps", value):
                unmapped.append(f"{key}={value} (our trainer logs opt_learning_rate_warmup_steps for both)")
        elif benchmark == "resnet" and key.endswith("_learning_rate_decay_steps"):
            warmup = int(mapped.get("opt_learning_rate_warmup_epochs", 0))
            if value < EPOCHS_NOT_STEPS:
                decay_epochs = value
                notes.append(f"{key}={value} read as epochs (a count of steps would be far larger)")
            else:
                steps_per_epoch = IMAGENET_TRAIN // mapped.get("global_batch_size", 1)  # whole batches, as ours
                decay_epochs = value / steps_per_epoch
                if abs(decay_epochs - round(decay_epochs)) > 1e-6:
                    notes.append(f"{key}={value} is {decay_epochs:.2f} epochs of {steps_per_epoch} steps; rounded")
            mapped["train_epochs"] = warmup + round(decay_epochs)
        else:
            unmapped.append(f"{key}={value}")
    if benchmark == "resnet" and first_eval is not None and float(first_eval).is_integer():
        mapped["eval_offset"] = int(first_eval) % 4   # evals every 4 epochs; our offset 0 means the first at 4
    if benchmark == "bert" and eval_interval:
        gbs = int(mapped.get("global_batch_size", 0))
        mapped["eval_interval_samples"] = 0 if eval_interval == reference_eval_interval(gbs) else int(eval_interval)
    return mapped, unmapped, notes


def field_text(value, kind) -> str:
    """A value as `config.override` parses it for a field of type `kind`."""
    if kind is bool:
        return "true" if value else "false"
    if kind is int and isinstance(value, float) and value.is_integer():
        return str(int(value))
    if kind is float:
        return repr(float(value))
    return str(value)


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def plan(benchmark: str, division: str, logged: dict, *, first_eval=None, eval_interval=None) -> Plan:
    """The closest real-scale preset for the logged hyperparameters, and the overrides that make it match."""
    trainer, trainer_note = trainer_division(division, benchmark)
    bench = benchmarks.get(trainer, benchmark)
    mapped, unmapped, notes = map_hyperparameters(benchmark, logged, first_eval=first_eval, eval_interval=eval_interval)
    best = None
    for name, make in bench.presets.items():
        cfg = make()
        if getattr(cfg, "dataset", "") == "synthetic":
            continue
        differ = [f for f, v in mapped.items() if hasattr(cfg, f) and not same(getattr(cfg, f), v)]
        if best is None or len(differ) < len(best[1]):
            best = (name, differ, cfg)
    if best is None:
        raise UserError(f"{trainer}/{benchmark} has no real-scale preset to map onto")
    name, differ, cfg = best
    hints = typing.get_type_hints(type(cfg))
    overrides = tuple(f"{f}={field_text(mapped[f], hints[f])}" for f in differ)
    unmapped += [f"{f}={v}" for f, v in mapped.items() if not hasattr(cfg, f)]
    problem = ""
    try:
        resolved = config.override(cfg, overrides)
        if not getattr(resolved, "init_checkpoint", "x"):
            # The phase-1 checkpoint is a run input (CKPT), not a logged hyperparameter: asked for at run time.
            resolved = dataclasses.replace(resolved, init_checkpoint="CKPT")
        bench.validate(resolved)
    except UserError as e:
        problem = str(e)
    return Plan(benchmark=benchmark, division=division, trainer_division=trainer, preset=name, overrides=overrides,
                unmapped=tuple(unmapped), notes=tuple(([trainer_note] if trainer_note else []) + notes),
                problem=problem)


def find_benchmark(sub: Path, system: str, benchmark: str) -> tuple[audit.BenchmarkAudit, list[audit.Finding]]:
    """Audit the one results/<system>/<benchmark> folder of SUB that the arguments name."""
    with audit.opened(sub) as (root, _, _):
        found = [b for s in scoring.submitter_dirs(root) for b in sorted((s / "results").glob("*/*"))
                 if b.is_dir() and b.name in tools.REQUIRED_RUNS and any(b.glob("result_*.txt"))
                 and (not system or b.parent.name == system) and (not benchmark or b.name == benchmark)]
        if len(found) != 1:
            names = ", ".join(f"{b.parent.name}/{b.name}" for b in found) or "none"
            raise UserError(f"{sub}: {len(found)} results match (system {system or 'any'}, benchmark "
                            f"{benchmark or 'any'}): {names}; name one with RESULT_SYSTEM= and BENCH=")
        bench_dir = found[0]
        system_file = bench_dir.parents[2] / "systems" / f"{bench_dir.parent.name}.json"
        try:
            desc = json.loads(system_file.read_text())
        except (OSError, ValueError):
            desc = {"division": audit.log_division(bench_dir)}
        return audit.audit_benchmark(bench_dir, desc, root, verdict="auto")


def side(runs: list, minutes: float | None, unit: str) -> dict:
    """Score, per-run facts and olympic convergence of one side of the comparison."""
    scores = [r.score for r in runs]
    return {"minutes": minutes, "unit": unit, "olympic_convergence": audit.olympic_convergence(scores),
            "runs": [{"seed": r.seed, "minutes": r.minutes, "convergence_point": r.convergence_point,
                      "status": r.status, "passed": r.passed, "round_passed": r.round_passed} for r in scores]}


def comparison_markdown(record: dict) -> str:
    src, ours, mapping = record["audited"], record["ours"], record["plan"]
    unit = src["unit"]

    def conv(x):
        return "-" if x is None else f"{x:,.1f}"

    lines = [f"# Reproduction of {record['label']}", ""]
    if record["scale"] == "smoke":
        lines += [f"**{record['banner']}**", ""]
    lines += [f"Mapped onto preset `{mapping['preset']}` of {mapping['trainer_division']}/{mapping['benchmark']}"
              + (f" with {' '.join('--set ' + o for o in mapping['overrides'])}" if mapping["overrides"] else
                 " with no overrides") + "; ran preset "
              f"`{record['ran_preset']}`" + (f" with {' '.join(record['ran_overrides'])}" if record["ran_overrides"]
                                              else "") + "."]
    lines += [f"- not expressible in our config: {u}" for u in mapping["unmapped"]]
    lines += [f"- note: {n}" for n in mapping["notes"]]
    if mapping["problem"]:
        lines.append(f"- at real scale our rules refuse the mapping: {mapping['problem']}")
    published = record["published_minutes"]
    lines += ["", "| | published / audited | ours |", "|---|---|---|",
              f"| score (minutes) | {scoring.fmt(published)} published, {scoring.fmt(src['minutes'])} audited "
              f"| {scoring.fmt(ours['minutes'])}{'' if record['packaged'] else ' (not packaged: no score)'} |",
              f"| runs | {len(src['runs'])} | {len(ours['runs'])} |",
              f"| olympic mean convergence ({unit}) | {conv(src['olympic_convergence'])} "
              f"| {conv(ours['olympic_convergence'])} |",
              f"| batch size | {record['audited_batch']} | {record['our_batch']} |", "",
              f"| seed | audited minutes | audited converged at ({unit}) | audited status | our minutes "
              "| our converged at | our status |", "|---|---|---|---|---|---|---|"]
    theirs = {r["seed"]: r for r in src["runs"]}
    for r in ours["runs"]:
        t = theirs.get(r["seed"], {})
        lines.append(f"| {r['seed']} | {scoring.fmt(t.get('minutes'))} | {t.get('convergence_point', '-')} | "
                     f"{t.get('status', '-')} | {scoring.fmt(r['minutes'])} | {r['convergence_point']} "
                     f"| {r['status']} |")
    lines += ["", f"Output: {record['out']}" + ("" if record["packaged"] else
              f" (runs/ only: {len(ours['runs'])} run(s), the rules need {tools.REQUIRED_RUNS[record['benchmark']]} "
              "to package)")]
    return "\n".join(lines) + "\n"


def add_arguments(p) -> None:
    p.add_argument("--result-id", default="", help="a v1.1 result ID from the registry, e.g. 1.1-2040")
    p.add_argument("--sub", type=Path, help="the audited submitter folder or archive (default for --result-id: "
                                            "<results-root>/<submitter>)")
    p.add_argument("--results-root", type=Path, help="a checkout of mlcommons/training_results_v1.1")
    p.add_argument("--result-system", default="", help="which results/<system> of SUB (when it holds several)")
    p.add_argument("--bench", default="", choices=("", *BENCHMARKS), help="which benchmark of SUB")
    p.add_argument("--data", default="", help="prepared dataset: run the mapped real preset instead of smoke")
    p.add_argument("--system", default="", help="this machine's system description (required with --data)")
    p.add_argument("--ckpt", default="", help="BERT phase-1 checkpoint (closed, with --data): TF prefix or .pt")
    p.add_argument("--runs", type=int, default=0, help="number of runs (default: as many as were audited)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun, data-parallel)")
    p.add_argument("--out", type=Path, help="a new folder (default out/reproduce-<id>-<time>)")


def main(args) -> int:
    entry = audit.lookup(args.result_id, args.bench) if args.result_id else None
    if entry is None and args.sub is None:
        raise UserError("give RESULT_ID=<a v1.1 result ID> or SUB=<an audited submitter folder or archive>")
    prepared_data(args.data)
    if args.data and not args.system:
        raise UserError("with DATA, give SYSTEM=<this machine's system description> (see `make describe-system`)")
    sub = args.sub if args.sub is not None else audit.locate(entry, args.results_root)
    source, _ = find_benchmark(sub, entry["system"] if entry else args.result_system,
                               entry["benchmark"] if entry else args.bench)
    bench = source.score.benchmark
    label = (f"{entry['id']}: " if entry else "") + f"{bench} {source.score.division} {source.score.system} " \
            f"({source.score.system_name or source.score.submitter})" \
            + (f", ID mapping {entry['mapping']}" if entry else "")
    mapping = mapped(source)
    seeds = audited_seeds(source, args.runs)
    real = bool(args.data)
    if real and mapping.problem:
        raise UserError(f"the mapped preset {mapping.preset} {' '.join(mapping.overrides)} breaks our rules: "
                        f"{mapping.problem}")
    out = args.out or Path("out") / f"reproduce-{entry['id'] if entry else source.score.system + '-' + bench}-" \
                                    f"{time.strftime('%Y%m%d-%H%M%S')}"
    banner = "" if real else (
        "SMOKE SCALE, DEMONSTRATION: no DATA given, so these runs train the `smoke` preset on built-in synthetic "
        "data on this machine, with the audited seeds. Their minutes and convergence points say NOTHING about the "
        f"published result. At real scale: DATA=<prepared data> SYSTEM=<this machine> runs preset {mapping.preset} "
        f"{' '.join(mapping.overrides)}".rstrip())
    announce(label, mapping, banner)
    req = build_request(division=mapping.trainer_division, benchmark=bench, preset=mapping.preset if real else "smoke",
                        overrides=mapping.overrides if real else (), system=args.system, org="DEMO", data=args.data,
                        ckpt=args.ckpt, runs=len(seeds), seeds=seeds)
    again = (f"make reproduce {'RESULT_ID=' + args.result_id if args.result_id else f'SUB={args.sub}'} "
             f"RUNS={len(seeds)}{' CKPT=' + args.ckpt if args.ckpt else ''} OUT={out}")
    with runs.session(out, again) as session:
        session.settle(req, code_commit=package.git_commit())
        logs = session.train_all(nproc=args.nproc)
        session.signals.during = "packaging and auditing"
        ours, findings = audit_ours(out, session.plan, logs)
        record = {
            "label": label, "benchmark": bench, "result_id": entry, "scale": "real" if real else "smoke",
            "banner": banner, "plan": dataclasses.asdict(mapping), "ran_preset": req.preset,
            "ran_overrides": list(req.overrides), "seeds": list(seeds), "packaged": packaged(session.plan),
            "out": str(out), "published_minutes": entry["minutes"] if entry else source.score.minutes,
            "audited_batch": source.hyperparameters.get("global_batch_size"),
            "our_batch": ours.hyperparameters.get("global_batch_size"),
            "audited": side(source.runs, source.score.minutes, audit.UNITS[bench]),
            "ours": side(ours.runs, ours.score.minutes if packaged(session.plan) else None, audit.UNITS[bench]),
            "our_findings": [dataclasses.asdict(f) for f in findings],
        }
        text = comparison_markdown(record)
        atomic_write_text(out / "reproduce.json", json.dumps(record, indent=2, default=str) + "\n")
        atomic_write_text(out / "reproduce.md", text)
    if session.status is not None:
        return session.status
    print(text)
    if not real:
        print(f"NOTE: {banner}")
    return 0


def mapped(source: audit.BenchmarkAudit) -> Plan:
    """The audited runs' hyperparameters mapped onto our closest preset (the first run's where they differ)."""
    logged = dict(source.hyperparameters) | {k: next(iter(v.values())) for k, v in source.hyperparameter_diff.items()}
    first = source.runs[0]
    mapping = plan(source.score.benchmark, source.score.division, logged, first_eval=first.facts.first_eval,
                   eval_interval=first.facts.eval_interval)
    if source.hyperparameter_diff:
        differ = ", ".join(source.hyperparameter_diff)
        mapping = dataclasses.replace(mapping, notes=(*mapping.notes, f"the audited runs differ in {differ}: the "
                                                                      "first run's values are used"))
    return mapping


def audited_seeds(source: audit.BenchmarkAudit, runs_wanted: int) -> tuple[int, ...]:
    """The seeds of the audited runs to re-use: all of them, or the first RUNS."""
    seeds = [r.score.seed for r in source.runs]
    count = runs_wanted or len(seeds)
    if count < 1 or count > len(seeds):
        raise UserError(f"RUNS must be 1..{len(seeds)}: the audited result has {len(seeds)} runs (seeds {seeds})")
    seeds = seeds[:count]
    if any(not isinstance(s, int) for s in seeds) or len(set(seeds)) != count:
        raise UserError(f"the audited runs' seeds {seeds} are not {count} distinct ints: they cannot be re-used")
    return tuple(seeds)


def announce(label: str, mapping: Plan, banner: str) -> None:
    print(f"== reproduce {label}")
    print(f"== mapped onto {mapping.trainer_division}/{mapping.benchmark} preset {mapping.preset} "
          f"{' '.join('--set ' + o for o in mapping.overrides) or '(no overrides)'}")
    for line in [*mapping.notes, *(f"not expressible: {u}" for u in mapping.unmapped)]:
        print(f"   {line}")
    if banner:
        print("\n" + "!" * 100 + f"\n!!! {banner}\n" + "!" * 100 + "\n", flush=True)


def packaged(run_plan: RunPlan) -> bool:
    """With as many runs as the rules require, the runs are packaged and audited as a submission."""
    return run_plan.runs == tools.REQUIRED_RUNS[run_plan.benchmark]


def audit_ours(out: Path, run_plan: RunPlan, logs: list[Path]) -> tuple[audit.BenchmarkAudit, list[audit.Finding]]:
    """Our runs audited: packaged into OUT when there are enough of them, else their logs alone."""
    if packaged(run_plan):
        package.package_plan(out, run_plan)
        report = audit.audit(out)
        audit.write_report(report, out)
        return report.benchmarks[0], report.findings
    with tempfile.TemporaryDirectory(prefix="mlperf-reproduce.") as scratch:
        folder = Path(scratch) / run_plan.benchmark
        folder.mkdir()
        for log in logs:
            shutil.copyfile(log, folder / log.name)
        return audit.audit_benchmark(folder, run_plan.system, Path(scratch), verdict="auto")
