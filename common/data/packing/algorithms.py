"""Offline packing plans for BERT (Krell, Kosec et al., arXiv 2107.02027): several whole sequences per row.

Packing works on the histogram of sequence lengths, not on the sequences: a plan says how many packs of
each length combination ("strategy") to make, then `assign` deals the sequences of each length into them at
random (seeded). Two algorithms:
- SPFHP, shortest-pack-first histogram packing: lengths from longest to shortest; all sequences of a length
  go into the open packs with the most room left first (the shortest packs), splitting a group of equal
  packs where needed, and what does not fit opens new packs; a pack closes when full or holding
  `max_sequences_per_pack` sequences. On the MLPerf Wikipedia histogram (16,279,552 sequences at 512):
  99.604 % of the tokens are real at depth 12 (8,166,708 packs, as published), 89.44 % at depth 3.
- NNLSHP, non-negative least-squares histogram packing: every strategy of at most `max_sequences_per_pack`
  lengths that sums to exactly max_len is a column of a (max_len x strategies) matrix; a non-negative least
  squares fit of strategy counts to the histogram (residuals on lengths 1..8 weigh 0.09, as in the paper's
  code, because a left-over short sequence costs little), rounded; slots the rounded counts fill beyond the
  histogram stay empty (that is the padding), and the sequences they leave over are packed by SPFHP
  (`residual="spfhp"`, the default) or one per pack (`residual="single"`, the paper's code: exactly its
  published 8,155,059 packs, 99.75 %). Strategies summing to less than max_len are not columns: their
  padding is an empty slot of an exact-sum one, and at 512 with depth 3 all of them would be 3.8 million.
  Exact-sum strategies grow fast with the depth too, so NNLSHP refuses more than 60,000 of them (depth 4 at
  512, depth 7 at 64); `nnlshp_feasible` and `nnlshp_max_per_pack` let a config validator refuse them first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# NNLSHP's matrix has one column per strategy: 22,102 at 512 and depth 3 (90 MB, about 20 s to solve).
MAX_NNLS_STRATEGIES = 60_000
# The paper's weight on the residual of lengths 1..8: leaving a short sequence over costs little padding.
SHORT_LENGTHS, SHORT_WEIGHT = 8, 0.09


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How many packs of each strategy (a tuple of sequence lengths, longest first) to make.

    `strategies` is canonical: each strategy once, in descending order, counts >= 1 (`make_plan` builds it
    from any mapping). Efficiency is real tokens / (packs x max length); speed-up is sequences per pack,
    the paper's "achieved speed-up over the un-packed dataset"; speedup_limit is what perfect packing gives.
    """

    max_sequence_length: int
    max_sequences_per_pack: int
    strategies: tuple[tuple[tuple[int, ...], int], ...]
    algorithm: str = ""

    def __post_init__(self):
        if self.max_sequence_length < 1 or self.max_sequences_per_pack < 1:
            raise ValueError("max_sequence_length and max_sequences_per_pack must be >= 1")
        for lengths, count in self.strategies:
            if not (isinstance(lengths, tuple) and lengths and len(lengths) <= self.max_sequences_per_pack
                    and all(isinstance(x, int) and 1 <= x <= self.max_sequence_length for x in lengths)
                    and sum(lengths) <= self.max_sequence_length and list(lengths) == sorted(lengths, reverse=True)
                    and isinstance(count, int) and count >= 1):
                raise ValueError(
                    f"bad strategy {lengths} x {count}: need 1..{self.max_sequences_per_pack} lengths, longest "
                    f"first, summing to at most {self.max_sequence_length}, and a count >= 1"
                )
        keys = [lengths for lengths, _ in self.strategies]
        if keys != sorted(set(keys), reverse=True):
            raise ValueError("strategies must be distinct and in descending order (use make_plan)")

    @property
    def packs(self) -> int:
        return sum(count for _, count in self.strategies)

    @property
    def sequences(self) -> int:
        return sum(count * len(lengths) for lengths, count in self.strategies)

    @property
    def tokens(self) -> int:
        return sum(count * sum(lengths) for lengths, count in self.strategies)

    @property
    def efficiency(self) -> float:
        return self.tokens / (self.packs * self.max_sequence_length) if self.packs else 1.0

    @property
    def speedup(self) -> float:
        return self.sequences / self.packs if self.packs else 1.0

    @property
    def speedup_limit(self) -> float:
        return self.sequences * self.max_sequence_length / self.tokens if self.tokens else 1.0

    def histogram(self) -> np.ndarray:
        """Sequences per length that the plan packs; element i is length i + 1 (like `histogram`)."""
        counts = np.zeros(self.max_sequence_length + 1, np.int64)
        for lengths, count in self.strategies:
            for length in lengths:
                counts[length] += count
        return counts[1:]

    def to_dict(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "max_sequence_length": self.max_sequence_length,
            "max_sequences_per_pack": self.max_sequences_per_pack,
            "packs": self.packs,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "efficiency": self.efficiency,
            "speedup": self.speedup,
            "speedup_limit": self.speedup_limit,
            "strategies": [[list(lengths), count] for lengths, count in self.strategies],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """Inverse of to_dict; the derived figures, where present, must agree. Raises ValueError."""
        if not isinstance(data, dict):
            raise ValueError("a packing plan must be a JSON object")
        try:
            plan = cls(max_sequence_length=data["max_sequence_length"],
                       max_sequences_per_pack=data["max_sequences_per_pack"],
                       strategies=tuple((tuple(lengths), count) for lengths, count in data["strategies"]),
                       algorithm=data.get("algorithm", ""))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a packing plan: {type(e).__name__} {e}") from None
        for key in ("packs", "sequences", "tokens"):
            if key in data and data[key] != getattr(plan, key):
                raise ValueError(f"plan says {key} {data[key]}, its strategies give {getattr(plan, key)}")
        return plan

    def to_json(self) -> str:
        return json.dumps(self.to_dict()) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"a packing plan must be JSON: {e}") from None
        return cls.from_dict(data)


