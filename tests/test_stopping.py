"""The one stop rule (models/stopping.py): its order when two rules hold at once, and the same reason from the
two-layer and the three-layer trainer on the same spec."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest
import torch

from marginbench.models.datasets import sphere
from marginbench.models.stopping import ORDER, stop_reason
from marginbench.models.three_layer import ThreeLayerNet, three_layer_init, train_three_layer
from marginbench.models.train import train
from marginbench.models.train_spec import StopReason, TrainSpec
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

# A net's numbers that meet no rule of BASE, and for each rule the spec fields and numbers that make it hold.
BASE = TrainSpec(loss="logistic", lr=0.01, lr_growth=1.0, target_loss=None, max_iters=10)
CALM: dict[str, Any] = dict(log_L=0.0, q_max=1.0, q_min=-1.0, sq_norm=1.0, iteration=0, out_of_time=False, stuck=None)
HOLDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "nonfinite": ({}, dict(q_max=math.inf)),
    "target_loss": (dict(target_loss=1.0), dict(log_L=-1.0)),
    "target_margin": (dict(target_margin=0.5), dict(q_min=1.0)),
    "target_normalized_margin": (dict(target_normalized_margin=0.1), dict(q_min=1.0)),
    "dead": ({}, dict(stuck="dead")),
    "stalled": ({}, dict(stuck="stalled")),
    "max_iters": (dict(max_iters=5), dict(iteration=5)),
    "max_seconds": (dict(max_seconds=1.0), dict(out_of_time=True)),
}


def _reason(*rules: str) -> StopReason | None:
    changes, numbers = {}, dict(CALM)
    for rule in rules:
        changes.update(HOLDS[rule][0])
        numbers.update(HOLDS[rule][1])
    return stop_reason(dataclasses.replace(BASE, **changes), **numbers)


def test_every_rule_alone_gives_its_own_reason() -> None:
    assert set(HOLDS) == set(ORDER)
    assert _reason() is None
    for rule in ORDER:
        assert _reason(rule) == rule


@pytest.mark.parametrize(("first", "second"), [pair for pair in itertools.combinations(ORDER, 2) if pair != ("dead", "stalled")], ids="-".join)
def test_the_earlier_rule_wins_when_two_hold_at_once(first: str, second: str) -> None:
    assert _reason(first, second) == first
    assert _reason(second, first) == first


def _nets(*, dead: bool = False, nan: bool = False) -> tuple[TwoLayerNet, ThreeLayerNet]:
    two = pytorch_default_init(4, 5, generator=torch.Generator().manual_seed(0))
    three = three_layer_init(4, 5, generator=torch.Generator().manual_seed(0))
    if dead:  # |w.x| <= 2 |w| on the sphere: a bias of -100 turns every ReLU (of the last hidden layer) off
        two = dataclasses.replace(two, b=torch.full_like(two.b, -100.0))
        three = dataclasses.replace(three, b2=torch.full_like(three.b2, -100.0))
    if nan:
        two = dataclasses.replace(two, v=torch.full_like(two.v, math.nan))
        three = dataclasses.replace(three, v=torch.full_like(three.v, math.nan))
    return two, three


# (spec changes to BASE, which nets, the reason both trainers give): cases where two rules hold at iteration 0.
CASES: dict[str, tuple[dict[str, Any], dict[str, bool], StopReason]] = {
    "loss-beats-margin": (dict(target_loss=1e6, target_margin=-1e6), {}, "target_loss"),
    "margin-beats-normalized": (dict(target_margin=-1e6, target_normalized_margin=-1e6), {}, "target_margin"),
    "normalized-beats-cap": (dict(target_normalized_margin=-1e6, max_iters=0), {}, "target_normalized_margin"),
    "target-beats-dead": (dict(target_loss=1e6), dict(dead=True), "target_loss"),
    "dead-beats-cap": (dict(max_iters=0), dict(dead=True), "dead"),
    "cap-beats-clock": (dict(max_iters=0, max_seconds=1e-9), {}, "max_iters"),
    "nonfinite-beats-all": (dict(target_loss=1e6, target_margin=-1e6, max_iters=0), dict(nan=True), "nonfinite"),
}


@pytest.mark.parametrize("case", CASES)
def test_both_trainers_stop_for_the_same_reason_when_two_rules_hold(case: str) -> None:
    changes, which, expected = CASES[case]
    spec = dataclasses.replace(BASE, **changes)
    data = sphere(d=4, n=6, seed=0)
    two, three = _nets(**which)
    _, report2 = train(two, data.X, data.y, spec)
    _, report3 = train_three_layer(three, data.X, data.y, spec)
    assert (report2.stop_reason, report2.iterations) == (report3.stop_reason, report3.iterations) == (expected, 0)
