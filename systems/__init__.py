"""System descriptions: the 33-field JSON files that MLPerf Training v1.1 submissions carry.

    python -m mlperf_submission.systems describe --out systems/mybox.json [--org ORG] [--division closed]

writes a description of this machine (CPU model, cores, memory, OS, accelerators, torch version).
The JSON files in this folder are examples to copy and edit; `load(name)` finds one by name or path.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from ..common.system import FIELDS, FOLDER, load

HERE = FOLDER
__all__ = ["DEMO_NOTE", "FIELDS", "HERE", "describe_local", "load"]  # FIELDS and load: common/system.py

DEMO_NOTE = "DEMONSTRATION on built-in synthetic data at a scaled size: not a valid MLPerf result"


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
