"""The result directory of DESIGN.md, written so that a crash never leaves a half-written file.

    DIR/manifest.json, DIR/summary.csv, DIR/examples.csv,
    DIR/runs/<run_id>/{model.pt, data.npz, perturbations.npz}

Every file is written to a temporary name in the same folder and renamed into place (atomic on POSIX);
the tables are rewritten after each run, so everything finished so far is on disk.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch

from marginbench.bench.spec import SpecError

RESULT_FILES = ("manifest.json", "summary.csv", "examples.csv")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ResultStore:
    """A result directory; ``open`` checks it can be written before any work starts."""

    root: Path

    @classmethod
    def open(cls, root: Path | str, *, overwrite: bool = False) -> ResultStore:
        """Create (or, with overwrite, clear our files from) DIR; SpecError if it is unusable."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise SpecError(f"--out {root} exists and is not a directory")
        existing = [name for name in RESULT_FILES if (root / name).exists()]
        if existing and not overwrite:
            raise SpecError(f"--out {root} already holds results ({existing[0]}); pass --overwrite or choose another directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".marginbench-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise SpecError(f"cannot write to --out {root}: {err.strerror or err}") from None
        store = cls(root)
        if overwrite:
            store._clear()
        return store

    def _clear(self) -> None:
        for name in RESULT_FILES:
            (self.root / name).unlink(missing_ok=True)
        runs = self.root / "runs"
        if runs.is_dir():
            for run_dir in runs.iterdir():
                for name in ("model.pt", "data.npz", "perturbations.npz"):
                    (run_dir / name).unlink(missing_ok=True)
                if run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=False, default=str, allow_nan=True) + "\n"
        atomic_write(self.root / "manifest.json", lambda f: f.write(text.encode()))

    def write_run(
        self,
        run_id: str,
        *,
        state: Mapping[str, torch.Tensor],
        data: Mapping[str, np.ndarray],
        perturbations: Mapping[str, np.ndarray],
    ) -> None:
        """model.pt (state dict W, b, v), data.npz and perturbations.npz (one array per attack name)."""
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "model.pt", lambda f: torch.save(dict(state), f))
        atomic_write(run_dir / "data.npz", lambda f: np.savez(f, **data))
        atomic_write(run_dir / "perturbations.npz", lambda f: np.savez(f, **perturbations))

    def write_tables(self, *, examples: pd.DataFrame, summary: pd.DataFrame) -> None:
        """examples.csv then summary.csv, floats at full precision (repr round-trips)."""
        for name, frame in (("examples.csv", examples), ("summary.csv", summary)):
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, float_format="%.17g")
            data = buffer.getvalue().encode()
            atomic_write(self.root / name, lambda f, data=data: f.write(data))


def read_tables(root: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(examples, summary) of a result directory."""
    root = Path(root)
    return pd.read_csv(root / "examples.csv"), pd.read_csv(root / "summary.csv")
