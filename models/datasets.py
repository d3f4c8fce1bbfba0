"""Datasets: the points a network is trained on and the points it is attacked at.

- ``sphere`` (Vardi et al. 2022, Section 6): x ~ Uniform(sqrt(d) S^{d-1}), y uniform on {-1, +1}.
- ``subspace`` (Melamed et al. 2023, Section 3.2): points on a random (d - ell)-dimensional linear subspace P,
  uniform on the sphere of radius sqrt(d) inside P, labels by a rule on P; held-out points of P to attack.
- ``digits``: scikit-learn's bundled 8x8 digits (no download), odd (+1) vs even (-1), centred and projected
  on their top 64 - ell principal components, so they lie exactly on a linear subspace of R^64 (the analogue
  of Melamed et al.'s PCA-projected MNIST, Figure 4b).

Data are drawn with numpy from an explicit seed, in float64, so the same seed gives the same points on every
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """A labelled training set, and the points to attack where they differ from it.

    Attributes:
        name: the registry name of the dataset.
        X: (n, d) training inputs.
        y: (n,) labels in {-1., +1.}.
        X_eval: (n_eval, d) points to attack, or None to attack the training set.
        y_eval: (n_eval,) their labels, or None.
        P_basis: (d, d - ell) orthonormal basis of the data subspace, or None where there is none.
    """

    name: str
    X: Tensor
    y: Tensor
    X_eval: Tensor | None = None
    y_eval: Tensor | None = None
    P_basis: Tensor | None = None

    def __post_init__(self) -> None:
        check_points(self.X, self.y, what="training")
        if self.X_eval is not None or self.y_eval is not None:
            if self.X_eval is None or self.y_eval is None:
                raise ValueError("X_eval and y_eval must be given together")
            check_points(self.X_eval, self.y_eval, what="evaluation")

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    @property
    def attacked(self) -> tuple[Tensor, Tensor]:
        """The points attacks run on: (X_eval, y_eval) if present, else (X, y)."""
        if self.X_eval is not None and self.y_eval is not None:
            return self.X_eval, self.y_eval
        return self.X, self.y

    def to(self, device: torch.device | str) -> Dataset:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Dataset(
            name=self.name,
            X=self.X.to(device),
            y=self.y.to(device),
            X_eval=move(self.X_eval),
            y_eval=move(self.y_eval),
            P_basis=move(self.P_basis),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays saved as ``data.npz``: X, y, and X_eval, y_eval, P_basis where present."""
        out = {"X": self.X.cpu().numpy(), "y": self.y.cpu().numpy()}
        for key in ("X_eval", "y_eval", "P_basis"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.cpu().numpy()
        return out


def check_points(X: Tensor, y: Tensor, *, what: str) -> None:
    """Raise ValueError naming the problem if X, y are not finite (n, d) points with labels in {-1, +1}."""
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{what} data: X must be (n, d) and y (n,), got {tuple(X.shape)} and {tuple(y.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"{what} data: X holds NaN or inf")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError(f"{what} data: labels must be -1 or +1")


def sphere(*, d: int, n: int, seed: int) -> Dataset:
    """n points uniform on the sphere of radius sqrt(d) in R^d, labels uniform on {-1, +1}.

    Args:
        d: input dimension (>= 2).
        n: number of examples (>= 2); Vardi et al. use n = round(d ** alpha).
        seed: seed of the numpy generator that draws both the points and the labels.
    """
    if d < 2:
        raise ValueError(f"sphere data needs d >= 2, got d={d}")
    if n < 2:
        raise ValueError(f"sphere data needs n >= 2 examples, got n={n}")
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d))
    X = math.sqrt(d) * G / np.linalg.norm(G, axis=1, keepdims=True)
    y = rng.choice(np.array([-1.0, 1.0]), size=n)
    return Dataset(name="sphere", X=torch.from_numpy(X), y=torch.from_numpy(y))


LABEL_RULES: tuple[str, ...] = ("random", "linear")


