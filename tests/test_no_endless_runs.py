"""Nothing runs forever (issue 24): a paper schedule that cannot reach its target is refused, the estimate names
the trainings that will stop at their cap, a sleeping attack is stopped at its time limit, and a net that cannot
train stops at once with the reason."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from marginbench.bench.execution.estimate import steps_estimate, sweep_cost
from marginbench.bench.execution.time_limit import AttackTimeout, time_limit
from marginbench.bench.experiment.recipes import family_init
from marginbench.bench.experiment.spec import ExperimentSpec
from marginbench.bench.registry.registries import DATASETS
from marginbench.models.datasets import sphere
from marginbench.models.three_layer import three_layer_init, train_three_layer
from marginbench.models.train import TrainSpec, train
from marginbench.models.train_spec import MAX_ITERS, STUCK
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

# the smallest kkt run: one trained vanilla net, d = n = width = 4
SMALLEST = ["--d", "4", "--n", "4", "--width", "4", "--models", "vanilla", "--seeds", "0", "--no-progress"]


def marginbench(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marginbench", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "option", [["--lr-growth", "1"], ["--growth-every", "1e20"], ["--growth-every", "5000"]], ids=["growth-1", "huge-interval", "long-interval"]
)
def test_a_paper_schedule_that_cannot_reach_its_target_is_refused_in_one_line(option: list[str], tmp_path: Path) -> None:
    done = marginbench(["run", *SMALLEST, *option, "--out", "o"], tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "cannot reach loss 1e-30 within 2,000,000 iterations" in line and "max_iters" in line
    assert not (tmp_path / "o").exists()


def test_the_paper_schedule_itself_and_explicit_caps_are_accepted() -> None:
    assert steps_estimate(TrainSpec(), 64, 64) == pytest.approx(73_000, rel=0.01)  # the paper's ~72,737 steps, uncapped
    TrainSpec(lr_growth=1.0, max_iters=1000)  # a cap of one's own: the user said where to stop
    TrainSpec(lr_growth=1.0, target_loss=1e-3)  # within reach of a constant step
    TrainSpec(lr_growth=1.0, target_margin=1.0)  # another target may come first


def test_the_estimate_names_the_trainings_that_will_stop_at_their_cap() -> None:
    reachable_late = ExperimentSpec(d=4, n=4, width=4, models=("vanilla",), train=TrainSpec(growth_every=3000))  # ~2.1M steps
    cost, _ = sweep_cost((reachable_late,))
    assert "1 training will stop at the iteration cap of 2,000,000 before the target (max_iters)" in cost.line()
    assert cost.minutes > 1  # 2M steps of a tiny net are minutes of loop time, not "under a minute"
    paper, _ = sweep_cost((ExperimentSpec(d=4, n=4, width=4, models=("vanilla",)),))
    assert "cap" not in paper.line()
    assert steps_estimate(reachable_late.train_spec, 4, 4) == MAX_ITERS


SLEEPER = """
import time
import torch
from marginbench import ATTACKS, AttackResult

@ATTACKS.register("sleeper")
def sleeper(data, context):
    def attack(net, X, y):
        try:
            time.sleep(1e9)
        except Exception:  # an attack that swallows what it can must still be stopped
            pass
        return AttackResult(delta=-2 * X, found=torch.ones_like(y, dtype=torch.bool))
    return attack
