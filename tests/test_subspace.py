"""The subspace family (Melamed et al. 2023): data on P, first-layer training, and the theorems' diagnostics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from marginbench.bench.execution.runner import theory_diagnostics
from marginbench.bench.experiment.recipes import BuiltModel, RunContext
from marginbench.bench.experiment.spec import ExperimentSpec, SpecError
from marginbench.bench.registry.registries import DATASETS, MODELS
from marginbench.models.datasets import Dataset, digits, subspace
from marginbench.models.diagnostics import off_manifold_gradients, project_off, thm51_assumption
from marginbench.models.train import SUBSPACE_TRAIN, TrainSpec

# ell >= 100 so that Theorems 4.1 / 6.1 hold with probability >= 1 - e^{-100/16} > 0.998 per point.
SETTING = ExperimentSpec(family="subspace", dataset="subspace", d=128, ell=112, n=40, n_eval=40, width=64, seeds=(0,))


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[Dataset, BuiltModel, dict[str, float]]]:
    """vanilla, small-init and l2 on the same data and seed (a few seconds)."""
    out = {}
    for run in SETTING.runs():
        data = DATASETS.get(run.dataset)(run)
        model = MODELS.get(run.model)(data, RunContext.of(run))
        facts, _ = theory_diagnostics(run, data, model)
        out[run.model] = (data, model, facts)
    return out


def test_subspace_points_lie_on_p_with_the_documented_radius() -> None:
    data = subspace(d=30, ell=20, n=25, n_eval=10, seed=3, label_rule="linear")
    B = data.P_basis
    assert B is not None and B.shape == (30, 10)
    assert torch.allclose(B.T @ B, torch.eye(10, dtype=B.dtype), atol=1e-12)
    for X in (data.X, data.X_eval):
        assert X is not None
        assert project_off(B, X).abs().max() < 1e-12
        assert torch.allclose(X.norm(dim=1), torch.full((X.shape[0],), math.sqrt(30), dtype=X.dtype))
    assert set(data.y.tolist()) == {-1.0, 1.0}


def test_digits_lie_on_their_principal_subspace() -> None:
    data = digits(ell=54, n=200, n_eval=50, seed=0)
    B = data.P_basis
    assert B is not None and B.shape == (64, 10)
    assert project_off(B, data.X).abs().max() < 1e-10 * data.X.abs().max()
    assert abs(float(data.X.norm(dim=1).mean()) - 8.0) < 1.0
    assert 0.3 < float((data.y == 1).double().mean()) < 0.7  # odd vs even: balanced


def test_only_the_first_layer_is_trained_and_every_margin_reaches_the_target(built) -> None:
    data, model, _ = built["vanilla"]
    assert model.train is not None and model.init is not None
    assert model.train.stop_reason == "target_margin"
    assert float((data.y * model.net(data.X)).min()) >= SUBSPACE_TRAIN.target_margin
    assert torch.equal(model.net.v, model.init.v) and torch.equal(model.net.b, torch.zeros_like(model.net.b))
    assert set((model.net.v.abs() * math.sqrt(64)).round(decimals=12).tolist()) == {1.0}


@pytest.mark.parametrize("name", ["vanilla", "small-init"])
def test_theorem_a2_off_manifold_weights_do_not_move_without_l2(built, name: str) -> None:
    _, _, facts = built[name]
    assert facts["off_weight_drift"] < 1e-12


def test_theorem_a2_fails_with_l2_exactly_as_theorem_6_2_says(built) -> None:
    data, model, facts = built["l2"]
    assert facts["off_weight_drift"] > 0.1
    # Thm 6.2's proof: the off-manifold part shrinks by exactly (1 - eta lambda)^T, here 1/sqrt(2d) (Cor 6.2)
    assert model.train.weight_decay == pytest.approx(1 / math.sqrt(2 * data.d), rel=1e-9)
    off_now = project_off(data.P_basis, model.net.W)
    off_init = project_off(data.P_basis, model.init.W)
    assert torch.allclose(off_now, model.train.weight_decay * off_init, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", ["vanilla", "small-init", "l2"])
def test_theorem_4_1_lower_and_6_1_upper_bounds_hold_at_ell_112(built, name: str) -> None:
    data, model, _ = built[name]
    beta = model.facts["init_beta"] * model.train.weight_decay
    grads = off_manifold_gradients(model.net, data.X_eval, data.P_basis, beta=beta)
    assert torch.all(grads.k > 0)
    assert torch.all(grads.g_off >= grads.lower), (grads.g_off / grads.lower).min()
    assert torch.all(grads.g_off <= grads.upper), (grads.g_off / grads.upper).max()


def test_small_init_and_l2_shrink_the_off_manifold_gradient(built) -> None:
    vanilla = built["vanilla"][2]["median_g_off"]
    assert built["small-init"][2]["median_g_off"] < 0.2 * vanilla
    assert built["l2"][2]["median_g_off"] < 0.2 * vanilla


def test_sgd_trains_the_same_family() -> None:
    spec = ExperimentSpec(family="subspace", d=40, ell=30, n=30, n_eval=5, width=32, models=("vanilla",), train=TrainSpec(
        loss="logistic", lr=0.05, lr_growth=1.0, target_loss=None, target_margin=1.0, max_iters=5000, layers="first", batch_size=7))
    (run,) = spec.runs()
    data = DATASETS.get(run.dataset)(run)
    model = MODELS.get("vanilla")(data, RunContext.of(run))
    assert model.train.stop_reason == "target_margin"
    facts, _ = theory_diagnostics(run, data, model)
    assert facts["off_weight_drift"] < 1e-12  # Theorem A.2 holds for SGD too


def test_thm51_assumption_formula() -> None:
    assert thm51_assumption(ell=10_000, width=2, d=100)  # 32 * 1 * log(400) = 191.7
    assert not thm51_assumption(ell=100, width=2, d=100)
    assert not thm51_assumption(ell=112, width=64, d=128)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "subspace", "d": 10, "ell": 10}, "1 <= ell < d"),
        ({"family": "subspace", "d": 10, "ell": 0}, "1 <= ell < d"),
        ({"family": "kkt", "ell": 3}, "ell applies to subspace data only"),
        ({"family": "subspace", "dataset": "digits", "d": 32}, r"digits data live in R\^64"),
        ({"family": "subspace", "dataset": "sphere"}, "not part of the subspace family"),
        ({"family": "subspace", "init_scale": 0.0}, "init_scale must be a positive number"),
    ],
)
def test_invalid_subspace_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ExperimentSpec(**kwargs)


@pytest.mark.slow
def test_kkt_residual_falls_as_training_runs_longer() -> None:
    from marginbench.models.datasets import sphere
    from marginbench.models.diagnostics import kkt_residual
    from marginbench.models.train import train
    from marginbench.models.two_layer import pytorch_default_init

    data = sphere(d=16, n=16, seed=2)
    net = pytorch_default_init(16, 32, generator=torch.Generator().manual_seed(2))
    residuals = [kkt_residual(net, data.X, data.y)]
    spec = TrainSpec(max_iters=20_000)
    for _ in range(3):  # continue the same schedule: 20k iterations per leg, the learning rate carried over
        net, report = train(net, data.X, data.y, spec)
        spec = TrainSpec(lr=report.final_lr, max_iters=20_000)
        residuals.append(kkt_residual(net, data.X, data.y))
    assert all(later < earlier for earlier, later in itertools.pairwise(residuals)), residuals
