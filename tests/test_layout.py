"""The layout of docs/ARCHITECTURE.md holds: imports go one way between layers, and there is no cycle.

Every ``import`` and ``from ... import`` of ``cm_core``, ``cm_app`` and ``app.py`` is read from the
source (lazy imports inside functions too, since a lazy upward import is still an upward
dependency), resolved to the module it loads, and checked against the layer order
models -> accel -> sampling -> editing -> train -> service -> cli -> app.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# layer of each top-level part: a module may import its own layer or a lower one
LAYERS = {"cm_core.models": 0, "cm_core.accel": 1, "cm_core.sampling": 2, "cm_core.editing": 3,
          "cm_core.train": 4, "cm_core.evaluation": 4, "cm_core.service": 5, "cm_core.cli": 6, "cm_core.__main__": 6,
          "cm_app": 7, "app": 7}
FACADE = "cm_core"  # the package top re-exports the public API; nothing inside may import it


def _modules() -> dict[str, Path]:
    files = sorted((ROOT / "cm_core").rglob("*.py")) + sorted((ROOT / "cm_app").glob("*.py"))
    out = {}
    for f in [*files, ROOT / "app.py"]:
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(name: str, node: ast.ImportFrom) -> list[str]:
    """The modules a ``from X import a, b`` loads: X, plus X.a where that is a module."""
    if node.level:
        base = name.split(".") if _is_package(name) else name.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return ([target] if target in MODULES and len(subs) < len(node.names) else []) + subs


def imports_of(name: str) -> set[str]:
    """Project modules that ``name`` imports anywhere in its source."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(name, node))
    found.discard(name)
    return found


def layer(name: str) -> int | None:
    for prefix, rank in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return rank
    return None


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != FACADE and layer(m) is None] == []


def test_the_graph_sees_real_imports():
    """Guards the walker itself: known edges, relative and absolute, are found."""
    assert "cm_core.models.denoiser" in GRAPH["cm_core.sampling.loop"]
    assert "cm_core.sampling.loop" in GRAPH["cm_core.editing.editors"]
    assert "cm_core.service" in GRAPH["cm_app.handlers"]
    assert "cm_core.editing.pictures" in GRAPH["cm_core.service.edits"]  # a lazy import


def test_no_upward_import():
    bad = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
           for m, ts in GRAPH.items() if m != FACADE for t in ts
           if t == FACADE or (layer(t) is not None and layer(t) > layer(m))]
    assert bad == []


def test_no_module_imports_its_own_package():
    """``from .. import service`` inside cm_core/service is a cycle through the package __init__."""
    bad = [f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts
           if _is_package(t) and m.startswith(t + ".") and t != "cm_core"]
    assert bad == []


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        stack.pop()
        return None
    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("path", ["tests", "scripts", "bench"])
def test_nothing_private_is_reached_through_app(path):
    """Tests and tools import public names or the owning module, never ``app._private``."""
    bad = []
    for f in sorted((ROOT / path).glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "app":
                bad += [f"{f.name}: from app import {a.name}" for a in node.names if a.name.startswith("_")]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "app" and node.attr.startswith("_")):
                bad.append(f"{f.name}: app.{node.attr}")
    assert bad == []
