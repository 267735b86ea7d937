"""closed/bert/identity.py: a closed run on real data starts only from a phase-1 checkpoint whose starting
masked-LM accuracy was measured (`checkpoint --eval`) within the stated tolerance of the reference's 0.34085 and
whose files are those measured, unless an override says why; what it checked is logged."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mlperf_submission.closed.bert import identity, presets
from mlperf_submission.common.cli import UserError


def measured(tmp_path, accuracy: float | None):
    """A real-data config on a stand-in .pt, with a record of `accuracy` as `--eval` writes it (None: none)."""
    ckpt = tmp_path / "phase1.pt"
    ckpt.write_bytes(b"weights")
    if accuracy is not None:
        identity.record_path(ckpt).write_text(json.dumps({
            "masked_lm_accuracy": accuracy, "sha256": {"phase1.pt": "ab" * 32}, "stamps": identity.stamps(ckpt)}))
    return dataclasses.replace(presets.dgxa100(), init_checkpoint=str(ckpt)), ckpt


def test_a_measured_checkpoint_near_the_reference_starts_and_is_logged(tmp_path):
    cfg, _ = measured(tmp_path, 0.3412)
    assert identity.checked(cfg) == {"init_checkpoint_sha256": "ab" * 32, "init_checkpoint_masked_lm_accuracy": 0.3412}


@pytest.mark.parametrize("accuracy,message", [
    (None, "its masked-LM accuracy before training is unmeasured"),
    (0.3392, "is 0.33920, not within 0.001 of the reference's 0.34085"),
])
def test_an_unmeasured_or_distant_checkpoint_is_one_line_unless_overridden(tmp_path, accuracy, message):
    cfg, _ = measured(tmp_path, accuracy)
    with pytest.raises(UserError, match=message) as e:
        identity.checked(cfg)
    assert "--eval DATA" in str(e.value) and "init_checkpoint_override=REASON" in str(e.value)
    keys = identity.checked(dataclasses.replace(cfg, init_checkpoint_override="our own phase-1 run"))
    assert keys["init_checkpoint_override"].startswith("our own phase-1 run (its masked-LM accuracy before training")


def test_a_checkpoint_changed_since_it_was_measured_is_refused(tmp_path):
    cfg, ckpt = measured(tmp_path, 0.34085)
    ckpt.write_bytes(b"other weights")
    with pytest.raises(UserError, match="its files changed since phase1.pt.identity.json was written"):
        identity.checked(cfg)
