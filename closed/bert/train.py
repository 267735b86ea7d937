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

import numpy as np
import torch

from ...common import training
from ...common.cadence import Cadence
from ...common.cli import UserError, entry_point
from ...common.data.loader import loader
from ...common.rehearsal import Rehearsal
from ...common.runtime import distributed
from ...common.runtime.compile import batch_sizes, compiled, needs_warm_up, undone
from . import checkpoint, data, identity, ipu, phase1, presets, steps
from .data import CLOSED_INPUTS, Inputs, SequenceDataset
from .model import BertForPretraining, mlperf_tensor_names
from .optim import clip_grad_norm

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


@dataclass
class Loop:
    """What the timed loop runs, all of it built in the untimed init."""

    model: torch.nn.Module
    replica: distributed.DataParallel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    clip: Callable[[], object]
    sampler: distributed.EpochSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    per_item: np.ndarray | None   # sequences in each training item (packs), None: one each
    world_batch: int              # items in one micro-batch over all ranks
    first_counts: list[int] = dataclasses.field(default_factory=list)  # epoch 1's batch_sums, made untimed

    def batch_sums(self) -> list[int]:
        """Sequences in each micro-batch of the sampler's current epoch, over all ranks: counted on the host,
        so the loop reads nothing back from the device to count its samples."""
        return self.sampler.batch_sums(self.per_item, self.world_batch, len(self.train_loader))


def prepared(model, cfg: presets.BertRunConfig, dist: distributed.Dist, inputs: Inputs, train_set: SequenceDataset,
             val_set: SequenceDataset, local_batch: int, seed: int) -> Loop:
    """The untimed init after the weights: the model on the device, LAMB, the replica, the fp16 scaler, the
    clip, the loaders and (compiled, or eager on CUDA: issue 16) the warm-up, its effects undone."""
    device = dist.device
    model = model.to(device)
    optimizer = steps.lamb(model, cfg)
    # Clipping each rank's own gradient needs it before the all-reduce, so not overlapped with backward.
    replica = dist.replicate(model, optimizer, accumulation_steps=cfg.gradient_accumulation_steps,
                             reduce_in_backward=not cfg.clip_before_allreduce)
    model, optimizer = replica.module, replica.optimizer
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    # The reference's clip_by_global_norm, on the unscaled gradients of every step.
    clip = functools.partial(clip_grad_norm, list(model.parameters()), cfg.max_grad_norm)
    sampler = distributed.train_sampler(train_set, dist, seed)  # one permutation over all ranks
    loading = dict(prefetch_factor=cfg.prefetch_factor, pin_memory=cfg.pin_memory, collate=inputs.collate(cfg))
    train_loader = loader(train_set, local_batch, shuffle=False, workers=cfg.data_workers, seed=seed + dist.rank,
                          drop_last=True, sampler=sampler, **loading)
    val_loader = loader(distributed.eval_shard(val_set, dist), local_batch, shuffle=False,
                        workers=cfg.data_workers, seed=seed, drop_last=False, **loading)
    if needs_warm_up(cfg.torch_compile, device):
        plain, model = model, compiled(model, cfg.torch_compile)
        with undone(plain, optimizer, scaler):
            steps.warm_up(model, replica, optimizer, scaler, cfg, device,
                          batch_sizes(len(train_loader.sampler), local_batch, drop_last=True),
                          batch_sizes(len(val_loader.dataset), local_batch, drop_last=False))
    loop = Loop(model, replica, optimizer, scaler, clip, sampler, train_loader, val_loader,
                train_set.item_sequences, local_batch * dist.world_size)
    loop.first_counts = loop.batch_sums()  # epoch 1's, from the sampler's order as built: before run_start
    return loop


