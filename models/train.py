"""Gradient descent on L(theta) = sum_i loss(y_i N(x_i)) [+ lambda/2 ||trained weights||^2].

The recipes (``TrainSpec``), the loss and the report live in ``train_spec``; the batched products in ``kernels``;
the batch holder and each net's numbers in ``train_state``; this module is the loop. ``marginbench.models.reference``
holds the plain-PyTorch recipe it is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from marginbench.models.kernels import (
    full_pass_bf16,
    margin_gradient_step,
    margin_gradient_step_bf16,
    outputs,
    preactivations,
    step_gflop,
)
from marginbench.models.precision import choose_precision, matmul_backend
from marginbench.models.stopping import out_of_time, stop_reason
from marginbench.models.train_spec import (
    LOG_FLOAT_MAX,
    LOSSES,
    MAX_ITERS,
    NORMALIZED_LR,
    SCHEDULES,
    SUBSPACE_TRAIN,
    StopReason,
    TrainReport,
    TrainSpec,
    log_loss_terms,
    log_neg_loss_derivative,
    log_reduction,
    normalized_schedule,
)
from marginbench.models.train_state import Batch, Examples, Finite, Pass, Run, StepSize
from marginbench.models.two_layer import TwoLayerNet

__all__ = ["LOSSES", "MAX_ITERS", "NORMALIZED_LR", "SCHEDULES", "SUBSPACE_TRAIN", "TrainReport", "TrainSpec", "normalized_schedule", "train", "train_batch"]


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
    if spec.precision is not None:  # compute in spec.precision; hand the nets back in the dtype they came in
        choice = choose_precision(spec.precision, X.device, step_gflop=step_gflop(n, X.shape[2], nets[0].width))
        dtype, given = choice.dtype, X.dtype
        cast = [net.to(X.device, dtype) for net in nets]
        with matmul_backend(choice.used, X.device):
            trained = _train_batch(cast, X.to(dtype), y.to(dtype), spec, seeds, progress, description, bf16=choice.used == "bf16")
        return [(net.to(X.device, given), report) for net, report in trained]
    return _train_batch(nets, X, y, spec, seeds, progress, description, bf16=False)


def _train_batch(
    nets: Sequence[TwoLayerNet], X: Tensor, y: Tensor, spec: TrainSpec, seeds: Sequence[int], progress: bool, description: str, *, bf16: bool
) -> list[tuple[TwoLayerNet, TrainReport]]:
    """``train_batch``'s loop, in X's dtype; with ``bf16``, the large products from bf16 copies of X."""
    S = X.shape[0]
    batch = Batch.of(nets, X, y, bf16=bf16)
    with tqdm(desc=description, unit="it", disable=not progress, mininterval=1.0, leave=False) as bar:
        run = Run(spec, batch, seeds, bar)
        while batch.ids:
            # A full pass over every net's data: loss, margins and stop rules; then the steps until the next one.
            training = _stop_checks(run, batch, _full_pass(batch, spec))
            _steps(run, batch, training)
    return [run.done[i] for i in range(S)]


def _full_pass(batch: Batch, spec: TrainSpec) -> dict[int, Pass]:
    """Every net on all its data: keeps relu(Z) and log(-loss'(q)) in the batch, returns each net's numbers."""
    batch.H = None  # the last pass's (n x width) buffer goes back before this one is made (reused, still in cache)
    if batch.Xa is not None:  # precision bf16: bf16 products (H: relu(Z), or the weighted mask, in C >= width columns)
        last_s = batch.s if spec.batch_size is None else None  # GD: the mask in the same pass, softmax shifted by last_s
        batch.H, q, batch.shift = full_pass_bf16(batch.Xa, batch.W, batch.b, batch.v, batch.y, last_s, spec.loss)
    else:
        batch.H = torch.relu(preactivations(batch.X, batch.W, batch.b))  # (S, n, width)
        q = batch.y * outputs(batch.H, batch.v)  # (S, n) margins y_i N(x_i)
    batch.s = log_neg_loss_derivative(q, spec.loss)  # (S, n)
    divisor = log_reduction(spec, q.shape[1])  # the mean loss: L and its gradient / n
    columns = [torch.logsumexp(log_loss_terms(q, spec.loss), 1) - divisor, torch.logsumexp(batch.s, 1) - divisor, q.abs().amax(1), q.amin(1)]
    if spec.target_normalized_margin is not None:
        columns.append(batch.W.square().sum((1, 2)) + batch.b.square().sum(1) + batch.v.square().sum(1))
    return {i: Pass(*values) for i, values in zip(batch.ids, torch.stack(columns, 1).tolist(), strict=True)}


def _stop_checks(run: Run, batch: Batch, stats: dict[int, Pass]) -> dict[int, Pass]:
    """Stops the nets that meet a stop rule (``stopping.stop_reason``); returns the others' numbers."""
    late = out_of_time(run.spec, run.start)
    stuck = _stuck(run, batch, stats)
    reasons: dict[int, StopReason] = {}
    for row, i in enumerate(batch.ids):
        net = stats[i]
        reason = stop_reason(
            run.spec, log_L=net.log_L, q_max=net.q_max, q_min=net.q_min, sq_norm=net.sq_norm, iteration=run.it, out_of_time=late, stuck=stuck.get(i)
        )
        if reason != "nonfinite":
            run.last_finite[i] = Finite(batch.W, batch.b, batch.v, row, net.log_L, net.q_min)
        if reason is not None:
            reasons[i] = reason
    _stop(run, batch, reasons)
    return {i: stats[i] for i in batch.ids}


def _stuck(run: Run, batch: Batch, stats: dict[int, Pass]) -> dict[int, StopReason]:
    """At a check of ``run.watch`` (on a full pass, so no product of its own): the nets that cannot train.

    A net is dead when at every training point either relu(Z) is 0 for every neuron, so that the point's gradient
    (v_j 1[z > 0] x, v_j 1[z > 0], relu(z)) is exactly 0, or (full batch, no L2) its weight softmax(s)_i in the step
    is 0 in floating point: the step is exactly 0, forever, and no step, however large, moves the net (the paper
    schedule's would grow until it overflowed, after ~750,000 iterations).
    """
    if not run.watch.due(run.it):
        return {}
    assert batch.H is not None and batch.s is not None, "set by _full_pass"
    carries = batch.H.ne(0).any(2)  # (S, n): the points where some ReLU is on (bf16: with a weight not 0)
    if run.spec.batch_size is None and run.spec.l2 == 0:  # ... and whose share softmax(s)_i of the step is not 0 in
        carries &= torch.softmax(batch.s, 1) > 0  # floating point (L2's shrinking could bring a vanished share back)
    alive = carries.any(1).tolist()  # one (S,) read-back per CHECK_EVERY iterations
    reasons = {i: run.watch.stuck(run.spec, i, run.it, stats[i].log_L, live) for i, live in zip(batch.ids, alive, strict=True)}
    return {i: reason for i, reason in reasons.items() if reason is not None}


def _stop(run: Run, batch: Batch, reasons: dict[int, StopReason]) -> None:
    """The nets in ``reasons`` stop, each for its reason, and leave the batch."""
    for i, reason in reasons.items():
        run.finish(i, reason)
    batch.drop(reasons)


def _steps(run: Run, batch: Batch, training: dict[int, Pass]) -> None:
    """The steps until the next full pass: one (GD), or the epoch's mini-batches (SGD); none past max_iters."""
    for _ in range(run.steps_per_pass):
        if not _step(run, batch, training):
            return
        run.advance(training, len(batch.ids))
        if run.it >= run.spec.iteration_cap:
            return


def _step(run: Run, batch: Batch, training: dict[int, Pass]) -> bool:
    """One GD or SGD step of every net in the batch; False, and no step, once no net is left to take it."""
    spec = run.spec
    if not batch.ids:
        return False
    batch.examples = examples = _examples(run, batch, training)  # batch.drop filters it in place
    if spec.schedule != "arc":  # the arc step needs the gradient's norm: sized below
        sizes = {i: _step_size(run.lr, training[i].log_L, examples.log_scale[i], spec) for i in batch.ids}
        _stop(run, batch, {i: "nonfinite" for i in batch.ids if not sizes[i].finite})  # the step would overflow
        if not batch.ids:
            return False
    if examples.XaT is not None:
        parameters = (batch.W, batch.b, batch.v, examples.s, examples.y, examples.shift)
        examples.dW, examples.db, examples.dv = margin_gradient_step_bf16(examples.H, examples.XaT, *parameters)
    else:
        examples.dW, examples.db, examples.dv = margin_gradient_step(examples.H, examples.X, batch.v, torch.softmax(examples.s, 1) * examples.y)
    if spec.schedule == "arc":
        sizes = _arc_sizes(run.lr, batch, examples, spec, training)
        _stop(run, batch, {i: "nonfinite" for i in batch.ids if not sizes[i].finite})
        if not batch.ids:
            return False
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


def _examples(run: Run, batch: Batch, training: dict[int, Pass]) -> Examples:
    """This step's examples: all of them (GD), or the next mini-batch of each net's seeded shuffle (SGD)."""
    assert batch.H is not None and batch.s is not None, "set by _full_pass"
    if run.spec.batch_size is None:
        return Examples(batch.H, batch.y, batch.s, batch.X, {i: training[i].log_scale for i in batch.ids}, XaT=batch.XaT, shift=batch.shift)
    k = run.it % run.per_epoch  # the k-th mini-batch of the epoch
    if k == 0:
        batch.order = torch.stack([torch.randperm(run.n, generator=run.shuffles[i]) for i in batch.ids])
    rows = batch.order[:, k * run.batch_size : (k + 1) * run.batch_size].to(batch.X.device)  # (S, m)
    nets_of = torch.arange(len(batch.ids), device=batch.X.device)[:, None]
    X, y = batch.X[nets_of, rows], batch.y[nets_of, rows]
    Xa = batch.Xa[nets_of, rows] if batch.Xa is not None else None
    if k == 0:  # the first mini-batch of an epoch reuses the full pass
        H, s = batch.H[nets_of, rows], batch.s[nets_of, rows]
    elif Xa is not None:
        H, q, _ = full_pass_bf16(Xa, batch.W, batch.b, batch.v, y, None, run.spec.loss)
        s = log_neg_loss_derivative(q, run.spec.loss)
    else:
        H = torch.relu(preactivations(X, batch.W, batch.b))
        s = log_neg_loss_derivative(y * outputs(H, batch.v), run.spec.loss)
    log_scale = [value + math.log(run.n / rows.shape[1]) - log_reduction(run.spec, run.n) for value in torch.logsumexp(s, 1).tolist()]
    XaT = Xa.transpose(1, 2).contiguous() if Xa is not None else None
    return Examples(H, y, s, X, dict(zip(batch.ids, log_scale, strict=True)), XaT=XaT)


def _step_size(lr: float, log_L: float, log_scale: float, spec: TrainSpec) -> StepSize:
    """A net's step at learning rate lr, in logs (L goes far below 1e-308): the paper schedule's lr_t is lr,
    the normalized schedule's lr / L. The learning rate enters the update here only."""
    if spec.schedule == "paper":
        log_lr, lr_now = math.log(lr), lr
    else:
        log_lr = math.log(lr) - log_L
        lr_now = math.exp(min(log_lr, LOG_FLOAT_MAX))
    return StepSize(log_step=log_lr + log_scale, lr=lr_now, shrink=1.0 - lr_now * spec.l2)


def _trained(batch: Batch, examples: Examples, spec: TrainSpec) -> list[tuple[Tensor, Tensor, tuple[int, ...]]]:
    """(parameter, its gradient direction, the dims that sum over one net) for each trained layer: W, and b, v
    unless only the first layer trains."""
    dW, db, dv = examples.gradient()
    pairs = [(batch.W, dW, (1, 2))]
    return pairs if spec.layers == "first" else [*pairs, (batch.b, db, (1,)), (batch.v, dv, (1,))]


def _arc_sizes(rho: float, batch: Batch, examples: Examples, spec: TrainSpec, training: dict[int, Pass]) -> dict[int, StepSize]:
    """The arc schedule's steps: length rho ||theta|| along G = (dW, db, dv) = -grad L / L' (so along -grad log L),
    over the trained weights: e^{log_step} = rho ||theta|| / ||G||, and lr_t = that / L' for the report. A net
    whose loss is below spec.late_below steps spec.late_lr instead of rho, where the spec sets one."""
    pairs = _trained(batch, examples, spec)
    sq = torch.stack([sum(p.square().sum(dims) for p, _, dims in pairs), sum(g.square().sum(dims) for _, g, dims in pairs)], 1)  # (S, 2)
    log_late = math.log(spec.late_below)
    sizes = {}
    for i, (theta_sq, g_sq) in zip(batch.ids, sq.tolist(), strict=True):
        step = spec.late_lr if spec.late_lr is not None and training[i].log_L < log_late else rho
        log_step = math.log(step) + 0.5 * (math.log(theta_sq) - math.log(g_sq)) if theta_sq > 0 and g_sq > 0 else math.inf
        sizes[i] = StepSize(log_step=log_step, lr=math.exp(min(log_step - examples.log_scale[i], LOG_FLOAT_MAX)), shrink=1.0)
    return sizes


def _update(batch: Batch, examples: Examples, sizes: list[StepSize], spec: TrainSpec) -> None:
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


def _stationary(batch: Batch, examples: Examples, spec: TrainSpec) -> list[int]:
    """The nets with ||grad (L + lambda/2 ||theta||^2)|| <= spec.stationarity * lambda ||theta|| over the trained weights.

    grad L = -sum_i -loss'(q_i) y_i grad N(x_i) = -e^{log_scale} (dW, db, dv), so the ratio is
    ||theta - c (dW, db, dv)|| / ||theta|| with c = e^{log_scale} / lambda. At a stationary point
    theta = sum_i (-loss'(q_i) / lambda) y_i grad N(x_i): the KKT stationarity of Vardi et al.'s problem (2),
    with multipliers -loss'(q_i) / lambda >= 0 (up to the rescaling that makes min_i q_i = 1).
    """
    log_c = [examples.log_scale[i] - math.log(spec.l2) for i in batch.ids]
    c = torch.tensor([math.exp(min(value, LOG_FLOAT_MAX)) for value in log_c], dtype=batch.W.dtype, device=batch.W.device)
    pairs = _trained(batch, examples, spec)
    residual = sum((p - c.view(-1, *[1] * (p.dim() - 1)) * g).square().sum(dims) for p, g, dims in pairs)
    size = sum(p.square().sum(dims) for p, _, dims in pairs)
    return [i for i, flag in zip(batch.ids, (residual <= spec.stationarity**2 * size).tolist(), strict=True) if flag]
