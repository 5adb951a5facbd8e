"""The package's import graph: every module imports on its own, and no two modules import each other.

A circular import shows up only for some import orders (the module imported first wins), so a suite
that imports everything in one process can hide it: ``from data2vec_hf.pretraining.text_data import
TextCollator`` used to fail in a fresh interpreter while every test passed. Here each module is imported
in a child process whose ``sys.modules`` holds no ``data2vec_hf`` module yet (forked from a parent that
has loaded only the heavy third-party libraries, so that 80 imports take seconds, not minutes), and the
static graph of *all* imports (function-level and ``TYPE_CHECKING`` ones included) must have no cycle.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import multiprocessing
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_modules() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the installed package (setup.cfg's folders)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    folders = {}
    for line in config["options"]["package_dir"].strip().splitlines():
        package, folder = (part.strip() for part in line.split("="))
        folders[package] = ROOT / folder
    modules = {}
    for package in config["options"]["packages"].split():
        top = max((p for p in folders if package == p or package.startswith(p + ".")), key=len)
        folder = (
            folders[top].joinpath(*package[len(top) :].strip(".").split("."))
            if package != top
            else folders[top]
        )
        for file in sorted(folder.glob("*.py")):
            if file.name == "__main__.py":  # runs its command when imported
                continue
            modules[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return modules


def imported_modules(name: str, file: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (top level, functions, TYPE_CHECKING)."""
    base = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = (
                ".".join(base[: len(base) - node.level + 1] + [node.module or ""]).strip(".")
                if node.level
                else node.module
            )
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {candidate for candidate in candidates if candidate in known and candidate != name}
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_the_import_graph_has_no_cycle():
    modules = package_modules()
    graph = {name: imported_modules(name, file, set(modules)) for name, file in modules.items()}
    assert len(modules) > 50 and "data2vec_hf.pretraining.data.text" in modules
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    """The check itself: a module pair that imports each other, one of them only under TYPE_CHECKING."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
    file = ROOT / "tests" / "fixtures" / "_cycle_probe.py"
    try:
        file.write_text(source)
        assert imported_modules("p.a", file, {"p.a", "p.b"}) == {"p.b"}
    finally:
        file.unlink()


def third_party_imports() -> list[tuple[str, list[str]]]:
    """``(module, [names])`` that the package's modules import from other packages at their top level."""
    found: dict[str, set[str]] = {}
    for file in package_modules().values():
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name, set())
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.setdefault(node.module, set()).update(alias.name for alias in node.names)
    return [
        (module, sorted(names))
        for module, names in sorted(found.items())
        if not module.startswith("data2vec_hf") and module != "__future__"
    ]


def import_alone(name: str, results) -> None:
    try:
        assert not any(m == "data2vec_hf" or m.startswith("data2vec_hf.") for m in sys.modules)
        __import__(name)
        results.put((name, None))
    except BaseException:  # noqa: BLE001  (report any failure, SystemExit included)
        results.put((name, traceback.format_exc(limit=4)))


def import_every_module_alone() -> dict[str, str]:
    """``{module: error}`` for the modules that fail to import alone (run in a process of its own)."""
    # the third-party modules the package imports at its top levels, loaded once before forking, so that
    # each child runs only the package's own module code
    for module, names in third_party_imports():
        try:
            loaded = importlib.import_module(module)
            for name in names:  # transformers and others load the module behind a name lazily
                getattr(loaded, name, None)
        except Exception:  # noqa: BLE001  (an optional dependency: the child reports what matters)
            pass
    assert not any(m.startswith("data2vec_hf") for m in sys.modules), (
        "import the package only in the children"
    )
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    failures = {}
    for name in package_modules():
        child = context.Process(target=import_alone, args=(name, results))
        child.start()
        child.join(timeout=120)
        outcome = results.get(timeout=5) if child.exitcode == 0 else (name, f"exit code {child.exitcode}")
        if outcome[1]:
            failures[name] = outcome[1]
    return failures


@pytest.mark.skipif(sys.platform != "linux", reason="forks a child per module")
def test_every_module_imports_on_its_own():
    # a fresh interpreter: this test process has imported the package already
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "modules imported alone" in done.stdout


if __name__ == "__main__":
    failures = import_every_module_alone()
    for name, error in failures.items():
        print(f"--- {name}\n{error}")
    print(f"{len(package_modules()) - len(failures)} of {len(package_modules())} modules imported alone")
    sys.exit(1 if failures else 0)
