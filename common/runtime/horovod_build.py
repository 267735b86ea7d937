"""Build Horovod 0.28.1 (PyTorch, gloo, and NCCL for CUDA tensors where torch is a CUDA build; no MPI,
TensorFlow or MXNet) from its source release into this venv.

    make horovod        # = pip install -e '.[horovod]' (cmake and Horovod's own dependencies, pinned),
                        #   then: python -m mlperf_submission.common.runtime.horovod_build [--jobs N]

Horovod 0.28.1, its newest release, compiles its C++ at C++14 (and its bundled gloo at C++11), and
PyTorch 2.1+ headers stop with `#error C++17 or later compatible compiler is required to use PyTorch`
(upstream horovod issue 3996, fixed on master, never released). This downloads the source release with
pip, sets C++17 in the three places that need it (the root and torch-plugin CMakeLists, and gloo's
`-std=c++11`; the torch plugin alone fails to link on a duplicate `gloo::rendezvous::Store::kDefaultTimeout`),
and builds it with pip into the running interpreter's environment. Where this torch is a CUDA build, it
also builds Horovod's NCCL operations (HOROVOD_GPU_OPERATIONS=NCCL, with the CUDA toolkit of the nvcc on
PATH and NCCL from HOROVOD_NCCL_HOME or the system's), then checks `hvd.nccl_built()`; a CPU-only torch
gets gloo alone. On a busy 2-core CPU the build takes 3 to 7 minutes (more while other jobs share the
cores). Optional: nothing else needs Horovod.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ..cli import ArgumentParser, UserError, entry_point

VERSION = "0.28.1"

# (file, text that must occur exactly once, its replacement)
CXX17_PATCHES = (
    ("CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)", "set(CMAKE_CXX_STANDARD 17)"),
    ("horovod/torch/CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)", "set(CMAKE_CXX_STANDARD 17)"),
    ("third_party/gloo/CMakeLists.txt", "-std=c++11 -fPIC", "-std=c++17 -fPIC"),
)

BUILD_ENV = {
    "HOROVOD_WITH_PYTORCH": "1",
    "HOROVOD_WITHOUT_TENSORFLOW": "1",
    "HOROVOD_WITHOUT_MXNET": "1",
    "HOROVOD_WITH_GLOO": "1",
    "HOROVOD_WITHOUT_MPI": "1",
}


def patch_cxx17(source: Path) -> None:
    """Set C++17 in Horovod's source tree, in place. Every text is checked before any file is written,
    so a source that differs from 0.28.1 is refused untouched."""
    texts = {}
    for name, old, _ in CXX17_PATCHES:
        path = source / name
        text = texts.get(name) or (path.read_text() if path.is_file() else "")
        if text.count(old) != 1:
            raise UserError(f"{path}: expected {old!r} exactly once (is this Horovod {VERSION}'s source?)")
        texts[name] = text
    for name, old, new in CXX17_PATCHES:
        texts[name] = texts[name].replace(old, new)
    for name, text in texts.items():
        (source / name).write_text(text)


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, **kwargs).returncode != 0:
        raise UserError(f"`{' '.join(cmd[:4])} ...` failed (its output is above)")


def gpu_env(torch_cuda: str | None, nvcc: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """The variables that build Horovod's CUDA operations: NCCL all-reduce, broadcast and all-gather of CUDA
    tensors (without them, the first broadcast of a CUDA tensor fails). Only where this torch is a CUDA build
    (`torch.version.cuda`); then nvcc must be there too, as Horovod compiles CUDA kernels of its own.
    HOROVOD_GPU_OPERATIONS already set in the environment is the caller's choice and is kept ("" builds
    without them). Nothing for a CPU-only torch: gloo alone, as before."""
    if "HOROVOD_GPU_OPERATIONS" in env or torch_cuda is None:
        return {}
    if nvcc is None:
        raise UserError(f"this torch is built for CUDA {torch_cuda}, but there is no nvcc on PATH to build Horovod's "
                        f"CUDA operations: install the CUDA {torch_cuda} toolkit (or put its bin/ on PATH), or "
                        "build without them: `HOROVOD_GPU_OPERATIONS= make horovod`")
    extra = {"HOROVOD_GPU_OPERATIONS": "NCCL"}
    if "HOROVOD_CUDA_HOME" not in env:
        extra["HOROVOD_CUDA_HOME"] = str(Path(nvcc).resolve().parent.parent)  # <toolkit>/bin/nvcc
    return extra


def build_env(jobs: int) -> dict[str, str]:
    import torch  # the extension must match this torch's build, CUDA or not

    env = os.environ | BUILD_ENV | {"MAKEFLAGS": f"-j{jobs}"}  # Horovod's default is -j8, whatever the cores
    env |= gpu_env(torch.version.cuda, shutil.which("nvcc"), env)
    # Prefer the cmake that the `horovod` extra pins into this environment: cmake 4 refuses gloo's old
    # cmake_minimum_required.
    cmake = Path(sys.executable).parent / "cmake"
    if cmake.is_file():
        env["HOROVOD_CMAKE"] = str(cmake)
    elif shutil.which("cmake") is None:
        raise UserError("no cmake: install the extra first (`pip install -e '.[horovod]'`, done by `make horovod`)")
    return env


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.common.runtime.horovod_build", description=__doc__)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    args = p.parse_args(argv)
    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise UserError("no C++ compiler: install one (Debian: apt-get install g++)")
    env = build_env(args.jobs)
    with tempfile.TemporaryDirectory(prefix="horovod-build.") as tmp:
        tmp = Path(tmp)
        run([sys.executable, "-m", "pip", "download", f"horovod=={VERSION}", "--no-binary", ":all:", "--no-deps",
             "--no-build-isolation", "--dest", str(tmp)])
        archive = tmp / f"horovod-{VERSION}.tar.gz"
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        source = tmp / f"horovod-{VERSION}"
        patch_cxx17(source)
        # No build isolation: the extension must compile against the torch installed here.
        run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-cache-dir",
             "--verbose", str(source)], env=env)
    check = ("import horovod, horovod.torch as hvd, torch; assert hvd.gloo_built() and not hvd.mpi_built(); "
             "print('horovod', horovod.__version__, 'with gloo, for torch', torch.__version__)")
    if env.get("HOROVOD_GPU_OPERATIONS") == "NCCL":
        check += "; assert hvd.nccl_built(), 'no NCCL operations'; print('with NCCL', hvd.nccl_built())"
    run([sys.executable, "-c", check])
    return 0


if __name__ == "__main__":
    sys.exit(main())
