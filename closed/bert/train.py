"""Closed-division BERT-Large (phase 2 pretraining): one MLPerf Training v1.1 run in one process or job.

    python -m mlperf_submission.closed.bert.train --preset smoke --seed 1 --system systems/1xH200.json \
        --result-log out/result_0.txt [--data CONVERTED_DIR --ckpt /data/bert/phase1/model.ckpt-28252] \
        [--set field=value ...]

Writes one MLPerf result log (a new file; never appended to) and prints progress for humans. Eval
`epoch_num` is the number of training samples seen, as the RCP checker reads it. Phase 2 starts from the
phase-1 checkpoint, loaded in the untimed init: `--ckpt` takes the TF prefix (converted there by
`checkpoint.py`) or a converted `.pt`, and a closed run on real data refuses to start without it. With the
`smoke` preset it trains on the built-in synthetic corpus from the smoke phase-1 checkpoint of its config
(`phase1.py`, made once and cached when no --ckpt is given; figures in the preset's docstring). Evals come
only on the cadence; a run that reaches its sample limit unconverged stops there, `aborted`. Each batch
the sampler draws is laid out without its padding in the data workers (`unpad`, model.forward_packed: the
padded batch's loss and gradients); the sequences a step trains are counted on the host from the sampler's
order, so the loop reads nothing back from the device between evals (fp16's loss scaler still checks each
step for an overflow).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlperf_submission.closed.bert import checkpoint, identity, phase1, presets
from mlperf_submission.closed.bert.model import BertForPretraining, forward_packed, mlperf_tensor_names
from mlperf_submission.closed.bert.optim import (
    Lamb,
    clip_grad_norm,
    lr_schedule,
    mlm_loss_and_accuracy,
    nsp_loss,
    packed_loss,
    param_groups,
    per_sequence_losses,
)
from mlperf_submission.common import training
from mlperf_submission.common.cli import UserError, entry_point
from mlperf_submission.common.data import bert_wiki, packing
from mlperf_submission.common.data.loader import loader
from mlperf_submission.common.run import Run, dataset_files
from mlperf_submission.common.runtime import distributed
from mlperf_submission.common.runtime.compile import batch_sizes, compiled, needs_warm_up, undone
from mlperf_submission.common.runtime.precision import autocast

DIVISION = "closed"


def parse_args(argv, *, prog="python -m mlperf_submission.closed.bert.train", registry=presets.PRESETS,
               description=__doc__):
    p = training.arguments(prog=prog, description=description, registry=registry,
                           data_help="folder written by `make data BENCH=bert`")
    p.add_argument("--ckpt", default="", help="phase-1 checkpoint: TF prefix (e.g. /data/bert/phase1/model.ckpt-"
                   "28252, converted in the untimed init) or a converted .pt; sets init_checkpoint")
    return p.parse_args(argv)


def resolve_config(args, registry=presets.PRESETS, validate=presets.validate_closed) -> presets.BertRunConfig:
    cfg = training.resolve(args, registry, validate, real_dataset="wiki",
                           synthetic_with_data="trains on the synthetic corpus; with DATA, choose a Wikipedia preset",
                           real_without_data="needs the MLPerf Wikipedia data: give DATA=<folder> (`make data`)",
                           **({"init_checkpoint": args.ckpt} if args.ckpt else {}))
    if cfg.init_checkpoint:
        try:  # the index or the .pt's metadata only: the weights are read in the untimed init
            checkpoint.check_init_checkpoint(cfg.init_checkpoint, cfg.model_config())
        except checkpoint.CheckpointError as e:
            raise UserError(f"init checkpoint: {e} (give the phase-1 TF prefix, e.g. CKPT=/data/bert/phase1/"
                            "model.ckpt-28252, or a .pt from closed/bert/checkpoint.py)") from None
    return cfg


def with_phase1(cfg: presets.BertRunConfig) -> presets.BertRunConfig:
    """A closed synthetic run without a checkpoint starts from the smoke phase-1 checkpoint of its config
    (made once, before any log; `make submit` makes it before the first run)."""
    if cfg.init_checkpoint or cfg.dataset != "synthetic":
        return cfg
    return dataclasses.replace(cfg, init_checkpoint=str(phase1.smoke_checkpoint(cfg)))


def synthetic_arrays(cfg: presets.BertRunConfig, split: str) -> dict[str, np.ndarray]:
    """The built-in synthetic corpus of a preset, as bert_wiki arrays."""
    num = cfg.synthetic_train_samples if split == "train" else cfg.synthetic_eval_samples
    lengths = None
    if cfg.synthetic_lengths == "wikipedia":
        lengths = bert_wiki.wikipedia_lengths(num, cfg.max_seq_length, seed=cfg.synthetic_seed + (split == "eval"))
    return bert_wiki.synthetic_instances(num, seq_len=cfg.max_seq_length, vocab_size=cfg.vocab_size,
                                         max_pred=cfg.max_predictions_per_seq, seed=cfg.synthetic_seed, split=split,
                                         lengths=lengths)


class ArrayDataset(torch.utils.data.Dataset):
    """Arrays held in memory (the synthetic corpus, packed or not), in the same item format as BertDataset."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        weights = self.arrays.get("nsp_weights")  # packs: the real sequences of each
        self.sequences = len(self) if weights is None else int(weights.sum())

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


