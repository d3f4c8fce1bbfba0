"""Experiment specs: what to run, as frozen dataclasses checked when they are built.

An ``ExperimentSpec`` is a grid (models x seeds, every attack on every run); ``runs()`` expands it into
``RunSpec``s, one trained (or constructed) network each. Names of datasets, models and attacks are checked
against the registries by ``marginbench.bench.registry.check_names`` before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from marginbench.models.train import TrainSpec

FAMILIES: tuple[str, ...] = ("kkt",)
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes no more
MAX_EXAMPLES = 10**12  # n = round(d ** alpha) beyond this is a typo, not an experiment (and overflows a float)
DEVICES: tuple[str, ...] = ("cpu", "cuda")


class SpecError(ValueError):
    """A user-facing mistake in a spec; its message is one line that says what to fix."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One network: a dataset draw, a model recipe and a seed. Every attack of the experiment runs on it."""

    family: str
    dataset: str
    d: int
    n: int  # number of training examples
    width: int  # hidden neurons (the robust construction uses n instead)
    model: str
    seed: int
    device: str
    train: TrainSpec

    @property
    def run_id(self) -> str:
        return f"{self.family}-{self.dataset}-d{self.d}-n{self.n}-w{self.width}-{self.model}-s{self.seed}"


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """A grid of runs: every model x seed on one dataset setting, every attack on every run."""

    family: str = "kkt"  # kkt: Vardi et al. 2022 (max-margin implicit bias)
    dataset: str = "sphere"  # x ~ U(sqrt(d) S^{d-1}), y ~ U{-1, +1}
    d: int = 64  # input dimension
    n: int | None = None  # number of training examples; None: round(d ** alpha)
    alpha: float = 1.0  # n = round(d ** alpha) when n is None (the paper's m = d^alpha)
    width: int = 256  # hidden neurons of trained models
    models: tuple[str, ...] = ("vanilla", "robust-construction")
    attacks: tuple[str, ...] = ("universal-z",)
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    train: TrainSpec = field(default_factory=TrainSpec)

    def __post_init__(self) -> None:
        # One check per line, in the order a user reads the options; each names the option and what is wrong.
        if self.family not in FAMILIES:
            raise SpecError(f"unknown family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        for option, value in (("--d", self.d), ("--n", self.n), ("--width", self.width)):
            if value is not None and not _is_int(value):
                raise SpecError(f"{option} must be an integer, got {value!r}")
        if self.d < 2:
            raise SpecError(f"--d must be at least 2, got {self.d}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise SpecError(f"--alpha must be a positive number, got {self.alpha}")
        if self.n is None and self.alpha * math.log(self.d) > math.log(MAX_EXAMPLES):
            raise SpecError(f"--alpha {self.alpha} gives n = d^alpha above {MAX_EXAMPLES:.0e} examples for d = {self.d}")
        if self.n_examples < 2:
            raise SpecError(f"the number of examples n must be at least 2, got {self.n_examples}")
        if self.width < 1:
            raise SpecError(f"--width must be at least 1, got {self.width}")
        for what, names in (("model", self.models), ("attack", self.attacks), ("seed", self.seeds)):
            if not names:
                raise SpecError(f"give at least one {what}")
            if len(set(names)) != len(names):
                raise SpecError(f"a {what} is listed twice: {', '.join(map(str, names))}")
        if not all(_is_int(s) and 0 <= s <= MAX_SEED for s in self.seeds):
            raise SpecError(f"seeds must be non-negative integers below 2^64, got {', '.join(map(str, self.seeds))}")
        if self.device not in DEVICES:
            raise SpecError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")

    @property
    def n_examples(self) -> int:
        return self.n if self.n is not None else round(self.d**self.alpha)

    def runs(self) -> tuple[RunSpec, ...]:
        """One RunSpec per (model, seed), models outermost."""
        return tuple(
            RunSpec(
                family=self.family,
                dataset=self.dataset,
                d=self.d,
                n=self.n_examples,
                width=self.width,
                model=model,
                seed=seed,
                device=self.device,
                train=self.train,
            )
            for model in self.models
            for seed in self.seeds
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def spec_from_dict(data: Mapping[str, Any]) -> ExperimentSpec:
    """The ExperimentSpec that ``dataclasses.asdict`` turned into ``data`` (e.g. read back from manifest.json).

    Lists become tuples again and ``train`` a TrainSpec; an unknown key or a bad value is a SpecError.
    """
    known = {f.name for f in fields(ExperimentSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"the spec holds unknown fields ({', '.join(unknown)}); was it written by another version?")
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    try:
        if "train" in values:
            values["train"] = TrainSpec(**values["train"])
        return ExperimentSpec(**values)
    except (TypeError, ValueError) as err:
        raise SpecError(f"the spec is not valid: {err}") from None
