"""Theory diagnostics of a trained net: the margin set, the normalized margin, the KKT residual."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def project_off(P_basis: Tensor, V: Tensor) -> Tensor:
    """Pi_{P-perp} of the rows of V: (r, d), for P spanned by the orthonormal columns of P_basis: (d, d - ell)."""
    return V - (V @ P_basis) @ P_basis.T


@dataclass(frozen=True)
class OffManifoldGradients:
    """Melamed et al. 2023, Theorems 4.1 and 6.1/6.2, at points x0 of P, per point.

    Attributes:
        k: (n,) active neurons #{i : w_i . x0 >= 0}.
        g_off: (n,) ||Pi_{P-perp} grad_x N(x0)||.
        lower: (n,) Theorem 4.1's lower bound beta sqrt(k ell / (2 m)) (= sqrt(k ell / (2 m d)) at the paper's
            beta = 1/sqrt(d); the paper notes it extends to N(0, beta^2 I) initializations).
        upper: (n,) Theorem 6.1's upper bound beta sqrt(2 k ell / m); with L2, beta = (1 - eta lambda)^T / sqrt(d)
            gives Theorem 6.2's (1 - eta lambda)^T sqrt(2 k ell / (m d)).
    """

    k: Tensor
    g_off: Tensor
    lower: Tensor
    upper: Tensor


def off_manifold_gradients(net: TwoLayerNet, X0: Tensor, P_basis: Tensor, *, beta: float) -> OffManifoldGradients:
    """The off-manifold gradient and its bounds at points X0: (n, d) of P.

    Args:
        net: a bias-free net N(x) = sum_i u_i relu(w_i . x).
        X0: (n, d) points of P.
        P_basis: (d, d - ell) orthonormal basis of P.
        beta: the effective initialization scale of the off-manifold weights (init std times the L2 decay).
    """
    m, d = net.W.shape
    ell = d - P_basis.shape[1]
    active = (net.preactivations(X0) >= 0).to(X0.dtype)  # (n, m): the paper's S uses >= 0
    grad = (active * net.v) @ net.W  # (n, d): grad_x N(x0) = sum_{i in S} u_i w_i
    k = active.sum(1)
    return OffManifoldGradients(
        k=k,
        g_off=project_off(P_basis, grad).norm(dim=1),
        lower=beta * torch.sqrt(k * ell / (2.0 * m)),
        upper=beta * torch.sqrt(2.0 * k * ell / m),
    )


def off_weight_drift(init: TwoLayerNet, net: TwoLayerNet, P_basis: Tensor) -> float:
    """max_i ||Pi_{P-perp}(w_i - w_i(0))||: zero without L2 when the data lie on P (Theorem A.2)."""
    return float(project_off(P_basis, net.W - init.W).norm(dim=1).max())


def thm51_required_ell(*, width: int, d: int) -> float:
    """32 (m - 1) log(m^2 d): the smallest ell that Melamed et al. 2023, Theorem 5.1, assumes (m = width)."""
    return 32.0 * (width - 1) * math.log(width * width * d)


def thm51_assumption(*, ell: int, width: int, d: int) -> bool:
    """Whether ell >= 32 (m - 1) log(m^2 d), the assumption of Melamed et al. Theorem 5.1."""
    return ell >= thm51_required_ell(width=width, d=d)
