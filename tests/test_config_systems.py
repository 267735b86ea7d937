"""Configs (presets, typed overrides) and system descriptions."""

from __future__ import annotations

import json

import pytest

from mlperf_submission.closed.resnet import presets
from mlperf_submission.common import config
from mlperf_submission.common.cli import UserError
from mlperf_submission.compliance.tools import check_system
from mlperf_submission.systems import FIELDS, describe_local, load
from mlperf_submission.systems.__main__ import main as systems_main


def test_override_converts_to_the_field_type():
    cfg = config.override(presets.smoke(), ["global_batch_size=64", "opt_base_learning_rate=1.5",
                                            "channels_last=true", "precision=bf16"])
    assert (cfg.global_batch_size, cfg.opt_base_learning_rate, cfg.channels_last, cfg.precision) == (
        64, 1.5, True, "bf16")


@pytest.mark.parametrize("assignment,message", [
    ("no_such_field=1", "has no field"), ("global_batch_size=big", "expected int"),
    ("precision=fp8", "choose one of"), ("channels_last=maybe", "true or false"), ("global_batch_size", "form"),
])
def test_bad_overrides_are_rejected(assignment, message):
    with pytest.raises(UserError, match=message):
        config.override(presets.smoke(), [assignment])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="smoke"):
        config.select(presets.PRESETS, "huge")


def test_describe_prints_every_field():
    text = config.describe(presets.smoke())
    assert text.count("\n") + 1 == len(presets.ResNetConfig.__dataclass_fields__)


def test_local_description_has_every_field_and_passes_the_official_checker(tmp_path):
    system = describe_local(org="DEMO", system_name="demo", division="closed")
    assert tuple(system) == FIELDS and len(FIELDS) == 33
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(system))
    assert check_system(path) == (True, [])


@pytest.mark.parametrize("name", ["1xH200", "ipu-pod16"])
def test_example_systems_load_and_pass(name):
    stem, system = load(name)
    assert stem == name and system["division"] == "closed"
    from mlperf_submission.systems import HERE

    assert check_system(HERE / f"{name}.json")[0]


def test_load_rejects_bad_descriptions(tmp_path):
    with pytest.raises(UserError, match="no system description"):
        load("nonexistent-system")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(UserError, match="not valid JSON"):
        load(bad)
    bad.write_text(json.dumps(dict.fromkeys(FIELDS, "") | {"division": "closed", "number_of_nodes": "8x"}))
    with pytest.raises(UserError, match="integer string"):
        load(bad)
    bad.write_text(json.dumps({"submitter": "x"}))
    with pytest.raises(UserError, match="missing field"):
        load(bad)


def test_describe_command_writes_once(tmp_path, capsys):
    out = tmp_path / "me.json"
    assert systems_main(["describe", "--out", str(out), "--org", "ACME"]) == 0
    assert json.loads(out.read_text())["submitter"] == "ACME"
    assert systems_main(["describe", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
