"""The shape of the code: the import graph has no cycle, every module imports only its own layer or the ones
below (models < checking < attacks < bench, and bench's rooms in their order), bench/ keeps its top level to a
few modules, modules stay small, and the public API at the package top resolves."""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import marginbench

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml's package-dir mapping).
PACKAGES = {
    "marginbench": "marginbench",
    "bench": "marginbench.bench",
    "attacks": "marginbench.attacks",
    "checking": "marginbench.checking",
    "models": "marginbench.models",
}
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


# Bottom to top. A module may import its own layer and the layers below it, never one above. The package top
# (``marginbench``: the version and the lazy public API) may be imported from anywhere.
LAYERS = (
    "marginbench.models",  # datasets, nets, training, constructions, theory
    "marginbench.checking",  # the flip rule, rounding bound, certified bounds, proofs, the harness's verify
    "marginbench.attacks",  # perturbation finders
    "marginbench.bench.errors",  # the one user-facing error
    "marginbench.bench.results",  # a run's record, rows and tables, the store, read-back
    "marginbench.bench.experiment",  # specs, families, recipes
    "marginbench.bench.registry",  # the registries (presets too), plugins, provenance, the name rule
    "marginbench.bench.performance",  # timing, thread choice, pass counting, throughput
    "marginbench.bench.execution",  # runner, executors, sweep, re-attack, twin, estimate, time limits
    "marginbench.bench.report",  # leaderboards, figures, checks
    "marginbench.bench.cli",  # the command
)
MAX_BENCH_TOP = 8  # modules at bench/'s top level (issue 23): the rest lives in rooms


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the layer holding ``module`` (None for the package top and ``__main__``)."""
    for index, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return index
    return None


def upward_imports(graph: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """module -> the modules it imports from a higher layer."""
    out = {}
    for module, targets in graph.items():
        own = layer_of(module)
        if own is None:
            continue
        up = sorted(t for t in targets if (layer_of(t) or -1) > own)
        if up:
            out[module] = up
    return out


def test_the_layer_check_finds_a_planted_upward_import() -> None:
    assert upward_imports({"marginbench.models.train": {"marginbench.checking.flips"}}) == {"marginbench.models.train": ["marginbench.checking.flips"]}
    assert upward_imports({"marginbench.bench.cli.parser": {"marginbench.models.train", "marginbench"}}) == {}


def test_every_module_lives_in_a_layer_and_imports_only_downward() -> None:
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) is None and m not in ("marginbench", "marginbench.__main__", "marginbench.bench"))
    assert unplaced == [], f"modules outside every layer (add them to a room): {unplaced}"
    assert upward_imports(graph) == {}


def test_bench_keeps_its_top_level_to_a_few_modules() -> None:
    top = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert len(top) <= MAX_BENCH_TOP, top


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
