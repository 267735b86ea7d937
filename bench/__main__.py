"""`make bench`: our training steps against the peers a user would pick instead, side by side in one run.

    python -m mlperf_submission.bench [--quick] [--out out/bench] [--device auto|cpu|cuda] [--settle-s 180]

Measures, each in a fresh process and on this machine in the same run: the fp32 and bf16 matmul peak;
training throughput (samples/s), time per step, peak memory and model FLOP utilisation (MFU) of
  - ResNet-50 at 224 px: ours at the 1xH200 preset's speed settings, ours with every speed option off, and
    torchvision's reference training step (plain-PyTorch equivalent, bench/peers.py) at its defaults and
    at its best documented settings;
  - BERT-Large at sequence length 128 and 512 on full rows: ours, and Hugging Face `BertForPreTraining` at
    its defaults and best documented settings (on a CPU at 1 and 5 layers of the real width, scaled to 24);
  - BERT-Large at 512 on the MLPerf Wikipedia length mix: ours as closed BERT trains (unpadded rows), ours
    on padded rows, ours on open BERT's offline packs, and the two HF rows (padded to the batch's longest);
  every BERT row as the package trains (closed/bert/steps.py's `micro_step` and `optimizer_step`), and
  every row's update charged per global batch of the 1xH200 preset (256 sequences, 1632 images), not per
  timed micro-batch;
  - ImageNet decode + training augmentation, images per CPU-second: ours against torchvision's transforms;
then prints the ratios against the goals of issues 5 and 6 and writes OUT/bench.json and OUT/bench.md (with the
commit, the machine and this command). Every row and ratio comes from the medians of its parts over at least
7 alternating rounds, with its bootstrap 90 % interval (rounds resampled; bench/figures.py) and the per-round
min-max, UNSETTLED where the interval reaches beyond +-10 % (such a group measured again while --settle-s
allows); the matmul peak is taken at the start and the end, DISTURBED when they differ by more than 10 %.
`--quick` runs every path at toy sizes in a minute or two, for the tests; its figures mean nothing. On the
idle 2-core CPU a full run took 925 and 970 s (MEASUREMENTS.md), 2-3 minutes of it measuring unsettled
groups again.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from ..common.cli import ArgumentParser, atomic_write_text, entry_point
from ..common.evidence import git_commit, ratio_text
from ..systems import describe_local
from . import cases, scales, timing
from .figures import CONFIDENCE, RESAMPLES, SPREAD_KIND, UNSETTLED, ratios, row_figure, step_time

FORMAT = "mlperf_submission.bench/1"


def plan(scale: scales.Scale, device: str) -> list[dict]:
    """The cases of one run: group, implementation and the call that measures it."""
    s128, s512 = scale.bert_seq_lengths
    resnet = f"ResNet-50, {scale.resnet_image_size} px"
    # One call measures all four, in turns: {impl: result}.
    rows = [dict(group=resnet, impls=cases.RESNET_IMPLS, call=(cases.resnet, scale, device))]
    for which, seq in enumerate((s128, s512)):
        impls = ("ours", "ours-plain", "hf-defaults", "hf-best") if which == 0 else ("ours", "hf-defaults", "hf-best")
        # One call times them all, in turns: {impl: result}.
        rows.append(dict(group=f"BERT-Large, seq {seq}", impls=impls, call=(cases.bert, scale, device, which)))
    rows.append(dict(group=f"BERT-Large, Wikipedia lengths, seq {s512}",
                     impls=("ours", "ours-jagged", "ours-padded", "ours-packed", "hf-defaults", "hf-best"),
                     call=(cases.bert_wikipedia, scale, device)))
    rows.append(dict(group="ImageNet decode + augment, 224 px", impls=cases.DECODE_IMPLS, call=(cases.decode, scale)))
    return rows


def run(call: tuple, *, threads: int = 0, isolated: bool = True):
    """call[0](*call[1:]) with `threads` intra-op threads (0: torch's default, one per core), in a new
    spawned process when `isolated`, so that its peak memory and caches are its own; in this process
    otherwise, what it held released after it."""
    if not isolated:
        try:
            return timing.with_threads(threads, *call)
        finally:
            timing.release(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    with timing.steady_malloc(), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(timing.with_threads, threads, *call).result()


def allocator(isolated: bool) -> dict[str, str]:
    """The malloc settings the cases run with: `timing.steady_malloc`'s in their own processes; in this
    process, as it started."""
    if isolated:
        with timing.steady_malloc() as values:
            return values
    return {name: os.environ.get(name, "unset (the allocator's default)") for name in timing.STEADY_MALLOC}


def measure_case(case: dict, isolation: dict, peaks: dict) -> tuple[list[dict], dict | None]:
    """One case -> (its rows, its raw results {impl: result}; None where it raised: then error rows)."""
    try:
        results = run(case["call"], **isolation)
    except Exception as e:  # a case's failure (out of memory, a missing peer) is its rows; the others still run
        return error_rows(case, e), None
    return [finish_row({**case, "impl": impl}, results[impl], peaks) for impl in case["impls"]], results


def pooled(first: dict, more: dict) -> dict:
    """Two measurements of a case, {impl: result}, as one: their rounds together, the medians of them all."""
    out = {}
    for impl, a in first.items():
        b = more[impl]
        out[impl] = {**b, "peak_memory_mib": max(a.get("peak_memory_mib", 0), b.get("peak_memory_mib", 0))}
        for key, median in (("rounds", "step_s"), ("samples_per_s_rounds", "samples_per_s")):
            if key in a and key in b:
                out[impl][key] = a[key] + b[key]
                out[impl][median] = statistics.median(out[impl][key])
        if "terms" in a and "terms" in b:  # each part's rounds pooled; the step from the pooled medians
            out[impl]["terms"] = [[c, x + y] for (c, x), (_, y) in zip(a["terms"], b["terms"], strict=True)]
            out[impl]["step_s"] = float(step_time(out[impl]["terms"]))
    return out


def error_rows(case: dict, error: Exception) -> list[dict]:
    """A case that raised (out of memory included): one row per implementation, with the error's first line."""
    text = (f"{type(error).__name__}: {error}".splitlines() or ["?"])[0][:300]
    if isinstance(error, ImportError):  # the HF peer without the `bench` extra
        text += " (install it with: pip install -e '.[bench]')"
    return [{"group": case["group"], "impl": impl, "name": PEER_NAMES[impl], "error": text} for impl in case["impls"]]


PEER_NAMES = {"ours": "ours", "ours-plain": "ours, speed options off", "peer-defaults": "torchvision, defaults",
              "peer-best": "torchvision, best settings", "hf-defaults": "HF transformers, defaults",
              "hf-best": "HF transformers, best settings", "ours-padded": "ours, padded rows (unpad=false)",
              "ours-jagged": "ours, unpadded, jagged attention",
              "ours-packed": "ours, packed offline (open division)",
              "plain": "torchvision transforms (PIL)"}


def finish_row(row: dict, result: dict, peaks: dict) -> dict:
    """Throughput, and MFU against the measured peak of the row's precision (16-bit rows: the bf16 peak)."""
    out = {"group": row["group"], "impl": row["impl"], "name": PEER_NAMES[row["impl"]], **result}
    if result.get("tf32") is not None:
        out["settings"] += f", TF32 {'on' if result['tf32'] else 'off'}"
    if "step_s" in result:
        out["samples_per_s"] = result["samples"] / result["step_s"]
        if "rounds" in result:
            out["samples_per_s_rounds"] = [result["samples"] / t for t in result["rounds"]]
        # An fp32 row whose math ran in TF32 is measured against the TF32 peak, so its MFU stays a share.
        out["peak_kind"] = "bf16" if result["precision"] != "32.32" else ("tf32" if result.get("tf32") else "fp32")
        out["peak_flops_per_s"] = peaks[out["peak_kind"]]
    if out.get("samples_per_s_rounds"):  # the row's own spread: its throughput over the rounds
        q = row_figure(out)
        out |= {"samples_per_s_spread": q["spread"], "unsettled": q["unsettled"]}
    return out


DISTURBED = 0.10  # the peak at the end differing from the start's by more than this: the machine was disturbed


def combined_peak(start: dict, end: dict) -> dict:
    """The peaks measured at the start and at the end of the run: the best of the two per precision (what the
    machine can do, for MFU), both kept, and the precisions whose two differ by more than DISTURBED."""
    first, last = start["flops_per_s"], end["flops_per_s"]
    disturbed = [k for k in first if abs(first[k] - last[k]) > DISTURBED * max(first[k], last[k])]
    return {**start, "flops_per_s": {k: max(first[k], last[k]) for k in first}, "start": first, "end": last,
            "disturbed": disturbed}


def add_utilisation(rows: list[dict]) -> None:
    """Model FLOPs of a group = the FLOPs our implementation executes for the same samples ("ours", or the
    packed rows: padding is not useful work); every row of the group is measured against them."""
    for group in {r["group"] for r in rows}:
        members = [r for r in rows if r["group"] == group and "step_s" in r]
        reference = next((r for r in members if r["impl"] == "ours"), None)
        for r in members:
            if reference is not None:
                r["model_flops"] = reference["flops"] * r["samples"] / reference["samples"]
                r["mfu"] = r["model_flops"] / r["step_s"] / r["peak_flops_per_s"]


def machine(device: torch.device, threads: int) -> dict:
    system = describe_local(org="-", system_name="-", division="closed")
    described = {k: system[k] for k in ("host_processor_model_name", "host_processor_core_count",
                                         "host_memory_capacity", "accelerator_model_name", "operating_system")}
    try:
        import transformers
        hf = transformers.__version__
    except ImportError:
        hf = "not installed"
    return {**described, "device": str(device), "torch": torch.__version__, "transformers": hf,
            "python": platform.python_version(), "torch_threads": threads or torch.get_num_threads()}


def peak_line(peak: dict) -> str:
    """The measured matmul peak, start and end, and whether the machine was disturbed in between."""
    shapes = ", ".join("x".join(map(str, s)) for s in peak["shapes"])
    best = ", ".join(f"{k} {v / 1e12:.3f}" for k, v in peak["flops_per_s"].items())
    ends = ", ".join(f"{k} {peak['start'][k] / 1e12:.3f} / {peak['end'][k] / 1e12:.3f}" for k in peak["start"])
    verdict = (f"DISTURBED: {', '.join(peak['disturbed'])} differ by more than {DISTURBED:.0%}; every figure of "
               "this run is suspect" if peak["disturbed"] else f"stable within {DISTURBED:.0%}")
    return (f"- measured matmul peak (best of m x k x n = {shapes}, at the start and the end of the run): {best} "
            f"TFLOP/s; start / end: {ends}: {verdict}")


def fmt(x, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, spec)


def throughput(row: dict) -> str:
    """A row's samples/s, with the interval of its median over the rounds, UNSETTLED where that is wide."""
    shown = fmt(row.get("samples_per_s"), ",.2f")
    if "samples_per_s_spread" in row:
        lo, hi = row["samples_per_s_spread"]
        shown += f" ({lo:,.2f}-{hi:,.2f})" + (" UNSETTLED" if row["unsettled"] else "")
    return shown


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# `make bench`: training throughput side by side", "",
        f"- command: `{result['command']}`", f"- commit: {result['commit']}",
        f"- when: {result['started']}, {result['seconds']:.0f} s, scale `{result['scale']['name']}`",
        f"- machine: {m['host_processor_model_name']}, {m['host_processor_core_count']} cores, "
        f"{m['host_memory_capacity']}, {m['accelerator_model_name'] or 'no accelerator'}; device {m['device']}, "
        f"{m['torch_threads']} torch threads; torch {m['torch']}, transformers {m['transformers']}, "
        f"Python {m['python']}",
        "- malloc: " + ", ".join(f"{k}={v}" for k, v in result["allocator"].items()) + " (bench/timing.py: "
        "freed memory kept for the next step, in ours' processes and the peers' alike)",
        peak_line(result["peak"]), "",
        "| benchmark | implementation | settings | precision | samples/step | samples/s | s/step | "
        "peak memory MiB | model GFLOP/step | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['group']} | {r['name']} | failed: {r['error']} | | | | | | | |")
            continue
        samples_spec = ",.2f" if r.get("samples", 0) % 1 else ",.0f"  # packed rows: sequences per row x rows
        lines.append(
            f"| {r['group']} | {r['name']} | {r['settings']} | {r.get('precision', '-')} | "
            f"{fmt(r.get('samples'), samples_spec)} | "
            f"{throughput(r)} | {fmt(r.get('step_s'), '.3f')} | "
            f"{fmt(r.get('peak_memory_mib'), ',.0f')} | {fmt(r.get('model_flops'), ',.1f', 1e-9)} | "
            f"{fmt(r.get('mfu'), '.1%')} |")
    lines += ["", f"| ratio | benchmark | value | {CONFIDENCE:.0%} interval (bootstrap over rounds) | "
              "min-max of the per-round values | goal | met |", "|---|---|---|---|---|---|---|"]
    for q in result["ratios"]:
        target = "-" if q["goal"] is None else f"{q['goal']:g}"
        met = "-" if q["met"] is None else ("yes" if q["met"] else "no")
        value = ratio_text(q) + (" UNSETTLED" if q.get("unsettled") else "")
        shown = f"{q['spread'][0]:.2f}-{q['spread'][1]:.2f} ({q['rounds']} rounds)" if "spread" in q else "-"
        span = f"{q['range'][0]:.2f}-{q['range'][1]:.2f}" if "range" in q else "-"
        lines.append(f"| {q['ratio']} | {q['group']} | {value} | {shown} | {span} | {target} | {met} |")
    lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def layout_note(row: dict) -> str:
    """How well a Wikipedia-length layout fills its rows: sequences and real tokens per row slot."""
    lay = row["layout"]
    if row["impl"] == "ours-packed":
        return (f"Open BERT's offline packs: {lay['sequences_per_row']:.2f} sequences per row, "
                f"{lay['real_tokens_per_slot']:.1%} of the row slots real tokens.")
    return (f"Closed BERT's layout of a micro-batch of {lay['micro_batch']}: {lay['rows']} rows, "
            f"{lay['sequences_per_row']:.2f} sequences per row, {lay['real_tokens_per_slot']:.1%} of the row slots "
            f"real tokens; timed: {lay['timed_sequences']} sequences in {lay['timed_rows']} of its rows "
            f"({lay['timed_real_tokens_per_slot']:.1%} real tokens).")


