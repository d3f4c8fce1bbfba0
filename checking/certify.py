"""Certified lower bounds on the minimal L2 flip of a two-layer ReLU net, from a convex relaxation.

Over the ball ||delta|| <= r every preactivation z_j = w_j . (x + delta) + b_j lies in [l_j, u_j] =
[z_j(x) - r ||w_j||, z_j(x) + r ||w_j||] (exact for one layer). With a_j = s v_j (s = sign N(x)) the
triangle relaxation of each unstable ReLU (l_j < 0 < u_j) bounds a_j relu(z_j) from below by a line:
  a_j > 0: a_j relu(z) >= a_j alpha_j z for any alpha_j in [0, 1] (relu is convex);
  a_j < 0: a_j relu(z) >= a_j u_j (z - l_j) / (u_j - l_j) (the chord above relu on [l_j, u_j]);
stable neurons are exact (z_j or 0). The sum is an affine function C + g . delta of delta, whose minimum over
the ball is C - r ||g||, so for *every* alpha

    min_{||delta|| <= r} s N(x + delta) >= C(alpha) - r ||g(alpha)||.

Maximizing over alpha (alpha-CROWN, Xu et al. 2021) reaches the triangle relaxation's own optimum (the
objective is convex in delta and linear in alpha, so min and max swap). Where the bound is positive no
perturbation of norm <= r flips x; bisection on r finds the largest such r. Any alpha gives a valid bound,
so the answer is sound however far the ascent got; floating-point error is covered by asking the bound to
exceed the rounding bound of ``marginbench.checking.flips``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginbench.checking.flips import rounding_bound, rounding_bound_within
from marginbench.models.two_layer import TwoLayerNet

BISECTION_STEPS = 20  # the radius to 2^-20 of the bracket
ALPHA_STEPS = 10  # projected-gradient steps on alpha per radius (warm-started from the last radius)
ASCENT_DTYPE = torch.float32  # the ascent only chooses alpha; every bound that decides a radius is in the net's dtype


def _terms(W_norm: Tensor, Z: Tensor, a: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The relaxation at radii r: (n,) for preactivations Z: (n, width), coefficients a: (n, width) of relu(z_j)
    in s N and row norms W_norm: (width,). Returns (fixed_slope (n, width), fixed_const (n,), free (n, width)):
    s N(x + delta) >= sum_j (fixed_slope_j + free_j alpha_j) z_j(x + delta) + fixed_const for alpha in [0, 1]."""
    reach = r[:, None] * W_norm[None, :]
    lo, up = Z - reach, Z + reach
    unstable = (lo < 0) & (up > 0)
    chord = up / (up - lo).clamp_min(torch.finfo(Z.dtype).tiny)  # slope of the chord on [l_j, u_j]
    upper_side = unstable & (a < 0)
    # exact slopes of stable active neurons, chords for a_j < 0; a_j > 0 on unstable neurons is alpha's
    fixed_slope = torch.where(lo >= 0, a, 0.0) + torch.where(upper_side, a * chord, 0.0)
    fixed_const = torch.where(upper_side, -a * chord * lo, 0.0).sum(1)
    return fixed_slope, fixed_const, torch.where(unstable & (a > 0), a, 0.0)


def _slope(terms: tuple[Tensor, Tensor, Tensor], alpha: Tensor) -> Tensor:
    """(n, width) the slopes at alpha: s N(x + delta) >= sum_j slope_j z_j(x + delta) + fixed_const."""
    fixed_slope, _, free = terms
    return torch.addcmul(fixed_slope, free, alpha)


def _bound(W: Tensor, Z: Tensor, r: Tensor, terms: tuple[Tensor, Tensor, Tensor], alpha: Tensor) -> Tensor:
    """C(alpha) - r ||g(alpha)|| per row, with g = slope @ W: (n, d) the affine part's gradient in delta."""
    slope = _slope(terms, alpha)
    return (slope * Z).sum(1) + terms[1] - r * (slope @ W).norm(dim=1)


