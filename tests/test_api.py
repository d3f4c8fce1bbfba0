"""The public Python API as the README shows it: its "Adding a model or an attack" example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from marginbench.bench.report.leaderboard import model_table
from marginbench.bench.results.readback import read_results

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    section = README.read_text().split("## Adding a model or an attack", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README's section has no python example"
    return match.group(1)


def test_the_readme_plugin_example_runs_and_its_rows_are_verified(tmp_path: Path) -> None:
    """In a fresh interpreter (the example registers names in the global registries)."""
    done = subprocess.run([sys.executable, "-c", _example()], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = pd.read_csv(tmp_path / "runs" / "mine" / "summary.csv")
    rows = summary.set_index(["model", "attack"])
    assert {("my-model", "my-attack"), ("robust-construction", "universal-z"), ("my-model", "best")} <= set(rows.index)
    assert rows.loc[("my-model", "my-attack"), "attack_status"] == "ok"
    assert "my_fact" in summary and (summary.loc[summary["model"] == "my-model", "my_fact"] == 1.0).all()
    # The proposal delta = -2 y x claims every example; the harness keeps it only where a forward pass confirms
    # the flip, and then reports its own norm, 2 ||x|| = 2 sqrt(d).
    examples = pd.read_csv(tmp_path / "runs" / "mine" / "examples.csv")
    mine = examples[(examples["model"] == "my-model") & (examples["attack"] == "my-attack")]
    kept = mine[mine["success"]]
    assert ((kept["norm"] - 2 * 16**0.5).abs() < 1e-9).all()
    assert (mine.loc[~mine["success"], "norm"] == float("inf")).all()
    # v = 1, b = 0: N >= 0 everywhere, so nothing flips it (+inf); the leaderboard flags it and ranks it last,
    # not "most robust" (issue 25)
    models = model_table(read_results([tmp_path / "runs" / "mine"])).set_index("model")
    assert models.loc["my-model", "flag"].startswith("constant sign") and models.loc["robust-construction", "flag"] is None
    assert list(models.index) == ["robust-construction", "my-model"] and list(models["rank"]) == [1, 2]


def test_the_package_top_exports_every_name_the_readme_lists() -> None:
    import marginbench

    paragraph = README.read_text().split("The stable Python API is the package top", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`([A-Za-z_][A-Za-z_0-9]*)`", paragraph))
    assert {"ATTACKS", "MODELS", "AttackResult", "attack_directory", "load_plugins", "Source"} <= listed
    assert listed <= set(marginbench.__all__), listed - set(marginbench.__all__)
    for name in marginbench.__all__:
        assert getattr(marginbench, name) is not None
