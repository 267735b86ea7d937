"""ResNet-50 presets: named functions returning frozen configs, and the closed-division rules.

    python -m mlperf_submission.closed.resnet.train --preset NAME ...

`smoke` is the embedded default: the full ResNet-50 topology (all 161 tensors) at width 8 on built-in
synthetic data at 32 px and 10 classes; one run reaches top-1 0.759 in well under a minute on a
2-core CPU. It is a demonstration: its convergence says nothing about ImageNet.
The real presets carry published hyperparameters and need ImageNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mlperf_logging.mllog import constants

from ...common.cli import UserError
from ...common.run import QUALITY_TARGETS
from ...common.runtime.memory import Estimate
from . import memory

IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
IMAGENET_CLASSES = 1000
TARGET = QUALITY_TARGETS["resnet"]
# What the closed rules fix about the task on ImageNet: the reference's model and input (ResNet-50 v1.5 at
# width 64, 224 px crops, 1,000 classes). The smoke preset scales them down as a declared demonstration.
CLOSED_TASK = {"image_size": 224, "model_width": 64, "num_classes": IMAGENET_CLASSES}


# Why device=ipu stops, before any log (train.resolve_config through common/training.resolve).
IPU_UNSUPPORTED = (
    "ResNet-50 on IPUs is not supported: the closed recipe's LARS is not among poptorch.optim's optimizers and "
    "PopTorch runs no Python optimizer step on the device (Graphcore's v1.1 ResNet ran LARS in TensorFlow 1 for "
    "IPU); use device=cpu or cuda")


@dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    # data
    dataset: Literal["synthetic", "imagenet"] = "imagenet"
    num_classes: int = 1000
    image_size: int = 224
    synthetic_train_samples: int = 4096
    synthetic_eval_samples: int = 1024
    synthetic_seed: int = 0          # fixes the synthetic dataset; the run seed varies per run
    data_workers: int = 8
    reduced_decode: bool = False     # decode large JPEGs at 1/8-step scales where the crop allows: faster, but it
                                     # moves training pixels 3.0 grey levels mean abs (COMPLIANCE.md); not closed
    # model
    model_width: int = 64
    # batch: global = local x replicas x gradient_accumulation_steps
    global_batch_size: int = 3264
    gradient_accumulation_steps: int = 1
    # optimizer and schedule; logged under lars_* or sgd_* keys by opt_name
    opt_name: Literal["lars", "sgd"] = "lars"
    opt_base_learning_rate: float = 10.5
    opt_end_learning_rate: float = 0.0001
    opt_learning_rate_decay_poly_power: float = 2.0
    opt_learning_rate_warmup_epochs: int = 2
    train_epochs: int = 39           # the schedule's length (schedule_steps); the run stops, unconverged,
                                     # at the first eval at or after it, as the reference's controller
    opt_momentum: float = 0.9
    opt_weight_decay: float = 5e-05
    lars_epsilon: float = 0.0
    label_smoothing: float = 0.1
    model_bn_span: int = 0           # samples per batch-norm statistics group: the local batch (0) times a
                                     # divisor of the replicas; synchronised over that many ranks
    # eval: every eval_every epochs, the first after eval_offset epochs (or eval_every if 0)
    eval_every: int = 4
    eval_offset: int = 0
    max_epochs: int = 0              # 0: none; else stop (aborted) after this many epochs if that is earlier
    target_accuracy: float = TARGET
    # runtime
    device: Literal["auto", "cpu", "cuda", "ipu"] = "auto"  # ipu: refused with IPU_UNSUPPORTED
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    # speed only: none of these changes what is computed beyond rounding (tests/test_speed.py)
    torch_compile: Literal["off", "inductor", "aot_eager"] = "off"  # compiled and warmed up in the untimed init
    optimizer_foreach: bool = True   # LARS/SGD steps over all tensors at once (optim.py has the measurements)
    prefetch_factor: int = 2         # batches each data worker decodes ahead of the training step
    pin_memory: bool = True          # page-locked batches, so host-to-GPU copies overlap compute (CUDA only)
    distributed_backend: Literal["torch", "horovod"] = "torch"  # torchrun or srun; horovodrun (`make horovod`)
    distributed_timeout_s: int = 600  # a collective waiting longer on a dead or hung rank ends the run

    @property
    def global_batch_items(self) -> int:
        """Items the loaders deliver per optimizer step, over all replicas: one image each."""
        return self.global_batch_size

    def memory_estimate(self, local_batch: int, device_type: str) -> Estimate:
        """Bytes per rank at `local_batch` images (closed/resnet/memory.py), for common/runtime/memory.py."""
        return memory.estimate(self, local_batch, device_type)

    def shm_sample_bytes(self) -> int:
        return memory.shm_sample_bytes(self)


def smoke() -> ResNetConfig:
    """Full topology at width 8, synthetic data; about 2 s per epoch on 2 CPU cores, target by epoch 4-8.
    fp32 and contiguous memory: at these tiny shapes channels_last and bf16 do not pay on CPU. The foreach
    LARS step does (1.7 ms against 4.0 ms per step on one core); torch.compile would cost more time to
    compile than a whole run takes."""
    return ResNetConfig(
        dataset="synthetic", num_classes=10, image_size=32, model_width=8, data_workers=0,
        global_batch_size=128, opt_base_learning_rate=2.0, opt_learning_rate_warmup_epochs=1, train_epochs=8,
        eval_offset=0, device="cpu")


def dgxa100() -> ResNetConfig:
    """The MLCommons RCP hyperparameters at batch 3264, the batch of NVIDIA's v1.1 8x A100 result.

    Speed settings of the real presets: 16-bit autocast and channels_last, because cuDNN and oneDNN run
    16-bit convolutions fastest in NHWC: on the 2-core CPU (AVX-512 BF16) a full ResNet-50 training step at
    batch 16 went from ~4 images/s (fp32, NCHW) to ~16 (bf16, channels_last; `make bench` measures it
    again); foreach LARS. torch.compile stays off until measured on a GPU (`--set torch_compile=inductor`):
    on the shared 2-core CPU inductor took 406 s (cold cache) to compile even a 2-layer MLP's forward and
    backward, so any gain there would first have to repay minutes of init."""
    return ResNetConfig(global_batch_size=3264, opt_base_learning_rate=10.5, opt_learning_rate_warmup_epochs=2,
                        train_epochs=39, opt_weight_decay=5e-05, eval_offset=3, precision="fp16",
                        channels_last=True)


def ipu_pod16() -> ResNetConfig:
    """Graphcore's v1.1 IPU-POD16 result: LARS, GBS 3200 (20 x 10 accumulation x 16), lr 10.72,
    wd 5e-5, 2 warmup epochs, 38 decay epochs, evals at epochs 2, 6, ... (offset 2), fp16 (16.16)."""
    return ResNetConfig(global_batch_size=3200, gradient_accumulation_steps=10, opt_base_learning_rate=10.72,
                        opt_learning_rate_warmup_epochs=2, train_epochs=40, opt_weight_decay=5e-05,
                        eval_offset=2, precision="fp16", model_bn_span=40)


def h200() -> ResNetConfig:
    """One modern GPU: the MLCommons RCP hyperparameters at batch 1632 (the smallest RCP batch), as
    4 accumulation steps of 408 images, bf16 autocast, channels_last."""
    return ResNetConfig(global_batch_size=1632, gradient_accumulation_steps=4, opt_base_learning_rate=7.4,
                        opt_learning_rate_warmup_epochs=2, train_epochs=37, opt_weight_decay=5e-05,
                        eval_offset=0, precision="bf16", channels_last=True, data_workers=14)


PRESETS = {"smoke": smoke, "8xA100": dgxa100, "pod16": ipu_pod16, "1xH200": h200}


def validate_closed(cfg: ResNetConfig) -> None:
    """Raise UserError for anything the v1.1 closed ResNet rules forbid.

    On ImageNet the task is fixed too (CLOSED_TASK: image size, model width, class count); the dataset's
    own counts are checked against the rules by `check_counts` once the data is known. On synthetic data
    (the `smoke` preset, a declared demonstration that never yields a result on ImageNet) the scaled sizes
    are free, and every optimizer, schedule, evaluation and target rule still applies."""
    problems = []
    if cfg.dataset == "imagenet":
        problems += [f"{field} is fixed to {value} on ImageNet" for field, value in CLOSED_TASK.items()
                     if getattr(cfg, field) != value]
        if cfg.reduced_decode:
            problems.append("reduced_decode changes the reference's training pixels: decode at full size")
    if cfg.opt_end_learning_rate != 0.0001:
        problems.append("the end learning rate is fixed to 0.0001")
    if not math.isclose(math.log2(cfg.opt_weight_decay / 0.0001), round(math.log2(cfg.opt_weight_decay / 0.0001)),
                        abs_tol=1e-5):
        problems.append(f"weight decay must be 0.0001 x 2^k, not {cfg.opt_weight_decay}")
    if cfg.opt_learning_rate_decay_poly_power != 2:
        problems.append(f"the {cfg.opt_name.upper()} polynomial decay power is fixed to 2")
    if cfg.opt_name == "lars":
        if cfg.lars_epsilon != 0.0:
            problems.append("LARS epsilon is fixed to 0")
        if cfg.global_batch_size < 32768 and cfg.opt_momentum != 0.9:
            problems.append("LARS momentum must be 0.9 below batch 32k")
    else:
        if abs(cfg.opt_base_learning_rate / 0.001 - round(cfg.opt_base_learning_rate / 0.001)) > 1e-5:
            problems.append("the SGD base learning rate must be a multiple of 0.001")
        if cfg.opt_momentum != 0.9:
            problems.append("SGD momentum is fixed to 0.9")
    if cfg.label_smoothing not in (0.0, 0.1):
        problems.append("label smoothing must be 0 or 0.1")
    if cfg.eval_every != 4 or cfg.eval_offset not in (0, 1, 2, 3):
        problems.append("closed evaluation is every 4 epochs with an offset of 0, 1, 2 or 3")
    if cfg.target_accuracy != TARGET:
        problems.append(f"the closed quality target is top-1 {TARGET}")
    if cfg.train_epochs < 1 or cfg.opt_learning_rate_warmup_epochs < 0:
        problems.append("train_epochs must be >= 1 and opt_learning_rate_warmup_epochs >= 0")
    if cfg.global_batch_size % cfg.gradient_accumulation_steps:
        problems.append("global_batch_size must be a multiple of gradient_accumulation_steps")
    if problems:
        raise UserError("not allowed in the closed division: " + "; ".join(problems))


def check_counts(train_samples: int, eval_samples: int, classes: int) -> None:
    """Raise UserError unless the dataset, as counted by `make data`, is the full ILSVRC2012 the rules name:
    1,281,167 training and 50,000 validation images in 1,000 classes (every eval uses the whole val set)."""
    if (train_samples, eval_samples, classes) != (IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES):
        raise UserError(f"the closed division trains on all of ILSVRC2012 ({IMAGENET_TRAIN:,} train / "
                        f"{IMAGENET_VAL:,} val images, {IMAGENET_CLASSES:,} classes); this dataset has "
                        f"{train_samples:,} / {eval_samples:,} images in {classes:,} classes: restore the "
                        "missing images and re-run `make data`")


def steps_per_epoch(cfg: ResNetConfig, train_samples: int) -> int:
    """Whole global batches per epoch: the remainder (train_samples mod global_batch_size images) is left out
    of each epoch, as the reference's `drop_train_remainder` (default True) has it: `steps_per_epoch =
    NUM_IMAGES['train'] // batch_size` (image_classification/tensorflow2/common.py, get_num_train_iterations)."""
    if train_samples < cfg.global_batch_size:
        raise UserError(f"{train_samples:,} training images make no whole global batch of {cfg.global_batch_size:,}")
    return train_samples // cfg.global_batch_size


