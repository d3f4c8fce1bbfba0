"""The rule for registered names (datasets, models, attacks, presets): each one becomes a value of the CSV
tables, part of a run's folder name (``runs/<run_id>/``) and a word of a comma-separated CLI list, so it must
read back as itself in each of them. Every ``Registry`` checks it, built-in names included."""

from __future__ import annotations

import re

from marginbench.bench.errors import SpecError
from marginbench.bench.results.record import BEST

RESERVED = frozenset({BEST})  # the harness's own rows: the per-example minimum over the attacks
# pandas' default na_values (pandas._libs.parsers.STR_NA_VALUES; tests/test_plugins.py keeps them in step):
# read_csv turns these cells into NaN, so a name spelled so would vanish from the tables.
NA_VALUES = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
MAX_LENGTH = 64  # run ids join several names; a folder name stops at 255 bytes
_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be registered, or None where it can."""
    if not isinstance(name, str):
        return f"a name is a str, not {type(name).__name__}"
    if name in RESERVED:
        return f"{name!r} is reserved (the per-example minimum over the attacks, which the harness adds)"
    # case-insensitive: other CSV readers (R, spreadsheets) take NAN or none as missing too
    if name.lower() in {value.lower() for value in NA_VALUES}:
        return "pandas reads it back as a missing value"
    if "/" in name or "\\" in name or ".." in name:
        return "it contains a path separator or '..' (it names a folder under runs/)"
    if name.startswith("."):
        return "it starts with '.' (a hidden folder under runs/)"
    if any(not char.isprintable() for char in name):
        return "it contains a control character"
    if len(name) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if not _SHAPE.fullmatch(name):
        return "use letters, digits and . _ + - only, starting with a letter or a digit"
    if name.lower() in ("true", "false") or _is_number(name):
        return "the tables would read it back as a number or a boolean"
    return None


def check_name(kind: str, name: object) -> None:
    """SpecError (one line) unless ``name`` can be registered as a ``kind``."""
    problem = name_problem(name)
    if problem is not None:
        raise SpecError(f"{kind} name {name!r} is refused: {problem}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
