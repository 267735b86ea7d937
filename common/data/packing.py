"""Offline sequence packing for BERT (Krell, Kosec et al., arXiv 2107.02027): several whole sequences per row.

Pack a converted folder (written by `bert_wiki convert` or `bert_wiki synthetic`) into a packed folder:
    python -m mlperf_submission.common.data.packing --algorithm nnlshp --max-per-pack 3 SRC OUT
    (or: make data BENCH=bert PACK=nnlshp SRC=SRC OUT=OUT)
Check a packed folder against its manifest (shapes, dtypes, sha256, plans):
    python -m mlperf_submission.common.data.packing --verify OUT

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

Layout of OUT: `manifest.json` (format, shapes, dtypes, sha256 of every file), `plan.json` (the plan of each
split with its efficiency), and `train/<field>.npy`, `eval/<field>.npy`: both splits are packed, the eval
split with the same algorithm (its masked-LM accuracy is a sum over predictions, which packing does not
change). Per pack (S = seq_len, K = max sequences per pack, Q = max predictions per pack: by default the
most in any pack of either split, or fixed with --max-pred-per-pack so that other data packs to the same
shape; PackedDataset can also pad Q up on reading):
  input_ids, segment_ids, position_ids, sequence_ids (S,)     tokens; position restarts at 0 with each
                                                             sequence; sequence_ids 1..k, 0 for padding
  masked_lm_positions, masked_lm_ids, masked_lm_weights,
  masked_lm_sequence (Q,)                                    predictions, positions within the pack;
                                                             masked_lm_sequence 1..k, 0 for padding
  nsp_positions, next_sentence_labels, nsp_weights (K,)      each sequence's [CLS] position, its label,
                                                             1.0 for a real sequence, 0 for an empty slot
  source_index (K,)                                          row of each sequence in SRC, -1 for empty
Dtypes are bert_wiki's (token ids uint16, segments uint8, weights float32); new fields take those of their
siblings. Written to a temporary folder renamed into place; bad input exits 2 with one line `error: ...`.
Measured on the Wikipedia histogram on a 2-core CPU machine shared with other jobs: SPFHP 0.02 s; NNLSHP
17-50 s, nearly all of it scipy's single-threaded NNLS solve (the paper: 0.03 s and 24-28 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import optimize

from mlperf_submission.common.cli import (
    ArgumentParser,
    UserError,
    atomic_dir,
    atomic_write_text,
    entry_point,
    sha256_file,
)
from mlperf_submission.common.data import bert_wiki
from mlperf_submission.common.data.bert_wiki import SPLITS, DataError

FORMAT = "mlperf-bert-packed"
VERSION = 1
# NNLSHP's matrix has one column per strategy: 22,102 at 512 and depth 3 (90 MB, about 20 s to solve).
MAX_NNLS_STRATEGIES = 60_000
# The paper's weight on the residual of lengths 1..8: leaving a short sequence over costs little padding.
SHORT_LENGTHS, SHORT_WEIGHT = 8, 0.09
CHUNK_PACKS = 4096  # packs gathered at a time when writing a folder: bounds memory to ~100 MB at 512
FIELDS = ("input_ids", "segment_ids", "position_ids", "sequence_ids", "masked_lm_positions", "masked_lm_ids",
          "masked_lm_weights", "masked_lm_sequence", "nsp_positions", "next_sentence_labels", "nsp_weights")
FLOAT_FIELDS = ("masked_lm_weights", "nsp_weights")
PREDICTION_FIELDS = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights", "masked_lm_sequence")


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
            if not (
                isinstance(lengths, tuple) and lengths and len(lengths) <= self.max_sequences_per_pack
                and all(isinstance(x, int) and 1 <= x <= self.max_sequence_length for x in lengths)
                and sum(lengths) <= self.max_sequence_length and list(lengths) == sorted(lengths, reverse=True)
                and isinstance(count, int) and count >= 1
            ):  # fmt: skip
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
            plan = cls(
                max_sequence_length=data["max_sequence_length"],
                max_sequences_per_pack=data["max_sequences_per_pack"],
                strategies=tuple((tuple(lengths), count) for lengths, count in data["strategies"]),
                algorithm=data.get("algorithm", ""),
            )
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
    return Plan(
        max_sequence_length=max_sequence_length,
        max_sequences_per_pack=max_sequences_per_pack,
        strategies=tuple(sorted(merged.items(), reverse=True)),
        algorithm=algorithm,
    )


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
    counts, _ = optimize.nnls(weight[:, None] * matrix, weight * hist)
    return strategies, counts


def nnlshp(
    hist: np.ndarray, max_len: int, max_per_pack: int = 3, *, residual: str = "spfhp",
    solution: tuple[list[tuple[int, ...]], np.ndarray] | None = None,
) -> Plan:
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
        raise ValueError(
            f"the plan does not fit these sequences: {plan.histogram()[differ - 1]} of length {differ} "
            f"planned, {counts[differ - 1]} given"
        )
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


def pack_arrays(
    arrays: Mapping[str, np.ndarray], packs: np.ndarray, max_sequences_per_pack: int,
    max_predictions_per_pack: int | None = None,
) -> dict[str, np.ndarray]:
    """Unpacked bert_wiki arrays (N rows; memory-mapped is fine) and packs (n, <= K) of row indices, -1
    for empty slots after the filled ones -> packed arrays of n rows (see the module docstring).

    Shared fields keep their input dtype; new ones take their sibling's (position_ids and nsp_positions
    that of masked_lm_positions, sequence_ids and masked_lm_sequence that of segment_ids, nsp_weights that
    of masked_lm_weights). A prediction is an entry with a non-zero weight. Q defaults to the most
    predictions in one of these packs. Raises ValueError for packs that do not fit.
    """
    packs = np.asarray(packs)
    n, width = packs.shape
    if width > max_sequences_per_pack:
        raise ValueError(f"packs hold up to {width} sequences, more than {max_sequences_per_pack}")
    filled = packs >= 0
    if (filled[:, 1:] & ~filled[:, :-1]).any():
        raise ValueError("empty slots (-1) must come after a pack's sequences")
    rows, slots = np.nonzero(filled)  # pack by pack, in slot order
    index = packs[rows, slots]
    count, seq_len = arrays["input_ids"].shape
    if index.size and index.max() >= count:
        raise ValueError(f"packs name sequence {index.max()}, but there are {count}")
    mask = np.asarray(arrays["input_mask"][index]) != 0  # (m, S)
    length = mask.sum(1)
    position = np.arange(seq_len)
    token = position < length[:, None]  # (m, S): the sequence's tokens, at its start
    if not np.array_equal(mask, token) or (length == 0).any():
        bad = index[np.flatnonzero((mask != token).any(1) | (length == 0))[0]]
        raise DataError(f"sequence {bad}: input_mask is not a non-empty run of ones from position 0")
    grid = np.zeros((n, max_sequences_per_pack), np.int64)
    grid[rows, slots] = length
    ends = np.cumsum(grid, 1)
    if n and ends[:, -1].max() > seq_len:
        raise ValueError(f"pack {np.argmax(ends[:, -1])} holds {ends[:, -1].max()} tokens, more than {seq_len}")
    start = (ends - grid)[rows, slots]  # (m,) where each sequence starts in its pack
    pack_of_token = np.repeat(rows, length)
    pack_position = (start[:, None] + position)[token]
    sequence_id = slots + 1
    out = {}
    for name, source, values in (
        ("input_ids", "input_ids", np.asarray(arrays["input_ids"][index])[token]),
        ("segment_ids", "segment_ids", np.asarray(arrays["segment_ids"][index])[token]),
        ("position_ids", "masked_lm_positions", np.broadcast_to(position, token.shape)[token]),
        ("sequence_ids", "segment_ids", np.repeat(sequence_id, length)),
    ):
        out[name] = np.zeros((n, seq_len), arrays[source].dtype)
        out[name][pack_of_token, pack_position] = values

    weights = np.asarray(arrays["masked_lm_weights"][index])  # (m, P)
    predicted = weights != 0
    predictions = predicted.sum(1)
    grid[:] = 0
    grid[rows, slots] = predictions
    ends = np.cumsum(grid, 1)
    most = int(ends[:, -1].max(initial=0))
    limit = most if max_predictions_per_pack is None else max_predictions_per_pack
    if most > limit:
        raise ValueError(
            f"pack {np.argmax(ends[:, -1])} holds {most} masked-LM predictions, more than "
            f"max_predictions_per_pack {limit}"
        )
    positions = np.asarray(arrays["masked_lm_positions"][index])
    beyond = (predicted & (positions >= length[:, None])).any(1)
    if beyond.any():
        raise DataError(f"sequence {index[np.argmax(beyond)]}: a masked-LM position lies beyond the sequence")
    owner = np.repeat(np.arange(len(index)), predictions)  # (predictions,) which sequence each belongs to
    pack_of_prediction = rows[owner]
    slot = (ends - grid)[rows, slots][owner] + (np.cumsum(predicted, 1) - 1)[predicted]
    for name, source, values in (
        ("masked_lm_positions", "masked_lm_positions", positions[predicted] + start[owner]),
        ("masked_lm_ids", "masked_lm_ids", np.asarray(arrays["masked_lm_ids"][index])[predicted]),
        ("masked_lm_weights", "masked_lm_weights", weights[predicted]),
        ("masked_lm_sequence", "segment_ids", sequence_id[owner]),
    ):
        out[name] = np.zeros((n, limit), arrays[source].dtype)
        out[name][pack_of_prediction, slot] = values

    for name, source, values in (
        ("nsp_positions", "masked_lm_positions", start),  # a sequence's [CLS] is its first token
        ("next_sentence_labels", "next_sentence_labels", np.asarray(arrays["next_sentence_labels"][index])),
        ("nsp_weights", "masked_lm_weights", 1),
    ):
        out[name] = np.zeros((n, max_sequences_per_pack), arrays[source].dtype)
        out[name][rows, slots] = values
    return out


def first_fit_rows(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Lengths of one batch (B,) -> rows (n, K) of their indices, -1 for empty slots: first-fit decreasing, each
    sequence into the first row with room, longest first. This is closed BERT's unpadded layout of a batch
    (`unpadded_batch`): the same sequences in fewer rows, not a change of which sequences train together."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        need = int(lengths[i])
        if need > seq_len:
            raise ValueError(f"sequence {i} holds {need} tokens, more than {seq_len}")
        for r, free in enumerate(room):
            if free >= need:
                rows[r].append(int(i))
                room[r] -= need
                break
        else:
            rows.append([int(i)])
            room.append(seq_len - need)
    out = np.full((len(rows), max((len(r) for r in rows), default=1)), -1, np.int64)
    for r, members in enumerate(rows):
        out[r, : len(members)] = members
    return out


def unpadded_batch(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One batch of unpacked bert_wiki arrays (B rows of S) -> the same sequences without their padding: packed
    arrays (see the module docstring) of as few rows of S as first-fit finds, each holding up to K = the most
    sequences any row needed, with Q = the most predictions any row holds. Shapes change from batch to batch."""
    seq_len = arrays["input_ids"].shape[1]
    rows = first_fit_rows(np.asarray(arrays["input_mask"]).sum(1), seq_len)
    return pack_arrays(arrays, rows, rows.shape[1])