def timed_loop(loop: Loop, cfg: presets.BertRunConfig, dist: distributed.Dist, cadence: Cadence,
               rehearsal: Rehearsal | None = None) -> int:
    """Training from run_start until the cadence ends the run: an optimizer step every
    gradient_accumulation_steps micro-batches, counted across epochs (`training.step_bounds`), the cadence
    after each. A rehearsal's loader ends when it stops; one eval then ends the run. -> the samples
    (sequences) trained."""
    evaluate = functools.partial(steps.evaluate, loop.model, loop.val_loader, cfg, dist.device, dist)
    counts = loop.first_counts
    step, samples, epoch, micro_batches, step_samples = 0, 0, 0, 0, 0
    while True:
        epoch += 1
        loop.sampler.set_epoch(epoch)
        if epoch > 1:
            counts = loop.batch_sums()
        batches = loop.train_loader
        if rehearsal is not None:  # the micro-steps timed; the loader ends when the rehearsal stops
            batches = rehearsal.timed(batches, dist.device, data.batch_sequences)
        for j, batch in enumerate(batches):
            _, last = training.step_bounds(micro_batches, cfg.gradient_accumulation_steps)
            micro_batches += 1
            loss = steps.micro_step(loop.model, loop.replica, loop.scaler, batch, cfg, dist.device, reduce=last)
            step_samples += counts[j]
            if not last:
                continue
            lr, applied = steps.optimizer_step(loop.replica, loop.optimizer, loop.scaler, loop.clip, cfg, step)
            # An fp16 step skipped on overflow counts neither as a step nor as samples (NVIDIA's v1.1 BERT).
            step_samples *= applied
            step += applied
            samples += step_samples
            done = cadence.after(samples, step_samples, evaluate)
            if cadence.accuracy is not None and dist.is_main:
                print(steps.progress(samples, loss.item(), lr, cadence.accuracy, time.time() - cadence.started),
                      flush=True)
            step_samples = 0
            if done:
                return samples
        if rehearsal is not None and rehearsal.stopped:
            cadence.final(samples, evaluate)
            return samples


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return train(with_phase1(resolve_config(args)), training.Invocation.from_args(args), division=DIVISION)


def train(cfg: presets.BertRunConfig, run_args: training.Invocation, *, division: str,
          inputs: Inputs = CLOSED_INPUTS) -> int:
    """One run with a resolved config; the open division calls this with its own config and inputs."""
    rehearsal = Rehearsal.from_args(run_args, cfg.gradient_accumulation_steps)  # rehearsal: None in a real run
    if cfg.device == "ipu":
        if rehearsal:
            raise UserError("--rehearse runs on CPUs and GPUs; the IPU loop (closed/bert/ipu.py) has no rehearsal")
        return ipu.train(cfg, run_args, division=division, inputs=inputs)  # the step on the IPUs, through PopTorch
    submission = training.submission(run_args, division=division, benchmark="bert")
    if cfg.dataset == "wiki":
        (rehearsal.relaxed(inputs.verify) if rehearsal else inputs.verify)(cfg, run_args.data)
    if cfg.clip_before_allreduce and cfg.precision == "fp16":
        raise UserError("clip_before_allreduce with fp16 loss scaling: ranks could disagree on skipping a step "
                        "(choose bf16, or clip after the all-reduce)")
    dist, local_batch = training.ranks(cfg, cfg.global_batch_items)
    training.announce("bert", division, run_args, cfg, dist, local_batch)  # refuses what does not fit in memory
    # Closed on real data: the checkpoint's measured starting accuracy near 0.34085, or an override; logged. A
    # rehearsal's generated checkpoint is random: there the check is a warning.
    checked = rehearsal.relaxed(identity.checked) if rehearsal else identity.checked
    checkpoint_keys = (checked(cfg) or {}) if (division, cfg.dataset) == ("closed", "wiki") else {}
    # Tiny smoke widths produce denormal floats that run ~10x slower on x86 CPUs; flushing them to zero
    # is what GPUs do by default.
    torch.set_flush_denormal(True)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    train_set, val_set = inputs.datasets(cfg, run_args.data)
    val_set = rehearsal.eval_slice(val_set, data.first) if rehearsal else val_set  # rehearsal: one bounded eval
    # train_samples: the samples trained, logged once before run_stop, as NVIDIA's v1.1 BERT does
    # (run_pretraining.py: TRAIN_SAMPLES = samples_trained = global_step x global batch).
    with training.begin_run(run_args, dist, submission, hyperparameters=presets.hyperparameters(cfg) | checkpoint_keys,
                            train_samples=None, eval_samples=val_set.sequences,
                            synthetic=cfg.dataset == "synthetic") as run:
        model = BertForPretraining(cfg.model_config())
        if cfg.init_checkpoint:
            steps.load_checkpoint(model, cfg, dist)
        run.weights_initialization(mlperf_tensor_names(model)[name] for name, _ in model.named_parameters())
        state = prepared(model, cfg, dist, inputs, train_set, val_set, local_batch, run_args.seed)
        cadence = Cadence(run, first=presets.eval_interval(cfg), every=presets.eval_interval(cfg),
                          limit=presets.max_samples(cfg), target=cfg.target_accuracy)
        # ---- the timed region: run_start (run.start) to run_stop (run.stop); nothing is compiled inside ----
        run.start()
        cadence.start()
        run.samples_trained = samples = timed_loop(state, cfg, dist, cadence, rehearsal)
        run.stop(cadence.status)
    if rehearsal and dist.is_main:
        rehearsal.write(local_batch, dist.world_size, dist.device)
    if dist.is_main:
        print(f"run_stop: {cadence.status} after {samples:,} samples", flush=True)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
