"""The trainer: the paper's schedule reaches loss < 1e-30 soundly; caps and numerical faults are reported."""

from __future__ import annotations

import math

import torch

from conftest import Trained
from marginbench.models.datasets import sphere
from marginbench.models.train import TrainSpec, train
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init


def test_paper_schedule_reaches_1e_minus_30_without_nan(trained_vanilla: Trained) -> None:
    report, net, data = trained_vanilla.report, trained_vanilla.net, trained_vanilla.data
    assert report.stop_reason == "target_loss" and report.reached_target
    assert report.log10_loss < -30
    assert report.nonfinite_iteration is None
    for t in (net.W, net.b, net.v):
        assert torch.isfinite(t).all()
    q = data.y * net(data.X)
    # The returned parameters really have the reported loss: sum_i e^{-q_i} < 1e-30, recomputed directly.
    assert float(torch.exp(-q).sum()) < 1e-30
    assert math.isclose(math.log10(float(torch.exp(-q).sum())), report.log10_loss, rel_tol=1e-9)


def test_float32_training_reaches_the_target_too() -> None:
    """Log-domain steps: in float32 the per-example losses underflow long before 1e-30, training must not stall."""
    data = sphere(d=16, n=16, seed=1)
    init = pytorch_default_init(16, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    spec = TrainSpec(growth_every=10)  # the paper's growth, ten times as often: same regime, 10x fewer steps
    net, report = train(init, data.X.float(), data.y.float(), spec)
    assert report.stop_reason == "target_loss", report
    assert net.W.dtype == torch.float32 and torch.isfinite(net.W).all()
    assert float((data.y * net.to("cpu", torch.float64)(data.X)).min()) > 60  # e^{-60} ~ 1e-26 per example


def test_iteration_cap_is_reported_as_such() -> None:
    data = sphere(d=8, n=8, seed=0)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(0))
    _, report = train(init, data.X, data.y, TrainSpec(max_iters=50))
    assert report.stop_reason == "max_iters" and report.iterations == 50 and not report.reached_target


def test_nan_parameters_are_caught_with_their_iteration() -> None:
    data = sphere(d=8, n=8, seed=0)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(0))
    broken = TwoLayerNet(W=init.W.clone().index_fill_(0, torch.tensor([3]), math.nan), b=init.b, v=init.v)
    _, report = train(broken, data.X, data.y, TrainSpec())
    assert report.stop_reason == "nonfinite" and report.nonfinite_iteration == 0


def test_divergent_step_is_caught_and_last_finite_parameters_returned() -> None:
    data = sphere(d=8, n=8, seed=0)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(0))
    net, report = train(init, data.X, data.y, TrainSpec(lr=1e300, lr_growth=1e10, growth_every=1))
    assert report.stop_reason == "nonfinite" and report.nonfinite_iteration is not None
    assert all(torch.isfinite(t).all() for t in (net.W, net.b, net.v))
    assert math.isfinite(report.log10_loss)
