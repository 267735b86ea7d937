"""MLPerf BERT data and a phase-1 checkpoint as users bring them, generated for a rehearsal.

    python -m mlperf_submission.closed.bert.rehearsal_data [--train-samples 1024] [--parts 4]
        [--eval-samples 512] [--cache out/cache]

prints the folder (out/cache/bert-<key>/, reused while it matches) holding
    train/part-0000i-of-0000N    MLPerf reference TFRecords: the 7 features at sequence 512 with 76 predictions,
                                 lengths drawn from the shipped Wikipedia histogram (bert_wiki.wikipedia_lengths)
    eval/part-00000-of-00001     the eval file, the same way (a real one, eval_10k, holds 10,000 samples)
    phase1/model.ckpt-28252      a TF1 checkpoint at BERT-Large shapes with every variable the real one holds:
                                 the 398 model tensors, their adam_m / adam_v slots and global_step (1,195),
                                 random values (weights N(0, 0.02), LayerNorm gammas 1, biases 0), 4.0 GB
so that `make data BENCH=bert SRC='DIR/train/part-*' EVAL=DIR/eval/part-00000-of-00001` and the run's
checkpoint converter read them as they read the real ones. Every dimension can be scaled for tests.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from ...common.cli import ArgumentParser, entry_point
from ...common.data import bert_wiki
from ...common.data.generate import DEFAULT_CACHE, cached
from ...common.data.tensorbundle import write_tf_checkpoint
from ...common.data.tfrecord import encode_example, write_records
from .checkpoint import _is_kernel
from .model import BertConfig, BertForPretraining, tf_tensor_name

CHECKPOINT_STEP = 28252  # the MLPerf phase-1 checkpoint's global_step
SLOTS = ("adam_m", "adam_v")
RECORD_BYTES = 6_000  # upper bound of one encoded sequence-512 example, for the disk check
BERT_LARGE = {"vocab_size": 30522, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096, "max_position_embeddings": 512}


def checkpoint_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """TF name -> shape of every variable of a phase-1 checkpoint of BertForPretraining(cfg): the weights (TF
    kernels transposed), one adam_m and one adam_v slot each, and global_step (a scalar)."""
    with torch.device("meta"):
        model = BertForPretraining(cfg)
    shapes = {}
    for name, p in model.named_parameters():
        tf_name = tf_tensor_name(name)
        shape = tuple(p.shape[::-1]) if _is_kernel(tf_name) else tuple(p.shape)
        shapes[tf_name] = shape
        for slot in SLOTS:
            shapes[f"{tf_name}/{slot}"] = shape
    shapes["global_step"] = ()
    return shapes


class RandomCheckpoint(Mapping):
    """The checkpoint's tensors, each drawn when read (seeded by its name), so that writing it holds one
    tensor in memory at a time."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int):
        self.shapes, self.seed = shapes, seed

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __getitem__(self, name: str) -> np.ndarray:
        shape = self.shapes[name]
        if name == "global_step":
            return np.array(CHECKPOINT_STEP, dtype=np.int64)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        leaf = name.split("/")[-1]
        if leaf == "adam_m":
            return (rng.standard_normal(shape, dtype=np.float32) * 1e-4).astype(np.float32)
        if leaf == "adam_v":
            return rng.random(shape, dtype=np.float32) * 1e-6
        if leaf == "gamma":
            return np.ones(shape, np.float32)
        if leaf in ("beta", "bias", "output_bias"):
            return np.zeros(shape, np.float32)
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def write_tfrecords(path: Path, num: int, *, seq_len: int, max_pred: int, vocab_size: int, seed: int,
                    split: str) -> None:
    lengths = bert_wiki.wikipedia_lengths(num, seq_len, seed=seed)
    data = bert_wiki.synthetic_instances(num, seq_len=seq_len, vocab_size=vocab_size, max_pred=max_pred,
                                         seed=seed, split=split, lengths=lengths)
    write_records(path, (encode_example({k: np.atleast_1d(v[i]) for k, v in data.items()}) for i in range(num)))


def write(folder: Path, p: dict) -> None:
    cfg = BertConfig(**p["model"])
    seq_len, shared = p["seq_len"], {"max_pred": p["max_pred"], "vocab_size": cfg.vocab_size}
    (folder / "train").mkdir()
    (folder / "eval").mkdir()
    per_part = -(-p["train_samples"] // p["parts"])
    for i in range(p["parts"]):
        num = min(per_part, p["train_samples"] - i * per_part)
        write_tfrecords(folder / "train" / f"part-{i:05d}-of-{p['parts']:05d}", num, seq_len=seq_len,
                        seed=p["seed"] + i, split="train", **shared)
    write_tfrecords(folder / "eval" / "part-00000-of-00001", p["eval_samples"], seq_len=seq_len,
                    seed=p["seed"] + 10_000, split="eval", **shared)
    (folder / "phase1").mkdir()
    write_tf_checkpoint(folder / "phase1" / f"model.ckpt-{CHECKPOINT_STEP}",
                        RandomCheckpoint(checkpoint_shapes(cfg), p["seed"]))


def checkpoint_bytes(cfg: BertConfig) -> int:
    return 4 * sum(int(np.prod(s)) for s in checkpoint_shapes(cfg).values())


def generate(*, train_samples: int = 1024, parts: int = 4, eval_samples: int = 512, seq_len: int = 512,
             max_pred: int = 76, model: dict | None = None, seed: int = 0,
             cache: Path = DEFAULT_CACHE) -> tuple[Path, bool]:
    """(the generated folder, whether the cache had it); `model` scales BERT-Large's dimensions (tests)."""
    params = {"train_samples": train_samples, "parts": parts, "eval_samples": eval_samples, "seq_len": seq_len,
              "max_pred": max_pred, "model": model or BERT_LARGE, "seed": seed}
    needed = (train_samples + eval_samples) * RECORD_BYTES * seq_len // 512 + checkpoint_bytes(
        BertConfig(**params["model"]))
    return cached("bert", params, Path(__file__), needed, lambda tmp: write(tmp, params), cache)


def paths(folder: Path) -> dict[str, str]:
    """The generated files as `make data` and the run name them."""
    return {"train": str(folder / "train" / "part-*"), "eval": str(folder / "eval" / "part-00000-of-00001"),
            "ckpt": str(folder / "phase1" / f"model.ckpt-{CHECKPOINT_STEP}")}


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.closed.bert.rehearsal_data",
                       description=__doc__.split("\n")[0])
    p.add_argument("--train-samples", type=int, default=1024)
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args(argv)
    folder, _ = generate(train_samples=args.train_samples, parts=args.parts, eval_samples=args.eval_samples,
                         cache=args.cache)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
