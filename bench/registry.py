"""Registries: the public names of DESIGN.md mapped to factories.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it.
"""

from __future__ import annotations

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
from marginbench.bench.spec import ExperimentSpec, RunSpec, SpecError
from marginbench.models import datasets
from marginbench.models.construction import construction_radius, robust_construction
from marginbench.models.datasets import Dataset
from marginbench.models.train import TrainReport, train
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

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
        facts: scalars about the model (e.g. Theorem 3.1's c and its guaranteed radius).
    """

    net: TwoLayerNet
    train: TrainReport | None = None
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


@MODELS.register("vanilla")
def _vanilla(data: Dataset, run: RunSpec, progress: bool) -> BuiltModel:
    """PyTorch's default init, then full-batch GD with the paper's schedule (all of W, b, v trained)."""
    init = pytorch_default_init(data.d, run.width, generator=torch.Generator().manual_seed(run.seed))
    net, report = train(init.to(data.X.device), data.X, data.y, run.train, progress=progress, description=run.run_id)
    return BuiltModel(net=net, train=report)


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
    """Raise SpecError for any dataset, model or attack name that is not registered."""
    DATASETS.get(spec.dataset)
    for name in spec.models:
        MODELS.get(name)
    for name in spec.attacks:
        ATTACKS.get(name)
