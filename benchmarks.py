"""The benchmarks of this package by division: the one place that names their modules.

Whatever takes a benchmark and a division as words (the compliance drivers, `make bench`, the memory command)
asks here for its presets, its validator, what its division changes, the module that trains it and the
accelerators each preset is sized for. The imports are plain ones, so that a reader's tools follow them;
nothing under common/, closed/ or open/ imports this module (tests/test_layering.py holds them to it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .closed.bert import presets as closed_bert
from .closed.resnet import presets as closed_resnet
from .common import config
from .common.cli import UserError
from .open.bert import presets as open_bert
from .open.resnet import presets as open_resnet

# The accelerators (GPUs, or IPUs for pod16) whose ranks each preset's global batch is divided over: the
# 8 of 8xA100. Every preset of every benchmark is listed (a test checks it).
ACCELERATORS = {"smoke": 1, "1xH200": 1, "8xA100": 8, "pod16": 16, "pod16-graphcore": 16}


@dataclass(frozen=True)
class Benchmark:
    division: str
    name: str
    presets: Mapping[str, Callable[[], Any]]   # preset name -> the function that returns its config
    validate: Callable[[Any], None]            # the division's rules: UserError naming what breaks them
    about: str                                 # the presets module's docstring: what this variant is
    trainer: str                               # the module `python -m` runs to train one run

    def config(self, preset: str, overrides=()) -> Any:
        """The preset's config with `field=value` overrides, unvalidated (the trainer validates)."""
        return config.override(config.select(self.presets, preset), list(overrides))


def _benchmark(division: str, name: str, presets: ModuleType) -> Benchmark:
    validate = presets.validate_closed if division == "closed" else presets.validate_open
    return Benchmark(division=division, name=name, presets=presets.PRESETS, validate=validate,
                     about=presets.__doc__ or "", trainer=f"{presets.__package__}.train")


REGISTRY = {(b.division, b.name): b for b in (
    _benchmark("closed", "resnet", closed_resnet), _benchmark("closed", "bert", closed_bert),
    _benchmark("open", "resnet", open_resnet), _benchmark("open", "bert", open_bert))}


def get(division: str, benchmark: str) -> Benchmark:
    """The benchmark, or one line saying this version has none by that division and name."""
    if (division, benchmark) not in REGISTRY:
        raise UserError(f"the {division}-division {benchmark} benchmark is not in this version")
    return REGISTRY[division, benchmark]


def accelerators(preset: str) -> int:
    """The accelerators a preset is sized for (8xA100: 8)."""
    return ACCELERATORS[preset]
