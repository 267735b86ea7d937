"""`make report`: a results page (HTML with PNG plots) from `make bench` output and submission trees.

    python -m mlperf_submission.compliance report [SUB ...] [--bench out/bench/bench.json ...] [--out out/report]

SUB: submission folders, ours (`make submit` output) or published ones in the same layout (a submitter
folder with results/ and systems/, or a folder above several). Writes, all at once (a temporary folder
renamed into place), OUT/index.html and OUT/plots/*.png:
  - training throughput: every row of each bench JSON (samples/s, s/step, peak memory, MFU) with one bar
    chart per benchmark, and the ratios against the goals;
  - time to result per benchmark, system and precision: the olympic-mean minutes, runs, dropped runs and
    RCP verdict that `score` computes with the official tools, with a bar chart per benchmark;
  - per-run times (minutes, seed, convergence point, compliance verdict) and eval-accuracy curves of every
    run, parsed from the result logs with the official parser.
  - for our own runs, the two tables of Graphcore's results page: training throughput (model, variant,
    platform, framework, dataset, batch, precision, samples/s: our implementation's rows of each bench JSON)
    and time to result (model, division, platform, framework, dataset, precision, global batch, minutes:
    each submission `make submit` made, recognised by the plan.json two levels above its submitter folder).
Every figure comes from those files; nothing is typed in. Precision is in the X.Y notation: for our own
runs from the plan's resolved config (bf16 and fp16 autocast: 16.32, fp32: 32.32), for published ones when
the system description states it (an `X.Y`, fp32/fp16/bf16 in framework or notes); v1.1 logs do not carry it.
Without arguments it reports out/bench/bench.json if that exists.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections import defaultdict
from pathlib import Path

from mlperf_logging.compliance_checker import mlp_parser

from ..common.cli import UserError, atomic_dir
from ..common.evidence import git_commit, ratio_text
from ..common.run import QUALITY_TARGETS
from . import score as scoring
from . import tools

DEFAULT_BENCH = Path("out/bench/bench.json")
_NOTATION = re.compile(r"\b(32\.32|16\.32|16\.16|8\.16|8\.8)\b")
_WORDS = {"fp32": "32.32", "float32": "32.32", "bf16": "16.32", "bfloat16": "16.32", "fp16": "16.32",
          "float16": "16.32", "mixed precision": "16.32", "amp": "16.32"}
_X_LABEL = {"resnet": "epochs", "bert": "training samples"}
_PLAN_FORMAT = "mlperf_submission.plan/1"  # compliance/plan.py's, read here without importing the trainers
_OUR_IMPLS = ("ours", "ours-plain", "padded", "packed")  # bench rows of our own implementation
_MODEL = {"resnet": "ResNet-50 v1.5", "bert": "BERT-Large"}
_DATASET = {"resnet": "ImageNet", "bert": "Wikipedia"}


def add_arguments(p) -> None:
    p.add_argument("subs", nargs="*", type=Path, metavar="SUB", help="submission folders to report")
    p.add_argument("--bench", action="append", type=Path, default=[], metavar="JSON",
                   help=f"a `make bench` JSON (repeatable; default {DEFAULT_BENCH} if it exists)")
    p.add_argument("--out", type=Path, default=Path("out/report"), help="folder for index.html and plots/")


def stated_precision(system: dict) -> str:
    """The precision a system description states, in X.Y notation, or "not stated"."""
    text = " ".join(str(system.get(k, "")) for k in ("framework", "sw_notes", "hw_notes", "other_software_stack"))
    if match := _NOTATION.search(text):
        return match.group(1)
    lowered = text.lower()
    found = sorted({v for k, v in _WORDS.items() if re.search(rf"\b{re.escape(k)}\b", lowered)})
    return found[0] if len(found) == 1 else "not stated"


def eval_curve(path: Path) -> list[tuple[float, float, float]]:
    """(epoch_num, accuracy, minutes after run_start) of every eval in a result log, official parser."""
    loglines, _ = mlp_parser.parse_file(str(path), ruleset=tools.RULESET)
    start = next((ln.timestamp for ln in loglines if ln.key == "run_start"), None)
    points = []
    for ln in loglines:
        if ln.key == "eval_accuracy" and start is not None:
            epoch = ln.value.get("metadata", {}).get("epoch_num")
            if epoch is not None:
                points.append((float(epoch), float(ln.value["value"]), (ln.timestamp - start) / 60000))
    return points


def load_bench(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read a bench JSON ({e}): run `make bench` first") from None
    if data.get("format") != "mlperf_submission.bench/1":
        raise UserError(f"{path} is not `make bench` output (format mlperf_submission.bench/1)")
    return data


def our_plan(sub: Path, benchmark: str, system: str) -> dict | None:
    """The plan of the `make submit` folder this submitter folder was packaged into (OUT/plan.json beside
    OUT/<division>/<submitter>/), if it is ours and made these results; else None (a published tree)."""
    path = Path(sub).parent.parent / "plan.json"
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(plan, dict) or plan.get("format") != _PLAN_FORMAT:
        return None
    if plan.get("benchmark") != benchmark or plan.get("system_name") != system:
        return None
    return plan


def run_precision(entry: dict) -> str:
    """X.Y precision of an entry: our plan's configured precision, else what its system description states."""
    plan = entry.get("plan")
    if plan is not None and plan.get("config", {}).get("precision"):
        from ..common.runtime.precision import notation  # torch: only for our own runs

        return notation(plan["config"]["precision"])
    return stated_precision(entry["system"])


