"""Throughput of the training and attack kernels, as ratios against yardsticks measured in the same run.

Yardsticks: the machine's matmul rate at the kernel's shapes (``X @ W.T`` with X: (n, d), W: (width, d)), and
for training, the plain-PyTorch recipe (``nn.Linear`` layers, autograd, the same exponential loss and step).
Timings warm up first, synchronize the device on both sides, and take the median of repeats. The batched
training records time one step of SEEDS nets trained together (``train_batch``) against the same nets trained
one after the other; their seconds are per step of all SEEDS nets, their gflops count all of them.

Precisions: the matmul yardstick and the training records come in every precision the device offers (float64,
float32; bf16 where it has bf16 matrix units; tf32 on CUDA: ``device_precisions``), each record naming its
``precision``; a training record's ``fraction_of_matmul_by_precision`` is its rate over each precision's matmul
rate at its shape (so a bf16 step can be read against the float32 yardstick too).

Each record: kernel, shape, seconds (per call), gflops (where a FLOP count is defined), fraction_of_matmul
(gflops over the matmul rate at the same shape and precision), examples_per_s; for the attacks also
median_norm_over_sqrt_d (of the verified answers, +inf where over half failed), and for the minimal-norm PGD
examples_per_s_over_fb_fmn: its examples per second over Foolbox FMN's on the same net and points, timed in
turn in the same loop so that a change of machine load reaches both (issue 6's yardstick: at least 3 at an
equal or smaller median norm). Foolbox is an optional extra: without it, the fb-fmn record and the ratio are
left out.

Time to the paper's stopping point (``--sizes paper``, issue 6's second target): the paper's recipe in plain
PyTorch (autograd, lr 1e-5 x1.1 every 100 iterations, float64) is trained until its loss is below 1e-30; its
normalized margin min_i q_i / ||theta||^2 there is the target that the analytic paper schedule and the
normalized schedule (fp64 and fp32) must reach. Those records carry the normalized margin reached, universal-z's
common c / sqrt(d) on the trained net, and speedup_over_recipe (the recipe's seconds over theirs). Each is one
timed run, not a median: the recipe alone takes about a minute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from marginbench.attacks.base import Attack, AttackUnavailable
from marginbench.attacks.closed_form import UniversalZ
from marginbench.attacks.foolbox_adapter import FbFMN
from marginbench.attacks.pgd import MinimalPGD
from marginbench.bench.performance.timing import clocked, timed, timed_in_turn
from marginbench.bench.performance.yardsticks import device_precisions, precision_gflops
from marginbench.checking.verify import verify
from marginbench.models.datasets import sphere
from marginbench.models.kernels import step_gflop
from marginbench.models.precision import Used, choose_precision, matmul_backend, matmul_dtype
from marginbench.models.reference import autograd_recipe, autograd_steps
from marginbench.models.train import TrainSpec, normalized_schedule, train, train_batch
from marginbench.models.train_spec import arc_schedule
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

# (d, n, width): small shapes for a quick look, and the papers' shapes where memory allows (Vardi et al.:
# d up to 1000, width 1000; n = d). ``medium``: the medium presets' heaviest cell (d = 300, n = 300^1.5),
# timed for the matmul yardsticks and the training step only, in every precision the device offers.
SHAPES = {"small": ((64, 64, 256),), "paper": ((64, 64, 256), (1000, 1000, 1000)), "medium": ((300, 5196, 1000),)}
TAGS = {"float64": "fp64", "float32": "fp32", "bf16": "bf16", "tf32": "tf32"}  # precision -> kernel-name suffix
TRAIN_STEPS = 20  # iterations per timed training call
SEEDS = 5  # nets trained at once in the batched records: the papers' seed count
MARGIN_SHAPE = (100, 100, 1000)  # (d, n, width) of the time-to-margin records: the setting


@dataclass(frozen=True, kw_only=True)
class Record:
    """One kernel's measured speed at one shape."""

    kernel: str
    shape: str
    seconds: float  # median wall time of one call
    gflops: float | None  # 1e-9 * FLOPs per call / seconds, where a FLOP count is defined
    fraction_of_matmul: float | None  # gflops / the matmul rate at the same shape and dtype
    examples_per_s: float
    median_norm_over_sqrt_d: float | None = None  # attacks: median verified norm / sqrt(d)
    examples_per_s_over_fb_fmn: float | None = None  # the minimal-norm PGD: examples_per_s / fb-fmn's
    normalized_margin: float | None = None  # time-to-margin records: min_i q_i / ||theta||^2 at the end
    common_c_over_sqrt_d: float | None = None  # time-to-margin records: universal-z's common c / sqrt(d)
    speedup_over_recipe: float | None = None  # time-to-margin records: the plain-PyTorch recipe's seconds / these
    steps: int | None = None  # time-to-margin records: training steps taken
    precision: str | None = None  # matmul and training records: the precision they compute in (models/precision.py)
    fraction_of_matmul_by_precision: dict[str, float] | None = None  # training records: gflops / each precision's matmul rate


