"""What a registered model is and what a registered attack needs, stored beside each factory.

A name is the public vocabulary; what the harness does with a model or an attack is decided by its entry
(``MODELS.entry(name)``, ``ATTACKS.entry(name)``), never by comparing names. A model or an attack is one
registration: its name, its factory and its capabilities, e.g.

    @MODELS.register("my-net", closed_form=False, families=("subspace",))
    def my_net(data, context): ...

Every capability has a default that keeps an outside registration that gives none working as before:
a model is trained, along its family's recipe, to a TwoLayerNet, in any family; an attack needs the
two-layer net's closed form (the ``Attack`` interface hands it a ``TwoLayerNet``), no subspace, and proves
nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from marginbench.bench.errors import SpecError
from marginbench.bench.experiment.families import FAMILIES
from marginbench.bench.experiment.recipes import AttackFactory, ModelFactory
from marginbench.bench.experiment.spec import ExperimentSpec, RunSpec
from marginbench.bench.registry import provenance
from marginbench.bench.registry.registry import Registry


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """A registered model: its factory and what it is.

    Attributes:
        factory: (data, context) -> BuiltModel.
        trained: trained from the data; False for a construction in closed form (no training to estimate or
            to certify with --twin).
        closed_form: builds a TwoLayerNet, whose closed form every attack may use; False for a net that only
            autograd can differentiate: it takes only the attacks whose entries say ``needs_closed_form=False``.
        families: the experiment families it belongs to (a spec of another family is refused); None: any.
        follows_recipe: trains along its family's recipe from its init: the recipe's rule estimates its steps
            (and says whether they reach the iteration cap), and ``--twin paper`` retrains it with the paper's
            schedule. False for a model with a training of its own (a regularized rest point, another net).
        training_steps: its own estimated number of training steps, where it does not follow the recipe
            (None: the recipe's rule, a guess).
        step_gflop: GFLOPs of one of its full-batch training steps, where that is not a two-layer net's
            4 n d width.
        spec_problem: its own check of an experiment that lists it (the problem as a SpecError, or None), run
            with the names' checks before any work.
    """

    factory: ModelFactory
    trained: bool = True
    closed_form: bool = True
    families: tuple[str, ...] | None = None
    follows_recipe: bool = True
    training_steps: Callable[[RunSpec], float] | None = None
    step_gflop: Callable[[RunSpec], float] | None = None
    spec_problem: Callable[[ExperimentSpec], SpecError | None] | None = None

    def in_family(self, family: str) -> bool:
        return self.families is None or family in self.families


@dataclass(frozen=True, kw_only=True)
class AttackEntry:
    """A registered attack: its factory and what it needs and claims.

    Attributes:
        factory: (data, context) -> Attack.
        needs_closed_form: needs the two-layer net's closed form (``net.W``, ``net.value_and_input_grad``, ...);
            False for an attack that uses only N(x) and autograd's input gradient, which also takes the nets
            without a closed form (a model entry's ``closed_form=False``).
        needs_subspace: needs the data's subspace basis P; unavailable on data without one.
        proves_optimum: its finite norms are proved minimal (a lower bound on every attack's): reports draw
            and label it as the ground truth.
        library: the outside library whose attack it wraps (e.g. "foolbox"); None for marginbench's own. Figures
            draw a wrapper apart from a native attack of the same idea.
    """

    factory: AttackFactory
    needs_closed_form: bool = True
    needs_subspace: bool = False
    proves_optimum: bool = False
    library: str | None = None


F = TypeVar("F")
E = TypeVar("E", ModelEntry, AttackEntry)


class EntryRegistry(Registry[F], Generic[F, E]):
    """A ``Registry`` whose names also carry an entry of capabilities (``ModelEntry``, ``AttackEntry``)."""

    def __init__(self, kind: str, default: Callable[[F], E], entries: Mapping[str, E] | None = None) -> None:
        super().__init__(kind)
        self._default = default  # the entry of a factory given no capabilities
        self._entries: dict[str, E] = {}
        with provenance.loading(provenance.BUILT_IN):
            for name, entry in (entries or {}).items():
                self._register_entry(name, lambda factory, entry=entry: entry)(entry.factory)  # type: ignore[misc]

    def _register_entry(self, name: str, make: Callable[[F], E]) -> Callable[[F], F]:
        """``register``, keeping ``make(factory)`` as the name's entry once the factory holds the name."""

        def keep(factory: F) -> None:
            self._entries[name] = make(factory)

        return self._register(name, keep)

    def entry(self, name: str) -> E:
        """``name``'s entry (SpecError for an unknown or conflicting name, as ``get``)."""
        factory = self.get(name)
        entry = self._entries.get(name)
        if entry is None:  # a factory put in place without register (tests patch _factories): the defaults
            return self._default(factory)
        return entry if entry.factory is factory else dataclasses.replace(entry, factory=factory)  # type: ignore[type-var]


class ModelRegistry(EntryRegistry[ModelFactory, ModelEntry]):
    """The models: each name's factory and its ``ModelEntry``."""

    def __init__(self, entries: Mapping[str, ModelEntry] | None = None) -> None:
        super().__init__("model", lambda factory: ModelEntry(factory=factory), entries)

    def register(  # type: ignore[override]  # the same call, with keyword-only capabilities that have defaults
        self,
        name: str,
        *,
        trained: bool = True,
        closed_form: bool = True,
        families: tuple[str, ...] | None = None,
        follows_recipe: bool = True,
        training_steps: Callable[[RunSpec], float] | None = None,
        step_gflop: Callable[[RunSpec], float] | None = None,
    ) -> Callable[[ModelFactory], ModelFactory]:
        """The decorator that registers its factory under ``name``, with the capabilities of ``ModelEntry``."""
        unknown = sorted(set(families or ()) - set(FAMILIES))
        if unknown:
            raise SpecError(
                f"model {name!r}: unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}; choose from: {', '.join(FAMILIES)}"
            )
        member = tuple(families) if families is not None else None

        def make(factory: ModelFactory) -> ModelEntry:
            return ModelEntry(
                factory=factory, trained=trained, closed_form=closed_form, families=member,
                follows_recipe=follows_recipe, training_steps=training_steps, step_gflop=step_gflop,
            )  # fmt: skip

        return self._register_entry(name, make)

    def in_family(self, family: str) -> list[str]:
        """The models that belong to ``family``, sorted."""
        return [name for name in self.names() if self.entry(name).in_family(family)]

    def constructed(self, names: Iterable[object]) -> set[str]:
        """Those of ``names`` (e.g. a table's model column) registered now as constructions, nothing trained; a
        name not registered now (a plugin not loaded) counts as trained."""
        return {name for name in set(names) if isinstance(name, str) and name in self and not self.entry(name).trained}


class AttackRegistry(EntryRegistry[AttackFactory, AttackEntry]):
    """The attacks: each name's factory and its ``AttackEntry``."""

    def __init__(self, entries: Mapping[str, AttackEntry] | None = None) -> None:
        super().__init__("attack", lambda factory: AttackEntry(factory=factory), entries)

    def register(  # type: ignore[override]  # the same call, with keyword-only capabilities that have defaults
        self, name: str, *, needs_closed_form: bool = True, needs_subspace: bool = False, proves_optimum: bool = False, library: str | None = None
    ) -> Callable[[AttackFactory], AttackFactory]:
        """The decorator that registers its factory under ``name``, with the capabilities of ``AttackEntry``."""
        return self._register_entry(
            name,
            lambda factory: AttackEntry(
                factory=factory, needs_closed_form=needs_closed_form, needs_subspace=needs_subspace, proves_optimum=proves_optimum, library=library
            ),
        )

    def autograd(self) -> list[str]:
        """The attacks that take nets without a closed form (``needs_closed_form=False``), sorted."""
        return [name for name in self.names() if not self.entry(name).needs_closed_form]

    def proving(self, names: Iterable[object]) -> set[str]:
        """Those of ``names`` (e.g. a table's attack column) registered now as proving the optimum; a name not
        registered now (a plugin not loaded) proves nothing."""
        return {name for name in set(names) if isinstance(name, str) and name in self and self.entry(name).proves_optimum}
