"""Plugins: outside attacks and models, registered in the same registries without a fork.

Two ways in:

- an installed distribution declares entry points in the groups ``marginbench.attacks`` and
  ``marginbench.models``. The rule: each entry point names a **factory** (an ``AttackFactory`` or a
  ``ModelFactory``), registered under the entry point's own name, e.g. in its pyproject.toml
  ``[project.entry-points."marginbench.attacks"] my-attack = "my_pkg.attacks:my_attack"``;
- ``--plugin MODULE_OR_FILE`` (``run``, ``attack``, ``list``): a module name or a .py file that registers names
  (``ATTACKS.register(...)``) when it is imported.

A plugin that fails to import, or that registers a name already taken, is one warning line naming it, and the
rest goes on; a taken name is an error only when it is asked for (``Registry.get``). A plugin that ends the
program while it is imported (sys.exit, or a KeyboardInterrupt of its own) is an error (``PluginExit``). Every name remembers its
source (``marginbench.bench.registry.provenance``), and result directories record the sources of the plugin names they
used (manifest ``plugins``), which ``run --resume`` then requires again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from marginbench.bench.errors import SpecError
from marginbench.bench.registry import provenance
from marginbench.bench.registry.provenance import Source
from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS, Registry

Warn = Callable[[str], None]
GROUPS: Mapping[str, Registry[Any]] = {"marginbench.attacks": ATTACKS, "marginbench.models": MODELS}
REGISTRIES: Mapping[str, Registry[Any]] = {"dataset": DATASETS, "model": MODELS, "attack": ATTACKS}

_loaded: dict[str, Source | None] = {}  # --plugin argument -> its source (None: it failed to import)
_entry_points_loaded = False


class PluginExit(Exception):
    """Code that marginbench called (a plugin at import, an attack, a model) raised SystemExit, or a
    KeyboardInterrupt that no Ctrl-C caused: a failure of that code, not a request to stop marginbench."""


@contextmanager
def plugin_code(what: str) -> Iterator[None]:
    """Within the block, SystemExit and a KeyboardInterrupt that no SIGINT caused become PluginExit; ``what``
    names the code (e.g. "attack fmn").

    SystemExit is always converted: called code has no business ending the program, and letting it through
    ends a sweep with status 0 and its work unsaved. KeyboardInterrupt is also how a user's Ctrl-C arrives,
    which must still stop the run, so the two are told apart by watching SIGINT during the block: Python
    raises a Ctrl-C's KeyboardInterrupt from the SIGINT handler, so one raised while no SIGINT came is the
    code's own (off the main thread, or with SIGINT ignored, no signal can raise it at all).
    """
    seen = [False]
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    watch = callable(previous)

    def note(signum: int, frame: types.FrameType | None) -> None:
        seen[0] = True
        previous(signum, frame)  # type: ignore[misc, operator]  # the usual handler: it raises KeyboardInterrupt

    if watch:
        signal.signal(signal.SIGINT, note)
    try:
        yield
    except SystemExit as err:
        raise PluginExit(f"{what} called sys.exit({err.code!r})") from None
    except KeyboardInterrupt:
        if seen[0]:
            raise  # the user's Ctrl-C: stop, as everywhere else
        raise PluginExit(f"{what} raised KeyboardInterrupt itself (no Ctrl-C came)") from None
    finally:
        if watch:
            signal.signal(signal.SIGINT, previous)  # type: ignore[arg-type]


def _stderr(line: str) -> None:
    print(f"marginbench: warning: {line}", file=sys.stderr, flush=True)


def _conflicts() -> set[tuple[str, str, Source]]:
    return {(registry.kind, name, other) for registry in REGISTRIES.values() for name, others in registry.conflicts().items() for other in others}


def _guarded(label: str, source: Source, load: Callable[[], None], warn: Warn) -> bool:
    """Run ``load`` with its registrations attributed to ``source``; an exception or a taken name is one line."""
    before = _conflicts()
    try:
        with provenance.loading(source), plugin_code(f"plugin {label}"):
            load()
    except PluginExit as err:  # it meant to end the program: going on without it would hide that
        raise SpecError(f"{err} while being imported; a plugin registers names and returns: remove that, or leave the plugin out") from None
    except Exception as err:  # a broken plugin must not stop the others, nor the built-ins
        text = " ".join(str(err).split())
        warn(f"plugin {label} failed to import ({type(err).__name__}{': ' + text if text else ''}); going on without it")
        return False
    for kind, name, _ in sorted(_conflicts() - before, key=lambda c: (c[0], c[1])):
        taken = REGISTRIES[kind].source(name).describe()
        warn(f"plugin {label}: {kind} {name!r} is already registered ({taken}); asking for {name!r} is an error while both are loaded")
    return True


def load_entry_points(warn: Warn = _stderr) -> None:
    """Register the factories that installed distributions declare (groups ``marginbench.attacks`` and
    ``marginbench.models``); once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group, registry in GROUPS.items():
        for point in importlib.metadata.entry_points(group=group):
            dist = point.dist
            source = Source(kind="distribution", name=dist.name if dist else point.module, version=dist.version if dist else "")
            label = f"{point.name} = {point.value} (entry point of {source.describe()})"

            def register(point: importlib.metadata.EntryPoint = point, registry: Registry[Any] = registry) -> None:
                factory = point.load()
                if isinstance(factory, types.ModuleType) or not callable(factory):
                    raise TypeError(f"{point.value} is not a factory: an entry point of {point.group} names a callable, registered as {point.name!r}")
                registry.register(point.name)(factory)

            _guarded(label, source, register, warn)


