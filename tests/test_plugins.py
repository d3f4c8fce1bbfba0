"""Outside attacks and models without a fork: the demo distribution of tests/plugin_dist (entry points), plugin
files and modules (--plugin), their sources in `list` and in the manifest, broken plugins and taken names.

Every test runs marginbench in a fresh interpreter: plugins register names in the global registries, which
must not leak into other tests. The demo distribution is "installed" by putting its package and a dist-info
folder written from its own pyproject.toml on PYTHONPATH (what pip would write, without a build or a network).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import QUICK
from marginbench.bench.errors import SpecError
from marginbench.bench.registry.names import NA_VALUES, name_problem
from marginbench.bench.registry.presets import PRESETS
from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS, TRAINING_PLANS, Registry

DIST = Path(__file__).resolve().parent / "plugin_dist"
ENTRY = "distribution marginbench-demo-plugin 0.1.0"


def install(site: Path, project: Path = DIST) -> Path:
    """``project``'s package and a dist-info (METADATA, entry_points.txt) from its pyproject.toml, in ``site``."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    for package in tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]:
        shutil.copytree(project / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    groups = meta.get("entry-points", {})
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n" for group, points in groups.items())
    )
    return site


def marginbench(args: list[str], cwd: Path, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site) if site else "", os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-m", "marginbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("site"))


def _sources(listing: str) -> dict[str, str]:
    return {line.split()[0]: " ".join(line.split()[1:]) for line in listing.splitlines() if line.startswith("  ")}


def test_the_demo_distribution_runs_end_to_end(site: Path, tmp_path: Path) -> None:
    listed = marginbench(["list"], tmp_path, site)
    assert listed.returncode == 0, listed.stderr
    sources = _sources(listed.stdout)
    assert sources["demo-gradient-step"] == ENTRY and sources["demo-random-features"] == ENTRY and sources["pgd"] == "built-in"

    done = marginbench(["run", *QUICK, "--models", "demo-random-features,vanilla", "--attacks", "demo-gradient-step,universal-z", "--out", "o"], tmp_path, site)
    assert done.returncode == 0, done.stderr
    summary = pd.read_csv(tmp_path / "o" / "summary.csv").set_index(["model", "attack"])
    assert summary.loc[("demo-random-features", "demo-gradient-step"), "attack_status"] == "ok"
    assert summary.loc[("demo-random-features", "demo-gradient-step"), "success_rate"] > 0
    # the harness's norms are those of the verified perturbations it saved
    examples = pd.read_csv(tmp_path / "o" / "examples.csv")
    for run_dir in (tmp_path / "o" / "runs").iterdir():
        mine = examples[(examples["run_id"] == run_dir.name) & (examples["attack"] == "demo-gradient-step")]
        with np.load(run_dir / "perturbations.npz") as saved:
            norms = np.linalg.norm(saved["demo-gradient-step"], axis=1)
        assert np.allclose(np.where(mine["success"], norms, np.inf), mine["norm"].to_numpy(), rtol=1e-12, atol=0)
    recorded = {(p["registry"], p["name"]): p for p in json.loads((tmp_path / "o" / "manifest.json").read_text())["plugins"]}
    assert set(recorded) == {("attack", "demo-gradient-step"), ("model", "demo-random-features")}
    assert recorded[("attack", "demo-gradient-step")]["source"] == {"kind": "distribution", "name": "marginbench-demo-plugin", "version": "0.1.0"}

    # resuming needs the plugin again: without it, one line says how to get it back
    gone = marginbench(["run", "--resume", "o", "--no-progress"], tmp_path)
    assert gone.returncode == 2
    assert "pip install 'marginbench-demo-plugin==0.1.0'" in gone.stderr.strip().splitlines()[-1]
    assert marginbench(["run", "--resume", "o", "--no-progress"], tmp_path, site).returncode == 0


