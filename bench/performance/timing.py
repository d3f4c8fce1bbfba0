"""Wall-clock timing that counts queued GPU work: the one clock of the runner and the throughput records, and
the medians of repeated timings that benchmarks and yardsticks take."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def clocked(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """(fn(), its wall seconds), synchronizing on CUDA before and after so that queued kernels count."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def timed(fn: Callable[[], Any], device: torch.device, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, synchronizing on CUDA."""
    return timed_in_turn([fn], device, repeats=repeats, warmup=warmup)[0]


def timed_in_turn(fns: Sequence[Callable[[], Any]], device: torch.device, *, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Median seconds of each of ``fns``, called in turn (f1, f2, ..., f1, f2, ...) so that a change of load
    on a shared machine reaches all of them alike; ``warmup`` rounds first, synchronizing on CUDA."""

    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples, strict=True):
            times.append(clocked(fn, device)[1])
    return [statistics.median(times) for times in samples]
