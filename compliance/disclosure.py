"""What a closed package's README must disclose about each benchmark, from one source: the optimizer's update
equations as implemented, the evidence that they are the reference's, and every deliberate difference from the
reference with its reason and measured effect. The rules ask an implementation of an optimizer that is not the
approved one to "describe the optimizer's equation and demonstrate equivalence" (training_rules.adoc v1.1,
"Alternate optimizer implementations"), and list PyTorch LARS as having no compliant implementation.

    python -m mlperf_submission.compliance.disclosure --write    (rewrites the generated blocks of COMPLIANCE.md)

`compliance/package.py` puts `section(benchmark)` into the implementation README of every closed package, and
COMPLIANCE.md holds the same text between the markers `block` writes; tests/test_disclosure.py fails when the
two differ, so that they cannot drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..common.cli import ArgumentParser, UserError, atomic_write_text, entry_point

COMPLIANCE_MD = Path(__file__).resolve().parents[1] / "COMPLIANCE.md"

EQUATIONS = {
    "resnet": """\
LARS (`closed/resnet/optim.py` `LARS`), per conv or FC weight tensor w with gradient g, momentum buffer v, at
learning rate lr (the schedule's, per step):

    trust = eeta * |w| / (|g| + wd * |w| + eps)    if |w| > 0 and |g| > 0, else 1     (eeta 0.001, eps 1e-7)
    v <- momentum * v + lr * trust * (g + wd * w)
    w <- w - v

Batch-norm parameters and biases (the reference's `skip_list=['batch_normalization', 'bias', 'bn']`): momentum
SGD without weight decay, v <- momentum * v + lr * g; w <- w - v. The learning rate sits inside the momentum
buffer (TF's `MomentumOptimizer` form). Schedule (`optim.poly_schedule`), per 0-based step s, with whole global
batches per epoch (steps per epoch = 1,281,167 // global batch, the reference's `drop_train_remainder`):
lr = base_lr * s / warmup while s < warmup (warmup = warmup_epochs x steps per epoch), then
(base_lr - end_lr) * (1 - min(s - warmup, decay) / decay)^2 + end_lr with decay = train_epochs x steps per
epoch - warmup + 1, the `lars_opt_learning_rate_decay_steps` logged (1632: 785 x 35 + 1 = 27,476, the RCP
table's; 3264: 392 x 37 + 1 = 14,505 where the table lists 14,523, the same 37 decay epochs counted in
fractional steps, 1,281,167 x 37 / 3264; the RCP checker compares no hyperparameter). An fp16 step skipped on
overflow does not advance s.""",
    "bert": """\
LAMB (`closed/bert/optim.py` `Lamb`), per parameter w with gradient g at update t (1-based), after the global
gradient norm is clipped to 1.0 (`clip_grad_norm`, the reference's `tf.clip_by_global_norm`):

    m <- b1 * m + (1 - b1) * g;  v <- b2 * v + (1 - b2) * g^2
    m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)        (bias correction; without it m_hat = m, v_hat = v)
    u = m_hat / (sqrt(v_hat) + eps) + wd * w
    r = |w| / |u| if both > 0 else 1                        (trust ratio)
    w <- w - lr * r * u

LayerNorm and bias tensors get neither weight decay nor the trust ratio (r = 1), as the reference's
`exclude_from_weight_decay` and `exclude_from_layer_adaptation`. Schedule (`optim.lr_schedule`), per 0-based
step s: lr = base_lr * (s - start_warmup_step) / warmup while 0 <= s - start_warmup_step < warmup, else
base_lr * (1 - min(s, total) / total), total = `opt_learning_rate_training_steps`. An fp16 step skipped on
overflow advances neither s nor the samples counted.""",
}

EVIDENCE = {
    "resnet": """\
Reference: mlcommons/training at d0a86d67, `image_classification/tensorflow2/lars_optimizer.py` and
`lars_util.py` (`PolynomialDecayWithWarmup`), run in TensorFlow on five tensors of each parameter kind with
fixed gradients for two RCP-like cases (batch 3264: lr 10.5, 1 warmup epoch; batch 1632: lr 7.4, 2 warmup
epochs); the outputs are kept in `tests/reference/lars_reference.{json,npz}` (`tests/reference/README.md` says
how they were made). Test: `tests/test_resnet_reference.py::test_lars_updates_match_the_reference` and
`::test_lars_schedule_and_logged_keys_match_the_reference`. Measured agreement: every tensor after every step
(25 and 30 steps) within 1.3e-7 to 2.7e-7 relative, foreach and per-tensor loop (limit 1e-6); learning rates
and logged decay steps equal.""",
    "bert": """\
Reference: mlcommons/training at 9947bdf2, `language_model/tensorflow/bert/optimization.py` and
`lamb_optimizer_v1.py` (with `tf.clip_by_global_norm`), run in TensorFlow for 12 steps of two cases (the RCP at
batch 3072, clipped every step; batch 256, clipped on some); the outputs are in
`tests/reference/lamb_reference.json` (`tests/reference/README-bert.md`). Test:
`tests/test_bert_reference.py::test_lamb_clip_and_schedule_follow_the_reference`. Measured agreement, max abs
difference over max abs value per tensor over 12 steps: 6.5e-7 (rcp_3072, foreach), 7.0e-7 (loop), 3.1e-6
(h200_256, foreach), 3.2e-6 (loop); limit 1e-5. The phase-1 checkpoint written by TensorFlow converts
bit-exact (`::test_a_checkpoint_written_by_tensorflow_converts_exactly`); unpadded batches give the padded
batch's loss to 1e-6 relative and its gradients to 1e-4 (`tests/test_bert_unpadded.py`).""",
}

DIFFERENCES = {
    "resnet": """\
- **Symmetric convolution and max-pool padding.** Keras' `padding='same'` pads a stride-2 3x3 conv and the
  stem's 3x3 max pool asymmetrically (0 before, 1 after, on even sizes); PyTorch pads 1 on each side. The
  output shapes are the same and the sampling grid moves by one pixel. The v1.1 rules do not fix the
  framework, and the closed checker's tensor names are MXNet's, whose ResNet (the v1.1 MXNet submissions)
  pads symmetrically as we do.
- **Division by a per-channel std after the mean subtraction.** The reference subtracts the means only.
  A fixed per-channel input scale is a reparametrisation of conv1 (its weights for channel c scaled by
  std_c; batch norm follows), not another model, and the v1.1 MXNet/DALI submissions normalise the same
  way. It keeps 16-bit inputs near unit variance. The tests compare our pixels before the division.
- **Random streams.** Our crops, flips and data order come from torch's seeded generators, not TF's
  Philox streams: equal distributions (the KS figures above), different draws.
- **Pillow fallback.** The few files libjpeg-turbo refuses (CMYK JPEGs, a PNG named .JPEG in ILSVRC2012
  train) decode with Pillow's accurate DCT, about 1 grey level from what TF would give, where TF can
  decode them at all.
- **Full decode, then the window**, where the reference decodes only the window (`decode_and_crop_jpeg`,
  libjpeg-turbo's cropped decode). Both are libjpeg-turbo with the same DCT and upsampling; whether the
  cropped decode's chroma upsampling at the window's first and last rows equals the full decode's is not
  measured here (the fixtures hold TF's eval pixels, not its training pixels).
- **8-bit training batches.** The reference's resize gives fractional grey levels in float32; our loader
  workers round training crops to uint8 (at most 0.5 grey levels, 0.25 mean) and the device normalises
  them. Eval batches stay float32, the reference's eval pixels bit-exact (50,000 images, a small share). A float32
  batch of 408 images is 246 MB in the workers' shared memory and on the host-to-device link, uint8 a
  quarter of it; Graphcore's v1.1 closed ResNet uses 8-bit image I/O too, and NVIDIA's DALI pipelines
  resize to uint8. `pixels()` stays the reference's float32 output, pinned bit-exact by the eval test.
- **LARS epsilon 1e-7 computed, 0 logged.** The closed rules fix `lars_epsilon` to 0 and the reference logs 0,
  but computes with `epsilon or backend_config.epsilon()`, Keras' 1e-7 (`lars_optimizer.py`); we compute what
  it computes (`optim.reference_epsilon`) and log what it logs. Effect against the reference: none beyond
  rounding (the LARS agreement above, 1.3e-7 to 2.7e-7 relative, is with 1e-7 on both sides); against a
  literal 0: not measured.
- **`reduced_decode`** exists for open-division or throughput experiments and is measured above; the
  closed division refuses it.
- **The smoke preset** (synthetic data, 32 px, width 8, 10 classes) is a declared demonstration:
  `validate_closed` checks its optimizer, schedule, evaluation and target like any closed config, but not
  the ImageNet task sizes, and its logs are labelled DEMONSTRATION in the package.""",
    "bert": """\
- **Clipping after the all-reduce by default** (the mean gradient, as one device clips); `--set
  clip_before_allreduce=true` clips per rank as the TF reference's per-replica `clip_by_global_norm`. The v1.1
  rules allow either for BERT.
- **The MLM head runs at the masked positions only and attention uses scaled-dot-product kernels**: the same
  arithmetic as the reference's gather-then-dense and softmax attention (Graph Execution clause: mathematically
  equivalent). `tests/test_bert_model.py` checks padding invariance; `tests/test_speed.py` fast against plain.
- **Unpadded batches** (`unpad`, on by default): each batch the sampler draws is laid out without its
  padding, the sequences concatenated into rows of 512 by first-fit (`packing.unpadded_batch`, in the data
  workers), attention limited to each sequence by a block-diagonal mask, positions restarting per sequence,
  NSP read at each sequence's own [CLS], and the masked-LM loss the mean over the batch's masked tokens as
  the reference's. The same sequences train together in the same step: only the padding's arithmetic is
  gone, as in NVIDIA's closed v1.1 BERT (unpadding with variable-length attention), so it is the same
  mathematics (Graph Execution clause). `tests/test_bert_unpadded.py`: loss to 1e-6 relative, the masked-LM
  hit count and its weight sum exactly, every gradient tensor to 1e-4, against the padded batch.
  `--set unpad=false` gives the padded rows. Attention masks are boolean, where the reference adds -10000 to
  the logits of masked keys: exp(-10000) is 0.0 in float32 and bfloat16, so the weights are the same.
- **LAMB moments in fp32 for 16-bit weights**; the foreach update agrees with the per-tensor loop to 1 ulp.
- **Before `start_warmup_step` the learning rate is 0**, where the reference's formula would go negative; only
  a positive `start_warmup_step` reaches that region, and no preset or RCP has one.
- **Clip norm fixed at 1.0 in every closed preset**, as the reference's code hard-codes it. Graphcore's closed
  POD128 result logged a clip of 100; reproducing it needs a change here, presented to the review.
- **The smoke demonstration** (`smoke`, synthetic corpus) keeps 24 layers, clip 1.0, the target and a
  phase-1 start, and scales the width (hidden 32, 1 head), the sequence length (32), predictions (6), the
  corpus and the eval cadence (1,600 samples); dropout 0. Its sizes may be changed with `--set` (it is a
  demonstration, labelled so everywhere); a Wikipedia preset may change none of them. Its phase-1 checkpoint
  is made by this project (not the reference's ckpt-28252), to a comparable starting accuracy.
- **Open BERT** (`open/bert/`) does not require the checkpoint (the open rules do not), accepts `--ckpt`, and
  its smoke still trains from scratch.""",
}

TITLES = {"resnet": "ResNet-50", "bert": "BERT-Large"}


def section(benchmark: str) -> str:
    """The disclosure of one benchmark, as markdown: equations, evidence, deliberate differences."""
    if benchmark not in EQUATIONS:
        raise UserError(f"no disclosure for benchmark {benchmark!r}: one of {', '.join(EQUATIONS)}")
    return "\n".join([
        "### Optimizer update as implemented", "", EQUATIONS[benchmark], "",
        "### Equivalence evidence", "", EVIDENCE[benchmark], "",
        "### What differs on purpose, and why it is allowed", "", DIFFERENCES[benchmark], ""])


# The keys closed BERT logs about its phase-1 checkpoint (closed/bert/identity.py), read back here.
CHECKPOINT_KEYS = ("init_checkpoint_sha256", "init_checkpoint_masked_lm_accuracy", "init_checkpoint_override")


def logged_values(log: Path) -> dict[str, list]:
    """Every MLPerf key of a result log with the values it took, in order."""
    values: dict[str, list] = {}
    for line in Path(log).read_text().splitlines():
        if ":::MLLOG " in line:
            event = json.loads(line.split(":::MLLOG ", 1)[1])
            values.setdefault(event["key"], []).append(event["value"])
    return values


def run_lines(logs: list[Path], *, seeds_drawn: bool) -> tuple[str, ...]:
    """What a package says about its runs: how the seeds were chosen (the v1.1 rules, "Random Numbers", allow
    seeds from the clock, the system's randomness or a generator so seeded: seeds a person picks are flagged),
    and the phase-1 checkpoint each run logged (its sha256, measured starting accuracy, any override)."""
    logged = [logged_values(log) for log in logs]
    seeds = ", ".join(str(v["seed"][0]) for v in logged if v.get("seed"))
    lines = [f"Seeds {seeds}: drawn at random by the package (`secrets`) before the first run." if seeds_drawn else
             f"**Seeds chosen by hand, not drawn by the package**: {seeds}. The rules want seeds from the clock, the "
             "system's randomness or a generator so seeded; a reviewer may ask how these were chosen."]
    checkpoints = {tuple(str(v[k][0]) if k in v else "" for k in CHECKPOINT_KEYS) for v in logged}
    for sha, accuracy, override in sorted(c for c in checkpoints if any(c)):
        lines.append(f"Phase-1 checkpoint sha256 {sha}, masked-LM accuracy before training {accuracy} (the "
                     "reference: very close to 0.34085)." + (f" **Started by override**: {override}." if override
                                                             else ""))
    return tuple(lines)


def markers(benchmark: str) -> tuple[str, str]:
    return (f"<!-- disclosure {benchmark}: generated by `python -m mlperf_submission.compliance.disclosure --write`"
            " from compliance/disclosure.py; edit it there -->", f"<!-- end of disclosure {benchmark} -->")


def block(benchmark: str) -> str:
    """The generated block as COMPLIANCE.md holds it: the section between its two markers."""
    begin, end = markers(benchmark)
    return f"{begin}\n{section(benchmark)}{end}"


def current_block(text: str, benchmark: str) -> str:
    """The block COMPLIANCE.md's `text` holds for `benchmark`, markers included; UserError if it has none."""
    begin, end = markers(benchmark)
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise UserError(f"{COMPLIANCE_MD.name} has no generated disclosure block for {benchmark}")
    return text[start:stop + len(end)]


def write(path: Path = COMPLIANCE_MD) -> bool:
    """Rewrite the generated blocks of COMPLIANCE.md (atomically) -> whether anything changed."""
    text = path.read_text()
    new = text
    for benchmark in EQUATIONS:
        new = new.replace(current_block(new, benchmark), block(benchmark))
    if new != text:
        atomic_write_text(path, new)
    return new != text


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.compliance.disclosure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite COMPLIANCE.md's generated blocks")
    p.add_argument("benchmark", nargs="?", help="print this benchmark's disclosure (resnet, bert)")
    args = p.parse_args(argv)
    if args.write:
        print(f"{COMPLIANCE_MD.name}: {'rewritten' if write() else 'already current'}")
    if args.benchmark:
        print(section(args.benchmark))
    return 0


if __name__ == "__main__":
    sys.exit(main())
