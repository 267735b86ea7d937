"""A recording stand-in for PopTorch, for tests on machines without Graphcore's Poplar SDK.

    fake = fake_poptorch.install(monkeypatch)   # `import poptorch` now gives `fake`
    ... run the code under test ...
    fake.options[0].calls        # [("replicationFactor", (4,)), ("Training.gradientAccumulation", (192,)), ...]

Every poptorch.Options call is recorded in order as (method path, arguments); a method PopTorch's Options
do not have (graphcore/poptorch python/options.py, SDK 3.x) raises AttributeError, so a misspelt call fails
here as it would on an IPU. BeginBlock and recomputationCheckpoint record the module and IPU they were
given; poptorch.optim.LAMB records its arguments.

Models run on the CPU with PopTorch's semantics. One call of a training model takes a combined batch of
device_iterations x replicas x gradient_accumulation micro-batches (the order PopTorch's DataLoader makes
them in does not matter to the sums below); for each device iteration it runs every micro-batch of every
replica forward and backward with the loss divided by replicas x accumulation (the Mean reduction over
both, i.e. the mean gradient a data-parallel host loop computes), clips the gradient to the optimizer's
max_grad_norm where one is set, steps the optimizer, and returns each replica's last loss (OutputMode.Final).
An inference model returns each output summed over the call per replica (OutputMode.Sum). Both must be
compiled, with the shapes they are later called with, and attached: only one model holds the IPUs at a time.
"""

from __future__ import annotations

import enum
import sys
import types

import torch

from mlperf_submission.closed.bert.optim import Lamb, clip_grad_norm


class ReductionType(enum.Enum):
    Sum = 0
    Mean = 1
    NoReduction = 2


class OutputMode(enum.Enum):
    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


class AutoStage(enum.Enum):
    SameAsIpu = 0
    AutoIncrement = 1


class DataLoaderMode(enum.Enum):
    Sync = 0
    Async = 1
    AsyncRebatched = 2


class PipelinedExecution:
    def __init__(self, *args):
        self.args = args


class TensorLocationSettings:
    """Chained settings, kept as a dict."""

    _METHODS = ("minElementsForOffChip", "minElementsForReplicatedTensorSharding", "useOnChipStorage",
                "useReplicatedTensorSharding", "useIOTilesToLoad", "useIOTilesToStore")

    def __init__(self):
        self.settings = {}

    def __getattr__(self, name):
        if name not in self._METHODS:
            raise AttributeError(f"poptorch.TensorLocationSettings has no {name}")

        def method(value=True):
            self.settings[name] = value
            return self
        return method


class _Group:
    """A group of Options methods (opts.Training, opts.Precision, ...), each call recorded on the Options."""

    def __init__(self, opts, name, methods):
        self._opts, self._name, self._methods = opts, name, methods

    def __getattr__(self, name):
        if name.startswith("__") or name not in self._methods:
            raise AttributeError(f"poptorch.Options.{self._name} has no {name}")

        def method(*args):
            self._opts.record(f"{self._name}.{name}", *args)
            if (self._name, name) == ("Training", "gradientAccumulation"):
                self._opts.gradient_accumulation = args[0]
            return self._opts
        return method


