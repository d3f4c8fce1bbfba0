"""Datasets: the points a network is trained on and the points it is attacked at.

``sphere`` is the data of Vardi et al. 2022, Section 6: x ~ Uniform(sqrt(d) * S^{d-1}) and y uniform on
{-1, +1}. Data are drawn with numpy from an explicit seed, in float64, so that the same seed gives the same
points on every device.
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
