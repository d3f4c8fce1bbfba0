"""Ground truth: the exact attack (SCIP), certified lower bounds, the region walk, and flips beyond rounding."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import marginbench.attacks.exact as exact_module
import marginbench.checking.certify as certify_module
from conftest import random_net
from marginbench.attacks.exact import STRICT, Exact
from marginbench.attacks.rays import flip_intervals, smallest_verified
from marginbench.attacks.region_walk import RegionWalk
from marginbench.checking.branch_and_bound import branch_and_bound
from marginbench.checking.certify import certified_radius
from marginbench.checking.flips import overshoot, rounding_bound, strict_flips
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult
from marginbench.checking.verify import certificates, verify
from marginbench.models.construction import construction_radius, robust_construction
from marginbench.models.datasets import sphere
from marginbench.models.two_layer import TwoLayerNet

pytest.importorskip("pyscipopt")  # installed with the test extra; the attack itself says how to get it


def _directions(d: int, count: int, seed: int) -> torch.Tensor:
    """(count, d) unit directions: an even grid on the circle for d = 2, Gaussian draws otherwise."""
    if d == 2:
        angle = torch.arange(count, dtype=torch.float64) * (2 * math.pi / count)
        return torch.stack([angle.cos(), angle.sin()], dim=1)
    U = torch.randn(count, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return U / U.norm(dim=1, keepdim=True)


def brute_force_radius(net: TwoLayerNet, x: torch.Tensor, directions: torch.Tensor) -> float:
    """The smallest verified flip over many rays from x (exact along each ray): an upper bound on the minimal
    flip's norm that tends to it as the directions fill the sphere."""
    X = x[None, :].expand(directions.shape[0], -1)
    t_max = SEARCH_RADIUS * math.sqrt(x.shape[0])
    return float(smallest_verified(net, X, directions, flip_intervals(net, X, directions, t_max=t_max)).min())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.integers(2, 3), width=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), bias=st.sampled_from([0.0, 0.5, 2.0]))
