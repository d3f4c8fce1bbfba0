"""The network's analytic gradient and the trainer's log-domain loss against direct formulas."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import random_net
from marginbench.models.kernels import margin_gradient_step
from marginbench.models.train_spec import LOSSES, log_loss_terms, log_neg_loss_derivative
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init


def test_analytic_gradient_matches_autograd() -> None:
    net = random_net(7, 11, seed=3)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(13, 7, generator=g, dtype=torch.float64)
    weights = torch.randn(13, generator=g, dtype=torch.float64)
    W, b, v = (t.clone().requires_grad_(True) for t in (net.W, net.b, net.v))
    (TwoLayerNet(W=W, b=b, v=v)(X) @ weights).backward()
    dW, db, dv = (t[0] for t in margin_gradient_step(torch.relu(net.preactivations(X))[None], X[None], net.v[None], weights[None]))
    for analytic, auto in ((dW, W.grad), (db, b.grad), (dv, v.grad)):
        assert torch.allclose(analytic, auto, rtol=1e-12, atol=1e-12)


def test_input_gradient_matches_autograd_and_is_counted_as_one_backward_pass() -> None:
    """value_and_input_grad's closed form (1[Z > 0] * v) @ W against autograd, including rows with a
    preactivation exactly 0 (relu's derivative there is 0 in both), and the pass counts it reports."""
    from marginbench.bench.performance.counting import CountingNet

    net = random_net(7, 11, seed=3)
    g = torch.Generator().manual_seed(5)
    X = torch.randn(13, 7, generator=g, dtype=torch.float64)
    X[0] = 0.0
    net = TwoLayerNet(W=net.W, b=torch.where(torch.arange(11) % 3 == 0, 0.0, net.b), v=net.v)  # Z = 0 on row 0
    dx = X.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(net(dx).sum(), dx)
    value, grad = net.value_and_input_grad(X)
    assert torch.equal(value, net(X))
    assert torch.allclose(grad, auto, rtol=1e-12, atol=1e-12)
    counted = CountingNet.wrap(net)
    counted.value_and_input_grad(X)
    assert (counted.counts.forward, counted.counts.backward) == (13, 13)


@pytest.mark.parametrize("loss", LOSSES)
def test_log_loss_matches_direct_formula_where_representable(loss: str) -> None:
    q = torch.linspace(-30, 60, 1001, dtype=torch.float64)
    direct = torch.exp(-q) if loss == "exp" else torch.log1p(torch.exp(-q))
    neg_derivative = torch.exp(-q) if loss == "exp" else torch.sigmoid(-q)
    assert torch.allclose(log_loss_terms(q, loss), torch.log(direct), rtol=1e-10, atol=1e-12)
    assert torch.allclose(log_neg_loss_derivative(q, loss), torch.log(neg_derivative), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_loss_stays_finite_far_below_underflow(loss: str, dtype: torch.dtype) -> None:
    """e^{-q} underflows at q ~ 104 (float32) and ~ 745 (float64); its logarithm must not."""
    q = torch.tensor([100.0, 800.0, 1e4], dtype=dtype)
    log_terms = log_loss_terms(q, loss)
    assert torch.isfinite(log_terms).all()
    assert torch.allclose(log_terms, -q, rtol=1e-6)


def test_default_init_matches_nn_linear_bounds() -> None:
    net = pytorch_default_init(50, 400, generator=torch.Generator().manual_seed(0))
    assert net.W.abs().max() <= 1 / math.sqrt(50) and net.b.abs().max() <= 1 / math.sqrt(50)
    assert net.v.abs().max() <= 1 / math.sqrt(400)
    assert net.W.abs().max() > 0.9 / math.sqrt(50)  # uniform over the whole interval, not a smaller one
    again = pytorch_default_init(50, 400, generator=torch.Generator().manual_seed(0))
    assert torch.equal(net.W, again.W) and torch.equal(net.v, again.v)