def _labels(coords: np.ndarray, rule: str, rng: np.random.Generator, normal: np.ndarray) -> np.ndarray:
    """Labels of points given by their coordinates in P: (n, k) -> (n,) in {-1., +1.}.

    random: uniform on {-1, +1}, independent of the point; linear: sign <a, coords> for one random unit a in P.
    """
    if rule == "random":
        return rng.choice(np.array([-1.0, 1.0]), size=coords.shape[0])
    if rule == "linear":
        return np.where(coords @ normal >= 0, 1.0, -1.0)
    raise ValueError(f"unknown label rule {rule!r}; choose one of: {', '.join(LABEL_RULES)}")


def subspace(*, d: int, ell: int, n: int, n_eval: int, seed: int, label_rule: str = "random") -> Dataset:
    """Points on a random linear subspace P of dimension d - ell, at radius sqrt(d), labelled by a rule on P.

    Args:
        d: ambient dimension (>= 2).
        ell: codimension of P (1 <= ell < d): P-perp, the off-manifold space, has dimension ell.
        n: number of training examples (>= 2).
        n_eval: number of held-out points of P, drawn the same way: the points x0 that are attacked and at
            which the Theorem 4.1 / 6.1 diagnostics are taken.
        seed: seed of the numpy generator that draws P, the points and the labels.
        label_rule: "random" (uniform labels) or "linear" (a random halfspace through 0 within P).
    """
    if d < 2:
        raise ValueError(f"subspace data needs d >= 2, got d={d}")
    if not 1 <= ell < d:
        raise ValueError(f"subspace data needs 1 <= ell < d, got ell={ell}, d={d}")
    if n < 2 or n_eval < 1:
        raise ValueError(f"subspace data needs n >= 2 and n_eval >= 1, got n={n}, n_eval={n_eval}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d - ell)))  # (d, d - ell), orthonormal columns
    normal = rng.standard_normal(d - ell)
    normal /= np.linalg.norm(normal)
    G = rng.standard_normal((n + n_eval, d - ell))
    coords = math.sqrt(d) * G / np.linalg.norm(G, axis=1, keepdims=True)
    y = _labels(coords, label_rule, rng, normal)
    X = coords @ basis.T
    t = torch.from_numpy
    return Dataset(name="subspace", X=t(X[:n]), y=t(y[:n]), X_eval=t(X[n:]), y_eval=t(y[n:]), P_basis=t(basis))


DIGITS_DIM = 64
DIGITS_ELL = DIGITS_DIM - 10  # the default codimension: the top 10 principal components span P


def digits(*, ell: int, n: int, n_eval: int, seed: int) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, bundled), odd digits +1 and even digits -1.

    All images are centred (the mean image subtracted) and projected on their top 64 - ell principal
    components, then scaled so the mean norm is sqrt(64) = 8; so every point lies exactly on the linear
    subspace P spanned by those components. A seeded draw without replacement gives n training and n_eval
    held-out points.

    Args:
        ell: codimension of P in R^64 (1 <= ell < 64); 64 - ell principal components are kept.
        n: number of training examples (>= 2).
        n_eval: number of held-out points (>= 1); n + n_eval <= 1797.
        seed: seed of the draw.
    """
    from sklearn.datasets import load_digits

    if not 1 <= ell < DIGITS_DIM:
        raise ValueError(f"digits data needs 1 <= ell < 64, got ell={ell}")
    bunch = load_digits()
    images, target = bunch.data.astype(np.float64), bunch.target
    if n < 2 or n_eval < 1 or n + n_eval > images.shape[0]:
        raise ValueError(f"digits data needs n >= 2, n_eval >= 1 and n + n_eval <= {images.shape[0]}, got n={n}, n_eval={n_eval}")
    centred = images - images.mean(axis=0)
    _, _, Vt = np.linalg.svd(centred, full_matrices=False)
    basis = Vt[: DIGITS_DIM - ell].T  # (64, 64 - ell)
    projected = centred @ basis @ basis.T
    projected *= math.sqrt(DIGITS_DIM) / np.linalg.norm(projected, axis=1).mean()
    labels = np.where(target % 2 == 1, 1.0, -1.0)
    pick = np.random.default_rng(seed).permutation(images.shape[0])[: n + n_eval]
    X, y = projected[pick], labels[pick]
    t = torch.from_numpy
    return Dataset(name="digits", X=t(X[:n]), y=t(y[:n]), X_eval=t(X[n:]), y_eval=t(y[n:]), P_basis=t(np.ascontiguousarray(basis)))
