"""A system description: the 33-field JSON file that MLPerf Training v1.1 submissions carry, validated and
loaded by path or by the name of one shipped in the repository's systems/ folder (data read from here;
systems/ itself, with its generator of a local description, sits above common/ and imports this)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .cli import UserError

FOLDER = Path(__file__).resolve().parents[1] / "systems"

# The fields the v1.1 system description checker requires, in the order the published files use.
FIELDS = (
    "submitter", "division", "status", "system_name", "number_of_nodes", "host_processors_per_node",
    "host_processor_model_name", "host_processor_core_count", "host_processor_vcpu_count",
    "host_processor_frequency", "host_processor_caches", "host_processor_interconnect",
    "host_memory_capacity", "host_storage_type", "host_storage_capacity", "host_networking",
    "host_networking_topology", "host_memory_configuration", "accelerators_per_node",
    "accelerator_model_name", "accelerator_host_interconnect", "accelerator_frequency",
    "accelerator_on-chip_memories", "accelerator_memory_configuration", "accelerator_memory_capacity",
    "accelerator_interconnect", "accelerator_interconnect_topology", "cooling", "hw_notes", "framework",
    "other_software_stack", "operating_system", "sw_notes",
)
# The result summarizer computes int() of these.
INTEGER_FIELDS = ("number_of_nodes", "host_processors_per_node", "accelerators_per_node")


def validate(system: Any, source: str) -> dict:
    if not isinstance(system, dict):
        raise UserError(f"{source}: a system description must be a JSON object")
    missing = [f for f in FIELDS if f not in system]
    if missing:
        raise UserError(f"{source}: missing field(s) {', '.join(missing)}: all 33 fields are required")
    for field in INTEGER_FIELDS:
        if not re.fullmatch(r"\d+", str(system[field])):
            raise UserError(f"{source}: {field} must be an integer string such as \"1\", not {system[field]!r}")
    if system["division"] not in ("closed", "open"):
        raise UserError(f"{source}: division must be \"closed\" or \"open\", not {system['division']!r}")
    return system


def load(name_or_path: str | os.PathLike) -> tuple[str, dict]:
    """(file stem, description) of a system JSON given as a path or as a name in the systems/ folder."""
    path = Path(name_or_path)
    if not path.suffix:
        candidate = FOLDER / f"{path.name}.json"
        path = candidate if candidate.exists() else path.with_suffix(".json")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in FOLDER.glob("*.json")))
        raise UserError(f"no system description {str(name_or_path)!r}: give a JSON path or one of {known}")
    try:
        system = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return path.stem, validate(system, str(path))
