"""MLPerf BERT data: the reference TFRecords converted offline to memory-mapped arrays; a synthetic corpus.

Convert the reference data (train shards + the 10,000-sample eval file), without TensorFlow:
    python -m mlperf_submission.common.data.bert_wiki convert \
        --train '/data/bert/training/part-*' --eval /data/bert/eval_10k --out /data/bert/memmap
Write the built-in synthetic corpus in the same format:
    python -m mlperf_submission.common.data.bert_wiki synthetic --out DIR --num-train 20000 --num-eval 2000 \
        --seq-len 128 --vocab-size 1000 --max-pred 20 --seed 0
Check a converted folder against its manifest (shapes, dtypes, sha256 of every array: the full pass):
    python -m mlperf_submission.common.data.bert_wiki verify --out DIR
A run checks only the manifest's own checksum and each array's size and modification time (`verify`), so
that it reads no data between cache_clear and run_start; `verify(..., full=True)` is the full pass.

Layout of DIR: `manifest.json` plus `train/<feature>.npy` and `eval/<feature>.npy`, one array per feature of
the reference records (`input_ids`, `input_mask`, `segment_ids` (N, seq_len); `masked_lm_positions`,
`masked_lm_ids`, `masked_lm_weights` (N, max_pred); `next_sentence_labels` (N,)), stored narrow (token ids
uint16 because vocab < 65536, masks uint8, weights float32). Everything is written to a temporary folder
renamed into place at the end: a failed run leaves nothing at DIR. Bad input exits with status 2 and one
line `error: ...`.

Synthetic corpus (same format, deterministic in its seed): a toy language whose masked tokens are
predictable from their neighbours, masked like `create_pretraining_data.py`; see `synthetic_instances`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..cli import (
    ArgumentParser,
    UserError,
    atomic_dir,
    entry_point,
    json_checksum,
    sha256_file,
)
from .tfrecord import (
    TFRecordError,
    decode_example,
    encode_example,
    iter_records,
    record_offsets,
    write_records,
)

FORMAT = "mlperf-bert-memmap"
VERSION = 1
SPLITS = ("train", "eval")
# Special token ids of the BERT uncased vocabulary; the synthetic corpus uses the same ones.
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 101, 102, 103
FIRST_WORD_ID = 104


class DataError(ValueError):
    """Input data or a converted folder is missing, malformed or inconsistent."""


def feature_specs(seq_len: int, max_pred: int) -> dict[str, tuple[tuple[int, ...], str, np.dtype, int]]:
    """name -> (per-record shape, TF list kind, storage dtype, exclusive upper bound on values or 0)."""
    return {
        "input_ids": ((seq_len,), "int64", np.dtype(np.uint16), 1 << 16),
        "input_mask": ((seq_len,), "int64", np.dtype(np.uint8), 2),
        "segment_ids": ((seq_len,), "int64", np.dtype(np.uint8), 2),
        "masked_lm_positions": ((max_pred,), "int64", np.dtype(np.uint16), seq_len),
        "masked_lm_ids": ((max_pred,), "int64", np.dtype(np.uint16), 1 << 16),
        "masked_lm_weights": ((max_pred,), "float32", np.dtype(np.float32), 0),
        "next_sentence_labels": ((), "int64", np.dtype(np.uint8), 2),
    }


def _check_record(features: dict, specs: dict, where: str) -> None:
    names, expected = set(features), set(specs)
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        raise DataError(f"{where}: feature names differ from the MLPerf BERT records (missing {missing}, "
                        f"extra {extra})")
    for name, (shape, kind, _, bound) in specs.items():
        value = features[name]
        size = int(np.prod(shape, dtype=np.int64))
        if not isinstance(value, np.ndarray) or str(value.dtype) != kind:
            got = "bytes" if isinstance(value, list) else value.dtype
            raise DataError(f"{where}: feature {name!r} is {got}, expected {kind}")
        if value.size != size:
            raise DataError(f"{where}: feature {name!r} has {value.size} values, expected {size} (check --seq-len and "
                            "--max-pred against the data's --max_seq_length and --max_predictions_per_seq)")
        if bound and value.size and (value.min() < 0 or value.max() >= bound):
            raise DataError(f"{where}: feature {name!r} has values outside [0, {bound})")


def _count_records(path: Path) -> int:
    """Count records by their length headers only (cheap); payload CRCs are checked while converting."""
    return len(record_offsets(path))


def _resolve(patterns: list[str], what: str) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise DataError(f"no {what} file matches {pattern!r}; check the path (quote globs)")
        files += [Path(m) for m in matches if Path(m).is_file()]
    if not files:
        raise DataError(f"no {what} files among {patterns}")
    return list(dict.fromkeys(files))  # each file once, in order


def file_entry(path: Path) -> dict:
    """What a manifest records of one written file: its sha256 (the full check), and its size and modification
    time in ns (the cheap check a run makes; a rename of the folder keeps both)."""
    stat = path.stat()
    return {"sha256": sha256_file(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _array_entries(folder: Path, split: str, count: int, specs: dict) -> dict:
    return {name: {"file": f"{split}/{name}.npy", "shape": [count, *shape], "dtype": dtype.str,
                   **file_entry(folder / split / f"{name}.npy")}
            for name, (shape, _, dtype, _) in specs.items()}


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Write folder/manifest.json with its own checksum (so a run can tell it was not edited); -> manifest."""
    manifest = {**manifest, "checksum": json_checksum(manifest)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """`atomic_dir(out_dir)` holding one subfolder per split; refuses an existing out_dir."""
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists; remove it or choose another --out")
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            (tmp / split).mkdir()
        yield tmp


def convert(tfrecord_files, out_dir, *, eval_files, seq_len: int = 512, max_pred: int = 76) -> dict:
    """MLPerf TFRecords -> memory-mapped arrays in out_dir; -> the manifest. Raises DataError, TFRecordError.

    tfrecord_files: training files (paths); eval_files: the eval set's files. Every record is checked for
    the seven reference features with their exact lengths; nothing is left at out_dir on failure.
    """
    sources = {"train": [Path(p) for p in tfrecord_files], "eval": [Path(p) for p in eval_files]}
    for split, files in sources.items():
        if not files:
            raise DataError(f"no {split} files given")
        for path in files:
            if not path.is_file():
                raise DataError(f"{split} file {path} does not exist")
    both = {p.resolve() for p in sources["train"]} & {p.resolve() for p in sources["eval"]}
    if both:
        raise DataError(f"{sorted(both)[0]} is both a training and an eval file; narrow the --train glob")
    out_dir = Path(out_dir)
    specs = feature_specs(seq_len, max_pred)
    with _staging(out_dir) as tmp:
        manifest = {"format": FORMAT, "version": VERSION, "seq_len": seq_len, "max_pred": max_pred, "splits": {}}
        for split, files in sources.items():
            total = _convert_split(files, tmp / split, specs, split)
            manifest["splits"][split] = {"count": total, "sources": [str(p) for p in files],
                                         "arrays": _array_entries(tmp, split, total, specs)}
        return write_manifest(tmp, manifest)


def _convert_split(files: list[Path], folder: Path, specs: dict, split: str) -> int:
    """Write the records of `files` into one .npy file per feature in `folder`; -> how many records."""
    counts = [_count_records(path) for path in files]
    total = sum(counts)
    if total == 0:
        raise DataError(f"the {split} files hold no records")
    arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", "w+", dtype, (total, *shape))
              for name, (shape, _, dtype, _) in specs.items()}
    row = 0
    for path, count in zip(files, counts, strict=True):
        end = row + count
        for index, data in enumerate(iter_records(path)):
            where = f"{path}: record {index}"
            if row == end:
                raise DataError(f"{where}: more records than counted; was the file modified?")
            try:
                features = decode_example(data)
            except TFRecordError as e:
                raise DataError(f"{where}: {e}") from None
            _check_record(features, specs, where)
            for name, (shape, _, dtype, _) in specs.items():
                arrays[name][row] = features[name].reshape(shape).astype(dtype)
            row += 1
        if row != end:
            raise DataError(f"{path}: fewer records than counted; was the file modified?")
    for array in arrays.values():
        array.flush()
    return total


