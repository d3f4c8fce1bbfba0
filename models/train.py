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

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
MAX_ITERS = 2_000_000  # the cap of a spec that gives none: far past the paper schedule's ~72,000 steps
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
    max_iters: int | None = None  # cap on iterations, reported as stop_reason "max_iters"; None: the recipe's (MAX_ITERS)
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
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")

    @property
    def iteration_cap(self) -> int:
        """max_iters, or MAX_ITERS where the spec leaves the cap to the recipe."""
        return self.max_iters if self.max_iters is not None else MAX_ITERS


# The normalized schedule's default step: on d = n = 100, width 1000 it reaches loss 1e-30 at the paper
# schedule's network (normalized margin and KKT residual equal to 4 digits) in 1471 steps instead of 72737;
# at lr 0.01 the margin at 1e-30 is 18% lower (the steps no longer follow gradient flow).
NORMALIZED_LR = 0.003


def normalized_schedule(spec: TrainSpec, **changes: object) -> TrainSpec:
    """``spec`` on the normalized schedule with its own step size and no growth (then ``changes``)."""
    return dataclasses.replace(spec, schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0, **changes)  # type: ignore[arg-type]

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
    W, b, v = (torch.stack([getattr(net, name) for net in nets]) for name in ("W", "b", "v"))
    batch = n if spec.batch_size is None else min(spec.batch_size, n)
    per_epoch = math.ceil(n / batch)
    shuffles = [torch.Generator().manual_seed(seed) for seed in seeds]
    order = torch.arange(n).repeat(S, 1)  # (S, n): each net's current SGD shuffle
    log_target = math.log(spec.target_loss) if spec.target_loss is not None else -math.inf
    lr = spec.lr
    decay = dict.fromkeys(range(S), 1.0)  # prod_t (1 - lr_t * l2) per net
    last_lr = dict.fromkeys(range(S), lr)  # normalized schedule: the step size lr / L of each net's last step
    start = time.perf_counter()
    bar = tqdm(desc=description, unit="it", disable=not progress, mininterval=1.0, leave=False)
    # Row k of the batched tensors belongs to net active[k]. For each net, the last parameters whose loss was
    # finite, as (W, b, v, row, log L, min q): what it returns, so that a failure can be inspected.
    active = list(range(S))
    last_finite = {i: (W, b, v, i, math.inf, -math.inf) for i in active}
    done: dict[int, tuple[TwoLayerNet, TrainReport]] = {}
    it = 0

    def finish(i: int, reason: StopReason, nonfinite_at: int | None = None) -> None:
        W_i, b_i, v_i, row, log_L, q_min = last_finite[i]
        report = TrainReport(
            iterations=it,
            log10_loss=log_L / math.log(10),
            min_margin=q_min,
            stop_reason=reason,
            seconds=time.perf_counter() - start,
            final_lr=last_lr[i] if spec.schedule == "normalized" else lr,
            weight_decay=decay[i],
            nonfinite_iteration=nonfinite_at,
        )
        done[i] = (TwoLayerNet(W=W_i[row].clone(), b=b_i[row].clone(), v=v_i[row].clone()), report)

    try:
        while active:
            H = torch.relu(preactivations(X, W, b))  # (S, n, width)
            q = y * outputs(H, v)  # (S, n) margins y_i N(x_i)
            s = log_neg_loss_derivative(q, spec.loss)  # (S, n)
            # One device-to-host transfer per iteration: per net log L, log sum_i -loss'(q_i), max |q_i|, min q_i
            # (and ||theta||^2 when a normalized-margin target needs it).
            columns = [torch.logsumexp(log_loss_terms(q, spec.loss), 1), torch.logsumexp(s, 1), q.abs().amax(1), q.amin(1)]
            if spec.target_normalized_margin is not None:
                columns.append(W.square().sum((1, 2)) + b.square().sum(1) + v.square().sum(1))
            stats = torch.stack(columns, 1).tolist()
            out_of_time = spec.max_seconds is not None and time.perf_counter() - start > spec.max_seconds
            keep = []
            for row, (i, (log_L, _, q_max, q_min, *sq_norm)) in enumerate(zip(active, stats, strict=True)):
                if not (math.isfinite(log_L) and math.isfinite(q_max)):
                    finish(i, "nonfinite", it)
                    continue
                last_finite[i] = (W, b, v, row, log_L, q_min)
                if log_L < log_target:
                    finish(i, "target_loss")
                elif spec.target_margin is not None and q_min >= spec.target_margin:
                    finish(i, "target_margin")
                elif sq_norm and q_min >= spec.target_normalized_margin * sq_norm[0]:
                    finish(i, "target_normalized_margin")
                elif it >= spec.iteration_cap:
                    finish(i, "max_iters")
                elif out_of_time:
                    finish(i, "max_seconds")
                else:
                    keep.append(row)
            log_scale = [stats[row][1] for row in keep]
            # The normalized schedule's step is lr / L (in logs, since L goes far below 1e-308); the paper's is lr.
            log_norm = [stats[row][0] for row in keep] if spec.schedule == "normalized" else [0.0] * len(keep)
            if len(keep) < len(active):
                active = [active[row] for row in keep]
                W, b, v, X, y, H, s, order = _rows(keep, W, b, v, X, y, H, s, order)
            if not active:
                break
            for _ in range(per_epoch if spec.batch_size is not None else 1):
                if spec.batch_size is not None:
                    if it % per_epoch == 0:
                        order = torch.stack([torch.randperm(n, generator=shuffles[i]) for i in active])
                    rows = order[:, (it % per_epoch) * batch : (it % per_epoch + 1) * batch].to(X.device)  # (S, batch)
                    nets_of = torch.arange(len(active), device=X.device)[:, None]
                    Hb, yb, sb, Xb = H[nets_of, rows], y[nets_of, rows], s[nets_of, rows], X[nets_of, rows]
                    if it % per_epoch != 0:  # the first batch of an epoch reuses the full pass above
                        Hb = torch.relu(preactivations(Xb, W, b))
                        sb = log_neg_loss_derivative(yb * outputs(Hb, v), spec.loss)
                    log_scale_b = [value + math.log(n / rows.shape[1]) for value in torch.logsumexp(sb, 1).tolist()]
                else:
                    Hb, yb, sb, log_scale_b, Xb = H, y, s, log_scale, X
                # Per net: log lr_t, and log(lr_t * sum_i -loss'(q_i)), never formed apart. The learning rate
                # enters here only.
                log_lr = [math.log(lr) - value for value in log_norm]
                log_step = [a + value for a, value in zip(log_lr, log_scale_b, strict=True)]
                lr_now = [lr] * len(log_lr) if spec.schedule == "paper" else [math.exp(min(a, _LOG_FLOAT_MAX)) for a in log_lr]
                shrink = [1.0 - value * spec.l2 for value in lr_now]  # Thm 6.2: w <- (1 - eta lambda) w - eta grad L
                fine = [row for row, value in enumerate(log_step) if value <= _LOG_FLOAT_MAX and shrink[row] > 0]
                if len(fine) < len(active):
                    for row in sorted(set(range(len(active))) - set(fine)):
                        finish(active[row], "nonfinite", it)
                    active, log_norm, lr_now, log_step, shrink, log_scale_b = (
                        [values[row] for row in fine] for values in (active, log_norm, lr_now, log_step, shrink, log_scale_b)
                    )
                    W, b, v, X, y, H, s, order, Hb, yb, sb, Xb = _rows(fine, W, b, v, X, y, H, s, order, Hb, yb, sb, Xb)
                    if not active:
                        break
                dW, db, dv = margin_gradient_step(Hb, Xb, v, torch.softmax(sb, 1) * yb)
                if spec.stationarity is not None and spec.l2 > 0:
                    moving = [row for row, flag in enumerate(_stationary(W, b, v, dW, db, dv, log_scale_b, spec)) if not flag]
                    if len(moving) < len(active):
                        for row in sorted(set(range(len(active))) - set(moving)):
                            finish(active[row], "stationary")
                        active, log_norm, lr_now, log_step, shrink = (
                            [values[row] for row in moving] for values in (active, log_norm, lr_now, log_step, shrink)
                        )
                        W, b, v, X, y, H, s, order, dW, db, dv = _rows(moving, W, b, v, X, y, H, s, order, dW, db, dv)
                        if not active:
                            break
                step = torch.tensor([math.exp(value) for value in log_step], dtype=W.dtype, device=W.device)  # (S,)
                if spec.l2 > 0:  # only the trained weights decay (layers "first": b and v stay as initialized)
                    factor = torch.tensor(shrink, dtype=W.dtype, device=W.device)  # (S,)
                    W = factor[:, None, None] * W
                    if spec.layers == "all":
                        b, v = factor[:, None] * b, factor[:, None] * v
                W = W + step[:, None, None] * dW
                if spec.layers == "all":
                    b, v = b + step[:, None] * db, v + step[:, None] * dv
                for i, value, factor_i in zip(active, lr_now, shrink, strict=True):
                    decay[i] *= factor_i
                    last_lr[i] = value
                it += 1
                if it % spec.growth_every == 0:
                    lr *= spec.lr_growth
                if progress and it % 1000 == 0:
                    bar.update(1000)
                    worst = max(stats[row][0] for row in keep) / math.log(10)
                    bar.set_postfix(log10_loss=f"{worst:.2f}", training=len(active), refresh=False)
                if it >= spec.iteration_cap:
                    break
    finally:
        bar.close()
    return [done[i] for i in range(S)]


