"""Sequence packing for BERT (Krell, Kosec et al., arXiv 2107.02027): several whole sequences per row.

`algorithms` (SPFHP, NNLSHP, `assign`), `rows` (the packed row layout; closed BERT's `unpadded_batch`) and
`folder` (packed folders: `verify`, `PackedDataset`); `write` and the command line `__main__` prepare them:
    python -m mlperf_submission.common.data.packing --algorithm nnlshp --max-per-pack 3 SRC OUT
"""

from ..bert_wiki import DataError
from .algorithms import (
    ALGORITHMS,
    Plan,
    assign,
    histogram,
    make_plan,
    nnls_solution,
    nnlshp,
    nnlshp_feasible,
    nnlshp_max_per_pack,
    spfhp,
)
from .folder import PackedDataset, verify
from .rows import (
    FIELDS,
    FLOAT_FIELDS,
    PREDICTION_FIELDS,
    first_fit_rows,
    pack_arrays,
    unpadded_batch,
)

__all__ = [
    "ALGORITHMS", "FIELDS", "FLOAT_FIELDS", "PREDICTION_FIELDS", "DataError", "PackedDataset", "Plan", "assign",
    "first_fit_rows", "histogram", "make_plan", "nnls_solution", "nnlshp", "nnlshp_feasible", "nnlshp_max_per_pack",
    "pack_arrays", "spfhp", "unpadded_batch", "verify",
]
