"""When a proposal counts as a flip: a change of sign beyond the forward pass's rounding error.

A perturbation delta flips x only where s N(x + delta) < -tau(x + delta), s = sign N(x) and tau a bound on
|fl(N) - N| that holds for every summation order (DESIGN.md, Registries). Without it a verdict at
N(x + delta) ~ 1e-16 would depend on whether numpy or torch, CPU or GPU, added the terms up.

The bound (Higham 2002, Accuracy and Stability of Numerical Algorithms, Section 3.1): a dot product of
length k computed in any order has |fl(a . b) - a . b| <= gamma_k |a| . |b|, gamma_k ~ k u, u = eps/2.
Composed through the layers of a ReLU net, |fl(N(x)) - N(x)| <= gamma_K S(x), K the sum of the layers'
fan-ins (plus one per bias), S(x) the same net evaluated with every weight and input replaced by its
absolute value; Cauchy-Schwarz bounds S(x) by A ||x|| + B, which costs nothing per point (``rounding_terms``
of each net). FLIP_ULPS leaves room beyond gamma_K.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

FLIP_ULPS = 4.0  # tau = FLIP_ULPS * eps * K * (A ||x|| + B): 8 times the first-order bound gamma_K ~ K eps / 2
# An attack proposes only flips with s N(x') < -PROPOSAL_TAUS tau(x'). The harness's own forward pass (another
# batch shape, so another summation order) differs from the attack's by at most 2 tau, so its verdict
# s N(x') < -tau agrees. Proposing at the verdict's own threshold let exact hand over a flip that the
# harness's pass, on a batch of 4 rows instead of 1, found 3e-18 short (d = 2, width 4, N(x') ~ -tau).
PROPOSAL_TAUS = 3.0


class RoundingBounded(Protocol):
    def __call__(self, X: Tensor) -> Tensor: ...

    def rounding_terms(self) -> tuple[Tensor, Tensor, int]: ...


def rounding_bound(net: RoundingBounded, X: Tensor) -> Tensor:
    """X: (n, d) -> tau: (n,), a bound on the rounding error of N(x) at each row, whatever the summation order."""
    return rounding_bound_within(net, X.norm(dim=1))


def rounding_bound_within(net: RoundingBounded, norm: Tensor) -> Tensor:
    """norm: (n,) -> (n,) the rounding bound tau of N at any point x with ||x|| <= norm."""
    A, B, K = net.rounding_terms()
    return FLIP_ULPS * torch.finfo(norm.dtype).eps * K * (A * norm + B)


def flip_margin(net: RoundingBounded, s: Tensor, X_adv: Tensor, value: Tensor | None = None, *, taus: float = 1.0) -> Tensor:
    """s N(x') + taus tau(x') for X_adv: (n, d) and the signs s: (n,) to flip; negative where x' is a flip
    beyond rounding (taus = 1, the verdict) or a proposal the verdict will confirm (taus = PROPOSAL_TAUS).
    ``value``: N(X_adv) where the caller has it already (no second forward pass)."""
    if value is None:
        value = net(X_adv)
    return s * value + taus * rounding_bound(net, X_adv)


def strict_flips(net: RoundingBounded, X: Tensor, X_adv: Tensor) -> Tensor:
    """(n,) bool, the verdict: x' = X_adv flips sign N(x) beyond rounding (sign N(x) != 0 and s N(x') < -tau(x'))."""
    s = torch.sign(net(X))
    return (s != 0) & (flip_margin(net, s, X_adv) < 0)


def proposable_flips(net: RoundingBounded, X: Tensor, X_adv: Tensor) -> Tensor:
    """(n,) bool: x' flips sign N(x) by PROPOSAL_TAUS tau, so the verdict agrees in any summation order (what an
    attack checks before it proposes x')."""
    s = torch.sign(net(X))
    return (s != 0) & (flip_margin(net, s, X_adv, taus=PROPOSAL_TAUS) < 0)


def near_ties(net: RoundingBounded, X: Tensor, X_adv: Tensor) -> Tensor:
    """(n,) bool: N(x') lies within rounding of 0 (|N(x')| <= tau(x')): no verdict either way."""
    return net(X_adv).abs() <= rounding_bound(net, X_adv)


def overshoot(net: RoundingBounded, X: Tensor, delta: Tensor, found: Tensor, *, steps: int = 24) -> Tensor:
    """delta: (n, d) with the rows ``found`` scaled up, by 1 + 2^k 1e-12 for the first k <= ``steps`` that
    gives a proposable flip, where the proposal itself is a near-tie; other rows unchanged. For attacks
    that land on the decision boundary (Foolbox's) so that their answer holds in any summation order."""
    s = torch.sign(net(X))
    rows = (found & (s != 0) & (flip_margin(net, s, X + delta, taus=PROPOSAL_TAUS) >= 0)).nonzero(as_tuple=True)[0]
    out = delta.clone()
    for k in range(steps):
        if rows.numel() == 0:
            break
        scaled = delta[rows] * (1.0 + 2.0**k * 1e-12)
        ok = flip_margin(net, s[rows], X[rows] + scaled, taus=PROPOSAL_TAUS) < 0
        out[rows[ok]] = scaled[ok]
        rows = rows[~ok]
    return out
