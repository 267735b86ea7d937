"""The figures `make bench` reports, and how far each holds.

A row's time per step is a sum of timed parts, each with its rounds: `terms`, [[coefficient, rounds], ...]
(BERT on a CPU: the forward-backward at two layer counts on a straight line to 24, plus the update at both,
charged per global batch; ResNet-50: its forward-backward plus its update per global batch). Every part of a
group is timed once in each round, in turns, so round i of one part and round i of another were timed side
by side. A figure (a row's samples/s, the ratio of two rows', an MFU) is computed from the median of each
part over the rounds: a slow round of one part (the VM's neighbours) is then left out of that part, where a
per-round figure would carry it into every figure the part enters, multiplied by the extrapolation.

Its spread is the bootstrap 90 % interval of that figure: whole rounds resampled with replacement (so the
parts timed side by side stay together), the figure computed again from the resampled medians, 4,000 times
(seeded: the same rounds give the same interval), the 5th and 95th percentiles. It narrows as rounds are
added (a group measured again pools its rounds); the min-max of the per-round figures, kept beside it, could
only widen. A figure whose interval reaches beyond +-10 % of its value is UNSETTLED, judged against no goal.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

UNSETTLED = 0.10
CONFIDENCE = 0.90
RESAMPLES = 4000
SPREAD_KIND = f"bootstrap {CONFIDENCE:.0%} interval, rounds resampled"  # what "spread" is, in bench.json

# Goals of issue 6 on the 2-core CPU, and packing's of issue 5; None: reported, no goal.
SPEEDUP_GOALS = {"ours / peer defaults": 2.0, "ours / peer best": 1.3, "packed / padded": 1.9,
                 "unpadded / padded": None, "jagged / block attention": None,
                 "ours / plain": 2.0, "ours / ours, speed options off": None}
BERT_MFU_GOAL = 0.5
PAIRS = [("ours", "peer-defaults", "ours / peer defaults"), ("ours", "peer-best", "ours / peer best"),
         ("ours", "hf-defaults", "ours / peer defaults"), ("ours", "hf-best", "ours / peer best"),
         ("ours", "ours-plain", "ours / ours, speed options off"),
         ("ours-packed", "ours-padded", "packed / padded"), ("ours", "ours-padded", "unpadded / padded"),
         ("ours-jagged", "ours", "jagged / block attention"), ("ours", "plain", "ours / plain")]


def goal(group: str, label: str) -> float | None:
    """A ratio's goal: SPEEDUP_GOALS's, but ResNet-50's against the best peer is 1.0 (never below it: both
    run the same oneDNN / cuDNN kernels, issue 26)."""
    return 1.0 if group.startswith("ResNet") and label == "ours / peer best" else SPEEDUP_GOALS[label]


def rounds(row: dict) -> int:
    """How many rounds a row was timed in (0: none kept)."""
    if row.get("terms"):
        return len(row["terms"][0][1])
    return len(row.get("samples_per_s_rounds") or [])


def step_time(terms: list[list], idx: np.ndarray | None = None) -> np.ndarray:
    """Seconds per step from `terms`: the sum of each part's median over the rounds `idx` (shape (..., n):
    indices into its rounds; all of them when None)."""
    return sum(c * np.median(np.asarray(r) if idx is None else np.asarray(r)[idx], axis=-1) for c, r in terms)


def throughput(row: dict, idx: np.ndarray) -> np.ndarray:
    """A row's samples/s from the rounds `idx` (shape (..., n): indices into its rounds): samples over its
    `step_time`; a row without terms (the decode rows: a rate per round), the median rate."""
    if row.get("terms"):
        return row["samples"] / step_time(row["terms"], idx)
    return np.median(np.asarray(row["samples_per_s_rounds"])[idx], axis=-1)


def figure(statistic, n: int) -> dict:
    """statistic(idx) over all n rounds, its bootstrap interval over resampled rounds, the min-max of its
    per-round values, and whether the interval reaches beyond +-UNSETTLED of the value."""
    value = float(statistic(np.arange(n)))
    per_round = statistic(np.arange(n)[:, None])
    lo, hi = float(per_round.min()), float(per_round.max())
    if n > 1 and lo < hi:
        interval = stats.bootstrap((np.arange(n),), lambda idx, axis: statistic(idx), vectorized=True,
                                   confidence_level=CONFIDENCE, method="percentile", n_resamples=RESAMPLES,
                                   rng=np.random.default_rng(0)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    else:
        low, high = lo, hi
    return {"value": value, "spread": [low, high], "range": [lo, hi], "rounds": n,
            "unsettled": high > (1 + UNSETTLED) * value or low < (1 - UNSETTLED) * value}


def row_figure(row: dict) -> dict:
    """A row's samples/s with its interval (rows timed in rounds)."""
    return figure(lambda idx: throughput(row, idx), rounds(row))


def ratio(group: str, label: str, a: dict, b: dict) -> dict:
    """a's throughput over b's (each from the medians of its parts), its interval (the two rows' rounds
    resampled together: they were timed side by side), and "unsettled" when that is wider than +-UNSETTLED
    of the value (then no goal is judged)."""
    target = goal(group, label)
    noisy = [r["unreliable"] for r in (a, b) if "unreliable" in r]
    if noisy:  # a ratio of a figure that timing noise made up would mislead: say so instead
        return {"group": group, "ratio": label, "value": None, "goal": target, "met": None,
                "unreliable": "; ".join(noisy)}
    n = rounds(a)
    if n and n == rounds(b):
        out = figure(lambda idx: throughput(a, idx) / throughput(b, idx), n)
    else:
        out = {"value": a["samples_per_s"] / b["samples_per_s"]}
    met = None if target is None or out.get("unsettled") else out["value"] >= target
    return {"group": group, "ratio": label, **out, "goal": target, "met": met}


def ratios(rows: list[dict]) -> list[dict]:
    """Every pair of PAIRS a group has, and BERT's MFU (proportional to ours' throughput: the same rounds)."""
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = {r["impl"]: r for r in rows if r["group"] == group and r.get("samples_per_s") is not None}
        out += [ratio(group, label, members[num], members[den]) for num, den, label in PAIRS
                if num in members and den in members]
        ours = members.get("ours")
        if ours is not None and "mfu" in ours and group.startswith("BERT-Large"):
            q = {"group": group, "ratio": "ours: MFU vs bf16 peak", "value": ours["mfu"], "goal": BERT_MFU_GOAL}
            if rounds(ours):
                q |= figure(lambda idx, row=ours: row["mfu"] / row["samples_per_s"] * throughput(row, idx),
                            rounds(ours))
            q["met"] = None if q.get("unsettled") else q["value"] >= BERT_MFU_GOAL
            out.append(q)
    return out