def notes(scale: scales.Scale, rows: list[dict], settle_s: float) -> list[str]:
    out = [
        "samples/s = samples per step / median time of a whole training step (forward, backward, optimizer) "
        "on batches already in memory; data loading is measured separately (the decode rows). Every row's "
        "forward-backward and optimizer update are timed in turns and combined as training runs them: s/step = "
        f"forward-backward + update x samples / the 1xH200 preset's global batch ({cases.global_batch()} "
        f"sequences for BERT, {cases.resnet_global_batch()} images for ResNet-50, for ours and the peers "
        "alike); bench.json has both parts and the update's share.",
        "MFU = model FLOPs per step / time per step / the matmul peak measured in this run for the row's "
        "precision (16-bit rows against the bf16 peak). Model FLOPs: matmul, convolution and attention FLOPs of "
        "forward and backward that our implementation executes for the same samples, counted by "
        "torch.utils.flop_counter (the Wikipedia group: our unpadded rows'); optimizer FLOPs not counted.",
        "Peak memory: the whole process's peak resident memory on CPU (Python and torch included), torch's "
        "peak allocation on CUDA.",
        "ResNet-50 rows: ours (closed/resnet/steps.py's own train_step, in its two halves) and the peers timed in "
        "turns in one process, "
        "so drift on a shared machine hits each alike; every batch copied to the device before timing, for all "
        "alike; peak memory is that process's, over the four.",
        "Decode rows: images per CPU-second on one thread, a synthetic 500x375 JPEG of about 110 KB, ours and "
        "PIL in alternating rounds.",
        "Wikipedia lengths: sequences drawn from the shipped histogram of the MLPerf data at 512. Closed BERT "
        "lays out each micro-batch's own sequences in unpadded rows (the layout of the 1xH200 preset's "
        f"micro-batch of {cases.micro_batch()}, of which rows spread evenly over it are timed); open BERT's "
        "packs come from a plan over a large sample, so samples/step = rows x sequences per pack of the whole "
        "plan. Our three layouts share one model; every row of the group is timed in turns in one process.",
        f"Uncertainty: every comparison is timed in at least {scale.timed_steps} alternating rounds (ours and the "
        f"peers in turns, after {scale.warmup_steps - 1} untimed round(s) in the same order; the Wikipedia group "
        f"in {scale.wiki_timed_steps}). A row's time per step is the sum of its timed parts' medians over the "
        "rounds (forward-backward and update; on a CPU, BERT's two layer counts on their line), a ratio the "
        f"ratio of two such rows' samples/s; the spread is the {CONFIDENCE:.0%} bootstrap interval of that "
        f"figure, whole rounds resampled ({RESAMPLES} times, seeded), beside the min-max of the per-round "
        f"values (bench/figures.py). A figure whose interval reaches beyond +-{UNSETTLED:.0%} of its value is "
        "marked UNSETTLED and judged against no goal. A group with an unsettled ratio is measured again in a new "
        "process, its rounds pooled (the interval narrows with more rounds), while a whole measurement fits in "
        f"the settling time left ({settle_s:.0f} s in all, --settle-s).",
    ]
    out += [layout_note(r) for r in rows if r["impl"] in ("ours", "ours-packed") and "layout" in r]
    scaled = sorted({tuple(r["scaled_from"]) for r in rows if r.get("scaled_from")})
    for layers in scaled:
        out.append(f"BERT-Large rows measured with {' and '.join(map(str, layers))} of the 24 layers at the real "
                   "width and scaled to 24 on a straight line (time and FLOPs); embeddings, heads and the "
                   "optimizer update are inside the measured part. Both layer counts' models are held and timed "
                   "in the same rounds, so peak memory is the process's with both. The slope is a difference of "
                   f"two timings, times {24 - layers[0]}/{layers[-1] - layers[0]}: on a machine busy with other "
                   "work these rows are unreliable.")
    if scale.name == "quick":
        out.append("QUICK MODE: toy sizes that exercise every path; the figures mean nothing.")
    return out


