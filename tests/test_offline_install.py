"""README "On a GPU"'s offline install, run here with the network refused: the package's wheel installed with
`pip install --no-index --no-deps --target DIR` over the torch and dependencies already installed (as on a GPU
machine whose CUDA torch is preinstalled), then, from that copy alone: `offline check`, every module imported,
gpu-check's one-line skip, and one epoch of the smoke ResNet run. The wheel is built here, offline, from
this checkout (CI has network but must not use it for this). About a minute on 2 busy cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlperf_submission.bench import offline

# Any connection pip might try goes to a closed local port; --no-index and --isolated keep it off every index
# and out of the machine's pip configuration.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "PIP_NO_INDEX": "1"}
IMPORT_ALL = """
import importlib, pkgutil, sys
import mlperf_submission
names = [m.name for m in pkgutil.walk_packages(mlperf_submission.__path__, "mlperf_submission.")]
for name in names:
    module = importlib.import_module(name)
    assert module.__file__.startswith(sys.argv[1]), (name, module.__file__)
print(len(names), "modules")
"""


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.mark.slow
def test_the_offline_install_over_the_installed_torch_runs_from_its_own_copy(tmp_path, monkeypatch):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH"))} | NO_NETWORK | {
        "OMP_NUM_THREADS": "1"}  # tiny shapes; a busy 2-core machine
    wheels, target = tmp_path / "whl", tmp_path / "pkgs"
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)
    offline.own_wheel(wheels)  # what `make wheels` adds last, built offline
    run([sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--no-deps", "--target", str(target),
         *map(str, wheels.glob("*.whl"))], tmp_path, base)
    env = base | {"PYTHONPATH": str(target)}
    assert run([sys.executable, "-m", "mlperf_submission.bench.offline", "check"], tmp_path, env).startswith(
        "offline: ready: torch ")
    assert int(run([sys.executable, "-c", IMPORT_ALL, str(target)], tmp_path, env).split()[0]) > 50
    skip = run([sys.executable, "-m", "mlperf_submission.bench.gpu_check", "--budget", "60"], tmp_path, env)
    assert skip.startswith("gpu-check: skipped, no GPU") and skip.count("\n") == 1
    log = tmp_path / "result_0.txt"
    out = run([sys.executable, "-m", "mlperf_submission.closed.resnet.train", "--preset", "smoke", "--seed", "1",
               "--system", "1xH200", "--result-log", str(log), "--set", "max_epochs=1", "--set", "eval_offset=1"],
              tmp_path, env)
    # One epoch: the first eval after epoch 1 (eval_offset), where max_epochs stops the run if not converged
    assert "epoch   1: loss" in out and "run_stop: " in out and ":::MLLOG" in log.read_text()


REQUIRES = ["torch==2.13.0", "numpy==2.4.6", "crc32c==2.9.post0", "pytest==9.2.0; extra == \"dev\"",
            "torch<2.14,>=2.11; extra == \"offline\""]


def test_check_names_what_is_missing_and_reads_the_torch_range_of_the_offline_extra():
    assert offline.missing(REQUIRES, {"numpy": "2.5.0", "crc32c": None, "torch": None}) == ["crc32c"]
    assert offline.missing(REQUIRES, {"numpy": "2.5.0", "crc32c": "2.9"}) == []  # pins are make setup's, not here
    torch_range = offline.supported_torch(REQUIRES)
    assert torch_range.specifier.contains("2.11.0+cu130") and torch_range.specifier.contains("2.13.0+cpu")
    assert not torch_range.specifier.contains("2.10.1") and not torch_range.specifier.contains("2.14.0")
    with pytest.raises(offline.UserError, match="declares no torch range"):
        offline.supported_torch(REQUIRES[:4])


def test_the_wheel_folder_takes_every_runtime_requirement_of_setup_cfg():
    names = [r.name for r in offline.runtime_requirements(offline.ROOT / "setup.cfg")]
    assert {"torch", "mlperf-logging", "tfrecord", "crc32c", "simplejpeg"} <= set(names)
    assert "pytest" not in names and "transformers" not in names  # extras stay out


def test_a_platform_takes_the_older_manylinux_tags_it_runs():
    tags = offline.platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and tags[-1] == "manylinux1_x86_64"
    assert "manylinux2014_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    assert offline.platforms("win_amd64") == ["win_amd64"]
