"""Named experiment specs: ``marginbench run --preset NAME``."""

from __future__ import annotations

from collections.abc import Callable

from marginbench.bench.registry import Registry
from marginbench.bench.spec import ExperimentSpec
from marginbench.models.train import TrainSpec

PRESETS: Registry[Callable[[], ExperimentSpec]] = Registry("preset")


@PRESETS.register("default")
def default() -> ExperimentSpec:
    """Every kkt model x attack on d = 64, n = d, width 256, seed 0: about a minute on 2 CPU cores."""
    return ExperimentSpec(
        family="kkt",
        dataset="sphere",
        d=64,
        alpha=1.0,
        width=256,
        models=("vanilla", "robust-construction"),
        attacks=("universal-z",),
        seeds=(0,),
    )


@PRESETS.register("smoke")
def smoke() -> ExperimentSpec:
    """A seconds-long check that everything runs: d = 16, n = d, width 32, seeds 0 and 1."""
    return ExperimentSpec(
        family="kkt",
        dataset="sphere",
        d=16,
        alpha=1.0,
        width=32,
        models=("vanilla", "robust-construction"),
        attacks=("universal-z",),
        seeds=(0, 1),
    )


@PRESETS.register("baseline")
def baseline() -> ExperimentSpec:
    """The regression run behind results/baseline.json (a few seconds): d = 8, n = d, width 16, seeds 0 and 1.

    A faster schedule than the paper's (lr 1e-2, x1.2 every 10 iterations) still trains to loss < 1e-30.
    """
    return ExperimentSpec(
        family="kkt",
        dataset="sphere",
        d=8,
        alpha=1.0,
        width=16,
        models=("vanilla", "robust-construction"),
        attacks=("universal-z",),
        seeds=(0, 1),
        train=TrainSpec(lr=1e-2, lr_growth=1.2, growth_every=10),
    )
