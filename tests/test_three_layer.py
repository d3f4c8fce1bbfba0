"""Melamed et al. Figure 4's three-layer net: its init, autograd gradient and training, and the attacks it takes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import run_cli
from marginbench.models.datasets import subspace
from marginbench.models.three_layer import ThreeLayerNet, three_layer_init, train_three_layer
from marginbench.models.train_spec import SUBSPACE_TRAIN, TrainSpec


def test_only_the_first_layer_is_scaled_at_init() -> None:
    plain = three_layer_init(12, 20, generator=torch.Generator().manual_seed(3))
    small = three_layer_init(12, 20, generator=torch.Generator().manual_seed(3), first_scale=1 / 8)
    torch.testing.assert_close(small.W1, plain.W1 / 8)
    torch.testing.assert_close(small.b1, plain.b1 / 8)
    for name in ("W2", "b2", "v", "c"):
        assert torch.equal(getattr(small, name), getattr(plain, name))
    assert plain.W1.abs().max() <= 12**-0.5 and plain.W2.abs().max() <= 20**-0.5  # nn.Linear's U(-1/sqrt(fan_in), ...)


def test_the_input_gradient_is_the_derivative_of_the_output() -> None:
    net = three_layer_init(6, 16, generator=torch.Generator().manual_seed(0))
    X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    value, grad = net.value_and_input_grad(X)
    torch.testing.assert_close(value, net(X))
    eps = 1e-6
    for k in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[k] = eps
        torch.testing.assert_close((net(X + e) - net(X - e)) / (2 * eps), grad[:, k], atol=1e-6, rtol=1e-5)
    restored = ThreeLayerNet.from_state_dict(net.state_dict())
    assert torch.equal(restored(X), net(X))


def test_training_reaches_the_margin_with_every_layer_trained() -> None:
    data = subspace(d=16, ell=8, n=30, n_eval=10, seed=0)
    init = three_layer_init(16, 32, generator=torch.Generator().manual_seed(0))
    net, report = train_three_layer(
        init, data.X, data.y, TrainSpec(loss="logistic", lr=0.01, lr_growth=1.0, target_loss=None, target_margin=1.0, max_iters=5000)
    )
    assert report.stop_reason == "target_margin" and float((data.y * net(data.X)).min()) >= 1.0
    for name in ("W1", "b1", "W2", "b2", "v", "c"):
        assert not torch.equal(getattr(net, name), getattr(init, name)), name


def test_recipes_it_cannot_follow_are_refused() -> None:
    init = three_layer_init(4, 8, generator=torch.Generator().manual_seed(0))
    X, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([1.0, -1, 1, -1, 1, -1], dtype=torch.float64)
    with pytest.raises(ValueError, match="constant-step, full-batch GD"):
        train_three_layer(init, X, y, TrainSpec())  # the paper schedule's growing step
    with pytest.raises(ValueError, match="constant-step, full-batch GD"):
        train_three_layer(init, X, y, SUBSPACE_TRAIN)  # first layer only: the factory asks for all layers


def test_a_sweep_attacks_it_with_pgd_and_refuses_the_closed_forms_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "three"
    args = ["run", "--family", "subspace", "--d", "16", "--ell", "8", "--n", "30", "--n-eval", "10", "--width", "32", "--init-scale", "0.25"]
    args += ["--models", "three-layer", "--attacks", "pgd,pgd-off,pgd-on,subspace-z", "--lr", "0.01", "--out", str(out), "--no-progress"]
    assert run_cli(args) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("attack")
    assert (summary["train_stop_reason"] == "target_margin").all() and (summary["run_status"] == "ok").all()
    for attack in ("pgd", "pgd-on"):
        assert summary.loc[attack, "attack_status"] == "ok" and summary.loc[attack, "success_rate"] > 0.5
    assert summary.loc["subspace-z", "attack_status"] == "unavailable"
    assert "the three-layer model takes pgd, pgd-off, pgd-on" in summary.loc["subspace-z", "error"]
    assert summary.loc["pgd", "median_g_off"] > 0 and summary.loc["pgd", "forward_passes_per_example"] > 0
    state = torch.load(next(out.glob("runs/*/model.pt")))
    assert set(state) == {"W1", "b1", "W2", "b2", "v", "c"}
    assert "subspace-z: unavailable: needs the two-layer net's closed form" in capsys.readouterr().err


def test_the_kkt_family_refuses_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--d", "8", "--models", "three-layer", "--out", "unused"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'three-layer' is not part of the kkt family" in line


def test_training_stops_as_soon_as_the_normalized_margin_is_reached() -> None:
    """target_normalized_margin (min_i y_i N(x_i) / ||theta||^2, all six tensors) stops the three-layer net too,
    at the first iterate that reaches it; one step fewer is still below."""
    data = subspace(d=16, ell=8, n=30, n_eval=10, seed=0)
    init = three_layer_init(16, 32, generator=torch.Generator().manual_seed(0))
    base = TrainSpec(loss="logistic", lr=0.01, lr_growth=1.0, target_loss=None, max_iters=5000)
    net, report = train_three_layer(init, data.X, data.y, dataclasses.replace(base, target_margin=1.0))
    target = 0.5 * float((data.y * net(data.X)).min()) / net.sq_norm()  # half what the margin run ends at
    net, report = train_three_layer(init, data.X, data.y, dataclasses.replace(base, target_normalized_margin=target))
    assert report.stop_reason == "target_normalized_margin" and report.reached_target and report.iterations > 0
    assert float((data.y * net(data.X)).min()) / net.sq_norm() >= target and report.min_margin == float((data.y * net(data.X)).min())
    before, _ = train_three_layer(init, data.X, data.y, dataclasses.replace(base, max_iters=report.iterations - 1))
    assert float((data.y * before(data.X)).min()) / before.sq_norm() < target
