"""The one wrapper over the official `mlperf_logging.mllog`.

Each run writes a new file through its own `mllog.MLLogger`: the file is created exclusively (mllog's
own file handler appends, and an appended log fails the checker), only rank 0 writes, every rank
meets at a barrier before the timed keys, and `metadata.file` names the calling source file relative
to the repository root rather than a machine path.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlperf_logging.mllog import constants, mllog

from .cli import UserError

# Keys whose timestamps define the score or the untimed-init budget: all ranks agree on them first.
TIMED_KEYS = frozenset({constants.INIT_STOP, constants.RUN_START, constants.RUN_STOP})

REPO_ROOT = Path(__file__).resolve().parents[1]
_logger_ids = itertools.count()


class _FileHandler(logging.StreamHandler):
    """A failed write (a full disk) raises, instead of logging's default of printing it and going on, which
    would leave a log with lines missing that looks whole."""

    def handleError(self, record):
        raise


class MLLog:
    """An MLPerf result log for one run, written to `<path>.partial` and renamed to `path` when closed.

    `path` None logs nowhere (ranks other than 0 pass None too). `clock` returns seconds since the
    epoch; tests pass a fake one. `barrier` is called on every rank before a timed key.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        rank: int = 0,
        barrier: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        echo: bool = False,
    ):
        self.path = Path(path) if path is not None and rank == 0 else None
        self.barrier = barrier
        self.clock = clock
        self._handlers: list[logging.Handler] = []
        self._stream = None
        logger = logging.getLogger(f"mlperf_submission.mllog.{next(_logger_ids)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.partial = self.path.with_name(self.path.name + ".partial")
            for existing in (self.path, self.partial):
                if existing.exists():
                    raise UserError(f"{existing} already exists; MLPerf logs are never appended to: "
                                    "choose a new path or remove it")
            self._stream = open(self.partial, "x", encoding="utf-8")  # closed in close()
            self._handlers.append(_FileHandler(self._stream))
        if echo and self.path is not None:
            self._handlers.append(logging.StreamHandler())
        for handler in self._handlers:
            logger.addHandler(handler)
        self._logger = logger
        self._mllogger = mllog.MLLogger(logger=logger, root_dir=str(REPO_ROOT))

    @property
    def active(self) -> bool:
        return self.path is not None

    def _log(self, kind: str, key: str, value: Any, metadata: dict | None, stack_offset: int) -> None:
        if key in TIMED_KEYS and self.barrier is not None:
            self.barrier()
        if not self.active:
            return
        log = getattr(self._mllogger, kind)
        # mllog's stack_offset 1 names the direct caller of its method; this method and the public
        # one that called it add two frames, so the caller of `event`/`start`/`end` is offset 3.
        log(key=key, value=value, metadata=metadata, time_ms=int(self.clock() * 1e3),
            stack_offset=stack_offset + 3)

    def event(self, key: str, value: Any = None, metadata: dict | None = None, *, stack_offset: int = 0):
        self._log("event", key, value, metadata, stack_offset)

    def start(self, key: str, value: Any = None, metadata: dict | None = None, *, stack_offset: int = 0):
        self._log("start", key, value, metadata, stack_offset)

    def end(self, key: str, value: Any = None, metadata: dict | None = None, *, stack_offset: int = 0):
        self._log("end", key, value, metadata, stack_offset)

    def close(self, *, complete: bool = True) -> None:
        """Close the log. A complete one is renamed into place; an incomplete one (a run that never
        logged run_stop) stays beside it as `<name>.partial`, for inspection only."""
        for handler in self._handlers:
            handler.flush()
            self._logger.removeHandler(handler)
        self._handlers.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
            if complete:
                self.partial.replace(self.path)
