"""What a model is and what an attack needs live on their registry entries: adding either is one registration,
and no module of bench/ outside the registrations decides by a built-in name."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import SWEEP
from marginbench.bench.errors import SpecError
from marginbench.bench.registry.entries import AttackEntry, AttackRegistry, ModelEntry, ModelRegistry
from marginbench.bench.registry.provenance import BUILT_IN
from marginbench.bench.registry.registries import ATTACKS, MODELS

ROOT = Path(__file__).resolve().parents[1]

# A plugin file: one model and one attack, each one registration with its capabilities.
PLUGIN = '''
import torch
from marginbench import ATTACKS, MODELS, AttackResult, BuiltModel
from marginbench.models.construction import robust_construction


@MODELS.register("demo-construction", trained=False, families=("kkt",), follows_recipe=False)
def demo_construction(data, context):
    net, c = robust_construction(data.X, data.y)  # closed form from the data: nothing trained
    return BuiltModel(net=net.to(context.device), facts={"demo_c": c})


class AutogradStep:
    """One step to the linearized boundary, from N(x) and autograd alone (no closed form)."""

    def __call__(self, net, X, y):
        x = X.detach().clone().requires_grad_(True)
        value = net(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
        squared = (grad * grad).sum(dim=1)
        step = 1.5 * (y * value.detach()).abs() / squared.clamp_min(1e-300)
        return AttackResult(delta=-y[:, None] * step[:, None] * grad, found=squared > 0)


ATTACKS.register("demo-autograd-step", needs_closed_form=False)(lambda data, context: AutogradStep())
'''


def _marginbench(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """marginbench in a fresh interpreter: the plugin's names must not leak into the other tests' registries."""
    return subprocess.run(
        [sys.executable, "-m", "marginbench", *args], cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )


def _with(args: list[str], **options: str) -> list[str]:
    """``args`` with the value of each ``--option`` replaced."""
    out = list(args)
    for option, value in options.items():
        out[out.index(f"--{option}") + 1] = value
    return out


def test_a_model_and_an_attack_are_one_registration_each(tmp_path: Path) -> None:
    plugin = tmp_path / "demo_plugin.py"
    plugin.write_text(PLUGIN)
    sweep = _with(SWEEP, models="vanilla,demo-construction", attacks="universal-z,demo-autograd-step")
    done = _marginbench(["run", *sweep, "--plugin", str(plugin), "--out", "o"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "6 runs, 3 trainings" in done.stderr + done.stdout  # trained=False: the construction is not a training
    summary = pd.read_csv(tmp_path / "o" / "summary.csv")
    mine = summary[summary["model"] == "demo-construction"].set_index(["seed", "attack"])
    assert set(mine.index.get_level_values("attack")) == {"universal-z", "demo-autograd-step", "best"}
    assert (mine["attack_status"] == "ok").all() and (mine["run_status"] == "ok").all()
    assert (mine["demo_c"] > 0).all()
    stepped = summary[(summary["model"] == "vanilla") & (summary["attack"] == "demo-autograd-step")]  # (the construction is flat where it steps)
    assert len(stepped) == 3 and (stepped["success_rate"] > 0).all()
    # families=("kkt",): a spec of another family refuses it in one line, naming the family's models
    refused = _marginbench(["run", "--family", "subspace", "--d", "8", "--models", "demo-construction", "--plugin", str(plugin), "--out", "x"], tmp_path)
    assert refused.returncode == 2
    assert "'demo-construction' is not part of the subspace family; choose from: l2, small-init, three-layer, vanilla" in refused.stderr


def test_an_outside_registration_keeps_the_defaults_it_had_before_capabilities() -> None:
    models, attacks = ModelRegistry(), AttackRegistry()
    models.register("m")(print)  # type: ignore[arg-type]
    attacks.register("a")(print)  # type: ignore[arg-type]
    assert models.entry("m") == ModelEntry(factory=print)  # type: ignore[arg-type]
    assert models.entry("m").trained and models.entry("m").closed_form and models.entry("m").in_family("subspace")
    assert attacks.entry("a") == AttackEntry(factory=print)  # type: ignore[arg-type]
    assert attacks.entry("a").needs_closed_form  # the Attack interface hands attacks a TwoLayerNet
    assert attacks.entry("a").library is None  # its own, unless it says whose attack it wraps
    assert attacks.autograd() == [] and attacks.proving(["a", "unknown"]) == set()
    with pytest.raises(SpecError, match="unknown family 'kt'; choose from: kkt, subspace"):
        models.register("n", families=("kt",))
    with pytest.raises(SpecError, match="unknown model 'x'"):
        models.entry("x")


def test_the_built_in_entries_say_what_the_side_lists_said() -> None:
    assert ATTACKS.autograd() == ["pgd", "pgd-off", "pgd-on"]
    assert ATTACKS.proving(ATTACKS.names()) == {"exact"}
    assert {n for n in ATTACKS.names() if ATTACKS.entry(n).needs_subspace} == {"subspace-z", "pgd-off", "pgd-on"}
    assert {n: ATTACKS.entry(n).library for n in ATTACKS.names() if ATTACKS.entry(n).library} == {
        n: "foolbox" for n in ("fb-boundary", "fb-brendel-bethge", "fb-cw", "fb-ddn", "fb-deepfool", "fb-fmn")
    }
    assert MODELS.constructed(MODELS.names()) == {"robust-construction"}
    assert [n for n in MODELS.names() if not MODELS.entry(n).closed_form] == ["three-layer"]
    assert [n for n in MODELS.names() if MODELS.entry(n).follows_recipe] == ["small-init", "vanilla"]


# --- no decision by name outside the registrations ------------------------------------------------------------
#
# The rule: in bench/, a string literal equal to a built-in model or attack name may appear only where names are
# the vocabulary itself: the registrations and presets (bench/registry/), the recipes that the registrations
# point to (bench/experiment/recipes.py), and the places below, each for its reason, at most as often as
# counted. A field_error's first argument is a spec field's name (--l2), not a model's. Prose that mentions a
# name (help text, docstrings, messages) is a longer string and never equal to one.
VOCABULARY = ("bench/registry/", "bench/experiment/recipes.py")
FAMILY_DEFAULTS = [(family, name) for family in ("KKT", "SUBSPACE") for name in (*MODELS.names(), *ATTACKS.names())]
ALLOWED: dict[tuple[str, str, str], tuple[int, str]] = {
    **{
        ("bench/experiment/families.py", family, name): (1, "a family's default models and attacks, as a preset names them") for family, name in FAMILY_DEFAULTS
    },
    ("bench/report/paper_figures.py", "UNIVERSAL", "universal-z"): (1, "Vardi et al. Figure 1 plots this attack's common scale"),
    **{("bench/report/paper_figures.py", "PROJECTED", name): (1, "Melamed et al. Figure 4 plots these three attacks") for name in ("pgd", "pgd-on", "pgd-off")},
}


def built_in_names() -> set[str]:
    return {n for registry in (MODELS, ATTACKS) for n in registry.names() if registry.source(n) == BUILT_IN}


def name_literals(tree: ast.AST, names: set[str]) -> Counter[tuple[str, str]]:
    """(scope, literal) -> count of the string literals in ``names``; the scope is the enclosing class or
    function (dotted) or, at module level, the assigned name; field_error's first argument is skipped."""
    found: Counter[tuple[str, str]] = Counter()

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "field_error" and node.args:
            children = [*node.args[1:], *node.keywords, node.func]
        else:
            children = list(ast.iter_child_nodes(node))
        for child in children:
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = f"{scope}.{child.name}" if scope else child.name
            elif isinstance(child, ast.Assign | ast.AnnAssign) and not scope:
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                inner = ",".join(t.id for t in targets if isinstance(t, ast.Name))
            if isinstance(child, ast.Constant) and child.value in names:
                found[(scope or "<module>", child.value)] += 1
            visit(child, inner)

    visit(tree, "")
    return found


def test_the_scan_finds_a_planted_decision_by_name() -> None:
    tree = ast.parse('def f(run):\n    if run.model == "three-layer":\n        pass\n    raise field_error("l2", "x")\n')
    assert name_literals(tree, {"three-layer", "l2"}) == Counter({("f", "three-layer"): 1})


def test_no_module_decides_by_a_built_in_name() -> None:
    names = built_in_names()
    assert {"vanilla", "three-layer", "exact", "universal-z"} <= names
    found: dict[tuple[str, str, str], int] = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        if where.startswith(VOCABULARY):
            continue
        for (scope, name), count in name_literals(ast.parse(path.read_text()), names).items():
            found[(where, scope, name)] = count
    beyond = {key: count for key, count in found.items() if count > ALLOWED.get(key, (0, ""))[0]}
    assert beyond == {}, "decide by the registry entry (MODELS.entry(name), ATTACKS.entry(name)), not by the name"
