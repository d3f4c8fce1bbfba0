"""When an example's minimal flip counts as proved: its verified norm meets its certified lower bound."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginbench.checking.proposal import SEARCH_RADIUS

DUAL_SAFETY = 1e-6  # a certified bound from a solver's dual bound D is sqrt(D) * (1 - DUAL_SAFETY)
PROOF_GAP = 1e-4  # proved optimal: verified norm <= lower bound * (1 + PROOF_GAP)


def proved_optimal(norm: Tensor, lower: Tensor, d: int, max_norm_factor: float = SEARCH_RADIUS) -> Tensor:
    """(n,) bool: a verified norm (n,) within PROOF_GAP of its certified lower bound (n,), or, where no flip was
    found (+inf), a bound that covers the whole search radius max_norm_factor * sqrt(d)."""
    searched = max_norm_factor * math.sqrt(d) * (1.0 - DUAL_SAFETY)
    return torch.where(norm.isfinite(), norm <= lower * (1.0 + PROOF_GAP), lower >= searched)