"""


@pytest.mark.parametrize("workers", ["1", "2"], ids=["sequential", "process-pool"])
def test_a_sleeping_attack_is_stopped_at_its_time_limit_and_the_others_keep_their_rows(workers: str, tmp_path: Path) -> None:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    args = ["run", *SMALLEST, "--max-iters", "200", "--seeds", "0,1", "--attacks", "sleeper,universal-z", "--plugin", "sleeper.py"]
    start = time.perf_counter()
    done = marginbench([*args, "--attack-timeout", "1", "--workers", workers, "--out", "o"], tmp_path)
    assert time.perf_counter() - start < 120
    assert done.returncode == 0, done.stderr  # an attack that fails does not fail its run
    summary = pd.read_csv(tmp_path / "o" / "summary.csv").set_index(["seed", "attack"])
    for seed in (0, 1):
        assert summary.loc[(seed, "sleeper"), "attack_status"] == "failed"
        assert summary.loc[(seed, "sleeper"), "attack_seconds"] < 10
        assert "timed out after 1 s" in summary.loc[(seed, "sleeper"), "error"]
        assert summary.loc[(seed, "universal-z"), "attack_status"] == "ok" and summary.loc[(seed, "universal-z"), "n_attacked"] == 4
    examples = pd.read_csv(tmp_path / "o" / "examples.csv")
    assert (examples.loc[examples["attack"] == "sleeper", "norm"] == math.inf).all() and len(examples[examples["attack"] == "sleeper"]) == 8
    assert len(examples[examples["attack"] == "universal-z"]) == 8
    assert "sleeper: failed: timed out after 1 s" in done.stderr


def test_the_attack_timeout_is_checked_and_documented(tmp_path: Path) -> None:
    bad = marginbench(["run", *SMALLEST, "--attack-timeout", "0", "--out", "o"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("--attack-timeout must be a positive number of seconds, got 0.0")
    assert "--attack-timeout" in marginbench(["run", "--help"], tmp_path).stdout
    assert ExperimentSpec().runs()[0].attack_seconds_limit == 3600
    assert ExperimentSpec(attack_timeout=5.0).runs()[0].attack_seconds_limit == 5


def test_a_time_limit_restores_the_alarm_it_found() -> None:
    with pytest.raises(AttackTimeout), time_limit(0.05):
        time.sleep(10)
    with time_limit(5) as limit:
        pass
    assert not limit.expired
    time.sleep(1.2)  # the repeating alarm is off: nothing is raised here


def test_a_dead_net_stops_at_once_with_the_reason(tmp_path: Path) -> None:
    start = time.perf_counter()
    done = marginbench(["run", "--family", "kkt", "--dataset", "sphere", "--d", "2", "--n", "5", "--width", "6", "--models", "vanilla", "--seeds", "4",
                        "--attacks", "universal-z", "--no-progress", "--out", "o"], tmp_path)  # fmt: skip
    assert time.perf_counter() - start < 60  # 754,600 iterations (75 s) before, then "NaN/inf"
    assert done.returncode == 1
    summary = pd.read_csv(tmp_path / "o" / "summary.csv")
    assert (summary["run_status"] == "failed").all()
    assert "every ReLU is off at every training point" in summary["error"].iloc[0] and "NaN" not in summary["error"].iloc[0]


def test_a_net_with_every_relu_off_stops_at_iteration_0() -> None:
    data = sphere(d=4, n=6, seed=0)
    init = pytorch_default_init(4, 5, generator=torch.Generator().manual_seed(0))
    dead = TwoLayerNet(W=init.W, b=torch.full_like(init.b, -100.0), v=init.v)  # |w.x| <= 2 |w|: every ReLU off
    _, report = train(dead, data.X, data.y, TrainSpec())
    assert report.stop_reason == "dead" and report.iterations == 0 and not report.reached_target
    assert STUCK["dead"].startswith("every ReLU is off at every training point")


def test_a_three_layer_net_with_a_dead_hidden_layer_stops_at_once() -> None:
    data = sphere(d=4, n=6, seed=0)
    init = three_layer_init(4, 5, generator=torch.Generator().manual_seed(0))
    dead = type(init)(W1=init.W1, b1=init.b1, W2=init.W2, b2=torch.full_like(init.b2, -100.0), v=init.v, c=init.c)
    spec = TrainSpec(loss="logistic", lr=0.01, lr_growth=1.0, target_loss=None, target_margin=1.0, max_iters=5000)
    _, report = train_three_layer(dead, data.X, data.y, spec)
    assert report.stop_reason == "dead" and report.iterations == 0


def test_a_loss_that_stops_moving_while_the_step_grows_is_stalled() -> None:
    """The issue's net (d 2, n 5, width 6, seed 4): ReLUs die at 4 points and the 5th's loss underflows. With SGD
    the dead check looks at relu(Z) only (a mini-batch's own softmax could revive the 5th), so the stall rule ends it."""
    run = ExperimentSpec(d=2, n=5, width=6, models=("vanilla",), seeds=(4,)).runs()[0]
    data = DATASETS.get("sphere")(run)
    init, _ = family_init(data, run, small=False)
    _, report = train(init, data.X, data.y, TrainSpec(batch_size=5))
    assert report.stop_reason == "stalled" and report.iterations < 40_000
    _, report = train(init, data.X, data.y, TrainSpec())  # full batch: the step is exactly 0, dead at once
    assert report.stop_reason == "dead" and report.iterations < 20_000