# ---------------------------------------------------------------------------------------------------------
# Packed folders
# ---------------------------------------------------------------------------------------------------------


def packed_specs(seq_len: int, max_per_pack: int, max_pred_per_pack: int) -> dict[str, tuple[tuple, np.dtype]]:
    """field -> (per-pack shape, storage dtype) of a packed folder."""
    stored = {name: dtype for name, (_, _, dtype, _) in bert_wiki.feature_specs(seq_len, 1).items()}
    token, prediction, sequence = (seq_len,), (max_pred_per_pack,), (max_per_pack,)
    return {
        "input_ids": (token, stored["input_ids"]),
        "segment_ids": (token, stored["segment_ids"]),
        "position_ids": (token, stored["masked_lm_positions"]),
        "sequence_ids": (token, stored["segment_ids"]),
        "masked_lm_positions": (prediction, stored["masked_lm_positions"]),
        "masked_lm_ids": (prediction, stored["masked_lm_ids"]),
        "masked_lm_weights": (prediction, stored["masked_lm_weights"]),
        "masked_lm_sequence": (prediction, stored["segment_ids"]),
        "nsp_positions": (sequence, stored["masked_lm_positions"]),
        "next_sentence_labels": (sequence, stored["next_sentence_labels"]),
        "nsp_weights": (sequence, stored["masked_lm_weights"]),
        "source_index": (sequence, np.dtype(np.int32)),
    }


