"""Executors: where the runs of a sweep are computed, and the sweep that writes what they return.

Every run is a task: ``compute_run`` turns a RunSpec into a ``RunRecord`` (rows, facts and arrays, plain
numpy and pandas so that it crosses process boundaries), catching any failure of the run as a failed record.
Three executors compute tasks, all yielding records as they finish:

- ``sequential`` (``--workers 1``, the default): in this process, one after the other, log lines as they come;
  with ``--batch-seeds`` the seeds of a trained model are trained together in one batch (``train_batch``),
  then attacked and saved one by one;
- ``pool`` (``--workers N``): a ``concurrent.futures.ProcessPoolExecutor`` with the spawn context;
- ``ray`` (``--executor ray``): one Ray task per run, on the cluster at ``--ray-address`` or a local Ray.

Only this process writes: ``run_sweep`` saves each record (arrays, rows, then the completion marker), and
rebuilds the tables from every finished run in the spec's order, so the result directory is the same
whatever the executor and whatever order the runs finish in. ``--resume`` reads the finished runs back
from their files and computes only the others.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import torch

from marginbench.bench.measure import EXAMPLE_COLUMNS, summarize
from marginbench.bench.registry import DATASETS, TRAINING_PLANS, BuiltModel, check_names, train_models
from marginbench.bench.runner import Log, environment, execute_run, one_line, resolve_device
from marginbench.bench.spec import ExperimentSpec, RunSpec, SpecError, spec_from_dict
from marginbench.bench.store import ResultStore
from marginbench.models.datasets import Dataset

EXECUTORS: tuple[str, ...] = ("local", "ray")
STATUS_COLUMNS = ["run_status", "attack_status", "error"]  # last columns of summary.csv
RAY_INSTALL = "pip install 'marginbench[ray]' (or: pip install ray)"


class SweepAborted(RuntimeError):
    """The executor itself broke (a worker process died, the Ray cluster went away); finished runs are saved."""


@dataclass(frozen=True, kw_only=True)
class ExecutorSpec:
    """Where runs are computed.

    Attributes:
        kind: "local" (this machine: in this process, or a process pool when workers > 1) or "ray".
        workers: local: number of worker processes (1 = in this process); ray: most runs in flight at once
            (None: as many as the cluster schedules) and, for a local Ray, the CPUs it may use.
        ray_address: the cluster to join (e.g. "auto" or "ray://head:10001"); None starts a local Ray.
    """

    kind: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    batch_seeds: bool = False  # sequential only: train the seeds of one model and setting in one batch

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise SpecError(f"unknown executor {self.kind!r}; choose one of: {', '.join(EXECUTORS)}")
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            raise SpecError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.ray_address is not None and self.kind != "ray":
            raise SpecError("--ray-address applies to --executor ray only")
        if self.batch_seeds and (self.kind != "local" or (self.workers or 1) > 1):
            raise SpecError("--batch-seeds applies to runs in this process only (--executor local, --workers 1)")


@dataclass(frozen=True, kw_only=True)
class RunTask:
    """One run to compute, as a worker receives it."""

    index: int  # position in the spec's runs (the order of every table)
    total: int
    run: RunSpec
    attacks: tuple[str, ...]
    device: str
    progress: bool  # tqdm bars (in this process only)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What one run returns: its rows and facts (``record``, saved as run.json) and its arrays.

    ``arrays`` maps each of model.pt, data.npz, perturbations.npz to numpy arrays; it is empty where the
    run failed before it had a model.
    """

    index: int
    run_id: str
    examples: pd.DataFrame
    record: dict[str, Any]
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.record["run_row"]["run_status"] != "ok"