def load_submissions(roots: list[Path]) -> list[dict]:
    """One entry per system and benchmark: its score, system description, each run's eval curve, and the
    plan that made it where it is ours (else None)."""
    entries = []
    for root in roots:
        for sub in scoring.submitter_dirs(root):
            for s in scoring.score_tree(sub):
                system = json.loads((sub / "systems" / f"{s.system}.json").read_text())
                folder = sub / "results" / s.system / s.benchmark
                curves = {r.file: eval_curve(folder / r.file) for r in s.runs}
                entries.append({"score": s, "system": system, "curves": curves, "source": str(root),
                                "plan": our_plan(sub, s.benchmark, s.system)})
    return entries


# ---------------------------------------------------------------------------------------------- plots


def _figure(width: float = 7.0, height: float = 3.6):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend (Agg via savefig)

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def throughput_plot(group: str, rows: list[dict], path: Path) -> None:
    fig, ax = _figure(7.0, 0.5 + 0.45 * len(rows))
    names = [r["name"] + (f" ({r['precision']})" if "precision" in r else "") for r in rows]
    values = [r["samples_per_s"] for r in rows]
    bars = ax.barh(names, values, color=["#1f77b4" if r["impl"] in ("ours", "packed") else "#999999" for r in rows])
    ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("samples/s" if "decode" not in group.lower() else "images per CPU-second")
    ax.set_title(group)
    ax.margins(x=0.2)
    fig.savefig(path)


def minutes_plot(benchmark: str, entries: list[dict], path: Path) -> None:
    fig, ax = _figure(7.0, 0.6 + 0.4 * len(entries))
    labels = [f"{e['score'].system} ({e['score'].division})" for e in entries]
    values = [e["score"].minutes or 0.0 for e in entries]
    bars = ax.barh(labels, values, color=["#1f77b4" if e["score"].valid else "#d62728" for e in entries])
    ax.bar_label(bars, labels=[f"{v:.2f}" if e["score"].valid else "invalid"
                               for v, e in zip(values, entries, strict=True)], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("minutes to result (olympic mean)")
    ax.set_title(f"{benchmark}: time to result")
    ax.margins(x=0.2)
    fig.savefig(path)


def curves_plot(entry: dict, path: Path) -> None:
    s = entry["score"]
    fig, ax = _figure()
    for run in s.runs:
        points = entry["curves"][run.file]
        if points:
            style, note = ("-", "") if run.counted else (":", " (not counted)")
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker=".", label=run.file + note)
    target = QUALITY_TARGETS.get(s.benchmark)
    if target is not None:
        ax.axhline(target, color="black", linewidth=0.8, linestyle="--", label=f"target {target}")
    ax.set_xlabel(_X_LABEL.get(s.benchmark, "epoch_num"))
    ax.set_ylabel("eval accuracy")
    ax.set_title(f"{s.system} / {s.benchmark}: eval accuracy per run")
    ax.legend(fontsize=7, ncols=2)
    fig.savefig(path)


