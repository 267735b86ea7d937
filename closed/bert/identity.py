"""The phase-1 checkpoint's identity: its files' sha256 and its masked-LM accuracy on the eval set before any
training, measured once (offline, untimed) and recorded beside the checkpoint; closed runs on real data check it.

    python -m mlperf_submission.closed.bert.checkpoint --eval DATA CKPT [--preset NAME] [--set FIELD=VALUE ...]
    (this module has no entry point of its own: checkpoint.py hands it its checkpoint loader)
    (also run by `make data BENCH=bert SRC=... OUT=DATA CKPT=CKPT`)

DATA is the folder `make data BENCH=bert` wrote (its 10,000-sample eval split), or `synthetic` for a synthetic
preset; CKPT the TF prefix (e.g. /data/bert/phase1/model.ckpt-28252) or a converted .pt. Writes
CKPT.identity.json and prints the accuracy against the expected one. The MLCommons reference publishes no
checksum of model.ckpt-28252 (its README lists md5s of the text files only) but gives the test: evaluated at 0
samples, the masked-LM accuracy "should be very close to 0.34085" (language_model/tensorflow/bert/README.md at
9947bdf2). The smoke phase-1 checkpoint's expected value is the one `phase1.py` measured when it made it
(0.39 as made; phase1.json beside it).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ...common import config
from ...common.cli import ArgumentParser, UserError, atomic_write_text, entry_point, sha256_file
from ...common.data import bert_wiki
from . import presets
from .model import BertForPretraining
from .optim import mlm_loss_and_accuracy

# (checkpoint path, model config) -> state_dict: checkpoint.load_init_checkpoint, which hands itself to `main`
# (checkpoint.py runs `--eval`), so that neither module imports the other.
Loader = Callable[[str, object], dict]

REFERENCE_ACCURACY = 0.34085
# Absolute. The same weights on the same 10,000 samples differ only by float rounding (the TF checkpoint
# converts bit-exact, tests/test_bert_reference.py), a few masked tokens in the ~76,000 evaluated (1e-4 or
# less); 0.001 leaves room for 16-bit evaluation and still tells another checkpoint or eval set apart.
TOLERANCE = 0.001


def prefix(ckpt: str | os.PathLike) -> Path:
    """A TF checkpoint named by its prefix or one of its files -> the prefix (checkpoint.checkpoint_prefix)."""
    return Path(re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", str(ckpt)))


def files(ckpt: str | os.PathLike) -> list[Path]:
    """The files that make up a checkpoint: a .pt, or a TF prefix's .index and data shards."""
    if str(ckpt).endswith(".pt"):
        return [Path(ckpt)]
    prefix_ = prefix(ckpt)
    return sorted([prefix_.with_name(prefix_.name + ".index"), *prefix_.parent.glob(prefix_.name + ".data-*")])


def record_path(ckpt: str | os.PathLike) -> Path:
    path = Path(ckpt) if str(ckpt).endswith(".pt") else prefix(ckpt)
    return path.with_name(path.name + ".identity.json")


def stamps(ckpt: str | os.PathLike) -> dict[str, list[int]]:
    """Each file's size and mtime: what a run compares cheaply before it trusts the recorded sha256."""
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files(ckpt)}


def expected_accuracy(cfg: presets.BertRunConfig) -> float:
    """0.34085 for ckpt-28252 on Wikipedia; for the smoke's own checkpoint, what phase1.py measured making it."""
    if cfg.dataset == "wiki":
        return REFERENCE_ACCURACY
    made = prefix(cfg.init_checkpoint).parent / "phase1.json"
    if not made.is_file():
        raise UserError(f"{made} is missing: a synthetic preset is measured against the smoke phase-1 checkpoint's "
                        "own accuracy (make it with `make data BENCH=bert`)")
    return json.loads(made.read_text())["masked_lm_accuracy"]


def eval_batches(cfg: presets.BertRunConfig, data: Path | None, batch: int = 64):
    """The eval set in padded batches of tensors: DATA's eval split, or the synthetic preset's (the phase-2 eval
    set that phase1.py measures its checkpoint on)."""
    if cfg.dataset == "synthetic":  # the arrays of train.synthetic_arrays and phase1's eval set
        lengths = None
        if cfg.synthetic_lengths == "wikipedia":
            lengths = bert_wiki.wikipedia_lengths(cfg.synthetic_eval_samples, cfg.max_seq_length,
                                                  seed=cfg.synthetic_seed + 1)
        arrays = bert_wiki.synthetic_instances(cfg.synthetic_eval_samples, seq_len=cfg.max_seq_length,
                                               vocab_size=cfg.vocab_size, max_pred=cfg.max_predictions_per_seq,
                                               seed=cfg.synthetic_seed, split="eval", lengths=lengths)
        for start in range(0, len(arrays["input_ids"]), batch):
            yield {k: torch.from_numpy(v[start:start + batch]) for k, v in arrays.items()}
        return
    try:
        dataset = bert_wiki.BertDataset(data, "eval")
    except bert_wiki.DataError as e:
        raise UserError(f"{e} (DATA is the folder `make data BENCH=bert` wrote)") from None
    yield from torch.utils.data.DataLoader(dataset, batch_size=batch)