def compute_run(task: RunTask, echo: Log | None = None, prebuilt: tuple[Dataset, BuiltModel, float] | None = None) -> RunRecord:
    """Compute one run; any exception, and NaN/inf in training, make a failed record instead of raising.

    Log lines travel in the record; ``echo`` (in this process only) also receives them as they come.
    ``prebuilt``: the run's data and trained model, where its seeds were trained in one batch.
    """
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if echo is not None:
            echo(line)

    run = task.run
    log(f"[{task.index + 1}/{task.total}] {run.run_id}")
    keys = {"family": run.family, "dataset": run.dataset, "model": run.model, "seed": run.seed}
    start = time.perf_counter()
    try:
        outcome = execute_run(run, task.attacks, resolve_device(task.device), progress=task.progress, log=log, prebuilt=prebuilt)
    except Exception as err:  # a failed run is recorded and the sweep goes on
        error = one_line(err)
        log(f"  failed: {error}")
        run_row = {"run_id": run.run_id, "d": run.d, "n": run.n, "width": run.width, "run_status": "failed", "run_error": error}
        attack_rows = [{"run_id": run.run_id, "attack": name, "attack_status": "not run", "attack_error": ""} for name in task.attacks]
        manifest_entry = {"wall_seconds": time.perf_counter() - start, "run_status": "failed", "error": error}
        record = {"keys": keys, "run_row": run_row, "attack_rows": attack_rows, "manifest": manifest_entry, "log": lines}
        return RunRecord(index=task.index, run_id=run.run_id, examples=pd.DataFrame(columns=EXAMPLE_COLUMNS), record=record)

    status, error = "ok", ""
    train = outcome.manifest_entry.get("train")
    if train is not None and train.get("stop_reason") == "nonfinite":
        status = "failed"
        error = f"training hit NaN/inf at iteration {train.get('nonfinite_iteration')}; rows are for the last finite parameters"
        log(f"  failed: {error}")
    run_row = {**outcome.run_row, "run_status": status, "run_error": error}
    manifest_entry = {**outcome.manifest_entry, "wall_seconds": time.perf_counter() - start, "run_status": status, "error": error}
    record = {"keys": keys, "run_row": run_row, "attack_rows": outcome.attack_rows, "manifest": manifest_entry, "log": lines}
    arrays = {
        "model.pt": {key: value.detach().cpu().numpy() for key, value in outcome.state.items()},
        "data.npz": dict(outcome.data),
        "perturbations.npz": dict(outcome.perturbations),
    }
    return RunRecord(index=task.index, run_id=run.run_id, examples=outcome.examples, record=record, arrays=arrays)


class SequentialExecutor:
    """In this process, in order: today's behaviour, progress bars and log lines as they come.

    With ``batch_seeds``, the runs that differ only in their seed (one trained model of one experiment) are
    trained together first, then attacked one by one. At one torch thread each net has the bits of its own run
    (tests/test_train.py); with more, MKL may split a lone net's small products across threads and round
    differently from the batched products, so the numbers agree to the baselines' tolerance, not bitwise.
    """

    live = True

    def __init__(self, log: Log, batch_seeds: bool = False) -> None:
        self.log = log
        self.batch_seeds = batch_seeds

    def __enter__(self) -> SequentialExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def run(self, tasks: Sequence[RunTask]) -> Iterator[RunRecord]:
        for group in seed_groups(tasks) if self.batch_seeds else [[task] for task in tasks]:
            prebuilt = self._train_together(group) if len(group) > 1 else [None] * len(group)
            for task, built in zip(group, prebuilt, strict=True):
                yield compute_run(task, echo=self.log, prebuilt=built)

    def _train_together(self, group: Sequence[RunTask]) -> list[tuple[Dataset, BuiltModel, float] | None]:
        """Data and trained model of each run of ``group``, trained in one batch; Nones (each run then trains
        alone, and records its own failure) where that fails."""
        runs = [task.run for task in group]
        self.log(f"training {len(runs)} seeds of {runs[0].model} in one batch: {', '.join(str(run.seed) for run in runs)}")
        try:
            device = resolve_device(group[0].device)
            data, data_seconds = [], []
            for run in runs:
                start = time.perf_counter()
                data.append(DATASETS.get(run.dataset)(run).to(device))
                data_seconds.append(time.perf_counter() - start)
            built = train_models(data, runs, group[0].progress)
        except Exception as err:  # each run then trains alone and records its own failure
            self.log(f"  batched training failed ({one_line(err)}); training the seeds one by one")
            return [None] * len(group)
        return list(zip(data, built, data_seconds, strict=True))


def seed_groups(tasks: Sequence[RunTask]) -> list[list[RunTask]]:
    """The tasks in runs of consecutive tasks that differ only in their seed and are of a trained model.

    ``ExperimentSpec.runs`` lists a model's seeds one after the other, so the order of the tasks is kept.
    """
    groups: list[list[RunTask]] = []
    for task in tasks:
        key = (dataclasses.replace(task.run, seed=0), task.attacks, task.device)
        last = groups[-1][-1] if groups else None
        if last is not None and task.run.model in TRAINING_PLANS and (dataclasses.replace(last.run, seed=0), last.attacks, last.device) == key:
            groups[-1].append(task)
        else:
            groups.append([task])
    return groups


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