def _stationary(W: Tensor, b: Tensor, v: Tensor, dW: Tensor, db: Tensor, dv: Tensor, log_scale: list[float], spec: TrainSpec) -> list[bool]:
    """Per net: ||grad (L + lambda/2 ||theta||^2)|| <= spec.stationarity * lambda ||theta|| over the trained weights.

    grad L = -sum_i -loss'(q_i) y_i grad N(x_i) = -e^{log_scale} (dW, db, dv), so the ratio is
    ||theta - c (dW, db, dv)|| / ||theta|| with c = e^{log_scale} / lambda. At a stationary point
    theta = sum_i (-loss'(q_i) / lambda) y_i grad N(x_i): the KKT stationarity of Vardi et al.'s problem (2),
    with multipliers -loss'(q_i) / lambda >= 0 (up to the rescaling that makes min_i q_i = 1).
    W, dW: (S, width, d); b, v, db, dv: (S, width); log_scale: S floats.
    """
    c = torch.tensor([math.exp(min(value - math.log(spec.l2), _LOG_FLOAT_MAX)) for value in log_scale], dtype=W.dtype, device=W.device)
    pairs = [(W, dW, (1, 2))] if spec.layers == "first" else [(W, dW, (1, 2)), (b, db, 1), (v, dv, 1)]
    residual = sum((p - c.view(-1, *[1] * (p.dim() - 1)) * g).square().sum(dims) for p, g, dims in pairs)
    size = sum(p.square().sum(dims) for p, _, dims in pairs)
    return (residual <= spec.stationarity**2 * size).tolist()


def _rows(rows: list[int], *batched: Tensor) -> tuple[Tensor, ...]:
    """The given rows (nets) of each batched tensor, in order."""
    index = torch.tensor(rows, dtype=torch.long)
    return tuple(t.index_select(0, index.to(t.device)) for t in batched)
