"""Vardi et al. Theorem 3.1: the constructed net fits the data with margin 1 and is (1-c)/4 sqrt(d)-robust."""

from __future__ import annotations

import math

import pytest
import torch

from marginbench.attacks.closed_form import UniversalZ
from marginbench.checking.verify import verify
from marginbench.models.construction import construction_radius, max_correlation, robust_construction
from marginbench.models.datasets import sphere


@pytest.mark.parametrize(("d", "n", "seed"), [(16, 16, 0), (64, 64, 1), (200, 40, 2), (50, 200, 3)])
def test_construction_has_margin_exactly_one(d: int, n: int, seed: int) -> None:
    data = sphere(d=d, n=n, seed=seed)
    net, c = robust_construction(data.X, data.y)
    assert 0 < c < 1 and net.width == n
    q = data.y * net(data.X)
    assert torch.all(q >= 1 - 1e-12) and torch.allclose(q, torch.ones_like(q), atol=1e-12)


@pytest.mark.parametrize(("d", "n", "seed"), [(16, 16, 0), (64, 64, 1), (50, 200, 3)])
def test_no_perturbation_inside_the_radius_flips(d: int, n: int, seed: int) -> None:
    """Random perturbations of norm just below (1-c)/4 sqrt(d), many directions per point: never a flip."""
    data = sphere(d=d, n=n, seed=seed)
    net, c = robust_construction(data.X, data.y)
    radius = construction_radius(c, d)
    g = torch.Generator().manual_seed(seed)
    for _ in range(20):
        direction = torch.randn(n, d, generator=g, dtype=torch.float64)
        delta = 0.999 * radius * direction / direction.norm(dim=1, keepdim=True)
        assert torch.all(data.y * net(data.X + delta) > 0)
    # toward the nearest point of the other class, the strongest single direction available
    other = data.y[:, None] != data.y[None, :]
    dist = torch.cdist(data.X, data.X).masked_fill(~other, math.inf)
    toward = data.X[dist.argmin(dim=1)] - data.X
    delta = 0.999 * radius * toward / toward.norm(dim=1, keepdim=True)
    assert torch.all(data.y * net(data.X + delta) > 0)


@pytest.mark.parametrize(("d", "n", "seed"), [(16, 16, 0), (64, 64, 1), (100, 10, 2), (50, 200, 3)])
def test_universal_z_never_reports_a_norm_below_the_radius(d: int, n: int, seed: int) -> None:
    data = sphere(d=d, n=n, seed=seed)
    net, c = robust_construction(data.X, data.y)
    checked = verify(net, data.X, UniversalZ()(net, data.X, data.y))
    assert checked.success.any(), "the test needs flips to compare"
    assert torch.all(checked.norm >= construction_radius(c, d))


def test_correlated_data_is_refused_with_a_clear_error() -> None:
    data = sphere(d=8, n=4, seed=0)
    X = torch.cat([data.X, data.X[:1]])  # a repeated point: c = 1
    with pytest.raises(ValueError, match="c = 1"):
        robust_construction(X, torch.cat([data.y, -data.y[:1]]))
    assert max_correlation(X) == pytest.approx(1.0)
