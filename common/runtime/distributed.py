"""Data-parallel runtime: one small interface over torch.distributed and Horovod.

The training command is the same under every launcher; the launcher's environment says who is who.

    torchrun --standalone --nproc_per_node=2 -m mlperf_submission.closed.resnet.train ARGS       # one node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_id=JOB --rdzv_backend=c10d \
        --rdzv_endpoint=NODE0:29500 -m mlperf_submission.closed.resnet.train ARGS                 # on each node
    srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 python -m mlperf_submission.closed.resnet.train ARGS
    horovodrun -np 16 -H node0:8,node1:8 --gloo python -m mlperf_submission.closed.resnet.train ARGS \
        --set distributed_backend=horovod

The config field `distributed_backend` picks the engine. "torch": torch.distributed (NCCL on CUDA, gloo
on CPU), ranks from torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT or, where those are
absent, from an `srun` step's SLURM_PROCID/SLURM_STEP_NUM_TASKS/SLURM_LOCALID (rendezvous at MASTER_ADDR,
else the step's first node, port MASTER_PORT, else one derived from the job id). "horovod": Horovod
launched by horovodrun (built by `make horovod`; optional). A single process with none of these is
world size 1 and needs neither.

A train loop sees `Dist` (rank, world size, local rank, device, barrier, sum) and `DataParallel` (the
gradient all-reduce: DDP or Horovod's DistributedOptimizer, overlapped with the backward pass; or an
explicit all-reduce where gradients must be touched first, e.g. clipped per rank). Every collective has
the timeout `distributed_timeout_s`, so a dead or hung rank ends the others with an error instead of
hanging them; the run lifecycle then logs run_stop `aborted`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from ..cli import UserError

BACKENDS = ("torch", "horovod")


@dataclass(frozen=True)
class Launch:
    """Who this process is, as its launcher told it: rank, world size, local rank, and where to meet."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    init_method: str = "env://"
    source: str = "single process"


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("node[03-05,07]" -> "node03"), through scontrol where compressed."""
    if not any(c in nodelist for c in "[,"):
        return nodelist
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise UserError(f"cannot expand the SLURM node list {nodelist!r} (no scontrol): export MASTER_ADDR=<the "
                        "first node's address> in the job script") from None
    return out.stdout.split()[0]


def launch_from_env(env: Mapping[str, str]) -> Launch:
    """torchrun's variables if set, else an srun step's, else a single process."""
    if "WORLD_SIZE" in env:
        return Launch(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                      local_rank=int(env.get("LOCAL_RANK", "0")), source="torchrun")
    # SLURM_STEP_NUM_TASKS is set inside an srun step only: a batch script's own process is one task.
    world = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if world > 1:
        host = env.get("MASTER_ADDR") or _first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
        # A port per job, so that two jobs sharing a node do not meet each other.
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return Launch(rank=int(env["SLURM_PROCID"]), world_size=world, local_rank=int(env.get("SLURM_LOCALID", "0")),
                      init_method=f"tcp://{host}:{port}", source="SLURM")
    return Launch()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is CUDA when present, else CPU; on CUDA, the local rank's device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda was asked for but no CUDA device is visible: use device=cpu")
        # A launcher that gives each task only its own GPU (srun --gpus-per-task=1) leaves one visible.
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
        tune_backends(device)
        return device
    return torch.device(name)


def tune_backends(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the fastest
    (`cudnn.benchmark`): ResNet-50's shapes are fixed per batch size, so the search is paid once per shape,
    in the untimed warm-up. Nothing changes on other devices."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _horovod():
    try:
        import horovod.torch as hvd
    except ImportError:
        raise UserError("distributed_backend=horovod, but Horovod is not installed: build it with `make horovod` "
                        "(optional), or use distributed_backend=torch") from None
    return hvd


@dataclass(frozen=True)
class Dist:
    """This process's place in the job, and the collectives a train loop needs. World size 1 needs none."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "torch"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        if self.backend == "horovod":
            _horovod().barrier()
        else:
            tdist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        if self.world_size == 1:
            return tensor
        if self.backend == "horovod":
            hvd = _horovod()
            return hvd.allreduce_(tensor, op=hvd.Sum)
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def broadcast_state(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (the ranks agree from the first step)."""
        if self.world_size == 1:
            return
        if self.backend == "horovod":
            _horovod().broadcast_parameters(module.state_dict(), root_rank=0)
            return
        for tensor in module.state_dict().values():
            tdist.broadcast(tensor, src=0)

    def replicate(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, accumulation_steps: int = 1,
                  reduce_in_backward: bool = True) -> DataParallel:
        """Replicate a freshly built model and its optimizer (whose state is still empty) over the ranks.

        reduce_in_backward: all-reduce each gradient bucket as soon as the backward pass has produced it
        (DDP; Horovod's DistributedOptimizer), overlapping communication with compute. False: gradients
        stay local until `DataParallel.reduce_gradients()`, for a loop that must change them first.
        """
        if self.world_size == 1:
            return DataParallel(model, optimizer, self, reduce_in_backward)
        if self.backend == "horovod":
            hvd = _horovod()
            self.broadcast_state(model)
            if reduce_in_backward:
                optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                                     backward_passes_per_step=accumulation_steps, op=hvd.Average)
            return DataParallel(model, optimizer, self, reduce_in_backward)
        if reduce_in_backward:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Gradients as views into DDP's all-reduce buckets: without it DDP keeps a second copy of every
            # gradient (1.35 GB for BERT-Large in fp32).
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
            return DataParallel(ddp, optimizer, self, True)
        self.broadcast_state(model)
        return DataParallel(model, optimizer, self, False)

    def batch_norm_groups(self, model: nn.Module, replicas: int) -> nn.Module:
        """Batch-norm statistics over groups of `replicas` consecutive ranks (1: each rank alone).

        torch on CUDA: torch's SyncBatchNorm on a process subgroup. Elsewhere (torch's SyncBatchNorm is
        CUDA-only; Horovod): CrossReplicaBatchNorm, the same statistics through a differentiable all-reduce.
        """
        if replicas == 1:
            return model
        ranks = [list(range(first, first + replicas)) for first in range(0, self.world_size, replicas)]
        whole = replicas == self.world_size
        # Every rank creates every group, in the same order, as both engines require.
        if self.backend == "horovod":
            hvd = _horovod()
            group = hvd.global_process_set if whole else [hvd.add_process_set(r) for r in ranks][self.rank // replicas]
            return CrossReplicaBatchNorm.convert(model, _HorovodSum(hvd, group))
        group = None if whole else [tdist.new_group(r) for r in ranks][self.rank // replicas]
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
        return CrossReplicaBatchNorm.convert(model, _TorchSum(group))


@dataclass
class DataParallel:
    """A model and optimizer replicated over the ranks. Per optimizer step, on every rank:

        for each micro-batch:  with dp.micro_step(reduce=<is it the step's last micro-batch>): forward, backward
        dp.reduce_gradients()  # every rank now holds the mean gradient over replicas (clip after this,
                               # or before it with reduce_in_backward=False)
        dp.step(scaler)        # scaler.step(optimizer), without a second reduction
    `module` is what to call (DDP's wrapper or the model), `optimizer` what to step and zero.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    dist: Dist
    reduce_in_backward: bool

    @contextlib.contextmanager
    def micro_step(self, *, reduce: bool) -> Iterator[None]:
        """Forward and backward of one micro-batch. DDP reduces only in the step's last one (reduce=True);
        Horovod's optimizer counts the backward passes itself (backward_passes_per_step)."""
        if isinstance(self.module, nn.parallel.DistributedDataParallel) and not reduce:
            with self.module.no_sync():
                yield
        else:
            yield

    def reduce_gradients(self) -> None:
        if self.dist.world_size == 1:
            return
        if self.dist.backend == "horovod":
            if self.reduce_in_backward:
                self.optimizer.synchronize()  # waits for the all-reduces the backward hooks started
                return
            hvd = _horovod()
            hvd.grouped_allreduce_(self._grads(), op=hvd.Average)
            return
        if self.reduce_in_backward:
            return  # DDP has averaged them during the backward pass
        grads = self._grads()
        for dtype in {g.dtype for g in grads}:
            same = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in same])  # one all-reduce, not one per tensor
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            flat /= self.dist.world_size
            for g, reduced in zip(same, flat.split([g.numel() for g in same]), strict=True):
                g.copy_(reduced.view_as(g))

    def step(self, scaler: torch.amp.GradScaler) -> None:
        if self.dist.backend == "horovod" and self.reduce_in_backward and self.dist.world_size > 1:
            with self.optimizer.skip_synchronize():
                scaler.step(self.optimizer)
        else:
            scaler.step(self.optimizer)

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]


class _AllReduceSum(torch.autograd.Function):
    """y = sum over the group of x; each rank's loss depends on every x, so dx = sum over the group of dy."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _TorchSum:
    def __init__(self, group):
        self.group = group

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(tensor, self.group)


class _HorovodSum:
    def __init__(self, hvd, process_set):
        self.hvd, self.process_set = hvd, process_set

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, process_set=self.process_set)


class CrossReplicaBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the mean and variance over the whole group's batch.

    `group_sum` is a differentiable sum over the group (an all-reduce whose backward is an all-reduce), so
    the gradient is that of batch norm over the group's concatenated batch. Eval uses the running
    statistics, as plain batch norm does; they are updated with the group's (identical on every member).
    """

    def __init__(self, num_features: int, group_sum, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.group_sum = group_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 at least
        count = torch.full((1,), x.numel() / c, dtype=xf.dtype, device=x.device)
        stats = self.group_sum(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))  # (2C + 1,)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)  # biased, as batch norm normalises with
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        y = xf * scale[None, :, None, None] + (self.bias - mean * scale)[None, :, None, None]
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module, group_sum) -> nn.Module:
        """`module` with every BatchNorm2d replaced by one over the group, keeping its parameters and state."""
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, cls):
            bn = cls(module.num_features, group_sum, eps=module.eps, momentum=module.momentum)
            # The very tensors, not copies: an optimizer built before the conversion still holds them.
            bn.weight, bn.bias = module.weight, module.bias
            bn.running_mean, bn.running_var = module.running_mean, module.running_var
            bn.num_batches_tracked = module.num_batches_tracked
            return bn
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, group_sum))
        return module