def epoch_samples(cfg: ResNetConfig, train_samples: int, replicas: int) -> int:
    """Images each of `replicas` ranks trains per epoch: its share of the epoch's whole global batches."""
    return steps_per_epoch(cfg, train_samples) * cfg.global_batch_size // replicas


def schedule_steps(cfg: ResNetConfig, train_samples: int) -> tuple[int, int]:
    """(warmup_steps, decay_steps) of the learning-rate schedule, as the reference's
    `PolynomialDecayWithWarmup`: warmup = warmup_epochs x steps per epoch, decay = train_steps - warmup + 1
    with train_steps = train_epochs x steps per epoch. The one place both are computed: the run's schedule
    and its logged `*_opt_learning_rate_decay_steps` use it with the same count, the training set's size."""
    spe = steps_per_epoch(cfg, train_samples)
    warmup = cfg.opt_learning_rate_warmup_epochs * spe
    return warmup, cfg.train_epochs * spe - warmup + 1


def hyperparameters(cfg: ResNetConfig, train_samples: int) -> dict:
    """The hyperparameter keys the v1.1 closed rules require, for the chosen optimizer."""
    _, decay_steps = schedule_steps(cfg, train_samples)
    common = {constants.GLOBAL_BATCH_SIZE: cfg.global_batch_size,
              constants.GRADIENT_ACCUMULATION_STEPS: cfg.gradient_accumulation_steps,
              constants.OPT_NAME: cfg.opt_name}
    if cfg.opt_name == "lars":
        return common | {
            constants.LARS_OPT_BASE_LEARNING_RATE: cfg.opt_base_learning_rate,
            constants.LARS_OPT_END_LR: cfg.opt_end_learning_rate,
            constants.LARS_OPT_LR_DECAY_POLY_POWER: cfg.opt_learning_rate_decay_poly_power,
            constants.LARS_OPT_LR_DECAY_STEPS: decay_steps,
            constants.LARS_EPSILON: cfg.lars_epsilon,
            constants.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS: cfg.opt_learning_rate_warmup_epochs,
            constants.LARS_OPT_MOMENTUM: cfg.opt_momentum,
            constants.LARS_OPT_WEIGHT_DECAY: cfg.opt_weight_decay,
        }
    # mllog has no constants for the sgd_opt_* keys (CHECKERS.md §11).
    return common | {
        "sgd_opt_base_learning_rate": cfg.opt_base_learning_rate,
        "sgd_opt_end_learning_rate": cfg.opt_end_learning_rate,
        "sgd_opt_learning_rate_decay_poly_power": cfg.opt_learning_rate_decay_poly_power,
        "sgd_opt_learning_rate_decay_steps": decay_steps,
        "sgd_opt_weight_decay": cfg.opt_weight_decay,
        "sgd_opt_momentum": cfg.opt_momentum,
        constants.MODEL_BN_SPAN: cfg.model_bn_span or cfg.global_batch_size // cfg.gradient_accumulation_steps,
        constants.OPT_LR_WARMUP_EPOCHS: cfg.opt_learning_rate_warmup_epochs,
    }


def eval_epochs(cfg: ResNetConfig) -> list[int]:
    """The completed-epoch counts after which an eval runs (1-based): every eval_every epochs from the first
    (eval_offset, or eval_every if 0) up to the first at or after the schedule's end (train_epochs), where
    the reference's controller stops training, or up to max_epochs if that is set and earlier (but no
    earlier than the first eval)."""
    first = cfg.eval_offset or cfg.eval_every
    last = first + max(0, math.ceil((cfg.train_epochs - first) / cfg.eval_every)) * cfg.eval_every
    if cfg.max_epochs:
        last = max(first, min(last, cfg.max_epochs))  # the first eval always runs
    return list(range(first, last + 1, cfg.eval_every))
