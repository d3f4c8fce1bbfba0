"""A wall-clock limit on a block of Python code in this process: the per-attack time limit (``--attack-timeout``).

Why an alarm signal: an attack is arbitrary Python (plugins included) running on tensors that live in this
process, so it cannot be moved to a child process cheaply, and a thread with a join timeout returns while the
stuck attack runs on (still holding the device and the CPU). SIGALRM interrupts even a blocked ``time.sleep``:
the handler raises ``AttackTimeout`` in the attack's own frame. Python runs signal handlers in the main thread
only, and that is where every executor runs an attack: the sequential executor in the main process, the process
pool and Ray in their workers' main threads. A handler runs between bytecodes, so C code that never returns
(one solver call without a time limit) is stopped only when it returns. ``AttackTimeout`` is a BaseException, so
an attack's ``except Exception`` does not swallow it; the alarm repeats every second until the block is left.
Elsewhere (another thread, no SIGALRM) nothing can interrupt the block: it is marked expired when it ends late.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


class AttackTimeout(BaseException):
    """Raised inside a block that ran past its time limit (a BaseException: ``except Exception`` lets it through)."""


@dataclass
class Limit:
    """The state of one ``time_limit`` block: its seconds, whether they ran out, and whether they could be enforced."""

    seconds: float
    enforced: bool
    expired: bool = False


@contextmanager
def time_limit(seconds: float) -> Iterator[Limit]:
    """Run the block for at most ``seconds`` of wall time: past it, ``AttackTimeout`` is raised in it (main thread)."""
    enforced = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    limit = Limit(seconds=seconds, enforced=enforced)
    start = time.perf_counter()
    if not enforced:
        yield limit
        limit.expired = time.perf_counter() - start > seconds
        return

    active = True

    def expire(signum: int, frame: FrameType | None) -> None:
        if active:
            limit.expired = True
            raise AttackTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # again every second, should the first be swallowed
    try:
        yield limit
    finally:
        while active:  # a repeat alarm may land here before the handler is off: then once more
            try:
                active = False
            except AttackTimeout:
                continue
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # an alarm someone else had set goes on, less the time spent here
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.perf_counter() - start), 1e-3))
