"""Shared fixtures: tiny sizes by default; the trained nets are built once per session."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from marginbench.bench.cli import main
from marginbench.models.datasets import Dataset, sphere
from marginbench.models.train import TrainReport, TrainSpec, train
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init


@dataclass(frozen=True)
class Trained:
    data: Dataset
    net: TwoLayerNet
    report: TrainReport


@pytest.fixture(scope="session")
def trained_vanilla() -> Trained:
    """d = 64, n = 64, width 64, trained with the paper's schedule to loss < 1e-30 (about 12 s)."""
    data = sphere(d=64, n=64, seed=0)
    init = pytorch_default_init(64, 64, generator=torch.Generator().manual_seed(0))
    net, report = train(init, data.X, data.y, TrainSpec())
    return Trained(data=data, net=net, report=report)


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A result directory written by `marginbench run --preset smoke` (both models, seeds 0 and 1)."""
    out = tmp_path_factory.mktemp("smoke") / "results"
    # The paper's growth ten times as often: the same regime in a tenth of the steps (seconds, not a minute).
    assert main(["run", "--preset", "smoke", "--growth-every", "10", "--out", str(out), "--no-progress"]) == 0
    return out


def random_net(d: int, width: int, seed: int, *, bias_scale: float = 1.0) -> TwoLayerNet:
    """A net with N(0, 1) weights: an arbitrary piecewise-linear function for property tests."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, d, generator=g, dtype=torch.float64)
    b = bias_scale * torch.randn(width, generator=g, dtype=torch.float64)
    v = torch.randn(width, generator=g, dtype=torch.float64)
    return TwoLayerNet(W=W, b=b, v=v)


# A sweep of six runs (three trained, three constructed) that takes a few seconds: long enough to be killed
# part-way, short enough to run three times. Resume, process-pool and Ray tests all compare with it.
SWEEP = ["--d", "8", "--width", "8", "--max-iters", "4000", "--models", "vanilla,robust-construction", "--attacks", "universal-z", "--seeds", "0,1,2", "--no-progress"]
TIMING_COLUMNS = ["train_seconds", "attack_seconds"]
# "tables": the checksums of summary.csv and examples.csv, whose timing columns differ from run to run;
# "manifest_sha256": the manifest's checksum of itself, timings included
TIMING_KEYS = {"seconds", "wall_seconds", "train_seconds", "attack_seconds", "started", "finished", "resumed", "command", "log", "tables", "manifest_sha256"}


def run_cli(argv: Sequence[str]) -> int:
    """``marginbench`` in this process: its exit status, whether it returned or exited."""
    try:
        return main(list(argv))
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.fixture(scope="session")
def reference_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SWEEP run in this process, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "results"
    assert run_cli(["run", *SWEEP, "--out", str(out)]) == 0
    return out


def assert_same_tables(first: Path, second: Path) -> None:
    """summary.csv and examples.csv of two result directories hold the same rows, timing columns aside."""
    assert (first / "examples.csv").read_bytes() == (second / "examples.csv").read_bytes()
    a, b = (pd.read_csv(root / "summary.csv").drop(columns=TIMING_COLUMNS) for root in (first, second))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not a.duplicated(["run_id", "attack"]).any()


def without_timing(value: Any) -> Any:
    """A JSON value with every timing or timestamp key removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
