"""The fast kernel (models/train.py) against the plain-PyTorch reference loop (models/reference.py): with the
paper's schedule both take the same steps, so they return the same net to rounding."""

from __future__ import annotations

import pytest
import torch

from marginbench.models.datasets import sphere
from marginbench.models.reference import autograd_recipe
from marginbench.models.train import TrainSpec, train
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

STEPS = 250  # past two learning-rate growths (x1.1 after 100 and after 200 steps)
RTOL, ATOL = 1e-9, 1e-15  # the two agree to ~1e-16 relative; a different step is off by ~1e-2 or more


def _close(a: TwoLayerNet, b: TwoLayerNet) -> bool:
    return all(torch.allclose(s, t, rtol=RTOL, atol=ATOL) for s, t in ((a.W, b.W), (a.b, b.b), (a.v, b.v)))


@pytest.fixture(scope="module")
def reference() -> tuple[torch.Tensor, torch.Tensor, TwoLayerNet, TwoLayerNet]:
    """X, y, the initial net and the reference loop's net after STEPS steps (d = n = 8, width 16, float64)."""
    data = sphere(d=8, n=8, seed=0)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(0))
    net, iterations = autograd_recipe(init, data.X, data.y, steps=STEPS)
    assert iterations == STEPS
    return data.X, data.y, init, net


def test_paper_schedule_gives_the_reference_loops_net(reference) -> None:
    X, y, init, expected = reference
    assert not _close(init, expected)  # the nets moved: the comparison below can tell them apart
    net, report = train(init, X, y, TrainSpec(target_loss=None, max_iters=STEPS))
    assert report.iterations == STEPS and report.final_lr == pytest.approx(1e-5 * 1.1**2, rel=1e-12)
    for got, want in ((net.W, expected.W), (net.b, expected.b), (net.v, expected.v)):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("changes", [dict(lr=2e-5), dict(growth_every=50)], ids=["lr", "growth"])
def test_a_different_recipe_is_told_apart(reference, changes: dict) -> None:
    X, y, init, expected = reference
    net, _ = train(init, X, y, TrainSpec(target_loss=None, max_iters=STEPS, **changes))
    assert not _close(net, expected)
