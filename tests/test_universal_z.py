"""Theorem 4.1's universal direction on a net trained to the paper's stopping point."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import Trained
from marginbench.attacks.closed_form import UniversalZ
from marginbench.checking.verify import verify, verify_shared
from marginbench.models.diagnostics import margin_set


@pytest.mark.slow
def test_trained_net_is_flipped_far_below_sqrt_d(trained_vanilla: Trained) -> None:
    net, data = trained_vanilla.net, trained_vanilla.data
    result = UniversalZ()(net, data.X, data.y)
    checked = verify(net, data.X, result)
    common = verify_shared(net, data.X, result.shared)
    sqrt_d = math.sqrt(data.d)
    assert checked.success.all()
    # Figure 1a of Vardi et al.: one common scale flips every margin example, well below sqrt(d).
    assert common < 0.4 * sqrt_d
    assert float(checked.norm.median()) < 0.3 * sqrt_d
    # the common scale flips every example of I, so no example of I needs more than it
    on_margin = margin_set(data.y * net(data.X))
    assert on_margin.sum() >= 0.5 * data.n
    assert torch.all(checked.norm[on_margin] <= common * (1 + 1e-6))


@pytest.mark.slow
def test_direction_is_the_theorem_4_1_direction(trained_vanilla: Trained) -> None:
    net, data = trained_vanilla.net, trained_vanilla.data
    result = UniversalZ()(net, data.X, data.y)
    on_margin = margin_set(data.y * net(data.X))
    z = (data.y[on_margin, None] * data.X[on_margin]).sum(0)
    found = result.found
    # delta_i = -c_i y_i z / ||z||: parallel to z with sign -y_i
    cos = (result.delta[found] @ z) / (result.delta[found].norm(dim=1) * z.norm())
    assert torch.allclose(cos, -data.y[found], atol=1e-12)


@pytest.mark.slow
def test_shared_perturbation_is_checked_not_trusted(trained_vanilla: Trained) -> None:
    net, data = trained_vanilla.net, trained_vanilla.data
    result = UniversalZ()(net, data.X, data.y)
    assert result.shared is not None
    shrunk = type(result.shared)(rows=result.shared.rows, delta=0.5 * result.shared.delta)
    assert verify_shared(net, data.X, shrunk) == math.inf
