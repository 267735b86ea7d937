"""Memory and /dev/shm estimates (common/runtime/memory.py, closed/*/memory.py): the presets that must fit do,
the 8xA100 BERT preset's old 64 x 6 split is refused on an A100-40GB before any log, a CPU run is checked
against the host's memory as a GPU run against the GPU's, and the meta-device count of ResNet's saved
activations is what a real CPU forward pass keeps."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mlperf_submission import benchmarks
from mlperf_submission.bench.memory import main as memory_main
from mlperf_submission.closed.bert import memory as bert_memory
from mlperf_submission.closed.bert import presets as bert_presets
from mlperf_submission.closed.resnet import memory as resnet_memory
from mlperf_submission.closed.resnet import presets as resnet_presets
from mlperf_submission.closed.resnet.model import ResNet50
from mlperf_submission.common import config, training
from mlperf_submission.common.cli import UserError
from mlperf_submission.common.runtime import distributed, memory
from mlperf_submission.systems import HERE as SYSTEMS
from mlperf_submission.systems import load as load_system

CUDA = torch.device("cuda", 0)


@pytest.fixture
def a100_40gb(tmp_path):
    system = json.loads((SYSTEMS / "1xH200.json").read_text()) | {
        "system_name": "8xA100-40GB example", "accelerators_per_node": "8",
        "accelerator_model_name": "NVIDIA A100-SXM4-40GB", "accelerator_memory_capacity": "40 GB"}
    path = tmp_path / "a100.json"
    path.write_text(json.dumps(system))
    return path


def test_bert_large_layer_keeps_44_bytes_a_token_a_hidden_unit_in_fp16_and_70_in_fp32():
    assert bert_memory.layer_bytes_per_token(1024, 4096, "fp16", 0.1) == 44 * 1024
    assert bert_memory.layer_bytes_per_token(1024, 4096, "bf16", 0.1) == 44 * 1024
    assert bert_memory.layer_bytes_per_token(1024, 4096, "fp32", 0.1) == 70 * 1024
    assert bert_memory.layer_bytes_per_token(1024, 4096, "fp16", 0.0) == 42 * 1024  # no dropout masks


def test_8xa100_bert_at_64_per_gpu_is_over_an_a100_40gb_and_refused_before_the_log(a100_40gb, tmp_path):
    old = config.override(bert_presets.dgxa100(), ["gradient_accumulation_steps=6"])
    estimate = bert_memory.estimate(old, 64)
    assert 40 * memory.GIB < estimate.total < 46 * memory.GIB  # the read-through's 40-45 GB, as counted here
    assert 30 * memory.GIB < estimate.activations < 36 * memory.GIB
    _, system = load_system(a100_40gb)
    with pytest.raises(UserError, match="gradient_accumulation_steps=12") as e:
        memory.refuse_unfit("bert", old, 64, system, CUDA)
    assert "\n" not in str(e.value)
    # Through the trainers' own path: refused in announce, which both call before the log is opened.
    args = argparse.Namespace(system=str(a100_40gb), preset="8xA100", seed=1, result_log=tmp_path / "r.txt")
    with pytest.raises(UserError, match="gradient_accumulation_steps=12"):
        training.announce("bert", "closed", args, old, distributed.Dist(world_size=8, device=CUDA), 64)
    assert not (tmp_path / "r.txt").exists()
    # On the CPU the same run is checked against the host's memory instead, which here is plenty.
    memory.refuse_unfit("bert", old, 64, system, torch.device("cpu"), host_bytes=2**50)


def test_the_8xa100_bert_preset_now_fits_an_a100_40gb_with_the_same_global_batch(a100_40gb):
    cfg = bert_presets.dgxa100()
    assert cfg.global_batch_size == 3072 and memory.local_batch_of(cfg, 8) == 32
    _, system = load_system(a100_40gb)
    memory.refuse_unfit("bert", cfg, 32, system, CUDA)
    assert bert_memory.estimate(cfg, 32).total < 28 * memory.GIB


@pytest.mark.parametrize("bench,division", [("bert", "closed"), ("bert", "open"), ("resnet", "closed"),
                                            ("resnet", "open")])
def test_the_1xh200_presets_fit_an_h200(bench, division):
    cfg = benchmarks.get(division, bench).config("1xH200")
    local = memory.local_batch_of(cfg, 1)
    _, system = load_system("1xH200")
    memory.refuse_unfit(bench, cfg, local, system, CUDA)
    assert cfg.memory_estimate(local, "cuda").total < 60 * memory.GIB


def test_resnet_activations_counted_on_the_meta_device_are_what_a_cpu_forward_keeps(one_thread):
    """The meta device gives the saved tensors' shapes without computing; a real forward on the CPU (tensors
    told apart by their storage) keeps the same bytes per image."""
    cfg = resnet_presets.smoke()

    def cpu_saved(n):
        sizes = {}

        def pack(t):
            sizes[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
            return t

        torch.manual_seed(0)
        model = ResNet50(num_classes=cfg.num_classes, width=cfg.model_width)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(n, 3, cfg.image_size, cfg.image_size))
        return sum(sizes.values())

    per_image = (cpu_saved(4) - cpu_saved(2)) / 2
    assert resnet_memory.estimate(cfg, 10).activations == int(per_image * 10)


def test_capacity_is_read_in_the_unit_given():
    assert memory.capacity_bytes("141 GB") == 141 * 10**9
    assert memory.capacity_bytes("40 GiB") == 40 * 2**30
    assert memory.capacity_bytes("80GB HBM2e") == 80 * 10**9
    assert memory.capacity_bytes("") is None and memory.capacity_bytes("HBM3e") is None


def test_shm_is_workers_times_prefetch_batches_of_images_per_rank():
    cfg = resnet_presets.h200()  # 14 workers, prefetch 2, 1632 = 408 x 4 accumulation
    image, eval_image = 3 * 224 * 224 + 8, 4 * 3 * 224 * 224 + 8  # uint8 / float32 pixels, an int64 label
    assert resnet_memory.sample_bytes(cfg) == image and resnet_memory.sample_bytes(cfg, "eval") == eval_image
    need = memory.shm_bytes(cfg, 408, 1)
    assert need == (14 * 2 + 2) * 408 * eval_image  # eval's loader: ResNet evaluates between epochs
    assert 6 * memory.GIB < need < 7 * memory.GIB and memory.shm_size(need) == "8g"
    assert memory.shm_bytes(cfg, 408, 8) == 8 * need
    assert memory.shm_bytes(resnet_presets.smoke(), 128, 1) == 0  # no workers, no shared memory
    # BERT: the loader's int64 features and float32 weights, 3 x 512 + 2 x 76 + 1 int64 and 76 float32.
    assert bert_memory.sample_bytes(bert_presets.h200()) == 8 * (3 * 512 + 2 * 76 + 1) + 4 * 76


def test_the_command_prints_the_estimate_and_the_shm_size(capsys):
    assert memory_main(["--bench", "bert", "--preset", "8xA100", "--system", "1xH200"]) == 0
    assert "at 32 per GPU" in capsys.readouterr().out
    assert memory_main(["--bench", "resnet", "--preset", "1xH200", "--shm"]) == 0
    assert "--shm-size=8g" in capsys.readouterr().out
    assert benchmarks.accelerators("8xA100") == 8 and benchmarks.accelerators("pod16") == 16
    assert benchmarks.accelerators("smoke") == 1


def test_the_readmes_shm_table_and_dockerfile_say_what_the_code_computes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    for bench, preset, gpus in (("resnet", "1xH200", 1), ("resnet", "8xA100", 8), ("bert", "1xH200", 1),
                                ("bert", "8xA100", 8)):
        cfg = benchmarks.get("closed", bench).config(preset)
        need = memory.shm_bytes(cfg, memory.local_batch_of(cfg, gpus), gpus)
        row = f"| {gpus} | {need / memory.GIB:.2f} GiB | {memory.shm_size(need)} |"
        assert row in readme, (bench, preset, row)
    assert "RUN make setup" in (root / "Dockerfile").read_text()


def test_a_cpu_run_over_the_hosts_memory_is_refused_with_the_accumulation_that_fits():
    cfg = bert_presets.smoke()  # 32 rows a step, no accumulation
    full, single = (memory.needed(cfg, n, "cpu").total for n in (32, 1))
    host = int((single + full) / 2 / memory.USABLE_FRACTION)  # room for a few rows, not for 32
    with pytest.raises(UserError, match=r"needs about .* GiB, .* gradient_accumulation_steps=(\d+)") as e:
        memory.refuse_unfit("bert", cfg, 32, {}, torch.device("cpu"), host_bytes=host)
    steps = int(e.value.args[0].split("gradient_accumulation_steps=")[-1].split()[0])
    assert "\n" not in str(e.value) and 32 % steps == 0 and steps > 1
    assert memory.needed(cfg, 32 // steps, "cpu").total <= memory.USABLE_FRACTION * host  # the suggestion fits
    assert memory.needed(cfg, 32 // (steps // 2), "cpu").total > memory.USABLE_FRACTION * host  # the smallest that does
    memory.refuse_unfit("bert", cfg, 32, {}, torch.device("cpu"), host_bytes=2 * full)
    # Two ranks on one host share its memory: twice the need.
    with pytest.raises(UserError, match="for 2 rank"):
        memory.refuse_unfit("bert", cfg, 32, {}, torch.device("cpu"), 2, host_bytes=int(1.5 * full))
    with pytest.raises(UserError, match="even one item a micro-step would not fit"):
        memory.refuse_unfit("bert", cfg, 32, {}, torch.device("cpu"), host_bytes=single // 2)


def test_closed_bert_1xh200_on_a_24_gb_cpu_stops_before_its_log(tmp_path, monkeypatch):
    """The case of issue 22: the trainer's announce reads MemAvailable and refuses before the log opens."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {24 * 2**20} kB\nMemFree:        1000 kB\nMemAvailable:   {22 * 2**20} kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    assert memory.host_available_bytes() == 22 * memory.GIB
    cfg = bert_presets.h200()
    args = argparse.Namespace(system="1xH200", preset="1xH200", seed=1, result_log=tmp_path / "r.txt")
    with pytest.raises(UserError, match=r"bert at 64 per rank .* needs about \d+\.\d GiB, .* host memory available "
                                        r"now \(22\.0 GiB\).* --set gradient_accumulation_steps=\d+"):
        training.announce("bert", "closed", args, cfg, distributed.Dist(), 64)
    assert not (tmp_path / "r.txt").exists()