def load_array(path: Path) -> np.ndarray:
    """Memory-map one .npy file of a converted or packed folder. Raises DataError."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a .npy array ({e})") from None


def verify_array(path: Path, info: dict, count: int, dtype: np.dtype | None = None,
                 shape: tuple[int, ...] | None = None, *, full: bool = True) -> None:
    """One array file against its manifest entry `info` and the split's record `count`, and, if given, against
    the dtype and per-record shape its format requires. Cheap (`full=False`, where the manifest records them):
    the file's size and modification time, and the .npy header; full: also the sha256 of every byte. A
    manifest from before sizes were recorded gets the full check. Raises DataError."""
    array = load_array(path)
    stored = f"{path}: {array.dtype.str} {list(array.shape)}"
    if list(array.shape) != info["shape"] or array.dtype.str != info["dtype"]:
        raise DataError(f"{stored}, manifest says {info['dtype']} {info['shape']}")
    if shape is not None and (list(array.shape) != [count, *shape] or array.dtype != dtype):
        raise DataError(f"{stored}, expected {dtype.str} {[count, *shape]}")
    if info["shape"][0] != count:
        raise DataError(f"{path}: {info['shape'][0]} rows, manifest count is {count}")
    del array
    if not full and "bytes" in info and "mtime_ns" in info:
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (info["bytes"], info["mtime_ns"]):
            raise DataError(f"{path}: size or modification time differs from the manifest: the file has changed "
                            "(copied without keeping times? use cp -p or rsync -a, or convert it again)")
    elif sha256_file(path) != info["sha256"]:
        raise DataError(f"{path}: sha256 differs from the manifest; the file is corrupt")


def read_manifest(folder: Path, fmt: str, version: int, missing: str) -> dict:
    """folder/manifest.json, checked against its own checksum where it has one. Raises DataError."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} is missing; {missing}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt or manifest.get("version") != version:
        raise DataError(f"{path}: not a {fmt} v{version} manifest")
    if "checksum" in manifest and manifest["checksum"] != json_checksum(manifest):
        raise DataError(f"{path}: its checksum does not match its contents: the manifest was edited")
    return manifest


