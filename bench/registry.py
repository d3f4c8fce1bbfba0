"""Registries: the public names of DESIGN.md mapped to factories.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from marginbench.attacks.base import Attack, AttackUnavailable
from marginbench.attacks.boundary_walk import BoundaryWalk
from marginbench.attacks.closed_form import SubspaceZ, UniversalZ
from marginbench.attacks.fmn import FMN
from marginbench.attacks.foolbox_adapter import FbBoundary, FbBrendelBethge, FbCW, FbDDN, FbDeepFool, FbFMN
from marginbench.attacks.pgd import MinimalPGD
from marginbench.attacks.subspace import SubspaceProjection
from marginbench.bench.spec import FAMILY_MODELS, ExperimentSpec, RunSpec, SpecError
from marginbench.models import datasets
from marginbench.models.construction import construction_radius, robust_construction
from marginbench.models.datasets import Dataset
from marginbench.models.train import TrainReport, TrainSpec, train
from marginbench.models.two_layer import TwoLayerNet, gaussian_init, pytorch_default_init

F = TypeVar("F")


class Registry(Generic[F]):
    """Name -> factory, for one kind of thing (dataset, model, attack, preset)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(factory: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> F:
        try:
            return self._factories[name]
        except KeyError:
            raise SpecError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


@dataclass(frozen=True)
class BuiltModel:
    """A network ready to attack, with how it came to be.

    Attributes:
        net: the network, on the run's device.
        train: the training report, or None for a closed-form construction.
        init: the parameters training started from (None for a construction).
        facts: scalars about the model (init scale beta, L2 lambda, Theorem 3.1's c and radius, ...).
    """

    net: TwoLayerNet
    train: TrainReport | None = None
    init: TwoLayerNet | None = None
    facts: Mapping[str, float] = field(default_factory=dict)


DatasetFactory = Callable[[RunSpec], Dataset]
ModelFactory = Callable[[Dataset, RunSpec, bool], BuiltModel]  # (data, run, show progress)
AttackFactory = Callable[[RunSpec, Dataset], Attack]  # the dataset gives e.g. the subspace basis P

DATASETS: Registry[DatasetFactory] = Registry("dataset")
MODELS: Registry[ModelFactory] = Registry("model")
ATTACKS: Registry[AttackFactory] = Registry("attack")


@DATASETS.register("sphere")
def _sphere(run: RunSpec) -> Dataset:
    return datasets.sphere(d=run.d, n=run.n, seed=run.seed)


@DATASETS.register("subspace")
def _subspace(run: RunSpec) -> Dataset:
    return datasets.subspace(d=run.d, ell=run.ell or 0, n=run.n, n_eval=run.n_eval, seed=run.seed, label_rule=run.label_rule)


@DATASETS.register("digits")
def _digits(run: RunSpec) -> Dataset:
    return datasets.digits(ell=run.ell or 0, n=run.n, n_eval=run.n_eval, seed=run.seed)


def _trained(data: Dataset, run: RunSpec, init: TwoLayerNet, spec: TrainSpec, progress: bool, facts: dict[str, float]) -> BuiltModel:
    init = init.to(data.X.device)
    net, report = train(init, data.X, data.y, spec, seed=run.seed, progress=progress, description=run.run_id)
    return BuiltModel(net=net, train=report, init=init, facts=facts)


def _init(data: Dataset, run: RunSpec, *, small: bool) -> tuple[TwoLayerNet, dict[str, float]]:
    """The family's initialization; small-init divides its scale by sqrt(2d) (beta = 1/(d sqrt 2), Cor 6.1)."""
    generator = torch.Generator().manual_seed(run.seed)
    factor = run.init_scale / (math.sqrt(2 * data.d) if small else 1.0)
    if run.family == "kkt":  # Vardi et al.: PyTorch's default init, every tensor scaled by the factor
        return pytorch_default_init(data.d, run.width, generator=generator, scale=factor), {"init_factor": factor}
    beta = factor / math.sqrt(data.d)  # Melamed et al.: w_i ~ N(0, beta^2 I), beta^2 = 1/d for vanilla
    return gaussian_init(data.d, run.width, beta=beta, generator=generator), {"init_beta": beta}


@MODELS.register("vanilla")
def _vanilla(data: Dataset, run: RunSpec, progress: bool) -> BuiltModel:
    """The family's standard init (kkt: PyTorch default; subspace: beta^2 = 1/d), then the family's training."""
    init, facts = _init(data, run, small=False)
    return _trained(data, run, init, run.train, progress, facts)


@MODELS.register("small-init")
def _small_init(data: Dataset, run: RunSpec, progress: bool) -> BuiltModel:
    """As vanilla with the init divided by sqrt(2d): beta = 1/(d sqrt 2) in the subspace family (Cor 6.1)."""
    init, facts = _init(data, run, small=True)
    return _trained(data, run, init, run.train, progress, facts)


@MODELS.register("l2")
def _l2(data: Dataset, run: RunSpec, progress: bool) -> BuiltModel:
    """Vanilla init, then exactly T = max_iters steps of the loss + lambda/2 ||W||^2 (Thm 6.2).

    Unless --l2 gives lambda, it is chosen so that (1 - lr lambda)^T = 1/sqrt(2d) (Corollary 6.2).
    """
    init, facts = _init(data, run, small=False)
    T, lr = run.train.max_iters, run.train.lr
    lam = run.l2 if run.l2 is not None else (1.0 - (2.0 * data.d) ** (-0.5 / max(T, 1))) / lr
    spec = dataclasses.replace(run.train, l2=lam, target_loss=None, target_margin=None)
    return _trained(data, run, init, spec, progress, {**facts, "l2_lambda": lam})


@MODELS.register("robust-construction")
def _robust_construction(data: Dataset, run: RunSpec, progress: bool) -> BuiltModel:
    """Theorem 3.1's network (width n, one neuron per example); --width does not apply to it."""
    net, c = robust_construction(data.X, data.y)
    return BuiltModel(net=net, facts={"construction_c": c, "construction_radius": construction_radius(c, data.d)})


@ATTACKS.register("universal-z")
def _universal_z(run: RunSpec, data: Dataset) -> Attack:
    return UniversalZ()


# Issue 4: the attack suite (Thm 5.1's z, minimal-norm PGD on/off P, FMN, boundary walk, Foolbox L2).
def _subspace_basis(data: Dataset, attack: str) -> torch.Tensor:
    """The dataset's P_basis, or AttackUnavailable (recorded as such by the runner) where it has none."""
    if data.P_basis is None:
        raise AttackUnavailable(f"does not apply to dataset {data.name!r}: its points do not lie on a subspace P ({attack} needs one)")
    return data.P_basis


@ATTACKS.register("subspace-z")
def _subspace_z(run: RunSpec, data: Dataset) -> Attack:
    return SubspaceZ(basis=_subspace_basis(data, "subspace-z"))


@ATTACKS.register("pgd")
def _pgd(run: RunSpec, data: Dataset) -> Attack:
    return MinimalPGD(seed=run.seed)


@ATTACKS.register("pgd-off")
def _pgd_off(run: RunSpec, data: Dataset) -> Attack:
    return MinimalPGD(projection=SubspaceProjection(_subspace_basis(data, "pgd-off"), "P-perp"), seed=run.seed)


@ATTACKS.register("pgd-on")
def _pgd_on(run: RunSpec, data: Dataset) -> Attack:
    return MinimalPGD(projection=SubspaceProjection(_subspace_basis(data, "pgd-on"), "P"), seed=run.seed)


@ATTACKS.register("fmn")
def _fmn(run: RunSpec, data: Dataset) -> Attack:
    return FMN()


@ATTACKS.register("boundary-walk")
def _boundary_walk(run: RunSpec, data: Dataset) -> Attack:
    return BoundaryWalk()


@ATTACKS.register("fb-fmn")
def _fb_fmn(run: RunSpec, data: Dataset) -> Attack:
    return FbFMN()


@ATTACKS.register("fb-ddn")
def _fb_ddn(run: RunSpec, data: Dataset) -> Attack:
    return FbDDN()


@ATTACKS.register("fb-deepfool")
def _fb_deepfool(run: RunSpec, data: Dataset) -> Attack:
    return FbDeepFool()


@ATTACKS.register("fb-cw")
def _fb_cw(run: RunSpec, data: Dataset) -> Attack:
    return FbCW()


@ATTACKS.register("fb-boundary")
def _fb_boundary(run: RunSpec, data: Dataset) -> Attack:
    return FbBoundary()


@ATTACKS.register("fb-brendel-bethge")
def _fb_brendel_bethge(run: RunSpec, data: Dataset) -> Attack:
    return FbBrendelBethge()


def check_names(spec: ExperimentSpec) -> None:
    """Raise SpecError for any dataset, model or attack name that is not registered or not of the family."""
    DATASETS.get(spec.dataset_name)
    for name in spec.model_names:
        MODELS.get(name)
        if name not in FAMILY_MODELS[spec.family] and any(name in names for names in FAMILY_MODELS.values()):
            raise SpecError(f"model {name!r} is not part of the {spec.family} family; choose from: {', '.join(FAMILY_MODELS[spec.family])}")
    for name in spec.attack_names:
        ATTACKS.get(name)
