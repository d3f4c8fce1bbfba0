"""The sqrt(d)-robust network of Vardi et al. 2022, Theorem 3.1, built in closed form from the data."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginbench.models.two_layer import TwoLayerNet


def max_correlation(X: Tensor) -> float:
    """c = max_{i != j} |<x_i, x_j>| / d for X: (n, d), the constant of Theorem 3.1."""
    n, d = X.shape
    G = (X @ X.T).abs()
    G.fill_diagonal_(0.0)
    return float(G.max()) / d if n > 1 else 0.0


def robust_construction(X: Tensor, y: Tensor) -> tuple[TwoLayerNet, float]:
    """Theorem 3.1: one neuron per example, v_j = y_j, w_j = 2 x_j / (d (1 - c)), b_j = -(1 + c) / (1 - c).

    On data with ||x_i|| = sqrt(d) and |<x_i, x_j>| <= c d it has y_i N(x_i) = 1 for every i, and no
    perturbation of norm <= (1 - c)/4 * sqrt(d) flips any x_i. Returns the net (width n) and c.

    Args:
        X: (n, d) points on the sphere of radius sqrt(d).
        y: (n,) labels in {-1, +1}.
    """
    n, d = X.shape
    radii = X.norm(dim=1)
    if not bool(torch.allclose(radii, torch.full_like(radii, math.sqrt(d)), rtol=1e-6, atol=0.0)):
        raise ValueError("the Theorem 3.1 construction needs every point on the sphere of radius sqrt(d)")
    c = max_correlation(X)
    if not c < 1.0:
        raise ValueError(f"the Theorem 3.1 construction needs max |<x_i, x_j>|/d < 1, got c = {c:.4g}")
    W = 2.0 * X / (d * (1.0 - c))
    b = torch.full((n,), -(1.0 + c) / (1.0 - c), dtype=X.dtype, device=X.device)
    return TwoLayerNet(W=W, b=b, v=y.to(X.dtype).clone()), c


def construction_radius(c: float, d: int) -> float:
    """(1 - c)/4 * sqrt(d): Theorem 3.1's guaranteed radius in which no x_i is flipped."""
    return (1.0 - c) / 4.0 * math.sqrt(d)