def with_fractions(records: list[Record], rates: dict[str, float]) -> list[Record]:
    """The training records (those with gflops and a precision) with their rate over every matmul rate in ``rates``."""
    return [
        replace(r, fraction_of_matmul_by_precision={p: r.gflops / rate for p, rate in rates.items()})
        if r.gflops is not None and r.precision is not None and not r.kernel.startswith("matmul")
        else r
        for r in records
    ]


def step_records(device: torch.device, shape: tuple[int, int, int]) -> list[Record]:
    """At (d, n, width): the matmul yardstick and the training step (arc schedule, as the medium presets train) in
    every precision the device offers, timed in turn (steps and products alike) so that machine load reaches all."""
    d, n, width = shape
    label = f"d={d} n={n} width={width}"
    data = sphere(d=d, n=n, seed=0).to(device)
    init = pytorch_default_init(d, width, generator=torch.Generator().manual_seed(0)).to(device)
    precisions = device_precisions(device)
    flops = 1e9 * step_gflop(n, d, width)
    X, y = data.X.float(), data.y.float()
    steps = [partial(train, init, X, y, arc_schedule(TrainSpec(), precision=p, target_loss=None, max_iters=TRAIN_STEPS)) for p in precisions]
    factors = {p: (torch.randn(n, d, device=device, dtype=matmul_dtype(p)), torch.randn(width, d, device=device, dtype=matmul_dtype(p))) for p in precisions}

    def product(p: Used) -> Callable[[], None]:
        def run() -> None:
            with matmul_backend(p, device):
                for _ in range(TRAIN_STEPS):
                    factors[p][0] @ factors[p][1].T

        return run

    seconds = timed_in_turn([*steps, *(product(p) for p in precisions)], device, repeats=5)
    step_s, product_s = seconds[: len(precisions)], seconds[len(precisions) :]
    rates = {p: 2e-9 * n * d * width * TRAIN_STEPS / s for p, s in zip(precisions, product_s, strict=True)}
    records = [
        Record(
            kernel=f"matmul-{TAGS[p]}",
            shape=label,
            seconds=s / TRAIN_STEPS,
            gflops=rates[p],
            fraction_of_matmul=1.0,
            examples_per_s=n * TRAIN_STEPS / s,
            precision=p,
        )
        for p, s in zip(precisions, product_s, strict=True)
    ]
    for p, s in zip(precisions, step_s, strict=True):
        gflops = 1e-9 * flops * TRAIN_STEPS / s
        records.append(
            Record(
                kernel=f"train-step-arc-{TAGS[p]}",
                shape=label,
                seconds=s / TRAIN_STEPS,
                gflops=gflops,
                fraction_of_matmul=gflops / rates[p],
                examples_per_s=n * TRAIN_STEPS / s,
                precision=p,
            )
        )
    return with_fractions(records, rates)


