"""The generic registry: public names mapped to factories, each name with its source.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it. The model and attack registries also keep
an entry of capabilities beside each factory (``marginbench.bench.registry.entries``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from marginbench.bench.errors import SpecError
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
        """The decorator that registers its factory under ``name``."""
        return self._register(name, lambda factory: None)

    def _register(self, name: str, added: Callable[[F], None]) -> Callable[[F], F]:
        """``register``, calling ``added(factory)`` once the factory holds the name (not when set aside)."""
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
            added(factory)
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
