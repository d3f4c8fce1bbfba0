"""Exact sign analysis of a two-layer ReLU net along rays x_i + t u_i, t in (0, t_max].

Along a ray every pre-activation is affine, a_j + t s_j, so N(x + t u) = sum_j v_j relu(a_j + t s_j) is
piecewise linear in t with one breakpoint per neuron, t_j = -a_j / s_j, where its slope jumps by
v_j |s_j|. Sorting the breakpoints gives N at every one of them by two cumulative sums,
    N(t_m) = N(0) + slope(0) t_m + sum_{l <= m} v_l |s_l| (t_m - t_l),
in O(width log width) per ray, and between breakpoints N is linear, so the set of t where
sign N(x + t u) = -sign N(x) is an exact union of intervals. No step size, no bisection tolerance: the
first flip along a ray and the smallest scale that flips a set of rays at once are read off these
intervals, then confirmed by an ordinary forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from marginbench.checking.flips import proposable_flips
from marginbench.models.two_layer import TwoLayerNet

ZERO_TOL = 1e-10  # |N| below this times sum_j |v_j (a_j + t s_j)| is a tie (N = 0), not a sign
NUDGE = 1e-9  # a reported scale sits this far (relative) inside the flip interval, so it flips strictly
_CHUNK_ELEMENTS = 1 << 22  # rows x width per chunk: bounds memory at large n and width


@dataclass(frozen=True)
class FlipIntervals:
    """The exact flip set of each ray, as a flat list of intervals.

    Attributes:
        n: number of rays.
        row: (m,) long, the ray each interval belongs to.
        left: (m,) the infimum of the interval (N = 0 there, or a breakpoint).
        right: (m,) its supremum.
        t_max: the end of the searched range.
    """

    n: int
    row: Tensor
    left: Tensor
    right: Tensor
    t_max: float

    def first_flip(self) -> Tensor:
        """(n,) the infimum of t with a strict flip along each ray; inf where none up to t_max."""
        first = torch.full((self.n,), float("inf"), dtype=self.left.dtype, device=self.left.device)
        return first.scatter_reduce(0, self.row, self.left, reduce="amin")


def flip_intervals(net: TwoLayerNet, X: Tensor, U: Tensor, *, t_max: float) -> FlipIntervals:
    """Where sign N(x_i + t u_i) = -sign N(x_i) != 0, for t in (0, t_max], exactly.

    Args:
        net: the network.
        X: (n, d) ray origins.
        U: (n, d) ray directions (t is a norm when they have unit length).
        t_max: the end of the searched range.
    """
    n, width = X.shape[0], net.width
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(width, 1))
    parts = [_chunk_intervals(net, X[s : s + rows_per_chunk], U[s : s + rows_per_chunk], t_max, s) for s in range(0, n, rows_per_chunk)]
    row = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.long, device=X.device)
    left = torch.cat([p[1] for p in parts]) if parts else X.new_zeros(0)
    right = torch.cat([p[2] for p in parts]) if parts else X.new_zeros(0)
    return FlipIntervals(n=n, row=row, left=left, right=right, t_max=t_max)


def _chunk_intervals(net: TwoLayerNet, X: Tensor, U: Tensor, t_max: float, offset: int) -> tuple[Tensor, Tensor, Tensor]:
    A = net.preactivations(X)  # (r, width) a_j at t = 0
    S = U @ net.W.T  # (r, width) slopes s_j
    v = net.v
    N0 = torch.relu(A) @ v  # (r,)
    sign = torch.sign(N0)
    active0 = (A > 0) | ((A == 0) & (S > 0))  # active just after t = 0
    slope0 = (active0.to(A.dtype) * S) @ v
    T = torch.where(S != 0, -A / torch.where(S != 0, S, 1), torch.inf)  # breakpoints t_j = -a_j / s_j
    T = torch.where((T > 0) & (T < t_max), T, torch.inf)
    T_sorted, order = T.sort(dim=1)
    finite = torch.isfinite(T_sorted)
    jump = torch.where(finite, (v[None, :] * S.abs()).gather(1, order), 0.0)
    zeros = A.new_zeros(A.shape[0], 1)
    knots = torch.cat([zeros, torch.where(finite, T_sorted, t_max), zeros + t_max], dim=1)  # (r, width + 2)
    jumps = torch.cat([zeros, jump, zeros], dim=1)
    values = N0[:, None] + slope0[:, None] * knots + knots * jumps.cumsum(1) - (jumps * knots).cumsum(1)
    # The scale of the terms that cancel in N: below ZERO_TOL of it, N is a tie.
    scale = (v.abs()[None, :] * A.abs()).sum(1, keepdim=True) + knots * (v.abs()[None, :] * S.abs()).sum(1, keepdim=True)
    f = sign[:, None] * values
    f = torch.where(f.abs() <= ZERO_TOL * scale, 0.0, f)  # f < 0: flipped
    fl, fr = f[:, :-1], f[:, 1:]
    tl, tr = knots[:, :-1], knots[:, 1:]
    neg_l, neg_r = fl < 0, fr < 0
    crossing = neg_l ^ neg_r
    root = tl + torch.where(crossing, fl / torch.where(crossing, fl - fr, 1), 0.0) * (tr - tl)
    left = torch.where(neg_l, tl, root)
    right = torch.where(neg_r, tr, root)
    valid = (neg_l | neg_r) & (tr > tl) & (sign != 0)[:, None] & (right > left)
    r_idx, _ = valid.nonzero(as_tuple=True)
    return r_idx + offset, left[valid], right[valid]


def flips(net: TwoLayerNet, X: Tensor, delta: Tensor) -> Tensor:
    """(n,) bool: x_i + delta_i is a proposable flip of sign N(x_i) (``proposable_flips``: a tie is not a flip)."""
    return proposable_flips(net, X, X + delta)


def smallest_verified(net: TwoLayerNet, X: Tensor, U: Tensor, intervals: FlipIntervals) -> Tensor:
    """(n,) per ray, the smallest scale t that a forward pass confirms as a strict flip; inf where none.

    Each interval offers two candidates: just inside its left end (NUDGE relative) and its midpoint. A ray's
    intervals are disjoint and ordered, so the first interval with a confirmed candidate holds the answer:
    rays are checked one interval at a time, in order, and only those not yet confirmed go on (almost always
    one round, one forward pass of 2n rows however many breakpoints the rays cross).
    """
    best = torch.full((intervals.n,), torch.inf, dtype=X.dtype, device=X.device)
    if intervals.row.numel() == 0:
        return best
    by_left = torch.argsort(intervals.left, stable=True)
    order = by_left[torch.argsort(intervals.row[by_left], stable=True)]  # by row, then by left end
    row, left, right = intervals.row[order], intervals.left[order], intervals.right[order]
    starts = torch.zeros(intervals.n + 1, dtype=torch.long, device=row.device)
    starts[1:] = torch.bincount(row, minlength=intervals.n).cumsum(0)
    rank = torch.arange(row.numel(), device=row.device) - starts[row]  # position of each interval in its ray
    width = right - left
    near = left + torch.minimum(NUDGE * (left + 1.0), 0.5 * width)
    mid = left + 0.5 * width
    done = torch.zeros(intervals.n, dtype=torch.bool, device=X.device)
    for r in range(int(rank.max()) + 1):
        pick = (rank == r) & ~done[row]
        if not bool(pick.any()):
            break
        rows = torch.cat([row[pick], row[pick]])
        t = torch.cat([near[pick], mid[pick]])
        ok = flips(net, X[rows], t[:, None] * U[rows])
        best = best.scatter_reduce(0, rows[ok], t[ok], reduce="amin")
        done = best.isfinite()
    return best


def smallest_common_scale(net: TwoLayerNet, X: Tensor, U: Tensor, intervals: FlipIntervals, rows: Tensor) -> float:
    """The smallest t that flips every ray in ``rows`` (bool (n,)) at once, confirmed by a forward pass.

    The infimum of the intersection of the flip sets is one of their left ends at or after the largest
    first flip, so those are tried in increasing order. Returns inf where no t <= t_max flips them all.
    """
    members = rows.nonzero(as_tuple=True)[0]
    if members.numel() == 0:
        return float("inf")
    keep = rows[intervals.row]
    row, left, right = intervals.row[keep], intervals.left[keep], intervals.right[keep]
    lower = float(intervals.first_flip()[members].max())
    if lower == float("inf"):
        return lower
    X_m, U_m = X[members], U[members]
    for c in torch.unique(left[left >= lower]).tolist():
        covering = (left <= c) & (c < right)
        covered = torch.zeros(intervals.n, dtype=torch.bool, device=X.device)
        covered[row[covering]] = True
        if not bool(covered[members].all()):
            continue
        room = float((right[covering] - c).min())
        for t in (c + min(NUDGE * (c + 1.0), 0.5 * room), c + 0.5 * room):
            if bool(flips(net, X_m, t * U_m).all()):
                return t
    return float("inf")


def first_flip_along(net: TwoLayerNet, x: Tensor, delta: Tensor) -> Tensor | None:
    """(1, d): the first flip beyond rounding along the ray x + t delta/||delta|| (x, delta (1, d)), for t up to
    2 ||delta||, as t U with U the unit direction (the product the ray search verified); None where none."""
    norm = float(delta.norm())
    if norm == 0.0:
        return None
    U = delta / norm
    t = smallest_verified(net, x, U, flip_intervals(net, x, U, t_max=2.0 * norm))
    return t[:, None] * U if bool(t.isfinite()[0]) else None
