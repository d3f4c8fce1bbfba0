"""L2 projected gradient descent, made a minimal-norm attack by bisection on its budget.

``pgd`` takes plain L2 steps; ``pgd-off`` and ``pgd-on`` project every step onto P-perp or onto P, the two
complementary subspaces of Melamed et al. 2023 (Figures 2-4: PGD restricted to, or away from, the data
subspace). For a fixed budget eps, PGD minimizes the signed output s N(x + delta), s = sign N(x), by
normalized gradient steps
    delta <- Pi_ball(eps) Pi_S (delta - eta * Pi_S g / ||Pi_S g||),   g = grad_delta s N(x + delta),
with S the subspace (all of R^d for plain ``pgd``). Pi_S is linear and Pi_ball only rescales, so every
iterate lies in S exactly, up to float rounding. A row stops moving as soon as it flips strictly
(s N(x + delta) < 0). Rows that flip at their start are dropped once per run; rows that flip later are
masked, not removed, so that the steps are a fixed number of batched updates with no host synchronization
inside them. The gradient is the network's closed form (``value_and_input_grad``).

The minimal norm comes from a search over eps per example, all examples and several budgets at once:
1. Bracket. A walk from delta = 0 (``_walk``: Polyak steps to a first flip, then DeepFool/FAB projections
   onto the linearized boundary) finds a flip, usually within a few percent of PGD's own threshold:
   hi = its norm. Examples it does not flip (flat regions, where the gradient vanishes) get PGD from
   delta = 0 at every budget ``init_eps_factor * sqrt(d) * 2^k <= max_norm_factor * sqrt(d)`` at once (the
   doubling of a sequential search, run in one batch): hi = the smallest flip, lo = the largest failing
   budget below it.
2. Bisection, K <= ``candidates`` budgets per example per round, spread evenly inside (a, hi) with
   a = max(lo, (1 - span) hi): just below hi, where the walk's flip says the threshold is; where even the
   lowest budget flips, span doubles for the next round. Each PGD run starts from the smallest flip found
   so far, rescaled to its budget (a warm start). hi becomes the smallest flipping norm, lo the largest
   failing budget below it. Rounds go on until hi - lo <= rel_precision * hi: usually one round of three
   budgets, where a sequential doubling and bisection runs about ten budgets one after another.
The reported perturbation is the smallest flipping one found, of norm hi, while PGD with the same settings
failed at lo >= (1 - rel_precision) hi: minimal to that relative precision *for this PGD* (a failure at lo
is no proof that no smaller flip exists; and where the walk's flip is smaller than any PGD run's, hi is the
walk's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from marginbench.attacks.subspace import SubspaceProjection
from marginbench.checking.flips import PROPOSAL_TAUS, flip_margin
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult
from marginbench.models.two_layer import TwoLayerNet


@dataclass(frozen=True, kw_only=True)
class MinimalPGD:
    """Minimal-norm L2 PGD: batched bisection on the budget of a batched, masked PGD.

    Args:
        steps: PGD iterations per budget and restart.
        step_size: eta as a fraction of the budget eps.
        candidates: at most this many budgets per example in one bisection round (K): a round shrinks the
            searched interval by K + 1.
        restarts: PGD runs per budget; the first starts from the warm start, the others uniformly in the
            ball (within S). An example counts as flipped at eps if any run flips it.
        rel_precision: the bisection stops once hi - lo <= rel_precision * hi (1%).
        span: the first round searches (max(lo, (1 - span) hi), hi); doubled for an example whose lowest
            budget still flipped.
        walk_steps: steps of the bracketing walk.
        overshoot: the walk steps past the linearized boundary by this fraction of the norm it expects.
        init_eps_factor: first budget of the doubling fallback, in units of sqrt(d).
        max_norm_factor: budgets above max_norm_factor * sqrt(d) are not tried: the example is a failure.
        projection: project steps onto P or P-perp; None for plain PGD.
        seed: seed of the random restarts.
    """

    steps: int = 8  # iterations per budget and restart
    step_size: float = 0.25  # eta = step_size * eps: 8 steps can cross the ball twice
    candidates: int = 10  # at most 10 budgets per example per bisection round
    restarts: int = 1  # 1: a single run from the warm start
    rel_precision: float = 0.01  # bisection stops at hi - lo <= 1% of hi
    span: float = 0.03  # the first round searches (0.97 hi, hi), wider where that was too narrow
    walk_steps: int = 5  # steps of the bracketing walk (it settles in about three)
    overshoot: float = 0.02  # the walk aims 2% past the linearized boundary
    init_eps_factor: float = 0.05  # doubling fallback: budgets 0.05 sqrt(d) * 2^k
    max_norm_factor: float = SEARCH_RADIUS  # no budget above 10 sqrt(d)
    projection: SubspaceProjection | None = None  # None: plain L2 PGD
    seed: int = 0  # random restarts

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1 or self.candidates < 1 or self.walk_steps < 0:
            raise ValueError("PGD needs steps >= 1, restarts >= 1, candidates >= 1 and walk_steps >= 0")
        if not (0 < self.rel_precision < 1) or not (self.step_size > 0) or not (self.overshoot >= 0):
            raise ValueError("PGD needs step_size > 0, overshoot >= 0 and 0 < rel_precision < 1")

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> the smallest flipping perturbation found per example (labels unused:
        a flip is a change of sign N(x))."""
        n, d = X.shape
        s = torch.sign(net(X))  # (n,) the sign to flip; 0: nothing to flip
        generator = torch.Generator(device=X.device).manual_seed(self.seed)
        eps_max = self.max_norm_factor * math.sqrt(d)

        # 1. Bracket: the walk; hi = the norm of the smallest flip it reached.
        flipped, delta = self._walk(net, X, s, eps_max)
        flipped &= s != 0
        best = torch.where(flipped[:, None], delta, 0.0)  # (n, d) smallest flip so far
        best_norm = torch.where(flipped, delta.norm(dim=1), math.inf)  # (n,) its norm: hi
        lo = X.new_zeros(n)  # (n,) a budget at which PGD failed (0: none yet)
        missed = ((s != 0) & ~flipped).nonzero(as_tuple=True)[0]  # one host sync
        if missed.numel():
            self._doubling(net, X, s, missed, eps_max, generator, best, best_norm, lo)

        # 2. Bisection, up to K budgets per example per round; one host sync per round.
        span = X.new_full((n,), self.span)  # (n,) the fraction below hi that a round searches
        while True:
            todo = (best_norm - lo > self.rel_precision * best_norm) & best_norm.isfinite()
            rows = todo.nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                break
            hi = best_norm[rows]
            floor = torch.maximum(lo[rows], hi * (1.0 - span[rows]).clamp_min(0.0))  # (r,) a
            eps = self._budgets(floor, hi)  # (r, K)
            start = best[rows, None, :] * (eps / hi[:, None])[:, :, None]  # (r, K, d) warm starts
            self._round(net, X, s, rows, eps, start, generator, best, best_norm, lo)
            # No failure below the new hi (lo did not rise to the floor): the round searched too little below
            # hi, so the next one searches twice as far.
            span[rows] = torch.where(floor > lo[rows], 2.0 * span[rows], span[rows])
        return AttackResult(delta=best, found=best_norm.isfinite())

    def _budgets(self, floor: Tensor, hi: Tensor) -> Tensor:
        """floor, hi: (r,) -> (r, K) budgets evenly spaced strictly inside (floor, hi).

        K is the fewest budgets (at most ``candidates``) that leave every row a gap of at most 0.9 *
        rel_precision * hi between neighbours, so that a round which brackets the threshold ends the search
        (0.9: hi can only shrink). One K for all rows keeps the batch rectangular.
        """
        gap = 0.9 * self.rel_precision
        needed = torch.ceil((hi - floor) / (gap * hi)).max() - 1.0  # one host sync per round
        K = int(min(self.candidates, max(1.0, float(needed))))
        i = torch.arange(1, K + 1, dtype=hi.dtype, device=hi.device)
        return floor[:, None] + (hi - floor)[:, None] * (i / (K + 1))

    def _round(
        self,
        net: TwoLayerNet,
        X: Tensor,
        s: Tensor,
        rows: Tensor,
        eps: Tensor,
        start: Tensor,
        generator: torch.Generator,
        best: Tensor,
        best_norm: Tensor,
        lo: Tensor,
    ) -> None:
        """PGD at budgets eps: (r, K) from ``start``: (r, K, d) for the examples ``rows``: (r,); updates
        best (n, d), best_norm (n,) = hi and lo (n,) in place."""
        r, K = eps.shape
        R = self.restarts
        d = X.shape[1]
        starts = start[:, :, None, :].expand(r, K, R, d).clone()
        if R > 1:
            random = self._random_start(eps[:, :, None].expand(r, K, R - 1).reshape(-1), d, X, generator)
            starts[:, :, 1:, :] = random.reshape(r, K, R - 1, d)
        flat_eps = eps[:, :, None].expand(r, K, R).reshape(-1)
        flips, delta = self.run(
            net,
            X[rows, None, :].expand(r, K * R, d).reshape(-1, d),
            s[rows, None].expand(r, K * R).reshape(-1),
            flat_eps,
            starts.reshape(-1, d),
        )
        norms = torch.where(flips, delta.norm(dim=1), math.inf).reshape(r, K * R)
        smallest, which = norms.min(dim=1)
        better = smallest < best_norm[rows]
        chosen = delta.reshape(r, K * R, d)[torch.arange(r, device=X.device), which]
        best[rows] = torch.where(better[:, None], chosen, best[rows])
        best_norm[rows] = torch.where(better, smallest, best_norm[rows])
        # lo: the largest budget below the new hi at which every run failed.
        failed = ~flips.reshape(r, K, R).any(dim=2) & (eps < best_norm[rows, None])
        lo[rows] = torch.maximum(lo[rows], torch.where(failed, eps, 0.0).max(dim=1).values)

    def _doubling(
        self,
        net: TwoLayerNet,
        X: Tensor,
        s: Tensor,
        rows: Tensor,
        eps_max: float,
        generator: torch.Generator,
        best: Tensor,
        best_norm: Tensor,
        lo: Tensor,
    ) -> None:
        """The fallback bracket for ``rows``: (r,): PGD from delta = 0 at every doubled budget at once."""
        eps0 = self.init_eps_factor * math.sqrt(X.shape[1])
        count = math.floor(math.log2(eps_max / eps0)) + 1  # eps0 * 2^k <= eps_max
        eps = eps0 * torch.pow(2.0, torch.arange(count, dtype=X.dtype, device=X.device))
        eps = eps[None, :].expand(rows.numel(), count)
        self._round(net, X, s, rows, eps, torch.zeros(*eps.shape, X.shape[1], dtype=X.dtype, device=X.device), generator, best, best_norm, lo)

    def run(self, net: TwoLayerNet, X: Tensor, s: Tensor, eps: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """PGD at fixed budgets from ``delta``: X (r, d), s (r,) signs to flip, eps (r,), delta (r, d) ->
        (flipped (r,) bool, delta (r, d): the first flipping iterate where flipped, else the last).

        Warm starts above PGD's threshold flip before any step (most of a round's upper budgets): those rows
        are dropped once, after the first evaluation (one host sync per run), so the steps cost only the
        rows still searching; after that, rows that flip are masked, not removed.
        """
        value, grad = net.value_and_input_grad(X + delta)
        flipped = flip_margin(net, s, X + delta, value, taus=PROPOSAL_TAUS) < 0
        rows = (~flipped).nonzero(as_tuple=True)[0]
        Xr, sr, er, dr, gr = X[rows], s[rows], eps[rows], delta[rows], grad[rows]
        done = torch.zeros(rows.numel(), dtype=torch.bool, device=X.device)
        for step in range(1, self.steps + 1):
            dr = torch.where(done[:, None], dr, self._step(dr, sr[:, None] * gr, er))  # a flipped row keeps its first flip
            if step < self.steps:
                value, gr = net.value_and_input_grad(Xr + dr)
            else:
                value = net(Xr + dr)  # the last iterate needs no gradient
            done |= flip_margin(net, sr, Xr + dr, value, taus=PROPOSAL_TAUS) < 0
        return flipped.index_copy(0, rows, done), delta.index_copy(0, rows, dr)

    def _walk(self, net: TwoLayerNet, X: Tensor, s: Tensor, eps_max: float) -> tuple[Tensor, Tensor]:
        """The bracketing walk from delta = 0: X (n, d), s (n,) -> (flipped (n,), delta (n, d): the smallest
        flipping iterate where flipped).

        With m = s N(x + delta) and g = Pi_S grad m, N is linear within an activation region, so the walk
        uses the linearization m + g . (delta' - delta) of the current region:
        - until a row first flips, Polyak's step with target value 0 (Polyak 1969): delta' = delta - eta g /
          ||g||, eta = m / ||g|| (the linearized distance) plus ``overshoot`` times the expected total norm,
          so that it lands strictly past the boundary rather than on the tie N = 0; the steps accumulate, so
          a row moves on even where the linearization is poor;
        - after, the smallest delta' on the region's linearized boundary (pushed ``overshoot`` past it),
          delta' = (1 + overshoot) (g . delta - m) / ||g||^2 g, as DeepFool and FAB step (Moosavi-Dezfooli
          et al. 2016, eq. 4; Croce & Hein 2020, eq. 5): from a first flip that overshot, it moves to a
          nearer point of the boundary. Iterates that do not flip are only stepped from, never kept.
        All iterates stay in the ball of radius eps_max and in S.
        """
        n = X.shape[0]
        tiny = torch.finfo(X.dtype).tiny
        delta = torch.zeros_like(X)
        best = torch.zeros_like(X)
        best_norm = X.new_full((n,), math.inf)
        for step in range(self.walk_steps + 1):
            if step < self.walk_steps:
                value, grad = net.value_and_input_grad(X + delta)
            else:
                value = net(X + delta)  # the last iterate needs no gradient
            margin = s * value
            norm = delta.norm(dim=1)
            smaller = (flip_margin(net, s, X + delta, value, taus=PROPOSAL_TAUS) < 0) & (norm < best_norm)
            best = torch.where(smaller[:, None], delta, best)
            best_norm = torch.where(smaller, norm, best_norm)
            if step == self.walk_steps:
                break
            g = self._project(s[:, None] * grad)
            g_sq = (g * g).sum(dim=1)
            g_norm = g_sq.sqrt()
            distance = margin.clamp_min(0) / g_norm.clamp_min(tiny)
            eta = distance + self.overshoot * (norm + distance)
            polyak = delta - (eta / g_norm.clamp_min(tiny))[:, None] * g
            projection = ((1.0 + self.overshoot) * ((g * delta).sum(dim=1) - margin) / g_sq.clamp_min(tiny))[:, None] * g
            stepped = torch.where(best_norm.isfinite()[:, None], projection, polyak)
            stepped = stepped * torch.clamp(eps_max / stepped.norm(dim=1, keepdim=True).clamp_min(tiny), max=1.0)
            delta = torch.where((g_sq > 0)[:, None], stepped, delta)  # no gradient: no step (a flat region)
        return best_norm.isfinite(), best

    def _step(self, delta: Tensor, g: Tensor, eps: Tensor) -> Tensor:
        """One normalized descent step, then projections onto S and the eps-ball. Shapes (a, d), (a,)."""
        g = self._project(g)
        g_norm = g.norm(dim=1, keepdim=True)
        step = torch.where(g_norm > 0, g / g_norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
        delta = self._project(delta - (self.step_size * eps)[:, None] * step)
        norm = delta.norm(dim=1, keepdim=True)
        return delta * torch.clamp(eps[:, None] / norm.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)

    def _random_start(self, eps: Tensor, d: int, like: Tensor, generator: torch.Generator) -> Tensor:
        """eps: (a,) -> (a, d) uniform in the eps-ball of S (direction Gaussian within S, radius eps u^(1/dim S))."""
        direction = self._project(torch.randn((eps.shape[0], d), generator=generator, dtype=like.dtype, device=like.device))
        dim = d if self.projection is None else self.projection.dim
        u = torch.rand(eps.shape[0], generator=generator, dtype=like.dtype, device=like.device)
        radius = eps * u.pow(1.0 / max(dim, 1))
        return direction / direction.norm(dim=1, keepdim=True).clamp_min(torch.finfo(like.dtype).tiny) * radius[:, None]

    def _project(self, V: Tensor) -> Tensor:
        return V if self.projection is None else self.projection(V)
