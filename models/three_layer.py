"""Melamed et al. 2023's Figure 4 network: three layers (two hidden ReLU layers), every layer trained.

N(x) = v . relu(W2 relu(W1 x + b1) + b2) + c. Section 6.3: "We trained a 3-layer network, initialized using
standard initialization except for the first layer which is divided by the factor represented in the X-axis"
(PyTorch's nn.Linear initialization; ``first_scale`` = 1 / factor multiplies W1 and b1). The paper gives no
width for it; marginbench uses the run's width for both hidden layers.

Unlike the two-layer net there is no closed form for anything: the input gradient and the training step go
through autograd. Training follows the family's recipe (``TrainSpec``: loss, constant step, and the stop rule
shared with the two-layer trainer, ``marginbench.models.stopping``), full-batch GD over all of W1, b1, W2, b2, v,
c on the *mean* of the losses: the authors' code (github.com/odeliamel/off-manifold-robustness) trains its deeper nets with SGD on nn.BCELoss,
a mean; on the sum, the family's step 0.05 diverges within 3 steps at n = 1000.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from marginbench.models.precision import choose_precision
from marginbench.models.stopping import Watch, out_of_time, stop_reason
from marginbench.models.train_spec import TrainReport, TrainSpec, log_loss_terms


@dataclass(frozen=True)
class ThreeLayerNet:
    """N(x) = v . relu(W2 relu(W1 x + b1) + b2) + c.

    Attributes:
        W1: (width, d), b1: (width,) the first layer; W2: (width2, width), b2: (width2,) the second;
        v: (width2,), c: () the output layer.
    """

    W1: Tensor
    b1: Tensor
    W2: Tensor
    b2: Tensor
    v: Tensor
    c: Tensor

    @property
    def d(self) -> int:
        return int(self.W1.shape[1])

    @property
    def width(self) -> int:
        return int(self.W1.shape[0])

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __call__(self, X: Tensor) -> Tensor:
        """X: (n, d) -> N(X): (n,)."""
        H1 = torch.relu(X @ self.W1.T + self.b1)  # (n, width)
        return torch.relu(H1 @ self.W2.T + self.b2) @ self.v + self.c

    def value_and_input_grad(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """X: (n, d) -> (N(X): (n,), grad_x N(X): (n, d)), by autograd (one forward and one backward pass)."""
        with torch.enable_grad():
            Xg = X.detach().requires_grad_(True)
            out = self(Xg)
            (grad,) = torch.autograd.grad(out.sum(), Xg)
        return out.detach(), grad

    def rounding_terms(self) -> tuple[Tensor, Tensor, int]:
        """(A, B, K) with |fl(N(x)) - N(x)| <= gamma_K (A ||x|| + B) in any summation order
        (``marginbench.checking.flips``): the net of absolute values, its first layer bounded by Cauchy-Schwarz."""
        v, W2 = self.v.abs(), self.W2.abs()
        A = v @ (W2 @ self.W1.norm(dim=1))
        B = v @ (W2 @ self.b1.abs() + self.b2.abs()) + self.c.abs()
        return A, B, self.d + self.width + int(self.W2.shape[0]) + 3

    def sq_norm(self) -> float:
        return float(sum(t.pow(2).sum() for t in self.tensors()))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ThreeLayerNet:
        return ThreeLayerNet(*(t.to(device=device, dtype=dtype) for t in self.tensors()))

    def state_dict(self) -> dict[str, Tensor]:
        """The tensors saved as ``model.pt``, on the CPU."""
        return {f.name: getattr(self, f.name).detach().cpu() for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> ThreeLayerNet:
        return cls(**{f.name: state[f.name] for f in fields(cls)})


def three_layer_init(d: int, width: int, *, generator: torch.Generator, first_scale: float = 1.0, dtype: torch.dtype = torch.float64) -> ThreeLayerNet:
    """nn.Linear(d, width), nn.Linear(width, width), nn.Linear(width, 1)'s initialization (weights and biases
    from U(-1/sqrt(fan_in), 1/sqrt(fan_in))), the first layer multiplied by ``first_scale``."""

    def uniform(shape: tuple[int, ...], fan_in: int, scale: float = 1.0) -> Tensor:
        return ((torch.rand(shape, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * scale / math.sqrt(fan_in)).to(dtype)

    return ThreeLayerNet(
        W1=uniform((width, d), d, first_scale),
        b1=uniform((width,), d, first_scale),
        W2=uniform((width, width), width),
        b2=uniform((width,), width),
        v=uniform((width,), width),
        c=uniform((), width),
    )


def train_three_layer(net: ThreeLayerNet, X: Tensor, y: Tensor, spec: TrainSpec) -> tuple[ThreeLayerNet, TrainReport]:
    """Full-batch GD with a constant step on the mean loss (1/n) sum_i loss(y_i N(x_i)) (what PyTorch's BCELoss
    minimizes in the authors' code), every layer trained; stops by the two-layer trainer's rule, in its order
    (``marginbench.models.stopping``): NaN/inf, spec.target_loss (on the sum L, as there), spec.target_margin,
    spec.target_normalized_margin (min_i y_i N(x_i) / ||theta||^2 over all six tensors), "dead" where a hidden
    layer is off at every training point (N is then one constant on them, forever), spec.iteration_cap and
    spec.max_seconds. The net returned, and the loss and margin reported, are the last finite ones.

    Args:
        net: initial parameters (not modified).
        X: (n, d) inputs; y: (n,) labels in {-1, +1}.
        spec: the family's recipe; schedules other than a constant step, L2 (and with it stationarity) and
            mini-batches are refused.
    """
    own_recipe = spec.lr_growth == 1 and spec.schedule == "paper" and spec.l2 == 0 and spec.reduction == "sum"
    if not own_recipe or spec.batch_size is not None or spec.layers != "all":
        raise ValueError(
            "the three-layer net trains with a constant-step, full-batch GD on all its layers, on the summed loss (no growth, schedule, l2, batch size or mean)"
        )
    given = X.dtype
    if spec.precision is not None:  # compute in spec.precision, hand the net back in the dtype it came in (bf16, tf32:
        dtype = choose_precision(spec.precision, X.device).dtype  # float32 here; only the two-layer kernel has bf16 products)
        X, y, net = X.to(dtype), y.to(dtype), net.to(X.device, dtype)
    params = [t.detach().clone().requires_grad_(True) for t in net.tensors()]
    start, it, watch = time.perf_counter(), 0, Watch()
    last, log_L, q_min = [p.detach().clone() for p in params], math.inf, -math.inf  # the last finite parameters and their numbers
    while True:
        q = y * ThreeLayerNet(*params)(X)  # (n,)
        qd = q.detach()
        now = torch.stack([torch.logsumexp(log_loss_terms(qd, spec.loss), 0), qd.abs().amax(), qd.min()]).tolist()
        sq_norm = float(sum(p.detach().square().sum() for p in params)) if spec.target_normalized_margin is not None else None
        stuck = watch.stuck(spec, 0, it, now[0], alive=not _dead(params, X)) if watch.due(it) else None
        reason = stop_reason(spec, log_L=now[0], q_max=now[1], q_min=now[2], sq_norm=sq_norm, iteration=it, out_of_time=out_of_time(spec, start), stuck=stuck)
        if reason != "nonfinite":
            last, log_L, q_min = [p.detach().clone() for p in params], now[0], now[2]
        if reason is not None:
            report = TrainReport(
                iterations=it, log10_loss=log_L / math.log(10), min_margin=q_min, stop_reason=reason, seconds=time.perf_counter() - start,
                final_lr=spec.lr, nonfinite_iteration=it if reason == "nonfinite" else None,
            )  # fmt: skip
            return ThreeLayerNet(*last).to(X.device, given), report
        loss = torch.exp(log_loss_terms(q, spec.loss)).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= spec.lr * g
        it += 1


def _dead(params: list[Tensor], X: Tensor) -> bool:
    """Whether a hidden layer's ReLUs are all off at every point of X (checked at ``Watch``'s checks: one forward).

    Then the layers below it get no gradient and N is the same at every point, forever: with layer 1 off, W1 and
    b1 never move and layer 2 sees relu(b2) everywhere; with layer 2 off, only c moves.
    """
    W1, b1, W2, b2 = (p.detach() for p in params[:4])
    H1 = torch.relu(X @ W1.T + b1)
    return not bool(H1.gt(0).any()) or not bool(torch.relu(H1 @ W2.T + b2).gt(0).any())
