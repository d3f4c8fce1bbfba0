"""Boundary walk: exact first crossings of the piecewise-linear net along candidate rays, then shrinking.

Gradient attacks stall where the gradient vanishes: on the Theorem 3.1 construction of Vardi et al. 2022
every neuron is off in a whole region around the data, N = 0 there, and a step that leaves x_i's own
neuron behind lands in that flat region (a tie, not a flip). This attack needs no gradient there. Along a
ray x + t u, N is piecewise linear in t with one breakpoint per neuron, so the first t with a strict sign
change is read off exactly (``rays.flip_intervals``; confirmed by a forward pass in
``rays.smallest_verified``). The candidate rays of example i:
  1. the segments toward the ``targets`` nearest attacked points on the other side (sign N(x_j) = -sign
     N(x_i)): the far end flips strictly, so the segment holds a first crossing whenever such a point exists;
  2. the direction -s grad N(x_i) (the nearest point of the zero set of x_i's own linear piece).
Shrinking: at the best crossing point p = x_i + t u found so far, N coincides with one affine piece
N_p(z) = g . z + c (g = grad N(p), the neurons active at p); the nearest point to x_i of {N_p = 0} gives a
new direction u' = -sign(N_p(x_i)) g, searched exactly from x_i; repeated ``refinements`` times or until no
ray improves. Last, a random search over directions near the best one, each searched exactly (a
Boundary-attack-like walk on the sphere of directions, with exact radial steps). Every answer is a verified
strict flip; the norm is exact along its ray up to a relative 1e-9 nudge into the flip region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from marginbench.attacks.rays import flip_intervals, smallest_verified
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult
from marginbench.models.two_layer import TwoLayerNet


@dataclass(frozen=True, kw_only=True)
class BoundaryWalk:
    """Exact crossings along segments to other-side points and local normals, then shrinking.

    Args:
        targets: per example, segments toward this many nearest attacked points of the other sign.
        refinements: at most this many rounds of re-aiming at the local affine piece's zero set.
        max_norm_factor: rays are searched for t in (0, max_norm_factor * sqrt(d)].
        search_rounds: rounds of random search over directions around the best one (0: none).
        search_rays: directions per example and round.
        search_sigma: initial spread of those directions; halved for an example after a round without gain.
        seed: seed of the random search.
    """

    targets: int = 32  # nearest other-side points per example
    refinements: int = 20  # shrinking rounds (stops early when no example improves)
    search_rounds: int = 30  # random-search rounds over directions after the refinements
    search_rays: int = 16  # directions tried per example and round
    search_sigma: float = 0.5  # initial angular spread of the tried directions (radians, roughly)
    seed: int = 0  # random search
    max_norm_factor: float = SEARCH_RADIUS  # search range of every ray, in units of sqrt(d)

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> the shortest verified crossing per example (labels unused)."""
        _n, d = X.shape
        t_max = self.max_norm_factor * math.sqrt(d)
        s = torch.sign(net(X))
        U = torch.cat([self._segments(X, s), _unit(-s[:, None] * _gradient(net, X))[:, None, :]], dim=1)
        t, u = self._shortest(net, X, U, t_max)
        for _ in range(self.refinements):
            reached = t.isfinite()
            if not bool(reached.any()):
                break
            p = X + torch.where(reached, t, 0.0)[:, None] * u  # a point just past the first crossing
            g = _gradient(net, p)  # (n, d) the affine piece N_p at p: N_p(z) = g . z + c
            piece_at_x = net(p) + ((X - p) * g).sum(1)  # N_p(x), extended to x
            t_new, u_new = self._shortest(net, X, _unit(-torch.sign(piece_at_x)[:, None] * g)[:, None, :], t_max)
            better = reached & (t_new < t)
            if not bool(better.any()):
                break
            t = torch.where(better, t_new, t)
            u = torch.where(better[:, None], u_new, u)
        t, u = self._random_search(net, X, t, u, t_max)
        found = t.isfinite()
        return AttackResult(delta=torch.where(found, t, 0.0)[:, None] * u, found=found)

    def _random_search(self, net: TwoLayerNet, X: Tensor, t: Tensor, u: Tensor, t_max: float) -> tuple[Tensor, Tensor]:
        """Shrink by random search over directions: each round tries ``search_rays`` directions u + sigma xi
        (xi Gaussian) around each example's best u, with the exact first crossing along each; sigma halves
        for an example whenever a round does not improve it, and an example stops once sigma has shrunk by
        1000. Shapes: t (n,), u (n, d)."""
        n, d = X.shape
        generator = torch.Generator(device=X.device).manual_seed(self.seed)
        sigma = X.new_full((n,), self.search_sigma)
        for _ in range(self.search_rounds):
            rows = (t.isfinite() & (sigma >= 1e-3 * self.search_sigma)).nonzero(as_tuple=True)[0]  # still moving
            if rows.numel() == 0:
                break
            noise = torch.randn((rows.numel(), self.search_rays, d), generator=generator, dtype=X.dtype, device=X.device)
            candidates = _unit(u[rows, None, :] + sigma[rows, None, None] * noise / math.sqrt(d))
            t_new, u_new = self._shortest(net, X[rows], candidates, t_max)
            better = t_new < t[rows]
            t[rows[better]] = t_new[better]
            u[rows[better]] = u_new[better]
            sigma[rows[~better]] *= 0.5
        return t, u

    def _segments(self, X: Tensor, s: Tensor) -> Tensor:
        """(n, targets, d) unit directions toward the nearest points of the other sign (zero rows if fewer)."""
        D = torch.cdist(X, X)
        other = (s[:, None] * s[None, :]) < 0  # (n, n) strictly opposite signs
        D = torch.where(other, D, math.inf)
        k = min(self.targets, X.shape[0])
        dist, idx = D.topk(k, dim=1, largest=False)
        U = _unit(X[idx] - X[:, None, :])  # (n, k, d)
        return torch.where(dist.isfinite()[..., None], U, 0.0)

    @staticmethod
    def _shortest(net: TwoLayerNet, X: Tensor, U: Tensor, t_max: float) -> tuple[Tensor, Tensor]:
        """Rays X_i + t U_ir, U: (n, R, d) -> per example the smallest verified flip t (n,) and its u (n, d)."""
        n, R, d = U.shape
        X_rays = X[:, None, :].expand(n, R, d).reshape(n * R, d)
        U_rays = U.reshape(n * R, d)
        intervals = flip_intervals(net, X_rays, U_rays, t_max=t_max)
        first = intervals.left == intervals.first_flip()[intervals.row]  # only each ray's first flip interval
        intervals = replace(intervals, row=intervals.row[first], left=intervals.left[first], right=intervals.right[first])
        t = smallest_verified(net, X_rays, U_rays, intervals).reshape(n, R)
        t = torch.where(U.norm(dim=2) > 0, t, math.inf)
        t_best, r_best = t.min(dim=1)
        return t_best, U[torch.arange(n, device=X.device), r_best]


def _gradient(net: TwoLayerNet, X: Tensor) -> Tensor:
    """(n, d) grad N at each row of X (one forward and one backward pass per row)."""
    dx = X.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(net(dx).sum(), dx)
    return g


def _unit(V: Tensor) -> Tensor:
    """Rows (along the last dimension) scaled to unit length; zero rows stay zero."""
    norm = V.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, V / norm.clamp_min(torch.finfo(V.dtype).tiny), 0.0)