def time_to_margin(device: torch.device, shape: tuple[int, int, int] = MARGIN_SHAPE) -> list[Record]:
    """Seconds to the normalized margin of the paper's recipe at loss 1e-30, at shape (d, n, width) (see the module doc)."""
    d, n, width = shape
    label = f"d={d} n={n} width={width} (to loss 1e-30's margin)"
    data = sphere(d=d, n=n, seed=0).to(device)
    init = pytorch_default_init(d, width, generator=torch.Generator().manual_seed(0)).to(device)

    def record(kernel: str, seconds: float, net: TwoLayerNet, recipe_seconds: float, steps: int) -> Record:
        net = net.to(device, torch.float64)
        q = data.y * net(data.X)
        shared = UniversalZ()(net, data.X, data.y).shared
        common = float(shared.delta[shared.rows].norm(dim=1).max()) / math.sqrt(d) if shared is not None and bool(shared.rows.any()) else math.inf
        return Record(
            kernel=kernel, shape=label, seconds=seconds, gflops=None, fraction_of_matmul=None, examples_per_s=n / seconds,
            normalized_margin=float(q.min()) / net.sq_norm(), common_c_over_sqrt_d=common, speedup_over_recipe=recipe_seconds / seconds,
            steps=steps,
        )  # fmt: skip

    (recipe_net, recipe_steps), recipe_s = clocked(partial(autograd_recipe, init, data.X, data.y, target_loss=1e-30), device)
    target = float((data.y * recipe_net(data.X)).min()) / recipe_net.sq_norm()
    records = [record("paper recipe, plain PyTorch autograd, fp64", recipe_s, recipe_net, recipe_s, recipe_steps)]
    to_target = dict(target_loss=None, target_normalized_margin=target)
    for kernel, spec, dtype in (
        ("paper schedule, analytic step, fp64", TrainSpec(**to_target), torch.float64),
        ("normalized schedule, fp64", normalized_schedule(TrainSpec(**to_target)), torch.float64),
        ("normalized schedule, fp32", normalized_schedule(TrainSpec(**to_target)), torch.float32),
        # The arc schedule stops where the recipe does, at loss 1e-30: at the recipe's margin it is off the path.
        ("arc schedule, fp64 (to loss 1e-30)", arc_schedule(TrainSpec()), torch.float64),
        ("arc schedule, fp32 (to loss 1e-30)", arc_schedule(TrainSpec()), torch.float32),
    ):
        (net, report), seconds = clocked(partial(train, init.to(device, dtype), data.X.to(dtype), data.y.to(dtype), spec), device)
        kernel = kernel if report.reached_target else f"{kernel} (stopped: {report.stop_reason})"
        records.append(record(kernel, seconds, net, recipe_s, report.iterations))
    return records


def _step_record(kernel: str, shape: str, seconds: float, flops: float, examples: int, rate: float, precision: str) -> Record:
    """A training record: one step of ``seconds`` doing ``flops`` over ``examples`` points, against the matmul ``rate``."""
    gflops = 1e-9 * flops / seconds
    return Record(
        kernel=kernel, shape=shape, seconds=seconds, gflops=gflops, fraction_of_matmul=gflops / rate, examples_per_s=examples / seconds, precision=precision
    )


def sequential_steps(nets: list[TwoLayerNet], X: torch.Tensor, y: torch.Tensor, spec: TrainSpec) -> None:
    """The S nets of a batch trained one after the other: X: (S, n, d), y: (S, n)."""
    for net, X_s, y_s in zip(nets, X, y, strict=True):
        train(net, X_s, y_s, spec)


