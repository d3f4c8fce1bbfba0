"""The measurement behind ``marginbench.bench.performance.threads``' rule: the training step at 1 and 2 torch threads, on an
otherwise idle machine and next to one busy process (``python -c "while True: pass"``), over a range of shapes.

    env -u OMP_NUM_THREADS python benchmarks/thread_table.py [--rounds 5]
    env -u OMP_NUM_THREADS taskset -c 0,1 python benchmarks/thread_table.py   # 2 cores of a larger idle machine
                                                                              # (the busy process inherits them)

Rounds interleave every variant (idle/busy x 1/2 threads), so that a change of load on a shared machine
reaches all of them; each cell is the median over rounds of the seconds per step. Prints a GitHub table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from marginbench.models.datasets import sphere
from marginbench.models.train import TrainSpec, train
from marginbench.models.two_layer import pytorch_default_init

# (d, n, width, dtype): the default run (d = n = 64, width 256, float64) up to the medium presets
# (width 1000, d <= 300, n = d^alpha up to 300^1.5 = 5196, float32).
SHAPES = (
    (64, 64, 256, torch.float64),
    (64, 64, 256, torch.float32),
    (100, 100, 1000, torch.float32),
    (100, 100, 1000, torch.float64),
    (200, 200, 1000, torch.float32),
    (300, 300, 1000, torch.float32),
    (300, 1000, 1000, torch.float32),
    (300, 5196, 1000, torch.float32),
)
SECONDS_PER_SAMPLE = 0.3  # iterations per timed call are sized to about this on one idle thread


def busy() -> subprocess.Popen[bytes]:
    """One competing process spinning on a core."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def step_seconds(d: int, n: int, width: int, dtype: torch.dtype, threads: int, iters: int) -> float:
    data = sphere(d=d, n=n, seed=0)
    net = pytorch_default_init(d, width, generator=torch.Generator().manual_seed(0)).to(torch.device("cpu"), dtype)
    X, y = data.X.to(dtype), data.y.to(dtype)
    spec = TrainSpec(max_iters=iters, target_loss=None)
    torch.set_num_threads(threads)
    train(net, X, y, TrainSpec(max_iters=2, target_loss=None))  # warm up at this thread count
    start = time.perf_counter()
    train(net, X, y, spec)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads by default, {args.rounds} rounds", flush=True)
    print("| d | n | width | dtype | GFLOP/step | idle 1 thr (ms) | idle 2 thr (ms) | busy 1 thr (ms) | busy 2 thr (ms) | busy 2 / busy 1 | busy 1 / idle 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d, n, width, dtype in SHAPES:
        probe = step_seconds(d, n, width, dtype, 1, 3)
        iters = max(3, int(SECONDS_PER_SAMPLE / probe))
        samples: dict[tuple[bool, int], list[float]] = {(b, t): [] for b in (False, True) for t in (1, 2)}
        for _ in range(args.rounds):
            for loaded in (False, True):
                competitor = busy() if loaded else None
                try:
                    if competitor is not None:
                        time.sleep(0.2)  # let it reach its core
                    for threads in (1, 2):
                        samples[(loaded, threads)].append(step_seconds(d, n, width, dtype, threads, iters))
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
        ms = {key: 1e3 * statistics.median(values) for key, values in samples.items()}
        tag = str(dtype).removeprefix("torch.")
        print(
            f"| {d} | {n} | {width} | {tag} | {4e-9 * n * d * width:.3g} | {ms[(False, 1)]:.3g} | {ms[(False, 2)]:.3g} | "
            f"{ms[(True, 1)]:.3g} | {ms[(True, 2)]:.3g} | {ms[(True, 2)] / ms[(True, 1)]:.2f} | {ms[(True, 1)] / ms[(False, 1)]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