def test_attack_adds_a_plugin_attack_to_a_directory_made_without_it(site: Path, tmp_path: Path) -> None:
    assert marginbench(["run", *QUICK, "--models", "vanilla", "--attacks", "universal-z", "--out", "o"], tmp_path).returncode == 0
    missing = marginbench(["attack", "o", "--attacks", "demo-gradient-step"], tmp_path)
    assert missing.returncode == 2 and "unknown attack 'demo-gradient-step'" in missing.stderr
    done = marginbench(["attack", "o", "--attacks", "demo-gradient-step", "--out", "o2"], tmp_path, site)
    assert done.returncode == 0, done.stderr
    (session,) = json.loads((tmp_path / "o2" / "manifest.json").read_text())["attacked"]
    source = {"kind": "distribution", "name": "marginbench-demo-plugin", "version": "0.1.0"}
    assert session["plugins"] == [{"registry": "attack", "name": "demo-gradient-step", "source": source}]
    assert set(pd.read_csv(tmp_path / "o2" / "summary.csv")["attack"]) == {"universal-z", "demo-gradient-step", "best"}
    assert marginbench(["leaderboard", "o2"], tmp_path).returncode == 0  # it verifies without the plugin
    again = marginbench(["attack", "o2", "--attacks", "demo-gradient-step", "--overwrite"], tmp_path)
    assert again.returncode == 2
    assert "pip install 'marginbench-demo-plugin==0.1.0'" in again.stderr.strip().splitlines()[-1]


PLUGIN_FILE = """
import torch
from marginbench import ATTACKS, AttackResult

@ATTACKS.register("through-origin")
def through_origin(data, context):
    return lambda net, X, y: AttackResult(delta=-2 * X, found=torch.ones_like(y, dtype=torch.bool))

ATTACKS.register("pgd")(through_origin)  # a taken name: set aside, an error only when asked for
"""


