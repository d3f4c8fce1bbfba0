"""The papers' closed-form perturbation directions, with exact minimal scales along them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from marginbench.attacks.base import AttackResult, SharedPerturbation
from marginbench.attacks.rays import flip_intervals, smallest_common_scale, smallest_verified
from marginbench.models.diagnostics import MARGIN_SLACK, margin_set
from marginbench.models.two_layer import TwoLayerNet


@dataclass(frozen=True, kw_only=True)
class UniversalZ:
    """Vardi et al. 2022, Theorem 4.1 / Figure 1: the universal direction z = sum_{i in I} y_i x_i.

    I is the margin set {i : y_i N(x_i) <= (1 + slack) min_j y_j N(x_j)}; each example x_i is moved along
    -y_i z/||z||. Reported per example: the smallest scale c_i with a strict flip along its ray; shared:
    the smallest single c that flips every example of I at once (Figure 1's y-axis). Both are exact
    (read off the piecewise-linear profile of N along the rays, see ``rays``) up to a relative 1e-9 nudge
    into the flip region. A ray with no flip up to ``max_norm_factor * sqrt(d)`` is a failure.

    Args:
        slack: relative slack of the margin set (the paper: 10%).
        max_norm_factor: rays are searched for t in (0, max_norm_factor * sqrt(d)].
    """

    slack: float = MARGIN_SLACK
    max_norm_factor: float = 10.0

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> perturbations -c_i y_i z/||z|| and the shared scale on I."""
        q = y * net(X)
        on_margin = margin_set(q, slack=self.slack)
        z = (y[on_margin, None] * X[on_margin]).sum(0)  # (d,) Theorem 4.1's direction
        z_norm = float(z.norm())
        if z_norm == 0.0:
            nothing = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
            return AttackResult(delta=torch.zeros_like(X), found=nothing, extras={"margin_set_size": float(on_margin.sum())})
        U = -y[:, None] * (z / z_norm)[None, :]  # (n, d) unit directions of x_i - y_i c z_hat
        intervals = flip_intervals(net, X, U, t_max=self.max_norm_factor * math.sqrt(X.shape[1]))
        t = smallest_verified(net, X, U, intervals)  # (n,)
        found = t.isfinite()
        delta = t.where(found, 0.0)[:, None] * U
        common = smallest_common_scale(net, X, U, intervals, on_margin)
        shared = None
        if math.isfinite(common):
            shared = SharedPerturbation(rows=on_margin, delta=common * U * on_margin[:, None].to(U.dtype))
        return AttackResult(delta=delta, found=found, shared=shared, extras={"margin_set_size": float(on_margin.sum())})