def _file_source(path: Path) -> Source:
    return Source(kind="file", path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def load_plugin(plugin: str, warn: Warn = _stderr) -> Source | None:
    """Import ``plugin`` (a .py file or a module name), which registers names; its source, or None (said in one
    line) where it cannot be imported. Loading the same plugin again does nothing."""
    is_file = plugin.endswith(".py") or "/" in plugin or Path(plugin).is_file()
    key = str(Path(plugin).resolve()) if is_file else plugin
    if key in _loaded:
        return _loaded[key]
    _loaded[key] = None
    if is_file:
        path = Path(key)
        if not path.is_file():
            warn(f"plugin {plugin} failed to import (no such file); going on without it")
            return None
        if path.suffix != ".py":  # importlib has no loader for it
            why = "is a file whose name does not end in .py: give a .py file, or an importable module's name"
            raise SpecError(f"plugin {plugin} {why}", cli=f"--plugin {plugin} {why}")
        source = _file_source(path)
        # A unique module name per file and content: two plugins named plugin.py do not replace each other.
        name = "marginbench_plugin_" + re.sub(r"\W", "_", path.stem) + "_" + source.sha256[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)

        def load() -> None:
            sys.modules[name] = module  # before executing it: dataclasses and pickling look modules up there
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            except BaseException:
                sys.modules.pop(name, None)
                raise

    else:
        try:
            found = importlib.util.find_spec(plugin)
        except (ImportError, ValueError) as err:
            found, error = None, err
        else:
            error = None
        if found is None:
            warn(f"plugin {plugin} failed to import ({type(error).__name__ + ': ' + str(error) if error else 'no such module'}); going on without it")
            return None
        origin = Path(found.origin) if found.origin and Path(found.origin).is_file() else None
        source = Source(kind="module", name=plugin, path=str(origin or ""), sha256=_file_source(origin).sha256 if origin else "")

        def load() -> None:
            importlib.import_module(plugin)

    if _guarded(plugin, source, load, warn):
        _loaded[key] = source
    return _loaded[key]


def load_plugins(plugins: Iterable[str] = (), warn: Warn = _stderr) -> list[Source]:
    """The installed entry points, then each ``--plugin``; the sources of those that loaded."""
    load_entry_points(warn)
    return [source for source in (load_plugin(plugin, warn) for plugin in plugins) if source is not None]


def loaded_plugins() -> tuple[str, ...]:
    """The ``--plugin`` arguments loaded in this process, for worker processes to load again."""
    return tuple(key for key, source in _loaded.items() if source is not None)


def quiet(line: str) -> None:
    """A ``Warn`` for worker processes: the main process has said it already."""


def recorded_sources(names: Mapping[str, Iterable[str]]) -> list[dict[str, Any]]:
    """manifest ``plugins``: the source of every name used (kind -> names) that is not built in."""
    out = []
    for kind, used in names.items():
        registry = REGISTRIES[kind]
        for name in sorted(set(used)):
            source = registry.source(name)
            if source.kind != "built-in":
                out.append({"registry": kind, "name": name, "source": source.as_json()})
    return out


def _hint(source: Source) -> str:
    if source.kind == "distribution":
        return f"install it (pip install '{source.name}=={source.version}')"
    if source.kind in ("file", "module"):
        return f"give it again with --plugin {source.path if source.kind == 'file' else source.name}"
    return f"register it first (it came from Python code in module {source.name})"


def check_recorded(
    root: Path | str, recorded: Sequence[Mapping[str, Any]], kinds: Iterable[str] = ("dataset", "model", "attack"), warn: Warn = _stderr
) -> None:
    """SpecError unless every plugin name the manifest of ``root`` records (of ``kinds``) is registered now;
    a warning where one now comes from other code than recorded."""
    wanted = set(kinds)
    for entry in recorded:
        kind, name = entry.get("registry", ""), entry.get("name", "")
        if kind not in wanted or kind not in REGISTRIES:
            continue
        stored = entry.get("source") if isinstance(entry.get("source"), dict) else {}
        then = Source(**{key: str(value) for key, value in stored.items() if key in ("kind", "name", "version", "path", "sha256")})  # type: ignore[arg-type]
        registry = REGISTRIES[kind]
        if name not in registry:
            raise SpecError(f"{root} used {kind} {name!r} from {then.describe()}, which is not loaded: {_hint(then)}")
        now = registry.source(name)
        if now != then:
            warn(f"{kind} {name!r} now comes from {now.describe()}; {root} recorded {then.describe()}")
