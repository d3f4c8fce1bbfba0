"""Theory diagnostics of a trained net: the margin set, the normalized margin, the KKT residual."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from marginbench.models.two_layer import TwoLayerNet

MARGIN_SLACK = 0.1  # Vardi et al. 2022, Section 6: "we also allow 10% slack"


def clean_accuracy(net: Callable[[Tensor], Tensor], X: Tensor, y: Tensor) -> float:
    """The fraction of points X: (n, d) with labels y: (n,) the net classifies correctly, y N(x) > 0 (N(x) = 0 is wrong)."""
    with torch.no_grad():
        return float((y * net(X) > 0).double().mean())


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


# Above this many examples the n x n float64 Gram matrix of ``kkt_multipliers`` (and its Cholesky copy) is not
# formed: at n = 18,520 (2.7 GB each) scipy's bundled OpenBLAS crashed the process in the solve (a segfault, twice,
# on the full Figure 1a grid's alpha = 1.5 column), at n = 31,623 they would take 16 GB; n = 14,697 (1.7 GB) ran.
MAX_GRAM_EXAMPLES = 15_000


def kkt_residual(net: TwoLayerNet, X: Tensor, y: Tensor) -> float:
    """See ``kkt_multipliers``: the residual of the best nonnegative multipliers, over ||theta||; NaN for more than
    MAX_GRAM_EXAMPLES examples."""
    if X.shape[0] > MAX_GRAM_EXAMPLES:
        return math.nan
    return kkt_multipliers(net, X, y)[1]


def kkt_multipliers(net: TwoLayerNet, X: Tensor, y: Tensor) -> tuple[np.ndarray, float]:
    """min_{lambda >= 0} ||theta - sum_i lambda_i grad_theta q_i|| / ||theta||, q_i = y_i N(x_i).

    Zero exactly at a KKT point of the max-margin problem (2) of Vardi et al. (stationarity with
    nonnegative multipliers; complementary slackness is not imposed). The ratio does not change when theta
    is rescaled, so it is computed at theta as is rather than after normalizing min_i q_i to 1.

    The least squares run on the n x n Gram matrix G = A^T A of the gradients A = [grad q_1 ... grad q_n]:
    G_ij = y_i y_j ((x_i.x_j + 1) sum_k v_k^2 a_ik a_jk + h_i.h_j) with a the activation pattern and h the
    hidden layer, and A^T theta = 2 q by Euler's theorem for degree-2 homogeneous functions; so it needs
    O(n^2 width) work and never forms the (width (d + 2)) x n matrix A. The nonnegative least squares
    themselves are ``nnls_gram``'s.
    """
    Z = net.preactivations(X)
    active = (Z > 0).to(X.dtype)  # (n, width)
    H = torch.relu(Z)
    G = (y[:, None] * y[None, :]) * ((X @ X.T + 1.0) * ((active * net.v.pow(2)) @ active.T) + H @ H.T)
    q = y * net(X)
    c = (2.0 * q).double().cpu().numpy()
    G_np = G.double().cpu().numpy()
    theta_sq = net.sq_norm()
    lam = nnls_gram(G_np, c)
    # ||theta - A lam||^2 = theta^2 - 2 lam.c + lam^T G lam
    residual_sq = max(theta_sq - 2.0 * float(lam @ c) + float(lam @ (G_np @ lam)), 0.0)
    return lam, math.sqrt(residual_sq / theta_sq)


def nnls_gram(G: np.ndarray, c: np.ndarray, *, max_iter: int = 200) -> np.ndarray:
    """argmin_{lam >= 0} lam^T G lam - 2 c.lam for a symmetric positive semidefinite G: (n, n), c: (n,).

    Block principal pivoting (Kim & Park, "Fast nonnegative matrix factorization: an active-set-like method
    and comparisons", SIAM J. Sci. Comput. 33(6), 2011, Algorithm 1) on the normal equations: solve on a
    guessed free set F, then move every index that breaks a KKT condition (lam_F < 0, or a negative
    gradient G lam - c off F) across at once, falling back to one index at a time when that stops reducing
    the count. The free set starts full: at trained nets nearly every multiplier is positive (2817 of 2828 at
    d = 200, n = 2828), so it converges in a few Cholesky solves where Lawson-Hanson (scipy's nnls) adds one
    index per iteration (30 s there, against ~1 s). The answer is the same exact optimum; where G_FF is not
    positive definite (a rank-deficient G) or pivoting does not settle, it falls back to ``_nnls_eig``.
    """
    import scipy.linalg

    n = len(c)
    scale = float(np.abs(c).max()) if n else 0.0
    if n == 0 or scale == 0.0:
        return np.zeros(n)
    tol = 1e-12 * max(scale, float(np.abs(G).max()))
    free = np.ones(n, dtype=bool)
    best, backup = n + 1, 3
    for _ in range(max_iter):
        lam = np.zeros(n)
        if free.any():
            try:
                lam[free] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(G[np.ix_(free, free)]), c[free])
            except np.linalg.LinAlgError:
                return _nnls_eig(G, c)
        gradient = G @ lam - c
        wrong = (free & (lam < -tol)) | (~free & (gradient < -tol))
        count = int(wrong.sum())
        if count == 0:
            return np.clip(lam, 0.0, None)
        if count < best:
            best, backup = count, 3
        elif backup > 0:
            backup -= 1
        else:  # Murty's rule: only the largest wrong index moves, which cannot cycle
            wrong = np.zeros(n, dtype=bool)
            wrong[np.flatnonzero((free & (lam < -tol)) | (~free & (gradient < -tol)))[-1]] = True
        free ^= wrong
    return _nnls_eig(G, c)


def _nnls_eig(G: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``nnls_gram`` by scipy's Lawson-Hanson NNLS, for any positive semidefinite G (slow at large n).

    Factor G = R^T R on its range (c lies in it): lam^T G lam - 2 c.lam = |R lam - b|^2 - |b|^2 with
    b = R^{-T} c, a standard NNLS in lam.
    """
    from scipy.optimize import nnls

    evals, evecs = np.linalg.eigh(G)
    keep = evals > evals.max() * 1e-12 if evals.max() > 0 else np.zeros_like(evals, dtype=bool)
    if not keep.any():
        return np.zeros(len(c))
    sqrt_evals = np.sqrt(evals[keep])
    R = sqrt_evals[:, None] * evecs[:, keep].T
    b = (evecs[:, keep].T @ c) / sqrt_evals
    return nnls(R, b, maxiter=50 * R.shape[1])[0]


KINK_TOL = 1e-2  # |w_j.x_i + b_j| <= KINK_TOL (||w_j|| ||x_i|| + |b_j|): relu'(z) may be anything in [0, 1]
MAX_KINKS = 3000  # above this many kinks the (n + K)^2 Gram matrix is not formed: NaN


def kkt_residual_clarke(net: TwoLayerNet, X: Tensor, y: Tensor, *, kink_tol: float = KINK_TOL, iterations: int = 3000) -> float:
    """``kkt_residual`` with the Clarke subdifferential of ReLU at its kinks (Vardi et al., Appendix A).

    At a pre-activation z_ij within ``kink_tol`` of 0 (relative to ||w_j|| ||x_i|| + |b_j|), relu'(z_ij) may
    be any a_ij in [0, 1]. With mu_ij = lambda_i a_ij the problem stays convex:
        min ||theta - sum_i lambda_i grad q_i|_{a = 1[z > 0], kinks off} - sum_(ij) mu_ij y_i v_j [x_i; 1]_j||
        over lambda >= 0, 0 <= mu_ij <= lambda_i,
    solved by FISTA on the (n + K) Gram matrix, started at ``kkt_residual``'s multipliers (a feasible point), so
    the value is never above it. Gradient descent chatters around kinks rather than landing on them, so the
    one-sided residual can stay large at a point that is KKT up to kinks; this one tells the two apart. NaN
    when there are more than MAX_KINKS kinks.

    Not a summary column: the tolerance is relative to ||w_j|| ||x_i||, while typical |z_ij| shrink like
    1/sqrt(d), so at d = 64 thousands of pairs count as kinks and the freedom stops meaning much; it is an
    analysis tool for small nets (tests/test_schedules.py, results/README.md).
    """
    Z = net.preactivations(X)  # (n, width)
    scale = X.norm(dim=1)[:, None] * net.W.norm(dim=1)[None, :] + net.b.abs()[None, :]
    kink = Z.abs() <= kink_tol * scale
    rows, cols = kink.nonzero(as_tuple=True)  # the K kinks (i, j), sorted by example
    n, K = X.shape[0], rows.numel()
    if K > MAX_KINKS:
        return math.nan
    act = ((Z > 0) & ~kink).to(X.dtype)
    H = torch.relu(Z)
    v2 = net.v.pow(2)
    XX1 = X @ X.T + 1.0
    yy = y[:, None] * y[None, :]
    # Columns: A_i (the gradient of q_i with the kinks switched off), B_k = y_i v_j [x_i; 1] in neuron j's (w_j, b_j).
    G_AA = yy * (XX1 * ((act * v2) @ act.T) + H @ H.T)
    G_AB = yy[:, rows] * v2[cols][None, :] * act[:, cols] * XX1[:, rows]
    G_BB = (cols[:, None] == cols[None, :]).to(X.dtype) * yy[rows][:, rows] * v2[cols][:, None] * XX1[rows][:, rows]
    G = torch.cat([torch.cat([G_AA, G_AB], 1), torch.cat([G_AB.T, G_BB], 1)], 0)
    c = torch.cat([y * ((act * Z + H) @ net.v), y[rows] * net.v[cols] * Z[rows, cols]])  # M^T theta
    theta_sq = net.sq_norm()
    lam, start = kkt_multipliers(net, X, y)
    z = torch.cat([torch.as_tensor(lam, dtype=X.dtype, device=X.device), torch.zeros(K, dtype=X.dtype, device=X.device)])
    z[n:] = torch.where(Z[rows, cols] > 0, z[rows], 0.0)  # the one-sided multipliers as a feasible point

    def objective(z: Tensor) -> float:
        return max(theta_sq - 2 * float(c @ z) + float(z @ (G @ z)), 0.0)

    best = min(start**2 * theta_sq, objective(z))
    if K == 0:
        return math.sqrt(best / theta_sq)
    step = 0.5 / float(torch.linalg.eigvalsh(G)[-1])  # 1 / the Lipschitz constant of grad = 2 (G z - c)
    w, z_prev, t = z.clone(), z.clone(), 1.0
    for it in range(iterations):
        z = _project_multipliers(w - step * 2 * (G @ w - c), n, rows)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        w, z_prev, t = z + ((t - 1) / t_next) * (z - z_prev), z, t_next
        if it % 100 == 99 or it == iterations - 1:
            best = min(best, objective(z))
    return math.sqrt(best / theta_sq)


def _project_multipliers(z: Tensor, n: int, rows: Tensor) -> Tensor:
    """Euclidean projection onto {lambda >= 0, 0 <= mu_k <= lambda_{rows_k}}, example by example, vectorized.

    For one example, with its mu's sorted down, the optimal lambda is max_m (lambda^ + top-m sum)/(1 + m)
    (averaging in a value raises the mean only while the value is above it), then clipped at 0; each mu
    is then clipped to [0, lambda].
    """
    lam_hat, mu_hat = z[:n], z[n:]
    by_mu = torch.argsort(-mu_hat, stable=True)
    order = by_mu[torch.argsort(rows[by_mu], stable=True)]  # by example, then mu down
    r, m_sorted = rows[order], mu_hat[order]
    first = torch.ones_like(r, dtype=torch.bool)
    first[1:] = r[1:] != r[:-1]
    start = torch.cummax(torch.where(first, torch.arange(len(r), device=r.device), 0), 0).values
    csum = torch.cumsum(m_sorted, 0)
    within = csum - (csum[start] - m_sorted[start])  # top-m sum within the example's group
    m = torch.arange(len(r), device=r.device) - start + 1
    candidates = (lam_hat[r] + within) / (1 + m)
    lam = lam_hat.clone().scatter_reduce(0, r, candidates, reduce="amax", include_self=True).clamp_min(0)
    return torch.cat([lam, torch.minimum(mu_hat.clamp_min(0), lam[rows])])


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
