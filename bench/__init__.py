"""`make bench`: training throughput of our ResNet-50 and BERT-Large against peers, side by side in one run.

    python -m mlperf_submission.bench [--quick] [--out DIR] [--device auto|cpu|cuda]

See `__main__.py` for what it measures and writes.
"""

