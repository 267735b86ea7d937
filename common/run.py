"""The MLPerf run lifecycle, in the order the rules require.

    with Run(log, submission, seed=s, hyperparameters=hp, train_samples=n, eval_samples=m,
             data_files=dataset_files(data_folder)) as run:   # None for data made in memory
        ...build the model...                       # untimed: between init_start and init_stop
        run.weights_initialization(names)
        run.start()                                  # init_stop, run_start: the clock starts
        run.block_start(first_epoch_num=1, epoch_count=4)
        ...train...
        run.eval_start(4)
        run.eval_stop(4, accuracy)                   # eval_accuracy, eval_stop
        run.block_stop(first_epoch_num=1)
        run.stop("success")                          # run_stop

(The training loops open and close their blocks and evals through common/cadence.Cadence, and make the Run
through common/training.begin_run.)

Entering flushes the dataset's files from the page cache (a run that cannot fails before logging anything),
then logs cache_clear (true only when flushed; false for data made in memory), init_start, the submission
fields, the seed and the hyperparameters.
Leaving the block by an exception, SIGTERM or SIGINT after `start()` logs run_stop with status
"aborted", then re-raises. SIGTERM and SIGINT raise RunAborted, a SystemExit with status 143 or 130: the
process ends quietly, without a traceback, and the caller (`make submit`) sees which signal stopped it.
Epoch numbers follow the rules that the RCP checker reads: ResNet's `epoch_num` is the count of completed
epochs (1-based); BERT's is the count of samples trained.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlperf_logging.mllog import constants

from .cli import UserError
from .mllog import MLLog

BENCHMARKS = ("resnet", "bert")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")  # root only: every clean page of the OS cache
DIVISIONS = ("closed", "open")
QUALITY_TARGETS = {"resnet": 0.759, "bert": 0.720}

# The v1.1 compliance rules accept exactly these submission_status values; system descriptions of
# the time used the short form ("onprem"), later ones the long form.
_STATUS = {
    "onprem": "onprem", "available": "onprem", "available on-premise": "onprem",
    "cloud": "cloud", "available cloud": "cloud",
    "preview": "preview",
    "research": "research", "rdi": "research", "research, development, or internal (rdi)": "research",
}


class RunAborted(SystemExit):
    """Raised inside a run when the process receives SIGTERM or SIGINT. A SystemExit, so that `except Exception`
    in training code does not swallow it, and so that, uncaught, the process exits 128 + the signal's number
    (130 SIGINT, 143 SIGTERM) without a traceback."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum
        self.code = 128 + signum


@dataclass(frozen=True, kw_only=True)
class Submission:
    org: str
    platform: str
    division: str
    status: str
    benchmark: str

    @classmethod
    def from_system(cls, system: Mapping[str, Any], *, division: str, benchmark: str) -> Submission:
        """The submission_* fields from a system description and the run's division and benchmark."""
        if benchmark not in BENCHMARKS:
            raise UserError(f"unknown benchmark {benchmark!r}: choose one of {', '.join(BENCHMARKS)}")
        if division not in DIVISIONS:
            raise UserError(f"unknown division {division!r}: choose one of {', '.join(DIVISIONS)}")
        if system.get("division") != division:
            raise UserError(
                f"system description {system.get('system_name')!r} is for division "
                f"{system.get('division')!r}, not {division!r}: use a system description of that division"
            )
        status = _STATUS.get(str(system.get("status", "")).strip().lower())
        if status is None:
            raise UserError(
                f"system status {system.get('status')!r} is not one of onprem, cloud, preview, research"
            )
        for field in ("submitter", "system_name"):
            if not str(system.get(field, "")).strip():
                raise UserError(f"system description has an empty {field!r}: fill it in")
        return cls(org=system["submitter"], platform=system["system_name"], division=division,
                   status=status, benchmark=benchmark)


