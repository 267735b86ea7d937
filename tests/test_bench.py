"""`make bench`: the pieces it is built from (packed batches, scaling, FLOP accounting, peers) and a whole
`--quick` run end to end, whose JSON and Markdown must hold every row. About 35 s on one busy core, 30 s of
it the quick run."""

from __future__ import annotations

import json

import pytest
import torch

from mlperf_submission.bench import cases, peers
from mlperf_submission.bench.__main__ import add_utilisation, main, plan, ratios, run
from mlperf_submission.closed.resnet.model import ResNet50

pytestmark = pytest.mark.usefixtures("one_thread")


def test_predictions_follow_mlperf():
    assert cases.predictions(128) == 20 and cases.predictions(512) == 76 and cases.predictions(40) == 6


def test_scaled_to_24_layers_on_a_straight_line():
    points = {1: {"step_s": 1.0, "flops": 10}, 2: {"step_s": 1.5, "flops": 18}}
    out = cases.scaled(points)
    assert out["step_s"] == pytest.approx(1.0 + 23 * 0.5) and out["flops"] == 10 + 23 * 8
    assert out["scaled_from"] == [1, 2]
    noisy = cases.scaled({1: {"step_s": 1.0, "flops": 10}, 2: {"step_s": 0.9, "flops": 18}})
    assert noisy["step_s"] == 1.0  # a negative slope from timing noise is not extrapolated
    assert cases.scaled({24: {"step_s": 3.0, "flops": 5}}) == {"step_s": 3.0, "flops": 5, "scaled_from": []}


def test_wikipedia_lengths_follow_the_histogram():
    lengths = cases.wikipedia_lengths(4096, 512)
    assert lengths.min() >= 8 and lengths.max() <= 512
    assert 0.45 < 1 - lengths.mean() / 512 < 0.55  # about half of a padded batch is padding (MLPERF_V11.md)
    assert 0.2 < (lengths == 512).mean() < 0.35  # full-length sequences are the biggest bin


def test_packed_rows_have_block_diagonal_attention_and_restarting_positions():
    import numpy as np

    lengths = np.array([10, 6, 12])
    batch = cases.rows(lengths, [[0, 1], [2]], 16, vocab=100)
    mask = batch["attention_mask"]
    assert mask.shape == (2, 16, 16)
    assert mask[0, :10, :10].all() and mask[0, 10:16, 10:16].all() and not mask[0, :10, 10:].any()
    assert mask[1, :12, :12].all() and not mask[1, 12:].any()
    assert batch["position_ids"][0].tolist() == list(range(10)) + list(range(6))
    assert batch["nsp_positions"].tolist() == [[0, 10], [0, 0]]
    assert batch["next_sentence_labels"][1, 1] == -100  # an empty slot
    count = batch["masked_lm_weights"].sum(1).tolist()
    assert count == [cases.predictions(10) + cases.predictions(6), cases.predictions(12)]
    positions = batch["masked_lm_positions"][0, : int(count[0])]
    assert ((positions >= 1) & (positions < 16) & (positions != 10)).all()  # never a [CLS]
    padded = cases.rows(lengths, [[0], [1], [2]], 16, vocab=100)
    assert padded["attention_mask"].shape == (3, 16) and "position_ids" not in padded
    assert padded["next_sentence_labels"].shape == (3,)


def test_torchvision_peer_is_the_same_network_size():
    assert sum(p.numel() for p in peers.TorchvisionResNet50().parameters()) == 25_557_032
    assert sum(p.numel() for p in ResNet50().parameters()) == 25_557_032


def test_resnet_steps_copy_the_batch_outside_the_timed_step(monkeypatch):
    """The batch goes to the device when a step is built, for ours and the peers alike: the timed closure
    never copies the host batch (on a GPU a copy there timed a 154 MB pageable transfer in ours alone). On a
    CPU there is no copy to make; the spy sees the calls that would make one anywhere."""
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(1000, (2,))
    host, copied = {id(images), id(labels)}, []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            if id(self) in host:
                copied.append((impl, name))
            return original(self, *args, **kwargs)
        return wrapped

    for impl in cases.RESNET_IMPLS:
        step, _, _ = cases.resnet_step(impl, images, labels, torch.device("cpu"))
        with monkeypatch.context() as m:
            for name in ("to", "cuda", "contiguous", "pin_memory"):
                m.setattr(torch.Tensor, name, spy(name))
            step()
    assert copied == []


