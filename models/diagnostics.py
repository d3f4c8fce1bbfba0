"""Theory diagnostics of a trained net: the margin set, the normalized margin, the KKT residual."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from marginbench.models.two_layer import TwoLayerNet

MARGIN_SLACK = 0.1  # Vardi et al. 2022, Section 6: "we also allow 10% slack"


def margin_set(q: Tensor, *, slack: float = MARGIN_SLACK) -> Tensor:
    """I = {i : q_i <= (1 + slack) * min_j q_j} for margins q: (n,) -> bool mask (n,) (Section 6).

    The definition assumes every example is classified correctly (min_j q_j > 0), as after training to
    loss 1e-30; where some are not, I is the misclassified examples (q_i <= 0).
    """
    q_min = q.min()
    bound = (1.0 + slack) * q_min if q_min > 0 else torch.zeros_like(q_min)
    return q <= bound


def normalized_margin(net: TwoLayerNet, q: Tensor) -> float:
    """min_i q_i / ||theta||^2: the margin of the degree-2 homogeneous net at unit parameter norm."""
    return float(q.min()) / net.sq_norm()


def kkt_residual(net: TwoLayerNet, X: Tensor, y: Tensor) -> float:
    """min_{lambda >= 0} ||theta - sum_i lambda_i grad_theta q_i|| / ||theta||, q_i = y_i N(x_i).

    Zero exactly at a KKT point of the max-margin problem (2) of Vardi et al. (stationarity with
    nonnegative multipliers; complementary slackness is not imposed). The ratio does not change when theta
    is rescaled, so it is computed at theta as is rather than after normalizing min_i q_i to 1.

    The least squares run on the n x n Gram matrix G = A^T A of the gradients A = [grad q_1 ... grad q_n]:
    G_ij = y_i y_j ((x_i.x_j + 1) sum_k v_k^2 a_ik a_jk + h_i.h_j) with a the activation pattern and h the
    hidden layer, and A^T theta = 2 q by Euler's theorem for degree-2 homogeneous functions; so it needs
    O(n^2 width) work and never forms the (width (d + 2)) x n matrix A.
    """
    from scipy.optimize import nnls

    Z = net.preactivations(X)
    active = (Z > 0).to(X.dtype)  # (n, width)
    H = torch.relu(Z)
    G = (y[:, None] * y[None, :]) * ((X @ X.T + 1.0) * ((active * net.v.pow(2)) @ active.T) + H @ H.T)
    q = y * net(X)
    c = (2.0 * q).cpu().numpy()
    G_np = G.cpu().numpy()
    theta_sq = net.sq_norm()
    # ||theta - A lam||^2 = theta^2 - 2 lam.c + lam^T G lam. Factor G = R^T R on its range (c lies in it):
    # then it equals theta^2 - |b|^2 + |R lam - b|^2 with b = R^{-T} c, a standard NNLS in lam.
    evals, evecs = np.linalg.eigh(G_np)
    keep = evals > evals.max() * 1e-12 if evals.max() > 0 else np.zeros_like(evals, dtype=bool)
    if not keep.any():
        return 1.0
    sqrt_evals = np.sqrt(evals[keep])
    R = sqrt_evals[:, None] * evecs[:, keep].T
    b = (evecs[:, keep].T @ c) / sqrt_evals
    _, rnorm = nnls(R, b, maxiter=50 * R.shape[1])
    residual_sq = max(theta_sq - float(b @ b) + rnorm**2, 0.0)
    return math.sqrt(residual_sq / theta_sq)
