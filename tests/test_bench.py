"""`make bench`: the pieces it is built from (the training code's steps, scaling, FLOP accounting, peers) and a whole
`--quick` run end to end, whose JSON and Markdown must hold every row. About 35 s on one busy core, 30 s of
it the quick run."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mlperf_submission.bench import cases, peers, scales, timing
from mlperf_submission.bench.__main__ import (
    add_utilisation,
    allocator,
    combined_peak,
    finish_row,
    main,
    plan,
    pooled,
    run,
)
from mlperf_submission.bench.figures import goal, ratios, row_figure
from mlperf_submission.closed.bert import data as bert_data
from mlperf_submission.closed.resnet.model import ResNet50
from mlperf_submission.common.data import bert_wiki
from mlperf_submission.common.evidence import ratio_text

pytestmark = pytest.mark.usefixtures("one_thread")


def test_predictions_follow_mlperf():
    assert cases.predictions(128) == 20 and cases.predictions(512) == 76 and cases.predictions(40) == 6


def test_scaled_to_24_layers_on_a_straight_line():
    points = {1: {"step_s": 1.0, "flops": 10}, 2: {"step_s": 1.5, "flops": 18}}
    out = timing.scaled(points)
    assert out["step_s"] == pytest.approx(1.0 + 23 * 0.5) and out["flops"] == 10 + 23 * 8
    assert out["scaled_from"] == [1, 2]
    noisy = timing.scaled({1: {"step_s": 1.0, "flops": 10}, 2: {"step_s": 0.9, "flops": 18}})
    assert noisy["step_s"] == 1.0  # a negative slope from timing noise is not extrapolated, and is flagged
    assert noisy["unreliable"] == "2 layers timed no slower than 1" and "unreliable" not in out
    assert timing.scaled({24: {"step_s": 3.0, "flops": 5}}) == {"step_s": 3.0, "flops": 5, "scaled_from": []}


def test_the_bench_times_the_training_code_and_charges_the_update_per_global_batch():
    """The rows run closed/bert/steps.py's step functions; an update's time is shared by a global batch."""
    scale = scales.quick()
    cfg = cases.bert_config(scale, 16, 1, "fp32")
    timed = cases.ours(cfg, torch.device("cpu"))
    batch = bert_data.synthetic_batch(cfg, 3)
    before = [p.detach().clone() for p in timed.params]
    timed.forward_backward(batch)()
    assert all(p.grad is not None for p in timed.params)
    timed.update()
    timed.update()  # the update puts the gradients back itself, so each timed call does a whole update
    assert all(p.grad is None for p in timed.params)
    assert any(not torch.equal(p, q) for p, q in zip(timed.params, before, strict=True))
    row = cases._combined({"step_s": 1.0, "flops": 5}, {"step_s": 2.56}, samples=10)
    assert row["step_s"] == pytest.approx(1.0 + 2.56 * 10 / cases.global_batch()) and row["flops"] == 5
    images = cases._combined({"step_s": 1.0, "rounds": [1.0, 2.0]}, {"step_s": 3.2, "rounds": [3.2, 1.6]}, 16, 1632)
    assert images["global_batch"] == 1632 and images["rounds"] == pytest.approx([1.0 + 3.2 / 102, 2.0 + 1.6 / 102])
    assert cases.global_batch() == 256


def test_both_layer_counts_are_timed_in_the_same_rounds(monkeypatch):
    """Every layer count's models are built first and held, then all their steps go to one alternating
    measurement: a change in the machine's speed moves both points of a slope alike."""
    calls = []

    def measured(steps, scale, device, uncounted=()):
        calls.append(list(steps))
        return {name: {"step_s": float(name.rsplit(" ", 1)[1]), "flops": 2, "rounds": [float(name.rsplit(" ", 1)[1])]}
                for name in steps}

    class Timed:
        def forward_backward(self, batch):
            return lambda: None

        def update(self):
            pass

    monkeypatch.setattr(cases, "measure_alternating", measured)
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long)}
    out = cases._time_impls(scales.quick(), (1, 5), 3, torch.device("cpu"), lambda layers: {"ours": (Timed(), batch)})
    assert calls == [["ours fb 1", "ours update 1", "ours fb 5", "ours update 5"]]
    assert out["ours"]["fb"]["scaled_from"] == [1, 5] and out["ours"]["fb"]["step_s"] == pytest.approx(24.0)


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
        (_, forward_backward, update), _, _ = cases.resnet_step(impl, images, labels, torch.device("cpu"))
        with monkeypatch.context() as m:
            for name in ("to", "cuda", "contiguous", "pin_memory"):
                m.setattr(torch.Tensor, name, spy(name))
            forward_backward()
            update()
    assert copied == []