def verify(cfg, data: Path) -> None:
    """Checksums of the whole converted folder, and the closed rules' eval set of 10,000 samples."""
    try:
        manifest = bert_wiki.verify(data)
    except bert_wiki.DataError as e:
        raise UserError(f"{e} (prepare the data with `make data BENCH=bert`)") from None
    if (count := manifest["splits"]["eval"]["count"]) != presets.WIKI_EVAL_SAMPLES:
        raise UserError(f"{data}: the eval split holds {count:,} samples; the closed rules evaluate on the "
                        f"{presets.WIKI_EVAL_SAMPLES:,} of eval_10k (`make data BENCH=bert ... EVAL=eval_10k`)")


def datasets(cfg, data: Path | None):
    if cfg.dataset == "synthetic":
        return ArrayDataset(synthetic_arrays(cfg, "train")), ArrayDataset(synthetic_arrays(cfg, "eval"))
    return bert_wiki.BertDataset(data, "train"), bert_wiki.BertDataset(data, "eval")


def unpadded_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch of padded sequences -> the same sequences in unpadded rows (`packing.unpadded_batch`), in the
    data workers, so that the training step never sees the padding."""
    arrays = {k: np.stack([item[k].numpy() for item in items]) for k in items[0]}
    return {k: torch.from_numpy(v) for k, v in packing.unpadded_batch(arrays).items()}


def collate(cfg):
    """The loaders' collate_fn: unpadded rows unless `unpad=false`; None is torch's stacking of the rows."""
    return unpadded_collate if cfg.unpad else None


def forward(model, batch, cfg, device):
    """-> (loss, correct, count) for one batch, padded rows or unpadded ones (those carry `sequence_ids`):
    MLM at the masked positions only, averaged as cfg.loss_averaging says, plus NSP."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    unpadded = "sequence_ids" in b
    with autocast(cfg.precision, device):
        if unpadded:
            mlm_logits, nsp_logits = forward_packed(model, b, cfg.unpad_attention)
        else:
            mlm_logits, nsp_logits = model(b["input_ids"], b["segment_ids"], b["input_mask"],
                                           b["masked_lm_positions"])
    if unpadded:
        return packed_loss(per_sequence_losses(mlm_logits, nsp_logits, b), b, cfg.loss_averaging)
    loss, correct, count = mlm_loss_and_accuracy(mlm_logits, b["masked_lm_ids"], b["masked_lm_weights"])
    return loss + nsp_loss(nsp_logits, b["next_sentence_labels"]), correct, count


