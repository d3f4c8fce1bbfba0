"""The result directory: DESIGN.md's files and columns, and every number re-checkable with numpy alone."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from marginbench.bench.registry.provenance import LIBRARIES, NOT_INSTALLED
from marginbench.bench.results.record import BEST, EXAMPLE_COLUMNS, KKT_COLUMNS, SUMMARY_COLUMNS


def _forward(state: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """N(x) = sum_j v_j relu(w_j . x + b_j), in numpy, independent of the package."""
    return np.maximum(X @ state["W"].T + state["b"], 0.0) @ state["v"]


def test_files_and_columns(smoke_dir: Path) -> None:
    manifest = json.loads((smoke_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["preset"] == "smoke"
    assert set(manifest["versions"]) >= {"marginbench", "torch", "numpy"}
    examples = pd.read_csv(smoke_dir / "examples.csv")
    summary = pd.read_csv(smoke_dir / "summary.csv")
    assert list(examples.columns[: len(EXAMPLE_COLUMNS)]) == EXAMPLE_COLUMNS
    assert list(summary.columns[: len(SUMMARY_COLUMNS) + len(KKT_COLUMNS)]) == SUMMARY_COLUMNS + KKT_COLUMNS
    assert len(summary) == 4 * 2 and set(summary["model"]) == {"vanilla", "robust-construction"}
    assert set(summary["attack"]) == {"universal-z", BEST}
    assert len(examples) == 4 * 2 * 16
    for run_id in summary["run_id"]:
        run_dir = smoke_dir / "runs" / run_id
        assert {p.name for p in run_dir.iterdir()} == {"model.pt", "data.npz", "perturbations.npz", "examples.csv", "run.json", "COMPLETE"}
        assert run_id in manifest["runs"]
    assert (summary["run_status"] == "ok").all() and (summary["attack_status"] == "ok").all() and summary["error"].isna().all()
    assert list(summary.columns[-3:]) == ["run_status", "attack_status", "error"]
    assert not list(smoke_dir.rglob("*.tmp"))


def test_the_manifest_lists_every_library_that_computed_a_number(smoke_dir: Path) -> None:
    """foolbox, scipy, daqp and pyscipopt are installed for the tests: their versions are recorded, as pip knows them."""
    versions = json.loads((smoke_dir / "manifest.json").read_text())["versions"]
    assert list(versions) == ["marginbench", "python", *LIBRARIES]
    for name in ("torch", "numpy", "pandas", "foolbox", "scipy", "daqp", "pyscipopt", "scikit-learn", "numba"):
        assert versions[name] == importlib.metadata.version(name) != NOT_INSTALLED, name



def test_every_reported_norm_and_flip_reproduces_from_the_saved_files(smoke_dir: Path) -> None:
    examples = pd.read_csv(smoke_dir / "examples.csv")
    summary = pd.read_csv(smoke_dir / "summary.csv")
    checked = 0
    for run_id, rows in examples.groupby("run_id"):
        run_dir = smoke_dir / "runs" / str(run_id)
        state = {k: t.numpy() for k, t in torch.load(run_dir / "model.pt").items()}
        data = np.load(run_dir / "data.npz")
        perturbations = np.load(run_dir / "perturbations.npz")
        X = data["X_eval"] if "X_eval" in data else data["X"]
        y = data["y_eval"] if "y_eval" in data else data["y"]
        assert state["W"].shape[1] == X.shape[1] and state["b"].shape == state["v"].shape
        attacked = rows[rows["attack"] != BEST]
        best = rows[rows["attack"] == BEST].sort_values("index")
        np.testing.assert_array_equal(best["norm"].to_numpy(), attacked.groupby("index")["norm"].min().sort_index().to_numpy())
        for attack, att_rows in attacked.groupby("attack"):
            delta = perturbations[str(attack)]
            assert delta.shape == X.shape
            att_rows = att_rows.sort_values("index")
            idx = att_rows["index"].to_numpy()
            before, after = _forward(state, X[idx]), _forward(state, X[idx] + delta[idx])
            flipped = before * after < 0
            np.testing.assert_array_equal(flipped, att_rows["success"].to_numpy())
            norms = np.where(flipped, np.linalg.norm(delta[idx], axis=1), np.inf)
            np.testing.assert_allclose(att_rows["norm"].to_numpy(), norms, rtol=1e-12)
            np.testing.assert_allclose(att_rows["margin"].to_numpy(), y[idx] * before, rtol=1e-9, atol=1e-12)
            assert np.all(delta[idx][~flipped] == 0)
            checked += int(flipped.sum())
            row = summary[(summary["run_id"] == run_id) & (summary["attack"] == attack)].iloc[0]
            assert row["median_norm"] == pytest.approx(float(np.median(norms)))
            assert row["success_rate"] == pytest.approx(float(flipped.mean()))
            assert row["median_norm_over_sqrt_d"] == pytest.approx(np.median(norms) / math.sqrt(X.shape[1]))
            # the common scale along z = sum_{i in I} y_i x_i flips every margin example, recomputed here
            on_margin = att_rows["on_margin"].to_numpy()
            z = (y[idx][on_margin, None] * X[idx][on_margin]).sum(0)
            shared = -row["common_c"] * y[idx][on_margin, None] * z / np.linalg.norm(z)
            assert np.all(_forward(state, X[idx][on_margin]) * _forward(state, X[idx][on_margin] + shared) < 0)
    assert checked > 0


def test_construction_runs_respect_theorem_3_1(smoke_dir: Path) -> None:
    summary = pd.read_csv(smoke_dir / "summary.csv")
    examples = pd.read_csv(smoke_dir / "examples.csv")
    for _, row in summary[summary["model"] == "robust-construction"].iterrows():
        norms = examples.loc[examples["run_id"] == row["run_id"], "norm"]
        assert (norms >= row["construction_radius"]).all()
        if row["attack"] == "universal-z":
            assert row["common_c"] >= row["construction_radius"]
