"""The normalized schedule follows the paper schedule's path in fewer steps; the stop rules on the normalized
margin and on stationarity say what they claim; the kkt family's l2 model trains the regularized objective."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from marginbench.bench.cli import main
from marginbench.bench.experiment.recipes import KKT_L2_LAMBDA
from marginbench.bench.experiment.spec import ExperimentSpec
from marginbench.bench.registry.registries import TRAINING_PLANS
from marginbench.models.datasets import sphere
from marginbench.models.diagnostics import kkt_residual, normalized_margin
from marginbench.models.train import NORMALIZED_LR, TrainSpec, train
from marginbench.models.train_spec import ARC_STEP, arc_schedule, on_schedule
from marginbench.models.two_layer import pytorch_default_init

NORMALIZED = TrainSpec(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0)


def _problem(d: int = 16, width: int = 32, seed: int = 0):
    data = sphere(d=d, n=d, seed=seed)
    return data, pytorch_default_init(d, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_normalized_schedule_reaches_the_paper_schedules_network_in_fewer_steps() -> None:
    """Gradient flow on L and on log L trace one path: at the same loss, both schedules give the same margin."""
    data, init = _problem()
    target = 1e-10  # 1e-30 takes the paper's schedule ~60k steps; the path argument does not depend on it
    paper, paper_report = train(init, data.X, data.y, TrainSpec(target_loss=target))
    fast, fast_report = train(init, data.X, data.y, TrainSpec(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0, target_loss=target))
    assert paper_report.stop_reason == fast_report.stop_reason == "target_loss"
    assert fast_report.iterations * 10 < paper_report.iterations, (fast_report.iterations, paper_report.iterations)
    q_paper, q_fast = data.y * paper(data.X), data.y * fast(data.X)
    assert normalized_margin(fast, q_fast) == pytest.approx(normalized_margin(paper, q_paper), rel=0.02)
    assert fast.sq_norm() == pytest.approx(paper.sq_norm(), rel=0.02)


def test_normalized_schedule_reaches_1e_minus_30_in_float32() -> None:
    data, init = _problem(seed=1)
    net, report = train(init.to("cpu", torch.float32), data.X.float(), data.y.float(), NORMALIZED)
    assert report.stop_reason == "target_loss" and report.log10_loss < -30, report
    assert torch.isfinite(net.W).all() and float((data.y * net.to("cpu", torch.float64)(data.X)).min()) > 60


def test_target_normalized_margin_stops_as_soon_as_it_is_reached() -> None:
    data, init = _problem()
    spec = TrainSpec(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0, target_loss=None, target_normalized_margin=0.1)
    net, report = train(init, data.X, data.y, spec)
    assert report.stop_reason == "target_normalized_margin" and report.reached_target
    assert normalized_margin(net, data.y * net(data.X)) >= 0.1
    # One step fewer is still below the target: the rule fired at the first iterate that reached it.
    before, _ = train(
        init, data.X, data.y, TrainSpec(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0, target_loss=None, max_iters=report.iterations - 1)
    )
    assert normalized_margin(before, data.y * before(data.X)) < 0.1


def test_stationarity_stop_certifies_the_kkt_residual() -> None:
    """Stationary to tol means theta = c sum_i softmax_i y_i grad q_i + r with ||r|| <= tol ||theta|| and c > 0:
    nonnegative multipliers that the NNLS KKT residual can only improve on."""
    data, init = _problem(d=8, width=16)
    tol = 0.8
    spec = TrainSpec(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0, target_loss=None, l2=1e-2, stationarity=tol, max_iters=20_000)
    net, report = train(init, data.X, data.y, spec)
    assert report.stop_reason == "stationary", report
    assert kkt_residual(net, data.X, data.y) <= tol
    assert report.weight_decay < 1  # the L2 term acted


def test_kkt_family_l2_model_trains_the_regularized_objective() -> None:
    spec = ExperimentSpec(family="kkt", d=8, width=16, models=("l2",), attacks=("universal-z",))
    (run,) = spec.runs()
    data = sphere(d=8, n=8, seed=0)
    plan = TRAINING_PLANS.get("l2")(data, run)
    assert plan.facts["l2_lambda"] == KKT_L2_LAMBDA
    assert plan.spec.schedule == "normalized" and plan.spec.l2 == KKT_L2_LAMBDA and plan.spec.target_loss is None
    assert plan.spec.stationarity is not None and plan.spec.max_iters == 20_000


@pytest.mark.parametrize("asked", [2_000_000, 50])
def test_an_explicit_iteration_cap_of_the_kkt_l2_model_is_kept(asked: int) -> None:
    """Any explicit cap is the user's, the default one's number included (it once meant "unset")."""
    (run,) = ExperimentSpec(family="kkt", d=8, width=16, models=("l2",), train=TrainSpec(max_iters=asked)).runs()
    assert TRAINING_PLANS.get("l2")(sphere(d=8, n=8, seed=0), run).spec.max_iters == asked


@pytest.mark.parametrize(
    "bad", [dict(schedule="adam"), dict(schedule="normalized", batch_size=4), dict(stationarity=0.0), dict(target_normalized_margin=math.nan)]
)
def test_bad_schedules_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrainSpec(**bad)


def test_cli_runs_the_kkt_l2_model_and_the_normalized_schedule(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = [
        "run", "--d", "8", "--width", "16", "--models", "vanilla,l2", "--attacks", "universal-z", "--schedule",
        "normalized", "--max-iters", "3000", "--out", str(out), "--no-progress",
    ]
    assert main(args) == 0
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv").query("attack == 'universal-z'").set_index("model")
    assert summary.loc["vanilla", "train_stop_reason"] == "target_loss"
    assert summary.loc["l2", "l2_lambda"] == KKT_L2_LAMBDA
    assert summary.loc["l2", "train_stop_reason"] in ("stationary", "max_iters")
    assert summary.loc["l2", "train_iterations"] <= 3000
    assert math.isfinite(summary.loc["l2", "kkt_residual"]) and math.isfinite(summary.loc["l2", "normalized_margin"])


def test_cli_runs_the_arc_schedule_to_the_papers_stopping_point(tmp_path: Path) -> None:
    out = tmp_path / "arc"
    args = [
        "run", "--d", "16", "--width", "32", "--models", "vanilla,l2", "--attacks", "universal-z", "--schedule",
        "arc", "--max-iters", "2000", "--out", str(out), "--no-progress",
    ]
    assert main(args) == 0
    summary = pd.read_csv(out / "summary.csv").query("attack == 'universal-z'").set_index("model")
    assert summary.loc["vanilla", "train_stop_reason"] == "target_loss" and summary.loc["vanilla", "train_log10_loss"] < -30
    assert summary.loc["vanilla", "train_iterations"] < 1000  # the paper schedule takes ~72,000
    assert summary.loc["l2", "run_status"] == "ok"  # the l2 model keeps the normalized schedule
    train = json.loads((out / "manifest.json").read_text())["specs"][0]["train"]
    assert (train["schedule"], train["lr"], train["lr_growth"]) == ("arc", ARC_STEP, 1.0)


@pytest.mark.slow
def test_clarke_kkt_residual_certifies_the_l2_point_that_the_one_sided_residual_cannot() -> None:
    """The kkt l2 model's equilibrium sits on ReLU kinks, where GD chatters: with relu'(0) free in [0, 1]
    (Clarke, Vardi et al. Appendix A) it is a KKT point; with relu'(0) = 0 it does not look like one. The
    FISTA solve matches a general-purpose solver (SLSQP) on the same QP."""
    import numpy as np
    from scipy.optimize import minimize

    from marginbench.models.diagnostics import KINK_TOL, kkt_residual_clarke

    data, init = _problem(d=8, width=16)
    spec = TrainSpec(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0, target_loss=None, l2=1e-2, max_iters=20_000)
    net, _ = train(init, data.X, data.y, spec)
    one_sided, clarke = kkt_residual(net, data.X, data.y), kkt_residual_clarke(net, data.X, data.y)
    assert one_sided > 0.3 and clarke < 0.01, (one_sided, clarke)
    assert kkt_residual_clarke(net, data.X, data.y, kink_tol=0.0) == pytest.approx(one_sided, rel=1e-9)  # no kinks: no freedom

    # The same QP, column by column, for SLSQP: theta against A lambda + B mu, 0 <= mu_k <= lambda_{i_k}.
    X, y, W, b, v = data.X, data.y, net.W, net.b, net.v
    Z = X @ W.T + b
    kink = Z.abs() <= KINK_TOL * (X.norm(dim=1)[:, None] * W.norm(dim=1)[None, :] + b.abs()[None, :])
    act = (Z > 0) & ~kink
    theta = torch.cat([W.flatten(), b, v]).numpy()
    A = np.stack([torch.cat([((y[i] * v * act[i])[:, None] * X[i]).flatten(), y[i] * v * act[i], y[i] * torch.relu(Z[i])]).numpy() for i in range(8)], 1)
    pairs = kink.nonzero().tolist()
    B = []
    for i, j in pairs:
        gW, gb = torch.zeros(16, 8, dtype=X.dtype), torch.zeros(16, dtype=X.dtype)
        gW[j], gb[j] = y[i] * v[j] * X[i], y[i] * v[j]
        B.append(torch.cat([gW.flatten(), gb, torch.zeros(16, dtype=X.dtype)]).numpy())
    M, k = np.concatenate([A, np.stack(B, 1)], 1), len(pairs)
    constraints = [{"type": "ineq", "fun": (lambda z, i=i, c=c: z[i] - z[8 + c])} for c, (i, _) in enumerate(pairs)]
    res = minimize(
        lambda z: 0.5 * np.sum((theta - M @ z) ** 2),
        np.zeros(8 + k),
        jac=lambda z: -M.T @ (theta - M @ z),
        bounds=[(0, None)] * (8 + k),
        constraints=constraints,
        method="SLSQP",
        options={"maxiter": 2000, "ftol": 1e-16},
    )
    assert clarke == pytest.approx(np.sqrt(2 * res.fun) / np.linalg.norm(theta), abs=1e-4)


# The arc schedule: theta <- theta - rho ||theta|| g / ||g||, g = grad log L (issue 12's fast path).
def test_an_arc_step_has_length_rho_theta_along_minus_the_gradient() -> None:
    data = sphere(d=8, n=8, seed=0)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(0))
    net, report = train(init, data.X, data.y, arc_schedule(TrainSpec(), lr=0.05, target_loss=None, max_iters=1))
    step = torch.cat([(net.W - init.W).flatten(), net.b - init.b, net.v - init.v])
    theta = torch.cat([init.W.flatten(), init.b, init.v])
    assert report.iterations == 1
    assert float(step.norm()) == pytest.approx(0.05 * float(theta.norm()), rel=1e-12)
    params = [t.clone().requires_grad_(True) for t in (init.W, init.b, init.v)]
    W, b, v = params
    loss = torch.exp(-data.y * (torch.relu(data.X @ W.T + b) @ v)).sum().log()
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    assert float(torch.nn.functional.cosine_similarity(step, -grad, dim=0)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("bad", [dict(batch_size=4), dict(lr=1.5), dict(l2=1e-3), dict(lr_growth=1.1)])
def test_bad_arc_specs_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="arc"):
        arc_schedule(TrainSpec(), **bad)


def test_the_late_arc_step_applies_below_its_loss_and_only_there() -> None:
    """late_lr is the step once L < late_below: a threshold above the starting loss gives the late step from the
    start (the same iterates as lr = late_lr), one below the stopping loss never switches; in between it is
    neither."""
    data = sphere(d=8, n=16, seed=1)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(1))
    spec = arc_schedule(TrainSpec(), lr=0.01, late_lr=0.004)

    def trained(spec: TrainSpec) -> tuple[torch.Tensor, int]:
        net, report = train(init, data.X, data.y, spec)
        return torch.cat([net.W.flatten(), net.b, net.v]), report.iterations

    always, never, between = (trained(dataclasses.replace(spec, late_below=below)) for below in (1e300, 1e-300, 1e-10))
    assert torch.equal(always[0], trained(arc_schedule(TrainSpec(), lr=0.004))[0])
    assert torch.equal(never[0], trained(arc_schedule(TrainSpec(), lr=0.01))[0])
    assert never[1] < between[1] < always[1]


@pytest.mark.parametrize("bad", [dict(late_lr=0.0), dict(late_lr=1.0), dict(late_lr=1e-3, late_below=0.0)])
def test_bad_late_steps_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="late step"):
        arc_schedule(TrainSpec(), **bad)


def test_the_late_step_is_the_arc_schedules_alone() -> None:
    with pytest.raises(ValueError, match="late step"):
        TrainSpec(late_lr=1e-3)  # the paper schedule
    assert on_schedule(arc_schedule(TrainSpec(), late_lr=1e-3), "paper").late_lr is None
