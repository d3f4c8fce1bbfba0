"""The shape of the code: the import graph has no cycle, lower layers never import bench/, modules stay small,
and the public API at the package top resolves."""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import marginbench

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml's package-dir mapping).
PACKAGES = {"marginbench": "marginbench", "bench": "marginbench.bench", "attacks": "marginbench.attacks", "models": "marginbench.models"}
MAX_LINES = 330  # "no module over ~300 lines"


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST) -> Iterator[str]:
    """Every module named by an import anywhere in ``tree`` (functions too), except under ``if TYPE_CHECKING``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # a submodule imported by name
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the marginbench modules it imports (parent packages are implied, not edges)."""
    modules = _modules()
    return {name: {target for target in _imports(ast.parse(path.read_text())) if target in modules and target != name} for name, path in modules.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


def test_the_cycle_check_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "marginbench.bench.execution.sweep" in graph and "marginbench.bench.report.leaderboard" in graph  # the walk found the code
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


@pytest.mark.parametrize("layer", ["marginbench.models", "marginbench.attacks"])
def test_lower_layers_do_not_import_bench(layer: str) -> None:
    graph = import_graph()
    offenders = {module: sorted(t for t in targets if t.startswith("marginbench.bench")) for module, targets in graph.items() if module.startswith(layer)}
    assert any(module.startswith(layer) for module in graph)
    assert not {module: targets for module, targets in offenders.items() if targets}


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def test_the_public_api_resolves() -> None:
    for name in marginbench.__all__:
        assert getattr(marginbench, name) is not None, name
    from marginbench import ATTACKS, MODELS, AttackResult, BuiltModel, ExperimentSpec, RunSpec, run_sweep  # noqa: F401

    assert "universal-z" in ATTACKS and "vanilla" in MODELS
    with pytest.raises(AttributeError):
        _ = marginbench.no_such_name  # type: ignore[attr-defined]
