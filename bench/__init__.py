"""`make bench`: training throughput of our ResNet-50 and BERT-Large against peers, side by side in one run.

    python -m mlperf_submission.bench [--quick] [--out DIR] [--device auto|cpu|cuda]

See `__main__.py` for what it measures and writes.
"""


def ratio_text(ratio: dict) -> str:
    """A bench.json ratio as the tables show it: the value, or why there is none (timing noise)."""
    if ratio["value"] is None:
        return f"not measured ({ratio['unreliable']})"
    return f"{ratio['value']:.2f}"
