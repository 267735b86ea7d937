"""Packed rows of sequences: `pack_arrays` lays given packs of bert_wiki rows out, `unpadded_batch` is closed
BERT's per-batch layout (the same sequences in fewer rows, by first fit). The fields of a packed row:
  input_ids, segment_ids, position_ids, sequence_ids (S,)     tokens; position restarts at 0 with each
                                                             sequence; sequence_ids 1..k, 0 for padding
  masked_lm_positions, masked_lm_ids, masked_lm_weights,
  masked_lm_sequence (Q,)                                    predictions, positions within the pack;
                                                             masked_lm_sequence 1..k, 0 for padding
  nsp_positions, next_sentence_labels, nsp_weights (K,)      each sequence's [CLS] position, its label,
                                                             1.0 for a real sequence, 0 for an empty slot
(S = seq_len, K = max sequences per pack, Q = max predictions per pack.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..bert_wiki import DataError

FIELDS = ("input_ids", "segment_ids", "position_ids", "sequence_ids", "masked_lm_positions", "masked_lm_ids",
          "masked_lm_weights", "masked_lm_sequence", "nsp_positions", "next_sentence_labels", "nsp_weights")
FLOAT_FIELDS = ("masked_lm_weights", "nsp_weights")
PREDICTION_FIELDS = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights", "masked_lm_sequence")


def pack_arrays(arrays: Mapping[str, np.ndarray], packs: np.ndarray, max_sequences_per_pack: int,
                max_predictions_per_pack: int | None = None) -> dict[str, np.ndarray]:
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
    token = np.arange(seq_len) < length[:, None]  # (m, S): the sequence's tokens, at its start
    if not np.array_equal(mask, token) or (length == 0).any():
        bad = index[np.flatnonzero((mask != token).any(1) | (length == 0))[0]]
        raise DataError(f"sequence {bad}: input_mask is not a non-empty run of ones from position 0")
    grid = np.zeros((n, max_sequences_per_pack), np.int64)
    grid[rows, slots] = length
    ends = np.cumsum(grid, 1)
    if n and ends[:, -1].max() > seq_len:
        raise ValueError(f"pack {np.argmax(ends[:, -1])} holds {ends[:, -1].max()} tokens, more than {seq_len}")
    start = (ends - grid)[rows, slots]  # (m,) where each sequence starts in its pack
    out = _token_fields(arrays, index, rows, token, start, slots + 1, n)
    out.update(_prediction_fields(arrays, index, (rows, slots), length, start, grid.shape, max_predictions_per_pack))
    for name, source, values in (
        ("nsp_positions", "masked_lm_positions", start),  # a sequence's [CLS] is its first token
        ("next_sentence_labels", "next_sentence_labels", np.asarray(arrays["next_sentence_labels"][index])),
        ("nsp_weights", "masked_lm_weights", 1),
    ):
        out[name] = np.zeros((n, max_sequences_per_pack), arrays[source].dtype)
        out[name][rows, slots] = values
    return out


def _token_fields(arrays: Mapping[str, np.ndarray], index: np.ndarray, rows: np.ndarray, token: np.ndarray,
                  start: np.ndarray, sequence_id: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The (n, S) fields of `pack_arrays`: sequence `index[j]` (its `token` mask (m, S)) goes to pack
    `rows[j]` of n from position `start[j]`, as sequence number `sequence_id[j]` (1-based)."""
    seq_len = token.shape[1]
    length = token.sum(1)
    pack_of_token = np.repeat(rows, length)
    position = np.arange(seq_len)
    pack_position = (start[:, None] + position)[token]
    out = {}
    for name, source, values in (
        ("input_ids", "input_ids", np.asarray(arrays["input_ids"][index])[token]),
        ("segment_ids", "segment_ids", np.asarray(arrays["segment_ids"][index])[token]),
        ("position_ids", "masked_lm_positions", np.broadcast_to(position, token.shape)[token]),
        ("sequence_ids", "segment_ids", np.repeat(sequence_id, length)),
    ):
        out[name] = np.zeros((n, seq_len), arrays[source].dtype)
        out[name][pack_of_token, pack_position] = values
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


def _prediction_fields(arrays: Mapping[str, np.ndarray], index: np.ndarray, where: tuple[np.ndarray, np.ndarray],
                       length: np.ndarray, start: np.ndarray, shape: tuple[int, int],
                       limit: int | None) -> dict[str, np.ndarray]:
    """The (n, Q) fields of `pack_arrays`: the predictions (non-zero weights) of sequence `index[j]` (`length[j]`
    tokens), in slot where[1][j] of pack where[0][j] starting at token `start[j]`, one after another in each
    pack; Q = `limit`, or the most in one pack if None. Raises ValueError if a pack holds more than `limit`."""
    rows, slots = where
    weights = np.asarray(arrays["masked_lm_weights"][index])  # (m, P)
    predicted = weights != 0
    predictions = predicted.sum(1)
    grid = np.zeros(shape, np.int64)
    grid[rows, slots] = predictions
    ends = np.cumsum(grid, 1)
    most = int(ends[:, -1].max(initial=0))
    limit = most if limit is None else limit
    if most > limit:
        raise ValueError(f"pack {np.argmax(ends[:, -1])} holds {most} masked-LM predictions, more than "
                         f"max_predictions_per_pack {limit}")
    positions = np.asarray(arrays["masked_lm_positions"][index])
    beyond = (predicted & (positions >= length[:, None])).any(1)
    if beyond.any():
        raise DataError(f"sequence {index[np.argmax(beyond)]}: a masked-LM position lies beyond the sequence")
    owner = np.repeat(np.arange(len(index)), predictions)  # (predictions,) which sequence each belongs to
    pack_of_prediction = rows[owner]
    slot = (ends - grid)[rows, slots][owner] + (np.cumsum(predicted, 1) - 1)[predicted]
    out = {}
    for name, source, values in (
        ("masked_lm_positions", "masked_lm_positions", positions[predicted] + start[owner]),
        ("masked_lm_ids", "masked_lm_ids", np.asarray(arrays["masked_lm_ids"][index])[predicted]),
        ("masked_lm_weights", "masked_lm_weights", weights[predicted]),
        ("masked_lm_sequence", "segment_ids", (slots + 1)[owner]),
    ):
        out[name] = np.zeros((shape[0], limit), arrays[source].dtype)
        out[name][pack_of_prediction, slot] = values
    return out
