"""Registries: the public names of DESIGN.md mapped to the factories of ``marginbench.bench.experiment.recipes``.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it. Code outside the package adds names with
``MODELS.register("my-model")(factory)`` and the like, or as a plugin (``marginbench.bench.registry.plugins``); each
name remembers its source (``marginbench.bench.registry.provenance``).
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
from marginbench.bench.errors import SpecError
from marginbench.bench.experiment import recipes
from marginbench.bench.experiment.families import FAMILIES
from marginbench.bench.experiment.recipes import AttackFactory, DatasetFactory, ModelFactory, PlanFactory
from marginbench.bench.experiment.spec import ExperimentSpec
from marginbench.bench.registry import provenance
from marginbench.bench.registry.names import check_name
from marginbench.bench.registry.provenance import Source

F = TypeVar("F")


class Registry(Generic[F]):
    """Name -> factory, for one kind of thing (dataset, model, attack, preset), and where each name comes from.

    A name taken twice raises, except while a plugin is being loaded: then the second registration is set
    aside as a conflict, and only asking for that name is an error (``get``). A name that would not read back
    as itself from the tables or name a safe folder raises SpecError (``marginbench.bench.registry.names``).
    """

    def __init__(self, kind: str, factories: Mapping[str, F] | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}
        self._sources: dict[str, Source] = {}
        self._conflicts: dict[str, list[Source]] = {}
        with provenance.loading(provenance.BUILT_IN):
            for name, factory in (factories or {}).items():
                self.register(name)(factory)

    def register(self, name: str) -> Callable[[F], F]:
        check_name(self.kind, name)

        def add(factory: F) -> F:
            source = provenance.current(factory)
            if name in self._factories:
                if not provenance.loading_plugin():
                    raise ValueError(f"{self.kind} {name!r} is already registered")
                if source != self._sources[name]:  # the same plugin loaded twice is not a conflict
                    self._conflicts.setdefault(name, []).append(source)
                return factory
            self._factories[name] = factory
            self._sources[name] = source
            return factory

        return add

    def get(self, name: str) -> F:
        try:
            factory = self._factories[name]
        except KeyError:
            raise SpecError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}") from None
        if name in self._conflicts:
            others = " and ".join(source.describe() for source in self._conflicts[name])
            raise SpecError(f"{self.kind} {name!r} is registered twice, by {self._sources[name].describe()} and by {others}; drop one of the plugins")
        return factory

    def source(self, name: str) -> Source:
        """Where ``name`` was registered from (its first registration)."""
        if name not in self._factories:
            self.get(name)  # the unknown name's error
        # a factory put in place without register (tests patch _factories) is judged by its module
        return self._sources.get(name) or provenance.current(self._factories[name])

    def conflicts(self) -> dict[str, tuple[Source, ...]]:
        """Names that plugins registered again: name -> the registrations set aside."""
        return {name: tuple(others) for name, others in self._conflicts.items()}

    def describe(self, name: str) -> str:
        """``name``'s source in words, with any conflicting registration."""
        text = self.source(name).describe()
        for other in self._conflicts.get(name, []):
            text += f"; also registered by {other.describe()} (asking for it is an error)"
        return text

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


DATASETS: Registry[DatasetFactory] = Registry(
    "dataset", {"sphere": recipes.sphere_data, "subspace": recipes.subspace_data, "digits": recipes.digits_data}
)
# The trained models' recipes: a model of TRAINING_PLANS can be trained in one batch with other seeds.
TRAINING_PLANS: Registry[PlanFactory] = Registry(
    "trained model", {"vanilla": recipes.vanilla_plan, "small-init": recipes.small_init_plan, "l2": recipes.l2_plan}
)
MODELS: Registry[ModelFactory] = Registry(
    "model",
    {**{name: recipes.trained(TRAINING_PLANS.get(name)) for name in TRAINING_PLANS.names()}, "robust-construction": recipes.robust_construction_model, "three-layer": recipes.three_layer_model},
)
ATTACKS: Registry[AttackFactory] = Registry(
    "attack",
    {
        "universal-z": recipes.plain(UniversalZ),
        "subspace-z": recipes.on_basis(SubspaceZ, "subspace-z"),
        "pgd": recipes.seeded(MinimalPGD),
        "pgd-off": recipes.projected_pgd("P-perp", "pgd-off"),
        "pgd-on": recipes.projected_pgd("P", "pgd-on"),
        "fmn": recipes.plain(FMN),
        "boundary-walk": recipes.seeded(BoundaryWalk),
        "region-walk": recipes.seeded(RegionWalk),
        "exact": recipes.exact,
        "fb-fmn": recipes.seeded(FbFMN),
        "fb-ddn": recipes.seeded(FbDDN),
        "fb-deepfool": recipes.seeded(FbDeepFool),
        "fb-cw": recipes.seeded(FbCW),
        "fb-boundary": recipes.seeded(FbBoundary),
        "fb-brendel-bethge": recipes.seeded(FbBrendelBethge),
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
