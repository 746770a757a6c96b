"""The package's shape, checked from the source with the standard library's ``ast``: no
import cycles (local imports included, so none is hidden), the library never imports the web
layer, no module over 400 lines, and every library exception under one base."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from iou_maps import errors
from service.testing import REPO

PACKAGES = ("iou_maps", "service")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (top level or local)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            # The longest known module the target names (``a.b.c`` of ``from a.b import c``).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_cycle_and_a_local_import(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from pkg import b\n")
    assert imports_of("pkg.a", a, {"pkg.a", "pkg.b"}) == {"pkg.b"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_library_never_imports_the_web_layer(graph):
    leaks = {m: sorted(i for i in deps if i.startswith("service"))
             for m, deps in graph.items() if m.startswith("iou_maps")}  # fmt: skip
    assert {m: d for m, d in leaks.items() if d} == {}


def test_no_module_over_400_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert long == {}


def test_every_library_exception_has_the_one_base():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == errors.__name__]  # fmt: skip
    assert len(classes) > 10
    assert all(issubclass(c, errors.IoUMapsError) for c in classes)


def test_the_service_maps_every_library_exception_in_its_one_table():
    from service.errors import STATUS_CODES

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == errors.__name__]  # fmt: skip
    assert [c.__name__ for c in classes if c not in STATUS_CODES] == []
