"""Gradient descent on L(theta) = sum_i loss(y_i N(x_i)) [+ lambda/2 ||trained weights||^2].

Two recipes share this one loop:
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
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from marginbench.models.two_layer import TwoLayerNet

LossName = Literal["exp", "logistic"]
LOSSES: tuple[str, ...] = ("exp", "logistic")
Layers = Literal["all", "first"]
Schedule = Literal["paper", "normalized"]
SCHEDULES: tuple[str, ...] = ("paper", "normalized")
StopReason = Literal["target_loss", "target_margin", "target_normalized_margin", "stationary", "max_iters", "max_seconds", "nonfinite"]
_LOG_FLOAT_MAX = 709.0  # exp() of more overflows a float64


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """How to train; the defaults are Vardi et al.'s schedule (Section 6). See ``SUBSPACE_TRAIN`` for Melamed et al.'s."""

    loss: LossName = "exp"  # exp: e^{-q}; logistic: log(1 + e^{-q})
    schedule: Schedule = "paper"  # paper: step lr_t grad L; normalized: step lr_t grad L / L (full batch only)
    lr: float = 1e-5  # initial learning rate
    lr_growth: float = 1.1  # the learning rate is multiplied by this ...
    growth_every: int = 100  # ... every this many iterations
    target_loss: float | None = 1e-30  # stop once L(theta) < target_loss (None: never)
    target_margin: float | None = None  # stop once min_i y_i N(x_i) >= target_margin (None: never)
    target_normalized_margin: float | None = None  # stop once min_i y_i N(x_i) / ||theta||^2 >= this (None: never)
    stationarity: float | None = None  # if l2 > 0: stop once ||grad (L + l2/2 ||theta||^2)|| <= this * l2 ||theta||
    max_iters: int = 2_000_000  # cap on iterations; reaching it is reported as stop_reason "max_iters"
    max_seconds: float | None = None  # optional wall-time cap, reported as stop_reason "max_seconds"
    layers: Layers = "all"  # all: W, b, v trained; first: only W (b and v stay as initialized)
    l2: float = 0.0  # lambda of lambda/2 ||trained weights||^2 (Melamed et al. Section 6.2)
    batch_size: int | None = None  # None: full-batch GD; else SGD on seeded shuffles, gradient scaled by n/batch

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not (self.lr > 0 and self.lr_growth >= 1 and self.growth_every >= 1):
            raise ValueError("learning rate must be > 0, its growth factor >= 1 and growth_every >= 1")
        if self.target_loss is not None and not (0 < self.target_loss < math.inf):
            raise ValueError(f"target loss must be a positive number, got {self.target_loss}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.schedule == "normalized" and self.batch_size is not None:
            raise ValueError("the normalized schedule divides by the full-batch loss: it needs full-batch GD (no batch size)")
        for name in ("target_margin", "target_normalized_margin"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number, got {value}")
        if self.stationarity is not None and not self.stationarity > 0:
            raise ValueError(f"stationarity must be a tolerance > 0, got {self.stationarity}")
        if self.max_iters < 0:
            raise ValueError(f"max_iters must be >= 0, got {self.max_iters}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.layers not in ("all", "first"):
            raise ValueError(f"layers must be 'all' or 'first', got {self.layers!r}")
        if not (self.l2 >= 0 and self.lr * self.l2 < 1):
            raise ValueError(f"l2 must be >= 0 with lr * l2 < 1, got l2={self.l2}, lr={self.lr}")
        if self.l2 > 0 and self.lr_growth != 1:
            raise ValueError("l2 needs a constant lr (lr_growth 1): the paper schedule's step grows past 1/l2, and Cor 6.2's (1 - lr*l2)^T assumes one step")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")


# The normalized schedule's default step: on d = n = 100, width 1000 it reaches loss 1e-30 at the paper
# schedule's network (normalized margin and KKT residual equal to 4 digits) in 1471 steps instead of 72737;
# at lr 0.01 the margin at 1e-30 is 18% lower (the steps no longer follow gradient flow).
NORMALIZED_LR = 0.003


def normalized_schedule(spec: TrainSpec, **changes: Any) -> TrainSpec:
    """``spec`` on the normalized schedule at its default step (lr NORMALIZED_LR, lr_growth 1), with ``changes``
    on top (they may set lr too). The one place where that triple is spelled out."""
    return replace(spec, **{"schedule": "normalized", "lr": NORMALIZED_LR, "lr_growth": 1.0, **changes})


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


def margin_gradient_step(H: Tensor, X: Tensor, v: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sum_i weights_i * grad_theta N(x_i) for each of S nets, analytically: dW: (S, width, d), db, dv: (S, width).

    H: (S, n, width) hidden activations relu(w_j . x_i + b_j); X: (S, n, d); v: (S, width); weights: (S, n).
    grad_{w_j} N(x) = v_j 1[w_j.x + b_j > 0] x,  grad_{b_j} N(x) = v_j 1[...],  grad_{v_j} N(x) = relu(w_j.x + b_j).
    """
    active_weighted = (H > 0).to(X.dtype) * weights[:, :, None] * v[:, None, :]  # (S, n, width); relu(z) > 0 iff z > 0
    dv = torch.bmm(H.transpose(1, 2), weights[:, :, None])[:, :, 0]
    return torch.bmm(active_weighted.transpose(1, 2), X), active_weighted.sum(1), dv


