"""Packed folders: `verify` checks one, `PackedDataset` reads one (`write.write_packed` writes one).

Layout: `manifest.json` (format, shapes, dtypes, sha256 of every file), `plan.json` (the plan of each split
with its efficiency), and `train/<field>.npy`, `eval/<field>.npy` (the fields of `rows`, plus source_index
(K,): the row of each sequence in SRC, -1 for empty). Both splits are packed, the eval split with the same
algorithm (its masked-LM accuracy is a sum over predictions, which packing does not change). Q is the most
predictions in any pack of either split, or fixed with --max-pred-per-pack so that other data packs to the
same shape; PackedDataset can also pad Q up on reading. Dtypes are bert_wiki's (token ids uint16, segments
uint8, weights float32); new fields take those of their siblings. Written to a temporary folder renamed
into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...cli import sha256_file
from .. import bert_wiki
from ..bert_wiki import SPLITS, DataError
from .algorithms import Plan
from .rows import FIELDS, FLOAT_FIELDS, PREDICTION_FIELDS

FORMAT = "mlperf-bert-packed"
VERSION = 1


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_relative_file(value) -> bool:
    """A manifest's file names stay inside its folder."""
    return isinstance(value, str) and bool(value) and not Path(value).is_absolute() and ".." not in Path(value).parts


def _manifest(folder: Path) -> dict:
    """Read and check the structure of folder/manifest.json (every field that verify and PackedDataset read,
    with its type), so that a hand-edited manifest fails in one line naming the file. Raises DataError."""
    path = folder / "manifest.json"
    manifest = bert_wiki.read_manifest(folder, FORMAT, VERSION, "pack the data first (make data BENCH=bert PACK=...)")

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