def test_plain_decode_peer_makes_normalised_crops():
    from PIL import Image

    img = Image.fromarray((torch.rand(60, 80, 3) * 255).to(torch.uint8).numpy())
    x = peers.torchvision_train_transform(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and -3 < x.mean() < 3


def test_utilisation_and_ratios():
    rows = [
        {"group": "g", "impl": "ours", "samples": 8, "step_s": 2.0, "flops": 4e12, "samples_per_s": 4.0,
         "peak_flops_per_s": 4e12},
        {"group": "g", "impl": "peer-defaults", "samples": 8, "step_s": 8.0, "flops": 5e12, "samples_per_s": 1.0,
         "peak_flops_per_s": 1e12},
        {"group": "g", "impl": "peer-best", "samples": 8, "step_s": 4.0, "flops": 5e12, "samples_per_s": 2.0,
         "peak_flops_per_s": 4e12},
    ]
    add_utilisation(rows)
    assert [r["mfu"] for r in rows] == [0.5, 0.5, 0.25]  # model FLOPs are ours, 4 TFLOP, for every row
    got = {q["ratio"]: (q["value"], q["met"]) for q in ratios(rows)}
    assert got == {"ours / peer defaults": (4.0, True), "ours / peer best": (2.0, True)}


def test_a_case_runs_in_a_fresh_process():
    peak = run((cases.matmul_peak, cases.quick(), "cpu"), threads=1, isolated=True)
    assert peak["threads"] == 1 and peak["flops_per_s"]["fp32"] > 0 and peak["flops_per_s"]["bf16"] > 0


def test_plan_covers_every_comparison():
    groups = {}
    for case in plan(cases.cpu(), "cpu"):
        groups.setdefault(case["group"], []).extend(case.get("impls") or [case["impl"]])
    assert groups == {
        "ResNet-50, 224 px": ["ours", "ours-plain", "peer-defaults", "peer-best"],
        "BERT-Large, seq 128": ["ours", "ours-plain", "hf-defaults", "hf-best"],
        "BERT-Large, seq 512": ["ours", "hf-defaults", "hf-best"],
        "BERT-Large packed vs padded, seq 512": ["padded", "packed"],
        "ImageNet decode + augment, 224 px": ["ours", "plain"],
    }


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path, capsys):
    pytest.importorskip("transformers")
    assert main(["--quick", "--in-process", "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["format"] == "mlperf_submission.bench/1" and result["scale"]["name"] == "quick"
    assert result["command"].endswith("--quick --in-process --threads 1 --out " + str(tmp_path))
    assert result["commit"] and result["machine"]["torch"] == torch.__version__
    assert len(result["rows"]) == sum(len(case.get("impls") or [case["impl"]]) for case in plan(cases.quick(), "cpu"))
    for row in result["rows"]:
        assert row["samples_per_s"] > 0, row
        if "step_s" in row:
            assert row["mfu"] > 0 and row["peak_memory_mib"] > 0 and row["precision"] in ("32.32", "16.32")
    bert = [r for r in result["rows"] if r["group"].startswith("BERT")]
    assert all(r["scaled_from"] == [1, 2] for r in bert)
    labels = {(q["group"], q["ratio"]) for q in result["ratios"]}
    assert ("ResNet-50, 32 px", "ours / peer best") in labels
    assert ("BERT-Large, seq 32", "ours: MFU vs bf16 peak") in labels
    packing = {r["impl"]: r for r in result["rows"] if r["group"].startswith("BERT-Large packed")}
    padded, packed = packing["padded"], packing["packed"]
    assert padded["samples"] == padded["rows"] == packed["rows"] == padded["timed_sequences"]
    assert packed["samples"] == pytest.approx(packed["rows"] * packed["sequences_per_row"])
    assert 1.2 < packed["sequences_per_row"] <= 3 and packed["padding"] < padded["padding"]
    assert packed["timed_sequences"] > packed["rows"]
    markdown = (tmp_path / "bench.md").read_text()
    assert "| ratio | benchmark | value | goal | met |" in markdown and "QUICK MODE" in markdown
    assert "HF transformers, best settings" in capsys.readouterr().out
