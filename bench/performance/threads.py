"""How many intra-op threads torch uses for a run's training and attacks: one rule, chosen from a measurement.

The user's choice first: ``--threads N``, else ``OMP_NUM_THREADS``. Otherwise one thread for a net whose
training step (4 n d width FLOPs) is below ``ONE_THREAD_BELOW_GFLOP``, and the process's share of the cores
above it: all of them in this process, cores // workers in a pool worker (``pool_share``, which the pool's
initializer gives torch, so that the share is what ``torch.get_num_threads()`` says when a run starts).

Why (benchmarks/thread_table.py; README "Threads"): next to one busy process, OpenMP's second thread
spin-waits on the busy core and a step takes far longer at 2 threads than at 1 at every size measured: 80x for
the default net (d = n = 64, width 256, 0.004 GFLOP per step), 5.6x at 1.2 GFLOP, 1.45x at 6.2 GFLOP (2 free
cores of an Intel Xeon model 207; 36x, 3.3x, 1.9x on the 2 shared cores of a Xeon model 167). On idle cores
the second thread saves nothing at 0.004 GFLOP and 1.3-1.9x from 0.04 GFLOP up. One thread loses at most
that 1.9x; two threads lose more than that below ~4 GFLOP, where their loss under contention exceeds their
gain when idle, hence the threshold.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

ONE_THREAD_BELOW_GFLOP = 4.0  # training step size below which a run gets one thread (measured: module doc)


@dataclass(frozen=True, kw_only=True)
class Threads:
    """The intra-op thread count chosen for a run, and why (recorded in the run's manifest entry)."""

    count: int
    why: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool_share(workers: int) -> int:
    """The threads of each of ``workers`` pool processes: an equal share of the cores, at least one."""
    return max(1, cores() // workers)


def user_threads(requested: int | None, environ: Mapping[str, str] = os.environ) -> Threads | None:
    """The user's choice: ``requested`` (--threads), else a positive OMP_NUM_THREADS; None when neither is set."""
    if requested is not None:
        return Threads(count=requested, why=f"--threads {requested}")
    value = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # "4,2" is OpenMP's nested form: the outer level
    if value.isdigit() and int(value) > 0:
        return Threads(count=int(value), why=f"OMP_NUM_THREADS={value}")
    return None


def choose_threads(step_gflop: float, *, requested: int | None = None, share: int | None = None, environ: Mapping[str, str] = os.environ) -> Threads:
    """The thread count for a run whose training step costs ``step_gflop`` GFLOP.

    Args:
        step_gflop: one full-batch training step's GFLOP (4e-9 n d width; a batch of S seeds: S times that).
        requested: --threads, if given: taken as is.
        share: the process's share of the cores (None: ``torch.get_num_threads()`` now, which is the cores,
            OMP_NUM_THREADS, or a pool worker's ``pool_share``).
        environ: where OMP_NUM_THREADS is read.
    """
    user = user_threads(requested, environ)
    if user is not None:
        return user
    share = share if share is not None else torch.get_num_threads()
    if step_gflop < ONE_THREAD_BELOW_GFLOP:
        return Threads(count=1, why=f"training step {step_gflop:.3g} GFLOP < {ONE_THREAD_BELOW_GFLOP:g}: one thread")
    return Threads(count=max(1, share), why=f"training step {step_gflop:.3g} GFLOP >= {ONE_THREAD_BELOW_GFLOP:g}: the process's share of the cores")


@contextmanager
def using(threads: Threads) -> Iterator[Threads]:
    """torch at ``threads.count`` intra-op threads inside the block, as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads.count)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
