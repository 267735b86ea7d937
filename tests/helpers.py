"""Helpers every test file may use: MLLOG events of a result log, its eval accuracies, an entry point called in
this process or run as a module, and a free TCP port."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

MLLOG = ":::MLLOG "


# Smoke runs at one intra-op thread: at these tiny shapes one thread is as fast as two (a closed ResNet smoke
# run: 12.8 s against 13.0 s on the 2-core machine), so two runs side by side take about half the time they
# take one after the other; and one thread's arithmetic is the same on any number of cores, so seeds chosen to
# converge early, and the golden runs, hold wherever the suite runs.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

def log_events(log: Path) -> list[dict]:
    """The MLLOG events of a result log, in order (other lines, e.g. a launcher's, are skipped)."""
    return [json.loads(ln.split(MLLOG, 1)[1]) for ln in log.read_text().splitlines() if MLLOG in ln]


def mllog_line(event: dict) -> str:
    """One MLLOG line, as the logger writes it, for a test that edits a log."""
    return MLLOG + json.dumps(event) + "\n"


def eval_accuracies(log: Path) -> list[tuple[int, float]]:
    """(epoch_num, value) of every eval_accuracy in a result log: epochs for ResNet, samples for BERT."""
    return [(e["metadata"]["epoch_num"], e["value"]) for e in log_events(log) if e["key"] == "eval_accuracy"]


def run_cli(main: Callable[[list[str]], int], *args) -> tuple[int, str, str]:
    """An entry point's main(argv) called here: (exit status, stdout, stderr). An argument parser's usage error
    exits; its status counts as the entry point's."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def run_module(module: str, *args, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m module args...` in a fresh process, its output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