class PoolExecutor:
    """A process pool (spawn context: safe with torch and CUDA); each worker computes whole runs."""

    live = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> PoolExecutor:
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=get_context("spawn"), initializer=_limit_threads, initargs=(self.threads,)
        )
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=err is None, cancel_futures=True)

    def run(self, tasks: Sequence[RunTask]) -> Iterator[RunRecord]:
        assert self._pool is not None, "use the executor in a with block"
        pending: set[Future[RunRecord]] = {self._pool.submit(compute_run, task) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    yield future.result()
                except BrokenProcessPool as err:
                    raise SweepAborted(f"a worker process died ({one_line(err)})") from None


class RayExecutor:
    """One Ray task per run on an existing cluster (``address``) or a local Ray started for this sweep."""

    live = False

    def __init__(self, address: str | None, workers: int | None) -> None:
        self.address = address
        self.workers = workers
        self._started = False

    def __enter__(self) -> RayExecutor:
        ray = import_ray()
        if not ray.is_initialized():
            local = {"num_cpus": self.workers, "include_dashboard": False} if self.address is None else {}
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING, **local)
            except Exception as err:  # ray raises ConnectionError, ValueError, RuntimeError...
                raise SpecError(f"cannot start or join Ray (--ray-address {self.address or 'local'}): {one_line(err)}") from None
            self._started = True
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._started:
            import_ray().shutdown()

    def run(self, tasks: Sequence[RunTask]) -> Iterator[RunRecord]:
        ray = import_ray()
        remote = ray.remote(num_cpus=1, max_retries=0)(compute_run)
        waiting = list(tasks)
        in_flight: list[Any] = []
        limit = self.workers or len(waiting)
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                in_flight.append(remote.remote(waiting.pop(0)))
            done, in_flight = ray.wait(in_flight, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as err:
                raise SweepAborted(f"a Ray task failed ({one_line(err).splitlines()[0][:300]})") from None


def import_ray() -> Any:
    """The ray module, or SpecError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SpecError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def make_executor(spec: ExecutorSpec, log: Log) -> SequentialExecutor | PoolExecutor | RayExecutor:
    """The executor for ``spec``; ``log`` receives the log lines of runs computed in this process as they come."""
    if spec.kind == "ray":
        return RayExecutor(spec.ray_address, spec.workers)
    if (spec.workers or 1) > 1:
        return PoolExecutor(spec.workers or 1)
    return SequentialExecutor(log, batch_seeds=spec.batch_seeds)


def check_spec(spec: ExperimentSpec) -> torch.device:
    """Everything about ``spec`` that can be checked before any work: names, device, the data themselves.

    Builds each run's dataset once on the CPU (the Dataset class rejects NaN/inf and labels outside
    {-1, +1}) and turns what it raises into a one-line SpecError.
    """
    check_names(spec)
    device = resolve_device(spec.device)
    seen: set[int] = set()
    for run in spec.runs():
        if run.seed in seen:
            continue
        seen.add(run.seed)
        try:
            DATASETS.get(run.dataset)(run)
        except (ValueError, MemoryError) as err:
            raise SpecError(f"dataset {run.dataset!r} (d={run.d}, n={run.n}, seed {run.seed}): {one_line(err)}") from None
    return device


def sweep_tables(records: Sequence[RunRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(examples, summary) of finished runs, in the order of their index; status columns last in summary.

    A run that failed before it had rows gets one summary row per attack, its statistics empty.
    """
    records = sorted(records, key=lambda r: r.index)
    frames = [r.examples for r in records if not r.examples.empty]
    examples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EXAMPLE_COLUMNS)
    with_rows = [r for r in records if not r.examples.empty]
    parts = []
    if with_rows:
        run_rows = pd.DataFrame([r.record["run_row"] for r in with_rows])
        attack_rows = pd.DataFrame([row for r in with_rows for row in r.record["attack_rows"]])
        parts.append(summarize(examples, run_rows, attack_rows))
    for r in records:
        if r.examples.empty:
            rows = pd.DataFrame(r.record["attack_rows"]).merge(pd.DataFrame([r.record["run_row"]]), on="run_id")
            parts.append(rows.assign(**r.record["keys"], n_attacked=0))
    if not parts:
        return examples, pd.DataFrame(columns=["run_id", "attack", *STATUS_COLUMNS])
    summary = pd.concat(parts, ignore_index=True)
    order = {r.run_id: r.index for r in records}
    summary = summary.iloc[summary["run_id"].map(order).argsort(kind="stable")].reset_index(drop=True)
    run_error = summary["run_error"].fillna("").astype(str)
    summary["error"] = run_error.where(run_error != "", summary["attack_error"].fillna("").astype(str))
    summary = summary.drop(columns=["run_error", "attack_error"])
    return examples, summary[[c for c in summary.columns if c not in STATUS_COLUMNS] + STATUS_COLUMNS]


