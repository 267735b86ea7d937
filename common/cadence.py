"""When a run evaluates and stops, and the MLPerf blocks around its evals: one rule for every training loop
(closed/resnet/train.py counts epochs, closed/bert/train.py and closed/bert/ipu.py count samples).

    cadence = Cadence(run, first=4, every=4, limit=40, target=0.759, origin=1)   # ResNet: epochs from 1
    run.start()
    cadence.start()
    ... after each epoch (ResNet) or optimizer step (BERT):
        if cadence.after(count, added, evaluate):
            break
    run.stop(cadence.status)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .run import Run


@dataclass
class Cadence:
    """A run's evals, stop rules and MLPerf blocks, in the benchmark's own count (epochs or samples).

    An eval runs when the count reaches or crosses the next point of `first`, `first + every`, ...; the run
    succeeds at the first eval at or above `target` and ends `aborted` at `limit` (after the eval due there,
    if one is). A block runs from one eval to the next: its first_epoch_num is the count before it plus
    `origin` (ResNet numbers epochs from 1, BERT counts samples from 0), its epoch_count `first`, then
    `every`. Eval epoch_num is the count itself."""

    run: Run
    first: int
    every: int
    limit: int
    target: float
    origin: int = 0
    status: str = "aborted"
    accuracy: float | None = None  # of the eval the last after() ran; None when it ran none
    block_first: int = 0
    started: float = 0.0           # time.time() at start(), s: the loops' throughput lines divide by it

    def start(self) -> None:
        """Open the first block, right after run_start."""
        self.block_first = self.origin
        self.run.block_start(first_epoch_num=self.origin, epoch_count=self.first)
        self.started = time.time()

    def points(self, count: int) -> int:
        """How many eval points lie at or below `count`."""
        return 0 if count < self.first else (count - self.first) // self.every + 1

    def after(self, count: int, added: int, evaluate: Callable[[], float]) -> bool:
        """After the epoch or step that brought the count to `count` (`added` by it): evaluate if a point was
        reached (its accuracy in `self.accuracy`); -> True when the run ends here (`self.status` says how)."""
        self.accuracy = None
        if self.points(count) == self.points(count - added):  # off the cadence
            if count >= self.limit:
                self.run.block_stop(first_epoch_num=self.block_first)
                return True
            return False
        self.run.eval_start(count)
        self.accuracy = evaluate()
        self.run.eval_stop(count, self.accuracy)
        self.run.block_stop(first_epoch_num=self.block_first)
        if self.accuracy >= self.target:
            self.status = "success"
            return True
        if count >= self.limit:
            return True
        self.block_first = count + self.origin
        self.run.block_start(first_epoch_num=self.block_first, epoch_count=self.every)
        return False

    def final(self, count: int, evaluate: Callable[[], float]) -> bool:
        """A rehearsal's one eval at `count`, wherever the cadence stands, closing the open block; the run then
        ends `aborted` whatever the accuracy (a rehearsal never claims a result; common/rehearsal.py)."""
        self.run.eval_start(count)
        self.accuracy = evaluate()
        self.run.eval_stop(count, self.accuracy)
        self.run.block_stop(first_epoch_num=self.block_first)
        return True
