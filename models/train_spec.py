"""What training is: the spec of a recipe, its report, and the loss in the log domain.

Two recipes share one loop (``marginbench.models.train``):
- Vardi et al. 2022, eq. (1) and Section 6 (the kkt family): all of W, b, v trained, exponential loss, full
  batch, learning rate 1e-5 multiplied by 1.1 every 100 iterations, stop once L < 1e-30 (``schedule="paper"``).
  ``schedule="normalized"`` is the faster alternative (not the paper's): the step is lr * grad L / L, i.e.
  normalized gradient descent on log L. Gradient flow on L and on log L trace the same path (one is a
  re-timing of the other, dt = L dtau), so with a small lr both schedules pass through the same networks;
  the normalized one gets there in far fewer steps because its step grows as 1/L instead of 1.1x per 100.
- Melamed et al. 2023, Section 3.1 (the subspace family): only W trained (b = 0 and u fixed), logistic loss,
  GD or SGD with a constant step, optionally L2-regularized (Section 6.2): each step multiplies the trained
  weights by (1 - lr * lambda) before adding the loss gradient, exactly as in the proof of Theorem 6.2.

Why log-domain: at the end of kkt training every term of L is near 1e-30 and the gradient is as small, while
the learning rate has grown to ~1e25. The step lr * grad L is computed as
    exp(log lr + log L') * sum_i softmax(s)_i y_i grad N(x_i),   s_i = log(-loss'(q_i)),  L' = sum_i e^{s_i},
so that no intermediate underflows or overflows, in float64 or float32 alike. The loss itself is tracked as
log L = logsumexp_i log loss(q_i), which stays exact far below 1e-308.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from marginbench.models.precision import PRECISIONS, Precision

LossName = Literal["exp", "logistic"]
LOSSES: tuple[str, ...] = ("exp", "logistic")
Layers = Literal["all", "first"]
Reduction = Literal["sum", "mean"]
REDUCTIONS: tuple[str, ...] = ("sum", "mean")
Schedule = Literal["paper", "normalized", "arc"]
SCHEDULES: tuple[str, ...] = ("paper", "normalized", "arc")
StopReason = Literal["target_loss", "target_margin", "target_normalized_margin", "stationary", "max_iters", "max_seconds", "nonfinite", "dead", "stalled"]
MAX_ITERS = 2_000_000  # the cap of a spec that gives none: far past the paper schedule's ~72,000 steps
LOG_FLOAT_MAX = 709.0  # exp() of more overflows a float64
CHECK_EVERY = 100  # iterations between the checks for a dead or stalled net (on a full pass: no extra product)
STALL_ITERS = 10_000  # a loss bitwise unchanged this long while the step grows (x1.1^100 on the paper's) is stuck
# Stops that say the net cannot train (the run fails): what each means, for a log line and summary.csv.
STUCK: dict[str, str] = {
    "dead": "every ReLU is off at every training point that still carries loss: the gradient is exactly 0, so no step can change the net",
    "stalled": f"the loss has not moved over {STALL_ITERS:,} iterations while the step grew",
}

# How far the paper schedule must go. Along gradient flow on the exponential (or logistic) loss the loss decays
# like 1 / (flow time), up to logs (Lyu & Li 2020; Vardi et al. build on it), where the flow time of GD is
# sum_t lr_t. The paper's schedule stops at L < 1e-30 after a flow time of 1.3e28 (72,737 steps at d = n = 100,
# width 1000: 1e-5 * 100 * (1.1^727 - 1) / 0.1), i.e. L * time = 0.013; measured at 1e-30 with growth_every 10:
# 0.007 (d 2, n 5, width 6), 0.013 (d 16, width 32; d 64, width 256), 0.026 (d 32, n 100, width 64).
FLOW_TIMES_LOSS = 0.013
REACH_SLACK = 1e4  # a schedule is refused when its cap's flow time is below 1 / REACH_SLACK of the time needed
ARC_LATE_BELOW = 1e-10  # the arc schedule's late phase (late_lr): the loss below which it starts (see ARC_LATE_STEP)


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """How to train; the defaults are Vardi et al.'s schedule (Section 6). See ``SUBSPACE_TRAIN`` for Melamed et al.'s."""

    loss: LossName = "exp"  # exp: e^{-q}; logistic: log(1 + e^{-q})
    # sum: L = sum_i loss(q_i), Vardi et al. eq. (1); mean: L / n (PyTorch's default reduction), i.e. the sum's
    # schedule at lr / n stopped at n * target_loss. The paper schedule's lr 1e-5 on the sum diverges once
    # n ||x||^2 is large (d = 300, n = d^1.5: at step 14), where the mean's does not.
    reduction: Reduction = "sum"
    schedule: Schedule = "paper"  # paper: step lr_t grad L; normalized: lr_t grad L / L; arc: lr ||theta|| along -grad L (full batch)
    lr: float = 1e-5  # initial learning rate
    lr_growth: float = 1.1  # the learning rate is multiplied by this ...
    growth_every: int = 100  # ... every this many iterations
    target_loss: float | None = 1e-30  # stop once L(theta) < target_loss (None: never)
    target_margin: float | None = None  # stop once min_i y_i N(x_i) >= target_margin (None: never)
    target_normalized_margin: float | None = None  # stop once min_i y_i N(x_i) / ||theta||^2 >= this (None: never)
    stationarity: float | None = None  # if l2 > 0: stop once ||grad (L + l2/2 ||theta||^2)|| <= this * l2 ||theta||
    max_iters: int | None = None  # cap on iterations, reported as stop_reason "max_iters"; None: the recipe's (MAX_ITERS)
    max_seconds: float | None = None  # optional wall-time cap, reported as stop_reason "max_seconds"
    layers: Layers = "all"  # all: W, b, v trained; first: only W (b and v stay as initialized)
    l2: float = 0.0  # lambda of lambda/2 ||trained weights||^2 (Melamed et al. Section 6.2)
    batch_size: int | None = None  # None: full-batch GD; else SGD on seeded shuffles, gradient scaled by n/batch
    precision: Precision | None = None  # what training computes in (nets come back in their dtype); None: theirs
    # (bf16: the large products on bf16 matrix units, the rest float32; tf32: CUDA only; auto: bf16 where the
    # hardware has bf16 matrix units, else float32; see models/precision.py)
    late_lr: float | None = None  # arc only: the relative step once L < late_below (None: lr throughout)
    late_below: float = ARC_LATE_BELOW  # ... the loss below which late_lr applies

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not (self.lr > 0 and self.lr_growth >= 1 and self.growth_every >= 1):
            raise ValueError("learning rate must be > 0, its growth factor >= 1 and growth_every >= 1")
        if self.target_loss is not None and not (0 < self.target_loss < math.inf):
            raise ValueError(f"target loss must be a positive number, got {self.target_loss}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown loss reduction {self.reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        if self.reduction == "mean" and self.l2 > 0:
            raise ValueError("the mean loss is for Vardi et al.'s schedule; l2 (Melamed et al. Section 6.2) regularizes the summed loss")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.schedule != "paper" and self.batch_size is not None:
            raise ValueError(f"the {self.schedule} schedule scales the full-batch gradient: it needs full-batch GD (no batch size)")
        if self.schedule == "arc" and not (self.lr < 1 and self.lr_growth == 1 and self.l2 == 0):
            raise ValueError("the arc schedule's lr is a step length relative to ||theta||: it needs lr < 1, no growth and no l2")
        for name in ("target_margin", "target_normalized_margin"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number, got {value}")
        if self.stationarity is not None and not self.stationarity > 0:
            raise ValueError(f"stationarity must be a tolerance > 0, got {self.stationarity}")
        if self.max_iters is not None and self.max_iters < 0:
            raise ValueError(f"max_iters must be >= 0, got {self.max_iters}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.layers not in ("all", "first"):
            raise ValueError(f"layers must be 'all' or 'first', got {self.layers!r}")
        if not (self.l2 >= 0 and self.lr * self.l2 < 1):
            raise ValueError(f"l2 must be >= 0 with lr * l2 < 1, got l2={self.l2}, lr={self.lr}")
        if self.l2 > 0 and self.lr_growth != 1:
            raise ValueError("l2 needs a constant lr (lr_growth 1): the paper schedule's step grows past 1/l2, and Cor 6.2's (1 - lr*l2)^T assumes one step")
        if self.late_lr is not None and not (self.schedule == "arc" and 0 < self.late_lr < 1 and self.late_below > 0):
            raise ValueError(f"a late step (late_lr {self.late_lr}) needs the arc schedule, 0 < late_lr < 1 and late_below > 0")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self._refuses_unreachable and log_flow_time(self, MAX_ITERS) < math.log(flow_time_needed(self) / REACH_SLACK):
            raise ValueError(
                f"the paper schedule cannot reach loss {self.target_loss:g} within {MAX_ITERS:,} iterations: lr {self.lr:g} grown x{self.lr_growth:g} "
                f"every {self.growth_every:,} iterations adds up to a step total (gradient-flow time) of {math.exp(log_flow_time(self, MAX_ITERS)):.3g} "
                f"by then, and ~{flow_time_needed(self):.2g} is needed; raise lr_growth, lower growth_every, or give max_iters to stop there"
            )

    @property
    def _refuses_unreachable(self) -> bool:
        """Whether the loss target is this spec's only stop before the default iteration cap (the paper schedule
        with no other target, no stationarity and no cap of the user's own): then a schedule that cannot reach it
        would run for MAX_ITERS iterations in vain."""
        others = (self.target_margin, self.target_normalized_margin, self.stationarity, self.max_iters, self.max_seconds)
        return self.schedule == "paper" and self.target_loss is not None and all(value is None for value in others)

    @property
    def iteration_cap(self) -> int:
        """max_iters, or MAX_ITERS where the spec leaves the cap to the recipe."""
        return self.max_iters if self.max_iters is not None else MAX_ITERS


def flow_time_needed(spec: TrainSpec) -> float:
    """The paper schedule's gradient-flow time sum_t lr_t to spec.target_loss (FLOW_TIMES_LOSS / target), for the
    sum or the mean alike: the mean's flow is the sum's slowed n times, L/n * n t = L t."""
    assert spec.target_loss is not None, "a loss target"
    return FLOW_TIMES_LOSS / spec.target_loss


def log_reduction(spec: TrainSpec, n: int) -> float:
    """log of the divisor of the summed loss (and of its gradient) under spec.reduction: 0 (sum) or log n (mean)."""
    return math.log(n) if spec.reduction == "mean" else 0.0


def log_flow_time(spec: TrainSpec, iterations: int) -> float:
    """log sum_{t < iterations} lr_t of the paper schedule: lr * every * (g^K - 1) / (g - 1), K = iterations / every
    (in logs: g^K overflows a float long before the cap)."""
    g, every = spec.lr_growth, spec.growth_every
    if g == 1 or iterations < every:
        return math.log(spec.lr * max(iterations, 1))
    k_log_g = iterations / every * math.log(g)
    grown = k_log_g if k_log_g > 30 else math.log(math.expm1(k_log_g))
    return math.log(spec.lr * every / (g - 1)) + grown


def paper_steps(spec: TrainSpec) -> float:
    """The paper schedule's iterations to spec.target_loss by the flow-time rule (FLOW_TIMES_LOSS; ~72,700 for its
    own schedule), whatever the spec's iteration cap."""
    need = flow_time_needed(spec)
    g, every = spec.lr_growth, spec.growth_every
    if g == 1:
        steps = need / spec.lr
    else:
        steps = every * math.log1p(need * (g - 1) / (spec.lr * every)) / math.log(g)
    return steps


