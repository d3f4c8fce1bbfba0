"""The state of a batched training run (``train_batch``): the batch holder, the only place rows are removed,
the numbers each net carries, and the batched products of a step.

A net's id is its index in the nets given to ``train_batch``. The nets still training are the rows of the
batched tensors in ``Batch``; every per-net number is in a dict keyed by id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from marginbench.models.train_spec import LOG_FLOAT_MAX, StopReason, TrainReport, TrainSpec
from marginbench.models.two_layer import TwoLayerNet


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


# The bf16 products (precision bf16): bf16 inputs, float32 accumulation, on the CPU's AMX / AVX512_BF16 units
# (oneDNN) or CUDA tensor cores. The elementwise passes over the (n x width) matrices cost as much as the
# products once those are fast, so the layout saves passes: the bias rides in the product (a ones column of X),
# relu is fused into it (oneDNN post-op on the CPU), the mask is one comparison written as bf16 0/1, and
# dv comes out of the gradient product instead of its own pass over relu(Z).
BF16_COLUMNS = 32  # the bf16 inputs' columns are padded to a multiple of this (one AMX tile row: 32 bf16)


def bf16_inputs(X: Tensor) -> tuple[Tensor, Tensor]:
    """X: (S, n, d) -> (Xa, Xa^T), its bf16 copies for the products, made once per training: Xa (S, n, D) =
    [X | 1 | 0 ...] with D = d + 1 rounded up to BF16_COLUMNS (the ones column carries the bias), and Xa^T
    (S, D, n) contiguous (the gradient product's left factor)."""
    S, n, d = X.shape
    Xa = X.new_zeros((S, n, -(-(d + 1) // BF16_COLUMNS) * BF16_COLUMNS), dtype=torch.bfloat16)
    Xa[:, :, :d], Xa[:, :, d] = X, 1
    return Xa, Xa.transpose(1, 2).contiguous()


def _fused_linear_relu(x: Tensor, w: Tensor) -> Tensor:
    """relu(x w^T) for 2-d bf16 x, w on the CPU: oneDNN's matmul with a relu post-op (one pass instead of two)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "relu", [], "")


def hidden_bf16(Xa: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Xa: (S, n, D) of ``bf16_inputs``, W: (S, width, d), b: (S, width) -> (S, n, width + 1) bf16: relu(X W^T + b)
    from bf16 factors with float32 accumulation, rounded to bf16, and a last column of zeros (``outputs_bf16``'s)."""
    S, width, d = W.shape
    Wa = W.new_zeros((S, width + 1, Xa.shape[2]), dtype=torch.bfloat16)  # row width stays 0: the spare column
    Wa[:, :width, :d], Wa[:, :width, d] = W, b
    if Xa.device.type == "cpu" and torch.backends.mkldnn.is_available():
        if S == 1:
            return _fused_linear_relu(Xa[0], Wa[0])[None]
        return torch.stack([_fused_linear_relu(x, w) for x, w in zip(Xa, Wa, strict=True)])
    return torch.bmm(Xa, Wa.transpose(1, 2)).relu_()


def outputs_bf16(H: Tensor, v: Tensor) -> Tensor:
    """H: (S, n, width + 1) of ``hidden_bf16``, v: (S, width) -> N(x_i) of each net: (S, n) in float32.

    A bf16 product rounds its result to bf16 (8 bits: steps of 0.5 at a margin of 70), so it is taken twice:
    N0 = bf16(H v), then H v - N0 with N0 in H's spare column and -1 in v's, whose rounding is 2^-9 of the
    difference; N0 + that difference in float32 is the float32 sum of the bf16 H and v. On trained nets (arc,
    loss 1e-30; d = 64 and 100, margins 72 ... 98) the largest error against float64 is 0.19 ... 0.23 so, the
    bf16 inputs' own, against 0.36 ... 0.39 from one rounded product."""
    S, _, columns = H.shape
    u = H.new_zeros((S, columns, 1))
    u[:, :-1, 0] = v
    first = torch.bmm(H, u)  # (S, n, 1) bf16
    H[:, :, -1:] = first
    u[:, -1, 0] = -1
    rest = torch.bmm(H, u)
    H[:, :, -1] = 0
    return first[:, :, 0].float() + rest[:, :, 0].float()


def margin_gradient_step_bf16(H: Tensor, XaT: Tensor, W: Tensor, b: Tensor, v: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``margin_gradient_step`` from bf16 products: H (S, n, width + 1) of ``hidden_bf16``, XaT (S, D, n) of
    ``bf16_inputs``, W, b, v, weights float32 -> dW: (S, width, d), db, dv: (S, width) in float32. H becomes
    the mask 1[Z > 0] in place (no fresh (n x width) buffer: -7% a step at d = 300, n = 5196, width 1000).

    One product P = [X | 1]^T diag(weights) 1[Z > 0]: (S, D, width), i.e. G_j = sum_i w_i 1[z_ij > 0] x_i and
    c_j = sum_i w_i 1[z_ij > 0]. Then dW_j = v_j G_j, db_j = v_j c_j and, since relu(z_ij) = 1[z_ij > 0] (w_j . x_i
    + b_j), dv_j = sum_i w_i relu(z_ij) = w_j . G_j + b_j c_j: no pass over relu(Z) for dv.
    """
    width, d = W.shape[1], W.shape[2]
    active = torch.gt(H, 0, out=H)  # (S, n, width + 1) bf16 0/1 over H itself (spare column unused; H is not read after)
    P = torch.bmm(XaT * weights.to(torch.bfloat16)[:, None, :], active)[:, : d + 1, :width].float()  # (S, d + 1, width)
    G, c = P[:, :d].transpose(1, 2), P[:, d]  # (S, width, d), (S, width)
    return G * v[:, :, None], c * v, (G * W).sum(2) + c * b


@dataclass
class Examples:
    """One step's examples of each net still training: all n of them (GD) or an SGD mini-batch of m."""

    H: Tensor  # (S, m, width) hidden activations relu(Z)
    y: Tensor  # (S, m) labels
    s: Tensor  # (S, m) log(-loss'(q_i))
    X: Tensor  # (S, m, d) inputs
    log_scale: dict[int, float]  # per net: log sum_i -loss'(q_i), a mini-batch's scaled by n / m
    XaT: Tensor | None = None  # precision bf16: (S, D, m) of ``bf16_inputs`` (H is then hidden_bf16's)
    dW: Tensor | None = None  # sum_i softmax(s)_i y_i grad N(x_i) once computed: (S, width, d) ...
    db: Tensor | None = None  # ... (S, width) ...
    dv: Tensor | None = None  # ... (S, width)

    def gradient(self) -> tuple[Tensor, Tensor, Tensor]:
        assert self.dW is not None and self.db is not None and self.dv is not None, "computed in _step"
        return self.dW, self.db, self.dv


@dataclass
class Batch:
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
    examples: Examples | None = None  # the current step's
    Xa: Tensor | None = None  # precision bf16: X's bf16 copies (``bf16_inputs``), else None
    XaT: Tensor | None = None

    @classmethod
    def of(cls, nets: Sequence[TwoLayerNet], X: Tensor, y: Tensor, *, bf16: bool = False) -> Batch:
        W, b, v = (torch.stack([getattr(net, name) for net in nets]) for name in ("W", "b", "v"))
        Xa, XaT = bf16_inputs(X) if bf16 else (None, None)
        return cls(ids=list(range(len(nets))), W=W, b=b, v=v, X=X, y=y, order=torch.arange(X.shape[1]).repeat(len(nets), 1), Xa=Xa, XaT=XaT)

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


class Pass(NamedTuple):
    """One net's numbers from a full pass over its data (read back in one device-to-host transfer)."""

    log_L: float  # log L(theta), data loss only
    log_scale: float  # log sum_i -loss'(q_i)
    q_max: float  # max_i |q_i|
    q_min: float  # min_i q_i
    sq_norm: float | None = None  # ||theta||^2, only when a normalized-margin target needs it


class Finite(NamedTuple):
    """A net's last parameters with a finite loss: row ``row`` of the batched W, b, v of that pass."""

    W: Tensor
    b: Tensor
    v: Tensor
    row: int
    log_L: float
    q_min: float


class StepSize(NamedTuple):
    """One net's step: theta <- shrink * theta + e^{log_step} sum_i softmax(s)_i y_i grad N(x_i)."""

    log_step: float  # log(lr_t * sum_i -loss'(q_i)), never formed apart
    lr: float  # lr_t
    shrink: float  # 1 - lr_t * lambda (Thm 6.2: w <- (1 - eta lambda) w - eta grad L)

    @property
    def finite(self) -> bool:
        return self.log_step <= LOG_FLOAT_MAX and self.shrink > 0


class Run:
    """What the nets share (step count, learning rate, clock, progress bar), each net's L2 decay, last step
    size and last finite parameters, and the results of the nets that stopped."""

    def __init__(self, spec: TrainSpec, batch: Batch, seeds: Sequence[int], bar: tqdm) -> None:
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
        self.last_finite = {i: Finite(batch.W, batch.b, batch.v, i, math.inf, -math.inf) for i in batch.ids}
        self.done: dict[int, tuple[TwoLayerNet, TrainReport]] = {}
        self.next_check = 0  # the iteration of the next check for a dead or stalled net (train._stuck)
        self.still: dict[int, tuple[float, int]] = {}  # per net: (log L, the iteration since which it has not moved)
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
            final_lr=self.last_lr[i] if self.spec.schedule != "paper" else self.lr,
            weight_decay=self.decay[i],
            nonfinite_iteration=self.it if reason == "nonfinite" else None,
        )
        self.done[i] = (TwoLayerNet(W=W[row].clone(), b=b[row].clone(), v=v[row].clone()), report)

    def advance(self, training: dict[int, Pass], left: int) -> None:
        """Count a step: the learning rate grows every growth_every steps; the bar shows the worst loss."""
        self.it += 1
        if self.it % self.spec.growth_every == 0:
            self.lr *= self.spec.lr_growth
        if not self.bar.disable and self.it % 1000 == 0:
            self.bar.update(1000)
            worst = max(stats.log_L for stats in training.values()) / math.log(10)
            self.bar.set_postfix(log10_loss=f"{worst:.2f}", training=left, refresh=False)
