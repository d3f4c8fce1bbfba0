"""Orthogonal projections onto the data subspace P and its complement P-perp (Melamed et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

Onto = Literal["P", "P-perp"]


@dataclass(frozen=True)
class SubspaceProjection:
    """v -> Pi_P v = B B^T v (onto = "P") or Pi_{P-perp} v = v - B B^T v (onto = "P-perp").

    Attributes:
        basis: (d, d - ell) orthonormal basis B of P (a dataset's ``P_basis``).
        onto: which of the two complementary subspaces to project onto.
    """

    basis: Tensor
    onto: Onto

    @property
    def dim(self) -> int:
        """The dimension of the subspace projected onto: d - ell for P, ell for P-perp."""
        d, dim_P = self.basis.shape
        return int(dim_P) if self.onto == "P" else int(d - dim_P)

    def __call__(self, V: Tensor) -> Tensor:
        """V: (n, d) -> (n, d), each row projected."""
        on_P = (V @ self.basis) @ self.basis.T
        return on_P if self.onto == "P" else V - on_P
