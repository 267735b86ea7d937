"""The sizes `make bench` runs at: a 2-core CPU, one GPU sized by its memory, and toy sizes for the tests.

The GPU rows hold several whole models in one process (BERT-Large: four at seq 128), so their batches are
chosen from the GPU's total memory (`gpu`): the largest power of two, up to the batch that keeps a GPU busy,
whose estimate (`bert_bytes`, `resnet_bytes`) fits in USABLE of the memory. The estimates are of the
heaviest row of a group (the fp32 peer), coarse on purpose: a case that still runs out of memory is that
case's error row, and the other cases run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..closed.bert.model import BertConfig

BERT = BertConfig()  # BERT-Large
FULL_LAYERS = BERT.num_hidden_layers  # 24


@dataclass(frozen=True, kw_only=True)
class Scale:
    name: str
    matmul_size: int                      # n of the n x n x n matmuls that measure the peak
    resnet_image_size: int
    resnet_batch: int
    bert_seq_lengths: tuple[int, int]     # "seq 128" and "seq 512"
    bert_batches: tuple[int, int]         # sequences per step at each length
    bert_layers: tuple[int, ...]          # layer counts run; scaled to FULL_LAYERS when not already there
    bert_shape: tuple[int, int, int, int] = (1024, 16, 4096, 30522)  # hidden, heads, intermediate, vocab
    wiki_batch: int                       # Wikipedia-length sequences per micro-batch at the longer length
    wiki_layers: tuple[int, ...]          # layer counts of the Wikipedia rows (bert_layers' rule)
    wiki_timed_steps: int                 # their timed steps: the ratio of two extrapolations needs more
    packing_sample: int = 16384           # Wikipedia-length sequences drawn and packed into open BERT's plan
    warmup_steps: int = 1
    timed_steps: int = 5                  # alternating rounds of every timed comparison (each ratio's spread)
    decode_seconds: float = 1.5           # CPU-seconds of each decode round


def cpu() -> Scale:
    """A 2-core CPU: whole ResNet-50 at 224 px, BERT-Large at 1 and 5 layers, 1,024 tokens per step (the
    Wikipedia rows: 4 sequences' worth of rows at 512). The slope is a difference of two timings times 23/4:
    a difference of four layers is large against the timing noise (at 1 and 3 layers, the seq-128 ratios of
    two idle runs spread over +-40 %), and both points are timed in the same rounds. 7 rounds after a
    FLOP-counted step and an untimed round: an odd count, so that one slow round among them moves a
    resampled median by one place at most, unless most draws pick it (`figures`)."""
    return Scale(name="cpu", matmul_size=2048, resnet_image_size=224, resnet_batch=16, bert_seq_lengths=(128, 512),
                 bert_batches=(8, 2), bert_layers=(1, 5), wiki_batch=4, wiki_layers=(1, 5), wiki_timed_steps=7,
                 warmup_steps=2, timed_steps=7)


# Share of the GPU's memory the estimates may fill: the rest is the CUDA context, cuBLAS / cuDNN workspaces
# (cudnn.benchmark tries algorithms with large ones) and the caching allocator's fragmentation.
USABLE = 0.75
BERT_PARAMETERS = 335e6         # BERT-Large with its pretraining heads
STATE_BYTES = 16                # per parameter: fp32 weight, gradient and two optimizer moments
MLM_BYTES_PER_TOKEN = 3 * 4 * BERT.vocab_size  # fp32 logits over the vocabulary, their softmax and gradient (HF:
# the MLM head at every token)
# The largest batch worth timing: a GPU is busy at these; more only costs memory and time.
BUSY = {"resnet": 256, "seq128": 256, "seq512": 32, "wiki": 64}


def bert_bytes(models: int, sequences: int, seq_len: int, layers: int = FULL_LAYERS) -> float:
    """Peak bytes of a BERT group: every model's state, and the activations autograd keeps for the heaviest
    row, fp32 (twice the 16-bit per-token count of Korthikanti et al. 2022, 34 h + 5 a s bytes a layer)."""
    hidden, heads = BERT.hidden_size, BERT.num_attention_heads
    per_token = layers * 2 * (34 * hidden + 5 * heads * seq_len) + MLM_BYTES_PER_TOKEN
    return models * BERT_PARAMETERS * STATE_BYTES + sequences * seq_len * per_token


def resnet_bytes(images: int) -> float:
    """Peak bytes of the ResNet group: activations of the fp32 NCHW peer, about 110 MB an image at 224 px
    (its four models' states, 0.4 GB each, are in the margin)."""
    return images * 110e6


def largest_fitting(cap: int, fits) -> int:
    """The largest power of two at most `cap` for which fits(batch) holds (1 if none does)."""
    batch = 1 << (cap.bit_length() - 1)
    while batch > 1 and not fits(batch):
        batch //= 2
    return batch


def gpu(memory_bytes: int) -> Scale:
    """One GPU with `memory_bytes` of memory (torch.cuda.get_device_properties(0).total_memory): whole models,
    each group's batch the largest that fits (module docstring)."""
    usable = USABLE * memory_bytes
    seq128 = largest_fitting(BUSY["seq128"], lambda b: bert_bytes(4, b, 128) <= usable)  # ours, plain, 2 HF
    seq512 = largest_fitting(BUSY["seq512"], lambda b: bert_bytes(3, b, 512) <= usable)  # ours, 2 HF
    wiki = largest_fitting(BUSY["wiki"], lambda b: bert_bytes(3, b, 512) <= usable)  # one model for our layouts
    resnet = largest_fitting(BUSY["resnet"], lambda b: resnet_bytes(b) <= usable)
    return Scale(name=f"gpu, {memory_bytes / 2**30:.0f} GiB", matmul_size=8192, resnet_image_size=224,
                 resnet_batch=resnet, bert_seq_lengths=(128, 512), bert_batches=(seq128, seq512),
                 bert_layers=(FULL_LAYERS,), wiki_batch=wiki, wiki_layers=(FULL_LAYERS,), wiki_timed_steps=10,
                 warmup_steps=3, timed_steps=10)


def quick() -> Scale:
    """Seconds, for the tests: every code path at toy sizes. Its figures mean nothing."""
    return Scale(name="quick", matmul_size=128, resnet_image_size=32, resnet_batch=2, bert_seq_lengths=(16, 32),
                 bert_batches=(2, 2), bert_layers=(1, 2), bert_shape=(64, 2, 128, 512), wiki_batch=4,
                 wiki_layers=(1, 2), wiki_timed_steps=1, packing_sample=256,
                 timed_steps=1, decode_seconds=0.2)
