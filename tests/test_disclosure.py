"""compliance/disclosure.py: one source for what a closed package's README discloses (the optimizer's equations
as implemented, the equivalence evidence, the deliberate differences, the runs' seeds and checkpoint) and for the
same blocks in COMPLIANCE.md, which may not drift from it."""

from __future__ import annotations

import pytest
from fakes import BERT, fake_run

from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance import disclosure, package

SHA = "5" * 64


@pytest.mark.parametrize("benchmark", ["resnet", "bert"])
def test_compliance_md_holds_the_generated_blocks(benchmark):
    """Edit compliance/disclosure.py, then `python -m mlperf_submission.compliance.disclosure --write`."""
    text = disclosure.COMPLIANCE_MD.read_text()
    assert disclosure.current_block(text, benchmark) == disclosure.block(benchmark)


def test_an_unknown_benchmark_is_one_line():
    with pytest.raises(UserError, match="no disclosure for benchmark 'dlrm'"):
        disclosure.section("dlrm")


def readme(out, benchmark):
    [path] = out.glob(f"closed/*/benchmarks/{benchmark}/implementations/pytorch/README.md")
    return path.read_text()


def test_fresh_closed_packages_disclose_equations_evidence_differences_seeds_and_checkpoint(tmp_path):
    resnet = [fake_run(tmp_path / f"r{i}.txt", seed=i + 1) for i in range(5)]
    package.build(division="closed", benchmark="resnet", system="1xH200", logs=resnet, out=tmp_path / "resnet")
    text = readme(tmp_path / "resnet", "resnet")
    for needle in ("## 7. Implementation disclosure", "v <- momentum * v + lr * trust * (g + wd * w)",
                   "test_lars_updates_match_the_reference", "1.3e-7 to 2.7e-7 relative",
                   "**Symmetric convolution and max-pool padding.**", "**8-bit training batches.**",
                   "**LARS epsilon 1e-7 computed, 0 logged.**", "**Division by a per-channel std"):
        assert needle in text, needle
    # Seeds given to build() as chosen by hand: flagged in the README and in the score output.
    assert "**Seeds chosen by hand, not drawn by the package**: 1, 2, 3, 4, 5." in text
    assert "Seeds chosen by hand" in (tmp_path / "resnet" / "score.md").read_text()

    hp = BERT | {"init_checkpoint_sha256": SHA, "init_checkpoint_masked_lm_accuracy": 0.34085}
    bert = [fake_run(tmp_path / f"b{i}.txt", benchmark="bert", seed=40 + i, hyperparameters=hp) for i in range(10)]
    package.build(division="closed", benchmark="bert", system="1xH200", logs=bert, out=tmp_path / "bert",
                  seeds_drawn=True)
    text = readme(tmp_path / "bert", "bert")
    for needle in ("r = |w| / |u| if both > 0 else 1", "test_lamb_clip_and_schedule_follow_the_reference",
                   "6.5e-7 (rcp_3072, foreach)", "**Unpadded batches**", "**Clipping after the all-reduce",
                   f"Phase-1 checkpoint sha256 {SHA}, masked-LM accuracy before training 0.34085",
                   "Seeds 40, 41, 42, 43, 44, 45, 46, 47, 48, 49: drawn at random by the package"):
        assert needle in text, needle
    assert "chosen by hand" not in text and "Started by override" not in text
