"""The package on a machine without network (README "On a GPU"): its wheels made here, checked there.

    python -m mlperf_submission.bench.offline wheels [--out .whl] [--python-version 3.12]
        [--platform manylinux_2_28_x86_64] [--preinstalled numpy pillow ...]      (`make wheels`)
    python -m mlperf_submission.bench.offline check                            (after the offline install)

`wheels` (where there is network) writes into one folder every runtime dependency of setup.cfg except torch
(and those named by --preinstalled) as wheels for the named Python and platform, a dependency the registry
has only as source (tfrecord) built here as a pure-Python wheel, and the package's own wheel. On the
machine without network, with its own (CUDA) torch preinstalled:

    python3 -m pip install --no-index --no-deps --target .pkgs .whl/*.whl
    PYTHONPATH=$PWD/.pkgs python3 -m mlperf_submission.bench.offline check

`check` prints one line: the torch found and the range this package supports (setup.cfg's `offline`
extra), or which dependencies are missing (exit 2).
"""

from __future__ import annotations

import configparser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

from ..common.cli import ArgumentParser, UserError, atomic_dir, entry_point

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "mlperf-submission"


def runtime_requirements(setup_cfg: Path) -> list[Requirement]:
    """install_requires of setup.cfg, comments left out."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser["options"]["install_requires"].splitlines()
    return [Requirement(line) for line in (x.split("#")[0].strip() for x in lines) if line]


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def platforms(platform: str) -> list[str]:
    """`platform` and every older tag a machine of it runs: pip takes a --platform literally, so that
    manylinux_2_28 alone would miss a wheel tagged only manylinux2014 (= manylinux_2_17)."""
    tag = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if tag is None:
        return [platform]
    glibc, arch = int(tag[1]), tag[2]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return [f"manylinux_2_{m}_{arch}" for m in range(glibc, 4, -1)] + [
        f"{name}_{arch}" for m, name in legacy.items() if m <= glibc]


def fetch(requirement: Requirement, folder: Path, python_version: str, platform: str) -> str:
    """The wheel of `requirement` for (python_version, platform) into `folder`; a distribution the registry
    has only as source is built here, and must then be pure Python (the target could not run a binary made
    for this machine). -> how it was got."""
    abi = "cp" + python_version.replace(".", "")
    got = pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
              "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
              *(arg for tag in platforms(platform) for arg in ("--platform", tag)), "--dest", str(folder),
              str(requirement))
    if got.returncode == 0:
        return "downloaded"
    with tempfile.TemporaryDirectory() as built:
        made = pip("wheel", "--no-deps", "--no-binary=:all:", "--wheel-dir", built, str(requirement))
        wheel = next(Path(built).glob("*.whl"), None)
        if made.returncode != 0 or wheel is None:
            raise UserError(f"no wheel of {requirement} for {abi} {platform}, and building one failed: "
                            f"{(made.stderr.strip().splitlines() or ['?'])[-1]}")
        if not wheel.name.endswith("-none-any.whl"):
            raise UserError(f"{requirement} has no {abi} {platform} wheel and builds only as {wheel.name}: "
                            "build it on a machine like the target")
        wheel.rename(folder / wheel.name)
    return "built here (pure Python)"


def own_wheel(folder: Path) -> None:
    """The package's wheel into `folder`, built offline from a copy of the checkout's sources: an in-place
    build would take modules deleted since an earlier build from its stale build/lib."""
    skip = shutil.ignore_patterns(".git", ".venv", "out", "build", ".whl", "*.egg-info", "__pycache__", ".*_cache")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(ROOT, source, ignore=skip, symlinks=True)
        # No build isolation and no index: setuptools and wheel of this environment (make setup) build it.
        own = pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(folder), str(source))
    if own.returncode != 0:
        raise UserError(f"building the package's wheel failed: {(own.stderr.strip().splitlines() or ['?'])[-1]}")


def make_wheels(out: Path, python_version: str, platform: str, preinstalled: list[str]) -> None:
    skip = {"torch", *(name.lower().replace("_", "-") for name in preinstalled)}
    wanted = [r for r in runtime_requirements(ROOT / "setup.cfg") if r.name.lower() not in skip]
    with atomic_dir(out) as folder:
        for requirement in wanted:
            print(f"wheels: {requirement}: {fetch(requirement, folder, python_version, platform)}", flush=True)
        own_wheel(folder)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wheels: {len(list(out.glob('*.whl')))} wheels, {size / 2**20:.2f} MiB in {out} "
          f"(left out: {', '.join(sorted(skip))})")


def supported_torch(requires: list[str]) -> Requirement:
    """The `offline` extra's torch requirement: the range of torch versions this package supports."""
    for text in requires:
        r = Requirement(text)
        if r.name == "torch" and r.marker is not None and r.marker.evaluate({"extra": "offline"}):
            return Requirement(f"torch{r.specifier}")
    raise UserError(f"{DISTRIBUTION} declares no torch range (the `offline` extra of setup.cfg)")


def missing(requires: list[str], installed: dict[str, str | None]) -> list[str]:
    """Names of the runtime requirements (no extra's) that `installed` (name -> version or None) lacks."""
    runtime = [Requirement(t) for t in requires]
    return [r.name for r in runtime if r.marker is None and r.name != "torch" and installed.get(r.name) is None]


def version_of(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check() -> str:
    """The one line of `check`; UserError when a dependency is missing or torch is outside the range."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"{DISTRIBUTION} is not installed here: install .whl/*.whl with --target and put that "
                        "folder on PYTHONPATH") from None
    names = {r.name for r in map(Requirement, requires) if r.marker is None}
    installed = {name: version_of(name) for name in names}
    lacking = missing(requires, installed)
    if lacking:
        raise UserError(f"missing: {', '.join(lacking)}: not preinstalled and no wheel of it was installed "
                        "(make wheels without them in PREINSTALLED, where there is network)")
    torch_range, torch_version = supported_torch(requires), version_of("torch")
    if torch_version is None or not torch_range.specifier.contains(torch_version, prereleases=True):
        raise UserError(f"torch {torch_version or 'not installed'}: this package supports {torch_range}")
    supported = ",".join(sorted(map(str, torch_range.specifier), reverse=True))  # ">=2.11,<2.14"
    return f"offline: ready: torch {torch_version} (supported: {supported}), " + ", ".join(
        f"{name} {installed[name]}" for name in sorted(names) if name != "torch")


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mlperf_submission.bench.offline", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheels", help="write the wheel folder (needs network)")
    w.add_argument("--out", type=Path, default=Path(".whl"))
    w.add_argument("--python-version", default="3.12", help="the target's Python, e.g. 3.12")
    w.add_argument("--platform", default="manylinux_2_28_x86_64", help="the target's pip platform tag")
    w.add_argument("--preinstalled", nargs="*", default=[], help="distributions the target already has")
    sub.add_parser("check", help="on the target, after the offline install: every dependency there?")
    args = p.parse_args(argv)
    if args.command == "wheels":
        make_wheels(args.out, args.python_version, args.platform, args.preinstalled)
    else:
        print(check())
    return 0


if __name__ == "__main__":
    sys.exit(main())
