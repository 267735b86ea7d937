"""Closed-division BERT-Large (phase 2 pretraining): one MLPerf Training v1.1 run in one process or job.

    python -m mlperf_submission.closed.bert.train --preset smoke --seed 1 --system systems/1xH200.json \
        --result-log out/result_0.txt [--data CONVERTED_DIR] [--set field=value ...]

Writes one MLPerf result log (a new file; never appended to) and prints progress for humans. Eval
`epoch_num` is the number of training samples seen, as the RCP checker reads it. With the `smoke`
preset it trains on the built-in synthetic corpus (figures in the preset's docstring).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlperf_submission.closed.bert import presets
from mlperf_submission.closed.bert.model import BertForPretraining, mlperf_tensor_names
from mlperf_submission.closed.bert.optim import (
    Lamb,
    clip_grad_norm,
    lr_schedule,
    mlm_loss_and_accuracy,
    nsp_loss,
    param_groups,
)
from mlperf_submission.common import config
from mlperf_submission.common.cli import ArgumentParser, UserError, entry_point
from mlperf_submission.common.data import bert_wiki
from mlperf_submission.common.data.loader import loader
from mlperf_submission.common.mllog import MLLog
from mlperf_submission.common.run import Run, Submission
from mlperf_submission.common.runtime import distributed
from mlperf_submission.common.runtime.precision import autocast
from mlperf_submission.systems import load as load_system

DIVISION = "closed"


def parse_args(argv):
    p = ArgumentParser(prog="python -m mlperf_submission.closed.bert.train", description=__doc__)
    p.add_argument("--preset", default="smoke", help=f"one of {', '.join(presets.PRESETS)}")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--system", required=True, help="system description JSON (path or name in systems/)")
    p.add_argument("--result-log", type=Path, required=True, help="the result log to create")
    p.add_argument("--data", type=Path, help="folder written by `make data BENCH=bert`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    return p.parse_args(argv)


def resolve_config(args, validate=presets.validate_closed) -> presets.BertRunConfig:
    cfg = config.override(config.select(presets.PRESETS, args.preset), args.overrides)
    if args.data is not None and cfg.dataset == "synthetic":
        raise UserError(f"preset {args.preset} trains on the synthetic corpus; with DATA, choose a Wikipedia preset")
    if args.data is None and cfg.dataset == "wiki":
        raise UserError(f"preset {args.preset} needs the MLPerf Wikipedia data: give DATA=<folder> (`make data`)")
    if cfg.init_checkpoint and not Path(cfg.init_checkpoint).is_file():
        raise UserError(f"init_checkpoint {cfg.init_checkpoint} not found: convert it with "
                        "`python -m mlperf_submission.closed.bert.checkpoint`")
    validate(cfg)
    return cfg


class SyntheticCorpus(torch.utils.data.Dataset):
    """The built-in synthetic corpus, held in memory, in the same item format as BertDataset."""

    def __init__(self, cfg: presets.BertRunConfig, split: str):
        num = cfg.synthetic_train_samples if split == "train" else cfg.synthetic_eval_samples
        arrays = bert_wiki.synthetic_instances(num, seq_len=cfg.max_seq_length, vocab_size=cfg.vocab_size,
                                               max_pred=cfg.max_predictions_per_seq, seed=cfg.synthetic_seed,
                                               split=split)
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


def datasets(cfg, data: Path | None):
    if cfg.dataset == "synthetic":
        return SyntheticCorpus(cfg, "train"), SyntheticCorpus(cfg, "eval")
    return bert_wiki.BertDataset(data, "train"), bert_wiki.BertDataset(data, "eval")



def forward(model, batch, cfg, device):
    """-> (loss, correct, count) for one batch, MLM at the masked positions only, plus NSP."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with autocast(cfg.precision, device):
        mlm_logits, nsp_logits = model(b["input_ids"], b["segment_ids"], b["input_mask"], b["masked_lm_positions"])
    loss, correct, count = mlm_loss_and_accuracy(mlm_logits, b["masked_lm_ids"], b["masked_lm_weights"])
    return loss + nsp_loss(nsp_logits, b["next_sentence_labels"]), correct, count


def evaluate(model, val, cfg, device, dist) -> float:
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


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return train(resolve_config(args), args, division=DIVISION)