def measure(*, device: torch.device, sizes: str = "small") -> list[Record]:
    """Every kernel at every shape of ``sizes`` ("small" or "paper") on ``device``, the matmul and training records
    in every precision the device offers; "medium": only those (``step_records``) at the medium presets' heaviest cell."""
    if sizes == "medium":
        return [record for shape in SHAPES[sizes] for record in step_records(device, shape)]
    records: list[Record] = []
    for d, n, width in SHAPES[sizes]:
        shape = f"d={d} n={n} width={width}"
        data = sphere(d=d, n=n, seed=0).to(device)
        init = pytorch_default_init(d, width, generator=torch.Generator().manual_seed(0)).to(device)
        at_shape: list[Record] = []
        rates: dict[str, float] = {}
        for precision in device_precisions(device):
            tag, dtype = TAGS[precision], choose_precision(precision, device).dtype
            X, y, net = data.X.to(dtype), data.y.to(dtype), init.to(device, dtype)
            rate = rates[precision] = precision_gflops(n, d, width, device, precision)
            seconds = 2e-9 * n * d * width / rate
            at_shape.append(
                Record(
                    kernel=f"matmul-{tag}", shape=shape, seconds=seconds, gflops=rate, fraction_of_matmul=1.0, examples_per_s=n / seconds, precision=precision
                )
            )
            flops = 1e9 * step_gflop(n, d, width)  # per step: forward X W^T and backward A^T X
            spec = TrainSpec(max_iters=TRAIN_STEPS, target_loss=None, precision=precision if precision in ("bf16", "tf32") else None)
            kernels = [(f"train-step-{tag}", partial(train, net, X, y, spec))]
            if precision in ("float64", "float32"):  # the plain-PyTorch recipe in the dtypes it is written for
                kernels.append((f"autograd-step-{tag}", partial(autograd_steps, net, X, y, TRAIN_STEPS)))
            for kernel, fn in kernels:
                at_shape.append(_step_record(kernel, shape, timed(fn, device) / TRAIN_STEPS, flops, n, rate, precision))
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
                at_shape.append(_step_record(kernel, shape, seconds, SEEDS * flops, SEEDS * n, rate, precision))
        records.extend(with_fractions(at_shape, rates))
        net, X, y = init.to(device), data.X, data.y
        records.append(attack_record("line-search (universal-z)", shape, UniversalZ(), net, X, y))
        records.extend(pgd_against_fb_fmn(shape, net, X, y))
    if sizes == "paper":
        records.extend(time_to_margin(device))
    return records


def attack_record(kernel: str, shape: str, attack: Attack, net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor) -> Record:
    """One attack's speed on X: (n, d) and the median norm of its verified answers."""
    seconds = timed(partial(attack, net, X, y), X.device, repeats=3)
    return Record(
        kernel=kernel,
        shape=shape,
        seconds=seconds,
        gflops=None,
        fraction_of_matmul=None,
        examples_per_s=X.shape[0] / seconds,
        median_norm_over_sqrt_d=median_norm_over_sqrt_d(attack, net, X, y),
    )


def pgd_against_fb_fmn(shape: str, net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor) -> list[Record]:
    """The minimal-norm PGD and Foolbox FMN on the same net and points, timed in turn; the PGD record carries
    the ratio of examples per second. Only the PGD record where foolbox is not installed."""
    n = X.shape[0]
    pgd, fmn = MinimalPGD(), FbFMN()
    try:
        fmn_norm = median_norm_over_sqrt_d(fmn, net, X, y)  # also the check that foolbox is there
    except AttackUnavailable:
        return [attack_record("pgd (minimal-norm, bisection)", shape, pgd, net, X, y)]
    pgd_s, fmn_s = timed_in_turn([partial(pgd, net, X, y), partial(fmn, net, X, y)], X.device, repeats=3)
    return [
        Record(
            kernel="pgd (minimal-norm, bisection)",
            shape=shape,
            seconds=pgd_s,
            gflops=None,
            fraction_of_matmul=None,
            examples_per_s=n / pgd_s,
            median_norm_over_sqrt_d=median_norm_over_sqrt_d(pgd, net, X, y),
            examples_per_s_over_fb_fmn=fmn_s / pgd_s,
        ),
        Record(
            kernel="fb-fmn (Foolbox 3.3.4 L2FMNAttack)",
            shape=shape,
            seconds=fmn_s,
            gflops=None,
            fraction_of_matmul=None,
            examples_per_s=n / fmn_s,
            median_norm_over_sqrt_d=fmn_norm,
        ),
    ]


def median_norm_over_sqrt_d(attack: Attack, net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor) -> float:
    """The median norm of the answers of ``attack`` that a forward pass confirms (+inf counts a failure), over sqrt(d)."""
    norm = verify(net, X, attack(net, X, y)).norm
    return float(np.median(norm.cpu().numpy())) / math.sqrt(X.shape[1])  # numpy's median, as summary.csv's


def as_rows(records: list[Record]) -> list[dict[str, Any]]:
    """The records as plain dicts (the json format)."""
    return [asdict(r) for r in records]