def verify(out_dir, *, full: bool = False) -> dict:
    """Check every array of out_dir against manifest.json (presence, shape, dtype; with `full` the sha256 of
    every file, else its size and modification time: what a run does); -> manifest. Raises DataError."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir, FORMAT, VERSION, "convert the data first")
    specs = feature_specs(manifest["seq_len"], manifest["max_pred"])
    for split in SPLITS:
        entry = manifest["splits"].get(split)
        if entry is None or set(entry["arrays"]) != set(specs):
            raise DataError(f"{out_dir / 'manifest.json'}: split {split!r} is missing or incomplete")
        for info in entry["arrays"].values():
            verify_array(out_dir / info["file"], info, entry["count"], full=full)
    return manifest


class BertDataset(torch.utils.data.Dataset):
    """One split of a converted folder, memory-mapped; item i -> dict of tensors, int64 except
    `masked_lm_weights` (float32); `next_sentence_labels` is a scalar."""

    def __init__(self, out_dir, split: str = "train"):
        out_dir = Path(out_dir)
        manifest = read_manifest(out_dir, FORMAT, VERSION, "convert the data or write the synthetic corpus first")
        if split not in manifest["splits"]:
            raise DataError(f"{out_dir / 'manifest.json'}: no split {split!r}")
        entry = manifest["splits"][split]
        self.seq_len, self.max_pred = manifest["seq_len"], manifest["max_pred"]
        self.arrays = {}
        for name, info in entry["arrays"].items():
            array = np.load(out_dir / info["file"], mmap_mode="r")
            if list(array.shape) != info["shape"] or array.dtype.str != info["dtype"]:
                raise DataError(f"{out_dir / info['file']}: does not match the manifest; run verify")
            self.arrays[name] = array
        self.count = entry["count"]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, array in self.arrays.items():
            dtype = np.float32 if name == "masked_lm_weights" else np.int64
            out[name] = torch.from_numpy(np.array(array[i], dtype=dtype))  # a writable copy
        return out


# ---------------------------------------------------------------------------------------------------------
# Synthetic corpus
#
# The toy language is a "sticky" Markov chain: a word repeats itself with probability STAY_PROB and
# otherwise moves on to its fixed successor on a cycle of words. LEXICON_SIZE word ids (a seeded choice
# among all non-special ids) form two cycles: "documents" use the first, and random next sentences come
# from "other documents", which use the second. Sentence A starts at a uniformly drawn word of the document
# cycle; sentence B continues the chain from A's last word (label 0, "is next") or starts at a random word
# of the other cycle (label 1, "random next"), each with probability 1/2. So a masked word is predictable
# from its neighbours (the same word, or its cycle neighbour) and mostly from its sentence's majority word,
# and NSP from which cycle B's words come from. Masking follows create_pretraining_data.py: 15% of the
# tokens, [CLS] and [SEP]s counted (at least 1, at most max_pred), chosen among the non-special ones; 80%
# [MASK], 10% kept, 10% a random id of the whole vocabulary; 10% of the instances are shorter than seq_len
# (short_seq_prob), so padding occurs.
#
# The language is deliberately this easy: a 24-layer model of hidden size 32-64 learns it from scratch in
# a few hundred steps. Richer versions (64 or more words, Zipf frequencies, NSP as a cross-sentence
# comparison) were tried and took much longer to leave the unigram plateau.
# ---------------------------------------------------------------------------------------------------------

LEXICON_SIZE = 16
STAY_PROB = 0.98
SHORT_SEQ_PROB = 0.1
MASKED_LM_PROB = 0.15


class _Chain:
    """The toy language of one (vocab_size, seed): the document cycle and the other-documents cycle."""

    def __init__(self, vocab_size: int, seed: int):
        if not FIRST_WORD_ID + LEXICON_SIZE <= vocab_size <= 1 << 16:
            raise ValueError(f"synthetic vocab_size must be in [{FIRST_WORD_ID + LEXICON_SIZE}, 65536], "
                             f"got {vocab_size}")
        rng = np.random.default_rng([seed, 0])
        words = rng.choice(np.arange(FIRST_WORD_ID, vocab_size), size=LEXICON_SIZE, replace=False)
        half = LEXICON_SIZE // 2
        self.cycles = (words[:half], words[half:])  # cycle[k] is followed by cycle[k + 1]

    def segment(self, rng: np.random.Generator, length: int, cycle: int,
                start: int | None = None) -> tuple[np.ndarray, int]:
        """`length` words of a cycle from position `start` (default: uniform); -> (words, next position)."""
        words = self.cycles[cycle]
        if start is None:
            start = int(rng.integers(len(words)))
        moves = rng.random(length) >= STAY_PROB  # moves[k]: whether word k+1 moves on from word k
        index = (start + np.concatenate([[0], np.cumsum(moves[:-1])])) % len(words)
        return words[index], int((index[-1] + moves[-1]) % len(words))


WIKIPEDIA_HISTOGRAM = Path(__file__).with_name("wikipedia_seqlen_histogram.txt")


def wikipedia_lengths(num: int, seq_len: int, seed: int) -> np.ndarray:
    """`num` sequence lengths (tokens incl. [CLS] and [SEP]s) drawn from the MLPerf Wikipedia length
    distribution at 512, scaled to seq_len: about half of the tokens of a padded batch are padding, as in the
    real data, so that packing has the same room to work with."""
    lengths, counts = np.loadtxt(WIKIPEDIA_HISTOGRAM, dtype=np.int64, unpack=True)
    rng = np.random.default_rng([seed, 99])
    drawn = rng.choice(lengths, size=num, p=counts / counts.sum())
    return np.clip(np.rint(drawn * seq_len / 512), 5, seq_len).astype(np.int64)


def synthetic_instances(num: int, *, seq_len: int, vocab_size: int, max_pred: int, seed: int, split: str = "train",
                        lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`num` pretraining instances of the toy language, as int64 / float32 arrays (see feature_specs).

    The language depends on (vocab_size, seed) only; the instances also on `split`. `lengths` (num,), each
    in 5..seq_len, fixes every instance's length instead of the reference's `short_seq_prob` rule.
    """
    if seq_len < 8 or max_pred < 1:
        raise ValueError("synthetic data needs seq_len >= 8 and max_pred >= 1")
    if lengths is not None and (len(lengths) != num or lengths.min(initial=5) < 5 or lengths.max(initial=5) > seq_len):
        raise ValueError(f"lengths must be {num} values in 5..{seq_len}")
    chain = _Chain(vocab_size, seed)
    rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
    out = {name: np.zeros((num, *shape), np.float32 if kind == "float32" else np.int64)
           for name, (shape, kind, _, _) in feature_specs(seq_len, max_pred).items()}
    max_tokens = seq_len - 3  # [CLS] A [SEP] B [SEP]
    for i in range(num):
        if lengths is None:
            target = max_tokens if rng.random() >= SHORT_SEQ_PROB else int(rng.integers(2, max_tokens + 1))
        else:
            target = int(lengths[i]) - 3
        len_a = int(rng.integers(1, target))
        is_random = int(rng.random() < 0.5)
        a, after_a = chain.segment(rng, len_a, 0)
        b, _ = chain.segment(rng, target - len_a, is_random, None if is_random else after_a)
        tokens = np.concatenate([[CLS_ID], a, [SEP_ID], b, [SEP_ID]])
        n = len(tokens)
        candidates = np.concatenate([np.arange(1, 1 + len_a), np.arange(2 + len_a, n - 1)])
        num_to_predict = min(max_pred, max(1, round(n * MASKED_LM_PROB)))  # n counts [CLS] and [SEP]s
        positions = np.sort(rng.permutation(candidates)[:num_to_predict])
        labels = tokens[positions]
        masked = tokens.copy()
        for position in positions:
            draw = rng.random()
            if draw < 0.8:
                masked[position] = MASK_ID
            elif draw >= 0.9:
                masked[position] = rng.integers(vocab_size)
        out["input_ids"][i, :n] = masked
        out["input_mask"][i, :n] = 1
        out["segment_ids"][i, 2 + len_a : n] = 1
        out["masked_lm_positions"][i, :num_to_predict] = positions
        out["masked_lm_ids"][i, :num_to_predict] = labels
        out["masked_lm_weights"][i, :num_to_predict] = 1.0
        out["next_sentence_labels"][i] = is_random
    return out