# The normalized schedule's default step: on d = n = 100, width 1000 it reaches loss 1e-30 at the paper
# schedule's network (normalized margin and KKT residual equal to 4 digits) in 1471 steps instead of 72737;
# at lr 0.01 the margin at 1e-30 is 18% lower (the steps no longer follow gradient flow).
NORMALIZED_LR = 0.003


def normalized_schedule(spec: TrainSpec, **changes: Any) -> TrainSpec:
    """``spec`` on the normalized schedule at its default step (lr NORMALIZED_LR, lr_growth 1), with ``changes``
    on top (they may set lr too)."""
    return on_schedule(spec, "normalized", **changes)


# The arc schedule (not the paper's): every step has the length rho ||theta|| along -grad log L, i.e.
# theta <- theta - rho ||theta|| g / ||g||, g = grad log L: normalized GD on log L whose step grows with the
# parameters. Stopped where the paper stops (L < 1e-30), on d = n = 100, width 1000, seed 0, against the
# plain-PyTorch recipe (72,737 steps; normalized margin 0.12187, common c / sqrt(d) 0.24246):
#   rho 0.01: 159 steps, margin -1.3%, c -4.7% (off the path);  rho 0.005: 196 steps, -0.09%, -0.33%;
#   rho 0.003: 264 steps, -0.12%, +0.06% (float32: -0.15%, +0.07%);  rho 0.002: 382 steps, +0.22%, -0.06%.
# Stopping at the recipe's normalized margin instead lands elsewhere (rho 0.01: c -4.4%): the loss is the stop.
ARC_STEP = 0.003
# With many examples per dimension the late phase (L < 1e-10, where the margin is maximized) needs a shorter
# step; the early phase does not. Against the paper schedule's net (d = 100, width 1000, seed 0, float32):
#   n = 1000: rho 0.003 throughout: 1473 steps, normalized margin -2.08%, c +1.22% (margin fraction -1.44%);
#             0.003 early, 0.001 late: 1633 steps, -0.46%, +0.90%;  0.0007 late: 1675 steps, -0.10%, -0.67%;
#             0.001 early, 0.003 late: 1552 steps, -1.8%, +3.6% (so it is the late phase's error).
#   n = 251:  rho 0.003 throughout: 468 steps, -0.77%, -0.67%;  0.0007 late: 808 steps, +0.10%, 0.00%.
# Past n ~ 3d the late steps oscillate across the flow's path at 0.003 rather than follow it, so a shorter
# step costs fewer extra steps than its ratio (+14% at n = 1000). At n <= d it costs more (d = n = 100: 264
# steps, 590 with 0.0007 late) for nothing (-0.12% and +0.06% already), hence only where n/d is large.
ARC_LATE_STEP = 0.0007  # below ARC_LATE_BELOW (TrainSpec.late_below)