def synthetic_batch(cfg, n: int) -> dict[str, torch.Tensor]:
    """n sequences of the synthetic corpus, laid out as a loader batch (unpadded unless `unpad=false`):
    the warm-up input (the untimed init never touches the training data)."""
    arrays = bert_wiki.synthetic_instances(n, seq_len=cfg.max_seq_length, vocab_size=cfg.vocab_size,
                                           max_pred=cfg.max_predictions_per_seq, seed=0, split="eval")
    dataset = ArrayDataset(arrays)
    return (collate(cfg) or torch.utils.data.default_collate)([dataset[i] for i in range(n)])


def sequence_count(dataset) -> int:
    """Sequences in a dataset, as train_samples and eval_samples count them (packed datasets say theirs)."""
    return getattr(dataset, "sequences", len(dataset))


def item_sequences(dataset) -> np.ndarray | None:
    """Sequences in each item of a dataset of packs (their `nsp_weights`), or None: one sequence an item."""
    weights = getattr(dataset, "arrays", {}).get("nsp_weights")
    return None if weights is None else (np.asarray(weights) > 0).sum(1)


@dataclass(frozen=True)
class Inputs:
    """How a run reads its data: padded sequences, laid out unpadded per batch, here; packed offline in the
    open division. Everything else (model, loss, step, eval, log) is this file's for both."""

    verify: Callable = verify      # (cfg, data folder) -> None, or UserError before any log
    datasets: Callable = datasets  # (cfg, data folder | None) -> (train, eval) datasets
    collate: Callable = collate    # (cfg) -> the loaders' collate_fn (None: stack the items)


def lamb(model, cfg) -> Lamb:
    """The reference's LAMB over the model's parameters, as cfg sets it; the schedule sets each step's lr."""
    return Lamb(param_groups(model, cfg.opt_lamb_weight_decay_rate), lr=0.0,
                betas=(cfg.opt_lamb_beta_1, cfg.opt_lamb_beta_2), eps=cfg.opt_epsilon,
                bias_correction=cfg.opt_lamb_bias_correction, foreach=cfg.optimizer_foreach)