def preactivations(X: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """X: (S, n, d), W: (S, width, d), b: (S, width) -> (S, n, width), the values w_j . x_i + b_j of each net."""
    return torch.bmm(X, W.transpose(1, 2)) + b[:, None, :]


def outputs(H: Tensor, v: Tensor) -> Tensor:
    """H: (S, n, width) hidden activations relu(Z), v: (S, width) -> N(x_i) of each net: (S, n).

    One matrix-vector product per net, not one bmm: on the CPU, MKL rounds a gemv and a batched gemm with one
    column differently, while every other product of the step gives each net the same bits in any batch.
    """
    return torch.stack([h @ u for h, u in zip(H, v, strict=True)])


def train(
    net: TwoLayerNet,
    X: Tensor,
    y: Tensor,
    spec: TrainSpec,
    *,
    seed: int = 0,
    progress: bool = False,
    description: str = "train",
) -> tuple[TwoLayerNet, TrainReport]:
    """Gradient descent with the schedule and stopping rules of ``spec``; returns the last finite net.

    The one-net case of ``train_batch``.

    Args:
        net: initial parameters (not modified).
        X: (n, d) training inputs, same device and dtype as the net.
        y: (n,) labels in {-1, +1}.
        spec: loss, schedule, trained layers, L2, batch size and stopping rules.
        seed: seed of the SGD shuffles (unused for full-batch GD).
        progress: show a tqdm bar with the iteration count and log10 of the loss.
        description: label of the progress bar.
    """
    ((trained, report),) = train_batch([net], X[None], y[None], spec, seeds=[seed], progress=progress, description=description)
    return trained, report


def train_batch(
    nets: Sequence[TwoLayerNet],
    X: Tensor,
    y: Tensor,
    spec: TrainSpec,
    *,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    description: str = "train",
) -> list[tuple[TwoLayerNet, TrainReport]]:
    """``train`` for S nets of one shape at once, each on its own data: batched products, one loop, one report each.

    Each net follows exactly the iterations ``train`` would give it alone: the nets share the step count and
    the learning rate, every other quantity (loss, step size, stop rule, SGD shuffle) is per net, and a net
    that stops leaves the batch. On the CPU each net's result is bitwise that of ``train`` whatever shares its
    batch (tests/test_train.py checks this); a report's ``seconds`` is the wall time until that net stopped.

    Args:
        nets: S initial parameter sets of equal shape (not modified).
        X: (S, n, d) training inputs, one set per net, same device and dtype as the nets.
        y: (S, n) labels in {-1, +1}.
        spec: loss, schedule, trained layers, L2, batch size and stopping rules, shared by all nets.
        seeds: seed of each net's SGD shuffles (None: 0 for every net; unused for full-batch GD).
        progress: show a tqdm bar with the iteration count and the largest log10 loss still training.
        description: label of the progress bar.
    """
    S, n = X.shape[0], X.shape[1]
    seeds = tuple(seeds) if seeds is not None else (0,) * S
    if not (len(nets) == S == y.shape[0] == len(seeds)) or y.shape[1] != n:
        raise ValueError(f"{len(nets)} nets, {len(seeds)} seeds, inputs {tuple(X.shape)} and labels {tuple(y.shape)} disagree")
    batch = _Batch.of(nets, X, y)
    with tqdm(desc=description, unit="it", disable=not progress, mininterval=1.0, leave=False) as bar:
        run = _Run(spec, batch, seeds, bar)
        while batch.ids:
            # A full pass over every net's data: loss, margins and stop rules; then the steps until the next one.
            training = _stop_checks(run, batch, _full_pass(batch, spec))
            _steps(run, batch, training)
    return [run.done[i] for i in range(S)]


# The pieces of train_batch's loop. A net's id is its index in ``nets``. The nets still training are the rows
# of the batched tensors in ``_Batch``, which alone removes rows; every per-net number is in a dict keyed by id.


@dataclass
class _Examples:
    """One step's examples of each net still training: all n of them (GD) or an SGD mini-batch of m."""

    H: Tensor  # (S, m, width) hidden activations relu(Z)
    y: Tensor  # (S, m) labels
    s: Tensor  # (S, m) log(-loss'(q_i))
    X: Tensor  # (S, m, d) inputs
    log_scale: dict[int, float]  # per net: log sum_i -loss'(q_i), a mini-batch's scaled by n / m
    dW: Tensor | None = None  # sum_i softmax(s)_i y_i grad N(x_i) once computed: (S, width, d) ...
    db: Tensor | None = None  # ... (S, width) ...
    dv: Tensor | None = None  # ... (S, width)

    def gradient(self) -> tuple[Tensor, Tensor, Tensor]:
        assert self.dW is not None and self.db is not None and self.dv is not None, "computed in _step"
        return self.dW, self.db, self.dv


@dataclass
class _Batch:
    """The nets still training: row k of every tensor belongs to net ``ids[k]``."""

    ids: list[int]
    W: Tensor  # (S, width, d)
    b: Tensor  # (S, width)
    v: Tensor  # (S, width)
    X: Tensor  # (S, n, d)
    y: Tensor  # (S, n)
    order: Tensor  # (S, n) each net's current SGD shuffle
    H: Tensor | None = None  # (S, n, width) relu(Z) of the last full pass
    s: Tensor | None = None  # (S, n) log(-loss'(q_i)) of the last full pass
    examples: _Examples | None = None  # the current step's

    @classmethod
    def of(cls, nets: Sequence[TwoLayerNet], X: Tensor, y: Tensor) -> _Batch:
        W, b, v = (torch.stack([getattr(net, name) for net in nets]) for name in ("W", "b", "v"))
        return cls(ids=list(range(len(nets))), W=W, b=b, v=v, X=X, y=y, order=torch.arange(X.shape[1]).repeat(len(nets), 1))

    def drop(self, ids: Collection[int]) -> None:
        """Remove the rows of the nets ``ids`` from every batched tensor, the current step's included."""
        rows = [row for row, i in enumerate(self.ids) if i not in ids]
        if len(rows) == len(self.ids):
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.ids = [self.ids[row] for row in rows]
        for holder in [self] if self.examples is None else [self, self.examples]:
            for field in fields(holder):
                value = getattr(holder, field.name)
                if isinstance(value, Tensor):
                    setattr(holder, field.name, value.index_select(0, index.to(value.device)))


class _Pass(NamedTuple):
    """One net's numbers from a full pass over its data (read back in one device-to-host transfer)."""

    log_L: float  # log L(theta), data loss only
    log_scale: float  # log sum_i -loss'(q_i)
    q_max: float  # max_i |q_i|
    q_min: float  # min_i q_i
    sq_norm: float | None = None  # ||theta||^2, only when a normalized-margin target needs it


class _Finite(NamedTuple):
    """A net's last parameters with a finite loss: row ``row`` of the batched W, b, v of that pass."""

    W: Tensor
    b: Tensor
    v: Tensor
    row: int
    log_L: float
    q_min: float


class _StepSize(NamedTuple):
    """One net's step: theta <- shrink * theta + e^{log_step} sum_i softmax(s)_i y_i grad N(x_i)."""

    log_step: float  # log(lr_t * sum_i -loss'(q_i)), never formed apart
    lr: float  # lr_t
    shrink: float  # 1 - lr_t * lambda (Thm 6.2: w <- (1 - eta lambda) w - eta grad L)

    @property
    def finite(self) -> bool:
        return self.log_step <= _LOG_FLOAT_MAX and self.shrink > 0


class _Run:
    """What the nets share (step count, learning rate, clock, progress bar), each net's L2 decay, last step
    size and last finite parameters, and the results of the nets that stopped."""

    def __init__(self, spec: TrainSpec, batch: _Batch, seeds: Sequence[int], bar: tqdm) -> None:
        self.spec, self.bar = spec, bar
        self.n = n = batch.X.shape[1]
        self.batch_size = n if spec.batch_size is None else min(spec.batch_size, n)  # examples per step
        self.per_epoch = math.ceil(n / self.batch_size)
        self.steps_per_pass = self.per_epoch if spec.batch_size is not None else 1  # SGD: a full pass per epoch
        self.shuffles = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.log_target = math.log(spec.target_loss) if spec.target_loss is not None else -math.inf
        self.it, self.lr = 0, spec.lr
        self.decay = dict.fromkeys(batch.ids, 1.0)  # prod_t (1 - lr_t * l2) per net
        self.last_lr = dict.fromkeys(batch.ids, spec.lr)  # lr_t of each net's last step (normalized: lr / L)
        # What a net returns when it stops (so that a failure can be inspected); at first its initial parameters.
        self.last_finite = {i: _Finite(batch.W, batch.b, batch.v, i, math.inf, -math.inf) for i in batch.ids}
        self.done: dict[int, tuple[TwoLayerNet, TrainReport]] = {}
        self.start = time.perf_counter()

    def finish(self, i: int, reason: StopReason) -> None:
        """Net i stops: its result is its last finite parameters."""
        W, b, v, row, log_L, q_min = self.last_finite[i]
        report = TrainReport(
            iterations=self.it,
            log10_loss=log_L / math.log(10),
            min_margin=q_min,
            stop_reason=reason,
            seconds=time.perf_counter() - self.start,
            final_lr=self.last_lr[i] if self.spec.schedule == "normalized" else self.lr,
            weight_decay=self.decay[i],
            nonfinite_iteration=self.it if reason == "nonfinite" else None,
        )
        self.done[i] = (TwoLayerNet(W=W[row].clone(), b=b[row].clone(), v=v[row].clone()), report)

    def advance(self, training: dict[int, _Pass], left: int) -> None:
        """Count a step: the learning rate grows every growth_every steps; the bar shows the worst loss."""
        self.it += 1
        if self.it % self.spec.growth_every == 0:
            self.lr *= self.spec.lr_growth
        if not self.bar.disable and self.it % 1000 == 0:
            self.bar.update(1000)
            worst = max(stats.log_L for stats in training.values()) / math.log(10)
            self.bar.set_postfix(log10_loss=f"{worst:.2f}", training=left, refresh=False)


def _full_pass(batch: _Batch, spec: TrainSpec) -> dict[int, _Pass]:
    """Every net on all its data: keeps relu(Z) and log(-loss'(q)) in the batch, returns each net's numbers."""
    batch.H = torch.relu(preactivations(batch.X, batch.W, batch.b))  # (S, n, width)
    q = batch.y * outputs(batch.H, batch.v)  # (S, n) margins y_i N(x_i)
    batch.s = log_neg_loss_derivative(q, spec.loss)  # (S, n)
    columns = [torch.logsumexp(log_loss_terms(q, spec.loss), 1), torch.logsumexp(batch.s, 1), q.abs().amax(1), q.amin(1)]
    if spec.target_normalized_margin is not None:
        columns.append(batch.W.square().sum((1, 2)) + batch.b.square().sum(1) + batch.v.square().sum(1))
    return {i: _Pass(*values) for i, values in zip(batch.ids, torch.stack(columns, 1).tolist(), strict=True)}


def _stop_checks(run: _Run, batch: _Batch, stats: dict[int, _Pass]) -> dict[int, _Pass]:
    """Stops the nets whose loss is not finite or that reached a target or a cap; returns the others' numbers."""
    out_of_time = run.spec.max_seconds is not None and time.perf_counter() - run.start > run.spec.max_seconds
    reasons: dict[int, StopReason] = {}
    for row, i in enumerate(batch.ids):
        reason = _stop_reason(stats[i], run, out_of_time)
        if reason != "nonfinite":
            run.last_finite[i] = _Finite(batch.W, batch.b, batch.v, row, stats[i].log_L, stats[i].q_min)
        if reason is not None:
            reasons[i] = reason
    _stop(run, batch, reasons)
    return {i: stats[i] for i in batch.ids}


def _stop_reason(stats: _Pass, run: _Run, out_of_time: bool) -> StopReason | None:
    """The first stop rule, in the order below, that a net with these numbers meets (None: it trains on)."""
    spec = run.spec
    if not (math.isfinite(stats.log_L) and math.isfinite(stats.q_max)):
        return "nonfinite"
    if stats.log_L < run.log_target:
        return "target_loss"
    if spec.target_margin is not None and stats.q_min >= spec.target_margin:
        return "target_margin"
    if spec.target_normalized_margin is not None and stats.sq_norm is not None and stats.q_min >= spec.target_normalized_margin * stats.sq_norm:
        return "target_normalized_margin"
    if run.it >= spec.max_iters:
        return "max_iters"
    if out_of_time:
        return "max_seconds"
    return None


def _stop(run: _Run, batch: _Batch, reasons: dict[int, StopReason]) -> None:
    """The nets in ``reasons`` stop, each for its reason, and leave the batch."""
    for i, reason in reasons.items():
        run.finish(i, reason)
    batch.drop(reasons)


def _steps(run: _Run, batch: _Batch, training: dict[int, _Pass]) -> None:
    """The steps until the next full pass: one (GD), or the epoch's mini-batches (SGD); none past max_iters."""
    for _ in range(run.steps_per_pass):
        if not _step(run, batch, training):
            return
        run.advance(training, len(batch.ids))
        if run.it >= run.spec.max_iters:
            return


def _step(run: _Run, batch: _Batch, training: dict[int, _Pass]) -> bool:
    """One GD or SGD step of every net in the batch; False, and no step, once no net is left to take it."""
    spec = run.spec
    if not batch.ids:
        return False
    batch.examples = examples = _examples(run, batch, training)  # batch.drop filters it in place
    sizes = {i: _step_size(run.lr, training[i].log_L, examples.log_scale[i], spec) for i in batch.ids}
    _stop(run, batch, {i: "nonfinite" for i in batch.ids if not sizes[i].finite})  # the step would overflow
    if not batch.ids:
        return False
    examples.dW, examples.db, examples.dv = margin_gradient_step(examples.H, examples.X, batch.v, torch.softmax(examples.s, 1) * examples.y)
    if spec.stationarity is not None and spec.l2 > 0:
        _stop(run, batch, dict.fromkeys(_stationary(batch, examples, spec), "stationary"))
        if not batch.ids:
            return False
    _update(batch, examples, [sizes[i] for i in batch.ids], spec)
    for i in batch.ids:
        run.decay[i] *= sizes[i].shrink
        run.last_lr[i] = sizes[i].lr
    batch.examples = None
    return True


def _examples(run: _Run, batch: _Batch, training: dict[int, _Pass]) -> _Examples:
    """This step's examples: all of them (GD), or the next mini-batch of each net's seeded shuffle (SGD)."""
    assert batch.H is not None and batch.s is not None, "set by _full_pass"
    if run.spec.batch_size is None:
        return _Examples(batch.H, batch.y, batch.s, batch.X, {i: training[i].log_scale for i in batch.ids})
    k = run.it % run.per_epoch  # the k-th mini-batch of the epoch
    if k == 0:
        batch.order = torch.stack([torch.randperm(run.n, generator=run.shuffles[i]) for i in batch.ids])
    rows = batch.order[:, k * run.batch_size : (k + 1) * run.batch_size].to(batch.X.device)  # (S, m)
    nets_of = torch.arange(len(batch.ids), device=batch.X.device)[:, None]
    X, y = batch.X[nets_of, rows], batch.y[nets_of, rows]
    if k == 0:  # the first mini-batch of an epoch reuses the full pass
        H, s = batch.H[nets_of, rows], batch.s[nets_of, rows]
    else:
        H = torch.relu(preactivations(X, batch.W, batch.b))
        s = log_neg_loss_derivative(y * outputs(H, batch.v), run.spec.loss)
    log_scale = [value + math.log(run.n / rows.shape[1]) for value in torch.logsumexp(s, 1).tolist()]
    return _Examples(H, y, s, X, dict(zip(batch.ids, log_scale, strict=True)))


def _step_size(lr: float, log_L: float, log_scale: float, spec: TrainSpec) -> _StepSize:
    """A net's step at learning rate lr, in logs (L goes far below 1e-308): the paper schedule's lr_t is lr,
    the normalized schedule's lr / L. The learning rate enters the update here only."""
    if spec.schedule == "paper":
        log_lr, lr_now = math.log(lr), lr
    else:
        log_lr = math.log(lr) - log_L
        lr_now = math.exp(min(log_lr, _LOG_FLOAT_MAX))
    return _StepSize(log_step=log_lr + log_scale, lr=lr_now, shrink=1.0 - lr_now * spec.l2)


def _update(batch: _Batch, examples: _Examples, sizes: list[_StepSize], spec: TrainSpec) -> None:
    """Each net's (row's) step; new tensors, not in place, since the last finite parameters may be the old ones."""
    W, (dW, db, dv) = batch.W, examples.gradient()
    step = torch.tensor([math.exp(size.log_step) for size in sizes], dtype=W.dtype, device=W.device)  # (S,)
    if spec.l2 > 0:  # only the trained weights decay (layers "first": b and v stay as initialized)
        factor = torch.tensor([size.shrink for size in sizes], dtype=W.dtype, device=W.device)  # (S,)
        batch.W = factor[:, None, None] * batch.W
        if spec.layers == "all":
            batch.b, batch.v = factor[:, None] * batch.b, factor[:, None] * batch.v
    batch.W = batch.W + step[:, None, None] * dW
    if spec.layers == "all":
        batch.b, batch.v = batch.b + step[:, None] * db, batch.v + step[:, None] * dv


def _stationary(batch: _Batch, examples: _Examples, spec: TrainSpec) -> list[int]:
    """The nets with ||grad (L + lambda/2 ||theta||^2)|| <= spec.stationarity * lambda ||theta|| over the trained weights.

    grad L = -sum_i -loss'(q_i) y_i grad N(x_i) = -e^{log_scale} (dW, db, dv), so the ratio is
    ||theta - c (dW, db, dv)|| / ||theta|| with c = e^{log_scale} / lambda. At a stationary point
    theta = sum_i (-loss'(q_i) / lambda) y_i grad N(x_i): the KKT stationarity of Vardi et al.'s problem (2),
    with multipliers -loss'(q_i) / lambda >= 0 (up to the rescaling that makes min_i q_i = 1).
    """
    W, b, v, (dW, db, dv) = batch.W, batch.b, batch.v, examples.gradient()
    log_c = [examples.log_scale[i] - math.log(spec.l2) for i in batch.ids]
    c = torch.tensor([math.exp(min(value, _LOG_FLOAT_MAX)) for value in log_c], dtype=W.dtype, device=W.device)
    pairs = [(W, dW, (1, 2))] if spec.layers == "first" else [(W, dW, (1, 2)), (b, db, 1), (v, dv, 1)]
    residual = sum((p - c.view(-1, *[1] * (p.dim() - 1)) * g).square().sum(dims) for p, g, dims in pairs)
    size = sum(p.square().sum(dims) for p, _, dims in pairs)
    return [i for i, flag in zip(batch.ids, (residual <= spec.stationarity**2 * size).tolist(), strict=True) if flag]