def write_synthetic(out_dir, *, num_train: int, num_eval: int, seq_len: int, vocab_size: int, max_pred: int,
                    seed: int) -> dict:
    """Write the synthetic corpus (train and eval splits) to out_dir in the converted format; -> manifest."""
    out_dir = Path(out_dir)
    specs = feature_specs(seq_len, max_pred)
    with _staging(out_dir) as tmp:
        synthetic = {"seed": seed, "vocab_size": vocab_size, "lexicon_size": LEXICON_SIZE, "stay_prob": STAY_PROB,
                     "num_train": num_train, "num_eval": num_eval}
        manifest = {"format": FORMAT, "version": VERSION, "seq_len": seq_len, "max_pred": max_pred,
                    "synthetic": synthetic, "splits": {}}
        for split, num in (("train", num_train), ("eval", num_eval)):
            data = synthetic_instances(num, seq_len=seq_len, vocab_size=vocab_size, max_pred=max_pred, seed=seed,
                                       split=split)
            for name, (_, _, dtype, _) in specs.items():
                np.save(tmp / split / f"{name}.npy", data[name].astype(dtype))
            manifest["splits"][split] = {"count": num, "sources": [f"synthetic seed={seed}"],
                                         "arrays": _array_entries(tmp, split, num, specs)}
        return write_manifest(tmp, manifest)


