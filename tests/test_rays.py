"""The exact ray analysis against brute force on dense grids, on arbitrary piecewise-linear nets."""

from __future__ import annotations

import pytest
import torch

from conftest import random_net
from marginbench.attacks.rays import flip_intervals, flips, smallest_common_scale, smallest_verified

# Nets whose sign changes within the searched range (seed 3's net is positive almost everywhere).
SEEDS = (0, 1, 2, 4, 5, 6)


def _rays(seed: int, n: int = 12, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    U = torch.randn(n, d, generator=g, dtype=torch.float64)
    return X, U / U.norm(dim=1, keepdim=True)


def _grid_flipped(net, X, U, grid):  # (n, len(grid)) bool: strict flip at each grid scale
    base = net(X)
    moved = net((X[:, None, :] + grid[None, :, None] * U[:, None, :]).reshape(-1, X.shape[1])).reshape(X.shape[0], -1)
    return base[:, None] * moved < 0


@pytest.mark.parametrize("seed", SEEDS)
def test_first_flip_is_exact_against_a_dense_grid(seed: int) -> None:
    net = random_net(5, 9, seed)
    X, U = _rays(seed + 100)
    t_max = 6.0
    intervals = flip_intervals(net, X, U, t_max=t_max)
    first = intervals.first_flip()
    grid = torch.linspace(0, t_max, 60001, dtype=torch.float64)[1:]
    flipped = _grid_flipped(net, X, U, grid)
    step = float(grid[1] - grid[0])
    assert flipped.any(), "the test needs some rays that flip"
    for i in range(X.shape[0]):
        hits = grid[flipped[i]]
        if hits.numel() == 0:
            # no grid point flips: the exact flip set, if any, is thinner than the grid spacing
            assert not torch.isfinite(first[i]) or float(intervals.right[intervals.row == i].max() - first[i]) < 2 * step
            continue
        # no grid point before the reported infimum flips, and the first grid flip is within a spacing of it
        assert float(hits[0]) >= float(first[i]) - 1e-9
        assert float(hits[0]) - float(first[i]) <= step + 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_every_grid_flip_lies_in_a_reported_interval(seed: int) -> None:
    net = random_net(5, 9, seed)
    X, U = _rays(seed + 200)
    intervals = flip_intervals(net, X, U, t_max=6.0)
    grid = torch.linspace(0, 6.0, 3001, dtype=torch.float64)[1:]
    flipped = _grid_flipped(net, X, U, grid)
    for i, j in flipped.nonzero().tolist():
        mine = intervals.row == i
        t = float(grid[j])
        assert bool(((intervals.left[mine] <= t + 1e-9) & (t - 1e-9 <= intervals.right[mine])).any())


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_verified_scales_flip_and_sit_at_the_infimum(seed: int) -> None:
    net = random_net(5, 9, seed)
    X, U = _rays(seed + 300)
    intervals = flip_intervals(net, X, U, t_max=6.0)
    t = smallest_verified(net, X, U, intervals)
    found = torch.isfinite(t)
    assert found.any()
    assert flips(net, X[found], t[found, None] * U[found]).all()
    first = intervals.first_flip()[found]
    assert torch.all(t[found] >= first) and torch.all(t[found] <= first * (1 + 1e-6) + 1e-8)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_common_scale_flips_all_and_nothing_smaller_on_a_grid_does(seed: int) -> None:
    net = random_net(5, 9, seed, bias_scale=0.2)
    X, U = _rays(seed + 400, n=6)
    intervals = flip_intervals(net, X, U, t_max=20.0)
    rows = torch.isfinite(intervals.first_flip())
    c = smallest_common_scale(net, X, U, intervals, rows)
    if c == float("inf"):  # then no scale up to t_max flips them all
        grid = torch.linspace(0, 20.0, 20001, dtype=torch.float64)[1:]
    else:
        assert flips(net, X[rows], c * U[rows]).all()
        grid = torch.linspace(0, c * (1 - 1e-6), 20001, dtype=torch.float64)[1:]
    all_flipped = _grid_flipped(net, X[rows], U[rows], grid).all(dim=0)
    assert not all_flipped.any()
