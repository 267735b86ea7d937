"""One rank of the seeding and DDP-gradient checks in test_gpu_ready.py (run by it, one process per rank).

    WORLD_SIZE=2 RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=P python tests/seed_worker.py --out DIR   # each r

Seeds as the trainers do (`training.seeded_log`), builds a tiny BERT with dropout, replicates it
(`Dist.replicate`: DDP on gloo), trains two steps through `training.update`, and writes rank r's findings to
DIR/rank_r.json: a checksum of its weights as built and as replicated, its first dropout mask after
replication, and how many distinct storages its gradients live in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mlperf_submission.closed.bert.model import BertConfig, BertForPretraining
from mlperf_submission.common import training
from mlperf_submission.common.runtime import distributed

SEED = 7
CONFIG = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=8)


def checksum(model: torch.nn.Module) -> float:
    return sum(float(p.detach().double().sum()) * (i + 1) for i, p in enumerate(model.parameters()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    dist = distributed.init("cpu", timeout_s=60)
    training.seeded_log(argparse.Namespace(seed=SEED, result_log=args.out / "result.txt"), dist)
    model = BertForPretraining(CONFIG)
    built = checksum(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    replica = dist.replicate(model, optimizer)
    replicated = checksum(model)
    mask = (torch.nn.functional.dropout(torch.ones(64), 0.5) > 0).int().tolist()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ids = torch.randint(CONFIG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(dist.rank))
    storages = []
    for _ in range(2):
        with replica.micro_step(reduce=True):
            mlm, nsp = replica.module(ids, torch.zeros_like(ids), torch.ones_like(ids), torch.tensor([[0, 3], [1, 5]]))
            (mlm.float().logsumexp(-1).mean() + nsp.float().logsumexp(-1).mean()).backward()
        storages.append(len({q.grad.untyped_storage().data_ptr() for q in model.parameters()}))
        training.update(replica, optimizer, scaler, 0.0)
    result = {"rank": dist.rank, "built": built, "replicated": replicated, "mask": mask,
              "grad_storages": storages, "params": len(list(model.parameters()))}
    (args.out / f"rank_{dist.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main()
