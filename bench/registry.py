"""Registries: the public names of DESIGN.md mapped to the factories of ``marginbench.bench.build``.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it. Code outside the package adds names with
``MODELS.register("my-model")(factory)`` and the like.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from marginbench.attacks.boundary_walk import BoundaryWalk
from marginbench.attacks.closed_form import SubspaceZ, UniversalZ
from marginbench.attacks.fmn import FMN
from marginbench.attacks.foolbox_adapter import FbBoundary, FbBrendelBethge, FbCW, FbDDN, FbDeepFool, FbFMN
from marginbench.attacks.pgd import MinimalPGD
from marginbench.attacks.region_walk import RegionWalk
from marginbench.bench import build
from marginbench.bench.build import AttackFactory, DatasetFactory, ModelFactory, PlanFactory
from marginbench.bench.errors import SpecError
from marginbench.bench.families import FAMILIES
from marginbench.bench.spec import ExperimentSpec

F = TypeVar("F")


class Registry(Generic[F]):
    """Name -> factory, for one kind of thing (dataset, model, attack, preset)."""

    def __init__(self, kind: str, factories: Mapping[str, F] | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}
        for name, factory in (factories or {}).items():
            self.register(name)(factory)

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


DATASETS: Registry[DatasetFactory] = Registry(
    "dataset", {"sphere": build.sphere_data, "subspace": build.subspace_data, "digits": build.digits_data}
)
# The trained models' recipes: a model of TRAINING_PLANS can be trained in one batch with other seeds.
TRAINING_PLANS: Registry[PlanFactory] = Registry(
    "trained model", {"vanilla": build.vanilla_plan, "small-init": build.small_init_plan, "l2": build.l2_plan}
)
MODELS: Registry[ModelFactory] = Registry(
    "model",
    {**{name: build.trained(TRAINING_PLANS.get(name)) for name in TRAINING_PLANS.names()}, "robust-construction": build.robust_construction_model, "three-layer": build.three_layer_model},
)
ATTACKS: Registry[AttackFactory] = Registry(
    "attack",
    {
        "universal-z": build.plain(UniversalZ),
        "subspace-z": build.on_basis(SubspaceZ, "subspace-z"),
        "pgd": build.seeded(MinimalPGD),
        "pgd-off": build.projected_pgd("P-perp", "pgd-off"),
        "pgd-on": build.projected_pgd("P", "pgd-on"),
        "fmn": build.plain(FMN),
        "boundary-walk": build.seeded(BoundaryWalk),
        "region-walk": build.seeded(RegionWalk),
        "exact": build.exact,
        "fb-fmn": build.seeded(FbFMN),
        "fb-ddn": build.seeded(FbDDN),
        "fb-deepfool": build.seeded(FbDeepFool),
        "fb-cw": build.seeded(FbCW),
        "fb-boundary": build.seeded(FbBoundary),
        "fb-brendel-bethge": build.seeded(FbBrendelBethge),
    },
)
CONSTRUCTED_MODELS = frozenset({"robust-construction"})  # built in closed form: nothing trained

# The attacks that need only N(x) and its input gradient: they take nets without a closed form (three-layer).
AUTOGRAD_ATTACKS: tuple[str, ...] = ("pgd", "pgd-on", "pgd-off")


def check_names(spec: ExperimentSpec) -> None:
    """Raise SpecError for any dataset, model or attack name that is not registered or not of the family."""
    DATASETS.get(spec.dataset_name)
    family = spec.family_spec
    for name in spec.model_names:
        MODELS.get(name)
        if name not in family.models and any(name in other.models for other in FAMILIES.values()):
            raise SpecError(f"model {name!r} is not part of the {family.name} family; choose from: {', '.join(family.models)}")
    for name in spec.attack_names:
        ATTACKS.get(name)
