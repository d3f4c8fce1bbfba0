"""The paper's training recipe in plain PyTorch: the readable reference that the fast kernel is tested against.

One short, linear loop you can read top to bottom, written as a user would (``nn.Linear`` layers, autograd,
``torch.optim.SGD``): Vardi et al. 2022, eq. (1) and Section 6, i.e. the exponential loss summed over the
training set, full-batch gradient descent with learning rate 1e-5 multiplied by 1.1 every 100 iterations
(``StepLR``). ``models/train.py`` computes the same steps analytically and in the log domain
(``TrainSpec()``, the paper schedule); tests/test_reference.py checks that both give the same nets, and
bench/performance/throughput.py times the fast kernel against this loop.
"""

from __future__ import annotations

import math

import torch

from marginbench.models.two_layer import TwoLayerNet


def autograd_recipe(
    net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor, *, steps: int | None = None, target_loss: float | None = None
) -> tuple[TwoLayerNet, int]:
    """The paper's recipe as a user would write it: nn.Linear layers, autograd, the exponential loss summed,
    SGD with lr 1e-5 x1.1 every 100 iterations, full batch; for ``steps`` steps, or until the loss is below
    ``target_loss`` (read back every step only then). Returns (net, iterations)."""
    first = torch.nn.Linear(net.d, net.width, dtype=X.dtype, device=X.device)
    second = torch.nn.Linear(net.width, 1, bias=False, dtype=X.dtype, device=X.device)
    with torch.no_grad():
        first.weight.copy_(net.W), first.bias.copy_(net.b), second.weight.copy_(net.v[None, :])
    optimizer = torch.optim.SGD([first.weight, first.bias, second.weight], lr=1e-5)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=1.1)
    iterations = 0
    while steps is None or iterations < steps:
        optimizer.zero_grad()
        loss = torch.exp(-y * second(torch.relu(first(X))).squeeze(1)).sum()
        if target_loss is not None and (loss.item() < target_loss or not math.isfinite(loss.item())):
            break
        loss.backward()
        optimizer.step()
        schedule.step()
        iterations += 1
    trained = TwoLayerNet(W=first.weight.detach().clone(), b=first.bias.detach().clone(), v=second.weight.detach()[0].clone())
    return trained, iterations


def autograd_steps(net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """The plain-PyTorch recipe for ``steps`` steps, at the paper's first lr (it grows after 100 steps only)."""
    autograd_recipe(net, X, y, steps=steps)
