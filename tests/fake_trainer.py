"""A stand-in for a trainer's command line, for tests of the machinery around runs (the plan, resume, faults,
packaging) that need no training: `python tests/fake_trainer.py --seed S --result-log LOG [trainer options]`
writes a whole passing closed ResNet log through the real Run and MLLog (fakes.fake_run) in about a second.
The trainers' other options (--preset, --system, --set, ...) are accepted and ignored.

Faults, from the environment (a test sets them for the command it starts):
  FAKE_TRAINER_PAUSE=<log file name>  that run waits after run_start (up to 5 min) for a signal or a kill
  FAKE_TRAINER_RAISE=<seed>           that run raises after run_start, as a crash in the timed loop would
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fakes import fake_run

PAUSE_S = 300  # longer than any test waits for its signal; the test fails on its own timeout first


def after_start(log: Path, seed: int) -> None:
    if os.environ.get("FAKE_TRAINER_PAUSE") == log.name:
        time.sleep(PAUSE_S)
    if os.environ.get("FAKE_TRAINER_RAISE") == str(seed):
        raise RuntimeError("injected fault in the training loop")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--result-log", type=Path, required=True)
    p.add_argument("--fake-run", default="{}", help="JSON: more keyword arguments of fakes.fake_run")
    args, _ = p.parse_known_args(argv)
    fake_run(args.result_log, seed=args.seed, after_start=lambda: after_start(args.result_log, args.seed),
             **json.loads(args.fake_run))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
