"""The papers' closed-form perturbation directions, with exact minimal scales along them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from marginbench.attacks.rays import flip_intervals, smallest_common_scale, smallest_verified
from marginbench.attacks.subspace import SubspaceProjection
from marginbench.checking.flips import proposable_flips
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult, SharedPerturbation
from marginbench.models.diagnostics import MARGIN_SLACK, margin_set, thm51_required_ell
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
    max_norm_factor: float = SEARCH_RADIUS

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


@dataclass(frozen=True, kw_only=True)
class SubspaceZ:
    """Melamed et al. 2023, Theorem 5.1: the off-manifold universal perturbation.

    With w_hat_i = Pi_{P-perp} w_i, I+- = {i : +-v_i > 0}, y0 = sign N(x0), and k_{y0} the number of
    neurons of I- (y0 = 1) or of I+ (y0 = -1) with <w_i, x0> >= 0 (here: w_i . x0 + b_i >= 0, the same for
    the theorem's bias-free nets),
        z = y0 alpha (sum_{i in I-} w_hat_i - sum_{i in I+} w_hat_i),  alpha = 8 sqrt(m) d |N(x0)| / (ell k_{y0}),
        ||z|| <= 8 sqrt(2) |N(x0)| (m / k_{y0}) sqrt(d / ell)   (w.p. >= 1 - 5(m e^{-ell/16} + d^{-1/2})),
    assuming ell >= 32 (m - 1) log(m^2 d). The theorem takes y0 = 1 w.l.o.g. (its proof), where N(x0) > 0;
    we write |N(x0)| so that for y0 = -1 the sign y0 is not cancelled by a negative N(x0) (which would push
    the wrong way). Where k_{y0} = 0 the theorem's z is undefined (alpha infinite): reported as not flipping.

    Reported per example (``example_facts``): thm51_k (k_{y0}), thm51_z_norm (||z||, inf where undefined),
    thm51_bound (the theorem's bound on ||z||), thm51_z_flips (a forward pass confirms a strict flip by
    z itself). The proposed perturbation is the exact minimal scale along the universal direction
    y0 (sum_{I-} w_hat_i - sum_{I+} w_hat_i) (see ``rays``), like ``UniversalZ``.

    Args:
        basis: (d, d - ell) orthonormal basis of the data subspace P.
        max_norm_factor: rays are searched for t up to max_norm_factor * sqrt(d) (further if z is longer).
    """

    basis: Tensor  # (d, d - ell) the dataset's P_basis
    max_norm_factor: float = SEARCH_RADIUS  # ray search range, in units of sqrt(d)

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> minimal scales along Theorem 5.1's direction, and the theorem's own z."""
        _n, d = X.shape
        m, ell = net.width, d - int(self.basis.shape[1])
        W_hat = SubspaceProjection(self.basis, "P-perp")(net.W)  # (m, d)
        minus, plus = net.v < 0, net.v > 0
        direction = W_hat[minus].sum(0) - W_hat[plus].sum(0)  # (d,) the universal direction, before y0
        N0 = net(X)
        y0 = torch.sign(N0)
        active = net.preactivations(X) >= 0  # (n, m)
        k = torch.where(y0 > 0, (active & minus[None, :]).sum(1), (active & plus[None, :]).sum(1)).to(X.dtype)
        defined = (k > 0) & (y0 != 0) & (ell > 0)
        k_safe = k.clamp_min(1.0)
        alpha = 8.0 * math.sqrt(m) * d * N0.abs() / (max(ell, 1) * k_safe)
        z = (y0 * alpha)[:, None] * direction[None, :]  # (n, d) Theorem 5.1's z
        z_norm = torch.where(defined, z.norm(dim=1), math.inf)
        bound = torch.where(defined, 8.0 * math.sqrt(2.0) * N0.abs() * (m / k_safe) * math.sqrt(d / max(ell, 1)), math.inf)
        z_flips = defined & proposable_flips(net, X, X + torch.where(defined[:, None], z, 0.0))

        U = y0[:, None] * (direction / direction.norm().clamp_min(torch.finfo(X.dtype).tiny))[None, :]
        finite = z_norm[z_norm.isfinite()]
        t_max = max(self.max_norm_factor * math.sqrt(d), 1.01 * float(finite.max()) if finite.numel() else 0.0)
        t = smallest_verified(net, X, U, flip_intervals(net, X, U, t_max=t_max))
        found = t.isfinite()
        facts = {"thm51_k": k, "thm51_z_norm": z_norm, "thm51_bound": bound, "thm51_z_flips": z_flips}
        extras = {
            "thm51_required_ell": thm51_required_ell(width=m, d=d),  # thm51_assumption is a run-level column
            "thm51_z_flip_fraction": float(z_flips.double().mean()),  # over all examples
            "thm51_z_defined_fraction": float(defined.double().mean()),  # k_{y0} > 0
        }
        return AttackResult(delta=torch.where(found, t, 0.0)[:, None] * U, found=found, extras=extras, example_facts=facts)
