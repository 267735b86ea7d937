"""The package's layers, read from the files alone: common/ imports nothing above it, no two files import each
other in a circle, and one registry of benchmarks (benchmarks.py) is the only place that names them.

Every import at any depth counts (function-level ones too), absolute `mlperf_submission.x` and explicit
relative `from ..x import y` alike, each resolved to the file it names from the importing file's path."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
from pathlib import Path

import pytest

from mlperf_submission import benchmarks
from mlperf_submission.common.cli import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mlperf_submission"
SKIP = {"tests", ".venv", "out", "build", ".git", ".pkgroot"}
# What each layer may not import: common/ sits below the benchmarks, the registry, systems/ and the tools.
ABOVE = {"common": ("closed", "open", "compliance", "bench", "systems", "benchmarks"),
         "closed": ("open", "compliance", "bench", "benchmarks"),
         "open": ("compliance", "bench", "benchmarks")}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root (root itself being the package)."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIP)  # not into .venv's thousands of files
        for file in sorted(n for n in names if n.endswith(".py")):
            parts = (Path(folder) / file).relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join((PACKAGE, *parts))] = Path(folder) / file
    return files


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that the file `path` (module `name`) imports anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(dotted: str) -> str | None:  # the longest prefix that is a module: x.y.func -> x.y
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            full = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            if full == PACKAGE or full.startswith(f"{PACKAGE}."):
                found |= {resolve(f"{full}.{a.name}") or resolve(full) for a in node.names}
    return found - {None, name}


def graph(root: Path) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imported(name, path, modules) for name, path in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle (a, b, ..., a) through each group of modules that import each other (Tarjan's components)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):  # recursion depth is the import chain's length: a few dozen files
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while (w := stack.pop()) != v:
                on.discard(w)
                group.add(w)
            on.discard(v)
            if group:
                found.append(_walk(v, group | {v}, edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _walk(start: str, group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A path start -> ... -> start inside one group (breadth first, so the shortest)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in no circle")


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs if layer(b) in ABOVE.get(layer(a), ()))


@pytest.fixture(scope="module")
def edges():
    return graph(ROOT)


def test_common_imports_nothing_above_it_and_closed_nothing_of_open(edges):
    assert not upward(edges), "imports from a layer into one above it:\n" + "\n".join(upward(edges))
    assert any(layer(b) == "closed" for b in edges[f"{PACKAGE}.benchmarks"])  # the resolver sees real edges


def test_no_two_files_import_each_other_in_a_circle(edges):
    found = circles(edges)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_relative_and_function_level_imports_are_followed(tmp_path):
    for folder in ("common", "closed/bert"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "common/shapes.py").write_text("def f():\n    from ..closed.bert import model\n")
    (tmp_path / "closed/bert/model.py").write_text("from mlperf_submission.closed.bert.loss import g\n")
    (tmp_path / "closed/bert/loss.py").write_text("from . import model\n\ng = 1\n")
    found = graph(tmp_path)
    assert upward(found) == [f"{PACKAGE}.common.shapes -> {PACKAGE}.closed.bert.model"]
    assert circles(found) == [[f"{PACKAGE}.closed.bert.loss", f"{PACKAGE}.closed.bert.model",
                               f"{PACKAGE}.closed.bert.loss"]]


def test_the_registry_knows_every_preset_and_trainer():
    for (division, name), bench in benchmarks.REGISTRY.items():
        assert bench is benchmarks.get(division, name)
        assert importlib.util.find_spec(bench.trainer) is not None, bench.trainer
        for preset in bench.presets:
            assert benchmarks.accelerators(preset) >= 1, (division, name, preset)
            assert bench.config(preset) == bench.presets[preset]()
    with pytest.raises(UserError, match="the open-division gpt3 benchmark is not in this version"):
        benchmarks.get("open", "gpt3")


def test_nothing_else_imports_a_module_by_a_built_name():
    calls = [str(p.relative_to(ROOT)) for p in module_files(ROOT).values() if "import_module(" in p.read_text()]
    assert calls == [], calls


def test_inside_the_package_every_import_of_it_is_relative_and_names_a_file():
    """The import style: explicit relative imports (as mlcommons/logging writes them), which a reader's tools
    resolve from the paths alone, where `mlperf_submission.x` resolves only through the install's import hook
    (the repository root is the package). So the graph above is complete: every edge names a file here."""
    modules = module_files(ROOT)
    absolute, unresolved = [], []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
                absolute.append(where)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
                absolute.append(where)
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                full = f"{base}.{node.module}" if node.module else base
                if full not in modules:
                    unresolved.append(f"{where} {full}")
    assert absolute == [] and unresolved == [], (absolute, unresolved)


def test_setup_cfg_lists_every_package():
    """A folder with an __init__.py that setup.cfg does not list is left out of the wheel (`make wheels`)."""
    cfg = configparser.ConfigParser()
    cfg.read_string((ROOT / "setup.cfg").read_text())
    listed = set(cfg["options"]["packages"].split())
    found = {name for name, path in module_files(ROOT).items() if path.name == "__init__.py"}
    assert found == listed, (sorted(found - listed), sorted(listed - found))
