"""The one user-facing error of the library: a mistake in what was asked, said in one line."""

from __future__ import annotations


class SpecError(ValueError):
    """A user-facing mistake; its message is one line that says what to fix.

    ``str(err)`` names the spec's fields, for a Python caller; ``cli`` says the same with the command line's
    options, for ``marginbench`` to print.
    """

    def __init__(self, message: str, *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli if cli is not None else message


def field_error(name: str, problem: str) -> SpecError:
    """``name problem`` for Python, ``--name problem`` for the command line (e.g. "d must be at least 2")."""
    return SpecError(f"{name} {problem}", cli=f"--{name.replace('_', '-')} {problem}")