def dataset_files(folder: str | os.PathLike) -> list[Path]:
    """Every regular file under a dataset folder, sorted: what a run reads, so what it must flush."""
    return sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names
                  if (Path(root) / name).is_file())


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc with mmap, munmap and mincore typed: set up once, as a flush asks for every file of a dataset."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_pages(path: str | os.PathLike) -> int | None:
    """How many pages of `path` are in the page cache (mincore(2) on a mapping that touches none of them);
    None where mincore cannot be called (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = _libc()
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {path} failed")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return int((np.frombuffer(vec, np.uint8) & 1).sum())  # bit 0: resident; the others are reserved


def drop_page_cache(files: Iterable[str | os.PathLike]) -> str:
    """Flush a dataset from the OS page cache, as the rules require before each run; -> "" when done, else
    why not, with what to do. As root, all of the cache (/proc/sys/vm/drop_caches); otherwise each file
    (posix_fadvise POSIX_FADV_DONTNEED, which needs no privilege). Then, where mincore exists, no page of
    any file may be left in the cache (a memory file system such as tmpfs keeps them all)."""
    files = [Path(f) for f in files]
    os.sync()  # drop_caches and DONTNEED drop clean pages only
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
    except OSError:
        if not hasattr(os, "posix_fadvise"):
            return ("this OS has neither a writable /proc/sys/vm/drop_caches nor posix_fadvise: run as root, or "
                    "restart the machine before each run")
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    for path in files:
        if resident := resident_pages(path):
            return (f"{resident} pages of {path} stay in the page cache after eviction (is the data on a memory "
                    "file system such as tmpfs?): put the dataset on durable storage")
    return ""


class Run:
    def __init__(
        self,
        log: MLLog,
        submission: Submission,
        *,
        seed: int,
        hyperparameters: Mapping[str, Any],
        train_samples: int | None,
        eval_samples: int,
        data_files: Iterable[str | os.PathLike] | None = None,
    ):
        """`train_samples` None: the samples trained, logged once just before run_stop from `samples_trained`
        (which the trainer keeps up to date), as NVIDIA's v1.1 BERT logs it; else the dataset's size, at init."""
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"seed must be an int, got {seed!r}")
        self.log = log
        self.submission = submission
        self.seed = seed
        self.hyperparameters = dict(hyperparameters)
        self.train_samples = train_samples
        self.samples_trained = 0
        self.eval_samples = eval_samples
        self.data_files = None if data_files is None else list(data_files)
        self.started = False
        self.stopped = False
        self._old_handlers: dict[int, Any] = {}
        self._aborting = False

    def __enter__(self) -> Run:
        flushed = self._clear_cache()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        log, sub = self.log, self.submission
        log.event(constants.CACHE_CLEAR, flushed, stack_offset=1)
        log.start(constants.INIT_START, stack_offset=1)
        log.event(constants.SUBMISSION_BENCHMARK, sub.benchmark, stack_offset=1)
        log.event(constants.SUBMISSION_ORG, sub.org, stack_offset=1)
        log.event(constants.SUBMISSION_DIVISION, sub.division, stack_offset=1)
        log.event(constants.SUBMISSION_STATUS, sub.status, stack_offset=1)
        log.event(constants.SUBMISSION_PLATFORM, sub.platform, stack_offset=1)
        log.event(constants.SEED, self.seed, stack_offset=1)
        for key, value in self.hyperparameters.items():
            log.event(key, value, stack_offset=1)
        if self.train_samples is not None:
            log.event(constants.TRAIN_SAMPLES, self.train_samples, stack_offset=1)
        log.event(constants.EVAL_SAMPLES, self.eval_samples, stack_offset=1)
        return self

    def _clear_cache(self) -> bool:
        """Flush the dataset's files from the page cache (after any checksum pass, which reads them all),
        or fail the run before it logs anything; data made in memory has nothing to flush."""
        if self.data_files is None:
            return False  # the trainers say why in their start-up lines (common/training.announce)
        why = drop_page_cache(self.data_files)
        if why:
            self.log.close(complete=False)
            if self.log.active:
                self.log.partial.unlink(missing_ok=True)  # nothing logged yet: leave nothing behind
            raise UserError(f"cannot flush the page cache before the run: {why}")
        return True

    def _on_signal(self, signum, frame):
        if self._aborting:
            return  # the same signal again (a launcher passing it on): the first one is being handled
        self._aborting = True
        raise RunAborted(signum)

    def weights_initialization(self, tensor_names: Iterable[str]) -> None:
        for name in tensor_names:
            self.log.event(constants.WEIGHTS_INITIALIZATION, metadata={"tensor": name}, stack_offset=1)

    def start(self) -> None:
        """End the untimed initialisation and start the clock."""
        self.log.end(constants.INIT_STOP, stack_offset=1)
        self.log.start(constants.RUN_START, stack_offset=1)
        self.started = True

    def block_start(self, *, first_epoch_num: int, epoch_count: int) -> None:
        self.log.start(constants.BLOCK_START, metadata={
            constants.FIRST_EPOCH_NUM: first_epoch_num, constants.EPOCH_COUNT: epoch_count}, stack_offset=1)

    def block_stop(self, *, first_epoch_num: int) -> None:
        self.log.end(constants.BLOCK_STOP, metadata={constants.FIRST_EPOCH_NUM: first_epoch_num},
                     stack_offset=1)

    def eval_start(self, epoch_num: int | float) -> None:
        self.log.start(constants.EVAL_START, metadata={constants.EPOCH_NUM: epoch_num}, stack_offset=1)

    def eval_stop(self, epoch_num: int | float, accuracy: float) -> None:
        """Log the accuracy (a fraction, as a JSON number) and close the eval interval."""
        self.log.event(constants.EVAL_ACCURACY, float(accuracy), metadata={constants.EPOCH_NUM: epoch_num},
                       stack_offset=1)
        self.log.end(constants.EVAL_STOP, metadata={constants.EPOCH_NUM: epoch_num}, stack_offset=1)

    def stop(self, status: str) -> None:
        if status not in (constants.SUCCESS, constants.ABORTED):
            raise ValueError(f"run_stop status must be success or aborted, not {status!r}")
        if self.train_samples is None:
            self.log.event(constants.TRAIN_SAMPLES, self.samples_trained, stack_offset=1)
        self.log.end(constants.RUN_STOP, metadata={constants.STATUS: status}, stack_offset=1)
        self.stopped = True

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.started and not self.stopped:
                # Other ranks may be dead (the reason we are here): log without waiting for them at a barrier.
                self.log.barrier = None
                self.stop(constants.ABORTED)
        finally:
            self.log.close(complete=self.stopped)
            # Restored last: a signal while run_stop aborted is written finds the handler that ignores it.
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
