"""``exact``: the minimal L2 flip of a two-layer ReLU net as a mixed-integer QP (SCIP), with a certificate.

For N(x) = sum_j v_j relu(w_j . x + b_j) and s = sign N(x), the smallest perturbation with a strict flip is

    min ||delta||^2  s.t.  s N(x + delta) < 0.

Each ReLU that can change state gets a binary a_j and the big-M encoding of h_j = relu(z_j), z_j = w_j . (x +
delta) + b_j in [l_j, u_j] (Tjeng et al. 2019): h_j >= z_j, h_j >= 0, h_j <= z_j - l_j (1 - a_j), h_j <= u_j a_j.
The bounds come from the ball ||delta|| <= R, R the norm of a verified flip found first (``RegionWalk``), so they
are valid for every candidate better than it: l_j, u_j = z_j(x) -+ R ||w_j|| (exact for one layer). Neurons
that keep their state over the whole ball are fixed (no binary); SCIP tightens the rest (presolve, OBBT)
before branching.

Two things keep the certificate honest:
- Ties are not flips. A point on N = 0 in a flat region (every neuron off on the Theorem 3.1 construction) is
  no flip at any radius, yet it satisfies s N <= 0. A strict flip needs some neuron with s v_j < 0 active,
  so the model asks for one (sum of those a_j >= 1): a cut that every strict flip satisfies and flat ties don't.
- The solver's tolerances (~1e-6). The model asks only for s N(x + delta) <= RELAX (a little above 0), so it
  contains every strict flip even after SCIP's rounding, and SCIP's dual bound is a lower bound on the
  true minimum (shrunk by DUAL_SAFETY). Its optimum then sits on the boundary; the answer is the exact first
  flip beyond rounding along the ray through it (``rays``), verified like any attack's.
An example is ``proved_optimal`` when that verified norm is within PROOF_GAP of the lower bound. Where SCIP
runs out of its share of the time (OPTIMIZE_SHARE), the rest goes to branch and bound on the relaxation
(``checking.branch_and_bound``), which raises the certified bound and can lower the flip; the answer is the
best flip known.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from marginbench.attacks.base import AttackUnavailable
from marginbench.attacks.rays import first_flip_along
from marginbench.attacks.region_walk import RegionWalk
from marginbench.checking.branch_and_bound import branch_and_bound
from marginbench.checking.certify import bracket_top, certified_radius
from marginbench.checking.flips import proposable_flips
from marginbench.checking.proof import DUAL_SAFETY, PROOF_GAP, proved_optimal
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult
from marginbench.models.two_layer import TwoLayerNet

RELAX = 1e-5  # the model's flip constraint: s N <= RELAX |N(x)|, above SCIP's feasibility tolerance 1e-6
OPTIMIZE_SHARE = 0.5  # of the time per example for SCIP's optimization; the rest raises the bound by branch and bound (_close_gap)
STRICT = 1e-4  # where the ray through the optimum finds no flip, the model is solved again for s N <= -STRICT |N(x)|
PROVE_NODES = 2000  # bounds for branch and bound's first question, no flip just inside the best? (0.1-0.4 s at width 256)
EXACT_SECONDS = 10.0  # the default time limit per example (--exact-seconds, ExperimentSpec.exact_seconds)


@dataclass(frozen=True)
class ExactOutcome:
    """SCIP's answer for one example.

    Attributes:
        delta: (d,) the model's optimum (None where it found no solution).
        lower: certified lower bound on the minimal flip's norm.
        status: SCIP's status ("optimal", "timelimit", "infeasible", ...).
    """

    delta: Tensor | None
    lower: float
    status: str


@dataclass(frozen=True, kw_only=True)
class Exact:
    """The proved minimal flip per example (SCIP), with a certified lower bound where time runs out.

    Args:
        time_limit: SCIP's wall-clock limit per example, seconds.
        seed: seed of the region walk that finds the first flip (the ball's radius R and SCIP's first solution).
        max_norm_factor: with no flip known, the ball has radius max_norm_factor * sqrt(d); no flip inside
            it gives norm +inf with that radius as the lower bound.
    """

    time_limit: float = EXACT_SECONDS  # SCIP's wall-clock limit per example, seconds
    seed: int = 0
    max_norm_factor: float = SEARCH_RADIUS

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult:
        """X: (n, d), y: (n,) -> proved minimal flips; example facts (columns of its rows in examples.csv):
        ``certified_lower_bound``, ``solver_proved`` (its flip is within PROOF_GAP of that bound) and
        ``solver_seconds`` (SCIP's time on the example, model building included)."""
        scip = _pyscipopt()
        n, d = X.shape
        start = RegionWalk(seed=self.seed, max_norm_factor=self.max_norm_factor)(net, X, y)  # the ball's radius
        start_norm = torch.where(start.found, start.delta.norm(dim=1), math.inf)
        delta = torch.where(start.found[:, None], start.delta, 0.0)
        found = start.found.clone()
        lower = torch.zeros(n, dtype=X.dtype, device=X.device)
        net64 = net.to("cpu", torch.float64)
        X64 = X.detach().to("cpu", torch.float64)
        r0 = certified_radius(net, X, bracket_top(start_norm, d, self.max_norm_factor))  # (n,) the relaxation's bound
        seconds = torch.zeros(n, dtype=X.dtype, device=X.device)
        for i in range(n):
            clock = time.perf_counter()
            known = float(start_norm[i])
            R = known * (1.0 + 1e-7) if math.isfinite(known) else self.max_norm_factor * math.sqrt(d)
            start_i = delta[i].detach().to("cpu", torch.float64) if math.isfinite(known) else None
            outcome = solve_min_flip(scip, net64, X64[i], R, time_limit=OPTIMIZE_SHARE * self.time_limit, seed=self.seed, known=start_i, r0=float(r0[i]))
            lower[i] = outcome.lower
            x = X[i : i + 1]
            if outcome.delta is None:
                seconds[i] = time.perf_counter() - clock
                continue
            candidates = [first_flip_along(net, x, outcome.delta.to(X)[None, :])]
            if candidates[0] is None:  # a corner where the ray through the optimum misses the flip set: ask for depth
                inside = solve_min_flip(scip, net64, X64[i], R, time_limit=self.time_limit, seed=self.seed, known=start_i, r0=float(r0[i]), depth=STRICT)
                if inside.delta is not None:  # back toward the optimum along the segment, then along the ray
                    nearer = _toward(net, x, outcome.delta.to(X)[None, :], inside.delta.to(X)[None, :])
                    candidates += [nearer, first_flip_along(net, x, nearer)]
            for candidate in candidates:  # each checked as x + candidate, exactly as the harness will
                if candidate is not None and float(candidate.norm()) < float(start_norm[i]) and bool(proposable_flips(net, x, x + candidate)[0]):
                    delta[i], start_norm[i], found[i] = candidate[0], float(candidate.norm()), True
            if found[i] and float(start_norm[i]) > max(float(lower[i]), float(r0[i])) * (1.0 + PROOF_GAP):
                self._close_gap(net, net64, i, x, X64[i], start_norm, delta, lower, r0, deadline=clock + self.time_limit)
            seconds[i] = time.perf_counter() - clock
        norm = torch.where(found, delta.norm(dim=1), math.inf)
        lower = torch.minimum(lower, norm)  # a bound above a verified flip would be SCIP's rounding, not a fact
        proved = proved_optimal(norm, lower, d, self.max_norm_factor)
        return AttackResult(delta=delta, found=found, example_facts={"certified_lower_bound": lower, "solver_proved": proved, "solver_seconds": seconds})

    def _close_gap(
        self, net: TwoLayerNet, net64: TwoLayerNet, i: int, x: Tensor, x64: Tensor, best: Tensor, delta: Tensor, lower: Tensor, r0: Tensor, *, deadline: float
    ) -> None:
        """Raise example i's certified bound (and lower its flip) until ``deadline``: is there a flip within
        radius r, for r just inside the best flip U (at most PROVE_NODES bounds: where U is the optimum this
        often proves it), then for r = sqrt(L U) between the bound L and U? Branch and bound on the
        relaxation answers (``checking.branch_and_bound``); a smaller ball gives tighter chords, so "no" is proved
        far sooner than at U. "No" raises L to r; a relaxed optimum that flips lowers U once verified (else the
        next r is asked below it); where time runs out the search's own bound still raises L. Updates ``best``
        (n,), ``delta`` (n, d) and ``lower`` (n,) in place."""
        L = max(float(lower[i]), float(r0[i]))
        ceiling = float(best[i])  # U, or below it where a flip of the relaxation failed verification
        attempt = True  # first ask just inside U, briefly: where U is the optimum this often proves it at once
        while time.perf_counter() < deadline and ceiling > L * (1.0 + PROOF_GAP):
            if attempt:
                r, nodes = ceiling / (1.0 + 0.5 * PROOF_GAP), PROVE_NODES
            else:
                r, nodes = (math.sqrt(L * ceiling) if L > 0 else 0.5 * ceiling), None
            outcome = branch_and_bound(net64, x64, r, deadline=deadline, max_nodes=nodes)
            L = max(L, outcome.lower)
            asked_inside, attempt = attempt, False
            if outcome.flip is None:
                if outcome.lower < r and not asked_inside:  # out of time (or of room for leaves): the bound so far is final
                    break
                continue
            flip = first_flip_along(net, x, outcome.flip.to(x)[None, :])
            if flip is not None and float(flip.norm()) < float(best[i]) and bool(proposable_flips(net, x, x + flip)[0]):
                delta[i], best[i] = flip[0], float(flip.norm())
                ceiling, attempt = float(best[i]), True  # a leaf's optimum is often the optimum itself: ask just inside it
            else:
                ceiling = r
        lower[i] = max(float(lower[i]), L)


def solve_min_flip(
    scip, net: TwoLayerNet, x: Tensor, R: float, *, time_limit: float, seed: int = 0, known: Tensor | None = None, r0: float = 0.0, depth: float = 0.0
) -> ExactOutcome:
    """SCIP on min ||delta||^2 s.t. s N(x + delta) <= RELAX |N(x)|, ||delta|| <= R, a strict-flip neuron on.

    Args:
        scip: the pyscipopt module.
        net: float64 on the CPU; x: (d,).
        R: the ball; every flip better than a known one lies inside it.
        known: (d,) a verified flip of norm <= R, handed to SCIP as its first solution (its incumbent prunes
            the tree from the start, so SCIP's own primal heuristics are switched off).
        r0: a certified lower bound on the minimal norm (the relaxation's), added as ||delta||^2 >= r0^2.
        depth: > 0 asks for s N(x + delta) <= -depth |N(x)| instead: a point inside the flip set, whose lower
            bound is then not one of the true problem.
    Returns: the optimum (or best solution) found, and the certified lower bound on the minimal norm (R if
    no flip lies in the ball).
    """
    W, b, v = net.W, net.b, net.v
    d = x.shape[0]
    z0 = W @ x + b  # (width,)
    N0 = float(torch.relu(z0) @ v)
    s = 1.0 if N0 > 0 else -1.0
    reach = R * W.norm(dim=1)
    lo, up = (z0 - reach).tolist(), (z0 + reach).tolist()
    a = (s * v).tolist()  # coefficient of relu(z_j) in s N
    model = scip.Model()
    model.hideOutput()
    model.setParam("limits/time", float(time_limit))
    model.setParam("randomization/randomseedshift", int(seed))
    # measured on the baseline preset's nets (d = 8, width 16): 8 times faster than SCIP's defaults, same optima
    model.setHeuristics(scip.SCIP_PARAMSETTING.OFF)
    model.setSeparating(scip.SCIP_PARAMSETTING.FAST)
    dx = [model.addVar(lb=-R, ub=R, name=f"d{k}") for k in range(d)]
    t = model.addVar(lb=r0 * r0, ub=R * R, name="t")
    model.addCons(scip.quicksum(e * e for e in dx) <= t)
    Wl, z0l = W.tolist(), z0.tolist()
    start = {} if known is None else {"t": float(known @ known), **{f"d{k}": value for k, value in enumerate(known.tolist())}}
    z_known = [] if known is None else (W @ (x + known) + b).tolist()
    out = []  # terms of s N(x + delta)
    strict = []  # indicators (or constants) of neurons with s v_j < 0 that are on
    for j in range(net.width):
        if up[j] <= 0.0 or a[j] == 0.0:
            continue  # off in the whole ball (or no weight)
        z = z0l[j] + scip.quicksum(Wl[j][k] * dx[k] for k in range(d) if Wl[j][k] != 0.0)
        if lo[j] >= 0.0:  # on in the whole ball: relu(z) = z
            out.append(a[j] * z)
            if a[j] < 0:
                strict.append(1.0)
            continue
        h = model.addVar(lb=0.0, ub=up[j], name=f"h{j}")
        on = model.addVar(vtype="B", name=f"a{j}")
        model.addCons(h >= z)
        model.addCons(h <= z - lo[j] * (1 - on))
        model.addCons(h <= up[j] * on)
        out.append(a[j] * h)
        if a[j] < 0:
            strict.append(on)
        if z_known:
            start[f"h{j}"], start[f"a{j}"] = max(z_known[j], 0.0), float(z_known[j] > 0)
    if not any(isinstance(term, float) for term in strict):
        if not strict:  # no neuron that could make s N negative turns on inside the ball
            return ExactOutcome(delta=None, lower=R * (1.0 - DUAL_SAFETY), status="no flip in the ball")
        model.addCons(scip.quicksum(strict) >= 1)
    model.addCons(scip.quicksum(out) <= (-depth if depth > 0 else RELAX) * abs(N0))
    model.setObjective(t, "minimize")
    if start:
        solution = model.createSol()
        for var in model.getVars():
            model.setSolVal(solution, var, start.get(var.name, 0.0))
        model.addSol(solution)  # refused (returns False) if SCIP's tolerances disagree: then SCIP searches alone
    model.optimize()
    status = model.getStatus()
    if status == "infeasible":  # every strict flip satisfies the model: none lies within R
        return ExactOutcome(delta=None, lower=R * (1.0 - DUAL_SAFETY), status=status)
    dual = max(float(model.getDualbound()), 0.0)
    lower = math.sqrt(dual) * (1.0 - DUAL_SAFETY)
    if model.getNSols() == 0:
        return ExactOutcome(delta=None, lower=lower, status=status)
    best = model.getBestSol()
    delta = torch.tensor([model.getSolVal(best, e) for e in dx], dtype=torch.float64)
    return ExactOutcome(delta=delta, lower=lower, status=status)


def _toward(net: TwoLayerNet, x: Tensor, near: Tensor, inside: Tensor, steps: int = 50) -> Tensor:
    """(1, d): the point of the segment from ``near`` (the relaxed optimum, no flip) to ``inside`` (a flip)
    nearest to ``near`` that still flips beyond rounding, by bisection; x, near, inside: (1, d)."""
    lo, hi = 0.0, 1.0
    if not bool(proposable_flips(net, x, x + inside)[0]):
        return inside
    best = inside
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        candidate = near + mid * (inside - near)  # checked as x + candidate, exactly as it is reported
        if bool(proposable_flips(net, x, x + candidate)[0]):
            hi, best = mid, candidate
        else:
            lo = mid
    return best


def _pyscipopt():
    try:
        import pyscipopt
    except ImportError:
        raise AttackUnavailable("exact needs SCIP's Python interface: pip install 'marginbench[exact]' (pyscipopt)") from None
    return pyscipopt
