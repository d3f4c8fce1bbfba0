"""The state of a batched training run (``train_batch``): the batch holder, the only place rows are removed,
and the numbers each net carries. The batched products of a step are in ``marginbench.models.kernels``.

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

from marginbench.models.kernels import bf16_inputs
from marginbench.models.stopping import Watch
from marginbench.models.train_spec import LOG_FLOAT_MAX, StopReason, TrainReport, TrainSpec
from marginbench.models.two_layer import TwoLayerNet


@dataclass
class Examples:
    """One step's examples of each net still training: all n of them (GD) or an SGD mini-batch of m."""

    H: Tensor  # (S, m, width) hidden activations relu(Z) (bf16: (S, m, C), see kernels.hidden_bf16)
    y: Tensor  # (S, m) labels
    s: Tensor  # (S, m) log(-loss'(q_i))
    X: Tensor  # (S, m, d) inputs
    log_scale: dict[int, float]  # per net: log sum_i -loss'(q_i), a mini-batch's scaled by n / m
    XaT: Tensor | None = None  # precision bf16: (S, D, m) of ``bf16_inputs`` (H is then hidden_bf16's)
    shift: Tensor | None = None  # (S,) where H is ``kernels.full_pass_bf16``'s weighted mask, not relu(Z)
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
    shift: Tensor | None = None  # (S,) where H is the weighted mask (``kernels.full_pass_bf16``)

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
        self.it, self.lr = 0, spec.lr
        self.decay = dict.fromkeys(batch.ids, 1.0)  # prod_t (1 - lr_t * l2) per net
        self.last_lr = dict.fromkeys(batch.ids, spec.lr)  # lr_t of each net's last step (normalized: lr / L)
        # What a net returns when it stops (so that a failure can be inspected); at first its initial parameters.
        self.last_finite = {i: Finite(batch.W, batch.b, batch.v, i, math.inf, -math.inf) for i in batch.ids}
        self.done: dict[int, tuple[TwoLayerNet, TrainReport]] = {}
        self.watch = Watch()  # the checks for a dead or stalled net (train._stuck)
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
