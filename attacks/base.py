"""The one attack interface: (net, X, y) -> proposed perturbations.

An attack only proposes (``marginbench.checking.proposal``). The harness (``marginbench.checking.verify``) recomputes every norm and every flip
from the network itself and never trusts the attack's own view of success.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from marginbench.checking.proposal import SEARCH_RADIUS, AttackResult, SharedPerturbation
from marginbench.models.two_layer import TwoLayerNet

__all__ = ["SEARCH_RADIUS", "Attack", "AttackResult", "AttackUnavailable", "SharedPerturbation"]  # the proposal types, re-exported for attack authors

class AttackUnavailable(Exception):
    """An attack that cannot run here: it does not apply to the data (no subspace P) or an optional package
    is missing. Its message is one line; the runner records it and goes on with the other attacks."""


class Attack(Protocol):
    """Propose, for every row of X, a small L2 perturbation that flips sign N(x)."""

    def __call__(self, net: TwoLayerNet, X: Tensor, y: Tensor) -> AttackResult: ...
