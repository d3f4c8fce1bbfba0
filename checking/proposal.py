"""What an attack proposes, the contract between attacks and the harness that checks them.

An attack only proposes (``AttackResult``); the checking layer (``marginbench.checking.verify``) recomputes
every norm and every flip from the network itself and never trusts the attack's own view of success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

# Every attack searches perturbations of norm up to SEARCH_RADIUS * sqrt(d) (the data have norm sqrt(d));
# beyond it an example counts as not flipped (+inf), so all attacks fail at the same radius.
SEARCH_RADIUS = 10.0


@dataclass(frozen=True)
class SharedPerturbation:
    """One perturbation scale meant to flip a whole set of examples at once (a universal perturbation).

    Attributes:
        rows: (n,) bool, the examples it is meant to flip.
        delta: (n, d) the perturbation of each of those rows (zeros elsewhere); all rows share one norm.
    """

    rows: Tensor
    delta: Tensor


@dataclass(frozen=True)
class AttackResult:
    """What an attack proposes for points X: (n, d).

    Attributes:
        delta: (n, d) proposed perturbation per example; zeros where the attack found none.
        found: (n,) bool, where the attack proposes delta as a flip.
        shared: optional universal perturbation of a set of examples (e.g. the common scale along Vardi et
            al.'s Theorem 4.1 direction).
        extras: scalar facts about the attack's own run (e.g. the size of the margin set it used).
        example_facts: per-example facts, each (n,), written as extra columns of examples.csv (e.g. whether
            Melamed et al.'s Theorem 5.1 z flips the example).
    """

    delta: Tensor
    found: Tensor
    shared: SharedPerturbation | None = None
    extras: Mapping[str, float] = field(default_factory=dict)
    example_facts: Mapping[str, Tensor] = field(default_factory=dict)