class Options:
    _METHODS = ("replicationFactor", "deviceIterations", "randomSeed", "outputMode", "setExecutionStrategy",
                "setAvailableMemoryProportion", "enableExecutableCaching", "autoRoundNumIPUs", "useIpuModel",
                "enableSyntheticData", "logDir", "modelName", "useOfflineIpuTarget", "enableStableNorm")
    _GROUPS = {
        "Training": ("gradientAccumulation", "accumulationAndReplicationReductionType", "setAutomaticLossScaling",
                     "setMeanAccumulationAndReplicationReductionStrategy", "setConvolutionDithering"),
        "Precision": ("enableStochasticRounding", "setPartialsType", "halfFloatCasting", "runningStatisticsAlwaysFloat",
                      "enableFloatingPointExceptions"),
        "TensorLocations": ("setOptimizerLocation", "setActivationLocation", "setWeightLocation",
                            "setAccumulatorLocation"),
        "_Popart": ("set", "setPatterns", "setEngineOptions"),
        "Distributed": ("configureProcessId", "disable", "setEnvVarNames"),
    }

    def __init__(self, fake):
        self.calls: list[tuple[str, tuple]] = []
        self.replication_factor = self.device_iterations = self.gradient_accumulation = 1
        self.output_mode = OutputMode.Default
        for name, methods in self._GROUPS.items():
            setattr(self, name, _Group(self, name, methods))
        fake.options.append(self)

    def record(self, name, *args):
        self.calls.append((name, args))
        return self

    def __getattr__(self, name):
        if name.startswith("__") or name not in self._METHODS:
            raise AttributeError(f"poptorch.Options has no {name}")

        def method(*args):
            if name == "replicationFactor":
                self.replication_factor = args[0]
            elif name == "deviceIterations":
                self.device_iterations = args[0]
            elif name == "outputMode":
                self.output_mode = args[0]
            return self.record(name, *args)
        return method

    def called(self, name):
        """The arguments of every call of `name`, in order."""
        return [args for call, args in self.calls if call == name]


class LAMB(Lamb):
    """poptorch.optim.LAMB's signature over the reference LAMB of closed/bert/optim.py: a group whose
    max_weight_norm is 0 gets no trust ratio. Gradients are divided by loss_scaling before the update."""

    def __init__(self, params, lr=None, betas=None, eps=None, weight_decay=None, bias_correction=None,
                 loss_scaling=None, max_weight_norm=None, accum_type=None, first_order_momentum_accum_type=None,
                 second_order_momentum_accum_type=None):
        self.settings = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                             loss_scaling=loss_scaling, max_weight_norm=max_weight_norm, accum_type=accum_type,
                             first_order_momentum_accum_type=first_order_momentum_accum_type,
                             second_order_momentum_accum_type=second_order_momentum_accum_type)
        groups = [dict(g, layer_adaptation=g.get("max_weight_norm", max_weight_norm) != 0) for g in params]
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay or 0.0,
                         bias_correction=bias_correction)
        self.loss_scaling = loss_scaling or 1.0


class _Executor:
    def __init__(self, fake, model, options, optimizer=None, training=True):
        self.fake, self.model, self.options, self.optimizer, self.training = fake, model, options, optimizer, training
        self.shapes = None
        self.lrs: list[list[float]] = []
        self.calls = 0

    def compile(self, *inputs):
        self.shapes = [tuple(t.shape) for t in inputs]
        self.fake.attached = self

    def isAttachedToDevice(self):
        return self.fake.attached is self

    def attachToDevice(self):
        assert self.shapes is not None, "attachToDevice before compile"
        assert self.fake.attached is None, "the IPUs are held by the other model: detach it first"
        self.fake.attached = self

    def detachFromDevice(self):
        assert self.fake.attached is self, "detachFromDevice of a model that is not attached"
        self.fake.attached = None

    def setOptimizer(self, optimizer):
        assert optimizer is self.optimizer
        self.lrs.append([g["lr"] for g in optimizer.param_groups])

    def _micro_batches(self, inputs, per_call):
        shapes = [tuple(t.shape) for t in inputs]
        assert shapes == self.shapes, f"called with shapes {shapes}, compiled for {self.shapes}: PopTorch recompiles"
        assert self.fake.attached is self, "called while not attached"
        assert len(inputs[0]) % per_call == 0
        return list(zip(*(t.chunk(per_call) for t in inputs), strict=True))

    def __call__(self, *inputs):
        self.calls += 1
        o = self.options
        replicas, iterations = o.replication_factor, o.device_iterations
        if not self.training:
            micro = self._micro_batches(inputs, iterations * replicas)
            self.model.eval()
            with torch.no_grad():
                per_replica = [None] * replicas
                for i, batch in enumerate(micro):
                    out = self.model(*batch)
                    r = i % replicas
                    per_replica[r] = out if per_replica[r] is None else tuple(a + b for a, b in zip(
                        per_replica[r], out, strict=True))
            assert o.output_mode == OutputMode.Sum
            return tuple(torch.stack([p[k] for p in per_replica]) for k in range(len(per_replica[0])))
        accumulation = o.gradient_accumulation
        assert o.called("Training.accumulationAndReplicationReductionType") == [(ReductionType.Mean,)]
        n = replicas * accumulation
        micro = self._micro_batches(inputs, iterations * n)
        self.model.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for d in range(iterations):
            self.optimizer.zero_grad()
            last = []
            for batch in micro[d * n:(d + 1) * n]:
                loss = self.model(*batch)
                (loss * self.optimizer.loss_scaling / n).backward()
                last.append(loss.detach())
            for p in params:
                if p.grad is not None:
                    p.grad /= self.optimizer.loss_scaling
            max_norm = getattr(self.optimizer, "max_grad_norm", float("inf"))
            if max_norm != float("inf"):
                clip_grad_norm(params, max_norm)
            self.optimizer.step()
        return torch.stack(last[-replicas:])