@pytest.mark.parametrize("impl", cases.RESNET_IMPLS)
def test_a_resnet_step_is_its_two_halves_and_the_update_moves_the_weights(impl):
    """Timed apart (the update is charged per global batch of 1632 images), the two halves still make the
    training step: the forward-backward leaves gradients, the update changes the weights with them."""
    torch.manual_seed(0)
    (model, forward_backward, update), _, _ = cases.resnet_step(impl, torch.randn(2, 3, 32, 32),
                                                                torch.randint(1000, (2,)), torch.device("cpu"))
    forward_backward()
    assert all(p.grad is not None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    update()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert cases.resnet_global_batch() == 1632


def test_our_resnet_step_compiles_untimed_as_the_trainer_does():
    """With the preset's torch_compile on, the bench compiles our model as train.py does and runs the first
    (compiling) step before the closure exists, reporting how long it took; off, nothing is compiled."""
    import dataclasses

    from mlperf_submission.closed.resnet import presets as resnet_presets

    images, labels = torch.randn(2, 3, 32, 32), torch.randint(10, (2,))
    small = dataclasses.replace(resnet_presets.h200(), model_width=8, num_classes=10, precision="fp32",
                                channels_last=False)
    for backend in ("off", "aot_eager"):
        (_, forward_backward, update), compile_s = cases.our_resnet_step(
            dataclasses.replace(small, torch_compile=backend), images, labels, torch.device("cpu"))
        forward_backward()
        update()
        assert (compile_s > 0) == (backend != "off")


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
    rows[2]["unreliable"] = "forward-backward: 2 layers timed no slower than 1"
    noisy = {q["ratio"]: q for q in ratios(rows)}["ours / peer best"]
    assert (noisy["value"], noisy["met"]) == (None, None)
    assert ratio_text(noisy) == "not measured (forward-backward: 2 layers timed no slower than 1)"


def test_every_ratio_has_its_rounds_spread_and_a_wide_one_is_unsettled():
    rows = [{"group": "g", "impl": "ours", "samples_per_s": 2.0, "samples_per_s_rounds": [2.0, 2.1, 1.9, 2.0, 2.0]},
            {"group": "g", "impl": "hf-best", "samples_per_s": 1.0, "samples_per_s_rounds": [1.0, 1.0, 1.0, 1.0, 1.0]},
            {"group": "g", "impl": "hf-defaults", "samples_per_s": 0.5,
             "samples_per_s_rounds": [0.5, 0.5, 0.5, 0.8, 0.5]}]
    got = {q["ratio"]: q for q in ratios(rows)}
    best = got["ours / peer best"]
    assert (best["value"], best["spread"], best["rounds"], best["unsettled"], best["met"]) == (2.0, [1.9, 2.1], 5,
                                                                                               False, True)
    wide = got["ours / peer defaults"]  # 2.0 / 0.8 = 2.5 in the fourth round, one fifth below the median of 4
    assert wide["value"] == 4.0 and wide["spread"] == [2.5, 4.2] and wide["unsettled"] and wide["met"] is None
    assert wide["range"] == [2.5, 4.2]  # at 5 rounds the bootstrap interval of the median is the min-max


def test_the_interval_of_a_median_narrows_as_rounds_are_pooled_where_the_min_max_cannot():
    """One slow round in six leaves the median unsettled; the same rounds measured again and pooled settle it,
    while their min-max stays as wide. The interval is seeded: the same rounds give the same interval."""
    def spread(rates):  # a row timed as a rate per round (the decode rows)
        return row_figure({"samples_per_s_rounds": rates})

    rounds = [1.0, 1.02, 0.98, 1.01, 0.99, 1.3]
    once, twice = spread(rounds), spread(rounds * 2)
    assert once["unsettled"] and once["spread"][1] > 1.1 and once["range"] == twice["range"] == [0.98, 1.3]
    assert not twice["unsettled"] and 0.98 <= twice["spread"][0] < twice["spread"][1] <= 1.02
    assert spread(rounds * 2) == twice and spread([1.5] * 6)["spread"] == [1.5, 1.5]
    assert spread([3.0]) == {"value": 3.0, "spread": [3.0, 3.0], "range": [3.0, 3.0], "rounds": 1,
                             "unsettled": False}


def test_a_figure_takes_each_parts_median_and_resamples_whole_rounds():
    """One slow round of one part (5 layers) of a row scaled from 1 and 5 layers to 24: the ratio from the
    parts' medians leaves it out and stays settled, where that round's own ratio, in the min-max, is 0.67."""
    k = 23 / 4
    one = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.0]  # 7 rounds, as the CPU scale times
    five = [2.0, 2.02, 1.98, 2.6, 2.01, 1.99, 2.0]
    a = {"group": "g", "impl": "ours", "samples": 8, "samples_per_s": 1.0, "terms": [[1 - k, one], [k, five]]}
    b = {"group": "g", "impl": "hf-best", "samples": 8, "samples_per_s": 1.0, "terms": [[1.0, [6.75] * 7]]}
    q = {r["ratio"]: r for r in ratios([a, b])}["ours / peer best"]
    assert q["value"] == pytest.approx(6.75 / (1 + k * 1.0)) and q["rounds"] == 7
    assert q["range"][0] == pytest.approx(6.75 / ((1 - k) * 1.01 + k * 2.6)) and q["range"][0] < 0.7
    assert not q["unsettled"] and 0.97 < q["spread"][0] <= q["value"] <= q["spread"][1] < 1.02


