"""Open-division BERT presets: closed BERT's config plus packing, and the rules the open division keeps.

    python -m mlperf_submission.open.bert.train --preset NAME ...

Packing removes the padding that is over half of the Wikipedia tokens at length 512 (arXiv 2107.02027):
each row of a batch holds up to `max_sequences_per_pack` whole sequences, so a step of the same number of
sequences costs about half the compute. `global_batch_size` still counts sequences, as Graphcore logged it
(3072 for 1536 packs); the loaders deliver `global_batch_size / sequences_per_pack` packs per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...closed.bert import presets as closed
from ...common import config
from ...common.cli import UserError
from ...common.data import packing


@dataclass(frozen=True, kw_only=True)
class PackedBertConfig(closed.BertRunConfig):
    packing: Literal["spfhp", "nnlshp"] = "nnlshp"
    max_sequences_per_pack: int = 3
    sequences_per_pack: int = 2       # the nominal average that sets packs per step; the data's own is printed
    loss_averaging: closed.LossAveraging = "per_sequence"

    @property
    def global_batch_items(self) -> int:
        """Packs per optimizer step over all replicas."""
        return self.global_batch_size // self.sequences_per_pack


def _open(base: closed.BertRunConfig, **changes) -> PackedBertConfig:
    """A closed preset made open: packed, with per-sequence loss averaging (`extend` would copy closed's)."""
    return config.extend(PackedBertConfig, base, loss_averaging="per_sequence", **changes)


def smoke() -> PackedBertConfig:
    """Closed `smoke`'s toy language and model at sequence length 64 with Wikipedia's length mix (about half
    of the tokens of a padded batch are padding), packed by NNLSHP at most 3 to a pack: the same 32 sequences a
    step in 16 packs. At length 32 the Wikipedia mix leaves sequences too short to learn the toy language in
    the demo's 500 steps, packed or not. The like-for-like closed run is `closed.bert.train --preset smoke --set
    synthetic_lengths=wikipedia --set max_seq_length=64 --set max_predictions_per_seq=10
    --set synthetic_train_samples=32000`."""
    return _open(closed.smoke(), synthetic_lengths="wikipedia", synthetic_train_samples=32000, max_seq_length=64,
                 max_predictions_per_seq=10)


def ipu_pod16() -> PackedBertConfig:
    """Graphcore's v1.1 IPU-POD16 open result (26.05 minutes) against its closed one (32.70): NNLSHP packs of at
    most 3 sequences, 1536 packs (GBS 3072 sequences) a step, and lr 0.0022, beta1 0.50, wd 0.008, 1150 steps,
    no gradient clipping, per-sequence loss averaging, fp16 (16.16). On IPUs closed `pod16-graphcore`'s placement and
    batch (2 packs a replica, their batch_size), with loss scaling 64 (configs/mk2/pod16-open.json)."""
    return _open(closed.graphcore_pod16(), opt_base_learning_rate=0.0022, opt_lamb_beta_1=0.50,
                 opt_lamb_weight_decay_rate=0.008, opt_learning_rate_training_steps=1150, max_grad_norm=0.0,
                 ipu_loss_scaling=64.0)


def h200() -> PackedBertConfig:
    """Closed `1xH200` packed: 128 packs (about 256 sequences) a step."""
    return _open(closed.h200(), gradient_accumulation_steps=2)


PRESETS = {"smoke": smoke, "pod16": ipu_pod16, "1xH200": h200}


def validate_open(cfg: PackedBertConfig) -> None:
    """The open division may change the model's training but not its task: same data, same quality target."""
    problems = []
    if cfg.target_accuracy != closed.TARGET:
        problems.append(f"the quality target is masked-LM accuracy {closed.TARGET} in both divisions")
    if cfg.dataset == "wiki" and cfg.max_seq_length != 512:
        problems.append("the MLPerf data is sequence length 512")
    if not 1 <= cfg.max_sequences_per_pack <= 8:
        problems.append("max_sequences_per_pack must be 1..8")
    elif cfg.packing == "nnlshp" and not packing.nnlshp_feasible(cfg.max_seq_length, cfg.max_sequences_per_pack):
        problems.append(f"nnlshp packs at most {packing.nnlshp_max_per_pack(cfg.max_seq_length)} sequences at length "
                        f"{cfg.max_seq_length}; lower max_sequences_per_pack or set packing=spfhp")
    if not cfg.unpad:
        problems.append("packs are unpadded rows already: unpad=false is closed BERT's padded layout")
    if cfg.torch_compile != "off":
        # Packs carry a data-dependent number of predictions, so compiled shapes would change in the timed region.
        problems.append("torch_compile is not supported with packed batches; set torch_compile=off")
    if cfg.global_batch_size % cfg.sequences_per_pack:
        problems.append("global_batch_size must be a multiple of sequences_per_pack")
    elif cfg.global_batch_items % cfg.gradient_accumulation_steps:
        problems.append("packs per step must be a multiple of gradient_accumulation_steps")
    if problems:
        raise UserError("not allowed in the open division: " + "; ".join(problems))
