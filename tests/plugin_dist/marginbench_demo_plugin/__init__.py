"""A demo marginbench plugin: an attack that steps along -y grad N(x) to the linearized boundary, and a model
of random first-layer features. Its entry points (pyproject.toml) name the two factories below."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marginbench import AttackResult, BuiltModel, Dataset, RunContext, TwoLayerNet


@dataclass(frozen=True, kw_only=True)
class GradientStep:
    """One step per example along -y grad N(x), of the length that reaches N = 0 on the linearization, times
    ``overshoot``; the harness keeps it only where a forward pass confirms the flip."""

    overshoot: float = 1.1  # beyond the linearized boundary: a ReLU net bends towards it

    def __call__(self, net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor) -> AttackResult:
        value, grad = net.value_and_input_grad(X)
        squared = (grad * grad).sum(dim=1)
        found = squared > 0
        step = torch.where(found, self.overshoot * (y * value).abs() / squared.clamp_min(1e-300), 0.0)
        return AttackResult(delta=-y[:, None] * step[:, None] * grad, found=found)


def gradient_step(data: Dataset, context: RunContext) -> GradientStep:
    """Attack factory (entry point ``demo-gradient-step``)."""
    return GradientStep()


def random_features(data: Dataset, context: RunContext) -> BuiltModel:
    """Model factory (entry point ``demo-random-features``): N(0, 1/d) features, second layer fit by least
    squares to the labels; seeded with the run's seed."""
    g = torch.Generator().manual_seed(context.run.seed)
    W = torch.randn(context.run.width, data.d, generator=g, dtype=torch.float64) / data.d**0.5
    b = torch.zeros(context.run.width, dtype=torch.float64)
    features = torch.relu(data.X.cpu() @ W.T)
    v = torch.linalg.lstsq(features, data.y.cpu()[:, None]).solution[:, 0]
    net = TwoLayerNet(W=W, b=b, v=v)
    return BuiltModel(net=net.to(context.device), facts={"demo_features": float(context.run.width)})