def _row_sums(array: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Per-row count of non-zero entries of a (memory-mapped) 2-D array, read a chunk of rows at a time."""
    return np.concatenate(
        [(np.asarray(array[i : i + chunk]) != 0).sum(1) for i in range(0, len(array), chunk)] or [np.zeros(0, int)]
    ).astype(np.int64)


def write_packed(src, out, *, algorithm: str, max_per_pack: int, seed: int = 0,
                 max_pred_per_pack: int | None = None) -> dict:
    """Pack both splits of a converted folder into a new packed folder; -> its manifest. Raises DataError.

    max_pred_per_pack fixes Q, the masked-LM predictions per pack, so that folders packed apart (or the
    in-memory packs of pack_arrays) have the same shape; None: the most in any pack of either split."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; remove it or choose another output folder")
    if algorithm not in ALGORITHMS:
        raise DataError(f"unknown packing algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    if not 1 <= max_per_pack <= 255:  # sequence ids are stored as uint8
        raise DataError(f"--max-per-pack must be in 1..255, got {max_per_pack}")
    if max_pred_per_pack is not None and not (_is_int(max_pred_per_pack) and max_pred_per_pack >= 1):
        raise DataError(f"--max-pred-per-pack must be an integer >= 1, got {max_pred_per_pack!r}")
    source = bert_wiki.verify(src)
    seq_len = source["seq_len"]
    splits = {}
    for number, split in enumerate(SPLITS):
        arrays = {
            name: np.load(src / info["file"], mmap_mode="r") for name, info in source["splits"][split]["arrays"].items()
        }
        lengths = _row_sums(arrays["input_mask"])
        if (lengths == 0).any():
            raise DataError(f"{src}: {split} sequence {np.argmin(lengths)} is empty (input_mask all zero)")
        started = time.perf_counter()
        try:
            plan = ALGORITHMS[algorithm](histogram(lengths, seq_len), seq_len, max_per_pack)
        except ValueError as e:
            raise DataError(str(e)) from None
        seconds = time.perf_counter() - started
        packs = assign(lengths, plan, [seed, number])
        predictions = _row_sums(arrays["masked_lm_weights"])
        totals = np.where(packs >= 0, predictions[np.maximum(packs, 0)], 0).sum(1)
        splits[split] = {"arrays": arrays, "plan": plan, "packs": packs, "most": int(totals.max(initial=0)),
                         "seconds": seconds}
    most = max(entry["most"] for entry in splits.values())
    if max_pred_per_pack is None:
        max_pred_per_pack = most
    elif most > max_pred_per_pack:
        raise DataError(f"a pack holds {most} masked-LM predictions, more than --max-pred-per-pack {max_pred_per_pack}")
    specs = packed_specs(seq_len, max_per_pack, max_pred_per_pack)
    with atomic_dir(out) as tmp:
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "seq_len": seq_len,
            "max_pred": source["max_pred"],
            "max_sequences_per_pack": max_per_pack,
            "max_predictions_per_pack": max_pred_per_pack,
            "algorithm": algorithm,
            "seed": seed,
            "source": {"folder": str(src.resolve()), "manifest_sha256": sha256_file(src / "manifest.json")},
            "splits": {},
        }
        for split, entry in splits.items():
            (tmp / split).mkdir()
            packs, n = entry["packs"], len(entry["packs"])
            written = {
                name: np.lib.format.open_memmap(tmp / split / f"{name}.npy", "w+", dtype, (n, *shape))
                for name, (shape, dtype) in specs.items()
            }
            for a in range(0, n, CHUNK_PACKS):
                part = pack_arrays(entry["arrays"], packs[a : a + CHUNK_PACKS], max_per_pack, max_pred_per_pack)
                part["source_index"] = packs[a : a + CHUNK_PACKS]
                for name, array in written.items():
                    array[a : a + CHUNK_PACKS] = part[name]
            for array in written.values():
                array.flush()
            del written
            plan = entry["plan"]
            manifest["splits"][split] = {
                "count": n,
                "sequences": plan.sequences,
                "efficiency": plan.efficiency,
                "speedup": plan.speedup,
                "plan_seconds": round(entry["seconds"], 3),
                "arrays": {
                    name: {"file": f"{split}/{name}.npy", "shape": [n, *shape], "dtype": dtype.str,
                           "sha256": sha256_file(tmp / split / f"{name}.npy")}
                    for name, (shape, dtype) in specs.items()
                },
            }
        # One split a line, its figures before its (long) list of strategies.
        lines = [f"{json.dumps(split)}: {json.dumps(entry['plan'].to_dict())}" for split, entry in splits.items()]
        atomic_write_text(tmp / "plan.json", "{\n" + ",\n".join(lines) + "\n}\n")
        manifest["plan"] = {"file": "plan.json", "sha256": sha256_file(tmp / "plan.json")}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_relative_file(value) -> bool:
    """A manifest's file names stay inside its folder."""
    return isinstance(value, str) and bool(value) and not Path(value).is_absolute() and ".." not in Path(value).parts


