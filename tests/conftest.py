"""Shared fixtures: tiny sizes by default; the trained nets are built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


def random_net(d: int, width: int, seed: int, *, bias_scale: float = 1.0) -> TwoLayerNet:
    """A net with N(0, 1) weights: an arbitrary piecewise-linear function for property tests."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, d, generator=g, dtype=torch.float64)
    b = bias_scale * torch.randn(width, generator=g, dtype=torch.float64)
    v = torch.randn(width, generator=g, dtype=torch.float64)
    return TwoLayerNet(W=W, b=b, v=v)
