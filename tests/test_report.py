"""`make report`: the results page from a bench JSON and submission trees (ours, and Graphcore's published
v1.1 logs), checked structurally with html.parser (balanced tags, every image a PNG on disk, the figures of
the official scoring in the tables) and, where a headless Chromium is installed, rendered to a screenshot.
About 15 s on one busy core."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fakes import FakeClock, fake_run

from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance import report
from mlperf_submission.compliance.__main__ import main as compliance_main
from mlperf_submission.systems import load as load_system

_VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """Tag balance, image sources, and the text of every table row."""

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.images, self.rows, self.errors = [], [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "tr":
            self.rows.append([])
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("td", "th") and self.rows:
            self.rows[-1].append(data)


def check_page(index: Path) -> Page:
    page = Page(index.read_text())
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    for src in page.images:
        assert (index.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    return page


def our_submission(root: Path) -> Path:
    """A closed ResNet submission of 5 runs (fake clock), laid out as `make submit` lays it out."""
    sub = root / "closed" / "acme"
    _, system = load_system("1xH200")
    system.update(submitter="acme", system_name="1xTEST", sw_notes="bf16 autocast, precision 16.32")
    (sub / "systems").mkdir(parents=True)
    (sub / "systems" / "1xTEST.json").write_text(json.dumps(system))
    results = sub / "results" / "1xTEST" / "resnet"
    results.mkdir(parents=True)
    for i, minutes in enumerate((10.0, 11.0, 12.0, 13.0, 14.0)):
        fake_run(results / f"result_{i}.txt", seed=i + 1, clock=FakeClock(1.7e9 + i * 1e4), run_minutes=minutes,
                 evals=[(4, 0.41), (8, 0.70), (12, 0.762)])
    return root


BENCH = {"format": "mlperf_submission.bench/1", "command": "python -m mlperf_submission.bench", "commit": "abc",
         "started": "2026-01-01", "scale": {"name": "cpu"}, "peak": {"flops_per_s": {"fp32": 2e11, "bf16": 6e11}},
         "machine": {"host_processor_model_name": "CPU", "host_processor_core_count": "2",
                     "host_memory_capacity": "24 GiB", "accelerator_model_name": "", "device": "cpu",
                     "torch_threads": 2, "torch": "2.13.0"},
         "rows": [{"group": "ResNet-50, 224 px", "impl": "ours", "name": "ours", "settings": "bf16",
                   "precision": "16.32", "samples": 16, "samples_per_s": 16.0, "step_s": 1.0,
                   "peak_memory_mib": 900.0, "mfu": 0.65},
                  {"group": "ResNet-50, 224 px", "impl": "peer-defaults", "name": "torchvision, defaults",
                   "settings": "fp32", "precision": "32.32", "samples": 16, "samples_per_s": 4.0, "step_s": 4.0},
                  {"group": "BERT-Large, seq 128", "impl": "hf-best", "name": "HF", "error": "not installed"}],
         "ratios": [{"group": "ResNet-50, 224 px", "ratio": "ours / peer defaults", "value": 4.0, "goal": 2.0,
                     "met": True, "spread": [3.9, 4.2], "rounds": 5, "unsettled": False},
                    {"group": "ResNet-50, 224 px", "ratio": "ours / peer best", "value": 1.1, "goal": 1.0,
                     "met": None, "spread": [0.9, 1.3], "rounds": 7, "unsettled": True}],
         "notes": ["a note"]}


def test_page_from_our_submission_and_a_bench_json(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(BENCH))
    out = tmp_path / "report"
    index = report.build(subs=[our_submission(tmp_path / "sub")], benches=[bench], out=out)
    page = check_page(index)
    assert len(page.images) == 1 + 1 + 2  # throughput bars; minutes bars; per-run times and eval curves
    cells = ["".join(r) for r in page.rows]
    assert any("ResNet-50, 224 px" in c and "16.00" in c and "65.0%" in c for c in cells)
    ttr = next(r for r in page.rows if r[:2] == ["resnet", "closed"])
    assert ttr[3:] == ["1xTEST", "1xTEST", "1 x NVIDIA H200", "16.32", "12.000", "5", "0", ttr[-1]]
    runs = [r for r in page.rows if r and r[0].startswith("result_")]
    assert [r[2] for r in runs] == ["10.000", "11.000", "12.000", "13.000", "14.000"]
    assert "not installed" in index.read_text()
    ratios = {r[0]: r[2:] for r in page.rows if r and r[0].startswith("ours / peer")}
    assert ratios == {"ours / peer defaults": ["4.00", "3.90-4.20 (5 rounds)", "2", "yes"],
                      "ours / peer best": ["1.10 UNSETTLED", "0.90-1.30 (7 rounds)", "1", "-"]}
    bench.write_text(json.dumps(BENCH | {"peak": BENCH["peak"] | {"start": {"bf16": 6e11}, "end": {"bf16": 4e11},
                                                                   "disturbed": ["bf16"]}}))
    text = report.build(subs=[], benches=[bench], out=tmp_path / "report2").read_text()
    assert "bf16 0.600 / 0.400; DISTURBED (bf16 moved" in text
    assert "spread (min-max of rounds)" in text  # a bench.json from before the interval says min-max
    bench.write_text(json.dumps(BENCH | {"spread_kind": "bootstrap 90% interval, rounds resampled"}))
    text = report.build(subs=[], benches=[bench], out=tmp_path / "report3").read_text()
    assert "spread (bootstrap 90% interval, rounds resampled)" in text


def test_our_runs_get_graphcores_two_tables_with_their_precision(tmp_path):
    """Our own submission (a plan.json above its submitter folder, as `make submit` leaves it) and our bench
    rows, as Graphcore's results page lays them out; the precision comes from the plan's config where the
    system description states none. A published tree (no plan) stays out of these tables."""
    root = our_submission(tmp_path / "sub")
    system_file = root / "closed" / "acme" / "systems" / "1xTEST.json"
    system = json.loads(system_file.read_text())
    system.update(sw_notes="", hw_notes="")
    system_file.write_text(json.dumps(system))
    plan = {"format": "mlperf_submission.plan/1", "benchmark": "resnet", "system_name": "1xTEST",
            "preset": "1xH200", "demo": False, "config": {"precision": "bf16", "global_batch_size": 1632}}
    (root / "plan.json").write_text(json.dumps(plan))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(BENCH))
    page = check_page(report.build(subs=[root], benches=[bench], out=tmp_path / "report"))
    throughput = [r for r in page.rows if len(r) == 8 and r[4] == "synthetic, in memory"]
    assert throughput == [["ResNet-50, 224 px", "ours: bf16", "CPU (cpu)", "PyTorch 2.13.0", "synthetic, in memory",
                           "16", "16.32", "16.00"]]  # ours only: the peer's row is in the full table below
    ttr = [r for r in page.rows if r and r[0] == "ResNet-50 v1.5"]
    assert ttr == [["ResNet-50 v1.5", "closed", "1xTEST: 1 x NVIDIA H200", system["framework"], "ImageNet", "16.32",
                    "1,632", "preset 1xH200", "12.000"]]
    full = next(r for r in page.rows if r[:2] == ["resnet", "closed"])
    assert full[6] == "16.32"  # filled in from the plan, where the description states nothing
    (root / "plan.json").write_text(json.dumps({**plan, "system_name": "other"}))  # not these results: not ours
    page = check_page(report.build(subs=[root], benches=[], out=tmp_path / "report2"))
    assert not [r for r in page.rows if r and r[0] == "ResNet-50 v1.5"]
    assert next(r for r in page.rows if r[:2] == ["resnet", "closed"])[6] == "not stated"


def test_page_from_published_graphcore_logs(tmp_path, graphcore):
    """ResNet of the four published IPU-POD systems: the minutes are the published olympic means."""
    sub = tmp_path / "Graphcore"
    (sub / "systems").mkdir(parents=True)
    for folder in sorted((graphcore / "results").glob("*-TF1")):
        shutil.copytree(folder, sub / "results" / folder.name)
        shutil.copy(graphcore / "systems" / f"{folder.name}.json", sub / "systems")
    index = report.build(subs=[sub], benches=[], out=tmp_path / "report")
    page = check_page(index)
    minutes = {r[3]: r[7] for r in page.rows if r[:2] == ["resnet", "closed"]}
    assert minutes == {"ipu-pod16-TF1": "28.335", "ipu-pod64-TF1": "8.504", "ipu-pod128-TF1": "5.672",
                       "ipu-pod256-TF1": "3.795"}
    accelerators = {r[3]: r[5] for r in page.rows if r[:2] == ["resnet", "closed"]}
    assert accelerators["ipu-pod16-TF1"] == "16 x Graphcore IPU GC200"
    assert len(page.images) == 1 + 2 * 4


@pytest.mark.parametrize("system, expected", [
    ({"sw_notes": "mixed precision 16.32"}, "16.32"), ({"framework": "PyTorch, bf16 autocast"}, "16.32"),
    ({"framework": "TensorFlow fp32"}, "32.32"), ({"framework": "PopART Poplar SDK 2.3.0"}, "not stated"),
])
def test_stated_precision(system, expected):
    assert report.stated_precision(system) == expected


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no out/bench/bench.json here
    with pytest.raises(UserError, match="nothing to report"):
        report.build(subs=[], benches=[], out=tmp_path / "r")
    (tmp_path / "x.json").write_text("{}")
    assert compliance_main(["report", "--bench", str(tmp_path / "x.json"), "--out", str(tmp_path / "r")]) == 2
    assert "not `make bench` output" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_page_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless Chromium on this machine (apt-get install chromium); the page is checked "
                    "structurally by the other tests")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(BENCH))
    index = report.build(subs=[our_submission(tmp_path / "sub")], benches=[bench], out=tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                    f"--screenshot={shot}", index.resolve().as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
