"""BERT on Graphcore IPUs through PopTorch: train.py's run with the step (forward, backward, accumulation,
LAMB) on the IPUs, one host call per optimizer step.

    python -m mlperf_submission.closed.bert.train --preset pod16 --set device=ipu --seed 1 \
        --system systems/ipu-pod16.json --result-log out/result_0.txt --data /data/bert/memmap \
        --ckpt /data/bert/phase1/model.ckpt-28252
    python -m mlperf_submission.open.bert.train --preset pod16 --set device=ipu ...   # packed, open

train.py hands a run here when `device=ipu`. The lifecycle (common/training.begin_run), the eval cadence
(common/cadence.py), the schedule, the losses and the data are those of every BERT loop (steps.py, data.py);
what differs is where the step runs. PopTorch compiles fixed shapes, so
closed BERT's sequences stay in their padded rows here (`unpad=false`: the same loss and gradients as the unpadded
layout, tests/test_bert_unpadded.py); open BERT's packs are fixed-size already. The model and its loss go into one
module (`Pretraining`): in training mode it returns the loss PopTorch differentiates, in eval mode the masked-LM
(correct, count) the eval sums. The graphs are compiled (or loaded from the executable cache) in the untimed init.
The eval set is padded to whole host calls with items of zero weight, which add nothing to either sum, so every
eval sample counts exactly once. Never run on IPU hardware here; tests/test_ipu.py runs it through
tests/fake_poptorch.py, which keeps PopTorch's accumulation semantics on the CPU.

`ipu_pipeline` places BERT on the IPUs of a replica in Graphcore's notation (`att_ffn_placement` in their
configs/mk2/pod16-closed.json): "IPU:A/F,..." in pipeline order, A the next A attention blocks and F the next F
feed-forward blocks of the encoder on that IPU. The embeddings are on IPU 0 before the first stage; the
pretraining heads follow the last stage, so a pipeline that ends on IPU 0 keeps them beside the word
embeddings they share. Each encoder layer's output is a recomputation checkpoint.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from ...common import training
from ...common.cadence import Cadence
from ...common.cli import UserError
from ...common.runtime import distributed, ipu
from . import identity, presets, steps
from .data import Inputs, SequenceDataset
from .model import BertForPretraining, mlperf_tensor_names
from .optim import param_groups


def pipeline(spec: str, layers: int) -> tuple[list[tuple[str, int]], int]:
    """-> (the pipeline's blocks as (module path in BertForPretraining, IPU), IPUs per replica) for a spec
    "IPU:A/F,..." (or "" for one IPU); UserError for a spec that does not place every layer once, in order."""
    blocks = [("embeddings", 0)]
    if not spec:
        return blocks, 1
    attention = ffn = 0
    used = set()
    for stage in spec.split(","):
        try:
            where, _, counts = stage.partition(":")
            a, _, f = counts.partition("/")
            device, a, f = int(where), int(a), int(f)
        except ValueError:
            raise UserError(f"ipu_pipeline {spec!r}: each stage is IPU:ATTENTION/FFN, e.g. 1:7/6") from None
        if device < 0 or a < 0 or f < 0 or a + f == 0:
            raise UserError(f"ipu_pipeline {spec!r}: stage {stage!r} needs an IPU >= 0 and some blocks")
        # A stage starts at the next block in order: layer i's attention, or its feed-forward part when only
        # the attention of layer i has been placed so far.
        blocks.append((f"encoder.layer.{attention}", device) if attention == ffn
                      else (f"encoder.layer.{ffn}.intermediate", device))
        attention, ffn = attention + a, ffn + f
        if attention - ffn not in (0, 1):
            raise UserError(f"ipu_pipeline {spec!r}: after stage {stage!r} {attention} attention and {ffn} "
                            "feed-forward blocks are placed; a stage must end after a layer's attention or its "
                            "feed-forward block")
        used.add(device)
    if (attention, ffn) != (layers, layers):
        raise UserError(f"ipu_pipeline {spec!r} places {attention} attention and {ffn} feed-forward blocks; the "
                        f"model has {layers} layers")
    if used | {0} != set(range(len(used | {0}))):
        raise UserError(f"ipu_pipeline {spec!r}: the IPUs of a replica are numbered 0..N-1")
    return blocks, len(used | {0})


class Pretraining(nn.Module):
    """BERT and its loss as one graph: training mode -> the loss; eval mode -> (masked-LM correct, count)."""

    def __init__(self, model: BertForPretraining, cfg, keys: list[str], poptorch):
        super().__init__()
        self.model, self.keys, self.poptorch = model, keys, poptorch
        # steps.forward with autocast off: on the IPU the weights themselves are fp16 (16.16) or fp32.
        self.cfg = dataclasses.replace(cfg, precision="fp32")

    def forward(self, *tensors):
        batch = dict(zip(self.keys, tensors, strict=True))
        loss, correct, count = steps.forward(self.model, batch, self.cfg, torch.device("cpu"))
        if self.training:
            return self.poptorch.identity_loss(loss, reduction="none")
        return correct, count


class PaddedEval(torch.utils.data.Dataset):
    """`dataset` padded to a multiple of `multiple` items with copies of its first whose weights are zero."""

    def __init__(self, dataset, multiple: int):
        self.dataset, self.size = dataset, -(-len(dataset) // multiple) * multiple

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if i < len(self.dataset):
            return self.dataset[i]
        return {k: torch.zeros_like(v) if k.endswith("_weights") else v for k, v in self.dataset[0].items()}


def shaped_like(dataset, n: int) -> dict[str, torch.Tensor]:
    """n zero items shaped and typed as `dataset`'s, to compile with: only one item's shapes and dtypes are read,
    its values are not used, so no training data is touched before run_start."""
    return {k: torch.zeros((n, *v.shape), dtype=v.dtype) for k, v in dataset[0].items()}


def build(cfg, model: BertForPretraining, keys: list[str], poptorch, *, seed: int, inst: ipu.Instances):
    """-> (training wrapper, inference wrapper, optimizer, train options, eval options): the model placed on
    the IPUs, the LAMB optimizer, and the Options of both graphs."""
    blocks, ipus_per_replica = pipeline(cfg.ipu_pipeline, cfg.num_hidden_layers)
    step = Pretraining(model, cfg, keys, poptorch)
    if ipus_per_replica > 1:
        checkpoints = [f"encoder.layer.{i}" for i in range(cfg.num_hidden_layers)] if cfg.ipu_recompute else []
        ipu.place(model, blocks, poptorch, checkpoints=checkpoints)
    if cfg.precision == "fp16":
        step.half()  # Graphcore's 16.16: fp16 weights, activations and updates
    optimizer = ipu.lamb(poptorch, param_groups(model, cfg.opt_lamb_weight_decay_rate), lr=0.0,
                         betas=(cfg.opt_lamb_beta_1, cfg.opt_lamb_beta_2), eps=cfg.opt_epsilon,
                         bias_correction=cfg.opt_lamb_bias_correction, max_grad_norm=cfg.max_grad_norm, cfg=cfg)
    train_opts = ipu.options(cfg, poptorch, seed=seed, ipus_per_replica=ipus_per_replica, inst=inst, train=True)
    # As many micro-batches per eval call as per training step: a pipeline stays as full as in training.
    eval_opts = ipu.options(cfg, poptorch, seed=seed, ipus_per_replica=ipus_per_replica, inst=inst, train=False,
                            eval_iterations=cfg.gradient_accumulation_steps)
    step.eval()
    evaluator = poptorch.inferenceModel(step, options=eval_opts)
    step.train()
    trainer = poptorch.trainingModel(step, options=train_opts, optimizer=optimizer)
    return trainer, evaluator, optimizer, train_opts, eval_opts


def evaluate(evaluator, trainer, val_loader, keys, dist) -> float:
    totals = torch.zeros(2, dtype=torch.float64)
    ipu.attach(evaluator, trainer)
    for batch in val_loader:
        correct, count = evaluator(*(batch[k] for k in keys))
        totals += torch.stack([correct.double().sum(), count.double().sum()])  # summed over replicas too
    dist.all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()


def checked(cfg: presets.BertRunConfig, inputs: Inputs) -> presets.BertRunConfig:
    """cfg with the padded layout (PopTorch compiles fixed shapes), or UserError before any log."""
    if inputs.collate(cfg) is not None:  # per-batch layouts change shapes; PopTorch compiles fixed ones
        cfg = dataclasses.replace(cfg, unpad=False)
    if inputs.collate(cfg) is not None or cfg.unpad_attention != "block":
        raise UserError("device=ipu needs fixed-shape batches: padded rows (unpad=false) or offline packs, with "
                        "unpad_attention=block")
    if cfg.ipu_device_iterations != 1:
        raise UserError("ipu_device_iterations must be 1 for BERT: the learning rate changes every step, and the "
                        "host sets it between calls")
    pipeline(cfg.ipu_pipeline, cfg.num_hidden_layers)  # a bad spec stops here, before any log
    return cfg


def train(cfg: presets.BertRunConfig, run_args: training.Invocation, *, division: str, inputs: Inputs) -> int:
    """One run on IPUs; train.py calls this for device=ipu with its resolved config and inputs."""
    cfg = checked(cfg, inputs)
    submission = training.submission(run_args, division=division, benchmark="bert")
    if cfg.dataset == "wiki":
        inputs.verify(cfg, run_args.data)
    dist, micro_batch = training.ranks(cfg, cfg.global_batch_items)
    poptorch, inst = ipu.poptorch_module(), ipu.instances()
    training.announce("bert", division, run_args, cfg, dist, micro_batch)
    # Closed on real data: the checkpoint's measured starting accuracy near 0.34085, or an override; logged.
    checkpoint_keys = (identity.checked(cfg) or {}) if (division, cfg.dataset) == ("closed", "wiki") else {}
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    train_set, val_set = inputs.datasets(cfg, run_args.data)
    if dist.is_main:
        print(f"IPU: {cfg.ipu_replicas} replica(s) over {inst.count} instance(s), micro-batch {micro_batch}, "
              f"{cfg.gradient_accumulation_steps} accumulation steps, pipeline {cfg.ipu_pipeline or 'none'}, "
              f"{'packs' if val_set.sequences != len(val_set) else 'padded rows'}, "
              f"precision {'16.16' if cfg.precision == 'fp16' else '32.32'}", flush=True)
    with training.begin_run(run_args, dist, submission,
                            hyperparameters=presets.hyperparameters(cfg) | checkpoint_keys,
                            train_samples=None, eval_samples=val_set.sequences,  # samples trained: train.py
                            synthetic=cfg.dataset == "synthetic") as run:
        init_started = time.monotonic()
        model = BertForPretraining(cfg.model_config())
        if cfg.init_checkpoint:
            steps.load_checkpoint(model, cfg, dist)
        run.weights_initialization(mlperf_tensor_names(model)[name] for name, _ in model.named_parameters())
        loop = compiled_loop(cfg, model, train_set, val_set, micro_batch, poptorch, inst, dist, run_args.seed,
                             init_started)
        cadence = Cadence(run, first=presets.eval_interval(cfg), every=presets.eval_interval(cfg),
                          limit=presets.max_samples(cfg), target=cfg.target_accuracy)
        # ---- the timed region: run_start (run.start) to run_stop (run.stop); the graphs are compiled ----
        run.start()
        cadence.start()
        run.samples_trained = samples = timed_loop(loop, cfg, dist, cadence)
        run.stop(cadence.status)
    if dist.is_main:
        print(f"run_stop: {cadence.status} after {samples:,} samples", flush=True)
    distributed.shutdown()
    return 0


@dataclasses.dataclass
class Loop:
    """What the IPU's timed loop runs, all of it built and compiled in the untimed init."""

    trainer: object                 # poptorch.trainingModel
    evaluator: object               # poptorch.inferenceModel
    optimizer: object               # poptorch.optim.LAMB
    keys: list[str]                 # the batch fields, in the order the graphs take them
    sampler: distributed.EpochSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    per_item: np.ndarray | None     # sequences in each training item (packs), None: one each
    world_call: int                 # items in one host call over all instances
    first_counts: list[int]         # epoch 1's sequences per host call, counted untimed

    def batch_sums(self) -> list[int]:
        return self.sampler.batch_sums(self.per_item, self.world_call, len(self.train_loader))


def compiled_loop(cfg, model, train_set: SequenceDataset, val_set: SequenceDataset, micro_batch: int, poptorch,
                  inst: ipu.Instances, dist, seed: int, init_started: float) -> Loop:
    """The untimed init after the weights: both graphs built, their loaders, and both compiled (or loaded
    from the executable cache)."""
    keys = sorted(val_set[0])
    trainer, evaluator, optimizer, train_opts, eval_opts = build(cfg, model, keys, poptorch, seed=seed, inst=inst)
    sampler = distributed.train_sampler(train_set, dist, seed)  # one permutation over all instances
    train_loader = ipu.loader(poptorch, train_opts, train_set, micro_batch, workers=cfg.data_workers,
                              drop_last=True, sampler=sampler)
    per_call = micro_batch * ipu.local_replicas(cfg, inst) * cfg.gradient_accumulation_steps
    val_loader = ipu.loader(poptorch, eval_opts, PaddedEval(distributed.eval_shard(val_set, dist), per_call),
                            micro_batch, workers=cfg.data_workers, drop_last=False)
    # Each graph with its own split's shapes: packed splits may hold different predictions per pack.
    examples = [shaped_like(train_set, per_call), shaped_like(val_set, per_call)]
    ipu.compile_in_init([(model_, [example[k] for k in keys]) for model_, example in
                         zip((trainer, evaluator), examples, strict=True)],
                        init_started=init_started, is_main=dist.is_main)
    # Sequences of each host call over all instances, from the sampler's order, as train.py counts them.
    per_item, world_call = train_set.item_sequences, per_call * dist.world_size
    return Loop(trainer, evaluator, optimizer, keys, sampler, train_loader, val_loader, per_item, world_call,
                sampler.batch_sums(per_item, world_call, len(train_loader)))


def timed_loop(loop: Loop, cfg, dist, cadence: Cadence) -> int:
    """Training from run_start until the cadence ends the run: one optimizer step per host call (the
    accumulation happens on the IPUs), the cadence after each. -> the samples (sequences) trained."""
    step, samples, epoch, counts = 0, 0, 0, loop.first_counts
    while True:
        epoch += 1
        loop.sampler.set_epoch(epoch)
        if epoch > 1:
            counts = loop.batch_sums()
        for j, batch in enumerate(loop.train_loader):
            lr = steps.learning_rate(cfg, step)
            ipu.attach(loop.trainer, loop.evaluator)
            ipu.set_lr(loop.trainer, loop.optimizer, lr)
            loss = loop.trainer(*(batch[k] for k in loop.keys))
            step += 1
            samples += counts[j]
            done = cadence.after(samples, counts[j],
                                 lambda: evaluate(loop.evaluator, loop.trainer, loop.val_loader, loop.keys, dist))
            if cadence.accuracy is not None and dist.is_main:  # loss: a host tensor, no device read
                print(steps.progress(samples, loss.float().mean().item(), lr, cadence.accuracy,
                                     time.time() - cadence.started), flush=True)
            if done:
                return samples
