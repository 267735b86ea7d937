"""Check an ImageNet dataset and write its manifest (counts, undecodable images, sha256 of every file):
    python -m mlperf_submission.common.data.imagenet SRC --out DIR [--skip-corrupt] [--workers N]
writes DIR/imagenet_manifest.json and DIR/imagenet_checksums.json; on bad input it prints one line
`error: ...` and exits 2. Re-hash every file against them later (a run checks only sizes and times):
    python -m mlperf_submission.common.data.imagenet SRC --out DIR --verify
From the three downloaded ILSVRC2012 archives (see `archives.py`): check, extract, arrange and index them:
    python -m mlperf_submission.common.data.imagenet SRC --out OUT [--no-verify]
    python -m mlperf_submission.common.data.imagenet --bench
prints decode+augment throughput per core (images per CPU-second) for a synthetic 500x375 JPEG of 110 KB
(figures and how they were measured: `bench.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ...cli import ArgumentParser, UserError, entry_point
from . import archives
from .bench import benchmark
from .index import index_dataset
from .layout import ImageNetError
from .manifest import MANIFEST_NAME, verify_manifest, write_manifest
from .transforms import eval_transform, train_transform


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m mlperf_submission.common.data.imagenet", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", nargs="?", help="dataset folder (JPEG layout root, or the folder of tfds shards)")
    parser.add_argument("--out", help=f"folder to write {MANIFEST_NAME} into")
    parser.add_argument("--skip-corrupt", action="store_true", help="list undecodable images and leave them out")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for checking")
    parser.add_argument("--verify", action="store_true",
                        help=f"re-hash every file of SRC against DIR/{MANIFEST_NAME} (the full pass), not index")
    parser.add_argument("--no-verify", action="store_true",
                        help="with SRC a folder of the ILSVRC2012 archives: skip their md5 check (a known-good copy)")
    parser.add_argument("--bench", action="store_true", help="measure transform throughput and exit")
    return parser


def index(src: str, out: Path, *, skip_corrupt: bool, workers: int) -> None:
    """Index the dataset at `src` and write its manifest into `out`, printing the counts."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    try:
        manifest = index_dataset(src, skip_corrupt=skip_corrupt, workers=workers)
    except ImageNetError as e:
        raise UserError(" ".join(str(e).split())) from None
    out.mkdir(parents=True, exist_ok=True)
    _report(write_manifest(out, manifest), src, out)


def _report(manifest: dict, src: str | Path, out: Path) -> None:
    print(f"{manifest['layout']} layout at {src}")
    for split, s in manifest["splits"].items():
        print(f"  {split}: {s['images']} images, {s['classes']} classes, {len(s['skipped'])} skipped as corrupt")
    print(f"wrote {out / MANIFEST_NAME}")


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.bench:
        for name, t in (("train_transform(224)", train_transform()), ("eval_transform(224)", eval_transform())):
            print(f"{name} on a 500x375 JPEG: {benchmark(t):.0f} images/s on one core")
        return 0
    if args.src is None or args.out is None:
        parser.error(f"SRC and --out are both needed: {parser.prog} SRC --out DIR")
    if archives.holds_archives(Path(args.src)):
        out = Path(args.out)
        if out.resolve() == Path(args.src).resolve():
            parser.error("OUT must be a new folder for the extracted tree, not the folder of the archives")
        manifest = archives.arrange(Path(args.src), out, verify=not args.no_verify, skip_corrupt=args.skip_corrupt,
                                    workers=args.workers)
        _report(manifest, out, out)
        return 0
    if args.verify:
        try:
            manifest = verify_manifest(args.src, Path(args.out) / MANIFEST_NAME, full=True, workers=args.workers)
        except ImageNetError as e:
            raise UserError(" ".join(str(e).split())) from None
        print(f"verified {args.src}: " + ", ".join(f"{split} {s['stat']['files']} files"
                                                  for split, s in manifest["splits"].items()))
        return 0
    index(args.src, Path(args.out), skip_corrupt=args.skip_corrupt, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