def _ascend(W: Tensor, Z: Tensor, a: Tensor, r: Tensor, alpha: Tensor, steps: int) -> Tensor:
    """``steps`` of Adam (lr 0.1) on the bound over alpha in [0, 1], projected after each step, with the gradient
    in closed form: d/d alpha_j [C - r ||g||] = free_j (z_j - r (g / ||g||) . w_j)."""
    terms = _terms(W.norm(dim=1), Z, a, r)
    free = terms[2]
    free_z, free_r = free * Z, free * r[:, None]  # (n, width) each, fixed at this radius
    alpha = alpha.to(Z.dtype).clone()
    optimizer = torch.optim.Adam([alpha], lr=0.1, maximize=True, fused=True)
    for _ in range(steps):
        g = _slope(terms, alpha) @ W  # (n, d); the bound's value itself is not needed here
        direction = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)  # (n, d)
        alpha.grad = torch.addcmul(free_z, free_r, direction @ W.T, value=-1.0)
        optimizer.step()
        alpha.clamp_(0.0, 1.0)
    return alpha


def relaxation_bound(
    net: TwoLayerNet, Z: Tensor, s: Tensor, r: Tensor, alpha: Tensor | None = None, steps: int = ALPHA_STEPS, *, ascent: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """A lower bound on min_{||delta|| <= r_i} s_i N(x_i + delta) per row, and the slopes alpha that gave it.

    Args:
        Z: (n, width) the preactivations w_j . x_i + b_j of the points; s: (n,) signs to flip; r: (n,) radii.
        alpha: (n, width) starting slopes in [0, 1] (default: CROWN's choice, 1 where u_j > -l_j).
        steps: ascent steps on alpha (Adam on the bound; each iterate is projected back to [0, 1]), taken in
            ASCENT_DTYPE on ``ascent`` = (W, Z) in that dtype where given; the bound itself is in Z's dtype.
    Returns: (bound (n,), alpha (n, width)).
    """
    a = s[:, None] * net.v[None, :]  # (n, width) coefficient of relu(z_j) in s N
    W_norm = net.W.norm(dim=1)
    if alpha is None:
        reach = r[:, None] * W_norm[None, :]
        alpha = (Z + reach > -(Z - reach)).to(Z.dtype)  # u_j > -l_j
    alpha = alpha.detach()
    if steps > 0:
        W_a, Z_a = ascent if ascent is not None else (net.W, Z)
        alpha = _ascend(W_a, Z_a, a.to(Z_a.dtype), r.to(Z_a.dtype), alpha, steps).to(Z.dtype)
    return _bound(net.W, Z, r, _terms(W_norm, Z, a, r), alpha), alpha


def certified_radius(net: TwoLayerNet, X: Tensor, r_max: Tensor, *, steps: int = BISECTION_STEPS) -> Tensor:
    """(n,) a radius per row of X: (n, d) within which no perturbation flips sign N(x), certified by the
    triangle relaxation; 0 where N(x) is within rounding of 0. ``r_max``: (n,) the bisection's upper end (a
    known flip's norm, or any radius); a row certified at r_max gets r_max.
    """
    X = X.detach()
    with torch.no_grad():
        Z = net.preactivations(X)  # (n, width), the same at every radius
        N0 = torch.relu(Z) @ net.v
    s = torch.sign(N0)
    lo = torch.zeros_like(r_max)
    hi = r_max.clone()
    norm = X.norm(dim=1)

    def slack(r: Tensor) -> Tensor:  # the rounding error of the bound's own terms, all below the net's at norm ||x|| + r
        return rounding_bound_within(net, norm + r)

    ascent = (net.W.to(ASCENT_DTYPE), Z.to(ASCENT_DTYPE))
    ok_at_max, alpha = relaxation_bound(net, Z, s, hi, ascent=ascent)
    certified_max = ok_at_max > slack(hi)
    lo = torch.where(certified_max, hi, lo)
    live = (s != 0) & ~certified_max & (N0.abs() > rounding_bound(net, X))
    for _ in range(steps):
        if not bool(live.any()):
            break
        mid = 0.5 * (lo + hi)
        value, alpha = relaxation_bound(net, Z, s, mid, alpha, ascent=ascent)
        ok = value > slack(mid)
        lo = torch.where(live & ok, mid, lo)
        hi = torch.where(live & ~ok, mid, hi)
    return torch.where(s != 0, lo, 0.0)


def bracket_top(best_norm: Tensor, d: int, search_radius: float) -> Tensor:
    """(n,) the bisection's upper end: the best known flip's norm, or ``search_radius`` sqrt(d) where none."""
    return torch.where(best_norm.isfinite(), best_norm, search_radius * math.sqrt(d))