def run_minutes_plot(entry: dict, path: Path) -> None:
    s = entry["score"]
    fig, ax = _figure(7.0, 2.8)
    runs = [r for r in s.runs if r.minutes is not None]
    bars = ax.bar([r.file.removeprefix("result_").removesuffix(".txt") for r in runs], [r.minutes for r in runs],
                  color=["#1f77b4" if r.counted else "#d62728" for r in runs])
    ax.bar_label(bars, labels=[f"{r.minutes:.2f}" for r in runs], fontsize=7, padding=2)
    if s.minutes is not None:
        ax.axhline(s.minutes, color="black", linewidth=0.8, linestyle="--", label=f"olympic mean {s.minutes:.2f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("result_N (red: failed compliance, not counted)")
    ax.set_ylabel("minutes")
    ax.set_title(f"{s.system} / {s.benchmark}: run_start to run_stop")
    ax.margins(y=0.15)
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------- page


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _num(x, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, spec)


def _img(name: str, alt: str) -> str:
    return f'<p><img src="plots/{html.escape(name)}" alt="{html.escape(alt)}"></p>'


def bench_section(bench: dict, source: Path, plots: Path) -> str:
    m = bench["machine"]
    peaks = bench["peak"]["flops_per_s"]
    parts = [f"<h3>{html.escape(str(source))}</h3>", "<p>" + html.escape(
        f"{m['host_processor_model_name']}, {m['host_processor_core_count']} cores, {m['host_memory_capacity']}, "
        f"{m['accelerator_model_name'] or 'no accelerator'} (device {m['device']}, {m['torch_threads']} threads); "
        f"torch {m['torch']}; measured matmul peak fp32 {peaks['fp32'] / 1e12:.3f}, bf16 {peaks['bf16'] / 1e12:.3f} "
        f"TFLOP/s; commit {bench['commit']}; `{bench['command']}`, {bench['started']}, scale "
        f"{bench['scale']['name']}") + "</p>"]
    rows = [r for r in bench["rows"] if "error" not in r]
    parts.append(_table(
        ["benchmark", "implementation", "settings", "precision", "samples/s", "s/step", "peak memory MiB", "MFU"],
        [[r["group"], r["name"], r["settings"], r.get("precision", "-"), _num(r.get("samples_per_s"), ",.2f"),
          _num(r.get("step_s"), ".3f"), _num(r.get("peak_memory_mib"), ",.0f"), _num(r.get("mfu"), ".1%")]
         for r in rows]))
    failed = [r for r in bench["rows"] if "error" in r]
    if failed:
        parts.append("<p>Not measured: " + html.escape("; ".join(f"{r['group']} {r['name']}: {r['error']}"
                                                                 for r in failed)) + "</p>")
    for group in dict.fromkeys(r["group"] for r in rows):
        name = f"bench-{_slug(source.stem)}-{_slug(group)}.png"
        throughput_plot(group, [r for r in rows if r["group"] == group], plots / name)
        parts.append(_img(name, f"throughput, {group}"))
    # Which spread the run gives: a bootstrap interval since issue 26's second pass, the min-max of rounds before.
    parts.append(_table(["ratio", "benchmark", "value", f"spread ({bench.get('spread_kind', 'min-max of rounds')})",
                         "goal", "met"],
                        [[q["ratio"], q["group"], ratio_text(q) + (" UNSETTLED" if q.get("unsettled") else ""),
                          f"{q['spread'][0]:.2f}-{q['spread'][1]:.2f} ({q['rounds']} rounds)" if "spread" in q
                          else "-", "-" if q["goal"] is None else f"{q['goal']:g}",
                          "-" if q["met"] is None else ("yes" if q["met"] else "no")] for q in bench["ratios"]]))
    if "start" in bench["peak"]:  # the peak at the run's start and end (bench JSONs before issue 26 lack them)
        disturbed = bench["peak"].get("disturbed")
        parts.append("<p>" + html.escape(
            "Matmul peak at the start / end: " + ", ".join(
                f"{k} {bench['peak']['start'][k] / 1e12:.3f} / {bench['peak']['end'][k] / 1e12:.3f}"
                for k in bench["peak"]["start"]) + ("; DISTURBED (" + ", ".join(disturbed) + " moved by more than "
                                                   "10 %): every figure of this run is suspect" if disturbed
                                                   else "; stable")) + "</p>")
    parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in bench["notes"]) + "</ul>")
    return "\n".join(parts)


