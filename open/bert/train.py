"""Open-division BERT-Large with packed sequences: closed BERT's run, fed packs instead of padded rows.

    python -m mlperf_submission.open.bert.train --preset smoke --seed 1 --system systems/1xH200.json \
        --result-log out/result_0.txt [--data PACKED_DIR] [--set field=value ...]

The model, its unpadded forward, the loss, optimizer, schedule, eval and MLPerf log are closed BERT's
(`closed/bert/train.py` with its steps.py and data.py, which lays out each batch without padding as it
comes); this file only says how packs are made ahead and read, through the typed hooks of `data.Inputs`,
each dataset a `data.SequenceDataset` that states its sequences. What differs from closed is what the open
rules allow: offline packing (over the whole dataset, so rows are fuller than one batch's), per-sequence loss
averaging (`loss_averaging`, closed/bert/optim.py) and the hyperparameters (presets.py). --data takes a folder
written by `make data BENCH=bert PACK=nnlshp`; without it the `smoke` preset packs the built-in synthetic
corpus in memory with the preset's algorithm. Eval reads the eval set packed the same way: its masked-LM
accuracy is a sum over masked tokens, which packing does not change.

Open-only branches that stay in closed files: `ArrayDataset`'s `nsp_weights` (sequences per pack) in
closed/bert/data.py; `loss_averaging="sequence"` in closed/bert/optim.py (`packed_loss`); the packs' fixed
shapes on the IPU (closed/bert/ipu.py `checked`, `shaped_like`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ...closed.bert import train as closed
from ...closed.bert.data import ArrayDataset, Inputs, SequenceDataset, Split, synthetic_arrays
from ...common import training
from ...common.cli import UserError, entry_point
from ...common.data import packing
from . import presets

DIVISION = "open"


def pack(arrays: dict[str, np.ndarray], cfg: presets.PackedBertConfig, seed: int) -> dict[str, np.ndarray]:
    """Unpacked bert_wiki arrays -> packed arrays, by the preset's algorithm on their own length histogram."""
    lengths = arrays["input_mask"].sum(1)
    plan = packing.ALGORITHMS[cfg.packing](packing.histogram(lengths, cfg.max_seq_length), cfg.max_seq_length,
                                           cfg.max_sequences_per_pack)
    print(f"packed {plan.sequences:,} sequences into {plan.packs:,} packs by {cfg.packing}: "
          f"{plan.sequences / plan.packs:.3f} sequences a pack, {plan.efficiency:.2%} of the tokens are real "
          f"(the preset assumes {cfg.sequences_per_pack} a pack)", flush=True)
    return packing.pack_arrays(arrays, packing.assign(lengths, plan, seed), cfg.max_sequences_per_pack)


def verify(cfg: presets.PackedBertConfig, data) -> None:
    """The packed folder is intact and packed as the preset says, before any log is written."""
    try:
        manifest = packing.verify(data)
    except packing.DataError as e:
        raise UserError(f"{e} (pack the data with `make data BENCH=bert PACK={cfg.packing}`)") from None
    found = {name: manifest.get(name) for name in ("seq_len", "max_sequences_per_pack", "algorithm")}
    wanted = {"seq_len": cfg.max_seq_length, "max_sequences_per_pack": cfg.max_sequences_per_pack,
              "algorithm": cfg.packing}
    if found != wanted:
        raise UserError(f"{data} was packed with {found}, but preset wants {wanted}: re-pack it with `make data "
                        f"BENCH=bert PACK={cfg.packing} MAX_PER_PACK={cfg.max_sequences_per_pack}` or --set the preset")


def packed_split(data: Path, split: str) -> SequenceDataset:
    """One split of a packed folder, with its sequences: the folder's count, and per pack its nsp_weights."""
    packs = packing.PackedDataset(data, split)
    return Split(packs, packs.sequences, (np.asarray(packs.arrays["nsp_weights"]) > 0).sum(1))


def datasets(cfg: presets.PackedBertConfig, data: Path | None) -> tuple[SequenceDataset, SequenceDataset]:
    if cfg.dataset == "synthetic":
        made = [pack(synthetic_arrays(cfg, split), cfg, cfg.synthetic_seed) for split in ("train", "eval")]
        return ArrayDataset(made[0]), ArrayDataset(made[1])
    return packed_split(data, "train"), packed_split(data, "eval")


def collate(cfg: presets.PackedBertConfig):
    """Packs are laid out already: the loaders stack them."""
    return None


INPUTS = Inputs(verify=verify, datasets=datasets, collate=collate)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = closed.parse_args(argv, prog="python -m mlperf_submission.open.bert.train", registry=presets.PRESETS,
                             description=__doc__)
    cfg = closed.resolve_config(args, presets.PRESETS, validate=presets.validate_open)
    return closed.train(cfg, training.Invocation.from_args(args), division=DIVISION, inputs=INPUTS)


if __name__ == "__main__":
    sys.exit(main())
