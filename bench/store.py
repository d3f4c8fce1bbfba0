"""The result directory of DESIGN.md: the one module that writes and reads it.

Written so that a crash never leaves a half-written file:

    DIR/manifest.json, DIR/summary.csv, DIR/examples.csv,
    DIR/runs/<run_id>/{model.pt, data.npz, perturbations.npz}
    DIR/runs/<run_id>/{examples.csv, run.json, COMPLETE}   the run's own rows, then its completion marker

Every file is written to a temporary name in the same folder and renamed into place (atomic on POSIX);
the tables are rewritten after each run, so everything finished so far is on disk. A run is finished when
its ``COMPLETE`` marker exists: the marker is written last and holds the SHA-256 of every file of the run,
so ``marginbench run --resume DIR`` can trust the run's rows, rebuild the tables from them, and redo every
run that has no marker (or whose files do not match it).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch

from marginbench.bench.errors import SpecError

RESULT_FILES = ("manifest.json", "summary.csv", "examples.csv")
ARRAY_FILES = ("model.pt", "data.npz", "perturbations.npz")
ROW_FILES = ("examples.csv", "run.json")
MARKER = "COMPLETE"


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
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
            raise SpecError(f"{root} exists and is not a directory", cli=f"--out {root} exists and is not a directory")
        existing = [name for name in RESULT_FILES if (root / name).exists()]
        if existing and not overwrite:
            raise SpecError(
                f"{root} already holds results ({existing[0]}); resume it, overwrite it, or choose another directory",
                cli=f"--out {root} already holds results ({existing[0]}); pass --resume {root} to finish it, "
                "--overwrite to replace it, or choose another directory",
            )
        _check_writable(root, "--out", create=True)
        store = cls(root)
        if overwrite:
            store._clear()
        return store

    @classmethod
    def reopen(cls, root: Path | str) -> ResultStore:
        """An existing result directory to resume; SpecError if it has no manifest or cannot be written.

        Temporary files left by a process that was killed mid-write are removed.
        """
        root = Path(root)
        if not (root / "manifest.json").is_file():
            raise SpecError(f"{root}: no manifest.json there, so nothing to resume", cli=f"--resume {root}: no manifest.json there, so nothing to resume")
        _check_writable(root, "--resume", create=False)
        for tmp in root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        return cls(root)

    def _clear(self) -> None:
        for name in RESULT_FILES:
            (self.root / name).unlink(missing_ok=True)
        runs = self.root / "runs"
        if runs.is_dir():
            for run_dir in runs.iterdir():
                for name in (MARKER, *ROW_FILES, *ARRAY_FILES):  # the marker first: a half-cleared run is unfinished
                    (run_dir / name).unlink(missing_ok=True)
                if run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()

    def read_manifest(self) -> dict[str, Any]:
        """manifest.json as a dict; SpecError if it is not a JSON object."""
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SpecError(f"cannot read {path}: {err}") from None
        specs = manifest.get("specs") if isinstance(manifest, dict) else None
        if not (isinstance(specs, list) and specs and all(isinstance(spec, dict) for spec in specs)):
            raise SpecError(f"{path} holds no experiment spec")
        return manifest

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
            data = _csv_bytes(frame)
            atomic_write(self.root / name, lambda f, data=data: f.write(data))

    def write_rows(self, run_id: str, *, examples: pd.DataFrame, record: Mapping[str, Any]) -> None:
        """The run's example rows and its record (run-level facts, attack rows, status), then the marker.

        Call after ``write_run`` (where the run has arrays): the marker vouches, by checksum, for every
        file of the run that exists when it is written.
        """
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        data = _csv_bytes(examples)
        atomic_write(run_dir / "examples.csv", lambda f: f.write(data))
        text = json.dumps(record, indent=2, default=_plain, allow_nan=True) + "\n"
        atomic_write(run_dir / "run.json", lambda f: f.write(text.encode()))
        files = {name: _sha256(run_dir / name) for name in (*ARRAY_FILES, *ROW_FILES) if (run_dir / name).exists()}
        marker = json.dumps({"run_id": run_id, "sha256": files}, indent=2) + "\n"
        atomic_write(run_dir / MARKER, lambda f: f.write(marker.encode()))

    def finished_rows(self, run_id: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """(examples, record) of a finished run, or None if it has no marker or a file does not match it."""
        run_dir = self.run_dir(run_id)
        try:
            marker = json.loads((run_dir / MARKER).read_text())
            files = marker["sha256"]
            if any(name not in files for name in ROW_FILES):
                return None
            if any(_sha256(run_dir / name) != digest for name, digest in files.items()):
                return None
            record = json.loads((run_dir / "run.json").read_text())
            examples = pd.read_csv(run_dir / "examples.csv")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return examples, record

    def forget_run(self, run_id: str) -> None:
        """Remove a run's files, its marker first: before a run is (re)written, nothing stale can be vouched for."""
        for name in (MARKER, *ROW_FILES, *ARRAY_FILES):
            (self.run_dir(run_id) / name).unlink(missing_ok=True)