def results_section(entries: list[dict], plots: Path) -> str:
    entries = sorted(entries, key=lambda e: (e["score"].benchmark, e["score"].division, e["score"].minutes or 1e9))
    parts = []
    rows = []
    for e in entries:
        s, system = e["score"], e["system"]
        accelerators = int(system.get("number_of_nodes") or 1) * int(system.get("accelerators_per_node") or 0)
        rcp = "n/a (open)" if s.rcp is None else ("PASS" if s.rcp.passed else "FAIL")
        rows.append([s.benchmark, s.division, s.submitter, s.system, system.get("system_name", ""),
                     f"{accelerators} x {system.get('accelerator_model_name') or 'CPU'}" if accelerators
                     else system.get("host_processor_model_name", ""), run_precision(e),
                     _num(s.minutes, ".3f") if s.valid else f"invalid: {s.problem}", len(s.runs), s.dropped, rcp])
    parts.append(_table(["benchmark", "division", "submitter", "system", "system name", "accelerators",
                         "precision", "minutes", "runs", "dropped", "RCP"], rows))
    by_benchmark = defaultdict(list)
    for e in entries:
        by_benchmark[e["score"].benchmark].append(e)
    for benchmark, group in sorted(by_benchmark.items()):
        name = f"minutes-{_slug(benchmark)}.png"
        minutes_plot(benchmark, group, plots / name)
        parts.append(_img(name, f"time to result, {benchmark}"))
    parts.append("<h2>Per-run times and eval accuracy</h2>")
    for e in entries:
        s = e["score"]
        parts.append(f"<h3>{html.escape(f'{s.submitter} / {s.system} / {s.benchmark}')}</h3>")
        parts.append(_table(
            ["run", "seed", "minutes", "status", "converged at", "last accuracy", "verdict 4.1.68 / v1.1 round",
             "counted"],
            [[r.file, r.seed, _num(r.minutes, ".3f"), r.status, r.convergence_point, _num(r.last_accuracy, ".4f"),
              f"{'PASS' if r.passed else 'FAIL'} / {'PASS' if r.round_passed else 'FAIL'}",
              "yes" if r.counted else "no (dropped)"] for r in s.runs]))
        stem = _slug(f"{s.submitter}-{s.system}-{s.benchmark}-{Path(e['source']).name}")
        run_minutes_plot(e, plots / f"runs-{stem}.png")
        curves_plot(e, plots / f"eval-{stem}.png")
        parts.append(_img(f"runs-{stem}.png", f"per-run times, {s.system} {s.benchmark}"))
        parts.append(_img(f"eval-{stem}.png", f"eval accuracy, {s.system} {s.benchmark}"))
    return "\n".join(parts)


def _platform(system: dict) -> str:
    accelerators = int(system.get("number_of_nodes") or 1) * int(system.get("accelerators_per_node") or 0)
    if accelerators:
        return f"{system.get('system_name', '')}: {accelerators} x {system.get('accelerator_model_name')}"
    return f"{system.get('system_name', '')}: {system.get('host_processor_model_name', 'CPU')}"


def our_throughput_table(loaded: list[tuple[Path, dict]]) -> str:
    """Graphcore's training-throughput table for our implementation's rows of the bench JSONs."""
    rows = []
    for _, bench in loaded:
        m = bench["machine"]
        platform = f"{m['accelerator_model_name'] or m['host_processor_model_name']} ({m['device']})"
        for r in bench["rows"]:
            if r.get("impl") not in _OUR_IMPLS or "step_s" not in r:
                continue
            samples = r["samples"]
            batch = f"{samples:,.2f}" if samples % 1 else f"{samples:,.0f}"
            if "rows" in r:
                batch += f" ({r['rows']} rows)"
            rows.append([r["group"], f"{r['name']}: {r['settings']}", platform, f"PyTorch {m['torch']}",
                         "synthetic, in memory", batch, r.get("precision", "-"), _num(r["samples_per_s"], ",.2f")])
    return _table(["model", "variant", "platform", "framework", "dataset", "batch size", "precision",
                   "throughput (samples/s)"], rows)


