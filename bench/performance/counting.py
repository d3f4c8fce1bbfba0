"""Counting the model queries an attack makes, by a wrapper around the network (as AttackBench does).

(``CountingAutogradNet`` below does the same for a net without a closed form, at its two entry points.)

Every forward pass of a two-layer net goes through ``preactivations``; the wrapper counts the rows it sees
there, and, where the result takes part in autograd, registers a hook that counts the rows again when a
gradient flows back through it (one backward pass per row). The closed-form input gradient
(``value_and_input_grad``, which bypasses autograd) counts one forward and one backward pass per row. Attacks receive the wrapper in place of the
net and cannot tell the difference; the harness verifies with the plain net, so its checks are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from marginbench.models.three_layer import ThreeLayerNet
from marginbench.models.two_layer import TwoLayerNet


@dataclass
class PassCounts:
    """Rows that went through the net: forward evaluations and backward (gradient) passes."""

    forward: int = 0
    backward: int = 0

    def add_backward(self, rows: int) -> None:
        self.backward += rows


@dataclass(frozen=True)
class CountingNet(TwoLayerNet):
    """A TwoLayerNet that counts, in ``counts``, the rows of every forward and backward pass.

    Attributes:
        counts: the running totals (the only mutable part; the weights are the wrapped net's own tensors).
    """

    counts: PassCounts = field(default_factory=PassCounts, compare=False)

    @classmethod
    def wrap(cls, net: TwoLayerNet) -> CountingNet:
        return cls(W=net.W, b=net.b, v=net.v)

    def preactivations(self, X: Tensor) -> Tensor:
        """X: (n, d) -> (n, width); counts n forward rows, and n backward rows if a gradient flows back."""
        rows = int(X.shape[0])
        self.counts.forward += rows
        A = super().preactivations(X)
        if A.requires_grad:
            A.register_hook(lambda grad: self.counts.add_backward(rows))
        return A

    def value_and_input_grad(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """X: (n, d) -> (N(X), grad_x N(X)); counts n forward rows (in ``preactivations``) and n backward rows."""
        out = super().value_and_input_grad(X)
        self.counts.add_backward(int(X.shape[0]))
        return out


@dataclass(frozen=True)
class CountingAutogradNet:
    """The counter for a net without a closed form (``ThreeLayerNet``): attacks reach it through ``__call__``
    (n forward rows) and ``value_and_input_grad`` (n forward and n backward rows) only."""

    net: ThreeLayerNet
    counts: PassCounts = field(default_factory=PassCounts, compare=False)

    @property
    def d(self) -> int:
        return self.net.d

    @property
    def width(self) -> int:
        return self.net.width

    def __call__(self, X: Tensor) -> Tensor:
        self.counts.forward += int(X.shape[0])
        return self.net(X)

    def rounding_terms(self) -> tuple[Tensor, Tensor, int]:
        return self.net.rounding_terms()

    def value_and_input_grad(self, X: Tensor) -> tuple[Tensor, Tensor]:
        rows = int(X.shape[0])
        self.counts.forward += rows
        self.counts.add_backward(rows)
        return self.net.value_and_input_grad(X)


def counting(net: TwoLayerNet | ThreeLayerNet) -> CountingNet | CountingAutogradNet:
    """``net`` wrapped in the counter that fits it."""
    return CountingNet.wrap(net) if isinstance(net, TwoLayerNet) else CountingAutogradNet(net)
