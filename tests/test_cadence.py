"""common/cadence.py: one eval, stop and block rule for every loop, in ResNet's epochs and BERT's samples."""

from __future__ import annotations

from mlperf_submission.common.cadence import Cadence


class Recorder:
    """The block and eval calls of a Run, in order."""

    def __init__(self):
        self.calls: list[tuple] = []

    def block_start(self, *, first_epoch_num, epoch_count):
        self.calls.append(("block_start", first_epoch_num, epoch_count))

    def block_stop(self, *, first_epoch_num):
        self.calls.append(("block_stop", first_epoch_num))

    def eval_start(self, epoch_num):
        self.calls.append(("eval_start", epoch_num))

    def eval_stop(self, epoch_num, accuracy):
        self.calls.append(("eval_stop", epoch_num, accuracy))


def drive(cadence: Cadence, added: int, accuracies: list[float]) -> int:
    """Count up by `added` until the cadence ends the run, each eval taking the next accuracy; -> the count."""
    cadence.start()
    count, scores = 0, iter(accuracies)
    while True:
        count += added
        if cadence.after(count, added, lambda: next(scores)):
            return count


def test_resnet_epochs_from_one_with_an_offset_first_eval():
    run = Recorder()
    cadence = Cadence(run, first=3, every=4, limit=11, target=0.75, origin=1)
    assert drive(cadence, 1, [0.1, 0.5, 0.6]) == 11 and cadence.status == "aborted"
    assert run.calls == [
        ("block_start", 1, 3), ("eval_start", 3), ("eval_stop", 3, 0.1), ("block_stop", 1),
        ("block_start", 4, 4), ("eval_start", 7), ("eval_stop", 7, 0.5), ("block_stop", 4),
        ("block_start", 8, 4), ("eval_start", 11), ("eval_stop", 11, 0.6), ("block_stop", 8)]


def test_bert_samples_from_zero_evaluate_only_when_a_step_crosses_the_interval():
    run = Recorder()
    cadence = Cadence(run, first=100, every=100, limit=1000, target=0.7)
    assert drive(cadence, 60, [0.2, 0.8]) == 240 and cadence.status == "success"
    assert run.calls == [
        ("block_start", 0, 100), ("eval_start", 120), ("eval_stop", 120, 0.2), ("block_stop", 0),
        ("block_start", 120, 100), ("eval_start", 240), ("eval_stop", 240, 0.8), ("block_stop", 120)]
    assert cadence.accuracy == 0.8


def test_a_limit_off_the_cadence_closes_the_block_without_an_eval():
    run = Recorder()
    cadence = Cadence(run, first=100, every=100, limit=150, target=0.9)
    assert drive(cadence, 30, [0.1]) == 150 and cadence.status == "aborted" and cadence.accuracy is None
    assert run.calls[-3:] == [("block_stop", 0), ("block_start", 120, 100), ("block_stop", 120)]
