"""The code's structure, as docs/architecture.md describes it, checked on the source itself.

- layers: data -> models -> objectives -> training / prediction -> export, serve, label -> cli;
  no module imports a module of a higher layer (lazy imports inside functions count);
- no import cycles (a package ``__init__`` importing its own submodules, the model registry's
  pattern, is not an edge);
- no function longer than 100 lines;
- no argparse internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "pixelwise"

#: layer of each top-level module or package of pixelwise (the first name after ``pixelwise.``)
LAYERS: dict[str, int] = {
    "": 0,  # pixelwise/__init__.py: the version
    "errors": 0,
    "files": 0,
    "distributed": 0,
    "data": 1,
    "models": 2,
    "losses": 3,
    "metrics": 3,
    "plots": 3,
    "runs": 3,
    "training": 4,
    "planning": 4,
    "evaluate": 4,
    "predict": 4,
    "colorize": 4,
    "tiles": 4,
    "engines": 4,
    "dense": 4,
    "crf": 4,
    "heatmap": 4,
    "export_formats": 4,
    "export": 5,
    "serve": 5,
    "label": 5,
    "cli": 6,
    "__main__": 6,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every pixelwise module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = _imports(name, path)
        if path.name == "__init__.py":  # a package importing its own submodules (a registry)
            edges = {e for e in edges if not e.startswith(name + ".")}
        graph[name] = edges
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else ""
    assert key in LAYERS, f"{module}: add its layer to LAYERS and to docs/architecture.md"
    return LAYERS[key]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        _layer(name)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, edges in _graph().items()
        for b in sorted(edges)
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle found by a depth-first search, as the modules around it."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles() -> None:
    cycles = find_cycles(_graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_can_fail() -> None:
    """A made-up cycle is found, a lazy import inside a function is an edge, and the CLI is
    above the data layer."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert "pixelwise.errors" in _imports("pixelwise.data.io", MODULES["pixelwise.data.io"])
    assert _layer("pixelwise.cli") > _layer("pixelwise.data.io")


def _functions():
    for name, path in sorted(MODULES.items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield name, node


@pytest.mark.parametrize("limit", [100])
def test_no_function_is_longer_than_a_screen(limit: int) -> None:
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, node in _functions()
        if node.end_lineno - node.lineno + 1 > limit
    ]
    assert not long, "\n".join(long)


def test_no_argparse_internals() -> None:
    bad = []
    for name, path in MODULES.items():
        text = path.read_text()
        for needle in ("argparse._", "._defaults", "._actions", "_SubParsersAction"):
            if needle in text:
                bad.append(f"{name}: {needle}")
    assert not bad, "\n".join(bad)


def test_the_layout_names_agree():
    """``--format`` choices: the layouts' registry, its FORMATS, and the copy training.config
    keeps so that building the CLI imports no torch."""
    from pixelwise.data.layouts import FORMATS, _registry
    from pixelwise.training.config import DATA_FORMATS

    assert DATA_FORMATS == FORMATS == ("auto", *_registry())
