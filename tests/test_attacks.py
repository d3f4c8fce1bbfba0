"""The attack suite (issue 4): proven lower bounds hold, known distances are found, projections hold,
attacks agree, Melamed et al.'s Theorem 5.1 z flips where its assumption holds, and failures do not end a run.

Foolbox and numba are in the test extra, so the Foolbox attacks are imported and run here, never skipped;
Brendel-Bethge's first call compiles numba code for about a minute, so its cases carry the slow marker.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import Tensor

from marginbench.attacks.base import AttackUnavailable
from marginbench.attacks.closed_form import SubspaceZ
from marginbench.attacks.fmn import FMN
from marginbench.attacks.foolbox_adapter import FbBrendelBethge
from marginbench.attacks.pgd import MinimalPGD
from marginbench.attacks.subspace import SubspaceProjection
from marginbench.bench.execution.sweep import run_sweep
from marginbench.bench.experiment.recipes import RunContext
from marginbench.bench.experiment.spec import ExperimentSpec, RunSpec
from marginbench.bench.performance.counting import CountingNet
from marginbench.bench.registry.registries import ATTACKS
from marginbench.bench.results.record import BEST
from marginbench.checking.verify import verify
from marginbench.models.construction import construction_radius, robust_construction
from marginbench.models.datasets import Dataset, sphere
from marginbench.models.diagnostics import thm51_required_ell
from marginbench.models.train import TrainSpec, train
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

AGREEMENT_FACTOR = 1.1  # pgd (1% bisection), fmn (final gamma 0.1%) and fb-ddn (gamma 5%) agree within 10%
SUBSPACE_ATTACKS = ("subspace-z", "pgd-off", "pgd-on")
SLOW = ("fb-brendel-bethge", "fb-cw", "fb-boundary")  # numba compilation on first use; 500- and 2000-step searches


def _params(names: list[str]) -> list[object]:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscribing shared CPU cores (10-40x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(d: int, n: int, width: int, seed: int = 0) -> RunSpec:
    return ExperimentSpec(d=d, n=n, width=width, seeds=(seed,)).runs()[0]


@dataclass(frozen=True)
class Case:
    data: Dataset
    net: TwoLayerNet
    run: RunSpec


@pytest.fixture(scope="module")
def construction() -> tuple[Case, float]:
    data = sphere(d=16, n=16, seed=0)
    net, c = robust_construction(data.X, data.y)
    return Case(data=data, net=net, run=_run(16, 16, 16)), construction_radius(c, 16)


@pytest.fixture(scope="module")
def small_vanilla() -> Case:
    """A kkt vanilla net, d = n = 16, width 32, trained to loss < 1e-30 with a faster schedule (~1 s)."""
    data = sphere(d=16, n=16, seed=0)
    init = pytorch_default_init(16, 32, generator=torch.Generator().manual_seed(0))
    net, report = train(init, data.X, data.y, TrainSpec(growth_every=10))
    assert report.reached_target
    return Case(data=data, net=net, run=_run(16, 16, 32))


def _norms(case: Case, attack: str) -> Tensor:
    X, y = case.data.attacked
    return verify(case.net, X, ATTACKS.get(attack)(case.data, RunContext.of(case.run))(case.net, X, y)).norm


@pytest.mark.parametrize("attack", _params([a for a in ATTACKS.names() if a not in SUBSPACE_ATTACKS]))
def test_no_attack_beats_the_theorem_3_1_radius(construction: tuple[Case, float], attack: str) -> None:
    case, radius = construction
    norms = _norms(case, attack)
    assert torch.all(norms >= radius), f"{attack} reports {float(norms.min()):.4g} < (1-c)/4 sqrt(d) = {radius:.4g}"


def test_boundary_walk_flips_every_example_of_the_construction(construction: tuple[Case, float]) -> None:
    case, radius = construction
    norms = _norms(case, "boundary-walk")
    assert torch.all(norms.isfinite()) and torch.all(norms >= radius)


def test_generic_attacks_beat_universal_z_on_a_trained_net(small_vanilla: Case) -> None:
    """Per example, the best of the searching attacks is no larger than Thm 4.1's universal direction."""
    best = torch.stack([_norms(small_vanilla, a) for a in ("pgd", "fmn", "boundary-walk", "fb-ddn")]).min(0).values
    universal = _norms(small_vanilla, "universal-z")
    assert torch.all(best.isfinite())
    assert torch.all(best <= universal * (1 + 1e-9))


def test_pgd_fmn_and_ddn_agree(small_vanilla: Case) -> None:
    norms = torch.stack([_norms(small_vanilla, a) for a in ("pgd", "fmn", "fb-ddn")])
    assert torch.all(norms.isfinite())
    assert torch.all(norms.max(0).values <= AGREEMENT_FACTOR * norms.min(0).values)