class DataLoader(torch.utils.data.DataLoader):
    """Batches of the combined size: micro-batch x device iterations x replicas x accumulation."""

    def __init__(self, options, dataset, batch_size=1, shuffle=None, num_workers=0, drop_last=True,
                 persistent_workers=None, auto_distributed_partitioning=True, mode=DataLoaderMode.Sync,
                 async_options=None, rebatched_worker_size=None, batch_sampler=None, **kwargs):
        assert isinstance(mode, DataLoaderMode)
        self.micro_batch = batch_size
        combined = batch_size * options.device_iterations * options.replication_factor * options.gradient_accumulation
        super().__init__(dataset, batch_size=combined, shuffle=bool(shuffle), num_workers=num_workers,
                         drop_last=drop_last, **kwargs)


def install(monkeypatch) -> types.ModuleType:
    """Make `import poptorch` give a fresh fake (with `.options`, `.blocks`, `.checkpoints`, `.models`)."""
    fake = types.ModuleType("poptorch")
    fake.options, fake.blocks, fake.checkpoints, fake.models, fake.attached = [], [], [], [], None
    fake.Options = lambda: Options(fake)
    fake.ReductionType, fake.OutputMode, fake.AutoStage = ReductionType, OutputMode, AutoStage
    fake.DataLoaderMode, fake.PipelinedExecution = DataLoaderMode, PipelinedExecution
    fake.TensorLocationSettings, fake.DataLoader = TensorLocationSettings, DataLoader

    def begin_block(module, user_id=None, ipu_id=None):
        fake.blocks.append((module, user_id, ipu_id))
        return module

    def recomputation_checkpoint(tensor):
        fake.checkpoints.append(tuple(tensor.shape))
        return tensor

    def identity_loss(loss, reduction):
        assert reduction in ("none", "sum", "mean")
        return loss

    def training_model(model, options=None, optimizer=None):
        fake.models.append(_Executor(fake, model, options, optimizer, training=True))
        return fake.models[-1]

    def inference_model(model, options=None):
        fake.models.append(_Executor(fake, model, options, training=False))
        return fake.models[-1]

    fake.BeginBlock, fake.recomputationCheckpoint = begin_block, recomputation_checkpoint
    fake.identity_loss = identity_loss
    fake.trainingModel, fake.inferenceModel = training_model, inference_model
    fake.optim = types.ModuleType("poptorch.optim")
    fake.optim.LAMB = LAMB
    monkeypatch.setitem(sys.modules, "poptorch", fake)
    monkeypatch.setitem(sys.modules, "poptorch.optim", fake.optim)
    return fake
