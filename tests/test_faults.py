"""Numerical faults and failing code are recorded as failed runs or attacks; the sweep goes on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from conftest import read_json, run_cli
from marginbench.attacks.base import Attack, AttackResult
from marginbench.bench.build import BuiltModel, RunContext
from marginbench.bench.registry import ATTACKS, MODELS
from marginbench.models.datasets import Dataset
from marginbench.models.two_layer import TwoLayerNet

QUICK = ["--d", "8", "--width", "8", "--max-iters", "300", "--attacks", "universal-z", "--no-progress"]


def test_training_that_diverges_is_a_failed_run_and_the_sweep_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--lr", "1e300", "--seeds", "0,1", "--out", str(out)]) == 1  # a failed run fails the sweep
    summary = pd.read_csv(out / "summary.csv")
    vanilla, construction = summary[summary["model"] == "vanilla"], summary[summary["model"] == "robust-construction"]
    assert len(vanilla) == 4 and len(construction) == 4
    assert (vanilla["run_status"] == "failed").all() and (vanilla["train_stop_reason"] == "nonfinite").all()
    assert vanilla["error"].str.fullmatch(r"training hit NaN/inf at iteration \d+; rows are for the last finite parameters").all()
    assert (construction["run_status"] == "ok").all() and construction["error"].isna().all()
    manifest = read_json(out / "manifest.json")
    assert manifest["status"] == "complete" and manifest["failed_runs"] == 2
    failed = [entry for entry in manifest["runs"].values() if entry["run_status"] == "failed"]
    assert len(failed) == 2 and all(entry["train"]["nonfinite_iteration"] is not None for entry in failed)
    err = capsys.readouterr().err.splitlines()
    listed = [line for line in err if line.startswith("failed: ")]
    assert sorted(line.split(": ")[1] for line in listed) == sorted(vanilla["run_id"].unique())
    assert "training hit NaN/inf" in listed[0] and "2 of 4 runs failed" in err[-1]


class _RaisesOnTrainedNets:
    """An attack that raises on trained models and proposes nothing on the construction."""

    def __init__(self, model: str) -> None:
        self.model = model

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        if self.model == "vanilla":
            raise RuntimeError("boom\non purpose")
        return AttackResult(delta=torch.zeros_like(X), found=torch.zeros_like(y, dtype=torch.bool))


def test_an_attack_that_raises_on_one_model_is_recorded_and_the_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def factory(data: Dataset, context: RunContext) -> Attack:
        return _RaisesOnTrainedNets(context.run.model)

    monkeypatch.setitem(ATTACKS._factories, "raises", factory)
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--attacks", "raises,universal-z", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index(["model", "attack"])
    assert summary.loc[("vanilla", "raises"), "attack_status"] == "failed"
    assert summary.loc[("vanilla", "raises"), "error"] == "RuntimeError: boom on purpose"  # one line
    assert summary.loc[("vanilla", "raises"), "success_rate"] == 0
    assert (summary["run_status"] == "ok").all()
    others = summary.drop(index=("vanilla", "raises"))
    assert (others["attack_status"] == "ok").all() and others["error"].isna().all()
    examples = pd.read_csv(out / "examples.csv")
    by = examples.set_index(["model", "attack", "index"])["norm"].sort_index()
    assert np.isinf(by.loc[("vanilla", "raises")]).all()
    np.testing.assert_array_equal(by.loc[("vanilla", "best")].to_numpy(), by.loc[("vanilla", "universal-z")].to_numpy())
    run_id = examples.loc[examples["model"] == "vanilla", "run_id"].iloc[0]
    assert (np.load(out / "runs" / run_id / "perturbations.npz")["raises"] == 0).all()


def test_a_run_that_raises_is_a_failed_run_with_a_row_per_attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explodes(data: Dataset, context: RunContext) -> BuiltModel:
        raise MemoryError("pretend the model did not fit")

    monkeypatch.setitem(MODELS._factories, "explodes", explodes)
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--models", "explodes,robust-construction", "--out", str(out)]) == 1
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["model"]) == ["explodes", "robust-construction", "robust-construction"]  # spec order kept
    failed = summary.iloc[0]
    assert failed["run_status"] == "failed" and failed["attack_status"] == "not run" and failed["n_attacked"] == 0
    assert failed["error"] == "MemoryError: pretend the model did not fit" and np.isnan(failed["median_norm"])
    assert (summary.iloc[1:]["run_status"] == "ok").all()
    run_dir = out / "runs" / failed["run_id"]
    assert {p.name for p in run_dir.iterdir()} == {"examples.csv", "run.json", "COMPLETE"}
    marker = (run_dir / "COMPLETE").read_bytes()
    assert run_cli(["run", "--resume", str(out), "--keep-failed", "--no-progress"]) == 1  # kept as it is: not redone
    assert (run_dir / "COMPLETE").read_bytes() == marker
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv").drop(columns=["train_seconds", "attack_seconds"]), summary.drop(columns=["train_seconds", "attack_seconds"]))


def test_resume_retries_a_failed_run_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that failed (out of memory, say) is run again by --resume; here the second attempt succeeds."""
    attempts = []

    def flaky(data: Dataset, context: RunContext) -> BuiltModel:
        attempts.append(context.run.run_id)
        if len(attempts) == 1:
            raise MemoryError("pretend the model did not fit")
        return MODELS.get("robust-construction")(data, context)

    monkeypatch.setitem(MODELS._factories, "flaky", flaky)
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--models", "flaky", "--out", str(out)]) == 1
    run_id = attempts[0]
    capsys.readouterr()
    assert run_cli(["run", "--resume", str(out), "--no-progress"]) == 0
    assert f"retrying {run_id}: it failed (MemoryError: pretend the model did not fit)" in capsys.readouterr().err
    assert attempts == [run_id, run_id] and (pd.read_csv(out / "summary.csv")["run_status"] == "ok").all()
