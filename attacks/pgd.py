"""L2 projected gradient descent, made a minimal-norm attack by bisection on its budget.

``pgd`` takes plain L2 steps; ``pgd-off`` and ``pgd-on`` project every step onto P-perp or onto P, the two
complementary subspaces of Melamed et al. 2023 (Figures 2-4: PGD restricted to, or away from, the data
subspace). For a fixed budget eps, PGD minimizes the signed output s N(x + delta), s = sign N(x), by
normalized gradient steps
    delta <- Pi_ball(eps) Pi_S (delta - eta * Pi_S g / ||Pi_S g||),   g = grad_delta s N(x + delta),
with S the subspace (all of R^d for plain ``pgd``). Pi_S is linear and Pi_ball only rescales, so every
iterate lies in S exactly, up to float rounding. An example stops as soon as it flips strictly
(s N(x + delta) < 0): early stopping per example, all examples batched.

The minimal norm comes from a search over eps per example (vectorized: one budget per example): eps starts
at ``init_eps_factor * sqrt(d)`` and doubles until PGD flips the example (or passes
``max_norm_factor * sqrt(d)``: a failure), then bisects [lo, hi] until hi - lo <= rel_precision * hi.
The reported perturbation is the smallest flipping one PGD returned, of norm <= hi, while PGD with the
same settings failed at lo >= (1 - rel_precision) hi: the answer is minimal to that relative precision
*for this PGD* (a failure at lo is no proof that no smaller flip exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from marginbench.attacks.base import AttackResult
from marginbench.attacks.subspace import SubspaceProjection
from marginbench.models.two_layer import TwoLayerNet


@dataclass(frozen=True, kw_only=True)
class MinimalPGD:
    """Minimal-norm L2 PGD: bisection on the budget of a batched, early-stopping PGD.

    Args:
        steps: PGD iterations per budget and restart.
        step_size: eta as a fraction of the budget eps (steps * step_size = 5: the path can cross the ball
            several times, as in Madry et al.'s 2.5 eps / steps rule with room to spare).
        restarts: PGD runs per budget; the first starts at delta = 0, the others uniformly in the ball
            (within S). An example counts as flipped at eps if any run flips it.
        rel_precision: the bisection stops once hi - lo <= rel_precision * hi (1%).
        init_eps_factor: first budget, in units of sqrt(d).
        max_norm_factor: budgets above max_norm_factor * sqrt(d) are not tried: the example is a failure.
        projection: project steps onto P or P-perp; None for plain PGD.
        seed: seed of the random restarts.
    """

    steps: int = 50  # iterations per budget and restart
    step_size: float = 0.1  # eta = step_size * eps
    restarts: int = 1  # 1: a single run from delta = 0
    rel_precision: float = 0.01  # bisection stops at hi - lo <= 1% of hi
    init_eps_factor: float = 0.05  # first budget 0.05 sqrt(d), doubled until the example flips
    max_norm_factor: float = 10.0  # no budget above 10 sqrt(d)
    projection: SubspaceProjection | None = None  # None: plain L2 PGD
    seed: int = 0  # random restarts

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1 or not (0 < self.rel_precision < 1) or not (self.step_size > 0):
            raise ValueError("PGD needs steps >= 1, restarts >= 1, step_size > 0 and 0 < rel_precision < 1")

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> the smallest flipping perturbation found per example (labels unused:
        a flip is a change of sign N(x))."""
        n, d = X.shape
        s = torch.sign(net(X))  # (n,) the sign to flip
        generator = torch.Generator(device=X.device).manual_seed(self.seed)
        eps_max = self.max_norm_factor * math.sqrt(d)
        lo = X.new_zeros(n)
        hi = X.new_full((n,), math.inf)
        eps = X.new_full((n,), self.init_eps_factor * math.sqrt(d))
        best = torch.zeros_like(X)
        best_norm = X.new_full((n,), math.inf)

        def attempt(rows: Tensor, budget: Tensor) -> Tensor:
            """Run PGD on ``rows`` (long) at ``budget`` (per row); keep smaller flips; return the flip mask."""
            flipped, delta = self.run(net, X[rows], s[rows], budget, generator)
            norm = torch.where(flipped, delta.norm(dim=1), math.inf)
            better = norm < best_norm[rows]
            best[rows[better]] = delta[better]
            best_norm[rows[better]] = norm[better]
            return flipped

        # Bracket: double eps until the example flips.
        todo = (s != 0).nonzero(as_tuple=True)[0]
        while todo.numel():
            flipped = attempt(todo, eps[todo])
            hi[todo[flipped]] = eps[todo[flipped]]
            lo[todo[~flipped]] = eps[todo[~flipped]]
            eps[todo[~flipped]] *= 2.0
            todo = todo[~flipped & (eps[todo] <= eps_max)]
        # Bisect [lo, hi] to the relative precision.
        todo = (hi - lo > self.rel_precision * hi).logical_and(hi.isfinite()).nonzero(as_tuple=True)[0]
        while todo.numel():
            mid = 0.5 * (lo[todo] + hi[todo])
            flipped = attempt(todo, mid)
            hi[todo[flipped]] = mid[flipped]
            lo[todo[~flipped]] = mid[~flipped]
            todo = todo[hi[todo] - lo[todo] > self.rel_precision * hi[todo]]
        found = best_norm.isfinite()
        return AttackResult(delta=best, found=found)

    def run(self, net: TwoLayerNet, X: Tensor, s: Tensor, eps: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """PGD at fixed budgets: X (r, d), s (r,) signs to flip, eps (r,) -> (flipped (r,) bool, delta (r, d))."""
        out = torch.zeros_like(X)
        flipped = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
        for restart in range(self.restarts):
            active = (~flipped).nonzero(as_tuple=True)[0]
            delta = torch.zeros_like(X[active])
            if restart > 0:
                delta = self._random_start(eps[active], delta, generator)
            for _ in range(self.steps + 1):
                if active.numel() == 0:
                    break
                dx = delta.detach().requires_grad_(True)
                margin = s[active] * net(X[active] + dx)  # (a,) < 0 once flipped
                done = margin.detach() < 0
                out[active[done]] = delta[done].detach()
                flipped[active[done]] = True
                (g,) = torch.autograd.grad(margin.sum(), dx)
                keep = ~done
                active, delta, g = active[keep], delta[keep].detach(), g[keep]
                delta = self._step(delta, g, eps[active])
        return flipped, out

    def _step(self, delta: Tensor, g: Tensor, eps: Tensor) -> Tensor:
        """One normalized descent step, then projections onto S and the eps-ball. Shapes (a, d), (a,)."""
        g = self._project(g)
        g_norm = g.norm(dim=1, keepdim=True)
        step = torch.where(g_norm > 0, g / g_norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
        delta = self._project(delta - (self.step_size * eps)[:, None] * step)
        norm = delta.norm(dim=1, keepdim=True)
        return delta * torch.clamp(eps[:, None] / norm.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)

    def _random_start(self, eps: Tensor, like: Tensor, generator: torch.Generator) -> Tensor:
        """Uniform in the eps-ball of S (direction Gaussian within S, radius eps u^(1/dim S))."""
        direction = self._project(torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device))
        dim = like.shape[1] if self.projection is None else self.projection.dim
        u = torch.rand(like.shape[0], generator=generator, dtype=like.dtype, device=like.device)
        radius = eps * u.pow(1.0 / max(dim, 1))
        return direction / direction.norm(dim=1, keepdim=True).clamp_min(torch.finfo(like.dtype).tiny) * radius[:, None]

    def _project(self, V: Tensor) -> Tensor:
        return V if self.projection is None else self.projection(V)