def train(cfg: presets.BertRunConfig, args, *, division: str) -> int:
    _, system = load_system(args.system)
    submission = Submission.from_system(system, division=division, benchmark="bert")
    device = distributed.pick_device(cfg.device)
    if cfg.dataset == "wiki":
        try:
            bert_wiki.verify(args.data)
        except bert_wiki.DataError as e:
            raise UserError(f"{e} (prepare the data with `make data BENCH=bert`)") from None
    dist = distributed.init(device)
    local_batch = distributed.local_batch(cfg.global_batch_size, dist, cfg.gradient_accumulation_steps)
    if dist.is_main:
        print(f"bert {division}, preset {args.preset}, seed {args.seed}, {dist.world_size} rank(s) on {device}, "
              f"local batch {local_batch}:\n{config.describe(cfg)}", flush=True)
    torch.manual_seed(args.seed)
    # Tiny smoke widths produce denormal floats that run ~10x slower on x86 CPUs; flushing them to zero
    # is what GPUs do by default.
    torch.set_flush_denormal(True)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    log = MLLog(args.result_log, rank=dist.rank, barrier=dist.barrier)
    train_set, val_set = datasets(cfg, args.data)
    interval, limit = presets.eval_interval(cfg), presets.max_samples(cfg)
    with Run(log, submission, seed=args.seed, hyperparameters=presets.hyperparameters(cfg),
             train_samples=len(train_set), eval_samples=len(val_set), clear_cache=cfg.dataset != "synthetic") as run:
        model = BertForPretraining(cfg.model_config())
        if cfg.init_checkpoint:
            model.load_state_dict(torch.load(cfg.init_checkpoint, map_location="cpu", weights_only=True))
        run.weights_initialization(mlperf_tensor_names(model)[name] for name, _ in model.named_parameters())
        model = model.to(device)
        optimizer = Lamb(param_groups(model, cfg.opt_lamb_weight_decay_rate), lr=0.0,
                         betas=(cfg.opt_lamb_beta_1, cfg.opt_lamb_beta_2), eps=cfg.opt_epsilon)
        if dist.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        sampler = None
        if dist.world_size > 1:
            sampler = torch.utils.data.DistributedSampler(train_set, dist.world_size, dist.rank, seed=args.seed)
        train_loader = loader(train_set, local_batch, shuffle=sampler is None, workers=cfg.data_workers,
                              seed=args.seed + dist.rank, drop_last=True, sampler=sampler)
        shard = torch.utils.data.Subset(val_set, range(dist.rank, len(val_set), dist.world_size))
        val_loader = loader(shard, local_batch, shuffle=False, workers=cfg.data_workers, seed=args.seed,
                            drop_last=False)

        run.start()
        step, samples, status, epoch, block_first = 0, 0, "aborted", 0, 0
        run.block_start(first_epoch_num=block_first, epoch_count=interval)
        started, micro = time.time(), 0
        while status != "success" and samples < limit:
            epoch += 1
            if sampler is not None:
                sampler.set_epoch(epoch)
            for batch in train_loader:
                loss, _, _ = forward(model, batch, cfg, device)
                scaler.scale(loss / cfg.gradient_accumulation_steps).backward()
                micro += 1
                if micro % cfg.gradient_accumulation_steps:
                    continue
                scaler.unscale_(optimizer)
                clip_grad_norm(model.parameters(), cfg.max_grad_norm)
                lr = lr_schedule(step, base_lr=cfg.opt_base_learning_rate,
                                 warmup_steps=cfg.opt_learning_rate_warmup_steps,
                                 start_warmup_step=cfg.start_warmup_step,
                                 total_steps=cfg.opt_learning_rate_training_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples += cfg.global_batch_size
                if samples % interval < cfg.global_batch_size or samples >= limit:
                    run.eval_start(samples)
                    accuracy = evaluate(model, val_loader, cfg, device, dist)
                    run.eval_stop(samples, accuracy)
                    run.block_stop(first_epoch_num=block_first)
                    if dist.is_main:
                        print(f"{samples:,} samples: loss {loss.item():.3f}, lr {lr:.5f}, masked-LM accuracy "
                              f"{accuracy:.4f}, {samples / (time.time() - started):,.1f} sequences/s", flush=True)
                    if accuracy >= cfg.target_accuracy:
                        status = "success"
                        break
                    if samples >= limit:
                        break
                    block_first = samples
                    run.block_start(first_epoch_num=block_first, epoch_count=interval)
        run.stop(status)
    if dist.is_main:
        print(f"run_stop: {status} after {samples:,} samples", flush=True)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
