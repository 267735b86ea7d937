"""System descriptions: the 33-field JSON files that MLPerf Training v1.1 submissions carry.

    python -m mlperf_submission.systems describe --out systems/mybox.json [--org ORG] [--division closed]

writes a description of this machine (CPU model, cores, memory, OS, accelerators, torch version).
The JSON files in this folder are examples to copy and edit; `load(name)` finds one by name or path.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

from mlperf_submission.common.cli import UserError

HERE = Path(__file__).resolve().parent

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
DEMO_NOTE = "DEMONSTRATION on built-in synthetic data at a scaled size: not a valid MLPerf result"


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
    """(file stem, description) of a system JSON given as a path or as a name in this folder."""
    path = Path(name_or_path)
    if not path.suffix:
        candidate = HERE / f"{path.name}.json"
        path = candidate if candidate.exists() else path.with_suffix(".json")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in HERE.glob("*.json")))
        raise UserError(f"no system description {str(name_or_path)!r}: give a JSON path or one of {known}")
    try:
        system = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return path.stem, validate(system, str(path))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        return f"{kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        return ""


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
        return re.search(r'PRETTY_NAME="?([^"\n]+)', text).group(1)
    except (OSError, AttributeError):
        return f"{platform.system()} {platform.release()}"


def describe_local(*, org: str, system_name: str, division: str, status: str = "research",
                   notes: str = "") -> dict:
    """A description of this machine with every field the checker requires."""
    import torch

    cores = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = torch.cuda.get_device_properties(0) if gpus else None
    system = dict.fromkeys(FIELDS, "")
    system.update({
        "submitter": org,
        "division": division,
        "status": status,
        "system_name": system_name,
        "number_of_nodes": "1",
        "host_processors_per_node": "1",
        "host_processor_model_name": _cpu_model(),
        "host_processor_core_count": str(cores),
        "host_processor_vcpu_count": str(cores),
        "host_memory_capacity": _memory(),
        "accelerators_per_node": str(gpus),
        "accelerator_model_name": gpu.name if gpu else "",
        "accelerator_memory_capacity": f"{gpu.total_memory / 2**30:.0f} GiB" if gpu else "",
        "cooling": "air",
        "hw_notes": notes,
        "framework": f"PyTorch {torch.__version__}",
        "other_software_stack": f"Python {platform.python_version()}",
        "operating_system": _os_name(),
        "sw_notes": notes,
    })
    return system