def _linear_case(d: int = 16, n: int = 20) -> tuple[TwoLayerNet, Tensor, Tensor]:
    """N(x) = relu(w.x + b) - relu(-w.x - b) = w.x + b, and points at known distances 0.018 .. 1.2."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    b = 0.3
    net = TwoLayerNet(W=torch.stack([w, -w]), b=torch.tensor([b, -b], dtype=torch.float64), v=torch.tensor([1.0, -1.0], dtype=torch.float64))
    dist = torch.logspace(math.log10(0.018), math.log10(1.2), n, dtype=torch.float64)
    side = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double()
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * math.sqrt(d) / 4
    w_hat = w / w.norm()
    X = X - ((X @ w + b) / w.norm())[:, None] * w_hat + (side * dist)[:, None] * w_hat
    return net, X, dist


def test_fmn_and_pgd_find_known_distances_of_a_linear_model() -> None:
    net, X, dist = _linear_case()
    y = torch.sign(net(X))
    fmn = verify(net, X, FMN()(net, X, y)).norm
    assert torch.all((fmn / dist - 1).abs() <= 0.01)
    pgd = verify(net, X, MinimalPGD()(net, X, y)).norm
    assert torch.all(pgd >= dist * (1 - 1e-9)) and torch.all(pgd <= dist * 1.01)


def _sequential_bisection(attack: MinimalPGD, net: TwoLayerNet, X: Tensor) -> Tensor:
    """The reference: one budget per example per round, PGD from delta = 0 (attack.run), doubling eps from
    0.05 sqrt(d) until it flips, then halving [lo, hi] until hi - lo <= rel_precision * hi. (n,) budgets hi."""
    s = torch.sign(net(X))
    eps = torch.full_like(s, 0.05 * math.sqrt(X.shape[1]))
    lo, hi = torch.zeros_like(s), torch.full_like(s, math.inf)
    while torch.any(hi.isinf()):
        flipped, _ = attack.run(net, X, s, eps, torch.zeros_like(X))
        hi = torch.where(flipped & hi.isinf(), eps, hi)
        lo = torch.where(hi.isinf(), eps, lo)
        eps = torch.where(hi.isinf(), 2 * eps, eps)
    while torch.any(hi - lo > attack.rel_precision * hi):
        mid = (lo + hi) / 2
        flipped, _ = attack.run(net, X, s, mid, torch.zeros_like(X))
        hi, lo = torch.where(flipped, mid, hi), torch.where(flipped, lo, mid)
    return hi


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"walk_steps": 0},  # no walk: every example takes the batched doubling fallback
        {"span": 1.0, "candidates": 2},  # rounds bisect all of (lo, hi) with two budgets
        {"restarts": 3},  # random restarts in the eps-ball beside the warm start
    ],
    ids=["default", "doubling-fallback", "two-budgets-from-zero", "restarts"],
)
def test_batched_bisection_agrees_with_a_sequential_one_on_a_linear_model(settings: dict[str, float]) -> None:
    """On N(x) = w.x + b, PGD at eps flips x exactly when eps > dist(x), so a bisection to precision p must end
    with dist <= norm < dist / (1 - p), whether its budgets run one per round or many per round."""
    net, X, dist = _linear_case()
    attack = MinimalPGD(**settings)  # type: ignore[arg-type]
    batched = verify(net, X, attack(net, X, torch.sign(net(X))))
    reference = _sequential_bisection(attack, net, X)
    bound = dist / (1 - attack.rel_precision)
    assert torch.all(batched.success)
    for norms in (batched.norm, reference):
        assert torch.all(norms >= dist * (1 - 1e-9)) and torch.all(norms < bound)
    assert torch.all((batched.norm - reference).abs() <= attack.rel_precision * dist)


def test_pgd_repeats_itself_with_random_restarts() -> None:
    net, data = _subspace_case(d=16, ell=8, width=16, n=12, seed=1)
    attack = MinimalPGD(restarts=3, seed=7)
    first, second = attack(net, data.X, data.y), attack(net, data.X, data.y)
    assert torch.equal(first.delta, second.delta) and torch.equal(first.found, second.found)


def _subspace_case(d: int, ell: int, width: int, n: int, seed: int) -> tuple[TwoLayerNet, Dataset]:
    """Melamed et al.'s setting without training: no bias, v_i = +-1/sqrt(m), W ~ N(0, I/d), x in P, ||x|| = sqrt(d)."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d - ell, generator=g, dtype=torch.float64))
    W = torch.randn(width, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    v = torch.tensor([1.0, -1.0] * (width // 2), dtype=torch.float64) / math.sqrt(width)
    net = TwoLayerNet(W=W, b=torch.zeros(width, dtype=torch.float64), v=v)
    X = torch.randn(n, d - ell, generator=g, dtype=torch.float64) @ basis.T
    X = X / X.norm(dim=1, keepdim=True) * math.sqrt(d)
    return net, Dataset(name="subspace-test", X=X, y=torch.where(net(X) > 0, 1.0, -1.0), P_basis=basis)


@pytest.mark.parametrize(("attack", "onto"), [("pgd-off", "P-perp"), ("pgd-on", "P")])
def test_projected_pgd_stays_in_its_subspace(attack: str, onto: str) -> None:
    net, data = _subspace_case(d=16, ell=8, width=16, n=12, seed=1)
    checked = verify(net, data.X, ATTACKS.get(attack)(data, RunContext.of(_run(16, 12, 16)))(net, data.X, data.y))
    assert checked.success.sum() >= 6
    delta = checked.delta[checked.success]
    complement = SubspaceProjection(data.P_basis, "P" if onto == "P-perp" else "P-perp")  # type: ignore[arg-type]
    assert torch.all(complement(delta).norm(dim=1) <= 1e-12 * delta.norm(dim=1))


def test_subspace_attacks_do_not_apply_without_a_subspace(construction: tuple[Case, float]) -> None:
    case, _ = construction
    for attack in SUBSPACE_ATTACKS:
        with pytest.raises(AttackUnavailable, match="does not apply"):
            ATTACKS.get(attack)(case.data, RunContext.of(case.run))


def test_theorem_5_1_z_flips_where_its_assumption_holds() -> None:
    width, d = 4, 2000
    ell = math.ceil(thm51_required_ell(width=width, d=d))  # 996: l >= 32 (m - 1) log(m^2 d)
    net, data = _subspace_case(d=d, ell=ell, width=width, n=40, seed=0)
    assert data.P_basis is not None
    result = SubspaceZ(basis=data.P_basis)(net, data.X, data.y)
    facts = result.example_facts
    defined = facts["thm51_k"] > 0  # k_{y0} = 0 leaves z undefined (alpha infinite)
    assert ell >= result.extras["thm51_required_ell"] and defined.sum() >= 10
    assert torch.all(facts["thm51_z_flips"][defined])
    assert torch.all(facts["thm51_z_norm"][defined] <= facts["thm51_bound"][defined])
    # the reported perturbation: the minimal scale along the same universal direction, in P-perp
    checked = verify(net, data.X, result)
    assert torch.all(checked.success[defined]) and torch.all(checked.norm[defined] <= facts["thm51_z_norm"][defined] * (1 + 1e-9))
    assert torch.all((checked.delta @ data.P_basis).norm(dim=1) <= 1e-10 * checked.delta.norm(dim=1))


def test_counting_net_counts_rows_of_forward_and_backward_passes() -> None:
    net, X, _ = _linear_case(n=5)
    counted = CountingNet.wrap(net)
    dx = X.clone().requires_grad_(True)
    counted(dx).sum().backward()
    counted(X[:2])
    assert (counted.counts.forward, counted.counts.backward) == (7, 5)


def test_brendel_bethge_without_numba_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    net, X, _ = _linear_case(n=4)
    with pytest.raises(AttackUnavailable, match="numba is not installed") as err:
        FbBrendelBethge()(net, X, torch.sign(net(X)))
    assert "\n" not in str(err.value)


def test_a_failing_or_inapplicable_attack_is_recorded_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: Dataset, context: RunContext) -> FMN:
        raise RuntimeError("simulated crash\nsecond line")

    monkeypatch.setitem(ATTACKS._factories, "fb-deepfool", broken)
    spec = ExperimentSpec(
        d=12, n=10, width=16, models=("robust-construction",), attacks=("boundary-walk", "pgd", "pgd-off", "fb-deepfool")
    )
    examples, summary = run_sweep(spec, tmp_path / "out", log=lambda line: None)
    status = summary.set_index("attack")["attack_status"]
    error = summary.set_index("attack")["error"]
    assert status["boundary-walk"] == status["pgd"] == "ok"
    assert status["pgd-off"] == "unavailable" and error["pgd-off"].startswith("AttackUnavailable: does not apply")
    assert status["fb-deepfool"] == "failed" and error["fb-deepfool"].startswith("RuntimeError: simulated crash")
    best = examples[examples["attack"] == BEST]
    assert len(best) == 10 and best["norm"].map(math.isfinite).all()
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("attack")
    assert on_disk.loc["pgd", "forward_passes_per_example"] > on_disk.loc["pgd", "backward_passes_per_example"] > 0
    assert on_disk.loc["boundary-walk", "forward_passes_per_example"] > 0


def test_foolbox_randomness_is_seeded_and_leaves_the_global_generator_alone() -> None:
    from marginbench.attacks.foolbox_adapter import FbBoundary

    net, data = _subspace_case(d=16, ell=8, width=16, n=12, seed=1)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    first = FbBoundary(steps=100)(net, data.X, data.y).delta
    assert torch.equal(torch.rand(1), expected)
    assert torch.equal(FbBoundary(steps=100)(net, data.X, data.y).delta, first)
