"""One writer per result directory: the lock that ``run`` holds while it writes DIR."""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import filelock

from marginbench.bench.errors import SpecError
from marginbench.bench.results.store import atomic_write

LOCK_FILE = ".marginbench.lock"  # held (flock) by the one process writing DIR
WRITER_FILE = ".marginbench.writer"  # who holds it: pid, host, command, since


class WriterLock:
    """One writer per result directory: ``with WriterLock(DIR):`` around everything that writes it.

    A ``filelock.FileLock`` (flock on POSIX) on DIR/.marginbench.lock, taken without waiting: a second
    writer (``run``, ``run --overwrite``, ``run --resume``) is refused at once with a SpecError naming the
    holder's pid from DIR/.marginbench.writer. The kernel drops the lock when its process dies, so a
    killed writer's lock is simply taken over. Where DIR cannot hold the lock (not a directory, not
    writable), nothing is locked and the store's own checks say what is wrong.
    """

    def __init__(self, root: Path | str, *, create: bool) -> None:
        self.root = Path(root)
        self.create = create
        self._lock: filelock.BaseFileLock | None = None

    def __enter__(self) -> WriterLock:
        try:
            if self.create and not self.root.exists():
                self.root.mkdir(parents=True)
            if not self.root.is_dir():
                return self
            lock = filelock.FileLock(self.root / LOCK_FILE, timeout=0, is_singleton=False)
            lock.acquire()
        except filelock.Timeout:
            raise SpecError(
                f"{self.root} is being written by another marginbench process ({self._holder()}); wait for it to end or choose another directory"
            ) from None
        except OSError:
            return self
        self._lock = lock
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv, "since": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write(self.root / WRITER_FILE, lambda f: f.write(json.dumps(holder).encode()))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            (self.root / WRITER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def _holder(self) -> str:
        try:
            holder = json.loads((self.root / WRITER_FILE).read_text())
            return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "pid unknown: it has not said yet"
