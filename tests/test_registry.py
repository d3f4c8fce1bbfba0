"""Registries: public names, duplicate and unknown names; every attack's claims survive verification."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from marginbench.attacks.base import AttackUnavailable
from marginbench.bench.execution.runner import attempt_attack
from marginbench.bench.experiment.families import FAMILIES
from marginbench.bench.experiment.recipes import RunContext
from marginbench.bench.experiment.spec import ExperimentSpec, RunSpec, SpecError
from marginbench.bench.registry.presets import PRESETS
from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS, Registry
from marginbench.checking.proposal import SEARCH_RADIUS
from marginbench.checking.verify import verify
from marginbench.models.datasets import Dataset, sphere
from marginbench.models.three_layer import ThreeLayerNet
from marginbench.models.train import TrainSpec
from marginbench.models.train_spec import arc_schedule
from marginbench.models.two_layer import TwoLayerNet


def test_the_public_names_are_those_of_design_md() -> None:
    assert DATASETS.names() == ["digits", "sphere", "subspace"]
    assert MODELS.names() == ["l2", "robust-construction", "small-init", "three-layer", "vanilla"]
    fb = ["fb-boundary", "fb-brendel-bethge", "fb-cw", "fb-ddn", "fb-deepfool", "fb-fmn"]
    assert ATTACKS.names() == ["boundary-walk", "exact", *fb, "fmn", "pgd", "pgd-off", "pgd-on", "region-walk", "subspace-z", "universal-z"]
    assert {"default", "smoke", "baseline", "paper-fig1a", "paper-fig1b", "paper-fig2", "melamed-fig4"} <= set(PRESETS.names())
    assert {name for name in PRESETS.names() if PRESETS.get(name).figures} == {"paper-fig1a", "paper-fig1b", "paper-fig2", "melamed-fig4"}


def test_duplicate_and_unknown_names_and_sorted_listing() -> None:
    registry: Registry[object] = Registry("widget")
    registry.register("b")(object)
    registry.register("a")(object)
    assert registry.names() == ["a", "b"]  # sorted, not in registration order
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(object)
    with pytest.raises(SpecError, match="unknown widget 'c'; choose from: a, b"):
        registry.get("c")


FAMILY_MODEL_PAIRS = [(family.name, model) for family in FAMILIES.values() for model in MODELS.in_family(family.name)]


def test_every_registered_model_belongs_to_a_family() -> None:
    assert sorted({model for _, model in FAMILY_MODEL_PAIRS}) == MODELS.names()


SLOW_ATTACKS = ("fb-cw", "fb-boundary", "fb-brendel-bethge")  # seconds each, numba's compilation a minute


@functools.cache
def _built(family: str, model: str) -> tuple[RunSpec, Dataset, TwoLayerNet | ThreeLayerNet]:
    """One small net per (family, model), trained once for all attacks."""
    sizes = {"d": 12, "n": 10} if family == "kkt" else {"d": 16, "ell": 10, "n": 10, "n_eval": 8}
    train = TrainSpec(max_iters=3000) if family == "kkt" else None
    spec = ExperimentSpec(family=family, width=16, models=(model,), train=train, **sizes)
    (run,) = spec.runs()
    data = DATASETS.get(run.dataset)(run)
    return run, data, MODELS.get(model)(data, RunContext.of(run)).net


@pytest.mark.parametrize(("family", "model"), FAMILY_MODEL_PAIRS)
@pytest.mark.parametrize("attack", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_ATTACKS else name for name in ATTACKS.names()])
def test_every_attack_proposal_that_is_kept_really_flips(family: str, model: str, attack: str) -> None:
    run, data, net = _built(family, model)
    X, y = data.attacked
    assert isinstance(net, TwoLayerNet) == MODELS.entry(model).closed_form  # the entry says what the factory builds
    if not isinstance(net, TwoLayerNet) and ATTACKS.entry(attack).needs_closed_form:  # the three-layer net: refused in one line
        _, status, error = attempt_attack(attack, data, RunContext.of(run), net)
        assert status == "unavailable" and error.startswith("needs the two-layer net's closed form")
        return
    try:
        result = ATTACKS.get(attack)(data, RunContext.of(run))(net, X, y)
    except AttackUnavailable as err:  # only a subspace attack on data without a subspace may say so
        assert data.P_basis is None and "does not apply" in str(err)
        return
    checked = verify(net, X, result)
    assert torch.all(net(X[checked.success]) * net(X[checked.success] + checked.delta[checked.success]) < 0)
    assert torch.all(torch.isinf(checked.norm[~checked.success]))


@functools.cache
def _trained_on_training_points() -> tuple[RunSpec, Dataset, TwoLayerNet]:
    """A kkt vanilla net trained to the paper's stopping point (loss < 1e-30, on the arc schedule: a second),
    attacked on its own training points."""
    spec = ExperimentSpec(family="kkt", d=12, n=10, width=16, models=("vanilla",), train=arc_schedule(TrainSpec()))
    (run,) = spec.runs()
    data = DATASETS.get(run.dataset)(run)
    net = MODELS.get("vanilla")(data, RunContext.of(run)).net
    assert isinstance(net, TwoLayerNet)
    return run, data, net


@pytest.mark.parametrize("attack", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_ATTACKS else name for name in ATTACKS.names()])
def test_every_attack_that_applies_flips_every_training_point_of_a_trained_net(attack: str) -> None:
    """Every training point is classified and has a flip within the search radius (the segment to any point of
    the other label crosses the boundary), so every attack that applies must flip every point. Measured on this
    net and on seeds 1 and 2: each attack flips all 10 points, the Foolbox ones included. universal-z flips
    the points of its margin set (Vardi et al.'s Theorem 4.1), which here, trained this far, is every point.
    (Gradient attacks legitimately fail on robust-construction's flat regions: that net is not asked here.)"""
    run, data, net = _trained_on_training_points()
    X, y = data.attacked
    assert X is data.X and bool((y * net(X) > 0).all())
    other = torch.cdist(X, X).where(y[:, None] != y[None, :], math.inf).min(dim=1).values
    assert bool((other <= SEARCH_RADIUS * math.sqrt(data.d)).all())  # a flip within the radius exists
    try:
        result = ATTACKS.get(attack)(data, RunContext.of(run))(net, X, y)
    except AttackUnavailable as err:  # pgd-on, pgd-off, subspace-z: data off any subspace
        assert data.P_basis is None and "does not apply" in str(err)
        return
    checked = verify(net, X, result)
    assert bool(checked.success.all()), f"{attack} flipped {int(checked.success.sum())} of {len(X)} training points"


def test_verification_rejects_a_false_claim() -> None:
    from marginbench.checking.proposal import AttackResult
    from marginbench.models.construction import robust_construction

    data = sphere(d=10, n=6, seed=0)
    net, _ = robust_construction(data.X, data.y)
    tiny = 1e-3 * torch.ones_like(data.X)
    claimed = AttackResult(delta=tiny, found=torch.ones(6, dtype=torch.bool))
    checked = verify(net, data.X, claimed)
    assert not checked.success.any() and torch.isinf(checked.norm).all() and (checked.delta == 0).all()
