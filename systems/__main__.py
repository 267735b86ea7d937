"""python -m mlperf_submission.systems describe --out FILE [--org ORG] [--name NAME] [--division D]
python -m mlperf_submission.systems check FILE...   (the official checker: see compliance)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..common.cli import ArgumentParser, UserError, atomic_write_text, entry_point
from . import describe_local


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m mlperf_submission.systems")
    sub = parser.add_subparsers(dest="command", required=True)
    describe = sub.add_parser("describe", help="describe this machine as a system JSON")
    describe.add_argument("--out", type=Path, help="file to write (default: print)")
    describe.add_argument("--org", default="DEMO")
    describe.add_argument("--name", default="local machine")
    describe.add_argument("--division", default="closed", choices=("closed", "open"))
    describe.add_argument("--status", default="research")
    args = parser.parse_args(argv)
    system = describe_local(org=args.org, system_name=args.name, division=args.division, status=args.status)
    text = json.dumps(system, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    elif args.out.exists():
        raise UserError(f"{args.out} exists: choose another --out or remove it")
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
