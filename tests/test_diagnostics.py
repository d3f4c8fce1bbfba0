"""Theory diagnostics: the KKT residual against an explicit non-negative least squares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import marginbench.models.diagnostics as diagnostics
from conftest import Trained, random_net
from marginbench.models.diagnostics import _nnls_eig, kkt_residual, margin_set, nnls_gram, normalized_margin
from marginbench.models.two_layer import TwoLayerNet


def _explicit_residual(net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor) -> float:
    columns = []
    for i in range(X.shape[0]):
        W, b, v = (t.clone().requires_grad_(True) for t in (net.W, net.b, net.v))
        (y[i] * TwoLayerNet(W=W, b=b, v=v)(X[i : i + 1])).sum().backward()
        columns.append(torch.cat([W.grad.flatten(), b.grad, v.grad]).numpy())
    A = np.stack(columns, axis=1)
    theta = torch.cat([net.W.flatten(), net.b, net.v]).numpy()
    _, residual = nnls(A, theta, maxiter=5000)
    return residual / np.linalg.norm(theta)


@pytest.mark.parametrize("seed", range(3))
def test_kkt_residual_matches_explicit_nnls(seed: int) -> None:
    net = random_net(6, 10, seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = torch.where(net(X) > 0, 1.0, -1.0).to(torch.float64)
    assert kkt_residual(net, X, y) == pytest.approx(_explicit_residual(net, X, y), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_block_pivoting_finds_the_lawson_hanson_optimum(seed: int) -> None:
    """The Gram-form solver against scipy's NNLS, on problems where about half the multipliers are pinned at 0
    (a random target), and on a rank-deficient G (more unknowns than rows); and the Lawson-Hanson fallback too."""
    rng = np.random.default_rng(seed)
    for rows, cols in ((40, 25), (10, 25)):
        A, target = rng.normal(size=(rows, cols)), rng.normal(size=rows)
        G, c = A.T @ A, A.T @ target
        lam = nnls_gram(G, c)
        expected, _ = nnls(A, target, maxiter=5000)
        assert (lam >= 0).all() and 0 < (lam == 0).sum() < cols
        best = expected @ G @ expected - 2 * c @ expected
        for found in (lam, _nnls_eig(G, c)):
            assert found @ G @ found - 2 * c @ found == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_kkt_residual_is_zero_at_a_kkt_point() -> None:
    """A KKT point by construction: x_j at the corners of a simplex (x_i . x_j = -3 for i != j, |x_j|^2 = 9),
    one neuron per example with w_j = beta x_j, b_j = beta, v_j = y_j beta sqrt(|x_j|^2 + 1). Neuron j is
    active on x_j only, and theta = sum_j lambda grad q_j with lambda = 1/sqrt(|x_j|^2 + 1) > 0."""
    n, d, beta = 4, 6, 0.7
    E = torch.eye(d, dtype=torch.float64)[:n]
    X = 12**0.5 * (E - E.mean(0))
    y = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    net = TwoLayerNet(W=beta * X, b=torch.full((n,), beta, dtype=torch.float64), v=y * beta * 10**0.5)
    assert kkt_residual(net, X, y) == pytest.approx(0.0, abs=1e-6)
    moved = TwoLayerNet(W=net.W, b=net.b, v=1.5 * net.v)  # off the KKT point: the residual must see it
    assert kkt_residual(moved, X, y) > 1e-2


def test_kkt_residual_is_empty_where_its_gram_matrix_would_be_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MAX_GRAM_EXAMPLES the n x n Gram matrix is not formed (scipy's OpenBLAS crashed at n = 18,520): NaN."""
    net = random_net(d=5, width=8, seed=0)
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.tensor([1.0, -1.0] * 6, dtype=torch.float64)
    assert math.isfinite(kkt_residual(net, X, y))
    monkeypatch.setattr(diagnostics, "MAX_GRAM_EXAMPLES", 11)
    monkeypatch.setattr(diagnostics, "kkt_multipliers", lambda *_: pytest.fail("the Gram matrix was formed"))
    assert math.isnan(kkt_residual(net, X, y))


@pytest.mark.slow
def test_training_moves_towards_kkt_and_raises_the_normalized_margin(trained_vanilla: Trained) -> None:
    from marginbench.models.two_layer import pytorch_default_init

    data, net = trained_vanilla.data, trained_vanilla.net
    init = pytorch_default_init(64, 64, generator=torch.Generator().manual_seed(0))
    assert kkt_residual(net, data.X, data.y) < 0.9 * kkt_residual(init, data.X, data.y)
    q = data.y * net(data.X)
    assert normalized_margin(net, q) > 0
    assert margin_set(q).sum() >= 1
