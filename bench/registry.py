"""Registries: the public names of DESIGN.md mapped to factories.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from marginbench.attacks.base import Attack
from marginbench.attacks.closed_form import UniversalZ
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


def check_names(spec: ExperimentSpec) -> None:
    """Raise SpecError for any dataset, model or attack name that is not registered."""
    DATASETS.get(spec.dataset)
    for name in spec.models:
        MODELS.get(name)
    for name in spec.attacks:
        ATTACKS.get(name)
