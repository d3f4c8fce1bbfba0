"""The trainer: the paper's schedule reaches loss < 1e-30 soundly; caps and numerical faults are reported; batched
training gives each net the bits of its own run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from conftest import Trained
from marginbench.models.datasets import sphere, subspace
from marginbench.models.train import NORMALIZED_LR, SUBSPACE_TRAIN, TrainReport, TrainSpec, normalized_schedule, train, train_batch
from marginbench.models.two_layer import TwoLayerNet, gaussian_init, pytorch_default_init


@pytest.mark.slow
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


def test_normalized_schedule_sets_the_triple_and_keeps_the_rest() -> None:
    spec = normalized_schedule(TrainSpec(target_loss=None), l2=1e-2, max_iters=10)  # l2 > 0 only with a constant lr
    assert spec == TrainSpec(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0, target_loss=None, l2=1e-2, max_iters=10)
    assert normalized_schedule(TrainSpec(), lr=0.01).lr == 0.01
    with pytest.raises(ValueError):  # validated like any spec: the normalized schedule is full-batch only
        normalized_schedule(TrainSpec(batch_size=4))


# Batched training (train_batch): each net gets exactly the iterations train() gives it alone.
@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: with more, MKL may split a lone net's small products across threads (see train_batch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kkt_case(seed: int) -> tuple[TwoLayerNet, torch.Tensor, torch.Tensor]:
    data = sphere(d=10, n=10, seed=seed)
    return pytorch_default_init(10, 24, generator=torch.Generator().manual_seed(seed)), data.X, data.y


def _subspace_case(seed: int) -> tuple[TwoLayerNet, torch.Tensor, torch.Tensor]:
    data = subspace(d=20, ell=15, n=37, n_eval=5, seed=seed)  # n = 37: no multiple of any vector width
    return gaussian_init(20, 30, beta=20**-0.5, generator=torch.Generator().manual_seed(seed)), data.X, data.y


def _assert_batched_equals_single(cases: list[tuple[TwoLayerNet, torch.Tensor, torch.Tensor]], spec: TrainSpec, seeds: list[int]) -> list[TrainReport]:
    batched = train_batch([c[0] for c in cases], torch.stack([c[1] for c in cases]), torch.stack([c[2] for c in cases]), spec, seeds=seeds)
    for (init, X, y), seed, (net, report) in zip(cases, seeds, batched, strict=True):
        alone, alone_report = train(init, X, y, spec, seed=seed)
        for t, u in ((net.W, alone.W), (net.b, alone.b), (net.v, alone.v)):
            torch.testing.assert_close(t, u, rtol=0, atol=0, equal_nan=True)  # bit for bit (NaN where the init had it)
        assert dataclasses.replace(report, seconds=0.0) == dataclasses.replace(alone_report, seconds=0.0)
    return [report for _, report in batched]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_batched_kkt_training_equals_single_runs_bit_for_bit() -> None:
    """Vardi et al.'s recipe (growth every 10 iterations: ~7500 steps) to loss < 1e-30, float64 and float32."""
    spec = TrainSpec(growth_every=10)
    reports = _assert_batched_equals_single([_kkt_case(seed) for seed in (0, 1, 2)], spec, [0, 1, 2])
    assert all(r.stop_reason == "target_loss" for r in reports) and len({r.iterations for r in reports}) == 3
    cases32 = [(init.to("cpu", torch.float32), X.float(), y.float()) for init, X, y in map(_kkt_case, (2, 0))]
    _assert_batched_equals_single(cases32, spec, [2, 0])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "spec",
    [
        SUBSPACE_TRAIN,
        dataclasses.replace(SUBSPACE_TRAIN, batch_size=10, max_iters=300),
        dataclasses.replace(SUBSPACE_TRAIN, l2=0.5, target_margin=None, max_iters=200),
        dataclasses.replace(SUBSPACE_TRAIN, target_loss=10.0, target_margin=None),
    ],
    ids=["gd-target-margin", "sgd", "l2", "logistic-target-loss"],
)
def test_batched_subspace_training_equals_single_runs_bit_for_bit(spec: TrainSpec) -> None:
    _assert_batched_equals_single([_subspace_case(seed) for seed in (0, 1, 2)], spec, [0, 1, 2])


@pytest.mark.usefixtures("one_thread")
def test_nets_that_stop_leave_the_batch_with_their_own_reason_and_iteration() -> None:
    spec = dataclasses.replace(SUBSPACE_TRAIN, max_iters=1500)
    reports = _assert_batched_equals_single([_subspace_case(seed) for seed in (0, 1, 2)], spec, [0, 1, 2])
    assert [r.stop_reason for r in reports] == ["max_iters", "target_margin", "target_margin"]
    assert reports[0].iterations == 1500 and reports[1].iterations < reports[2].iterations < 1500


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_nonfinite_nets_stop_alone_with_their_last_finite_parameters() -> None:
    """One net starts with NaN, one diverges (its data scaled by 1e150 make the step overflow); the third trains on."""
    nan_init, X0, y0 = _kkt_case(0)
    nan_init = TwoLayerNet(W=nan_init.W.clone().index_fill_(0, torch.tensor([3]), math.nan), b=nan_init.b, v=nan_init.v)
    big_init, X1, y1 = _kkt_case(1)
    cases = [(nan_init, X0, y0), (big_init, X1 * 1e150, y1), _kkt_case(2)]
    reports = _assert_batched_equals_single(cases, TrainSpec(growth_every=10), [0, 1, 2])
    assert [r.stop_reason for r in reports] == ["nonfinite", "nonfinite", "target_loss"]
    assert reports[0].nonfinite_iteration == 0 and reports[1].nonfinite_iteration is not None