@example(d=2, width=4, seed=90687, bias=2.0)  # exact proposed flips at N(x') ~ -tau that a 4-row pass rejected (flips.PROPOSAL_TAUS)
def test_exact_is_never_beaten_by_a_brute_force_search_and_its_bound_never_exceeds_it(d: int, width: int, seed: int, bias: float) -> None:
    """On random tiny nets (flat all-off regions included: large negative biases), for every point: exact's
    verified norm is at most the brute-force minimum over 20,000 rays (it is the optimum, up to the depth it
    asks for at a corner), and its lower bound and the relaxation's are at most that minimum (they are sound)."""
    net = random_net(d, width, seed, bias_scale=bias)
    X = torch.randn(4, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    y = torch.sign(net(X))
    result = Exact(time_limit=20.0)(net, X, y)
    checked = verify(net, X, result)
    assert bool((checked.success == result.found).all()), "exact proposed something that is not a flip"
    lower = result.example_facts["certified_lower_bound"]
    relaxed = certified_radius(net, X, torch.full((4,), SEARCH_RADIUS * math.sqrt(d), dtype=torch.float64))
    directions = _directions(d, 20_000, seed)
    for i in range(4):
        brute = brute_force_radius(net, X[i], directions)
        if y[i] == 0:
            continue
        assert float(checked.norm[i]) <= brute * (1 + 10 * STRICT) + 1e-12, f"example {i}: exact {float(checked.norm[i])} > brute force {brute}"
        assert float(lower[i]) <= min(brute, float(checked.norm[i])) + 1e-12 and float(relaxed[i]) <= brute + 1e-12


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(2, 3), width=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), bias=st.sampled_from([0.0, 0.5, 2.0]), scale=st.sampled_from([0.5, 0.99, 1.5])
)
def test_branch_and_bound_never_certifies_beyond_a_brute_force_flip(d: int, width: int, seed: int, bias: float, scale: float) -> None:
    """On random tiny nets, for balls below, at and beyond the brute-force minimum over 20,000 rays: the search's
    bound never exceeds that minimum (it is sound), nor its ball."""
    net = random_net(d, width, seed, bias_scale=bias)
    X = torch.randn(3, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    directions = _directions(d, 20_000, seed)
    for i in range(3):
        if float(net(X[i : i + 1])[0]) == 0.0:
            continue
        brute = brute_force_radius(net, X[i], directions)
        R = scale * brute if math.isfinite(brute) else SEARCH_RADIUS * math.sqrt(d)
        outcome = branch_and_bound(net, X[i], R, deadline=time.perf_counter() + 10.0)
        assert outcome.lower <= min(brute, R) + 1e-12, f"example {i}: bound {outcome.lower} > brute force {brute} (ball {R})"


@pytest.fixture(scope="module")
def proved_mid_size() -> tuple[TwoLayerNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random net (d = 10, width 40) that SCIP solves outright: (net, X (4, d), y (4,), proved optimum (4,))."""
    net = random_net(10, 40, 3, bias_scale=0.5)
    X = torch.randn(4, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.sign(net(X))
    result = Exact(time_limit=20.0)(net, X, y)
    assert bool(result.example_facts["solver_proved"].all())
    return net, X, y, verify(net, X, result).norm


def test_branch_and_bound_clears_the_ball_below_the_optimum_and_stops_at_it(proved_mid_size) -> None:
    """Below SCIP's proved optimum (1%) the whole ball is cleared; a ball beyond it is never cleared, and the
    bound stays at most the optimum."""
    net, X, _, optimum = proved_mid_size
    for i in range(X.shape[0]):
        below = branch_and_bound(net, X[i], float(optimum[i]) / 1.01, deadline=time.perf_counter() + 60.0)
        assert below.lower == float(optimum[i]) / 1.01, f"example {i}: ball below the optimum not cleared ({below.lower})"
        beyond = branch_and_bound(net, X[i], float(optimum[i]) * 1.01, deadline=time.perf_counter() + 60.0)
        assert beyond.lower <= float(optimum[i])


def test_exact_proves_the_optimum_by_branch_and_bound_where_scip_has_no_time(proved_mid_size, monkeypatch) -> None:
    """With SCIP's share of the time cut to nothing, the gap is closed by branch and bound alone (its relaxed
    optima lower the flip, its cleared balls raise the bound): the same optima, proved."""
    net, X, y, optimum = proved_mid_size
    monkeypatch.setattr(exact_module, "OPTIMIZE_SHARE", 1e-6)
    result = Exact(time_limit=20.0)(net, X, y)
    assert bool(result.example_facts["solver_proved"].all())
    assert torch.allclose(verify(net, X, result).norm, optimum, rtol=1e-4)


def test_exact_reports_no_flip_where_only_ties_exist() -> None:
    """Every neuron with s v_j < 0 is dead: N >= 0 everywhere, with flat regions at N = 0 (ties, not flips)."""
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    net = TwoLayerNet(W=W, b=torch.tensor([0.0, 0.0, -1e9], dtype=torch.float64), v=torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    X = torch.tensor([[0.5, 0.2], [1.0, 1.0]], dtype=torch.float64)
    result = Exact(time_limit=5.0)(net, X, torch.ones(2, dtype=torch.float64))
    assert not bool(result.found.any())
    assert bool(result.example_facts["solver_proved"].all())
    assert torch.all(result.example_facts["certified_lower_bound"] >= SEARCH_RADIUS * math.sqrt(2) * (1 - 1e-6))


@pytest.mark.parametrize(("d", "seed"), [(16, 0), (48, 11)])
def test_relaxation_certifies_theorem_31s_radius(d: int, seed: int) -> None:
    """On Vardi et al.'s construction the relaxation's bound is at least (1 - c)/4 sqrt(d) for every point."""
    data = sphere(d=d, n=d, seed=seed)
    net, c = robust_construction(data.X, data.y)
    r = certified_radius(net, data.X, torch.full((d,), SEARCH_RADIUS * math.sqrt(d), dtype=torch.float64))
    assert torch.all(r >= construction_radius(c, d))


def test_the_relaxations_float32_ascent_finds_the_float64_ascents_radii() -> None:
    """The ascent on the slopes runs in ASCENT_DTYPE (float32) and only chooses them; every bound that decides a
    radius is float64. Against the same ascent in float64 the radii agree to the bisection's resolution."""
    net = random_net(24, 96, 5, bias_scale=0.3)
    X = torch.randn(40, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    top = torch.full((40,), SEARCH_RADIUS * math.sqrt(24), dtype=torch.float64)
    fast = certified_radius(net, X, top)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(certify_module, "ASCENT_DTYPE", torch.float64)
        slow = certified_radius(net, X, top)
    assert bool((fast > 0).all())
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=0.0)


def test_exact_proves_every_example_of_the_construction_and_region_walk_matches_it() -> None:
    """d = n = 32: every example proved; the region walk within 1% of the proved optimum on every example
    (boundary-walk is up to 5% above it on this net)."""
    data = sphere(d=32, n=32, seed=3)
    net, _ = robust_construction(data.X, data.y)
    exact = Exact(time_limit=30.0)(net, data.X, data.y)
    assert bool(exact.example_facts["solver_proved"].all())
    optimum = verify(net, data.X, exact).norm
    walked = verify(net, data.X, RegionWalk()(net, data.X, data.y)).norm
    assert torch.all(walked <= optimum * 1.01)
    assert torch.all(walked >= exact.example_facts["certified_lower_bound"])


def test_certificates_take_the_best_bound_and_mark_proved_examples() -> None:
    net = random_net(3, 5, 7, bias_scale=0.5)
    X = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = Exact(time_limit=10.0)(net, X, torch.sign(net(X)))
    best = verify(net, X, exact).norm
    out = certificates(net, X, best, [exact.example_facts["certified_lower_bound"]])
    assert torch.all(out["lower_bound"] >= exact.example_facts["certified_lower_bound"])
    assert torch.all(out["lower_bound"] <= best * (1 + 1e-12))
    assert bool(out["proved_optimal"].all())
    loose = certificates(net, X, best, [])  # the relaxation alone: sound, rarely tight
    assert torch.all(loose["lower_bound"] <= out["lower_bound"] + 1e-12)


# Flips beyond rounding -----------------------------------------------------------------------------------


def test_rounding_bound_covers_every_summation_order() -> None:
    """N(x) in float64 by torch, by numpy, with the neurons and the coordinates in reversed order, against an
    extended-precision reference: every difference within tau."""
    net = random_net(40, 300, 5)
    X = 10 * torch.randn(200, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    W, b, v, Xn = (t.numpy() for t in (net.W, net.b, net.v, X))
    exact = np.maximum(Xn.astype(np.longdouble) @ W.T.astype(np.longdouble) + b, 0) @ v.astype(np.longdouble)
    orders = [
        net(X).numpy(),
        np.maximum(Xn @ W.T + b, 0) @ v,
        np.maximum(Xn[:, ::-1] @ W[:, ::-1].T + b, 0)[:, ::-1] @ v[::-1],
    ]
    tau = rounding_bound(net, X).numpy()
    for values in orders:
        assert np.all(np.abs(values - exact) <= tau)


def test_a_flip_within_rounding_is_rejected_and_counted_as_a_tie() -> None:
    """N(x + delta) = 0 up to rounding (the subspace run's near-ties, N ~ 2e-16): no flip, counted in ``ties``;
    ``overshoot`` (what the Foolbox adapters apply) pushes such an answer just past the boundary."""
    # N(x) = relu(x_1 + 1) - relu(-x_1 - 1) = x_1 + 1: N(0.5, 0) = 1.5, flips where x_1 < -1
    net = TwoLayerNet(
        W=torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64),
        b=torch.tensor([1.0, -1.0], dtype=torch.float64),
        v=torch.tensor([1.0, -1.0], dtype=torch.float64),
    )
    X = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    found = torch.tensor([True])
    for delta in (torch.tensor([[-1.5, 0.0]], dtype=torch.float64), torch.tensor([[-1.5 - 4e-16, 3e-16]], dtype=torch.float64)):
        checked = verify(net, X, AttackResult(delta=delta, found=found))
        assert not bool(checked.success[0]) and bool(checked.ties[0])
        pushed = overshoot(net, X, delta, found)
        assert bool(strict_flips(net, X, X + pushed)[0]) and bool(verify(net, X, AttackResult(delta=pushed, found=found)).success[0])
        assert float(pushed.norm()) <= 1.5 * (1 + 1e-9)
    clear = torch.tensor([[-1.6, 0.0]], dtype=torch.float64)  # N = -0.1: a flip in any order
    checked = verify(net, X, AttackResult(delta=clear, found=found))
    assert bool(checked.success[0]) and not bool(checked.ties[0])
