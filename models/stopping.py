"""When training stops: one rule, in one order, for every trainer (``train.train_batch`` and
``three_layer.train_three_layer``).

At each full pass over a net's data the trainer measures the loss and the margins and asks ``stop_reason``;
the first rule of ORDER that the net meets is its stop reason, so two rules that hold at once always give the
same one. Two more stops come from the step itself and follow a full pass's: "nonfinite" where the step would
overflow (the two-layer kernel's log-domain step size), then "stationary" (``TrainSpec.stationarity``, with
l2 > 0 only: it needs the regularized gradient).
"""

from __future__ import annotations

import math
import time

from marginbench.models.train_spec import CHECK_EVERY, STALL_ITERS, StopReason, TrainSpec

# A full pass's stop rules, first match wins: a net whose numbers are NaN/inf stops before anything is read
# from them; a target reached beats a net that cannot train, which beats a cap.
ORDER: tuple[StopReason, ...] = ("nonfinite", "target_loss", "target_margin", "target_normalized_margin", "dead", "stalled", "max_iters", "max_seconds")


def stop_reason(
    spec: TrainSpec, *, log_L: float, q_max: float, q_min: float, sq_norm: float | None, iteration: int, out_of_time: bool, stuck: StopReason | None = None
) -> StopReason | None:
    """The first rule of ORDER that a net with these numbers meets (None: it trains on).

    Args:
        spec: the targets and caps.
        log_L: log L(theta), the data loss.
        q_max: max_i |y_i N(x_i)|; q_min: min_i y_i N(x_i).
        sq_norm: ||theta||^2 over every parameter (needed only for spec.target_normalized_margin).
        iteration: the steps taken so far.
        out_of_time: whether spec.max_seconds has passed (``out_of_time``).
        stuck: "dead" or "stalled" where the trainer's check (``Watch``) found the net cannot train.
    """
    if not (math.isfinite(log_L) and math.isfinite(q_max)):
        return "nonfinite"
    if spec.target_loss is not None and log_L < math.log(spec.target_loss):
        return "target_loss"
    if spec.target_margin is not None and q_min >= spec.target_margin:
        return "target_margin"
    if spec.target_normalized_margin is not None:
        assert sq_norm is not None, "a normalized-margin target needs ||theta||^2"
        if q_min >= spec.target_normalized_margin * sq_norm:
            return "target_normalized_margin"
    if stuck is not None:
        return stuck
    if iteration >= spec.iteration_cap:
        return "max_iters"
    if out_of_time:
        return "max_seconds"
    return None


def out_of_time(spec: TrainSpec, start: float) -> bool:
    """Whether spec.max_seconds has passed since ``start`` (a time.perf_counter() reading)."""
    return spec.max_seconds is not None and time.perf_counter() - start > spec.max_seconds


class Watch:
    """The checks for a net that cannot train, every CHECK_EVERY iterations (on a full pass).

    dead: the trainer finds that no step can ever move the net (its gradient is exactly 0: which nets that are
    depends on the architecture, so the trainer says whether the net is alive). stalled: the step grows
    (lr_growth > 1) and the loss has stayed bitwise the same for STALL_ITERS iterations. A constant step that
    stops moving the loss is at a rest point, not stuck: its cap ends it.
    """

    def __init__(self) -> None:
        self.next_check = 0  # the iteration of the next check
        self.still: dict[int, tuple[float, int]] = {}  # per net: (log L, the iteration since which it has not moved)

    def due(self, iteration: int) -> bool:
        """Whether the check is due at this iteration (then the next one is CHECK_EVERY iterations on)."""
        if iteration < self.next_check:
            return False
        self.next_check = iteration + CHECK_EVERY
        return True

    def stuck(self, spec: TrainSpec, net: int, iteration: int, log_L: float, alive: bool) -> StopReason | None:
        """At a due check: "dead", "stalled" or None for net ``net`` with loss log_L, alive as its trainer found it."""
        last, since = self.still.get(net, (math.nan, iteration))
        if last != log_L:  # it moved (or this is the first check): count from here
            self.still[net] = (log_L, iteration)
        if not alive:
            return "dead"
        if spec.lr_growth > 1 and last == log_L and iteration - since >= STALL_ITERS:
            return "stalled"
        return None
