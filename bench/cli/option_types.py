"""The argparse types of the ``marginbench`` options: registered names, comma-separated lists, seeds, finite
numbers (an integer may be written 1e20 or 64.0)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from marginbench.bench.errors import SpecError
from marginbench.bench.registry.registries import Registry


def registered_names(registry: Registry[Any]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated list of registered names."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        for name in names:
            try:
                registry.get(name)  # unknown, or registered twice by plugins
            except SpecError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        return names

    return parse


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    return seeds


def finite(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = integral(text) if kind is int else None  # 1e20 is an integer too
            if value is None:
                raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value

    return parse


def integral(text: str) -> int | None:
    """The integer a number written with a point or an exponent stands for (1e20, 64.0), or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def add_plugin_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module or a .py file that registers attacks or models (repeatable); one that fails to import is one warning line",
    )