def test_plugin_files_and_modules_broken_plugins_and_taken_names(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(PLUGIN_FILE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('half-written plugin')\n")
    (tmp_path / "my_module.py").write_text(PLUGIN_FILE.replace("through-origin", "via-module").replace('ATTACKS.register("pgd")', 'ATTACKS.register("fmn")'))
    plugins = ["--plugin", "mine.py", "--plugin", "broken.py", "--plugin", "my_module", "--plugin", "no_such_module"]
    listed = marginbench(["list", *plugins], tmp_path, tmp_path)
    assert listed.returncode == 0, listed.stderr
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 4 and all(line.startswith("marginbench: warning: plugin ") for line in warnings), warnings
    assert any("broken.py failed to import (RuntimeError: half-written plugin)" in line for line in warnings)
    assert any("no_such_module failed to import" in line for line in warnings)
    assert any("attack 'pgd' is already registered (built-in)" in line for line in warnings)
    sources = _sources(listed.stdout)
    digest = hashlib.sha256((tmp_path / "mine.py").read_bytes()).hexdigest()
    assert sources["through-origin"] == f"plugin file {tmp_path / 'mine.py'} (sha256 {digest[:12]})"
    assert sources["via-module"].startswith(f"plugin module my_module, {tmp_path / 'my_module.py'}")
    assert sources["pgd"].startswith("built-in; also registered by plugin file")

    # the rest goes on (in pool workers too, which load the same plugins); the taken name is an error only when asked for
    done = marginbench(
        ["run", *QUICK, "--models", "vanilla", "--attacks", "through-origin,via-module", "--workers", "2", "--out", "o", *plugins], tmp_path, tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert set(pd.read_csv(tmp_path / "o" / "summary.csv")["attack_status"]) == {"ok"}
    (first, second) = json.loads((tmp_path / "o" / "manifest.json").read_text())["plugins"]
    assert first == {"registry": "attack", "name": "through-origin", "source": {"kind": "file", "path": str(tmp_path / "mine.py"), "sha256": digest}}
    module_digest = hashlib.sha256((tmp_path / "my_module.py").read_bytes()).hexdigest()
    assert second == {
        "registry": "attack",
        "name": "via-module",
        "source": {"kind": "module", "name": "my_module", "path": str(tmp_path / "my_module.py"), "sha256": module_digest},
    }
    taken = marginbench(["run", *QUICK, "--attacks", "pgd", "--out", "p", "--plugin", "mine.py"], tmp_path)
    assert taken.returncode == 2
    assert "attack 'pgd' is registered twice, by built-in and by plugin file" in taken.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("file", "code", "message"),
    [
        ("stop.py", "import sys\nsys.exit(0)\n", "plugin stop.py called sys.exit(0) while being imported"),
        ("ctrl_c.py", "raise KeyboardInterrupt\n", "plugin ctrl_c.py raised KeyboardInterrupt itself (no Ctrl-C came) while being imported"),
        ("my_plugin", "x = 1\n", "--plugin my_plugin is a file whose name does not end in .py: give a .py file, or an importable module's name"),
    ],
    ids=["sys-exit", "keyboard-interrupt", "no-py-suffix"],
)
def test_a_plugin_that_ends_the_program_at_import_is_one_line_and_exit_2(file: str, code: str, message: str, tmp_path: Path) -> None:
    (tmp_path / file).write_text(code)
    listed = marginbench(["list", "--plugin", file], tmp_path)
    assert listed.returncode == 2 and listed.stdout == ""
    assert listed.stderr.strip().splitlines() == [
        f"marginbench: error: {message}" + ("; a plugin registers names and returns: remove that, or leave the plugin out" if file.endswith(".py") else "")
    ]


REFUSED = {
    "best.py": ("attack", "best", "'best' is reserved (the per-example minimum over the attacks, which the harness adds)"),
    "escape.py": ("model", "x/../../../../escaped", "it contains a path separator or '..' (it names a folder under runs/)"),
    "missing.py": ("attack", "NaN", "pandas reads it back as a missing value"),
}


def test_plugin_names_that_would_not_read_back_are_refused(tmp_path: Path) -> None:
    for file, (kind, name, _) in REFUSED.items():
        registry = "ATTACKS" if kind == "attack" else "MODELS"
        (tmp_path / file).write_text(f"from marginbench import {registry}\n{registry}.register({name!r})(lambda data, context: None)\n")
    plugins = [arg for file in REFUSED for arg in ("--plugin", file)]
    listed = marginbench(["list", *plugins], tmp_path)
    assert listed.returncode == 0, listed.stderr
    warnings = listed.stderr.strip().splitlines()
    assert warnings == [
        f"marginbench: warning: plugin {file} failed to import (SpecError: {kind} name {name!r} is refused: {why}); going on without it"
        for file, (kind, name, why) in REFUSED.items()
    ]
    best = marginbench(["run", *QUICK, "--models", "robust-construction", "--attacks", "best", "--out", "o", "--plugin", "best.py"], tmp_path)
    assert best.returncode == 2 and "unknown attack 'best'" in best.stderr.strip().splitlines()[-1]
    escaped = marginbench(
        ["run", *QUICK, "--models", "x/../../../../escaped", "--attacks", "universal-z", "--out", "deep/er/o", "--plugin", "escape.py"], tmp_path
    )
    assert escaped.returncode == 2 and "unknown model 'x/../../../../escaped'" in escaped.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "deep").exists() and not list(tmp_path.parent.glob("**/*escaped*"))


@pytest.mark.parametrize(
    "name",
    [
        "best",
        "nan",
        "NA",
        "NaN",
        "null",
        "None",
        "",
        "n/a",
        "x/../../../../escaped",
        "a\\b",
        "..",
        ".hidden",
        "a\tb",
        "a\nb",
        "a,b",
        "a b",
        "1",
        "1e5",
        "inf",
        "True",
        "x" * 65,
        3,
    ],
)
def test_the_name_rule_refuses_names_that_would_not_read_back(name: object) -> None:
    registry: Registry[object] = Registry("widget")
    with pytest.raises(SpecError, match=r"^widget name .* is refused: ") as refused:
        registry.register(name)  # type: ignore[arg-type]
    assert "\n" not in str(refused.value)
    assert name_problem(name) is not None and name not in registry


def test_every_built_in_name_passes_the_rule_and_it_knows_pandas_missing_values() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    for registry in (DATASETS, MODELS, ATTACKS, TRAINING_PLANS, PRESETS):
        assert {name: name_problem(name) for name in registry.names() if name_problem(name)} == {}
    assert set(STR_NA_VALUES) <= NA_VALUES  # a pandas that reads more as missing must be followed
    for name in ("demo-gradient-step", "my_attack.v2", "pgd+restarts", "A1"):
        assert name_problem(name) is None
