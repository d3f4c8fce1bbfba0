"""Where each registered name comes from: built in, an installed distribution, a plugin file or module, or
Python code that registered it; what ``marginbench list`` shows and what a result's manifest records. And
``library_versions``: the versions of every library that computes a number (a manifest's ``versions``, the
leaderboard exports' ``written_by``)."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Literal

import marginbench

SourceKind = Literal["built-in", "distribution", "file", "module", "python"]


@dataclass(frozen=True, kw_only=True)
class Source:
    """The code behind a registered name.

    Attributes:
        kind: built-in (this package), distribution (an installed package's entry point), file (a plugin .py
            file), module (a plugin module given by name), python (registered by code outside any plugin).
        name: the distribution's or module's name ("" for built-in and file; python: the module that registered).
        version: the distribution's version, where there is one.
        path: the plugin's file (file and module).
        sha256: that file's SHA-256, so a result can be traced to the exact code.
    """

    kind: SourceKind
    name: str = ""
    version: str = ""
    path: str = ""
    sha256: str = ""

    def describe(self) -> str:
        """One phrase, e.g. ``distribution foo 0.1`` or ``plugin file /x/p.py (sha256 1a2b3c4d5e6f)``."""
        if self.kind == "built-in":
            return "built-in"
        if self.kind == "distribution":
            return f"distribution {self.name} {self.version}"
        if self.kind == "python":
            return f"Python code in module {self.name}"
        where = f"plugin module {self.name}," if self.kind == "module" else "plugin file"
        return f"{where} {self.path} (sha256 {self.sha256[:12]})"

    def as_json(self) -> dict[str, str]:
        return {key: value for key, value in asdict(self).items() if value}


BUILT_IN = Source(kind="built-in")
_LOADING: ContextVar[Source | None] = ContextVar("marginbench_plugin_loading", default=None)


@contextmanager
def loading(source: Source) -> Iterator[None]:
    """Within the block, every name registered is attributed to ``source`` (a plugin being imported)."""
    token = _LOADING.set(source)
    try:
        yield
    finally:
        _LOADING.reset(token)


def loading_plugin() -> bool:
    """Whether a plugin is being loaded now (a taken name is then recorded, not raised)."""
    return _LOADING.get() is not None


def current(factory: object) -> Source:
    """The source of a registration happening now: the plugin being loaded, else by the factory's module."""
    source = _LOADING.get()
    if source is not None:
        return source
    module = str(getattr(factory, "__module__", "") or "")
    return BUILT_IN if module == "marginbench" or module.startswith("marginbench.") else Source(kind="python", name=module)


# The distributions whose code computes a number of a result: training and the native attacks (torch, numpy), the
# data (scikit-learn's digits, scipy), the QP and MIQP solvers (daqp, pyscipopt), Foolbox's attacks (foolbox, and
# numba for Brendel-Bethge), the tables (pandas). By distribution name, as pip knows them.
LIBRARIES = ("torch", "numpy", "pandas", "scipy", "scikit-learn", "daqp", "pyscipopt", "foolbox", "numba")
NOT_INSTALLED = "not installed"


def library_versions() -> dict[str, str]:
    """marginbench's and Python's versions, then each of LIBRARIES's (``importlib.metadata``, so nothing is
    imported) or "not installed": the one list of versions the manifest and the leaderboard exports record."""
    versions = {"marginbench": marginbench.__version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions
