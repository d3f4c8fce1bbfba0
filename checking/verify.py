"""The harness's check of what attacks propose, and what is proved about each example's minimal flip.

The harness never trusts an attack: every norm is recomputed from the perturbation, and a perturbation
counts only if a plain forward pass of the network shows a flip beyond rounding, s N(x + delta) < -tau
(``marginbench.checking.flips``), so that no summation order can reverse the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from marginbench.checking.certify import bracket_top, certified_radius
from marginbench.checking.flips import near_ties, strict_flips
from marginbench.checking.proof import proved_optimal
from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult, SharedPerturbation
from marginbench.models.two_layer import TwoLayerNet


@dataclass(frozen=True)
class Verified:
    """An attack's proposal after an independent check.

    Attributes:
        delta: (n, d) the perturbations that flip (zeros where none does).
        norm: (n,) ||delta_i|| where it flips, +inf elsewhere.
        success: (n,) bool, a flip beyond rounding was confirmed.
        ties: (n,) bool, proposals rejected as near-ties: |N(x + delta)| within the rounding bound tau.
    """

    delta: Tensor
    norm: Tensor
    success: Tensor
    ties: Tensor


def verify(net: TwoLayerNet, X: Tensor, result: AttackResult) -> Verified:
    """Keep the proposals of ``result`` on X: (n, d) that a forward pass confirms as flips beyond rounding."""
    proposed = torch.where(result.found[:, None], result.delta, 0.0)
    success = result.found & strict_flips(net, X, X + proposed)
    ties = result.found & ~success & near_ties(net, X, X + proposed)
    delta = torch.where(success[:, None], proposed, 0.0)
    norm = torch.where(success, delta.norm(dim=1), torch.inf)
    return Verified(delta=delta, norm=norm, success=success, ties=ties)


def verify_shared(net: TwoLayerNet, X: Tensor, shared: SharedPerturbation | None) -> float:
    """The common norm of a universal perturbation if it flips every one of its rows, else +inf; NaN for an
    attack that proposes none."""
    if shared is None:
        return math.nan
    if not bool(shared.rows.any()):
        return math.inf
    rows = shared.rows
    delta = shared.delta[rows]
    if not bool(strict_flips(net, X[rows], X[rows] + delta).all()):
        return math.inf
    return float(delta.norm(dim=1).max())


def certificates(net: TwoLayerNet | Any, X: Tensor, best_norm: Tensor, bounds: Sequence[Tensor]) -> dict[str, Tensor]:
    """Per example of X: (n, d), what is proved about its minimal flip, as examples.csv columns (n,) each:

    - ``lower_bound``: the largest certified lower bound on the minimal norm: the triangle relaxation's
      radius (``checking.certify``, two-layer nets; NaN for others) and the attacks' own ``bounds`` (n,) each
      (``exact``'s, from SCIP: its ``certified_lower_bound`` column; NaN where an attack has none);
    - ``proved_optimal``: the best verified norm ``best_norm`` (n,) is within PROOF_GAP of that bound, or no
      flip exists within the search radius where every attack stops.
    """
    top = bracket_top(best_norm, X.shape[1], SEARCH_RADIUS)
    lower = certified_radius(net, X, top) if isinstance(net, TwoLayerNet) else torch.full_like(best_norm, math.nan)
    for bound in bounds:
        lower = torch.fmax(lower, bound.to(lower))
    return {"lower_bound": lower, "proved_optimal": proved_optimal(best_norm, lower, X.shape[1])}