def _manifest(folder: Path) -> dict:
    """Read and check the structure of folder/manifest.json (every field that verify and PackedDataset read,
    with its type), so that a hand-edited manifest fails in one line naming the file. Raises DataError."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} is missing; pack the data first (make data BENCH=bert PACK=...)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"{path}: not a {FORMAT} v{VERSION} manifest")

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DataError(f"{path}: {what}; re-pack the data or restore the manifest")

    for key, low, high in (("seq_len", 1, None), ("max_sequences_per_pack", 1, 255),
                           ("max_predictions_per_pack", 0, None)):  # fmt: skip
        value = manifest.get(key)
        need(_is_int(value) and value >= low and (high is None or value <= high),
             f"{key!r} must be an integer " + (f"in {low}..{high}" if high else f">= {low}") + f", got {value!r}")
    plan = manifest.get("plan")
    need(isinstance(plan, dict) and _is_relative_file(plan.get("file")) and isinstance(plan.get("sha256"), str),
         f"'plan' must be {{\"file\": a relative path, \"sha256\": a string}}, got {plan!r}")
    splits = manifest.get("splits")
    need(isinstance(splits, dict), f"'splits' must be an object of splits, got {type(splits).__name__}")
    for split, entry in splits.items():
        need(isinstance(entry, dict) and _is_int(entry.get("count")) and _is_int(entry.get("sequences"))
             and isinstance(entry.get("arrays"), dict),
             f"split {split!r} needs integer 'count' and 'sequences' and an object 'arrays'")
        for name, info in entry["arrays"].items():
            need(isinstance(info, dict) and _is_relative_file(info.get("file")) and isinstance(info.get("dtype"), str)
                 and isinstance(info.get("sha256"), str) and isinstance(info.get("shape"), list)
                 and all(_is_int(x) and x >= 0 for x in info["shape"]),
                 f"array {split}/{name} needs a relative 'file', a string 'dtype' and 'sha256', and a 'shape' of "
                 "non-negative integers")
    return manifest


def verify(folder) -> dict:
    """Check a packed folder against its manifest: every array (presence, shape, dtype, sha256) and the plans
    (checksum, and packs and sequences matching the arrays); -> manifest. Raises DataError."""
    folder = Path(folder)
    manifest = _manifest(folder)
    plan_path = folder / manifest["plan"]["file"]
    if not plan_path.is_file() or sha256_file(plan_path) != manifest["plan"]["sha256"]:
        raise DataError(f"{plan_path} is missing or its sha256 differs from the manifest")
    try:
        plans = json.loads(plan_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{plan_path}: not JSON ({e})") from None
    if not isinstance(plans, dict):
        raise DataError(f"{plan_path}: must be an object of plans by split")
    specs = packed_specs(manifest["seq_len"], manifest["max_sequences_per_pack"], manifest["max_predictions_per_pack"])
    for split in SPLITS:
        entry = manifest["splits"].get(split)
        if entry is None or set(entry["arrays"]) != set(specs) or split not in plans:
            raise DataError(f"{folder / 'manifest.json'}: split {split!r} is missing or incomplete")
        try:
            plan = Plan.from_dict(plans[split])
        except ValueError as e:
            raise DataError(f"{plan_path}: {split}: {e}") from None
        if (plan.max_sequence_length, plan.max_sequences_per_pack) != (
            manifest["seq_len"], manifest["max_sequences_per_pack"]
        ):
            raise DataError(f"{plan_path}: the {split} plan is for another length or depth than the manifest's")
        if (plan.packs, plan.sequences) != (entry["count"], entry["sequences"]):
            raise DataError(f"{plan_path}: the {split} plan does not match the manifest's pack and sequence counts")
        for name, (shape, dtype) in specs.items():
            info = entry["arrays"][name]
            bert_wiki.verify_array(folder / info["file"], info, entry["count"], dtype, shape)
    return manifest


class PackedDataset(torch.utils.data.Dataset):
    """One split of a packed folder, memory-mapped; item i -> dict of the packed fields (not source_index)
    as tensors, int64 except masked_lm_weights and nsp_weights (float32).

    max_predictions_per_pack: the Q of the items (default: the folder's); a larger Q pads the prediction
    fields with zeros, so that folders packed apart, or in-memory packs, batch to the same shape.
    Raises DataError for a malformed manifest or a Q below the folder's.
    """

    def __init__(self, folder, split: str = "train", *, max_predictions_per_pack: int | None = None):
        folder = Path(folder)
        manifest = _manifest(folder)
        path = folder / "manifest.json"
        if split not in manifest["splits"]:
            raise DataError(f"{path}: no split {split!r}")
        entry = manifest["splits"][split]
        stored = manifest["max_predictions_per_pack"]
        if max_predictions_per_pack is None:
            max_predictions_per_pack = stored
        if not _is_int(max_predictions_per_pack):
            raise DataError(f"max_predictions_per_pack must be an integer, got {max_predictions_per_pack!r}")
        if max_predictions_per_pack < stored:
            raise DataError(
                f"{path}: packs hold up to {stored} masked-LM predictions, more than the "
                f"{max_predictions_per_pack} asked for; re-pack with --max-pred-per-pack {max_predictions_per_pack}"
            )
        self.max_sequences_per_pack = manifest["max_sequences_per_pack"]
        self.max_predictions_per_pack = max_predictions_per_pack
        self.sequences = entry["sequences"]
        self.count = entry["count"]
        specs = packed_specs(manifest["seq_len"], self.max_sequences_per_pack, stored)
        self.arrays = {}
        for name in FIELDS:
            info = entry["arrays"].get(name)
            if info is None:
                raise DataError(f"{path}: split {split!r} lists no array {name!r}")
            array = bert_wiki.load_array(folder / info["file"])
            expected = [self.count, *specs[name][0]]
            if list(array.shape) != expected or info["shape"] != expected or array.dtype.str != info["dtype"]:
                raise DataError(f"{folder / info['file']}: does not match the manifest; run verify")
            self.arrays[name] = array

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {}
        for name, array in self.arrays.items():
            row = np.array(array[i], dtype=np.float32 if name in FLOAT_FIELDS else np.int64)
            if name in PREDICTION_FIELDS:  # zeros are padding: weight 0, sequence 0
                row = np.pad(row, (0, self.max_predictions_per_pack - len(row)))
            item[name] = torch.from_numpy(row)
        return item


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m mlperf_submission.common.data.packing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", nargs="?", type=Path, help="a folder written by bert_wiki convert or synthetic")
    parser.add_argument("out", nargs="?", type=Path, help="the packed folder to write (must not exist)")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="nnlshp")
    parser.add_argument("--max-per-pack", type=int, default=3, help="sequences per pack at most (default 3)")
    parser.add_argument("--max-pred-per-pack", type=int, default=None,
                        help="masked-LM predictions per pack (default: the most in any pack)")
    parser.add_argument("--seed", type=int, default=0, help="seeds which sequences go into which pack")
    parser.add_argument("--verify", type=Path, metavar="PACKED", help="check a packed folder instead of packing")
    args = parser.parse_args(argv)
    try:
        if args.verify is not None:
            if args.src or args.out:
                parser.error("--verify takes no SRC or OUT")
            manifest = verify(args.verify)
            print(f"verify: {args.verify}: " + ", ".join(
                f"{split} {manifest['splits'][split]['sequences']} sequences in {manifest['splits'][split]['count']} "
                "packs" for split in SPLITS))
            return 0
        if args.out is None:
            parser.error("give SRC and OUT (or --verify PACKED)")
        manifest = write_packed(args.src, args.out, algorithm=args.algorithm, max_per_pack=args.max_per_pack,
                                seed=args.seed, max_pred_per_pack=args.max_pred_per_pack)
    except (DataError, ValueError, OSError) as e:
        raise UserError(str(e)) from None
    for split in SPLITS:
        entry = manifest["splits"][split]
        print(f"{split}: {entry['sequences']} sequences in {entry['count']} packs of up to "
              f"{manifest['max_sequences_per_pack']}, efficiency {100 * entry['efficiency']:.3f} % "
              f"(speed-up {entry['speedup']:.5f}; {args.algorithm} in {entry['plan_seconds']:.3f} s)")
    print(f"wrote {args.out} (max {manifest['max_predictions_per_pack']} predictions per pack)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
