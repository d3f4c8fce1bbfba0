"""The ``marginbench`` command (and ``python -m marginbench``): parse, delegate, and turn a user's mistake
into one line and exit status 2.

``parser`` builds the argument parser, ``commands`` runs each subcommand, ``help_text`` explains them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from marginbench.bench.cli.commands import prepare_run, specs_from_args
from marginbench.bench.cli.parser import PROG, make_parser
from marginbench.bench.cli.run_options import run_conflict
from marginbench.bench.errors import SpecError
from marginbench.bench.registry.plugins import load_plugins

__all__ = ["main", "make_parser", "prepare_run", "run_conflict", "specs_from_args"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marginbench`` console script and of ``python -m marginbench``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        load_plugins(_plugin_args(argv))  # before the parser: plugin names are choices of --models and --attacks
    except SpecError as err:
        print(f"{PROG}: error: {err.cli}", file=sys.stderr)
        return 2
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
    except BrokenPipeError:  # the reader went away (`marginbench leaderboard DIR | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that Python's exit flush does not raise again
        return 1


def _plugin_args(argv: Sequence[str]) -> list[str]:
    """The --plugin values of ``argv`` (the real parser says where they are allowed)."""
    scan = argparse.ArgumentParser(add_help=False)
    scan.add_argument("--plugin", action="append", default=[])
    return list(scan.parse_known_args(argv)[0].plugin)