def _save(store: ResultStore, record: RunRecord) -> RunRecord:
    """Write a record's files (arrays, rows, marker last) and return it as read back from them."""
    store.forget_run(record.run_id)
    if record.arrays:
        state = {key: torch.from_numpy(value.copy()) for key, value in record.arrays["model.pt"].items()}  # Ray's are read-only
        store.write_run(record.run_id, state=state, data=record.arrays["data.npz"], perturbations=record.arrays["perturbations.npz"])
    store.write_rows(record.run_id, examples=record.examples, record=record.record)
    return _read_back(store, record.index, record.run_id)


def _read_back(store: ResultStore, index: int, run_id: str) -> RunRecord:
    rows = store.finished_rows(run_id)
    if rows is None:
        raise OSError(f"the files of run {run_id} in {store.root} do not match its completion marker")
    examples, record = rows
    return RunRecord(index=index, run_id=run_id, examples=examples, record=record)


def run_sweep(
    specs: ExperimentSpec | Sequence[ExperimentSpec],
    out: Path | str,
    *,
    preset: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    executor: ExecutorSpec = ExecutorSpec(),
    progress: bool = False,
    log: Log = lambda line: print(line, file=sys.stderr, flush=True),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every (model, seed) of each spec with its attacks on ``executor``; write DIR; return (examples, summary).

    Everything the user can get wrong is checked before any work. With ``resume``, DIR must hold the
    manifest of this very sweep: its finished runs are read back from their files and only the others run.
    """
    sweep = (specs,) if isinstance(specs, ExperimentSpec) else tuple(specs)
    devices = sorted({str(check_spec(spec)) for spec in sweep})
    planned = [(run, spec.attack_names) for spec in sweep for run in spec.runs()]
    runs = [run for run, _ in planned]
    if len({run.run_id for run in runs}) != len(runs):
        raise SpecError("the sweep holds the same run twice; give each setting once")
    if executor.kind == "ray":
        import_ray()
    store = ResultStore.reopen(out) if resume else ResultStore.open(out, overwrite=overwrite)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    session = {"command": sys.argv, "execution": dataclasses.asdict(executor), **environment()}
    if resume:
        # The first session's provenance stays on top; each resume adds its own (code may have changed since).
        manifest = store.read_manifest()
        if tuple(spec_from_dict(stored) for stored in manifest["specs"]) != sweep:
            raise SpecError(f"--resume {out}: the spec differs from the one in its manifest.json")
        manifest["resumed"] = [*manifest.get("resumed", []), {"started": now, **session}]
    else:
        manifest = {
            "preset": preset,
            "specs": [dataclasses.asdict(spec) for spec in sweep],
            "seeds": sorted({seed for spec in sweep for seed in spec.seeds}),
            "device": ", ".join(devices),
            "started": now,
            **session,
        }
    manifest["status"] = "running"

    finished: dict[int, RunRecord] = {}
    if resume:
        for index, run in enumerate(runs):
            if store.finished_rows(run.run_id) is not None:
                finished[index] = _read_back(store, index, run.run_id)
        log(f"resuming {out}: {len(finished)} of {len(runs)} runs finished, {len(runs) - len(finished)} to run")
    tasks = [
        RunTask(index=i, total=len(runs), run=run, attacks=attacks, device=run.device, progress=progress)
        for i, (run, attacks) in enumerate(planned)
        if i not in finished
    ]

    def write_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
        examples, summary = sweep_tables(list(finished.values()))
        store.write_tables(examples=examples, summary=summary)
        manifest["runs"] = {r.run_id: r.record["manifest"] for r in sorted(finished.values(), key=lambda r: r.index)}
        store.write_manifest(manifest)
        return examples, summary

    with make_executor(executor, log) as pool:
        write_tables()
        try:
            for record in pool.run(tasks):
                if not pool.live:
                    for line in record.record["log"]:
                        log(line)
                finished[record.index] = _save(store, record)
                write_tables()
        except SweepAborted as err:
            raise SweepAborted(f"{err}; {len(finished)} of {len(runs)} runs are saved; finish with: marginbench run --resume {out}") from None
    failed = sum(r.failed for r in finished.values())
    manifest.update(status="complete", finished=datetime.now(UTC).isoformat(timespec="seconds"), failed_runs=failed)
    examples, summary = write_tables()
    if failed:
        log(f"{failed} of {len(runs)} runs failed: see the run_status and error columns of {Path(out) / 'summary.csv'}")
    return examples, summary
