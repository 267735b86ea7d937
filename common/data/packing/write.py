"""Write a packed folder (see `folder`): plan and assign the packs of both splits of a converted folder, then write
their arrays in chunks into a temporary folder renamed into place. The preparation step: training never imports it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ...cli import atomic_dir, atomic_write_text, sha256_file
from .. import bert_wiki
from ..bert_wiki import SPLITS, DataError
from .algorithms import ALGORITHMS, assign, histogram
from .folder import FORMAT, VERSION, _is_int, packed_specs
from .rows import pack_arrays

CHUNK_PACKS = 4096  # packs gathered at a time when writing a folder: bounds memory to ~100 MB at 512


def _row_sums(array: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Per-row count of non-zero entries of a (memory-mapped) 2-D array, read a chunk of rows at a time."""
    return np.concatenate(
        [(np.asarray(array[i : i + chunk]) != 0).sum(1) for i in range(0, len(array), chunk)] or [np.zeros(0, int)]
    ).astype(np.int64)


def _plan_split(src: Path, files: dict, split: str, algorithm: str, max_per_pack: int, seed: list[int],
                seq_len: int) -> dict:
    """Plan and assign the packs of one split of a converted folder (its arrays memory-mapped from `files`)."""
    arrays = {name: np.load(src / info["file"], mmap_mode="r") for name, info in files.items()}
    lengths = _row_sums(arrays["input_mask"])
    if (lengths == 0).any():
        raise DataError(f"{src}: {split} sequence {np.argmin(lengths)} is empty (input_mask all zero)")
    started = time.perf_counter()
    try:
        plan = ALGORITHMS[algorithm](histogram(lengths, seq_len), seq_len, max_per_pack)
    except ValueError as e:
        raise DataError(str(e)) from None
    seconds = time.perf_counter() - started
    packs = assign(lengths, plan, seed)
    predictions = _row_sums(arrays["masked_lm_weights"])
    totals = np.where(packs >= 0, predictions[np.maximum(packs, 0)], 0).sum(1)
    return {"arrays": arrays, "plan": plan, "packs": packs, "most": int(totals.max(initial=0)), "seconds": seconds}


def _write_split(tmp: Path, split: str, entry: dict, specs: dict, max_per_pack: int, max_pred_per_pack: int) -> dict:
    """Write one planned split's arrays into tmp/split/, CHUNK_PACKS packs at a time; -> its manifest entry."""
    (tmp / split).mkdir()
    packs, n = entry["packs"], len(entry["packs"])
    written = {name: np.lib.format.open_memmap(tmp / split / f"{name}.npy", "w+", dtype, (n, *shape))
               for name, (shape, dtype) in specs.items()}
    for a in range(0, n, CHUNK_PACKS):
        part = pack_arrays(entry["arrays"], packs[a : a + CHUNK_PACKS], max_per_pack, max_pred_per_pack)
        part["source_index"] = packs[a : a + CHUNK_PACKS]
        for name, array in written.items():
            array[a : a + CHUNK_PACKS] = part[name]
    for array in written.values():
        array.flush()
    del written
    plan = entry["plan"]
    return {
        "count": n, "sequences": plan.sequences, "efficiency": plan.efficiency, "speedup": plan.speedup,
        "plan_seconds": round(entry["seconds"], 3),
        "arrays": {name: {"file": f"{split}/{name}.npy", "shape": [n, *shape], "dtype": dtype.str,
                          "sha256": sha256_file(tmp / split / f"{name}.npy")}
                   for name, (shape, dtype) in specs.items()},
    }


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
    source = bert_wiki.verify(src, full=True)
    seq_len = source["seq_len"]
    splits = {split: _plan_split(src, source["splits"][split]["arrays"], split, algorithm, max_per_pack,
                                 [seed, number], seq_len) for number, split in enumerate(SPLITS)}
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
            manifest["splits"][split] = _write_split(tmp, split, entry, specs, max_per_pack, max_pred_per_pack)
        # One split a line, its figures before its (long) list of strategies.
        lines = [f"{json.dumps(split)}: {json.dumps(entry['plan'].to_dict())}" for split, entry in splits.items()]
        atomic_write_text(tmp / "plan.json", "{\n" + ",\n".join(lines) + "\n}\n")
        manifest["plan"] = {"file": "plan.json", "sha256": sha256_file(tmp / "plan.json")}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
