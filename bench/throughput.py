"""Throughput of the training and attack kernels, as ratios against yardsticks measured in the same run.

Yardsticks: the machine's matmul rate at the kernel's shapes (``X @ W.T`` with X: (n, d), W: (width, d)), and
for training, the plain-PyTorch recipe (``nn.Linear`` layers, autograd, the same exponential loss and step).
Timings warm up first, synchronize the device on both sides, and take the median of repeats. The batched
training records time one step of SEEDS nets trained together (``train_batch``) against the same nets trained
one after the other; their seconds are per step of all SEEDS nets, their gflops count all of them.

Each record: kernel, shape, seconds (per call), gflops (where a FLOP count is defined), fraction_of_matmul
(gflops over the matmul rate at the same shape and dtype), examples_per_s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from marginbench.attacks.closed_form import UniversalZ
from marginbench.attacks.pgd import MinimalPGD
from marginbench.models.datasets import sphere
from marginbench.models.train import TrainSpec, train, train_batch
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

# (d, n, width): small shapes for a quick look, and the papers' shapes where memory allows (Vardi et al.:
# d up to 1000, width 1000; n = d).
SHAPES = {"small": ((64, 64, 256),), "paper": ((64, 64, 256), (1000, 1000, 1000))}
TRAIN_STEPS = 20  # iterations per timed training call
SEEDS = 5  # nets trained at once in the batched records: the papers' seed count


@dataclass(frozen=True, kw_only=True)
class Record:
    """One kernel's measured speed at one shape."""

    kernel: str
    shape: str
    seconds: float  # median wall time of one call
    gflops: float | None  # 1e-9 * FLOPs per call / seconds, where a FLOP count is defined
    fraction_of_matmul: float | None  # gflops / the matmul rate at the same shape and dtype
    examples_per_s: float


def timed(fn: Callable[[], Any], device: torch.device, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, synchronizing on CUDA."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def matmul_gflops(n: int, d: int, width: int, device: torch.device, dtype: torch.dtype) -> float:
    """The yardstick: GFLOP/s of X @ W.T for X: (n, d), W: (width, d), the training step's main product."""
    X = torch.randn(n, d, device=device, dtype=dtype)
    W = torch.randn(width, d, device=device, dtype=dtype)
    reps = max(1, int(2e8 // (2 * n * d * width)))  # about 0.2 GFLOP per timed call

    def run() -> None:
        for _ in range(reps):
            X @ W.T

    return 2e-9 * n * d * width * reps / timed(run, device)


def autograd_steps(net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """The plain-PyTorch recipe: nn.Linear layers, autograd, exp loss summed, SGD with the paper's first lr."""
    first = torch.nn.Linear(net.d, net.width, dtype=X.dtype, device=X.device)
    second = torch.nn.Linear(net.width, 1, bias=False, dtype=X.dtype, device=X.device)
    with torch.no_grad():
        first.weight.copy_(net.W), first.bias.copy_(net.b), second.weight.copy_(net.v[None, :])
    params = [first.weight, first.bias, second.weight]
    optimizer = torch.optim.SGD(params, lr=1e-5)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.exp(-y * second(torch.relu(first(X))).squeeze(1)).sum()
        loss.backward()
        optimizer.step()


def sequential_steps(nets: list[TwoLayerNet], X: torch.Tensor, y: torch.Tensor, spec: TrainSpec) -> None:
    """The S nets of a batch trained one after the other: X: (S, n, d), y: (S, n)."""
    for net, X_s, y_s in zip(nets, X, y, strict=True):
        train(net, X_s, y_s, spec)


def measure(*, device: torch.device, sizes: str = "small") -> list[Record]:
    """Every kernel at every shape of ``sizes`` ("small" or "paper") on ``device``."""
    records: list[Record] = []
    for d, n, width in SHAPES[sizes]:
        shape = f"d={d} n={n} width={width}"
        data = sphere(d=d, n=n, seed=0).to(device)
        init = pytorch_default_init(d, width, generator=torch.Generator().manual_seed(0)).to(device)
        for dtype in (torch.float64, torch.float32):
            tag = "fp64" if dtype == torch.float64 else "fp32"
            X, y, net = data.X.to(dtype), data.y.to(dtype), init.to(device, dtype)
            rate = matmul_gflops(n, d, width, device, dtype)
            seconds = 2e-9 * n * d * width / rate
            records.append(Record(kernel=f"matmul-{tag}", shape=shape, seconds=seconds, gflops=rate, fraction_of_matmul=1.0, examples_per_s=n / seconds))
            flops = 4.0 * n * d * width  # per step: forward X W^T and backward A^T X
            spec = TrainSpec(max_iters=TRAIN_STEPS, target_loss=None)
            for kernel, fn in (
                (f"train-step-{tag}", partial(train, net, X, y, spec)),
                (f"autograd-step-{tag}", partial(autograd_steps, net, X, y, TRAIN_STEPS)),
            ):
                seconds = timed(fn, device) / TRAIN_STEPS
                gflops = 1e-9 * flops / seconds
                records.append(Record(kernel=kernel, shape=shape, seconds=seconds, gflops=gflops, fraction_of_matmul=gflops / rate, examples_per_s=n / seconds))
            # SEEDS nets (one per seed, each on its own data) per step: batched, and one after the other.
            nets = [init.to(device, dtype)] + [
                pytorch_default_init(d, width, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device) for seed in range(1, SEEDS)
            ]
            Xs = torch.stack([X] + [sphere(d=d, n=n, seed=seed).X.to(device, dtype) for seed in range(1, SEEDS)])
            ys = torch.stack([y] + [sphere(d=d, n=n, seed=seed).y.to(device, dtype) for seed in range(1, SEEDS)])
            for kernel, fn in (
                (f"train-batch-{SEEDS}seeds-{tag}", partial(train_batch, nets, Xs, ys, spec)),
                (f"train-sequential-{SEEDS}seeds-{tag}", partial(sequential_steps, nets, Xs, ys, spec)),
            ):
                seconds = timed(fn, device) / TRAIN_STEPS  # one step of all SEEDS nets
                gflops = 1e-9 * SEEDS * flops / seconds
                records.append(Record(kernel=kernel, shape=shape, seconds=seconds, gflops=gflops, fraction_of_matmul=gflops / rate, examples_per_s=SEEDS * n / seconds))
        net, X, y = init.to(device), data.X, data.y
        for kernel, attack in (("line-search (universal-z)", UniversalZ()), ("pgd (minimal-norm, bisection)", MinimalPGD())):
            seconds = timed(partial(attack, net, X, y), device, repeats=3)
            records.append(Record(kernel=kernel, shape=shape, seconds=seconds, gflops=None, fraction_of_matmul=None, examples_per_s=n / seconds))
    return records


def as_rows(records: list[Record]) -> list[dict[str, Any]]:
    """The records as plain dicts (the json format)."""
    return [asdict(r) for r in records]