def make_plan(
    counts: Mapping[Sequence[int], int], *, max_sequence_length: int, max_sequences_per_pack: int, algorithm: str
) -> Plan:
    """A canonical Plan from {lengths: count}: lengths sorted longest first, equal strategies merged, zero
    counts dropped."""
    merged: dict[tuple[int, ...], int] = defaultdict(int)
    for lengths, count in counts.items():
        if count:
            merged[tuple(sorted((int(x) for x in lengths), reverse=True))] += int(count)
    return Plan(max_sequence_length=max_sequence_length, max_sequences_per_pack=max_sequences_per_pack,
                strategies=tuple(sorted(merged.items(), reverse=True)), algorithm=algorithm)


def histogram(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Sequence lengths (N,) -> counts (max_len,) int64, element i counting the sequences of length i + 1."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError(f"sequence lengths must be a 1-D integer array, got {lengths.dtype} {lengths.shape}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(f"sequence lengths must be in 1..{max_len}, got {lengths.min()}..{lengths.max()}")
    return np.bincount(lengths.astype(np.int64), minlength=max_len + 1)[1:]


def _check_histogram(hist: np.ndarray, max_len: int, max_per_pack: int) -> np.ndarray:
    hist = np.asarray(hist)
    if hist.shape != (max_len,) or not np.issubdtype(hist.dtype, np.integer) or (hist < 0).any():
        raise ValueError(f"a histogram is {max_len} non-negative integer counts (lengths 1..{max_len})")
    if max_per_pack < 1:
        raise ValueError(f"max sequences per pack must be >= 1, got {max_per_pack}")
    return hist.astype(np.int64)


def spfhp(hist: np.ndarray, max_len: int, max_per_pack: int) -> Plan:
    """Shortest-pack-first histogram packing; -> Plan. Its time grows with max_len^2, not with the sequences."""
    hist = _check_histogram(hist, max_len, max_per_pack)
    # Open packs by tokens left: groups [count, lengths] of identical packs, the last one used first.
    open_packs: dict[int, list[list]] = {}
    closed: dict[tuple[int, ...], int] = defaultdict(int)

    def add(lengths: tuple[int, ...], count: int, room: int) -> None:
        if room == 0 or len(lengths) == max_per_pack:
            closed[lengths] += count
        else:
            open_packs.setdefault(room, []).append([count, lengths])

    for length in range(max_len, 0, -1):
        todo = int(hist[length - 1])
        room = max_len  # scan the open packs from the most room left down to an exact fit
        while todo:
            while room >= length and room not in open_packs:
                room -= 1
            if room < length:  # fits nowhere: the rest start packs of their own
                add((length,), todo, max_len - length)
                break
            group = open_packs[room]
            count, lengths = group[-1]
            moved = min(count, todo)
            if count > moved:
                group[-1][0] = count - moved
            else:
                group.pop()
                if not group:
                    del open_packs[room]
            todo -= moved
            # The new packs have less room and may take more of this length later in the same scan.
            add((*lengths, length), moved, room - length)
    for group in open_packs.values():
        for count, lengths in group:
            closed[lengths] += count
    return make_plan(closed, max_sequence_length=max_len, max_sequences_per_pack=max_per_pack, algorithm="spfhp")


def _partition_count(total: int, max_parts: int) -> int:
    """Partitions of `total` into at most max_parts parts (= into parts of size at most max_parts)."""
    ways = [1] + [0] * total
    for part in range(1, max_parts + 1):
        for s in range(part, total + 1):
            ways[s] += ways[s - part]
    return ways[total]


def _exact_strategies(total: int, max_parts: int, largest: int) -> list[tuple[int, ...]]:
    """Every tuple of at most max_parts lengths, non-increasing, each <= largest, summing exactly to total."""
    if total == 0:
        return [()]
    if max_parts == 0:
        return []
    out = []
    # The first part is at least total / max_parts, or the rest could not fit in max_parts - 1 parts.
    for first in range(min(total, largest), -(-total // max_parts) - 1, -1):
        out += [(first, *rest) for rest in _exact_strategies(total - first, max_parts - 1, first)]
    return out


def nnlshp_feasible(max_len: int, max_per_pack: int) -> bool:
    """Whether NNLSHP takes packs of up to max_per_pack sequences at length max_len (at most
    MAX_NNLS_STRATEGIES strategies); False for a length or depth below 1. Cheap: for config validators."""
    if max_len < 1 or max_per_pack < 1:
        return False
    return _partition_count(max_len, min(max_per_pack, max_len)) <= MAX_NNLS_STRATEGIES


def nnlshp_max_per_pack(max_len: int) -> int:
    """The most sequences per pack that NNLSHP takes at length max_len (>= 1): 3 at 512, 6 at 64; max_len
    where every depth fits (no pack holds more than max_len sequences)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    ways = [1] + [0] * max_len  # the _partition_count recurrence, stopped at the first depth that is too many
    for part in range(1, max_len + 1):
        for s in range(part, max_len + 1):
            ways[s] += ways[s - part]
        if ways[max_len] > MAX_NNLS_STRATEGIES:
            return part - 1
    return max_len


def nnls_solution(hist: np.ndarray, max_len: int, max_per_pack: int = 3) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """NNLSHP's least-squares stage: -> (exact-sum strategies, their non-negative real counts)."""
    hist = _check_histogram(hist, max_len, max_per_pack)
    if not nnlshp_feasible(max_len, max_per_pack):
        deepest = nnlshp_max_per_pack(max_len)
        raise ValueError(
            f"nnlshp at length {max_len} with up to {max_per_pack} sequences per pack weighs "
            f"{_partition_count(max_len, max_per_pack):,} strategies (at most {MAX_NNLS_STRATEGIES:,}): pack at "
            f"most {deepest} sequences per pack with nnlshp (--max-per-pack {deepest}), or use spfhp "
            "(--algorithm spfhp), which takes any depth"
        )
    strategies = _exact_strategies(max_len, max_per_pack, max_len)
    rows = np.concatenate([np.asarray(s) - 1 for s in strategies])
    cols = np.repeat(np.arange(len(strategies)), [len(s) for s in strategies])
    matrix = np.zeros((max_len, len(strategies)))
    np.add.at(matrix, (rows, cols), 1.0)  # matrix[l - 1, j]: sequences of length l in strategy j
    weight = np.ones(max_len)
    weight[:SHORT_LENGTHS] = SHORT_WEIGHT
    # Imported here: scipy.optimize takes ~0.45 s to import, and every BERT trainer imports this package for
    # its row layout (rows.py) but only `make data PACK=nnlshp` solves.
    from scipy import optimize

    counts, _ = optimize.nnls(weight[:, None] * matrix, weight * hist)
    return strategies, counts


def nnlshp(hist: np.ndarray, max_len: int, max_per_pack: int = 3, *, residual: str = "spfhp",
           solution: tuple[list[tuple[int, ...]], np.ndarray] | None = None) -> Plan:
    """Non-negative least-squares histogram packing; -> Plan. `solution`: a prior nnls_solution of the same
    histogram, to skip the solve; `residual`: "spfhp" or "single" (see the module docstring)."""
    hist = _check_histogram(hist, max_len, max_per_pack)
    if residual not in ("spfhp", "single"):
        raise ValueError(f"residual must be 'spfhp' or 'single', got {residual!r}")
    strategies, real_counts = solution if solution is not None else nnls_solution(hist, max_len, max_per_pack)
    counts = np.rint(real_counts).astype(np.int64)
    covered = np.zeros(max_len + 1, np.int64)
    for lengths, count in zip(strategies, counts, strict=True):
        for length in lengths:
            covered[length] += count
    excess = np.maximum(covered[1:] - hist, 0)
    leftover = np.maximum(hist - covered[1:], 0)
    # Empty the slots that the rounded counts fill beyond the histogram: (lengths, n) loses one sequence
    # of an over-filled length in min(n, excess) of its packs, until no over-filled length is left in it.
    packs: dict[tuple[int, ...], int] = defaultdict(int)
    work = [(lengths, int(n)) for lengths, n in zip(strategies, counts, strict=True) if n]
    while work:
        lengths, n = work.pop()
        over = next((x for x in dict.fromkeys(lengths) if excess[x - 1]), None)
        if over is None:
            packs[lengths] += n
            continue
        emptied = min(n, int(excess[over - 1]))
        excess[over - 1] -= emptied
        rest = list(lengths)
        rest.remove(over)
        if rest:
            work.append((tuple(rest), emptied))
        if n > emptied:
            work.append((lengths, n - emptied))
    if residual == "spfhp":
        for lengths, n in spfhp(leftover, max_len, max_per_pack).strategies:
            packs[lengths] += n
    else:
        for length in np.flatnonzero(leftover) + 1:
            packs[(int(length),)] += int(leftover[length - 1])
    return make_plan(packs, max_sequence_length=max_len, max_sequences_per_pack=max_per_pack, algorithm="nnlshp")


ALGORITHMS = {"spfhp": spfhp, "nnlshp": nnlshp}


def assign(lengths: np.ndarray, plan: Plan, seed) -> np.ndarray:
    """Deal sequences into the plan's packs: -> (packs, max_sequences_per_pack) int64 of sequence indices,
    -1 for an empty slot, longest sequence first in each pack. Every sequence is used exactly once; which
    sequence of a length goes where, and the order of the packs, are random in `seed` (anything
    np.random.default_rng takes)."""
    lengths = np.asarray(lengths)
    counts = histogram(lengths, plan.max_sequence_length)
    if not np.array_equal(counts, plan.histogram()):
        differ = np.flatnonzero(counts != plan.histogram())[0] + 1
        raise ValueError(f"the plan does not fit these sequences: {plan.histogram()[differ - 1]} of length {differ} "
                         f"planned, {counts[differ - 1]} given")
    table = np.zeros((len(plan.strategies), plan.max_sequences_per_pack), np.int64)
    for i, (strategy, _) in enumerate(plan.strategies):
        table[i, : len(strategy)] = strategy
    rng = np.random.default_rng(seed)
    slots = np.repeat(table, [count for _, count in plan.strategies], axis=0)
    slots = slots[rng.permutation(len(slots))].ravel()  # (packs * K,) the length each slot takes, 0 = empty
    filled = np.flatnonzero(slots)
    slot_order = filled[np.argsort(slots[filled], kind="stable")]  # slots grouped by length
    shuffled = rng.permutation(len(lengths))
    sequence_order = shuffled[np.argsort(lengths[shuffled], kind="stable")]  # sequences grouped by length
    out = np.full(slots.shape, -1, np.int64)
    out[slot_order] = sequence_order
    return out.reshape(-1, plan.max_sequences_per_pack)
