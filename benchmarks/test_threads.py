"""pytest-benchmark: the thread rule's target (issue 24). The default run's net (d = n = 64, width 256, float64)
trains ITERATIONS steps at the thread count the rule gives it, on the machine as it is ("idle") and next to one
busy process (``python -c "while True: pass"``), in turn, ROUNDS times; extra_info holds both medians and their
ratio, which must be at most 2 where the machine was idle before (1-minute load average below 1; else the
ratio is recorded, target_checked false). The benchmarked number is the busy case.

    python -m pytest benchmarks/test_threads.py --benchmark-autosave

Measured: 1.16 on 2 cores of an idle Intel Xeon model 207 (taskset -c 0,1); 2.4 on the 2 cores of a Xeon
model 167 shared with five other jobs (load average 5), where "idle" already carries their load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from marginbench.bench.execution.estimate import run_threads
from marginbench.bench.performance.threads import using
from marginbench.bench.performance.timing import clocked
from marginbench.bench.registry.presets import PRESETS
from marginbench.models.datasets import sphere
from marginbench.models.train import TrainSpec, train
from marginbench.models.two_layer import pytorch_default_init

ITERATIONS = 2000
ROUNDS = 5
CPU = torch.device("cpu")


@contextmanager
def busy_process() -> Iterator[None]:
    """One process spinning on a core for the duration of the block."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines) if key.strip() in ("model name", "cpu family", "model")}
    return f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


def test_default_training_next_to_a_busy_process(benchmark) -> None:
    run = PRESETS.get("default").sweep("small")[0].runs()[0]
    data = sphere(d=run.d, n=run.n, seed=0)
    net = pytorch_default_init(run.d, run.width, generator=torch.Generator().manual_seed(0))
    spec = TrainSpec(max_iters=ITERATIONS, target_loss=None)

    def steps() -> None:
        train(net, data.X, data.y, spec)

    threads = run_threads(run, None)
    load = os.getloadavg()[0]
    with using(threads):
        steps()  # warm up
        idle, busy = [], []
        for _ in range(ROUNDS):
            idle.append(clocked(steps, CPU)[1])
            with busy_process():
                busy.append(clocked(steps, CPU)[1])
        ratio = statistics.median(busy) / statistics.median(idle)
        benchmark.extra_info.update(
            cpu=cpu_name(), threads=threads.count, threads_why=threads.why, iterations=ITERATIONS,
            idle_seconds=statistics.median(idle), busy_seconds=statistics.median(busy), busy_over_idle=ratio,
            load_average_before=load, target_checked=load < 1.0,
        )  # fmt: skip
        with busy_process():
            benchmark.pedantic(steps, rounds=3, warmup_rounds=1)
    if load < 1.0:  # the target is the idle machine's: a loaded one's "idle" time is not that
        assert ratio <= 2.0, f"{ITERATIONS} steps take {ratio:.2f}x as long next to one busy process ({threads.count} threads: {threads.why})"
