"""The ``marginbench`` command (and ``python -m marginbench``): parse, delegate, and turn a user's mistake
into one line and exit status 2.

``parser`` builds the argument parser, ``commands`` runs each subcommand, ``help_text`` explains them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from marginbench.bench.cli.commands import prepare_run, specs_from_args
from marginbench.bench.cli.parser import PROG, make_parser, run_conflict
from marginbench.bench.errors import SpecError

__all__ = ["main", "make_parser", "prepare_run", "run_conflict", "specs_from_args"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marginbench`` console script and of ``python -m marginbench``."""
    parser = make_parser()
    args = parser.parse_args(argv)
    conflict = run_conflict(args) if args.command == "run" else None
    if conflict is not None:
        parser.error(conflict)
    try:
        return int(args.handler(args))
    except SpecError as err:
        print(f"{PROG}: error: {err.cli}", file=sys.stderr)
        return 2
