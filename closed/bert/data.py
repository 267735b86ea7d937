"""What BERT's training loops read (closed/bert/train.py, closed/bert/ipu.py, closed/bert/phase1.py): the
datasets, the built-in synthetic corpus, the per-batch unpadded layout, and the typed seam through which the
open division feeds its packs instead (`Inputs`, `SequenceDataset`).

A dataset holds items of named tensors (the MLPerf fields, padded rows or packs) and says how many real
sequences they hold: train_samples, eval_samples and the eval cadence count sequences, not items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias

import numpy as np
import torch

from ...common.cli import UserError
from ...common.data import bert_wiki, packing
from . import presets

Batch: TypeAlias = dict[str, torch.Tensor]


class SequenceDataset(Protocol):
    """What a BERT loop needs of a dataset: its items, and the real sequences in the split and in each item."""

    sequences: int                      # in the whole split, as train_samples / eval_samples log them
    item_sequences: np.ndarray | None   # in each item (packs hold several); None: one sequence an item

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Batch: ...


Collate: TypeAlias = Callable[[list[Batch]], Batch]
Verify: TypeAlias = Callable[[presets.BertRunConfig, Path], None]  # UserError before any log is written
Datasets: TypeAlias = Callable[[presets.BertRunConfig, Path | None], tuple[SequenceDataset, SequenceDataset]]
ChooseCollate: TypeAlias = Callable[[presets.BertRunConfig], Collate | None]  # None: torch stacks the items


class ArrayDataset(torch.utils.data.Dataset):
    """Arrays held in memory (the synthetic corpus; the open division's packs of it carry `nsp_weights`, one
    per real sequence of a pack), in the same item format as bert_wiki.BertDataset."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        weights = arrays.get("nsp_weights")
        self.item_sequences = None if weights is None else (np.asarray(weights) > 0).sum(1)
        self.sequences = len(self) if weights is None else int(self.arrays["nsp_weights"].sum())

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.arrays.items()}


class Split(torch.utils.data.Dataset):
    """A dataset on storage (bert_wiki.BertDataset, packing.PackedDataset) with its sequence counts stated."""

    def __init__(self, items: torch.utils.data.Dataset, sequences: int, item_sequences: np.ndarray | None = None):
        self.items, self.sequences, self.item_sequences = items, sequences, item_sequences

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Batch:
        return self.items[i]


def first(dataset: SequenceDataset, n: int) -> Split:
    """The first n items of a dataset, their sequences counted (a rehearsal's bounded eval set)."""
    per_item = None if dataset.item_sequences is None else dataset.item_sequences[:n]
    return Split(torch.utils.data.Subset(dataset, range(n)), n if per_item is None else int(per_item.sum()), per_item)


def batch_sequences(batch: Batch) -> int:
    """Real sequences in a loader batch, padded rows or unpadded ones (whose `nsp_weights` mark each row's
    sequences): what a rehearsal counts as trained."""
    weights = batch.get("nsp_weights")
    return len(batch["next_sentence_labels"]) if weights is None else int((weights > 0).sum())


def synthetic_arrays(cfg: presets.BertRunConfig, split: str) -> dict[str, np.ndarray]:
    """The built-in synthetic corpus of a preset, as bert_wiki arrays."""
    num = cfg.synthetic_train_samples if split == "train" else cfg.synthetic_eval_samples
    lengths = None
    if cfg.synthetic_lengths == "wikipedia":
        lengths = bert_wiki.wikipedia_lengths(num, cfg.max_seq_length, seed=cfg.synthetic_seed + (split == "eval"))
    return bert_wiki.synthetic_instances(num, seq_len=cfg.max_seq_length, vocab_size=cfg.vocab_size,
                                         max_pred=cfg.max_predictions_per_seq, seed=cfg.synthetic_seed, split=split,
                                         lengths=lengths)


def verify(cfg: presets.BertRunConfig, data: Path) -> None:
    """The converted folder is the one `make data` checked (its manifest's own checksum, the arrays' sizes and
    modification times: no data read before the clock), and the closed rules' eval set of 10,000 samples."""
    try:
        manifest = bert_wiki.verify(data)
    except bert_wiki.DataError as e:
        raise UserError(f"{e} (prepare the data with `make data BENCH=bert`)") from None
    if (count := manifest["splits"]["eval"]["count"]) != presets.WIKI_EVAL_SAMPLES:
        raise UserError(f"{data}: the eval split holds {count:,} samples; the closed rules evaluate on the "
                        f"{presets.WIKI_EVAL_SAMPLES:,} of eval_10k (`make data BENCH=bert ... EVAL=eval_10k`)")


def datasets(cfg: presets.BertRunConfig, data: Path | None) -> tuple[SequenceDataset, SequenceDataset]:
    """(train, eval): the synthetic corpus, or the converted folder's splits, one sequence an item."""
    if cfg.dataset == "synthetic":
        return ArrayDataset(synthetic_arrays(cfg, "train")), ArrayDataset(synthetic_arrays(cfg, "eval"))
    train, val = bert_wiki.BertDataset(data, "train"), bert_wiki.BertDataset(data, "eval")
    return Split(train, len(train)), Split(val, len(val))


def unpadded_collate(items: list[Batch]) -> Batch:
    """A batch of padded sequences -> the same sequences in unpadded rows (`packing.unpadded_batch`), in the
    data workers, so that the training step never sees the padding."""
    arrays = {k: np.stack([item[k].numpy() for item in items]) for k in items[0]}
    return {k: torch.from_numpy(v) for k, v in packing.unpadded_batch(arrays).items()}


def collate(cfg: presets.BertRunConfig) -> Collate | None:
    """The loaders' collate_fn: unpadded rows unless `unpad=false`; None is torch's stacking of the rows."""
    return unpadded_collate if cfg.unpad else None


@dataclass(frozen=True)
class Inputs:
    """How a run reads its data: padded sequences, laid out unpadded per batch, here; packed offline in the
    open division (open/bert/train.py). Everything else (model, loss, step, eval, log) is the same for both."""

    verify: Verify = verify
    datasets: Datasets = datasets
    collate: ChooseCollate = collate


CLOSED_INPUTS = Inputs()


def synthetic_batch(cfg: presets.BertRunConfig, n: int) -> Batch:
    """n sequences of the synthetic corpus, laid out as a loader batch (unpadded unless `unpad=false`):
    the warm-up input (the untimed init never touches the training data)."""
    arrays = bert_wiki.synthetic_instances(n, seq_len=cfg.max_seq_length, vocab_size=cfg.vocab_size,
                                           max_pred=cfg.max_predictions_per_seq, seed=0, split="eval")
    dataset = ArrayDataset(arrays)
    return (collate(cfg) or torch.utils.data.default_collate)([dataset[i] for i in range(n)])
