"""The depth-2 ReLU network both papers study, as plain tensors.

N(x) = sum_j v_j * relu(w_j . x + b_j)   (Vardi et al. 2022, Section 2; Melamed et al. 2023 write u for v
and have no bias, which is b = 0 here).

The network is a frozen dataclass of three tensors rather than an ``nn.Module``: training updates it with
analytic gradients, attacks evaluate it in closed form, and the result store saves exactly these tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TwoLayerNet:
    """N(x) = sum_j v_j relu(w_j . x + b_j).

    Attributes:
        W: (width, d) first-layer weights, one row per hidden neuron.
        b: (width,) first-layer biases (zeros for a bias-free network).
        v: (width,) second-layer weights.
    """

    W: Tensor
    b: Tensor
    v: Tensor

    def __post_init__(self) -> None:
        width, _ = self.W.shape
        if self.b.shape != (width,) or self.v.shape != (width,):
            raise ValueError(f"shapes disagree: W {tuple(self.W.shape)}, b {tuple(self.b.shape)}, v {tuple(self.v.shape)}")

    @property
    def d(self) -> int:
        return int(self.W.shape[1])

    @property
    def width(self) -> int:
        return int(self.W.shape[0])

    def preactivations(self, X: Tensor) -> Tensor:
        """X: (n, d) -> (n, width), the values w_j . x_i + b_j."""
        return X @ self.W.T + self.b

    def __call__(self, X: Tensor) -> Tensor:
        """X: (n, d) -> N(X): (n,)."""
        return torch.relu(self.preactivations(X)) @ self.v

    def value_and_input_grad(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """X: (n, d) -> (N(X): (n,), grad_x N(X): (n, d)), the gradient in closed form.

        grad_x N(x) = sum_j v_j 1[w_j . x + b_j > 0] w_j, i.e. (1[Z > 0] * v) @ W for the preactivations Z:
        one forward and one backward pass without autograd's graph (relu's derivative at 0 is taken as 0, as
        autograd does).
        """
        Z = self.preactivations(X)  # (n, width)
        return torch.relu(Z) @ self.v, ((Z > 0) * self.v) @ self.W

    def rounding_terms(self) -> tuple[Tensor, Tensor, int]:
        """(A, B, K) with |fl(N(x)) - N(x)| <= gamma_K (A ||x|| + B) in any summation order
        (``marginbench.checking.flips``): A = sum_j |v_j| ||w_j||, B = sum_j |v_j| |b_j|, K = d + width + 2."""
        v = self.v.abs()
        return v @ self.W.norm(dim=1), v @ self.b.abs(), self.d + self.width + 2

    def sq_norm(self) -> float:
        """||theta||^2 over all of W, b and v (the norm of problem (2) in Vardi et al.)."""
        return float(self.W.pow(2).sum() + self.b.pow(2).sum() + self.v.pow(2).sum())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TwoLayerNet:
        return TwoLayerNet(
            W=self.W.to(device=device, dtype=dtype),
            b=self.b.to(device=device, dtype=dtype),
            v=self.v.to(device=device, dtype=dtype),
        )

    def state_dict(self) -> dict[str, Tensor]:
        """The tensors saved as ``model.pt``: W (width, d), b (width,), v (width,), on the CPU."""
        return {"W": self.W.detach().cpu(), "b": self.b.detach().cpu(), "v": self.v.detach().cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> TwoLayerNet:
        return cls(W=state["W"], b=state["b"], v=state["v"])


def pytorch_default_init(
    d: int,
    width: int,
    *,
    generator: torch.Generator,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> TwoLayerNet:
    """The initialization of ``nn.Linear(d, width)`` followed by ``nn.Linear(width, 1, bias=False)``.

    nn.Linear draws weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); Vardi et al. train from
    PyTorch's default initialization. ``scale`` multiplies every parameter (1 = the default).

    Args:
        d: input dimension.
        width: number of hidden neurons.
        generator: the only source of randomness (a seeded CPU generator).
        scale: factor applied to all three tensors.
        dtype: floating dtype of the returned tensors.
    """
    bound_in = 1.0 / math.sqrt(d)
    bound_out = 1.0 / math.sqrt(width)

    def uniform(shape: tuple[int, ...], bound: float) -> Tensor:
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * bound * scale

    W = uniform((width, d), bound_in)
    b = uniform((width,), bound_in)
    v = uniform((width,), bound_out)
    return TwoLayerNet(W=W.to(dtype), b=b.to(dtype), v=v.to(dtype))


def gaussian_init(d: int, width: int, *, beta: float, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> TwoLayerNet:
    """The initialization of Melamed et al. 2023, Section 3.1: w_i ~ N(0, beta^2 I_d), no bias,
    u_i ~ U{-1/sqrt(width), +1/sqrt(width)} (fixed during training).

    Args:
        d: input dimension.
        width: number of hidden neurons (the paper's m).
        beta: standard deviation of each weight (1/sqrt(d) is Kaiming's, the paper's standard choice).
        generator: the only source of randomness (a seeded CPU generator).
        dtype: floating dtype of the returned tensors.
    """
    W = beta * torch.randn((width, d), generator=generator, dtype=torch.float64)
    signs = torch.randint(0, 2, (width,), generator=generator).to(torch.float64) * 2.0 - 1.0
    v = signs / math.sqrt(width)
    return TwoLayerNet(W=W.to(dtype), b=torch.zeros(width, dtype=dtype), v=v.to(dtype))