def test_resnet_is_judged_against_never_below_the_best_peer_and_bert_against_its_goal():
    assert goal("ResNet-50, 224 px", "ours / peer best") == 1.0
    assert goal("BERT-Large, seq 128", "ours / peer best") == 1.3
    assert goal("ResNet-50, 224 px", "ours / peer defaults") == 2.0


def test_rows_carry_the_interval_of_their_throughput():
    row = finish_row({"group": "g", "impl": "ours"}, {"samples": 4, "step_s": 2.0, "rounds": [2.0] * 6 + [1.0],
                                                      "precision": "16.32"}, {"bf16": 1e12})
    assert row["samples_per_s_spread"] == [2.0, 2.0] and row["unsettled"] is False
    wide = finish_row({"group": "g", "impl": "ours"}, {"samples": 4, "step_s": 2.0, "rounds": [2.0, 1.0, 3.0, 2.0, 1.5],
                                                       "precision": "16.32"}, {"bf16": 1e12})
    assert wide["unsettled"] is True


def test_closed_bert_is_laid_out_at_the_presets_micro_batch():
    """1xH200 lays out 64 sequences per device at once: on the Wikipedia lengths at 512 first-fit puts about 2
    in a row (at 8 it was 1.6); the timed rows are spread over the layout and say what they hold."""
    assert cases.micro_batch() == 64
    lengths = bert_wiki.wikipedia_lengths(16384, 512, seed=0)[:64]
    rows, layout = cases.closed_layout(lengths, 512, timed=8)
    assert 1.9 < layout["sequences_per_row"] < 2.5 and layout["rows"] == round(64 / layout["sequences_per_row"])
    assert 0.9 < layout["real_tokens_per_slot"] <= 1.0
    members = rows[rows >= 0]
    assert layout["timed_sequences"] == len(members) == len(set(members.tolist())) and len(rows) == 4
    assert all(lengths[r[r >= 0]].sum() <= 512 for r in rows)


def test_a_measurement_again_pools_the_rounds():
    first = {"ours": {"step_s": 2.0, "rounds": [1.0, 2.0, 3.0], "peak_memory_mib": 10.0, "samples": 4}}
    more = {"ours": {"step_s": 5.0, "rounds": [4.0, 5.0, 6.0], "peak_memory_mib": 12.0, "samples": 4}}
    got = pooled(first, more)["ours"]
    assert got["rounds"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and got["step_s"] == 3.5 and got["peak_memory_mib"] == 12
    first["ours"]["terms"], more["ours"]["terms"] = [[1.0, [1.0, 2.0, 3.0]], [0.5, [2.0]]], [[1.0, [4.0]], [0.5, [4.0]]]
    got = pooled(first, more)["ours"]  # each part's rounds pooled, the step from the pooled medians
    assert got["terms"] == [[1.0, [1.0, 2.0, 3.0, 4.0]], [0.5, [2.0, 4.0]]] and got["step_s"] == 2.5 + 0.5 * 3.0


def test_a_case_runs_in_a_fresh_process_with_malloc_keeping_what_it_frees(monkeypatch):
    peak = run((timing.matmul_peak, scales.quick(), "cpu"), threads=1, isolated=True)
    assert peak["threads"] == 1 and peak["flops_per_s"]["fp32"] > 0 and peak["flops_per_s"]["bf16"] > 0
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")  # the user's own setting is kept
    assert run((os.getenv, "MALLOC_MMAP_MAX_"), isolated=True) == "0"
    assert run((os.getenv, "MALLOC_TRIM_THRESHOLD_"), isolated=True) == "12345"
    assert "MALLOC_MMAP_MAX_" not in os.environ  # only the case process had it
    assert allocator(isolated=True) == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "12345"}
    assert allocator(isolated=False)["MALLOC_MMAP_MAX_"] == "unset (the allocator's default)"


