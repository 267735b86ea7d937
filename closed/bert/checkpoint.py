"""The MLPerf BERT phase-1 TF checkpoint (`model.ckpt-28252`) as this model's state_dict, without TensorFlow.

    python -m mlperf_submission.closed.bert.checkpoint --tf /data/bert/phase1/model.ckpt-28252 --out phase1.pt

    python -m mlperf_submission.closed.bert.checkpoint --eval DATA CKPT      (identity.py: the masked-LM
                                                                             accuracy before training, sha256)

writes `phase1.pt` (a plain state_dict for `BertForPretraining`, loadable with `model.load_state_dict(
torch.load(path))`) atomically, and prints what it converted and what it skipped. Bad input (missing files,
corrupt blocks or tensors, unknown tensors, wrong shapes) exits with status 2 and one line `error: ...`.

The TensorBundle format itself is read and written by common/data/tensorbundle.py. TF dense kernels are
(in, out) and are transposed into nn.Linear weights; the MLM decoder is tied to the word embeddings, so it
has no tensor of its own. Optimizer slots (LAMB/Adam m and v) and bookkeeping variables (global_step, beta
powers) are skipped.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

from ...common.cli import ArgumentParser, UserError, atomic_path, entry_point
from ...common.data.tensorbundle import TensorBundleError, read_index, read_tf_checkpoint
from . import identity
from .model import BertConfig, BertForPretraining, mlperf_tensor_names, tf_tensor_name

# Non-model variables of a TF1 pretraining checkpoint: optimizer slots and step/bias-correction counters.
_SKIPPED = re.compile(r"(^|/)(global_step|beta1_power|beta2_power|_CHECKPOINTABLE_OBJECT_GRAPH)$"
                      r"|/(adam_m|adam_v|LAMB|LAMB_1|Momentum|ExponentialMovingAverage)$")

# One error for the bundle's format and for this model's names: callers catch one type.
CheckpointError = TensorBundleError


def _is_kernel(tf_name: str) -> bool:
    return tf_name.endswith("/kernel")


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> BertConfig:
    """The BertConfig whose parameters have these TF shapes (attention heads: 16 where they divide)."""
    try:
        vocab, hidden = shapes["bert/embeddings/word_embeddings"]
        positions = shapes["bert/embeddings/position_embeddings"][0]
        types = shapes["bert/embeddings/token_type_embeddings"][0]
        intermediate = shapes["bert/encoder/layer_0/intermediate/dense/kernel"][1]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not a BERT checkpoint: missing or malformed tensor {e}") from None
    layers = {int(m.group(1)) for name in shapes if (m := re.match(r"bert/encoder/layer_(\d+)/", name))}
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=max(layers) + 1,
                      num_attention_heads=math.gcd(hidden, 16), intermediate_size=intermediate,
                      max_position_embeddings=positions, type_vocab_size=types)


def state_dict_from_tf(tensors: dict[str, np.ndarray], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """TF-named arrays -> float32 state_dict of BertForPretraining(cfg); every parameter must be present."""
    with torch.device("meta"):
        model = BertForPretraining(cfg)
    params = dict(model.named_parameters())
    state = {}
    for name, tf_name in mlperf_tensor_names(model).items():
        if tf_name not in tensors:
            raise CheckpointError(f"tensor {tf_name!r} (parameter {name}) is missing from the checkpoint")
        array = tensors[tf_name].T if _is_kernel(tf_name) else tensors[tf_name]
        if tuple(array.shape) != tuple(params[name].shape):
            raise CheckpointError(f"tensor {tf_name!r} has shape {tuple(tensors[tf_name].shape)}, the model needs "
                                  f"{tuple(params[name].shape)}{' transposed' if _is_kernel(tf_name) else ''}")
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a writable copy
    return state


def tf_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """state_dict -> TF-named float32 arrays, kernels transposed back: the inverse of state_dict_from_tf."""
    out = {}
    for name, tensor in state_dict.items():
        tf_name = tf_tensor_name(name)
        array = tensor.detach().to(torch.float32).cpu().numpy()
        out[tf_name] = np.ascontiguousarray(array.T if _is_kernel(tf_name) else array)
    return out


def convert_checkpoint(prefix: str | os.PathLike) -> tuple[dict[str, torch.Tensor], BertConfig, list[str]]:
    """TF checkpoint -> (state_dict, inferred config, names of the skipped optimizer/bookkeeping tensors)."""
    _, entries = read_index(prefix)
    skipped = sorted(name for name in entries if _SKIPPED.search(name))
    model_names = sorted(set(entries) - set(skipped))
    cfg = config_from_shapes({name: entries[name].shape for name in model_names})
    with torch.device("meta"):
        expected = set(mlperf_tensor_names(BertForPretraining(cfg)).values())
    unknown = [name for name in model_names if name not in expected]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise CheckpointError(f"{prefix}: unknown tensor {unknown[0]!r}{more}: neither a BERT pretraining weight "
                              "nor an optimizer slot")
    return state_dict_from_tf(read_tf_checkpoint(prefix, model_names), cfg), cfg, skipped


def checkpoint_prefix(path: str | os.PathLike) -> str:
    """A TF checkpoint named by its prefix or by one of its files -> the prefix."""
    return re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", str(path))


def _expected_shapes(cfg: BertConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """TF name -> (shape as the checkpoint stores it, parameter name) for BertForPretraining(cfg)."""
    with torch.device("meta"):
        model = BertForPretraining(cfg)
    out = {}
    for name, p in model.named_parameters():
        tf_name = tf_tensor_name(name)
        out[tf_name] = (tuple(p.shape[::-1]) if _is_kernel(tf_name) else tuple(p.shape), name)
    return out


def check_init_checkpoint(path: str | os.PathLike, cfg: BertConfig) -> None:
    """Cheap, before a run writes anything: `path` (a TF prefix, or a `.pt` state_dict written by this
    module's CLI) holds every tensor of BertForPretraining(cfg) with its shape, and nothing unknown.
    Reads the TF index or the .pt's metadata only (memory-mapped); raises CheckpointError."""
    expected = _expected_shapes(cfg)
    if str(path).endswith(".pt"):
        if not Path(path).is_file():
            raise CheckpointError(f"{path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a torch state_dict ({e})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state_dict")
        to_tf = {param: tf for tf, (_, param) in expected.items()}
        found = {}
        for name, tensor in state.items():
            tf = to_tf.get(name, name)
            found[tf] = tuple(tensor.shape)[::-1] if name in to_tf and _is_kernel(tf) else tuple(tensor.shape)
    else:
        _, entries = read_index(checkpoint_prefix(path))
        found = {name: entry.shape for name, entry in entries.items() if not _SKIPPED.search(name)}
    missing = sorted(set(expected) - set(found))
    unknown = sorted(set(found) - set(expected))
    wrong = sorted(name for name in set(expected) & set(found) if tuple(found[name]) != expected[name][0])
    for problem, names in (("is missing", missing), ("is not a weight of this model", unknown)):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise CheckpointError(f"{path}: tensor {names[0]!r}{more} {problem}")
    if wrong:
        raise CheckpointError(f"{path}: tensor {wrong[0]!r} has shape {tuple(found[wrong[0]])}, this model's is "
                              f"{expected[wrong[0]][0]} (a checkpoint of another model size?)")


def load_init_checkpoint(path: str | os.PathLike, cfg: BertConfig) -> dict[str, torch.Tensor]:
    """The state_dict of BertForPretraining(cfg) from a TF checkpoint (converted here, every tensor checked
    against its crc32c) or from a converted `.pt`; raises CheckpointError."""
    check_init_checkpoint(path, cfg)
    if str(path).endswith(".pt"):
        return torch.load(path, map_location="cpu", weights_only=True)
    state, _, _ = convert_checkpoint(checkpoint_prefix(path))
    return state


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--eval"]:  # the starting accuracy and sha256 of a checkpoint: identity.py
        return identity.main(argv[1:], load=load_init_checkpoint)
    parser = ArgumentParser(prog="python -m mlperf_submission.closed.bert.checkpoint",
                            description="Convert the MLPerf BERT TF checkpoint to a torch state_dict (no TensorFlow "
                                        "needed).")
    parser.add_argument("--tf", required=True, help="checkpoint prefix, e.g. /data/bert/phase1/model.ckpt-28252")
    parser.add_argument("--out", required=True, type=Path, help="output .pt file")
    args = parser.parse_args(argv)
    try:
        state, cfg, skipped = convert_checkpoint(checkpoint_prefix(args.tf))
        with atomic_path(args.out) as tmp:
            torch.save(state, tmp)
    except (CheckpointError, OSError) as e:
        raise UserError(str(e)) from None
    count = sum(t.numel() for t in state.values())
    print(f"{args.out}: {len(state)} tensors, {count:,} parameters ({cfg.num_hidden_layers} layers, hidden "
          f"{cfg.hidden_size}, vocab {cfg.vocab_size}); skipped {len(skipped)} optimizer/bookkeeping tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
