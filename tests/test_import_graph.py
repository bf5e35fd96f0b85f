"""The package's import graph, read with ``ast``: no cycles, no private names across modules, a leaf registry.

Every ``import``/``from ... import`` of an ``ejkernel`` module counts, module-level or inside a function
(a lazy import is still a dependency). ``from package import name`` is an edge to ``package.name`` when
that is a module, else to ``package``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ejkernel"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every ejkernel import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "ejkernel"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ejkernel":
            assert node.level == 0, f"{path}: relative import"
            found += [(node.module, a.name) for a in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for module, imported in _imports(path):
            target = f"{module}.{imported}" if imported and f"{module}.{imported}" in MODULES else module
            assert target in MODULES, f"{name} imports {target}, which is not a module of the package"
            if target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_a_private_name_of_another():
    private = [
        (name, module, imported)
        for name, path in MODULES.items()
        for module, imported in _imports(path)
        if imported and imported.startswith("_") and not imported.startswith("__")
    ]
    assert private == []


def test_the_registry_is_a_leaf():
    assert _graph()["ejkernel.registry"] <= {"ejkernel.errors", "ejkernel.platform"}


@pytest.mark.parametrize("layer", ["ejkernel.ops.attention"])
def test_the_semantics_layer_imports_no_backend(layer):
    for name, edges in _graph().items():
        if name.startswith(layer):
            assert not any(e.startswith("ejkernel.kernels") for e in edges), (name, edges)
