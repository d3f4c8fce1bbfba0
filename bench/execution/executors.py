"""Executors: where the runs of a sweep are computed; each yields ``RunRecord``s as runs finish.

- ``SequentialExecutor`` (``--workers 1``, the default): in this process, one after the other, log lines as
  they come; with ``--batch-seeds`` the seeds of a trained model are trained together in one batch
  (``train_batch``), then attacked and saved one by one;
- ``PoolExecutor`` (``--workers N``): a ``concurrent.futures.ProcessPoolExecutor`` with the spawn context;
- ``RayExecutor`` (``--executor ray``): one Ray task per run, on the cluster at ``--ray-address`` or a local Ray.

Only the sweep (``marginbench.bench.execution.sweep``) writes the result directory, whatever the executor.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from types import TracebackType
from typing import Any

import torch

from marginbench.bench.errors import SpecError
from marginbench.bench.execution.estimate import run_threads
from marginbench.bench.execution.runner import Log, Prebuilt, RunTask, compute_run, make_data, one_line
from marginbench.bench.experiment.recipes import RunContext, train_plans
from marginbench.bench.performance.threads import pool_share, using
from marginbench.bench.registry.registries import TRAINING_PLANS
from marginbench.bench.results.record import RunRecord

EXECUTORS: tuple[str, ...] = ("local", "ray")
RAY_INSTALL = "pip install 'marginbench[ray]' (or: pip install ray)"
ERROR_CHARS = 300  # a Ray task's error is cut to this many characters in the one-line message


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
        batch_seeds: sequential only: train the seeds of one model and setting in one batch.
        gpus_per_run: ray only: the GPUs each run asks Ray for (a fraction packs several runs on one GPU);
            None: 1 for runs on cuda, 0 for runs on the CPU.
        threads: torch's intra-op threads for every run's training and attacks; None: OMP_NUM_THREADS if
            set, else bench/performance/threads.py's rule (one thread for small nets, the process's share of the cores above).
    """

    kind: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    batch_seeds: bool = False
    gpus_per_run: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise SpecError(f"threads must be a positive integer, got {self.threads!r}", cli=f"--threads must be a positive integer, got {self.threads!r}")
        if self.kind not in EXECUTORS:
            raise SpecError(f"unknown executor {self.kind!r}; choose one of: {', '.join(EXECUTORS)}")
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            raise SpecError(f"workers must be a positive integer, got {self.workers!r}", cli=f"--workers must be a positive integer, got {self.workers!r}")
        if self.ray_address is not None and self.kind != "ray":
            raise SpecError("a ray_address applies to the ray executor only", cli="--ray-address applies to --executor ray only")
        if self.gpus_per_run is not None:
            if self.kind != "ray":
                raise SpecError("gpus_per_run applies to the ray executor only", cli="--gpus-per-run applies to --executor ray only")
            g = self.gpus_per_run
            if not (math.isfinite(g) and g > 0 and (g < 1 or g == int(g))):
                raise SpecError(
                    f"gpus_per_run must be a fraction below 1 or a whole number of GPUs, got {g}",
                    cli=f"--gpus-per-run must be a fraction below 1 (e.g. 0.25) or a whole number, got {g}",
                )
        if self.batch_seeds and (self.kind != "local" or (self.workers or 1) > 1):
            raise SpecError(
                "batch_seeds applies to runs in this process only (local, one worker)",
                cli="--batch-seeds applies to runs in this process only (--executor local, --workers 1)",
            )


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
            prebuilt: Sequence[Prebuilt | None] = self._train_together(group) if len(group) > 1 else [None]
            for task, built in zip(group, prebuilt, strict=True):
                yield compute_run(task, echo=self.log, prebuilt=built)

    def _train_together(self, group: Sequence[RunTask]) -> Sequence[Prebuilt | None]:
        """Data and trained model of each run of ``group``, trained in one batch; Nones (each run then trains
        alone, and records its own failure) where that fails."""
        runs = [task.run for task in group]
        self.log(f"training {len(runs)} seeds of {runs[0].model} in one batch: {', '.join(str(run.seed) for run in runs)}")
        try:
            made = [make_data(run, group[0].device) for run in runs]
            data = [d for d, _ in made]
            plans = [TRAINING_PLANS.get(run.model)(d, run) for d, run in zip(data, runs, strict=True)]
            context = RunContext(run=runs[0], device=group[0].device, progress=group[0].progress)
            threads = run_threads(runs[0], group[0].threads, seeds=len(runs))
            self.log(f"  torch threads: {threads.count} ({threads.why})")
            with using(threads):
                built = train_plans(data, runs, plans, context)
        except Exception as err:  # each run then trains alone and records its own failure
            self.log(f"  batched training failed ({one_line(err)}); training the seeds one by one")
            return [None] * len(group)
        return [Prebuilt(data=d, built=b, data_seconds=s) for (d, s), b in zip(made, built, strict=True)]


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