def arc_schedule(spec: TrainSpec, **changes: Any) -> TrainSpec:
    """``spec`` on the arc schedule at its default relative step (lr ARC_STEP, lr_growth 1), with ``changes``."""
    return on_schedule(spec, "arc", **changes)


# The schedules whose step size means something else than the paper's lr: each brings its own default step and
# no growth (the paper's 1e-5 x1.1 means nothing to them). The one place where that is spelled out.
OWN_STEP = {"normalized": NORMALIZED_LR, "arc": ARC_STEP}


def on_schedule(spec: TrainSpec, schedule: Schedule, **changes: Any) -> TrainSpec:
    """``spec`` on ``schedule``, at that schedule's own default step and no growth where it has one (OWN_STEP;
    the paper schedule keeps the spec's lr and growth, or takes the paper's from a schedule with its own step),
    without the arc schedule's late step unless that is the schedule, with ``changes`` on top."""
    own: dict[str, Any] = {"lr": OWN_STEP[schedule], "lr_growth": 1.0} if schedule in OWN_STEP else {}
    if schedule == "paper" and spec.schedule in OWN_STEP:  # back from a step of its own: the paper's lr and growth
        paper = TrainSpec()
        own = {"lr": paper.lr, "lr_growth": paper.lr_growth, "growth_every": paper.growth_every}
    if schedule != "arc":  # the late step is the arc schedule's
        own["late_lr"] = None
    return replace(spec, **{"schedule": schedule, **own, **changes})


