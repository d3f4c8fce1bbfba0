"""Gradient descent on L(theta) = sum_i loss(y_i N(x_i)) [+ lambda/2 ||trained weights||^2].

Two recipes share this one loop:
- Vardi et al. 2022, eq. (1) and Section 6 (the kkt family): all of W, b, v trained, exponential loss, full
  batch, learning rate 1e-5 multiplied by 1.1 every 100 iterations, stop once L < 1e-30.
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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from marginbench.models.two_layer import TwoLayerNet

LossName = Literal["exp", "logistic"]
LOSSES: tuple[str, ...] = ("exp", "logistic")
Layers = Literal["all", "first"]
StopReason = Literal["target_loss", "target_margin", "max_iters", "max_seconds", "nonfinite"]
_LOG_FLOAT_MAX = 709.0  # exp() of more overflows a float64


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """How to train; the defaults are Vardi et al.'s schedule (Section 6). See ``SUBSPACE_TRAIN`` for Melamed et al.'s."""

    loss: LossName = "exp"  # exp: e^{-q}; logistic: log(1 + e^{-q})
    lr: float = 1e-5  # initial learning rate
    lr_growth: float = 1.1  # the learning rate is multiplied by this ...
    growth_every: int = 100  # ... every this many iterations
    target_loss: float | None = 1e-30  # stop once L(theta) < target_loss (None: never)
    target_margin: float | None = None  # stop once min_i y_i N(x_i) >= target_margin (None: never)
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
        if self.target_margin is not None and not math.isfinite(self.target_margin):
            raise ValueError(f"target margin must be a finite number, got {self.target_margin}")
        if self.max_iters < 0:
            raise ValueError(f"max_iters must be >= 0, got {self.max_iters}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.layers not in ("all", "first"):
            raise ValueError(f"layers must be 'all' or 'first', got {self.layers!r}")
        if not (self.l2 >= 0 and self.lr * self.l2 < 1):
            raise ValueError(f"l2 must be >= 0 with lr * l2 < 1, got l2={self.l2}, lr={self.lr}")
        if self.l2 > 0 and self.lr_growth != 1:
            raise ValueError("l2 needs a constant learning rate (lr_growth 1): the decay (1 - lr*l2)^T assumes one step size")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")


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
        return self.stop_reason in ("target_loss", "target_margin")


def log_loss_terms(q: Tensor, loss: LossName) -> Tensor:
    """log loss(q_i) for margins q: (n,), exact for q up to ~1e300."""
    if loss == "exp":
        return -q
    # log(log(1 + e^{-q})): for q >= 0 write it as -q + log(log1p(u)/u), u = e^{-q}, where the ratio -> 1;
    # for small u use its series, since log1p(u)/u loses precision once u is subnormal.
    u = torch.exp(-q.clamp_min(0))
    ratio = torch.where(u > 1e-4, torch.log1p(u) / u.clamp_min(1e-4), 1 - u / 2 + u * u / 3)
    return torch.where(q >= 0, -q + torch.log(ratio), torch.log(torch.nn.functional.softplus(-q)))


def log_neg_loss_derivative(q: Tensor, loss: LossName) -> Tensor:
    """log(-loss'(q_i)): -q for exp; log sigmoid(-q) for logistic."""
    if loss == "exp":
        return -q
    return torch.nn.functional.logsigmoid(-q)


def margin_gradient_step(Z: Tensor, X: Tensor, v: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sum_i weights_i * grad_theta N(x_i), analytically, as (dW: (width, d), db: (width,), dv: (width,)).

    Z: (n, width) pre-activations w_j . x_i + b_j; X: (n, d); v: (width,); weights: (n,).
    grad_{w_j} N(x) = v_j 1[w_j.x + b_j > 0] x,  grad_{b_j} N(x) = v_j 1[...],  grad_{v_j} N(x) = relu(w_j.x + b_j).
    """
    active_weighted = (Z > 0).to(X.dtype) * weights[:, None] * v[None, :]  # (n, width)
    return active_weighted.T @ X, active_weighted.sum(0), torch.relu(Z).T @ weights


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

    Args:
        net: initial parameters (not modified).
        X: (n, d) training inputs, same device and dtype as the net.
        y: (n,) labels in {-1, +1}.
        spec: loss, schedule, trained layers, L2, batch size and stopping rules.
        seed: seed of the SGD shuffles (unused for full-batch GD).
        progress: show a tqdm bar with the iteration count and log10 of the loss.
        description: label of the progress bar.
    """
    W, b, v = net.W.clone(), net.b.clone(), net.v.clone()
    n = X.shape[0]
    batch = n if spec.batch_size is None else min(spec.batch_size, n)
    per_epoch = math.ceil(n / batch)
    shuffle = torch.Generator().manual_seed(seed)
    order = torch.arange(n)
    log_target = math.log(spec.target_loss) if spec.target_loss is not None else -math.inf
    lr, decay = spec.lr, 1.0
    start = time.perf_counter()
    bar = tqdm(desc=description, unit="it", disable=not progress, mininterval=1.0, leave=False)
    reason: StopReason = "max_iters"
    nonfinite_at: int | None = None
    log_L, q_min = math.inf, -math.inf
    last_finite = (W, b, v, log_L, q_min)
    it = 0
    try:
        while True:
            Z = X @ W.T + b  # (n, width)
            q = y * (torch.relu(Z) @ v)  # (n,) margins y_i N(x_i)
            s = log_neg_loss_derivative(q, spec.loss)  # (n,)
            # One device-to-host transfer per iteration: log L, log sum_i -loss'(q_i), max |q_i|, min q_i.
            log_L, log_scale, q_max, q_min = torch.stack(
                [torch.logsumexp(log_loss_terms(q, spec.loss), 0), torch.logsumexp(s, 0), q.abs().max(), q.min()]
            ).tolist()
            if not (math.isfinite(log_L) and math.isfinite(q_max)):
                reason, nonfinite_at = "nonfinite", it
                break
            last_finite = (W, b, v, log_L, q_min)
            if log_L < log_target:
                reason = "target_loss"
                break
            if spec.target_margin is not None and q_min >= spec.target_margin:
                reason = "target_margin"
                break
            if it >= spec.max_iters:
                break
            if spec.max_seconds is not None and time.perf_counter() - start > spec.max_seconds:
                reason = "max_seconds"
                break
            for _ in range(per_epoch if spec.batch_size is not None else 1):
                if spec.batch_size is not None:
                    if it % per_epoch == 0:
                        order = torch.randperm(n, generator=shuffle)
                    rows = order[(it % per_epoch) * batch : (it % per_epoch + 1) * batch].to(X.device)
                    Zb, yb, sb = Z[rows], y[rows], s[rows]
                    if it % per_epoch != 0:  # the first batch of an epoch reuses the full pass above
                        Zb = X[rows] @ W.T + b
                        sb = log_neg_loss_derivative(yb * (torch.relu(Zb) @ v), spec.loss)
                    log_scale_b = float(torch.logsumexp(sb, 0)) + math.log(n / rows.numel())
                    Xb = X[rows]
                else:
                    Zb, yb, sb, log_scale_b, Xb = Z, y, s, log_scale, X
                log_step = math.log(lr) + log_scale_b  # log(lr * sum_i -loss'(q_i)), never formed apart
                if log_step > _LOG_FLOAT_MAX:
                    reason, nonfinite_at = "nonfinite", it
                    break
                dW, db, dv = margin_gradient_step(Zb, Xb, v, torch.softmax(sb, 0) * yb)
                step = math.exp(log_step)
                shrink = 1.0 - lr * spec.l2  # Theorem 6.2: w <- (1 - eta lambda) w - eta grad L
                W = shrink * W + step * dW
                if spec.layers == "all":
                    b, v = shrink * b + step * db, shrink * v + step * dv
                decay *= shrink
                it += 1
                if it % spec.growth_every == 0:
                    lr *= spec.lr_growth
                if progress and it % 1000 == 0:
                    bar.update(1000)
                    bar.set_postfix(log10_loss=f"{log_L / math.log(10):.2f}", refresh=False)
                if it >= spec.max_iters:
                    break
            if reason == "nonfinite":
                break
    finally:
        bar.close()
    if reason == "nonfinite":
        # Hand back the last parameters whose loss was finite, so that the failure can be inspected.
        W, b, v, log_L, q_min = last_finite
    report = TrainReport(
        iterations=it,
        log10_loss=log_L / math.log(10),
        min_margin=q_min,
        stop_reason=reason,
        seconds=time.perf_counter() - start,
        final_lr=lr,
        weight_decay=decay,
        nonfinite_iteration=nonfinite_at,
    )
    return TwoLayerNet(W=W, b=b, v=v), report
