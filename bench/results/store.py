"""The result directory of DESIGN.md, file by file (a writer goes through ``session.ResultSession``; reports
read it through ``readback.py``; manifest.json is ``manifest.py``'s).

Written so that a crash never leaves a half-written file:

    DIR/manifest.json, DIR/summary.csv, DIR/examples.csv,
    DIR/runs/<run_id>/{model.pt, data.npz, perturbations.npz}
    DIR/runs/<run_id>/{examples.csv, run.json, COMPLETE}   the run's own rows, then its completion marker

Every file is written to a temporary name in the same folder and renamed into place (atomic on POSIX);
the tables are rewritten after each run, so everything finished so far is on disk. A run is finished when
its ``COMPLETE`` marker exists: the marker is written last and holds the SHA-256 of every file of the run,
so ``marginbench run --resume DIR`` can trust the run's rows, rebuild the tables from them, and redo every
run that has no marker (or whose files do not match it).

The checks fail closed. manifest.json carries its own checksum (``manifest.py``), and a marker must vouch
for every file of its run that is there, and for model.pt, data.npz and perturbations.npz wherever run.json
says the run finished ("ok"): a deleted entry is a refusal, never a skipped check. Checksums guard against
accidents, partial edits and truncation, not against a forger who recomputes them all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Collection, Mapping
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
TWIN_CHECKPOINT = "twin.checkpoint.pt"  # a --twin's state while it trains (bench/execution/twin.py), kept by a resume
STAGED = ".next"  # suffix of a finished run's replacement files until they are committed (``rewrite_rows``)


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
        cls.check_resumable(root)
        for tmp in root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        store = cls(root)
        for marker in root.glob(f"runs/*/{MARKER}{STAGED}"):  # a rewrite whose files were all staged: finish it
            store._commit(marker.parent)
        for staged in root.glob(f"runs/*/*{STAGED}"):  # one cut short while staging: the run is as it was
            staged.unlink(missing_ok=True)
        return store

    @staticmethod
    def check_resumable(root: Path | str) -> None:
        """SpecError unless DIR has a manifest.json and can be written; changes nothing there."""
        root = Path(root)
        if not (root / "manifest.json").is_file():
            raise SpecError(f"{root}: no manifest.json there, so nothing to resume", cli=f"--resume {root}: no manifest.json there, so nothing to resume")
        _check_writable(root, "--resume", create=False)

    def _clear(self) -> None:
        for name in RESULT_FILES:
            (self.root / name).unlink(missing_ok=True)
        runs = self.root / "runs"
        if runs.is_dir():
            for run_dir in runs.iterdir():
                for name in (MARKER, *ROW_FILES, *ARRAY_FILES):  # the marker first: a half-cleared run is unfinished
                    (run_dir / name).unlink(missing_ok=True)
                for staged in run_dir.glob(f"*{STAGED}"):
                    staged.unlink(missing_ok=True)
                (run_dir / TWIN_CHECKPOINT).unlink(missing_ok=True)  # --overwrite starts over
                if run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

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

    def write_tables(self, *, examples: pd.DataFrame, summary: pd.DataFrame) -> dict[str, str]:
        """examples.csv then summary.csv, floats at full precision (repr round-trips); returns their SHA-256,
        for the manifest (``readback.verify_directory``)."""
        digests = {}
        for name, frame in (("examples.csv", examples), ("summary.csv", summary)):
            data = _csv_bytes(frame)
            atomic_write(self.root / name, lambda f, data=data: f.write(data))
            digests[name] = hashlib.sha256(data).hexdigest()
        return digests

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

    def rewrite_rows(self, run_id: str, *, examples: pd.DataFrame, record: Mapping[str, Any], perturbations: Mapping[str, np.ndarray] | None = None) -> None:
        """Replace a finished run's rows (and perturbations.npz) so that a crash leaves the old run or the new one.

        The new files are staged as NAME.next, then COMPLETE.next vouching for them; only then are they renamed
        into place, the marker last. A crash while staging leaves the old run intact (``reopen`` drops the
        staged files); a crash while renaming is finished by ``reopen``.
        """
        run_dir = self.run_dir(run_id)
        data = _csv_bytes(examples)
        text = json.dumps(record, indent=2, default=_plain, allow_nan=True).encode() + b"\n"
        staged: dict[str, Callable[[IO[bytes]], object]] = {"examples.csv": lambda f: f.write(data), "run.json": lambda f: f.write(text)}
        if perturbations is not None:
            staged["perturbations.npz"] = lambda f: np.savez(f, **perturbations)
        for name, write in staged.items():
            atomic_write(run_dir / f"{name}{STAGED}", write)
        files = {
            name: _sha256(run_dir / (f"{name}{STAGED}" if name in staged else name))
            for name in (*ARRAY_FILES, *ROW_FILES)
            if name in staged or (run_dir / name).exists()
        }
        marker = json.dumps({"run_id": run_id, "sha256": files}, indent=2) + "\n"
        atomic_write(run_dir / f"{MARKER}{STAGED}", lambda f: f.write(marker.encode()))
        self._commit(run_dir)

    def _commit(self, run_dir: Path) -> None:
        """Rename a run's staged files into place, its staged marker last."""
        for staged in sorted(run_dir.glob(f"*{STAGED}")):
            if staged.name != f"{MARKER}{STAGED}":
                os.replace(staged, run_dir / staged.name.removesuffix(STAGED))
        os.replace(run_dir / f"{MARKER}{STAGED}", run_dir / MARKER)

    def finished_rows(self, run_id: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """(examples, record) of a finished run, or None if it has no marker or a file does not match it."""
        rows, _ = self.read_run(run_id)
        return rows

    def read_run(self, run_id: str) -> tuple[tuple[pd.DataFrame, dict[str, Any]] | None, str | None]:
        """((examples, record), None) for a finished run whose files match its marker, else (None, why not).

        SpecError where the marker itself was edited (``_check_marker_covers``): refused, not mended by a redo.
        """
        run_dir = self.run_dir(run_id)
        if not (run_dir / MARKER).exists():
            return None, "it has no completion marker (it did not finish)" if run_dir.exists() else "it has not run"
        try:
            marker = json.loads((run_dir / MARKER).read_text())
            files = marker["sha256"]
            missing = [name for name in ROW_FILES if name not in files]
            if missing:
                return None, f"its completion marker does not vouch for {', '.join(missing)}"
            for name, digest in files.items():
                if not (run_dir / name).exists():
                    return None, f"{name} is missing"
                if _sha256(run_dir / name) != digest:
                    return None, f"{name} does not match the checksum in its completion marker"
            record = json.loads((run_dir / "run.json").read_text())
            examples = pd.read_csv(run_dir / "examples.csv")
            status = record["run_row"]["run_status"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            return None, f"its files cannot be read ({type(err).__name__}: {err})"
        self._check_marker_covers(run_id, marker, status)
        return (examples, record), None

    def _check_marker_covers(self, run_id: str, marker: Mapping[str, Any], status: object) -> None:
        """SpecError where the marker leaves out a file it must vouch for (every array file that is there, and
        all three where the run finished "ok"), or names another run: no crash writes such a marker (it is
        written whole, after every file), so it was edited, and the run can be neither trusted nor mended."""
        run_dir = self.run_dir(run_id)
        files = marker["sha256"]
        unvouched = [name for name in ARRAY_FILES if name not in files and (status == "ok" or (run_dir / name).exists())]
        fix = f"the run cannot be trusted: delete {run_dir} and `marginbench run --resume {self.root}` redoes it"
        if unvouched:
            raise SpecError(f"{run_dir}: its completion marker does not vouch for {', '.join(unvouched)} (an entry deleted from {MARKER}?); {fix}")
        if marker.get("run_id") != run_id:
            raise SpecError(f"{run_dir}: its completion marker is another run's ({marker.get('run_id')!r}); {fix}")

    def stray_runs(self, run_ids: Collection[str]) -> list[str]:
        """Finished runs (with a marker) under runs/ that are not among ``run_ids``, sorted."""
        return sorted(marker.parent.name for marker in self.root.glob(f"runs/*/{MARKER}") if marker.parent.name not in run_ids)

    def forget_run(self, run_id: str) -> None:
        """Remove a run's files, its marker first: before a run is (re)written, nothing stale can be vouched for."""
        for name in (MARKER, *ROW_FILES, *ARRAY_FILES):
            (self.run_dir(run_id) / name).unlink(missing_ok=True)
        for staged in self.run_dir(run_id).glob(f"*{STAGED}"):
            staged.unlink(missing_ok=True)


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