def measure_all(cases_: list[dict], isolation: dict, peaks: dict, settle_s: float) -> tuple[list[dict], int]:
    """Every case's rows, a case that stays unsettled measured again while `settle_s` seconds in all allow
    -> (rows, how many cases failed)."""
    rows, failed, settle_left = [], 0, settle_s
    for case in cases_:
        case_started = time.time()
        done, results = measure_case(case, isolation, peaks)
        once = time.time() - case_started
        # An unsettled group is measured again, its rounds pooled, while a whole measurement (as long as the
        # first took) fits in the settling time left: a cap, not a point past which no new one starts.
        while results is not None and any(q.get("unsettled") for q in ratios(done)) and once <= settle_left:
            print(f"  {case['group']}: unsettled, measuring again ({settle_left:.0f} s of settling left)", flush=True)
            again_started = time.time()
            more = measure_case(case, isolation, peaks)[1]
            settle_left -= time.time() - again_started
            if more is None:
                break
            results = pooled(results, more)
            done = [finish_row({**case, "impl": impl}, results[impl], peaks) for impl in results]
        failed += results is None
        rows += done
        for row in done:
            shown = row.get("error") or f"{row['samples_per_s']:,.2f} samples/s, {row['settings']}"
            print(f"  {case['group']}: {row['name']}: {shown} ({time.time() - case_started:.0f} s)", flush=True)
    return rows, failed


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.bench", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy sizes, every code path, about a minute")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for bench.json and bench.md")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads per case (default: one per core; 1 on a machine shared with other work, "
                        "where spin-waiting threads slow each other 10x)")
    p.add_argument("--settle-s", type=float, default=180,
                   help="seconds in all for measuring unsettled groups again (a ratio's interval beyond +-10%%); "
                        "a group is measured again only while a whole measurement of it fits in what is left")
    p.add_argument("--in-process", action="store_true",
                   help="run every case in this process (faster to start; peak memory is then a running maximum)")
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error(f"--threads must be 0 (one per core) or more, not {args.threads}")
    device = timing.pick_device(args.device)
    if args.quick:
        scale = scales.quick()
    else:
        scale = scales.gpu(torch.cuda.get_device_properties(device).total_memory) if device.type == "cuda" \
            else scales.cpu()
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.time()
    command = "python -m mlperf_submission.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    isolation = dict(threads=args.threads, isolated=not args.in_process)
    print(f"bench: scale {scale.name} on {device}, "
          f"{'each case in a fresh process' if isolation['isolated'] else 'in one process'}", flush=True)
    peak = run((timing.matmul_peak, scale, str(device)), **isolation)
    print(f"  matmul peak: fp32 {peak['flops_per_s']['fp32'] / 1e12:.3f}, "
          f"bf16 {peak['flops_per_s']['bf16'] / 1e12:.3f} TFLOP/s", flush=True)
    rows, failed = measure_all(plan(scale, str(device)), isolation, peak["flops_per_s"], args.settle_s)
    peak = combined_peak(peak, run((timing.matmul_peak, scale, str(device)), **isolation))
    for row in rows:
        if "peak_kind" in row:
            row["peak_flops_per_s"] = peak["flops_per_s"][row["peak_kind"]]
    add_utilisation(rows)
    result = {"format": FORMAT, "command": command, "commit": git_commit(), "started": started,
              "seconds": time.time() - clock, "scale": asdict(scale), "isolated": not args.in_process,
              "machine": machine(device, args.threads), "allocator": allocator(isolation["isolated"]),
              "peak": peak, "spread_kind": SPREAD_KIND,
              "rows": rows, "ratios": ratios(rows), "notes": notes(scale, rows, args.settle_s)}
    atomic_write_text(args.out / "bench.json", json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    atomic_write_text(args.out / "bench.md", text)
    print("\n" + text)
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