def micro_step(model, replica, scaler, batch, cfg, device, *, reduce: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch, its loss divided over the accumulation steps (and scaled for
    fp16); the gradients are all-reduced in the step's last one (`reduce`). -> the batch's loss."""
    with replica.micro_step(reduce=reduce):
        loss, _, _ = forward(model, batch, cfg, device)
        scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
    return loss


def optimizer_step(replica, optimizer, scaler, clip, cfg, step: int) -> tuple[float, bool]:
    """The update that ends optimizer step `step` (from 0): the reference's learning rate, the clip, LAMB.
    -> (the learning rate, whether the update was applied: False on an fp16 overflow)."""
    lr = lr_schedule(step, base_lr=cfg.opt_base_learning_rate, warmup_steps=cfg.opt_learning_rate_warmup_steps,
                     start_warmup_step=cfg.start_warmup_step, total_steps=cfg.opt_learning_rate_training_steps)
    # The mean gradient is clipped, as one device would, unless each rank clips its own first.
    applied = training.update(replica, optimizer, scaler, lr, clip=clip,
                              clip_before_allreduce=cfg.clip_before_allreduce)
    return lr, applied


@dataclass
class Cadence:
    """A run's evals and stop rules, with its MLPerf blocks: an eval only when a step crosses a multiple of
    `interval` samples; success at the first eval at or above `target`; `aborted` at `limit` samples. Rank 0
    (`is_main`) prints each eval's line."""

    run: Run
    interval: int
    limit: int
    target: float
    is_main: bool
    status: str = "aborted"
    block_first: int = 0
    started: float = 0.0

    def start(self) -> None:
        self.run.block_start(first_epoch_num=0, epoch_count=self.interval)
        self.started = time.time()

    def after_step(self, samples: int, step_samples: int, evaluate: Callable[[], float],
                   loss: Callable[[], float], lr: float) -> bool:
        """After the optimizer step that brought the count to `samples`: evaluate if one is due (its line
        shows `loss()`, read only then); -> True when the run ends here."""
        self.run.samples_trained = samples
        if samples // self.interval == (samples - step_samples) // self.interval:  # off the cadence
            if samples >= self.limit:
                self.run.block_stop(first_epoch_num=self.block_first)
                return True
            return False
        self.run.eval_start(samples)
        accuracy = evaluate()
        self.run.eval_stop(samples, accuracy)
        self.run.block_stop(first_epoch_num=self.block_first)
        if self.is_main:
            print(f"{samples:,} samples: loss {loss():.3f}, lr {lr:.5f}, masked-LM accuracy {accuracy:.4f}, "
                  f"{samples / (time.time() - self.started):,.1f} sequences/s", flush=True)
        if accuracy >= self.target:
            self.status = "success"
            return True
        if samples >= self.limit:
            return True
        self.block_first = samples
        self.run.block_start(first_epoch_num=samples, epoch_count=self.interval)
        return False


def evaluate(model, val, cfg, device, dist, forward=forward) -> float:
    """Masked-LM accuracy over every masked position of the whole eval set, each sample once."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in val:
            _, correct, count = forward(model, batch, cfg, device)
            totals += torch.stack([correct, count]).double()
    dist.all_reduce_sum(totals)
    model.train()
    return (totals[0] / totals[1]).item()


def load_checkpoint(model, cfg, dist) -> None:
    """The phase-1 weights, read and (a TF prefix) converted here, between init_start and init_stop, where
    the rules count them as initialisation; the clock starts only after."""
    started = time.time()
    try:
        state = checkpoint.load_init_checkpoint(cfg.init_checkpoint, cfg.model_config())
    except checkpoint.CheckpointError as e:
        raise UserError(f"init checkpoint: {e}") from None
    model.load_state_dict(state)
    if dist.is_main:
        print(f"init checkpoint {cfg.init_checkpoint}: {len(state)} tensors, "
              f"{sum(t.numel() for t in state.values()):,} parameters, loaded in {time.time() - started:.1f} s "
              "(untimed init)", flush=True)


def warm_up(model, replica, optimizer, scaler, cfg, device, train_sizes, eval_sizes) -> None:
    """Untimed, on synthetic batches: one training step at learning rate 0 per training batch size and one
    eval forward per eval batch size, so that torch.compile compiles nothing inside the timed region. The
    caller undoes its effects (`compile.undone`)."""
    for n in train_sizes:
        micro_step(model, replica, scaler, synthetic_batch(cfg, n), cfg, device, reduce=True)
        training.update(replica, optimizer, scaler, 0.0)
    model.eval()
    with torch.no_grad():
        for n in eval_sizes:
            forward(model, synthetic_batch(cfg, n), cfg, device)
    model.train()


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return train(with_phase1(resolve_config(args)), args, division=DIVISION)


def train(cfg: presets.BertRunConfig, args, *, division: str, inputs: Inputs = Inputs()) -> int:
    """One run with a resolved config; the open division calls this with its own config and inputs."""
    if cfg.device == "ipu":
        from mlperf_submission.closed.bert import ipu  # the step on the IPUs, through PopTorch

        return ipu.train(cfg, args, division=division, inputs=inputs)
    submission = training.submission(args, division=division, benchmark="bert")
    if cfg.dataset == "wiki":
        inputs.verify(cfg, args.data)
    # Closed on real data: the checkpoint's measured starting accuracy near 0.34085, or an override; logged.
    checkpoint_keys = identity.checked(cfg) if (division, cfg.dataset) == ("closed", "wiki") else {}
    if cfg.clip_before_allreduce and cfg.precision == "fp16":
        raise UserError("clip_before_allreduce with fp16 loss scaling: ranks could disagree on skipping a step "
                        "(choose bf16, or clip after the all-reduce)")
    dist, local_batch = training.ranks(cfg, cfg.global_batch_items)
    device = dist.device
    training.announce("bert", division, args, cfg, dist, local_batch)
    log = training.seeded_log(args, dist)
    # Tiny smoke widths produce denormal floats that run ~10x slower on x86 CPUs; flushing them to zero
    # is what GPUs do by default.
    torch.set_flush_denormal(True)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    train_set, val_set = inputs.datasets(cfg, args.data)
    interval, limit = presets.eval_interval(cfg), presets.max_samples(cfg)
    # train_samples: the samples trained, logged before run_stop (`Cadence.after_step` counts them), as NVIDIA's
    # v1.1 BERT does (run_pretraining.py: TRAIN_SAMPLES = samples_trained = global_step x global batch).
    with Run(log, submission, seed=args.seed, hyperparameters=presets.hyperparameters(cfg) | checkpoint_keys,
             train_samples=None, eval_samples=sequence_count(val_set),
             data_files=dataset_files(args.data) if cfg.dataset != "synthetic" else None) as run:
        model = BertForPretraining(cfg.model_config())
        if cfg.init_checkpoint:
            load_checkpoint(model, cfg, dist)
        run.weights_initialization(mlperf_tensor_names(model)[name] for name, _ in model.named_parameters())
        model = model.to(device)
        optimizer = lamb(model, cfg)
        # Clipping each rank's own gradient needs it before the all-reduce, so not overlapped with backward.
        replica = dist.replicate(model, optimizer, accumulation_steps=cfg.gradient_accumulation_steps,
                                 reduce_in_backward=not cfg.clip_before_allreduce)
        model, optimizer = replica.module, replica.optimizer
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        # The reference's clip_by_global_norm, on the unscaled gradients of every step.
        clip = functools.partial(clip_grad_norm, list(model.parameters()), cfg.max_grad_norm)
        sampler = distributed.train_sampler(train_set, dist, args.seed)  # one permutation over all ranks
        overlap = dict(prefetch_factor=cfg.prefetch_factor, pin_memory=cfg.pin_memory, collate=inputs.collate(cfg))
        train_loader = loader(train_set, local_batch, shuffle=False, workers=cfg.data_workers,
                              seed=args.seed + dist.rank, drop_last=True, sampler=sampler, **overlap)
        val_loader = loader(distributed.eval_shard(val_set, dist), local_batch, shuffle=False,
                            workers=cfg.data_workers, seed=args.seed, drop_last=False, **overlap)
        if needs_warm_up(cfg.torch_compile, device):  # compiled, or eager on CUDA (issue 16)
            plain, model = model, compiled(model, cfg.torch_compile)
            with undone(plain, optimizer, scaler):
                warm_up(model, replica, optimizer, scaler, cfg, device,
                        batch_sizes(len(train_loader.sampler), local_batch, drop_last=True),
                        batch_sizes(len(val_loader.dataset), local_batch, drop_last=False))

        # Sequences in each micro-batch over all ranks, from the sampler's order; epoch 1's before run_start.
        per_item, world_batch = item_sequences(train_set), local_batch * dist.world_size
        counts = sampler.batch_sums(per_item, world_batch, len(train_loader))
        cadence = Cadence(run, interval, limit, cfg.target_accuracy, dist.is_main)
        run.start()
        cadence.start()
        step, samples, epoch, done, micro, step_samples = 0, 0, 0, False, 0, 0
        while not done:
            epoch += 1
            sampler.set_epoch(epoch)
            if epoch > 1:
                counts = sampler.batch_sums(per_item, world_batch, len(train_loader))
            for j, batch in enumerate(train_loader):
                micro += 1
                last = micro % cfg.gradient_accumulation_steps == 0
                loss = micro_step(model, replica, scaler, batch, cfg, device, reduce=last)
                step_samples += counts[j]
                if not last:
                    continue
                lr, applied = optimizer_step(replica, optimizer, scaler, clip, cfg, step)
                # An fp16 step skipped on overflow counts neither as a step nor as samples (NVIDIA's v1.1 BERT).
                step_samples *= applied
                step += applied
                samples += step_samples
                done = cadence.after_step(samples, step_samples, lambda: evaluate(model, val_loader, cfg, device, dist),
                                          loss.item, lr)
                step_samples = 0
                if done:
                    break
        run.stop(cadence.status)
    if dist.is_main:
        print(f"run_stop: {cadence.status} after {samples:,} samples", flush=True)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
