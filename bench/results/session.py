"""One writer's session on a result directory: ``run``, ``run --resume`` and ``attack`` are loops over it.

    with ResultSession.create(DIR, overwrite=False) as session:   # or ResultSession.resume(DIR)
        session.manifest.update(...)                 # what this session records
        session.write_tables()                       # the tables of what is finished, and the manifest
        for record in computed:
            session.save(record)                     # its files, the marker last; read back; tables again

While it is open the session holds DIR's writer lock (``WriterLock``), so no other process writes DIR. It
owns the manifest (read once with its seal checked, written sealed by ``write_tables``), the finished runs as
read back from their files (``finished``, by position in the sweep), and the tables built from them in the
sweep's order, with their checksums in the manifest. The files themselves are ``ResultStore``'s: each one
written atomically, a run's marker last, so a crash or a kill at any point leaves no half-written file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from marginbench.bench.results.manifest import save_manifest, sweep_manifest
from marginbench.bench.results.record import RunRecord
from marginbench.bench.results.rows import sweep_tables
from marginbench.bench.results.store import ResultStore
from marginbench.bench.results.writer_lock import WriterLock


class ResultSession:
    """A result directory opened for writing by this process; build it with ``create`` or ``resume``.

    Attributes:
        store: the directory's files.
        manifest: manifest.json's content, this session's additions included; ``write_tables`` writes it.
        finished: the finished runs by their position in the sweep, each as read back from its files.
    """

    def __init__(self, store: ResultStore, manifest: dict[str, Any]) -> None:
        self.store = store
        self.manifest = manifest
        self.finished: dict[int, RunRecord] = {}

    @classmethod
    @contextmanager
    def create(cls, root: Path | str, *, overwrite: bool = False) -> Iterator[ResultSession]:
        """A new result directory (``overwrite``: one cleared of our files first), with an empty manifest;
        SpecError if it already holds results, cannot be written, or another process writes it."""
        with WriterLock(root, create=True):  # before open: --overwrite must not clear a live writer's files
            yield cls(ResultStore.open(root, overwrite=overwrite), {})

    @classmethod
    @contextmanager
    def resume(cls, root: Path | str) -> Iterator[ResultSession]:
        """An existing result directory, with what a killed writer left tidied (``ResultStore.reopen``) and its
        manifest read and checked against its seal; SpecError where it cannot be, or another process writes it.
        No run is read back yet: ``read_run`` each, and ``keep`` those to build on."""
        with WriterLock(root, create=False):
            store = ResultStore.reopen(root)
            yield cls(store, sweep_manifest(store.root))

    @property
    def root(self) -> Path:
        return self.store.root

    def read_run(self, index: int, run_id: str) -> tuple[RunRecord | None, str | None]:
        """(record, None) for a finished run whose files match its marker, else (None, why not);
        SpecError for a marker that was edited (``ResultStore.read_run``)."""
        rows, why = self.store.read_run(run_id)
        return (None, why) if rows is None else (RunRecord.from_json(index, run_id, *rows), None)

    def keep(self, record: RunRecord) -> None:
        """Count ``record``, as read back from its files, among the finished runs that the tables are built from."""
        self.finished[record.index] = record

    def save(self, record: RunRecord) -> RunRecord:
        """Write a computed run's files (arrays, rows, the marker last), keep it as read back, rewrite the tables."""
        self.store.forget_run(record.run_id)
        if record.arrays:
            state = {key: torch.from_numpy(value.copy()) for key, value in record.arrays["model.pt"].items()}  # Ray's are read-only
            self.store.write_run(record.run_id, state=state, data=record.arrays["data.npz"], perturbations=record.arrays["perturbations.npz"])
        self.store.write_rows(record.run_id, examples=record.examples, record=record.as_json())
        return self._keep_read_back(record.index, record.run_id)

    def rewrite(self, record: RunRecord, *, perturbations: Mapping[str, np.ndarray] | None = None) -> RunRecord:
        """Replace a finished run's rows (and perturbations.npz) so that a crash leaves the old run or the new
        one (``ResultStore.rewrite_rows``); keep it as read back, rewrite the tables."""
        self.store.rewrite_rows(record.run_id, examples=record.examples, record=record.as_json(), perturbations=perturbations)
        return self._keep_read_back(record.index, record.run_id)

    def write_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """examples.csv and summary.csv of the finished runs in the sweep's order, then the manifest with their
        checksums and its list of runs; returns (examples, summary)."""
        examples, summary = sweep_tables(list(self.finished.values()))
        self.manifest["tables"] = self.store.write_tables(examples=examples, summary=summary)  # their checksums: verify_directory
        self.manifest["runs"] = {r.run_id: dict(r.manifest) for r in sorted(self.finished.values(), key=lambda r: r.index)}
        save_manifest(self.root, self.manifest)
        return examples, summary

    def _keep_read_back(self, index: int, run_id: str) -> RunRecord:
        """The run just written, as its files hold it, kept; then the tables. OSError where they do not match."""
        record, why = self.read_run(index, run_id)
        if record is None:
            raise OSError(f"the files of run {run_id} in {self.root} do not match its completion marker ({why})")
        self.keep(record)
        self.write_tables()
        return record
