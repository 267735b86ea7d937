"""Pack a converted folder (written by `bert_wiki convert` or `bert_wiki synthetic`) into a packed folder:
    python -m mlperf_submission.common.data.packing --algorithm nnlshp --max-per-pack 3 SRC OUT
    (or: make data BENCH=bert PACK=nnlshp SRC=SRC OUT=OUT)
Check a packed folder against its manifest (shapes, dtypes, sha256, plans):
    python -m mlperf_submission.common.data.packing --verify OUT
Bad input exits 2 with one line `error: ...`. Measured on the Wikipedia histogram on a 2-core CPU machine
shared with other jobs: SPFHP 0.02 s; NNLSHP 17-50 s, nearly all of it scipy's single-threaded NNLS solve
(the paper: 0.03 s and 24-28 s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...cli import ArgumentParser, UserError, entry_point
from ..bert_wiki import SPLITS, DataError
from .algorithms import ALGORITHMS
from .folder import verify
from .write import write_packed


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m mlperf_submission.common.data.packing", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", nargs="?", type=Path, help="a folder written by bert_wiki convert or synthetic")
    parser.add_argument("out", nargs="?", type=Path, help="the packed folder to write (must not exist)")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="nnlshp")
    parser.add_argument("--max-per-pack", type=int, default=3, help="sequences per pack at most (default 3)")
    parser.add_argument("--max-pred-per-pack", type=int, default=None,
                        help="masked-LM predictions per pack (default: the most in any pack)")
    parser.add_argument("--seed", type=int, default=0, help="seeds which sequences go into which pack")
    parser.add_argument("--verify", type=Path, metavar="PACKED", help="check a packed folder instead of packing")
    args = parser.parse_args(argv)
    try:
        if args.verify is not None:
            if args.src or args.out:
                parser.error("--verify takes no SRC or OUT")
            manifest = verify(args.verify)
            print(f"verify: {args.verify}: " + ", ".join(
                f"{split} {manifest['splits'][split]['sequences']} sequences in {manifest['splits'][split]['count']} "
                "packs" for split in SPLITS))
            return 0
        if args.out is None:
            parser.error("give SRC and OUT (or --verify PACKED)")
        manifest = write_packed(args.src, args.out, algorithm=args.algorithm, max_per_pack=args.max_per_pack,
                                seed=args.seed, max_pred_per_pack=args.max_pred_per_pack)
    except (DataError, ValueError, OSError) as e:
        raise UserError(str(e)) from None
    for split in SPLITS:
        entry = manifest["splits"][split]
        print(f"{split}: {entry['sequences']} sequences in {entry['count']} packs of up to "
              f"{manifest['max_sequences_per_pack']}, efficiency {100 * entry['efficiency']:.3f} % "
              f"(speed-up {entry['speedup']:.5f}; {args.algorithm} in {entry['plan_seconds']:.3f} s)")
    print(f"wrote {args.out} (max {manifest['max_predictions_per_pack']} predictions per pack)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