def test_gpu_rows_are_sized_by_the_gpus_memory():
    """An H100 (80 GiB) and an H200 (141 GiB): four BERT-Large models at 256 x 128 (about 100 GB by the
    estimate) fit the H200 alone; every group's estimate stays within the usable share."""
    h100, h200 = scales.gpu(80 * 2**30), scales.gpu(141 * 2**30)
    assert (h100.resnet_batch, h100.bert_batches, h100.wiki_batch) == (256, (128, 16), 16)
    assert (h200.resnet_batch, h200.bert_batches, h200.wiki_batch) == (256, (256, 32), 32)
    for memory, scale in ((80 * 2**30, h100), (141 * 2**30, h200)):
        assert scales.bert_bytes(4, scale.bert_batches[0], 128) <= scales.USABLE * memory
        assert scales.bert_bytes(3, scale.bert_batches[1], 512) <= scales.USABLE * memory
        assert scale.bert_layers == scale.wiki_layers == (24,)
    assert scales.bert_bytes(4, 256, 128) > scales.USABLE * 80 * 2**30
    small = scales.gpu(16 * 2**30)
    assert small.bert_batches == (1, 1) and small.resnet_batch == 64  # the BERT states alone overfill 16 GiB


def oom(*args):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB\nmore text")


def test_a_case_that_runs_out_of_memory_is_its_error_rows_and_the_others_run(tmp_path, monkeypatch):
    monkeypatch.setattr("mlperf_submission.bench.__main__.plan", lambda scale, device: [
        dict(group="BERT-Large, seq 32", impls=("ours", "hf-best"), call=(oom,)),
        dict(group="ImageNet decode + augment, 224 px", impls=cases.DECODE_IMPLS, call=(cases.decode, scale))])
    assert main(["--quick", "--in-process", "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "bench.json").read_text())
    failed, decoded = result["rows"][:2], result["rows"][2]
    assert [q["ratio"] for q in result["ratios"]] == ["ours / plain"]
    assert [r["impl"] for r in failed] == ["ours", "hf-best"]
    assert all(r["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB" for r in failed)
    assert decoded["samples_per_s"] > 0 and "error" not in decoded
    assert "| BERT-Large, seq 32 | ours | failed: OutOfMemoryError" in (tmp_path / "bench.md").read_text()


def test_fp32_rows_in_tf32_are_measured_against_the_tf32_peak():
    peaks = {"fp32": 50e12, "tf32": 400e12, "bf16": 800e12}
    base = {"samples": 8, "step_s": 1.0, "settings": "fp32, NCHW"}
    conv = finish_row({"group": "g", "impl": "peer-defaults"}, {**base, "precision": "32.32", "tf32": True}, peaks)
    assert conv["peak_flops_per_s"] == 400e12 and conv["settings"] == "fp32, NCHW, TF32 on"
    plain = finish_row({"group": "g", "impl": "hf-defaults"}, {**base, "precision": "32.32", "tf32": False}, peaks)
    assert plain["peak_flops_per_s"] == 50e12 and plain["settings"].endswith("TF32 off")
    cpu = finish_row({"group": "g", "impl": "ours"}, {**base, "precision": "16.32", "tf32": None}, peaks)
    assert cpu["peak_flops_per_s"] == 800e12 and cpu["settings"] == "fp32, NCHW"


def test_the_peak_is_the_best_of_start_and_end_and_a_drift_says_disturbed():
    start = {"flops_per_s": {"fp32": 1.0e12, "bf16": 2.0e12}, "size": 8, "shapes": [(8, 8, 8)]}
    steady = combined_peak(start, {"flops_per_s": {"fp32": 0.95e12, "bf16": 2.1e12}})
    assert steady["flops_per_s"] == {"fp32": 1.0e12, "bf16": 2.1e12} and steady["disturbed"] == []
    moved = combined_peak(start, {"flops_per_s": {"fp32": 0.5e12, "bf16": 2.0e12}})
    assert moved["disturbed"] == ["fp32"] and moved["start"]["fp32"] == 1.0e12 and moved["end"]["fp32"] == 0.5e12
    assert timing.peak_shapes(64) == [(64, 64, 64), (128, 32, 64), (32, 128, 64)]  # the same FLOPs each


def test_plan_covers_every_comparison():
    groups = {}
    for case in plan(scales.cpu(), "cpu"):
        groups.setdefault(case["group"], []).extend(case["impls"])
    assert groups == {
        "ResNet-50, 224 px": ["ours", "ours-plain", "peer-defaults", "peer-best"],
        "BERT-Large, seq 128": ["ours", "ours-plain", "hf-defaults", "hf-best"],
        "BERT-Large, seq 512": ["ours", "hf-defaults", "hf-best"],
        "BERT-Large, Wikipedia lengths, seq 512": ["ours", "ours-jagged", "ours-padded", "ours-packed", "hf-defaults",
                                                   "hf-best"],
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
    assert len(result["rows"]) == sum(len(case["impls"]) for case in plan(scales.quick(), "cpu"))
    for row in result["rows"]:
        assert row["samples_per_s"] > 0, row
        if "step_s" in row:
            assert row["mfu"] > 0 and row["peak_memory_mib"] > 0 and row["precision"] in ("32.32", "16.32")
    bert = [r for r in result["rows"] if r["group"].startswith("BERT")]
    assert all(r["scaled_from"] == [1, 2] for r in bert)
    labels = {(q["group"], q["ratio"]) for q in result["ratios"]}
    assert ("ResNet-50, 32 px", "ours / peer best") in labels
    assert ("BERT-Large, seq 32", "ours: MFU vs bf16 peak") in labels
    wiki = {r["impl"]: r for r in result["rows"] if "Wikipedia" in r["group"]}
    assert wiki["ours-padded"]["samples"] == wiki["ours-padded"]["rows"] == wiki["ours"]["layout"]["timed_sequences"]
    assert wiki["ours"]["layout"]["micro_batch"] == 64  # the 1xH200 preset's, laid out whole
    assert wiki["ours"]["samples"] == pytest.approx(wiki["ours"]["rows"] * wiki["ours"]["layout"]["sequences_per_row"])
    assert wiki["ours"]["rows"] < wiki["ours-padded"]["rows"]  # the same sequences without their padding
    assert all(q.get("rounds") == 1 for q in result["ratios"] if q["value"] is not None)  # quick: one round each
    assert wiki["ours-packed"]["timed_sequences"] > wiki["ours-packed"]["rows"]
    assert 0 < wiki["ours"]["update_share"] < 1 and wiki["ours"]["global_batch"] == 256
    assert ("BERT-Large, Wikipedia lengths, seq 32", "ours / peer best") in labels
    markdown = (tmp_path / "bench.md").read_text()
    assert ("| ratio | benchmark | value | 90% interval (bootstrap over rounds) | min-max of the per-round values | "
            "goal | met |") in markdown and result["spread_kind"] == "bootstrap 90% interval, rounds resampled"
    resnet = [r for r in result["rows"] if r["group"].startswith("ResNet")]
    assert all(r["global_batch"] == 1632 and 0 < r["update_share"] < 1 for r in resnet)
    assert all(r["settings"].endswith("update per 1632 images") for r in resnet)
    assert "QUICK MODE" in markdown and "Closed BERT's layout of a micro-batch of 64" in markdown
    assert "HF transformers, best settings" in capsys.readouterr().out


def bench_json(path, **values):
    ratios_ = [{"group": "g", "ratio": name, **q} for name, q in values.items()]
    path.write_text(json.dumps({"format": "mlperf_submission.bench/1", "started": "today", "commit": "abc",
                                "seconds": 300.0, "ratios": ratios_}))
    return str(path)


def test_two_runs_are_compared_ratio_by_ratio(tmp_path, capsys):
    from mlperf_submission.bench import compare

    settled = {"value": 1.0, "spread": [0.95, 1.05], "unsettled": False}
    first = bench_json(tmp_path / "1.json", a=settled, b=settled, c={**settled, "unsettled": True},
                       d={"value": None, "unreliable": "noise"})
    second = bench_json(tmp_path / "2.json", a={**settled, "value": 1.09}, b={**settled, "value": 1.2}, c=settled,
                        d=settled)
    assert compare.main([first, second, "--out", str(tmp_path / "compare.md")]) == 1  # b: 1.0 against 1.2
    table = (tmp_path / "compare.md").read_text()
    assert "| a | g | 1.00 (0.95-1.05) | 1.09 (0.95-1.05) | yes |" in table
    assert "| b | g | 1.00 (0.95-1.05) | 1.20 (0.95-1.05) | no |" in table
    assert "| c | g | 1.00 (0.95-1.05) unsettled | 1.00 (0.95-1.05) | not judged" in table
    assert "| d | g | not measured |" in table and table in capsys.readouterr().out
    assert compare.main([first, first]) == 0
    assert compare.main([first, str(tmp_path / "missing.json")]) == 2
