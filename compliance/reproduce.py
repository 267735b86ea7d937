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

from mlperf_submission import benchmarks
from mlperf_submission.closed.bert import phase1
from mlperf_submission.common import config
from mlperf_submission.common.cli import UserError, atomic_write_text
from mlperf_submission.common.run import BENCHMARKS
from mlperf_submission.compliance import audit, package, runs, submit, tools
from mlperf_submission.compliance import score as scoring
from mlperf_submission.systems import load as load_system

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
    from mlperf_submission.closed.bert.presets import reference_eval_interval
    from mlperf_submission.closed.resnet.presets import IMAGENET_TRAIN

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
                steps_per_epoch = math.ceil(IMAGENET_TRAIN / mapped.get("global_batch_size", 1))
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
    return {"minutes": minutes, "unit": unit, "olympic_convergence": audit.olympic_convergence(runs),
            "runs": [{"seed": r.seed, "minutes": r.minutes, "convergence_point": r.convergence_point,
                      "status": r.status, "passed": r.passed, "round_passed": r.round_passed} for r in runs]}


def comparison_markdown(record: dict) -> str:
    src, ours, plan_ = record["audited"], record["ours"], record["plan"]
    unit = src["unit"]

    def conv(x):
        return "-" if x is None else f"{x:,.1f}"

    lines = [f"# Reproduction of {record['label']}", ""]
    if record["scale"] == "smoke":
        lines += [f"**{record['banner']}**", ""]
    lines += [f"Mapped onto preset `{plan_['preset']}` of {plan_['trainer_division']}/{plan_['benchmark']}"
              + (f" with {' '.join('--set ' + o for o in plan_['overrides'])}" if plan_["overrides"] else
                 " with no overrides") + "; ran preset "
              f"`{record['ran_preset']}`" + (f" with {' '.join(record['ran_overrides'])}" if record["ran_overrides"]
                                              else "") + "."]
    lines += [f"- not expressible in our config: {u}" for u in plan_["unmapped"]]
    lines += [f"- note: {n}" for n in plan_["notes"]]
    if plan_["problem"]:
        lines.append(f"- at real scale our rules refuse the mapping: {plan_['problem']}")
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
    if args.data and not Path(args.data).exists():
        raise UserError(f"DATA path {args.data} does not exist: prepare it with `make data` first")
    if args.data and not args.system:
        raise UserError("with DATA, give SYSTEM=<this machine's system description> (see `make describe-system`)")
    sub = args.sub if args.sub is not None else audit.locate(entry, args.results_root)
    source, _ = find_benchmark(sub, entry["system"] if entry else args.result_system,
                               entry["benchmark"] if entry else args.bench)
    bench = source.benchmark
    label = (f"{entry['id']}: " if entry else "") + f"{source.benchmark} {source.division} {source.system} " \
            f"({source.system_name or source.submitter})" + (f", ID mapping {entry['mapping']}" if entry else "")
    logged = dict(source.hyperparameters) | {k: next(iter(v.values())) for k, v in source.hyperparameter_diff.items()}
    first = source.runs[0]
    plan_ = plan(bench, source.division, logged, first_eval=first.first_eval, eval_interval=first.eval_interval)
    if source.hyperparameter_diff:
        differ = ", ".join(source.hyperparameter_diff)
        plan_ = dataclasses.replace(plan_, notes=(*plan_.notes, f"the audited runs differ in {differ}: the first "
                                                                "run's values are used"))

    seeds = [r.seed for r in source.runs]
    count = args.runs or len(seeds)
    if count < 1 or count > len(seeds):
        raise UserError(f"RUNS must be 1..{len(seeds)}: the audited result has {len(seeds)} runs (seeds {seeds})")
    seeds = seeds[:count]
    if any(not isinstance(s, int) for s in seeds) or len(set(seeds)) != count:
        raise UserError(f"the audited runs' seeds {seeds} are not {count} distinct ints: they cannot be re-used")
    real = bool(args.data)
    if real and plan_.problem:
        raise UserError(f"the mapped preset {plan_.preset} {' '.join(plan_.overrides)} breaks our rules: "
                        f"{plan_.problem}")
    preset, overrides = (plan_.preset, plan_.overrides) if real else ("smoke", ())
    out = args.out or Path("out") / f"reproduce-{entry['id'] if entry else source.system + '-' + bench}-" \
                                    f"{time.strftime('%Y%m%d-%H%M%S')}"
    banner = ("SMOKE SCALE, DEMONSTRATION: no DATA given, so these runs train the `smoke` preset on built-in "
              "synthetic data on this machine, with the audited seeds. Their minutes and convergence points say "
              f"NOTHING about the published result. At real scale: DATA=<prepared data> SYSTEM=<this machine> "
              f"runs preset {plan_.preset} {' '.join(plan_.overrides)}".rstrip())
    print(f"== reproduce {label}")
    print(f"== mapped onto {plan_.trainer_division}/{bench} preset {plan_.preset} "
          f"{' '.join('--set ' + o for o in plan_.overrides) or '(no overrides)'}")
    for line in [*plan_.notes, *(f"not expressible: {u}" for u in plan_.unmapped)]:
        print(f"   {line}")
    if not real:
        print("\n" + "!" * 100 + f"\n!!! {banner}\n" + "!" * 100 + "\n", flush=True)

    packaged = count == tools.REQUIRED_RUNS[bench]
    division = plan_.trainer_division
    if args.system:
        system_name, system_desc = load_system(args.system)
        if system_desc["division"] != division:
            raise UserError(f"system {system_name} is described for division {system_desc['division']!r}; "
                            f"the {division} trainer runs")
    else:
        system_name, system_desc = submit.DEMO_SYSTEM, submit.demo_system("DEMO", division)
    ckpt = phase1.submission_checkpoint(division, bench, preset, tuple(overrides), args.ckpt)
    if ckpt:
        overrides = [*overrides, f"init_checkpoint={Path(ckpt).resolve()}"]
    req = runs.Request(division=division, benchmark=bench, preset=preset, overrides=tuple(overrides),
                       system_name=system_name, system=system_desc,
                       data=str(Path(args.data).resolve()) if args.data else "", runs=count, seeds=tuple(seeds),
                       demo=not real)
    again = (f"make reproduce {'RESULT_ID=' + args.result_id if args.result_id else f'SUB={args.sub}'} "
             f"RUNS={count}{' CKPT=' + args.ckpt if args.ckpt else ''} OUT={out}")
    with runs.Signals() as signals:
        try:
            with runs.disk_errors(str(out), f"`{again}`"):
                run_plan = runs.settle_plan(out, req, code_commit=package.git_commit())
                logs = runs.train_all(out, run_plan, signals, nproc=args.nproc,
                                      resume_hint=f"The runs that passed are kept: resume with `{again}`")
                signals.during = "packaging and auditing"
                if packaged:
                    package.package_plan(out, run_plan)
                    report = audit.audit(out)
                    audit.write_report(report, out)
                    ours, findings = report.benchmarks[0], report.findings
                else:
                    with tempfile.TemporaryDirectory(prefix="mlperf-reproduce.") as scratch:
                        folder = Path(scratch) / bench
                        folder.mkdir()
                        for log in logs:
                            shutil.copyfile(log, folder / log.name)
                        ours, findings = audit.audit_benchmark(folder, system_desc, Path(scratch), verdict="auto")
                record = {
                    "label": label, "benchmark": bench, "result_id": entry, "scale": "real" if real else "smoke",
                    "banner": "" if real else banner, "plan": dataclasses.asdict(plan_), "ran_preset": preset,
                    "ran_overrides": list(overrides), "seeds": seeds, "packaged": packaged, "out": str(out),
                    "published_minutes": entry["minutes"] if entry else source.minutes,
                    "audited_batch": source.hyperparameters.get("global_batch_size"),
                    "our_batch": ours.hyperparameters.get("global_batch_size"),
                    "audited": side(source.runs, source.minutes, audit.UNITS[bench]),
                    "ours": side(ours.runs, ours.minutes if packaged else None, audit.UNITS[bench]),
                    "our_findings": [dataclasses.asdict(f) for f in findings],
                }
                text = comparison_markdown(record)
                atomic_write_text(out / "reproduce.json", json.dumps(record, indent=2, default=str) + "\n")
                atomic_write_text(out / "reproduce.md", text)
        except runs.Interrupted as e:
            return submit.interrupted(e, out, again)
    print(text)
    if not real:
        print(f"NOTE: {banner}")
    return 0