def our_time_to_result_table(entries: list[dict]) -> str:
    """Graphcore's time-to-result table for the submissions `make submit` made (those with a plan)."""
    rows = []
    for e in sorted((e for e in entries if e.get("plan") is not None),
                    key=lambda e: (e["score"].benchmark, e["score"].division, e["score"].minutes or 1e9)):
        s, plan, system = e["score"], e["plan"], e["system"]
        cfg = plan.get("config", {})
        dataset = "built-in synthetic (DEMONSTRATION)" if plan.get("demo") else _DATASET.get(s.benchmark, "-")
        rows.append([_MODEL.get(s.benchmark, s.benchmark), s.division, _platform(system),
                     system.get("framework", "-"), dataset, run_precision(e),
                     _num(cfg.get("global_batch_size"), ",.0f"), f"preset {plan.get('preset', '-')}",
                     _num(s.minutes, ".3f") if s.valid else f"invalid: {s.problem}"])
    return _table(["model", "division", "platform", "framework", "dataset", "precision", "global batch",
                   "configuration", "time to result (minutes)"], rows)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:0.25em 0.6em;
text-align:left}th{background:#f0f0f0}img{max-width:100%}h1{font-size:1.6em}"""


def build(*, subs: list[Path], benches: list[Path], out: Path) -> Path:
    """Write OUT/index.html and OUT/plots/ from the given bench JSONs and submission folders."""
    if not subs and not benches:
        if not DEFAULT_BENCH.is_file():
            raise UserError(f"nothing to report: give submission folders (SUB=...) or --bench JSON, or run "
                            f"`make bench` first (it writes {DEFAULT_BENCH})")
        benches = [DEFAULT_BENCH]
    loaded = [(path, load_bench(path)) for path in benches]
    entries = load_submissions(subs)
    with atomic_dir(out) as tmp:
        plots = tmp / "plots"
        plots.mkdir()
        sources = [str(p) for p in benches] + [str(s) for s in subs]
        body = ["<h1>MLPerf Training v1.1 results: throughput and time to result</h1>",
                "<p>" + html.escape(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `make report` at commit "
                                    f"{git_commit()} from: {', '.join(sources)}.") + "</p>"]
        ours = [e for e in entries if e.get("plan") is not None]
        if ours or any(r.get("impl") in _OUR_IMPLS for _, data in loaded for r in data["rows"]):
            body.append("<h2>Our results</h2>")
            body.append("<p>As Graphcore's results page lays them out: training throughput of our implementation "
                        "(`make bench`, samples per second on batches in memory) and time to result of our "
                        "submissions (olympic mean of the runs, official scoring). Precision in the "
                        "activations.weights notation, from each run's configuration.</p>")
            if loaded:
                body.append("<h3>Training throughput</h3>")
                body.append(our_throughput_table(loaded))
            if ours:
                body.append("<h3>Time to result</h3>")
                body.append(our_time_to_result_table(ours))
        if loaded:
            body.append("<h2>Training throughput</h2>")
            body += [bench_section(data, path, plots) for path, data in loaded]
        if entries:
            body.append("<h2>Time to result</h2>")
            body.append("<p>Olympic mean of the runs (fastest and slowest dropped), as scored with the official "
                        "MLPerf tools (ruleset 1.1.0); precision in the activations.weights notation where the "
                        "system description states it.</p>")
            body.append(results_section(entries, plots))
        page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>MLPerf results</title><style>{_STYLE}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")
        (tmp / "index.html").write_text(page)
    return out / "index.html"


def main(args) -> int:
    page = build(subs=args.subs, benches=args.bench, out=args.out)
    print(f"wrote {page} ({len(list((args.out / 'plots').glob('*.png')))} plots)")
    return 0