def test_cpu_attention_is_measured_and_keeps_the_probabilities_with_dropout():
    """Without dropout torch's CPU flash kernel keeps q, k, v and the output (and per-row statistics); with
    dropout the explicit softmax keeps S x S fp32 probabilities per head, which the CUDA formula has not."""
    heads, length, size = 2, 16, 4
    fused = bert_memory.cpu_attention_bytes_per_row(heads, length, size, 0, 0.0, "fp32")
    assert 4 * 4 * heads * length * size <= fused < 4 * 4 * heads * length * size + 4 * heads * length * length
    dropped = bert_memory.cpu_attention_bytes_per_row(heads, length, size, length, 0.1, "fp32")
    assert dropped >= 2 * 4 * heads * length * length
    cfg = bert_presets.h200()
    assert cfg.memory_estimate(64, "cpu").activations > 2 * cfg.memory_estimate(64, "cuda").activations


def test_data_workers_beyond_the_cores_are_reported(capsys, tmp_path):
    cfg = resnet_presets.h200()  # 14 workers
    assert memory.worker_warnings(cfg, 1, 16) == []
    (line,) = memory.worker_warnings(cfg, 1, 2)
    assert "14 data workers x 1 rank(s) on 2 core(s)" in line and "--set data_workers=2" in line
    assert memory.check("resnet", config.override(cfg, ["device=ipu"]), 408, {}, torch.device("cpu"), cores=2) == [
        line]  # nothing refused on an IPU: its memory is PopART's to plan
