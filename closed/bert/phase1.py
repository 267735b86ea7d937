"""The smoke phase-1 checkpoint: what `model.ckpt-28252` is to a real closed BERT run, for the demonstration.

    python -m mlperf_submission.closed.bert.phase1 [--preset smoke] [--set field=value ...] [--cache out/cache]
    make data BENCH=bert            (the same, for the smoke preset)

prints the TF checkpoint prefix, made once per configuration and cached under
`out/cache/bert-phase1-<key>/model.ckpt-<steps>` (`.index`, `.data-00000-of-00001`, and `phase1.json` with
the recipe, the steps and the accuracy reached). The key hashes everything that determines the checkpoint:
the model dimensions, the synthetic corpus and the recipe below; a run whose config only changes the
optimizer, the batch or the runtime shares it.

Phase 2 of MLPerf BERT starts from a phase-1 checkpoint whose masked-LM accuracy on the eval set is about
0.34 (0.34085, reference README). The smoke model is pretrained here the same way, on the toy language of
its own synthetic corpus: at half its sequence length (phase 1 of the reference is trained at 128 tokens,
phase 2 at 512), LAMB with the reference's clipping, until the masked-LM accuracy on the phase-2 eval set
first reaches PHASE1_TARGET, checked every EVAL_EVERY steps. A checkpoint outside ACCEPTED is an error. It
is written as TensorFlow writes the real one (a TensorBundle with the MLPerf variable names, `adam_m` and
`adam_v` slots and `global_step`; `tensorbundle.write_tf_checkpoint`), so that every timed run reads it through
the converter a real `model.ckpt-28252` goes through. Smoke preset, on one core of the shared 2-core AMD EPYC
(torch 2.13): 170 steps to masked-LM accuracy 0.3929 in 15-18 s (`make submit` prints it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ...common import config
from ...common.cli import ArgumentParser, UserError, atomic_dir, atomic_write_text, entry_point
from ...common.data.tensorbundle import write_tf_checkpoint
from . import presets
from .checkpoint import _is_kernel, tf_from_state_dict
from .data import synthetic_arrays
from .model import BertForPretraining, tf_tensor_name
from .optim import Lamb, clip_grad_norm, lr_schedule, param_groups
from .steps import eval_totals, forward

CPU = torch.device("cpu")
DEFAULT_CACHE = Path("out/cache")
FORMAT = 1  # bump whenever the procedure below changes what it writes: old cache entries then go unused
PHASE1_TARGET = 0.34       # masked-LM accuracy of ckpt-28252 on the eval set (0.34085)
ACCEPTED = (0.30, 0.45)    # the range the smoke checkpoint must land in
EVAL_EVERY = 5             # steps; the accuracy rises ~0.05 per 5 steps where it crosses the target
RECIPE = {                 # phase-1 training, independent of the phase-2 run's own hyperparameters
    "global_batch_size": 32, "base_learning_rate": 0.01, "warmup_steps": 50, "training_steps": 1000,
    "beta_1": 0.9, "beta_2": 0.999, "weight_decay_rate": 0.01, "epsilon": 1e-6, "max_grad_norm": 1.0,
    "seed": 0, "sequence_divisor": 2, "eval_every": EVAL_EVERY, "target": PHASE1_TARGET,
}


class Phase1Error(UserError):
    """The smoke pretraining did not land in the accepted accuracy range."""


def determining_fields(cfg: presets.BertRunConfig) -> dict:
    """What the checkpoint depends on besides the recipe: the model and the synthetic corpus."""
    return {"model": dataclasses.asdict(cfg.model_config()),
            "corpus": {name: getattr(cfg, name) for name in (
                "max_seq_length", "max_predictions_per_seq", "synthetic_train_samples", "synthetic_eval_samples",
                "synthetic_seed", "synthetic_lengths")}}


def cache_key(cfg: presets.BertRunConfig) -> str:
    text = json.dumps({"format": FORMAT, "recipe": RECIPE, **determining_fields(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def phase1_corpus(cfg: presets.BertRunConfig) -> presets.BertRunConfig:
    """The phase-1 data: the same toy language at half the sequence length, the reference's length rule."""
    divisor = RECIPE["sequence_divisor"]
    return dataclasses.replace(cfg, max_seq_length=max(8, cfg.max_seq_length // divisor),
                               max_predictions_per_seq=max(1, math.ceil(cfg.max_predictions_per_seq / divisor)),
                               synthetic_lengths="reference")


def _tensors(cfg: presets.BertRunConfig, split: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in synthetic_arrays(cfg, split).items()}


def _batches(arrays: dict[str, torch.Tensor], batch: int = 256):
    for start in range(0, len(arrays["input_ids"]), batch):
        yield {k: v[start:start + batch] for k, v in arrays.items()}


def masked_lm_accuracy(model, arrays: dict[str, torch.Tensor], cfg: presets.BertRunConfig) -> float:
    """Masked-LM accuracy over every masked position of `arrays` (the phase-2 eval set)."""
    totals = eval_totals(model, _batches(arrays), cfg, CPU)
    return (totals[0] / totals[1]).item()


def pretrain(cfg: presets.BertRunConfig) -> tuple[BertForPretraining, Lamb, int, float]:
    """Train the model of `cfg` on its phase-1 corpus to PHASE1_TARGET; -> (model, optimizer, steps, accuracy)."""
    r = RECIPE
    cfg = dataclasses.replace(cfg, precision="fp32")  # the padded forward of steps.forward, without autocast
    torch.manual_seed(r["seed"])
    model = BertForPretraining(cfg.model_config())
    optimizer = Lamb(param_groups(model, r["weight_decay_rate"]), lr=0.0, betas=(r["beta_1"], r["beta_2"]),
                     eps=r["epsilon"])
    train = _tensors(phase1_corpus(cfg), "train")
    evals = _tensors(cfg, "eval")
    order = torch.Generator().manual_seed(r["seed"])
    size, batch, step = len(train["input_ids"]), r["global_batch_size"], 0
    while step < r["training_steps"]:
        permutation = torch.randperm(size, generator=order)
        for start in range(0, size - batch + 1, batch):
            picked = permutation[start:start + batch]
            loss, _, _ = forward(model, {k: v[picked] for k, v in train.items()}, cfg, CPU)
            loss.backward()
            clip_grad_norm(model.parameters(), r["max_grad_norm"])
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule(step, base_lr=r["base_learning_rate"], warmup_steps=r["warmup_steps"],
                                          start_warmup_step=0, total_steps=r["training_steps"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % r["eval_every"] == 0 and (accuracy := masked_lm_accuracy(model, evals, cfg)) >= r["target"]:
                if not ACCEPTED[0] <= accuracy <= ACCEPTED[1]:
                    raise Phase1Error(f"smoke phase-1 pretraining overshot: masked-LM accuracy {accuracy:.4f} "
                                      f"at step {step}, outside {ACCEPTED}; lower EVAL_EVERY in {__file__}")
                return model, optimizer, step, accuracy
            if step == r["training_steps"]:
                break
    raise Phase1Error(f"smoke phase-1 pretraining did not reach masked-LM accuracy {r['target']} in "
                      f"{step} steps: this configuration's corpus is too hard for the recipe; give --ckpt")


def tf_tensors(model: BertForPretraining, optimizer: Lamb, steps: int) -> dict[str, np.ndarray]:
    """The TF variables of a pretraining checkpoint: weights, their `adam_m`/`adam_v` slots (here LAMB's
    moments, as the reference names them), and `global_step`."""
    tensors = tf_from_state_dict(model.state_dict())
    for name, p in model.named_parameters():
        tf_name = tf_tensor_name(name)
        for slot, moment in (("adam_m", "m"), ("adam_v", "v")):
            array = optimizer.state[p][moment].detach().float().numpy()
            tensors[f"{tf_name}/{slot}"] = np.ascontiguousarray(array.T if _is_kernel(tf_name) else array)
    tensors["global_step"] = np.array(steps, dtype=np.int64)
    return tensors


@contextlib.contextmanager
def _locked(path: Path):
    """One maker at a time (ranks of a distributed run, parallel runs): the others wait, then reuse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(cfg: presets.BertRunConfig, cache: Path = DEFAULT_CACHE) -> Path | None:
    """The prefix of the cached checkpoint for cfg, or None."""
    meta = Path(cache) / f"bert-phase1-{cache_key(cfg)}" / "phase1.json"
    if not meta.is_file():
        return None
    return meta.parent / json.loads(meta.read_text())["prefix"]


def smoke_checkpoint(cfg: presets.BertRunConfig, cache: Path = DEFAULT_CACHE) -> Path:
    """The TF prefix of cfg's smoke phase-1 checkpoint, made (once, atomically) if it is not cached yet."""
    if cfg.dataset != "synthetic":
        raise UserError("the smoke phase-1 checkpoint is for the synthetic corpus; real runs need "
                        "CKPT=/data/bert/phase1/model.ckpt-28252")
    cache = Path(cache)
    key = cache_key(cfg)
    with _locked(cache / f".bert-phase1-{key}.lock"):
        if (prefix := cached(cfg, cache)) is not None:
            return prefix
        started, threads = time.time(), torch.get_num_threads()
        print(f"making the smoke phase-1 checkpoint (once, cached in {cache}/bert-phase1-{key})", flush=True)
        # One thread, as the smoke runs (presets.smoke): faster at these widths, and the same result everywhere.
        torch.set_num_threads(1)
        try:
            model, optimizer, steps, accuracy = pretrain(cfg)
        finally:
            torch.set_num_threads(threads)
        with atomic_dir(cache / f"bert-phase1-{key}") as tmp:
            write_tf_checkpoint(tmp / f"model.ckpt-{steps}", tf_tensors(model, optimizer, steps))
            atomic_write_text(tmp / "phase1.json", json.dumps({
                "prefix": f"model.ckpt-{steps}", "steps": steps, "masked_lm_accuracy": accuracy,
                "seconds": round(time.time() - started, 1), "format": FORMAT, "recipe": RECIPE,
                **determining_fields(cfg)}, indent=1, sort_keys=True) + "\n")
        print(f"smoke phase-1 checkpoint: {steps} steps, masked-LM accuracy {accuracy:.4f}, "
              f"{time.time() - started:.1f} s", flush=True)
    return cached(cfg, cache)


def submission_checkpoint(division: str, bench: str, preset: str, overrides, given: str) -> str:
    """`make submit`'s CKPT: as given; for a closed BERT demonstration without one, the smoke phase-1
    checkpoint, made here once before the timed runs; for a real closed BERT preset without one, a UserError
    before anything runs. Other cases get none (open BERT may give one)."""
    if given and bench != "bert":
        raise UserError("CKPT is the BERT phase-1 checkpoint; ResNet starts from random weights")
    if given or (division, bench) != ("closed", "bert"):
        return given
    cfg = config.override(config.select(presets.PRESETS, preset), overrides)
    if cfg.dataset != "synthetic":
        raise UserError(f"closed BERT {preset}: {presets.CKPT_HINT}")  # before any run starts
    return str(smoke_checkpoint(cfg))


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.closed.bert.phase1", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke", help=f"one of {', '.join(presets.PRESETS)} (synthetic ones)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache folder (default out/cache)")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)  # tiny widths make denormals, ~10x slower on x86 (train.py)
    cfg = config.override(config.select(presets.PRESETS, args.preset), args.overrides)
    print(smoke_checkpoint(cfg, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
