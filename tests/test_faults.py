"""Numerical faults and failing code are recorded as failed runs or attacks; the sweep goes on."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from conftest import QUICK, read_json, run_cli
from marginbench.attacks.base import Attack
from marginbench.bench.experiment.recipes import BuiltModel, RunContext
from marginbench.bench.registry.registries import ATTACKS, MODELS
from marginbench.checking.proposal import AttackResult
from marginbench.models.datasets import Dataset
from marginbench.models.two_layer import TwoLayerNet


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
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "summary.csv").drop(columns=["train_seconds", "attack_seconds"]), summary.drop(columns=["train_seconds", "attack_seconds"])
    )


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


def _returns(make: Callable[[Tensor, Tensor, AttackResult], object]) -> Callable[[Dataset, RunContext], Attack]:
    """A factory of an attack that returns ``make(X, y, universal-z's result)``: a good proposal made bad."""

    def factory(data: Dataset, context: RunContext) -> Attack:
        good = ATTACKS.get("universal-z")(data, context)
        return lambda net, X, y: make(X, y, good(net, X, y))  # type: ignore[return-value]

    return factory


def _exits(X: Tensor, y: Tensor, good: AttackResult) -> object:
    raise SystemExit(0)


def _interrupts(X: Tensor, y: Tensor, good: AttackResult) -> object:
    raise KeyboardInterrupt


BAD_ATTACKS = {
    "exits": (_exits, "PluginExit: attack exits called sys.exit(0)"),
    "interrupts": (_interrupts, "PluginExit: attack interrupts raised KeyboardInterrupt itself (no Ctrl-C came)"),
    "float-found": (lambda X, y, good: AttackResult(delta=good.delta, found=1.0), "BadProposal: found must be a bool tensor of shape (8,), got a float"),  # type: ignore[arg-type]
    "float-mask": (
        lambda X, y, good: AttackResult(delta=good.delta, found=good.found.double()),
        "BadProposal: found must be a bool tensor of shape (8,), got a float64 tensor of shape (8,)",
    ),
    "short-delta": (
        lambda X, y, good: AttackResult(delta=good.delta[:3], found=good.found),
        "BadProposal: delta must be a floating tensor of shape (8, 8), got a float64 tensor of shape (3, 8)",
    ),
    "nan-delta": (
        lambda X, y, good: AttackResult(delta=good.delta * torch.nan, found=good.found),
        "BadProposal: delta holds NaN or inf in 8 of the rows that found proposes as flips",
    ),
    "not-a-result": (lambda X, y, good: (good.delta, good.found), "BadProposal: an attack returns an AttackResult, not a tuple"),
}


def test_an_attack_that_exits_or_returns_what_cannot_be_verified_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (make, _) in BAD_ATTACKS.items():
        monkeypatch.setitem(ATTACKS._factories, name, _returns(make))
    # detached, not refused: the harness reads the values only
    monkeypatch.setitem(
        ATTACKS._factories, "grad-delta", _returns(lambda X, y, good: AttackResult(delta=good.delta.clone().requires_grad_(), found=good.found))
    )
    out = tmp_path / "o"
    attacks = ",".join([*BAD_ATTACKS, "grad-delta", "universal-z"])
    assert run_cli(["run", *QUICK, "--models", "robust-construction", "--attacks", attacks, "--seeds", "0", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("attack")
    for name, (_, error) in BAD_ATTACKS.items():
        assert (summary.loc[name, "attack_status"], summary.loc[name, "error"], summary.loc[name, "success_rate"]) == ("failed", error, 0), name
    assert summary.loc["universal-z", "success_rate"] == 1 and summary.loc["best", "success_rate"] == 1
    assert summary.loc["grad-delta", "attack_status"] == "ok" and summary.loc["grad-delta", "success_rate"] == 1
    norms = pd.read_csv(out / "examples.csv").pivot(index="index", columns="attack", values="norm")
    np.testing.assert_array_equal(norms["grad-delta"], norms["universal-z"])
    np.testing.assert_array_equal(norms["best"], norms["universal-z"])


def test_a_model_that_exits_is_a_failed_run_and_the_sweep_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def quits(data: Dataset, context: RunContext) -> BuiltModel:
        raise SystemExit(3)

    monkeypatch.setitem(MODELS._factories, "quits", quits)
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--models", "quits,robust-construction", "--seeds", "0", "--out", str(out)]) == 1
    summary = pd.read_csv(out / "summary.csv").set_index("model")
    assert summary.loc["quits", "run_status"] == "failed"
    assert summary.loc["quits", "error"] == "PluginExit: the run's dataset or model (sphere, quits) called sys.exit(3)"
    assert (summary.loc["robust-construction", "run_status"] == "ok").all()


def test_a_ctrl_c_during_an_attack_still_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def pressed(X: Tensor, y: Tensor, good: AttackResult) -> object:
        signal.raise_signal(signal.SIGINT)  # what a Ctrl-C delivers: a KeyboardInterrupt from the SIGINT handler
        return good

    monkeypatch.setitem(ATTACKS._factories, "pressed", _returns(pressed))
    # Python's own Ctrl-C handler, whoever started pytest: a shell's background job (`cmd &`, no job control) starts
    # with SIGINT ignored, and then no Ctrl-C can reach the run at all
    launched_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        out = tmp_path / "o"
        assert run_cli(["run", *QUICK, "--models", "robust-construction", "--attacks", "pressed", "--seeds", "0,1", "--out", str(out)]) == 130
        assert "interrupted" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, launched_with)


def test_attack_fails_when_a_plugin_damaged_other_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--models", "robust-construction", "--seeds", "0,1", "--out", str(out)]) == 0

    def vandal(X: Tensor, y: Tensor, good: AttackResult) -> object:
        for marker in out.glob("runs/*/COMPLETE"):
            marker.unlink()
        return good

    monkeypatch.setitem(ATTACKS._factories, "vandal", _returns(vandal))
    capsys.readouterr()
    assert run_cli(["attack", str(out), "--attacks", "vandal"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"marginbench: error: {out}/runs/") and "it has no completion marker" in last and f"marginbench run --resume {out}" in last


def test_plot_of_only_failed_runs_is_exit_2_as_leaderboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def explodes(data: Dataset, context: RunContext) -> BuiltModel:
        raise MemoryError("pretend the model did not fit")

    monkeypatch.setitem(MODELS._factories, "explodes", explodes)
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--models", "explodes", "--seeds", "0", "--out", str(out)]) == 1
    for command in ("leaderboard", "plot"):
        capsys.readouterr()
        assert run_cli([command, str(out)]) == 2, command
        assert capsys.readouterr().err.strip().splitlines() == ["marginbench: error: the result directories hold no attack rows"], command