def bn_group_replicas(span: int, local_batch: int, world_size: int) -> int:
    """The number of replicas whose batches one batch-norm statistic spans; span 0 means the local batch."""
    if span in (0, local_batch):
        return 1
    replicas, rest = divmod(span, local_batch)
    if rest or replicas < 1 or world_size % replicas:
        raise UserError(f"model_bn_span {span} must be the local batch {local_batch} times a divisor of the "
                        f"{world_size} rank(s) (batch norm over groups of whole replicas), or 0 for the local batch")
    return replicas


def init(device: str | torch.device = "auto", *, backend: str = "torch", timeout_s: float = 600,
         env: Mapping[str, str] | None = None) -> Dist:
    """Join the job the launcher describes (none: world size 1), on this rank's device."""
    env = os.environ if env is None else env
    if backend not in BACKENDS:
        raise UserError(f"distributed_backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    name = device.type if isinstance(device, torch.device) else device
    if backend == "horovod":
        hvd = _horovod()
        if "HOROVOD_RANK" not in env:
            raise UserError("distributed_backend=horovod: launch with horovodrun (e.g. `horovodrun -np 2 python -m "
                            "...`); torchrun and srun launch distributed_backend=torch")
        # Horovod's gloo waits this long for a peer to connect, and its stall check ends a job whose ranks
        # have not all reached a collective after as long (it only warns by default).
        os.environ.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", str(int(timeout_s)))
        os.environ.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(int(min(60, timeout_s))))
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(timeout_s)))
        # Process sets can then be made later, for batch-norm groups smaller than the job.
        hvd.init(process_sets="dynamic")
        return Dist(rank=hvd.rank(), world_size=hvd.size(), local_rank=hvd.local_rank(),
                    device=pick_device(name, hvd.local_rank()), backend="horovod")
    launch = launch_from_env(env)
    dev = pick_device(name, launch.local_rank)
    if launch.world_size == 1:
        return Dist(device=dev)
    # A timeout makes a dead or hung rank end the job instead of hanging the others forever.
    tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=launch.init_method,
                             rank=launch.rank, world_size=launch.world_size,
                             timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank, device=dev)


def local_batch(global_batch_size: int, dist: Dist, accumulation_steps: int) -> int:
    """Global batch = local batch x replicas x gradient accumulation steps; the local batch, or UserError."""
    replicas = dist.world_size * accumulation_steps
    if global_batch_size % replicas:
        raise UserError(f"global_batch_size {global_batch_size} is not a multiple of {dist.world_size} rank(s) x "
                        f"{accumulation_steps} accumulation steps")
    return global_batch_size // replicas


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s permutation in a run seeded with `seed`, both hashed by numpy's SeedSequence:
    with torch's seed + epoch, run s + 1 trained run s's next epoch's order (`SEEDS=1,2,3` shifted copies)."""
    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)[0])