# Melamed et al. 2023 (Section 3.1): first layer only, logistic loss, a constant step; trained until every
# training point has margin >= 1 (their experiments train "until reaching a constant positive margin").
SUBSPACE_TRAIN = TrainSpec(
    loss="logistic", lr=0.05, lr_growth=1.0, target_loss=None, target_margin=1.0, max_iters=5_000, layers="first"
)


@dataclass(frozen=True, kw_only=True)
class TrainReport:
    """What happened during training; stop_reason says whether a target (loss or margin) was reached."""

    iterations: int
    log10_loss: float  # log10 L(theta) at the returned parameters (data loss, without the L2 term)
    min_margin: float  # min_i y_i N(x_i) at the returned parameters
    stop_reason: StopReason
    seconds: float
    final_lr: float
    weight_decay: float = 1.0  # prod_t (1 - lr_t * l2): the factor by which L2 shrank every trained weight
    nonfinite_iteration: int | None = None  # the iteration at which NaN/inf appeared, if it did

    @property
    def reached_target(self) -> bool:
        return self.stop_reason in ("target_loss", "target_margin", "target_normalized_margin", "stationary")


def log_loss_terms(q: Tensor, loss: LossName) -> Tensor:
    """log loss(q_i) for margins q of any shape, exact for q up to ~1e300."""
    if loss == "exp":
        return -q
    # log(log(1 + e^{-q})) = log(-logsigmoid(q)); once u = e^{-q} < 1e-4 that would underflow, so write it as
    # -q + log(log1p(u)/u) with the ratio's series. Only exp, log and logsigmoid: on the CPU they give an element
    # the same bits wherever it sits in a tensor, while log1p and softplus round differently in the vectorized
    # body and the scalar tail of a loop, and a net's numbers must not depend on the nets batched with it.
    u = torch.exp(-q.clamp_min(0))
    return torch.where(u > 1e-4, torch.log(-torch.nn.functional.logsigmoid(q)), -q + torch.log(1 - u / 2 + u * u / 3))


def log_neg_loss_derivative(q: Tensor, loss: LossName) -> Tensor:
    """log(-loss'(q_i)): -q for exp; log sigmoid(-q) for logistic."""
    if loss == "exp":
        return -q
    return torch.nn.functional.logsigmoid(-q)