def _examples(data: dict[str, np.ndarray]) -> Iterator[bytes]:
    for i in range(len(data["input_ids"])):
        yield encode_example({name: np.atleast_1d(array[i]) for name, array in data.items()})


def write_synthetic_tfrecords(path, *, num: int, seq_len: int, vocab_size: int, max_pred: int, seed: int,
                              split: str = "train") -> int:
    """Write synthetic instances as an MLPerf-format TFRecord file (the reference's features); -> count."""
    data = synthetic_instances(num, seq_len=seq_len, vocab_size=vocab_size, max_pred=max_pred, seed=seed,
                               split=split)
    return write_records(path, _examples(data))


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m mlperf_submission.common.data.bert_wiki", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="MLPerf TFRecords -> memory-mapped arrays")
    conv.add_argument("--train", nargs="+", required=True, metavar="GLOB", help="training TFRecord files or globs")
    conv.add_argument("--eval", nargs="+", required=True, metavar="FILE", help="the eval set's TFRecord file(s)")
    conv.add_argument("--out", required=True, type=Path, help="output folder (must not exist)")
    conv.add_argument("--seq-len", type=int, default=512)
    conv.add_argument("--max-pred", type=int, default=76)
    syn = commands.add_parser("synthetic", help="write the synthetic corpus in the converted format")
    syn.add_argument("--out", required=True, type=Path)
    syn.add_argument("--num-train", type=int, required=True)
    syn.add_argument("--num-eval", type=int, required=True)
    syn.add_argument("--seq-len", type=int, default=128)
    syn.add_argument("--vocab-size", type=int, default=1000)
    syn.add_argument("--max-pred", type=int, default=20)
    syn.add_argument("--seed", type=int, default=0)
    ver = commands.add_parser("verify", help="check a converted folder against its manifest (every sha256)")
    ver.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            manifest = convert(_resolve(args.train, "training"), args.out, eval_files=_resolve(args.eval, "eval"),
                               seq_len=args.seq_len, max_pred=args.max_pred)
        elif args.command == "synthetic":
            manifest = write_synthetic(args.out, num_train=args.num_train, num_eval=args.num_eval,
                                       seq_len=args.seq_len, vocab_size=args.vocab_size, max_pred=args.max_pred,
                                       seed=args.seed)
        else:
            manifest = verify(args.out, full=True)
    except TFRecordError as e:
        raise UserError(f"{e}; the file is truncated or corrupt: re-download or regenerate it") from None
    except (DataError, ValueError, OSError) as e:
        raise UserError(str(e)) from None
    counts = ", ".join(f"{split} {entry['count']}" for split, entry in manifest["splits"].items())
    print(f"{args.command}: {args.out}: {counts} samples (seq_len {manifest['seq_len']}, max_pred "
          f"{manifest['max_pred']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