def measure(cfg: presets.BertRunConfig, data: Path | None, load: Loader) -> float:
    """Masked-LM accuracy of cfg.init_checkpoint, loaded as a run loads it, on the eval set, in fp32."""
    try:
        state = load(cfg.init_checkpoint, cfg.model_config())
    except ValueError as e:  # checkpoint.CheckpointError
        raise UserError(f"init checkpoint: {e}") from None
    model = BertForPretraining(cfg.model_config())
    model.load_state_dict(state)
    model.eval()
    correct = count = 0.0
    with torch.no_grad():
        for b in eval_batches(cfg, data):
            mlm, _ = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
            _, c, n = mlm_loss_and_accuracy(mlm, b["masked_lm_ids"], b["masked_lm_weights"])
            correct, count = correct + c.item(), count + n.item()
    return correct / count


def record(cfg: presets.BertRunConfig, data: Path | None, load: Loader) -> dict:
    """Measure, then write CKPT.identity.json (atomically) -> the record."""
    accuracy = measure(cfg, data, load)
    expected = expected_accuracy(cfg)
    entry = {"masked_lm_accuracy": accuracy, "expected": expected, "tolerance": TOLERANCE,
             "sha256": {p.name: sha256_file(p) for p in files(cfg.init_checkpoint)},
             "stamps": stamps(cfg.init_checkpoint), "eval_data": str(data) if data else "synthetic"}
    atomic_write_text(record_path(cfg.init_checkpoint), json.dumps(entry, indent=1, sort_keys=True) + "\n")
    return entry


def checked(cfg: presets.BertRunConfig) -> dict[str, object]:
    """Before any log of a closed run on real data: the checkpoint's record, its files unchanged since it was
    measured, and its accuracy within TOLERANCE of 0.34085; else UserError, unless cfg.init_checkpoint_override
    gives a reason (logged, and disclosed in the package README). -> the MLPerf keys the run logs about it."""
    override = cfg.init_checkpoint_override
    path = record_path(cfg.init_checkpoint)
    entry = json.loads(path.read_text()) if path.is_file() else None
    how = (f"measure it once with `python -m mlperf_submission.closed.bert.checkpoint --eval DATA "
           f"{cfg.init_checkpoint}`, or start anyway with --set init_checkpoint_override=REASON")
    if entry is None:
        problem = f"its masked-LM accuracy before training is unmeasured (no {path.name})"
    elif entry["stamps"] != stamps(cfg.init_checkpoint):
        problem = f"its files changed since {path.name} was written"
    elif not math.isclose(entry["masked_lm_accuracy"], REFERENCE_ACCURACY, abs_tol=TOLERANCE):
        problem = (f"its masked-LM accuracy before training is {entry['masked_lm_accuracy']:.5f}, not within "
                   f"{TOLERANCE} of the reference's {REFERENCE_ACCURACY}")
    else:
        problem = ""
    if problem and not override:
        raise UserError(f"init checkpoint {cfg.init_checkpoint}: {problem}: {how}")
    logged: dict[str, object] = {}
    if entry is not None:
        logged["init_checkpoint_sha256"] = ",".join(entry["sha256"][name] for name in sorted(entry["sha256"]))
        logged["init_checkpoint_masked_lm_accuracy"] = entry["masked_lm_accuracy"]
    if override:
        logged["init_checkpoint_override"] = f"{override} ({problem or 'checked and within tolerance'})"
    return logged


@entry_point
def main(argv: list[str], load: Loader) -> int:
    """`checkpoint.py --eval ARGS`: measure and record; `load` reads the checkpoint as a run does."""
    p = ArgumentParser(prog="python -m mlperf_submission.closed.bert.checkpoint --eval",
                       description=__doc__.split("\n")[0])
    p.add_argument("data", help="the converted data folder (`make data BENCH=bert`), or `synthetic`")
    p.add_argument("ckpt", help="the phase-1 checkpoint: TF prefix or converted .pt")
    p.add_argument("--preset", help="the model and data to evaluate with (default: smoke for synthetic, else "
                   "8xA100, BERT-Large)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    synthetic = args.data == "synthetic"
    preset = args.preset or ("smoke" if synthetic else "8xA100")
    cfg = config.override(config.select(presets.PRESETS, preset), [*args.overrides, f"init_checkpoint={args.ckpt}"])
    if synthetic != (cfg.dataset == "synthetic"):
        raise UserError(f"preset {preset} evaluates on {'synthetic data' if cfg.dataset == 'synthetic' else 'DATA'}"
                        f", not {args.data}")
    data = None if synthetic else Path(args.data)
    if data is not None and not data.is_dir():
        raise UserError(f"DATA {data} is not a folder: give the one `make data BENCH=bert` wrote, or `synthetic`")
    torch.set_flush_denormal(True)  # tiny widths make denormals, ~10x slower on x86 (train.py)
    entry = record(cfg, data, load)
    near = math.isclose(entry["masked_lm_accuracy"], entry["expected"], abs_tol=TOLERANCE)
    print(f"{args.ckpt}: masked-LM accuracy before training {entry['masked_lm_accuracy']:.5f} ({'' if near else 'NOT '}"
          f"within {TOLERANCE} of the expected {entry['expected']:.5f}); recorded with its sha256 in "
          f"{record_path(args.ckpt)}")
    return 0