def _start_worker(threads: int, parent: int) -> None:
    """A pool worker's setup: its share of the threads (the most bench/performance/threads.py's rule gives a
    run), and an exit as soon as the parent process is gone."""
    torch.set_num_threads(threads)
    _exit_with_parent(parent)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent: int) -> None:
    """Make this process end when ``parent`` dies (a SIGKILLed sweep must not leave its workers running).

    On Linux the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG); everywhere a daemon
    thread also checks once a second whether the process has been re-parented.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:  # it died before the watch began
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class PoolExecutor:
    """A process pool (spawn context: safe with torch and CUDA); each worker computes whole runs."""

    live = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = pool_share(workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> PoolExecutor:
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(self.threads, os.getpid())
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

    def __init__(self, address: str | None, workers: int | None, gpus_per_run: float | None = None) -> None:
        self.address = address
        self.workers = workers
        self.gpus_per_run = gpus_per_run
        self._started = False

    def gpus(self, task: RunTask) -> float:
        """The GPUs ``task`` asks Ray for: --gpus-per-run, else one for a run on cuda and none on the CPU."""
        if self.gpus_per_run is not None:
            return self.gpus_per_run
        return 1.0 if task.device.type == "cuda" else 0.0

    def __enter__(self) -> RayExecutor:
        ray = import_ray()
        if not ray.is_initialized():
            local = {"num_cpus": self.workers, "include_dashboard": False} if self.address is None else {}
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING, **local)
            except Exception as err:  # ray raises ConnectionError, ValueError, RuntimeError...
                where = self.address or "local"
                raise SpecError(
                    f"cannot start or join Ray ({where}): {one_line(err)}", cli=f"cannot start or join Ray (--ray-address {where}): {one_line(err)}"
                ) from None
            self._started = True
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._started:
            import_ray().shutdown()

    def run(self, tasks: Sequence[RunTask]) -> Iterator[RunRecord]:
        ray = import_ray()
        remote = ray.remote(num_cpus=1, max_retries=0)(compute_on_ray)
        waiting = list(tasks)
        in_flight: list[Any] = []
        limit = self.workers or len(waiting)
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                task = waiting.pop(0)
                in_flight.append(remote.options(num_gpus=self.gpus(task)).remote(task))
            done, in_flight = ray.wait(in_flight, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as err:
                raise SweepAborted(f"a Ray task failed ({one_line(err).splitlines()[0][:ERROR_CHARS]})") from None


RAY_CONNECT_SECONDS = 10.0


def check_ray_address(address: str | None) -> None:
    """SpecError, at once, for a Ray address whose host does not resolve or whose port does not answer:
    ``ray.init`` itself retries such an address for minutes. ``auto``, ``local`` and None are Ray's to find."""
    if address is None or address in ("auto", "local"):
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    problem = None
    if not host or not port.isdigit():
        problem = "give it as HOST:PORT, ray://HOST:PORT, auto or local"
    else:
        try:
            socket.create_connection((host, int(port)), timeout=RAY_CONNECT_SECONDS).close()
        except socket.gaierror:
            problem = f"unknown host {host!r}"
        except OSError as err:
            problem = f"nothing answers there ({err.strerror or type(err).__name__})"
    if problem is not None:
        raise SpecError(f"cannot join Ray at {address}: {problem}", cli=f"--ray-address {address}: cannot join Ray there: {problem}")


def compute_on_ray(task: RunTask) -> RunRecord:
    """``compute_run`` in a Ray worker; the run's manifest entry records the GPU ids Ray gave it (Ray sets
    CUDA_VISIBLE_DEVICES to them, so torch's cuda device is the run's own GPU)."""
    record = compute_run(task)
    return dataclasses.replace(record, manifest={**record.manifest, "ray_gpu_ids": [str(i) for i in import_ray().get_gpu_ids()]})


def import_ray() -> Any:
    """The ray module, or SpecError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SpecError(
            f"the ray executor needs Ray, which is not installed: {RAY_INSTALL}", cli=f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}"
        ) from None
    return ray


def make_executor(spec: ExecutorSpec, log: Log) -> SequentialExecutor | PoolExecutor | RayExecutor:
    """The executor for ``spec``; ``log`` receives the log lines of runs computed in this process as they come."""
    if spec.kind == "ray":
        return RayExecutor(spec.ray_address, spec.workers, spec.gpus_per_run)
    if (spec.workers or 1) > 1:
        return PoolExecutor(spec.workers or 1)
    return SequentialExecutor(log, batch_seeds=spec.batch_seeds)
