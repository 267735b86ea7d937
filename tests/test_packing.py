"""Sequence packing: SPFHP and NNLSHP (worked examples, invariants, the published Wikipedia figures), dealing
sequences into packs, packed arrays that unpack to the originals, and the packing CLI and its folders."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import torch
from fakes import FIXTURES, REPO, one_line_error
from helpers import run_cli, run_module

from mlperf_submission.common.cli import sha256_file
from mlperf_submission.common.data import bert_wiki, packing
from mlperf_submission.common.data.packing import (
    DataError,
    PackedDataset,
    Plan,
    assign,
    histogram,
    make_plan,
    nnls_solution,
    nnlshp,
    nnlshp_feasible,
    nnlshp_max_per_pack,
    pack_arrays,
    spfhp,
    verify,
)
from mlperf_submission.common.data.packing.__main__ import main

FIXTURE_HISTOGRAM = FIXTURES.parent / "wikipedia_seqlen_histogram.txt"
WIKIPEDIA_SEQUENCES = 16_279_552


def load_histogram(path) -> np.ndarray:
    """A `length count` table -> (512, 2) int64; its comment lines differ between the two copies."""
    return np.loadtxt(path, dtype=np.int64, comments="#")


@pytest.fixture(scope="module")
def wikipedia() -> np.ndarray:
    """The histogram the package ships, so that the Wikipedia figures are checked in any clone."""
    table = load_histogram(bert_wiki.WIKIPEDIA_HISTOGRAM)
    assert np.array_equal(table[:, 0], np.arange(1, 513)) and table[:, 1].sum() == WIKIPEDIA_SEQUENCES
    return table[:, 1]


def test_shipped_histogram_is_the_fixture():
    if not FIXTURE_HISTOGRAM.is_file():
        pytest.skip(f"the shared fixtures are not beside this checkout ({FIXTURE_HISTOGRAM})")
    assert np.array_equal(load_histogram(bert_wiki.WIKIPEDIA_HISTOGRAM), load_histogram(FIXTURE_HISTOGRAM))


def hist_of(lengths, max_len):
    return histogram(np.array(lengths), max_len)


def strategies(plan: Plan) -> dict:
    return dict(plan.strategies)


def test_spfhp_fills_the_pack_with_most_room_first():
    # 6 opens a pack with room 4, 5 one with room 5; 4 goes to the shortest pack (room 5, not the exact fit
    # of room 4: that would be best fit, i.e. LPFHP), and 1 then to the pack with room 4.
    plan = spfhp(hist_of([6, 5, 4, 1], 10), 10, 3)
    assert strategies(plan) == {(6, 1): 1, (5, 4): 1}
    assert (plan.packs, plan.sequences, plan.tokens, plan.efficiency, plan.speedup) == (2, 4, 16, 0.8, 2.0)


def test_spfhp_splits_groups_and_respects_the_depth():
    hist = hist_of([4] * 3 + [2] * 5, 8)
    # Three packs (4,) take three 2s; the two 2s left find the new (4, 2) packs (room 2) in the same scan.
    assert strategies(spfhp(hist, 8, 3)) == {(4, 2, 2): 2, (4, 2): 1}
    # At depth 2 the (4, 2) packs are closed; the 2s left open packs of their own, which the same length
    # never shares: SPFHP only places a length into packs opened by longer ones.
    assert strategies(spfhp(hist, 8, 2)) == {(4, 2): 3, (2,): 2}
    assert strategies(spfhp(hist, 8, 1)) == {(4,): 3, (2,): 5}


@pytest.mark.parametrize("seed", range(4))
def test_plans_pack_every_sequence_within_the_limits(seed):
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, 30, 48) * (rng.random(48) < 0.7)
    for depth in (1, 2, 3):
        for plan in (spfhp(hist, 48, depth), nnlshp(hist, 48, depth), nnlshp(hist, 48, depth, residual="single")):
            assert np.array_equal(plan.histogram(), hist), (plan.algorithm, depth)
            assert all(len(lengths) <= depth and sum(lengths) <= 48 for lengths, _ in plan.strategies)
            assert plan.tokens == (hist * np.arange(1, 49)).sum() and plan.packs >= plan.tokens / 48
    assert spfhp(hist, 48, 8).packs <= spfhp(hist, 48, 3).packs


def test_nnlshp_recovers_an_exact_mixture():
    # A histogram made of whole packs (3 x (5, 3), 2 x (8,), 4 x (4, 2, 2)) packs back into them, no padding.
    hist = hist_of([5, 3] * 3 + [8] * 2 + [4, 2, 2] * 4, 8)
    plan = nnlshp(hist, 8, 3)
    assert strategies(plan) == {(5, 3): 3, (8,): 2, (4, 2, 2): 4} and plan.efficiency == 1.0


def test_plan_json_round_trip_and_rejects_bad_plans():
    plan = spfhp(hist_of([6, 5, 4, 1, 1, 9], 10), 10, 3)
    assert Plan.from_json(plan.to_json()) == plan
    data = json.loads(plan.to_json())
    assert data["efficiency"] == plan.efficiency and data["speedup"] == plan.speedup
    with pytest.raises(ValueError, match="packs"):
        Plan.from_json(json.dumps(dict(data, packs=data["packs"] + 1)))
    for bad in ([[[6, 5], 1]], [[[1, 6], 1]], [[[6], 0]], [[[6], 1], [[6], 2]]):
        with pytest.raises(ValueError, match="bad strategy|strategies must be distinct"):
            Plan.from_dict(dict(data, strategies=bad))
    with pytest.raises(ValueError, match="JSON"):
        Plan.from_json("{")
    assert make_plan({(1, 6): 1, (6, 1): 2, (2,): 0}, max_sequence_length=10, max_sequences_per_pack=2,
                     algorithm="x").strategies == (((6, 1), 3),)


def test_histogram_rejects_lengths_out_of_range():
    assert histogram(np.array([1, 3, 3]), 4).tolist() == [1, 0, 2, 0]
    for bad in ([0, 1], [5], [1.5]):
        with pytest.raises(ValueError, match="sequence lengths must be "):
            histogram(np.array(bad), 4)


def test_spfhp_on_wikipedia_matches_the_published_figures(wikipedia):
    started = time.perf_counter()
    plan = spfhp(wikipedia, 512, 12)
    seconds = time.perf_counter() - started
    assert np.array_equal(plan.histogram(), wikipedia)
    assert plan.packs == 8_166_708  # published: 99.604 %, speed-up 1.99340, limit 2.0013
    assert round(100 * plan.efficiency, 3) == 99.604 and round(plan.speedup, 5) == 1.99340
    assert round(plan.speedup_limit, 4) == 2.0013
    shallow = spfhp(wikipedia, 512, 3)  # published: 89.44 %, 9,094,695 packs, speed-up 1.790
    assert shallow.packs == 9_094_695 and round(100 * shallow.efficiency, 2) == 89.44
    assert round(shallow.speedup, 3) == 1.790
    assert seconds < 1.0, seconds  # acceptance 0.1 s (measured 0.02 s); 10x slack for a loaded machine


@pytest.mark.slow
def test_nnlshp_on_wikipedia_matches_the_published_figures(wikipedia):
    started = time.perf_counter()
    solution = nnls_solution(wikipedia, 512, 3)
    seconds = time.perf_counter() - started
    assert len(solution[0]) == 22_102  # every way to fill 512 with 1..3 sequences
    paper = nnlshp(wikipedia, 512, 3, residual="single", solution=solution)
    ours = nnlshp(wikipedia, 512, 3, solution=solution)
    for plan in (paper, ours):
        assert np.array_equal(plan.histogram(), wikipedia)
        assert max(len(lengths) for lengths, _ in plan.strategies) == 3
    # The paper's code, one pack per left-over sequence: its 8,155,059 packs, 99.75 %, speed-up 1.99625. NNLS's
    # real counts are rounded to integers, so a BLAS kernel that sums in another order moves a count or two across an
    # integer: 8,155,059 and 8,155,057 have both been seen with scipy 1.17.1 on 2-core EPYC machines.
    assert abs(paper.packs - 8_155_059) <= 10, paper.packs
    assert round(100 * paper.efficiency, 2) == 99.75 and round(paper.speedup, 4) == 1.9963
    # Packing the left-overs by SPFHP instead saves ~3,300 packs (8,151,706 with scipy 1.17.1's NNLS); 0.1 % leaves
    # room for a solver that rounds a few counts the other way.
    assert abs(ours.packs - 8_155_059) <= 0.001 * 8_155_059, ours.packs
    assert ours.packs < paper.packs and ours.efficiency >= 0.9975
    # Deliberately loose: the acceptance figure is 60 s on 2 cores, but this runs on shared CI machines where
    # other jobs take the cores (17-50 s seen here); the lead measures the figure on an idle machine and
    # records it in MEASUREMENTS.md. This bound only catches a solve gone pathological.
    assert seconds < 600, seconds
    with pytest.raises(ValueError, match="at most 3 sequences per pack with nnlshp .* or use spfhp"):
        nnlshp(wikipedia, 512, 4)  # 959,631 columns: refused with advice, not attempted


def test_nnlshp_feasibility_matches_its_refusal():
    assert nnlshp_feasible(512, 3) and not nnlshp_feasible(512, 4)
    assert nnlshp_feasible(64, 6) and not nnlshp_feasible(64, 7)  # 26,207 and 60,289 strategies
    assert nnlshp_feasible(8, 255) and not nnlshp_feasible(0, 3) and not nnlshp_feasible(64, 0)
    assert (nnlshp_max_per_pack(512), nnlshp_max_per_pack(64), nnlshp_max_per_pack(8)) == (3, 6, 8)
    with pytest.raises(ValueError, match=r"60,289 strategies .*--max-per-pack 6\), or use spfhp"):
        nnlshp(np.zeros(64, np.int64), 64, 7)


# ---------------------------------------------------------------------------------------------------------
# Dealing sequences into packs, and packed arrays
# ---------------------------------------------------------------------------------------------------------


def unpacked(num: int, seq_len: int, max_pred: int, seed: int) -> dict[str, np.ndarray]:
    """Random sequences of every length 1..seq_len in the bert_wiki storage format, [CLS] first, segment 1
    for the second half, about 15 % of the positions predicted (none for the shortest)."""
    rng = np.random.default_rng(seed)
    specs = bert_wiki.feature_specs(seq_len, max_pred)
    out = {name: np.zeros((num, *shape), dtype) for name, (shape, _, dtype, _) in specs.items()}
    for i, length in enumerate(rng.integers(1, seq_len + 1, num)):
        out["input_ids"][i, :length] = rng.integers(bert_wiki.FIRST_WORD_ID, 30000, length)
        out["input_ids"][i, 0] = bert_wiki.CLS_ID
        out["input_mask"][i, :length] = 1
        out["segment_ids"][i, length // 2 : length] = 1
        count = min(max_pred, round(0.15 * length))
        out["masked_lm_positions"][i, :count] = np.sort(rng.permutation(np.arange(1, length))[:count])
        out["masked_lm_ids"][i, :count] = rng.integers(bert_wiki.FIRST_WORD_ID, 30000, count)
        out["masked_lm_weights"][i, :count] = 1.0
        out["next_sentence_labels"][i] = rng.integers(2)
    return out


def assert_unpacks_to(packed: dict, packs: np.ndarray, arrays: dict) -> None:
    """Every pack, read sequence by sequence, gives back the original rows; padding is zero everywhere."""
    used = np.sort(packs[packs >= 0])
    assert np.array_equal(used, np.arange(len(arrays["input_ids"])))  # every sequence exactly once
    for i, row in enumerate(packs):
        for k, j in enumerate(row):
            if j < 0:
                for name in ("nsp_positions", "next_sentence_labels", "nsp_weights"):
                    assert packed[name][i, k] == 0
                continue
            length = int(arrays["input_mask"][j].sum())
            start = int(packed["nsp_positions"][i, k])
            tokens = np.flatnonzero(packed["sequence_ids"][i] == k + 1)
            assert np.array_equal(tokens, start + np.arange(length))
            assert packed["input_ids"][i, start] == arrays["input_ids"][j, 0]  # the sequence's own [CLS]
            assert np.array_equal(packed["input_ids"][i, tokens], arrays["input_ids"][j, :length])
            assert np.array_equal(packed["segment_ids"][i, tokens], arrays["segment_ids"][j, :length])
            assert np.array_equal(packed["position_ids"][i, tokens], np.arange(length))
            mine = np.flatnonzero(packed["masked_lm_sequence"][i] == k + 1)
            real = arrays["masked_lm_weights"][j] != 0
            positions = packed["masked_lm_positions"][i, mine].astype(np.int64) - start
            assert np.array_equal(positions, arrays["masked_lm_positions"][j, real])
            assert np.array_equal(packed["masked_lm_ids"][i, mine], arrays["masked_lm_ids"][j, real])
            assert np.array_equal(packed["masked_lm_weights"][i, mine], arrays["masked_lm_weights"][j, real])
            assert packed["next_sentence_labels"][i, k] == arrays["next_sentence_labels"][j]
            assert packed["nsp_weights"][i, k] == 1
    padding = packed["sequence_ids"] == 0
    for name in ("input_ids", "segment_ids", "position_ids"):
        assert not packed[name][padding].any()
    unused = packed["masked_lm_sequence"] == 0
    for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
        assert not packed[name][unused].any()


@pytest.mark.parametrize("algorithm,depth", [("spfhp", 4), ("nnlshp", 3)])
def test_assign_and_pack_arrays_round_trip(algorithm, depth):
    arrays = unpacked(300, 16, 3, seed=0)
    lengths = arrays["input_mask"].sum(1).astype(np.int64)
    plan = packing.ALGORITHMS[algorithm](histogram(lengths, 16), 16, depth)
    packs = assign(lengths, plan, seed=5)
    assert packs.shape == (plan.packs, depth) and packs.dtype == np.int64
    planned = sorted(strategy for strategy, count in plan.strategies for _ in range(count))
    assert sorted(tuple(lengths[row[row >= 0]]) for row in packs) == planned  # each pack is a strategy
    assert np.array_equal(assign(lengths, plan, seed=5), packs)
    assert not np.array_equal(assign(lengths, plan, seed=6), packs)
    packed = pack_arrays(arrays, packs, depth)
    most = max(int(sum((arrays["masked_lm_weights"][j] != 0).sum() for j in row if j >= 0)) for row in packs)
    assert packed["masked_lm_ids"].shape == (plan.packs, most)  # Q defaults to the fullest pack
    assert packed["input_ids"].shape == (plan.packs, 16) and packed["nsp_weights"].shape == (plan.packs, depth)
    siblings = {"position_ids": "masked_lm_positions", "sequence_ids": "segment_ids",
                "masked_lm_sequence": "segment_ids", "nsp_positions": "masked_lm_positions",
                "nsp_weights": "masked_lm_weights"}  # fmt: skip
    for name in packing.FIELDS:
        assert packed[name].dtype == arrays[siblings.get(name, name)].dtype, name
    assert_unpacks_to(packed, packs, arrays)
    assert pack_arrays(arrays, packs, depth + 2, most + 3)["masked_lm_ids"].shape == (plan.packs, most + 3)
    with pytest.raises(ValueError, match="max_predictions_per_pack"):
        pack_arrays(arrays, packs, depth, most - 1)
    with pytest.raises(ValueError, match="does not fit"):
        assign(lengths[1:], plan, seed=5)


def test_pack_arrays_keeps_in_memory_dtypes_and_rejects_bad_rows():
    arrays = {name: array.astype(np.float32 if name == "masked_lm_weights" else np.int64)
              for name, array in unpacked(20, 16, 3, seed=1).items()}  # fmt: skip
    lengths = arrays["input_mask"].sum(1)
    packs = assign(lengths, spfhp(histogram(lengths, 16), 16, 3), seed=0)
    packed = pack_arrays(arrays, packs, 3)
    assert packed["input_ids"].dtype == np.int64 and packed["nsp_weights"].dtype == np.float32
    assert_unpacks_to(packed, packs, arrays)
    with pytest.raises(ValueError, match="more than 16"):
        pack_arrays(arrays, np.argsort(-lengths)[None, :3], 3)  # the three longest cannot share 16 tokens
    holes = arrays["input_mask"].copy()
    holes[0, 0] = 0
    with pytest.raises(DataError, match="sequence 0: input_mask"):
        pack_arrays(dict(arrays, input_mask=holes), packs, 3)


# ---------------------------------------------------------------------------------------------------------
# The CLI and packed folders
# ---------------------------------------------------------------------------------------------------------

SHAPE = {"seq_len": 32, "vocab_size": 300, "max_pred": 6}


@pytest.fixture
def source(tmp_path):
    bert_wiki.write_synthetic(tmp_path / "src", num_train=240, num_eval=60, seed=0, **SHAPE)
    return tmp_path / "src"


@pytest.mark.parametrize("algorithm", ["spfhp", "nnlshp"])
def test_cli_packs_both_splits_into_a_verified_folder(source, tmp_path, algorithm):
    out = tmp_path / "packed"
    code, stdout, err = run_cli(main, "--algorithm", algorithm, "--max-per-pack", "3", source, out)
    assert code == 0, err
    manifest = verify(out)
    plans = json.loads((out / "plan.json").read_text())
    for split in ("train", "eval"):
        entry, plan = manifest["splits"][split], Plan.from_dict(plans[split])
        assert plan.algorithm == algorithm and plan.packs == entry["count"] and plan.efficiency == entry["efficiency"]
        assert f"{split}: {plan.sequences} sequences in {plan.packs} packs" in stdout
        assert f"efficiency {100 * plan.efficiency:.3f} %" in stdout
        original = {name: np.load(source / split / f"{name}.npy") for name in bert_wiki.feature_specs(32, 6)}
        packed = {name: np.load(out / split / f"{name}.npy") for name in (*packing.FIELDS, "source_index")}
        assert plan.sequences == len(original["input_ids"]) and plan.packs < plan.sequences
        assert_unpacks_to(packed, packed["source_index"], original)
        dataset = PackedDataset(out, split)
        item = dataset[len(dataset) - 1]
        assert len(dataset) == plan.packs and set(item) == set(packing.FIELDS)
        assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (32,)
        assert item["nsp_weights"].dtype == torch.float32 and item["nsp_weights"].shape == (3,)
        assert item["masked_lm_ids"].shape == (manifest["max_predictions_per_pack"],)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "src"]  # no temporary folder left
    again = tmp_path / "again"
    assert run_cli(main, "--algorithm", algorithm, source, again)[0] == 0  # deterministic in its seed
    assert (again / "plan.json").read_bytes() == (out / "plan.json").read_bytes()
    for split, entry in json.loads((again / "manifest.json").read_text())["splits"].items():
        assert entry["arrays"] == manifest["splits"][split]["arrays"]  # same sha256s
    code, stdout, _ = run_cli(main, "--verify", out)
    assert code == 0 and stdout.startswith(f"verify: {out}: train 240 sequences")


def test_cli_bad_input_is_one_line_and_writes_nothing(source, tmp_path):
    out = tmp_path / "packed"
    one_line_error(*run_cli(main, tmp_path / "nothing", out)[::2], "manifest.json is missing")
    one_line_error(*run_cli(main, source)[::2], "give SRC and OUT")
    one_line_error(*run_cli(main, "--max-pred-per-pack", "1", source, out)[::2], "more than --max-pred-per-pack 1")
    one_line_error(*run_cli(main, "--algorithm", "lpfhp", source, out)[::2], "invalid choice")
    out.mkdir()
    one_line_error(*run_cli(main, source, out)[::2], "already exists")
    out.rmdir()
    path = source / "train" / "input_ids.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    one_line_error(*run_cli(main, source, out)[::2], "sha256 differs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_verify_detects_changed_packed_files(source, tmp_path):
    out = tmp_path / "packed"
    assert run_cli(main, "--algorithm", "spfhp", source, out)[0] == 0
    path = out / "eval" / "input_ids.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    one_line_error(*run_cli(main, "--verify", out)[::2], "eval/input_ids.npy: sha256 differs")
    plan = out / "plan.json"
    plan.write_text(plan.read_text().replace('"algorithm": "spfhp"', '"algorithm": "nnlshp"'))
    with pytest.raises(DataError, match="plan.json is missing or its sha256 differs"):
        verify(out)
    with pytest.raises(DataError, match="no split 'test'"):
        PackedDataset(out, "test")


def test_fixed_max_predictions_per_pack(source, tmp_path):
    out = tmp_path / "packed"
    code, stdout, err = run_cli(main, "--algorithm", "spfhp", "--max-pred-per-pack", "40", source, out)
    assert code == 0 and "max 40 predictions per pack" in stdout, err
    manifest = verify(out)
    assert manifest["max_predictions_per_pack"] == 40
    for split in ("train", "eval"):
        assert manifest["splits"][split]["arrays"]["masked_lm_ids"]["shape"][1:] == [40]
        assert PackedDataset(out, split)[0]["masked_lm_weights"].shape == (40,)
        wide, narrow = PackedDataset(out, split, max_predictions_per_pack=48)[3], PackedDataset(out, split)[3]
        for name in packing.PREDICTION_FIELDS:  # padded with zeros up to the asked-for Q
            assert wide[name].shape == (48,) and torch.equal(wide[name][:40], narrow[name])
            assert not wide[name][40:].any()
        assert torch.equal(wide["input_ids"], narrow["input_ids"])
    with pytest.raises(DataError, match="up to 40 masked-LM predictions, more than the 39 asked for"):
        PackedDataset(out, "train", max_predictions_per_pack=39)
    one_line_error(*run_cli(main, "--max-pred-per-pack", "0", source, tmp_path / "zero")[::2],
                   "--max-pred-per-pack must be an integer >= 1")


def edit_manifest(folder, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("plan"), "'plan' must be"),
    (lambda m: m.update(plan="plan.json"), "'plan' must be"),
    (lambda m: m["plan"].update(file="../elsewhere.json"), "'plan' must be"),
    (lambda m: m.pop("splits"), "'splits' must be an object"),
    (lambda m: m.update(splits=[]), "'splits' must be an object"),
    (lambda m: m["splits"].update(train=3), "split 'train' needs integer 'count'"),
    (lambda m: m["splits"]["eval"].update(count="7"), "split 'eval' needs integer 'count'"),
    (lambda m: m["splits"]["train"]["arrays"].update(input_ids=None), "array train/input_ids needs"),
    (lambda m: m["splits"]["train"]["arrays"]["input_ids"].update(shape=[1.5, 32]), "array train/input_ids needs"),
    (lambda m: m["splits"]["train"]["arrays"]["nsp_weights"].pop("file"), "array train/nsp_weights needs"),
    (lambda m: m.update(max_predictions_per_pack=None), "'max_predictions_per_pack' must be an integer >= 0"),
    (lambda m: m.update(max_sequences_per_pack=300), "'max_sequences_per_pack' must be an integer in 1..255"),
    (lambda m: m.update(seq_len=True), "'seq_len' must be an integer >= 1"),
])  # fmt: skip
def test_malformed_manifest_is_one_data_error(source, tmp_path, change, message):
    out = tmp_path / "packed"
    assert run_cli(main, "--algorithm", "spfhp", source, out)[0] == 0
    edit_manifest(out, change)
    for read in (verify, PackedDataset):
        with pytest.raises(DataError, match=message) as caught:
            read(out)
        assert str(caught.value).startswith(str(out / "manifest.json")) and "\n" not in str(caught.value)
    one_line_error(*run_cli(main, "--verify", out)[::2], message)


def test_verify_and_dataset_reject_a_listed_file_that_is_not_an_array(source, tmp_path):
    out = tmp_path / "packed"
    assert run_cli(main, "--algorithm", "spfhp", source, out)[0] == 0
    edit_manifest(out, lambda m: m["splits"]["train"]["arrays"].pop("segment_ids"))
    with pytest.raises(DataError, match="split 'train' lists no array 'segment_ids'"):
        PackedDataset(out, "train")
    (out / "plan.json").write_text("[]")
    edit_manifest(out, lambda m: m["plan"].update(sha256=sha256_file(out / "plan.json")))
    with pytest.raises(DataError, match="plan.json: must be an object of plans by split"):
        verify(out)
    (out / "eval" / "input_ids.npy").write_text("not an array")
    with pytest.raises(DataError, match="eval/input_ids.npy: not a .npy array"):
        PackedDataset(out, "eval")


def test_cli_module_entry_point(tmp_path):
    result = run_module("mlperf_submission.common.data.packing", "--verify", tmp_path / "none", timeout=120)
    one_line_error(result.returncode, result.stderr, "manifest.json is missing")


def test_make_data_runs_the_packing_cli_when_pack_is_set():
    def dry_run(*variables) -> str:  # the command with its white space collapsed (unset options leave gaps)
        return " ".join(subprocess.run(["make", "-n", "data", *variables], cwd=REPO, capture_output=True, text=True,
                                       timeout=60, check=True).stdout.split())  # fmt: skip

    packed = dry_run("BENCH=bert", "PACK=spfhp", "SRC=conv", "OUT=packed", "MAX_PER_PACK=12")
    assert "-m mlperf_submission.common.data.packing --algorithm spfhp --max-per-pack 12 conv packed" in packed
    fixed = dry_run("BENCH=bert", "PACK=nnlshp", "SRC=conv", "OUT=packed", "MAX_PRED_PER_PACK=80")
    assert "--algorithm nnlshp --max-pred-per-pack 80 conv packed" in fixed
    converted = dry_run("BENCH=bert", "SRC=train/part-*", "EVAL=eval_10k", "OUT=conv")
    assert "-m mlperf_submission.common.data.bert_wiki convert" in converted and "packing" not in converted