def _check_writable(root: Path, option: str, *, create: bool) -> None:
    try:
        if create:
            root.mkdir(parents=True, exist_ok=True)
        probe = root / ".marginbench-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or err
        raise SpecError(f"cannot write to {root}: {reason}", cli=f"cannot write to {option} {root}: {reason}") from None


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.17g")
    return buffer.getvalue().encode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plain(value: object) -> object:
    """JSON for numpy and torch scalars (json.dumps' ``default``); anything else becomes its str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


# Reading result directories for the reports. Runs from different directories stay distinct (a ``source``
# column names the directory), even when their run_ids agree: a run_id does not encode the training options,
# so equal ids need not be equal networks.
RUN_KEY = ["source", "run_id"]


@dataclass(frozen=True, kw_only=True)
class Results:
    """The merged tables of some result directories.

    Attributes:
        summary: summary.csv rows of every directory, plus ``source`` (the directory as given); ``alpha``
            (n = d^alpha) and ``init_scale`` are the runner's columns, or where a table lacks them, alpha
            fitted as log n / log d and init_scale NaN.
        examples: examples.csv rows plus ``source``; None when some directory has no examples.csv.
    """

    summary: pd.DataFrame
    examples: pd.DataFrame | None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise SpecError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _alpha(summary: pd.DataFrame) -> pd.Series:
    if "alpha" in summary:
        return summary["alpha"].astype(float)
    # n = round(d ** alpha) is coarse at small d (d = 32, alpha = 0.5 gives n = 6, log 6 / log 32 = 0.517):
    # one decimal recovers the papers' grid (0.5, 0.8, 1, 1.2, 1.5).
    fitted = [round(math.log(n) / math.log(d), 1) if n > 0 and d > 1 else math.nan for n, d in zip(summary["n"], summary["d"], strict=True)]
    return pd.Series(fitted, index=summary.index, dtype=float)


def read_results(dirs: Sequence[str | Path], *, need_examples: bool = False) -> Results:
    """The merged tables of ``dirs``; SpecError (one line) for a missing or incomplete directory."""
    summaries, examples = [], []
    for given in dirs:
        root = Path(given)
        if not root.is_dir():
            raise SpecError(f"{given}: no such result directory")
        if not (root / "summary.csv").is_file():
            raise SpecError(f"{given} has no summary.csv: not a marginbench result directory (or its first run has not finished)")
        summary = _read_csv(root / "summary.csv")
        missing = [c for c in ("run_id", "model", "attack", "d", "n") if c not in summary]
        if missing:
            raise SpecError(f"{root / 'summary.csv'} lacks the column(s) {', '.join(missing)}")
        summary.insert(0, "source", str(given))
        summary["alpha"] = _alpha(summary)
        if "init_scale" not in summary:
            summary["init_scale"] = math.nan
        summaries.append(summary)
        if (root / "examples.csv").is_file():
            frame = _read_csv(root / "examples.csv")
            missing = [c for c in ("run_id", "attack", "index", "norm") if c not in frame]
            if missing:
                raise SpecError(f"{root / 'examples.csv'} lacks the column(s) {', '.join(missing)}")
            frame.insert(0, "source", str(given))
            examples.append(frame)
        elif need_examples:
            raise SpecError(f"{given} has no examples.csv; the per-example norms are needed here")
    merged_examples = pd.concat(examples, ignore_index=True) if len(examples) == len(summaries) else None
    return Results(summary=pd.concat(summaries, ignore_index=True), examples=merged_examples)


PROVENANCE = ("preset", "specs", "git_commit", "versions", "machine", "platform")


def read_provenance(root: Path | str) -> dict[str, Any]:
    """What manifest.json says about how a directory was made (preset, specs, commit, versions, machine);
    empty where it has no readable manifest."""
    try:
        manifest = json.loads((Path(root) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: manifest[k] for k in PROVENANCE if isinstance(manifest, dict) and k in manifest}
