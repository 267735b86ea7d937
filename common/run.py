"""The MLPerf run lifecycle, in the order the rules require.

    with Run(log, submission, seed=s, hyperparameters=hp, train_samples=n, eval_samples=m) as run:
        ...build the model...                       # untimed: between init_start and init_stop
        run.weights_initialization(names)
        run.start()                                  # init_stop, run_start: the clock starts
        run.block_start(first_epoch_num=1, epoch_count=4)
        ...train...
        run.eval(accuracy, epoch_num=4)
        run.block_stop(first_epoch_num=1)
        run.stop("success")                          # run_stop

Entering logs cache_clear, init_start, the submission fields, the seed and the hyperparameters.
Leaving the block by an exception, SIGTERM or SIGINT after `start()` logs run_stop with status
"aborted", then re-raises. SIGTERM and SIGINT raise RunAborted, a SystemExit with status 143 or 130: the
process ends quietly, without a traceback, and the caller (`make submit`) sees which signal stopped it.
Epoch numbers follow the rules that the RCP checker reads: ResNet's `epoch_num` is the count of completed
epochs (1-based); BERT's is the count of samples trained.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlperf_logging.mllog import constants

from mlperf_submission.common.cli import UserError
from mlperf_submission.common.mllog import MLLog

BENCHMARKS = ("resnet", "bert")
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


def drop_page_cache() -> bool:
    """Flush the OS page cache so data is read from storage, as the rules require. Needs root."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class Run:
    def __init__(
        self,
        log: MLLog,
        submission: Submission,
        *,
        seed: int,
        hyperparameters: Mapping[str, Any],
        train_samples: int,
        eval_samples: int,
        clear_cache: bool = False,
    ):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"seed must be an int, got {seed!r}")
        self.log = log
        self.submission = submission
        self.seed = seed
        self.hyperparameters = dict(hyperparameters)
        self.train_samples = train_samples
        self.eval_samples = eval_samples
        self.clear_cache = clear_cache
        self.started = False
        self.stopped = False
        self._old_handlers: dict[int, Any] = {}
        self._aborting = False

    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        log, sub = self.log, self.submission
        flushed = drop_page_cache() if self.clear_cache else False
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
        log.event(constants.TRAIN_SAMPLES, self.train_samples, stack_offset=1)
        log.event(constants.EVAL_SAMPLES, self.eval_samples, stack_offset=1)
        return self

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

    def epoch_start(self, epoch_num: int) -> None:
        self.log.start(constants.EPOCH_START, metadata={constants.EPOCH_NUM: epoch_num}, stack_offset=1)

    def epoch_stop(self, epoch_num: int) -> None:
        self.log.end(constants.EPOCH_STOP, metadata={constants.EPOCH_NUM: epoch_num}, stack_offset=1)

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