class EpochSampler(torch.utils.data.Sampler[int]):
    """This rank's shard of one seeded permutation of the dataset per epoch, padded to equal length so that
    every rank takes the same number of steps: the order of torch's DistributedSampler (shuffle, no
    drop_last; the permutation of epoch e is torch.randperm seeded with seed + e, padded cyclically from its
    start, rank r taking positions r, r + R, ...), computed by `set_epoch` instead of by each iteration; but
    epoch e's permutation is seeded with `epoch_seed(seed, e)`, not torch's seed + e.

    It is made for `first_epoch` at construction, so a trainer that builds its sampler in the untimed init
    and calls `set_epoch(first_epoch)` after `run_start` finds it there: a permutation of BERT's 16-150 M
    sequences takes seconds, which torch's sampler spends inside the timed region. The shard is kept as one
    int64 tensor (8 bytes a sample, not a Python list) and handed out in chunks as the loader asks.
    """

    CHUNK = 65536  # indices converted to Python ints at a time

    def __init__(self, size: int, num_replicas: int, rank: int, seed: int, first_epoch: int = 1,
                 per_rank: int | None = None):
        if size < 1:
            raise ValueError("an empty training set has no permutation")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.size, self.num_replicas, self.rank, self.seed = size, num_replicas, rank, seed
        self.num_samples = -(-size // num_replicas)  # ceil: the shard length, padded
        # Items this rank takes per epoch: the shard's first `per_rank` (ResNet drops the last partial batch).
        self.per_rank = self.num_samples if per_rank is None else min(per_rank, self.num_samples)
        self.epoch = None
        self._order = None
        self.permutations_made = 0  # how many permutations this sampler has computed (tests count them)
        self.set_epoch(first_epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        perm = self._permutation(epoch)
        if self.num_replicas == 1:
            self.shard = perm  # no padding, no copy
        else:  # position rank + k * replicas of the permutation padded by repeating it from its start
            positions = (self.rank + self.num_replicas * torch.arange(self.num_samples)) % self.size
            self.shard = perm[positions]
        self.epoch, self._order = epoch, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(self.seed, epoch))
        self.permutations_made += 1
        return torch.randperm(self.size, generator=generator)

    def order(self) -> torch.Tensor:
        """Every rank's items of the current epoch, padded as the shards are: position p is rank p % R's
        (p // R)-th item, so the ranks' k-th batches of b items together hold positions [k R b, (k+1) R b).
        Made on the first call in an epoch (one more permutation; one rank's shard is it) and kept until the
        next `set_epoch`."""
        if self.num_replicas == 1:
            return self.shard  # the whole permutation already
        if self._order is None:
            self._order = self._permutation(self.epoch)[torch.arange(self.num_samples * self.num_replicas) % self.size]
        return self._order

    def batch_sums(self, per_item, world_batch: int, batches: int) -> list[int]:
        """`per_item` (a numpy array over the dataset, None: 1 an item) summed over each of the epoch's first
        `batches` global batches of `world_batch` items (every rank's k-th batch together), on the host: how
        BERT counts a step's sequences in packs with no collective and no device read-back."""
        if per_item is None:
            return [world_batch] * batches
        order = self.order()[: batches * world_batch].numpy()
        return per_item[order].reshape(batches, world_batch).sum(1).tolist()

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        for chunk in self.shard[: self.per_rank].split(self.CHUNK):
            yield from chunk.tolist()


def train_sampler(dataset, dist: Dist, seed: int, first_epoch: int = 1, per_rank: int | None = None) -> EpochSampler:
    """Each rank a disjoint shard of one seeded permutation per epoch (`set_epoch`), padded to equal length so
    that every rank takes the same number of steps. The permutation does not depend on the world size, so
    step k of R ranks with batch b trains the same samples as step k of one rank with batch R x b. The first
    epoch's permutation (both trainers start at epoch 1) is made here, in the untimed init. `per_rank`: the
    items a rank takes per epoch, if fewer than its shard."""
    return EpochSampler(len(dataset), dist.world_size, dist.rank, seed, first_epoch, per_rank)


def eval_shard(dataset, dist: Dist) -> torch.utils.data.Dataset:
    """Every eval sample exactly once over all ranks: a disjoint, unpadded shard per rank (sizes may differ
    by one); the caller sums counts over the ranks."""
    if dist.world_size == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(dist.rank, len(dataset), dist.world_size))


def shutdown() -> None:
    """End of a run that went well: every rank reaches the barrier before any tears its connections down, as
    a gloo rank whose peer has already exited can abort in destroy ('terminate called without an active
    exception')."""
    if tdist.is_available() and tdist.is_initialized():
        if tdist.get_world_size() > 1:
            tdist.barrier()
        tdist.destroy_process_group()
