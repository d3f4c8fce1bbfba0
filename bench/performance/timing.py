"""Wall-clock timing that counts queued GPU work: the one clock of the runner and the throughput records."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

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
