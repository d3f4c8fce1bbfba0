"""What a sweep will cost, said before it starts (trainings, FLOPs of training, minutes of training and of the
certified lower bounds at this machine's rates), and how far it has come while it runs (``SweepProgress``:
one line with an ETA).

A training step of a width-m net on n examples in R^d costs about 4 n d m FLOPs (the forward product X W^T
and the backward A^T X, both (n, d, m)). The number of steps is a measured rule per schedule (below), so the
minutes are an estimate, said as one; the sweep's progress line corrects it with the real pace as runs finish.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from marginbench.bench.execution.twin import twin_spec
from marginbench.bench.experiment.spec import RunSpec, Sweep
from marginbench.bench.performance.threads import Threads, choose_threads, using
from marginbench.bench.registry.registries import MODELS
from marginbench.checking.certify import ALPHA_STEPS, BISECTION_STEPS
from marginbench.models.kernels import step_gflop as kernel_step_gflop
from marginbench.models.precision import Used, choose_precision, matmul_backend, matmul_dtype
from marginbench.models.train_spec import ARC_LATE_STEP, ARC_STEP, NORMALIZED_LR, TrainSpec, paper_steps

# Steps to loss 1e-30 measured at width 1000 on sphere data (seed 0), as a function of r = n / d:
#   arc (rho 0.003): 129 (r 0.1), 196 (0.4), 264 (1), 468 (2.5), 1473 (10), 1977 (14), 2274 (17.3)
#   ~ 264 r^0.33 below r = 1 and 264 r^0.75 above. Scaled by ARC_STEP / rho for other steps, which over-counts
#   them: past r ~ 3 the count hardly moves with rho (d = 200, n = 577: 761, 544, 465 steps at rho 0.0015, 0.003, 0.006).
#   normalized (lr 0.003): 1,437-1,570 at r = 1; paper: 72,737 at d = n = 100 (any lr and growth: paper_steps,
#   the flow-time rule of models/train_spec.py).
# LATE_EXTRA: the arc schedule's late step (0.0007 below loss 1e-10) multiplies the count by 1.73 at r = 2.5
#   (468 -> 808) and 1.14 at r = 10 (1473 -> 1675), d = 100: ~1.73 (r / 2.5)^-0.3, at least 1.
# Constant steps to a margin (Melamed et al.'s recipe, lr 0.05 to margin 1): 88-102 steps at d = 784, n = 1000,
# width 1000, init divided by 1 ... 32; 31 on the digits.
ARC_STEPS_AT_R1 = 264
NORMALIZED_STEPS_AT_R1 = 1500
MARGIN_STEPS = 100
# Every step also costs the loop's own time, whatever its FLOPs: 754,600 steps of a d = 2, n = 5, width 6 net took
# 75 s on one CPU core (~100 us a step); tiny nets run for that, not for their products.
STEP_SECONDS_FLOOR = 1e-4
# A model that does not follow the recipe gives its own steps and step cost on its entry (bench/registry/registries.py).


def step_efficiency(step_gflop: float, precision: Used = "float32") -> float:
    """A training step's share of the matmul yardstick in its precision, by its size in GFLOP (4 n d width):
    small steps are dominated by elementwise work and overheads.

    float32 (and float64), measured on the medium paper-fig1a sweep (width 1000, against 69 GFLOP/s): 0.08 at
    0.004 GFLOP, 0.28 at 0.016, 0.5 at 0.1, 0.61 at 0.4, 0.73 at 0.36, 0.89 at 2.3, 1.05 at 6.2; ~0.5 (step /
    0.1)^(1/4), at most 1. bf16 (and tf32), whose products are 5-10x faster while the elementwise passes over
    the (n x width) matrices are not, measured on the full paper-fig1b sweep (seed 0, 2 threads, against 1618
    GFLOP/s; Xeon family 6 model 167 with AMX): 0.07 at 0.1 GFLOP, 0.16 at 1, 0.2-0.38 at 4, 0.27 at 32;
    ~0.3 (step / 10)^(1/4), at most 0.3."""
    if precision in ("bf16", "tf32"):
        return min(0.3, 0.3 * (step_gflop / 10) ** 0.25)
    return min(1.0, 0.5 * (step_gflop / 0.1) ** 0.25)


# The lower bounds every two-layer run certifies (checking/certify.py: BISECTION_STEPS + 1 radii, each with
# ALPHA_STEPS float32 ascent steps of two (n x width x d) products and one float64 bound): their products, and
# elementwise passes over the (n x width) matrices worth LOWER_BOUND_ELEMENT_FLOPS float32 FLOPs per example,
# neuron and radius (measured: n = 1000, width 8000, d = 1000 took 46 s on 2 threads, ~half of it elementwise).
LOWER_BOUND_ELEMENT_FLOPS = 45_000


def lower_bound_seconds(run: RunSpec, float32_rate: float, float64_rate: float) -> float:
    """Rough seconds of the certified lower bounds of ``run`` (a two-layer net's) at the given matmul rates (GFLOP/s)."""
    cells = (BISECTION_STEPS + 1) * run.n_attacked * run.width  # (example, neuron) pairs, over the radii
    float32_gflop = cells * (4 * ALPHA_STEPS * run.d + LOWER_BOUND_ELEMENT_FLOPS) * 1e-9
    return float32_gflop / float32_rate + cells * 2 * run.d * 1e-9 / float64_rate


def steps_estimate(train: TrainSpec, n: int, d: int) -> int:
    """Rough number of training steps of ``train`` on n examples in R^d (capped by its iteration cap)."""
    steps = steps_to_target(train, n, d)
    return int(min(steps if steps is not None else math.inf, train.iteration_cap))


def steps_to_target(train: TrainSpec, n: int, d: int) -> float | None:
    """Rough number of steps of ``train`` to its target on n examples in R^d, past its cap if need be; None where
    the recipe has no rule (a fixed number of steps: the l2 recipes): it runs to its cap."""
    r = n / d
    growth = r**0.75 if r >= 1 else r ** (1 / 3)
    if train.schedule == "arc":
        steps = ARC_STEPS_AT_R1 * growth * ARC_STEP / train.lr
        if train.late_lr is not None and train.late_lr < train.lr:  # the late phase's extra steps (LATE_EXTRA above)
            steps *= max(1.0, 1.73 * (r / 2.5) ** -0.3) ** (math.log(train.lr / train.late_lr) / math.log(ARC_STEP / ARC_LATE_STEP))
        return steps
    if train.schedule == "normalized":
        return NORMALIZED_STEPS_AT_R1 * growth * NORMALIZED_LR / train.lr
    if train.target_loss is not None and (train.lr_growth > 1 or train.target_margin is None) and train.l2 == 0:
        return paper_steps(train)
    if train.target_margin is not None and train.l2 == 0:
        return MARGIN_STEPS
    return None


def stops_at_cap(train: TrainSpec, n: int, d: int) -> bool:
    """Whether the estimate puts ``train``'s target at or past its iteration cap (it stops there: max_iters)."""
    steps = steps_to_target(train, n, d)
    return steps is not None and steps >= train.iteration_cap


def step_gflop(run: RunSpec) -> float:
    """GFLOPs of one full-batch training step of ``run``'s two-layer net (``models.kernels.step_gflop``)."""
    return kernel_step_gflop(run.n, run.d, run.width)


def run_threads(run: RunSpec, requested: int | None, seeds: int = 1) -> Threads:
    """The torch threads for ``run``'s training and attacks (``seeds`` nets trained in one batch): bench/performance/threads.py's rule."""
    return choose_threads(seeds * step_gflop(run), requested=requested)


def run_gflop(run: RunSpec, trained: bool) -> float:
    """GFLOPs of one run's training (and of its --twin's), 0 for a construction; a model's entry may give its
    own step cost and step count (``ModelEntry.step_gflop``, ``training_steps``), else the recipe's rule."""
    if not trained:
        return 0.0
    entry = MODELS.entry(run.model)
    step = entry.step_gflop(run) if entry.step_gflop is not None else step_gflop(run)
    steps = entry.training_steps(run) if entry.training_steps is not None else steps_estimate(run.train, run.n, run.d)
    return step * steps + twin_gflop(run, trained)


def twin_gflop(run: RunSpec, trained: bool) -> float:
    """GFLOPs of a run's --twin (the paper's schedule; 0 without one or for a construction), in its own precision."""
    return step_gflop(run) * steps_estimate(twin_spec(run), run.n, run.d) if trained and run.twin is not None else 0.0


RATE_SAMPLES = 15  # timed products per rate, after RATE_WARMUP: their median, so that a moment of load on a shared machine does not set it
RATE_WARMUP = 3


@functools.cache
def machine_gflops(device: str, precision: Used, threads: int) -> float:
    """This machine's matmul rate at a training-sized product in ``precision`` as training uses it, at ``threads``
    torch threads: the median of RATE_SAMPLES timed products (measured once per process, ~0.3 s)."""
    from marginbench.bench.performance.yardsticks import matmul_gflops

    with using(Threads(count=threads, why="the sweep's estimate")), matmul_backend(precision, torch.device(device)):
        return matmul_gflops(2000, 200, 1000, torch.device(device), matmul_dtype(precision), repeats=RATE_SAMPLES, warmup=RATE_WARMUP)


@dataclass(frozen=True)
class SweepCost:
    """A sweep's size and its estimated time (training and certified lower bounds; attacks are not counted)."""

    runs: int
    trainings: int
    gflop: float
    minutes: float
    rates: dict[str, float]  # GFLOP/s of the matmul yardstick, per dtype and thread count the sweep uses ("float64, 1 thread")
    capped: dict[int, int] = field(default_factory=dict)  # iteration cap -> trainings estimated to stop there


    def when(self) -> str:
        """The estimated time of training and lower bounds: ``under a minute`` or ``~N min``."""
        return "under a minute" if self.minutes < 1 else f"~{self.minutes:.0f} min"

    def line(self) -> str:
        """The line printed before the sweep starts."""
        work = f"{self.gflop / 1e3:.3g} TFLOP" if self.gflop >= 1e3 else f"{self.gflop:.3g} GFLOP"
        line = (
            f"sweep: {self.runs} run{'s' * (self.runs != 1)}, {self.trainings} training{'s' * (self.trainings != 1)}, ~{work} of training: "
            f"{self.when()} estimated from "
            f"this machine's matmul rate ({rates_text(self.rates)}; lower bounds included, attacks not counted)"
        )
        for cap, count in sorted(self.capped.items()):
            line += f"; {count} training{'s' if count > 1 else ''} will stop at the iteration cap of {cap:,} before the target (max_iters)"
        return line


def rates_text(rates: dict[str, float]) -> str:
    """``69 GFLOP/s float64, 1 thread and 986 GFLOP/s bf16, 1 thread``: a SweepCost's rates, as said."""
    return " and ".join(f"{rate:.0f} GFLOP/s {kind}" for kind, rate in rates.items())


def sweep_cost(sweep: Sweep, threads: int | None = None) -> tuple[SweepCost, list[float]]:
    """The sweep's estimated cost, and each run's GFLOP (in the order of ``spec.runs()`` over the sweep);
    each run's rate is measured at the thread count it will run with (``threads``: --threads)."""
    runs = [run for spec in sweep for run in spec.runs()]
    entries = [MODELS.entry(run.model) for run in runs]
    trained = [entry.trained for entry in entries]
    per_run = [run_gflop(run, t) for run, t in zip(runs, trained, strict=True)]
    kinds = [(choose_precision(run.train.precision or "float64", run.device, step_gflop(run)).used, run_threads(run, threads).count) for run in runs]
    bounded = [(run, count) for run, entry, (_, count) in zip(runs, entries, kinds, strict=True) if entry.closed_form]  # certified lower bounds
    rate_kinds = set(kinds) | {(dtype, count) for _, count in bounded for dtype in ("float32", "float64")}
    rates = {kind: machine_gflops(runs[0].device, *kind) for kind in sorted(rate_kinds)}
    steps = [step_gflop(run) for run in runs]  # the step size sets its share of the matmul rate
    twins = [(twin_gflop(run, t), (run.experiment.twin_precision, count)) for run, t, (_, count) in zip(runs, trained, kinds, strict=True)]
    rates.update({kind: machine_gflops(runs[0].device, *kind) for gflop, kind in twins if gflop > 0 and kind not in rates})
    work = [(gflop - twin, kind) for gflop, (twin, _), kind in zip(per_run, twins, kinds, strict=True)] + twins  # the run's own, then its twin's
    seconds = sum(
        max(gflop / (step_efficiency(step, kind[0]) * rates[kind]), gflop / step * STEP_SECONDS_FLOOR)
        for (gflop, kind), step in zip(work, steps + steps, strict=True)
        if gflop > 0
    )
    seconds += sum(lower_bound_seconds(run, rates["float32", count], rates["float64", count]) for run, count in bounded)
    trainings = sum((1 + (run.twin is not None)) * t for run, t in zip(runs, trained, strict=True))
    capped: dict[int, int] = {}
    for run, entry in zip(runs, entries, strict=True):  # the models whose steps follow the recipe's rule
        if entry.trained and entry.follows_recipe and stops_at_cap(run.train, run.n, run.d):
            capped[run.train.iteration_cap] = capped.get(run.train.iteration_cap, 0) + 1
    shown = {f"{dtype}, {count} thread{'s' * (count > 1)}": rate for (dtype, count), rate in rates.items()}
    return SweepCost(runs=len(runs), trainings=trainings, gflop=sum(per_run), minutes=seconds / 60, rates=shown, capped=capped), per_run


class SweepProgress:
    """One progress line for a whole sweep: its share of the estimated work done, runs finished, and an ETA.

    Each run counts by its estimated training FLOPs (every run at least 1% of the mean, so attack-only runs
    move the bar too); finished runs of a resumed sweep count as done from the start.
    """

    def __init__(self, weights: Sequence[float], finished: Collection[int], *, enabled: bool) -> None:
        floor = 0.01 * (sum(weights) / len(weights)) if weights and sum(weights) > 0 else 1.0
        self.weights = [max(w, floor) for w in weights]
        self.count, self.total = len(finished), len(weights)
        self.bar = tqdm(
            total=sum(self.weights),
            initial=sum(self.weights[i] for i in finished),
            disable=not enabled,
            desc="sweep",
            bar_format="{desc}: {percentage:3.0f}% of the estimated work|{bar:20}| {postfix} [{elapsed} elapsed, ETA {remaining}]",
            file=sys.stderr,
        )
        self.bar.set_postfix_str(f"{self.count}/{self.total} runs", refresh=False)

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def done(self, index: int) -> None:
        self.count += 1
        self.bar.set_postfix_str(f"{self.count}/{self.total} runs", refresh=False)
        self.bar.update(self.weights[index])

    def around(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` writing above the bar instead of through it."""
        if self.bar.disable:
            return log

        def write(line: str) -> None:
            with tqdm.external_write_mode(file=sys.stderr):
                log(line)

        return write
