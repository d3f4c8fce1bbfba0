"""Where a report's ``-o FILE`` may go: a regular file, written whole, never over a device or a result directory.

An existing FILE must be a regular file: a directory, device (``/dev/full``), FIFO or socket is refused, not
replaced by a file. A symlink is written through: its target (resolved) is what is checked and replaced,
and the link stays. A path among a result directory's own files (manifest.json, summary.csv, examples.csv,
runs/..., its lock) is refused: a report must not overwrite what it reports on.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from marginbench.bench.errors import SpecError
from marginbench.bench.results.store import RESULT_FILES, atomic_write
from marginbench.bench.results.writer_lock import LOCK_FILE, WRITER_FILE

OWN_FILES = frozenset({*RESULT_FILES, "runs", LOCK_FILE, WRITER_FILE})  # a result directory's, by their first path part


def check_output(path: Path, *, option: str = "-o", example: str = "out.txt") -> Path:
    """The file that ``option path`` will write (the symlink's target, resolved); SpecError (one line) unless it
    is a regular file or a new one in an existing folder, outside any result directory's own files."""
    target = path.resolve()
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise SpecError(f"{option} {path}: {err.strerror or err}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise SpecError(f"{option} {path} is a directory: give the file's path, e.g. {path / example}")
    if mode is not None and not stat.S_ISREG(mode):
        raise SpecError(f"{option} {path} is not a regular file (a device, FIFO or socket): {option} writes a regular file; give another path")
    if not target.parent.is_dir():
        raise SpecError(f"{option} {path}: the folder {path.parent} does not exist")
    for folder in target.parents:
        part = target.relative_to(folder).parts[0]
        if part in OWN_FILES and (folder / "manifest.json").is_file():
            raise SpecError(f"{option} {path} is one of the result directory {folder}'s own files ({part}): write the report elsewhere")
    return target


def write_output(path: Path, text: str, *, option: str = "-o", example: str = "out.txt") -> None:
    """Write ``text`` to ``path`` (see ``check_output``) whole or not at all; SpecError (one line) when it cannot be."""
    target = check_output(path, option=option, example=example)
    try:
        atomic_write(target, lambda f: f.write(text.encode()))
        umask = os.umask(0o022)  # the temporary file is private (0600); a file to publish is readable as umask allows
        os.umask(umask)
        target.chmod(0o666 & ~umask)
    except OSError as err:
        raise SpecError(f"cannot write {path}: {err.strerror or err}") from None
