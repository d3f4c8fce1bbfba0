"""Experiment specs: what to run, as frozen dataclasses checked when they are built.

An ``ExperimentSpec`` is a grid (models x seeds, every attack on every run) at one data setting; ``runs()``
expands it into ``RunSpec``s, one trained (or constructed) network each. A preset may hold several specs
(a sweep over d, alpha, width or init scale). Names of datasets, models and attacks are checked against the
registries by ``marginbench.bench.registry.check_names`` before any work starts.

Families:
- ``kkt`` (Vardi et al. 2022): sphere data; all layers trained to loss 1e-30; models vanilla, small-init,
  l2 (regularized, trained until stationary), robust-construction.
- ``subspace`` (Melamed et al. 2023): data on a linear subspace P of codimension ell (``subspace``,
  ``digits``); first layer trained only; models vanilla, small-init, l2; attacked at held-out points of P.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from marginbench.models.datasets import DIGITS_DIM, LABEL_RULES
from marginbench.models.train import SUBSPACE_TRAIN, TrainSpec

FAMILIES: tuple[str, ...] = ("kkt", "subspace")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes no more
MAX_EXAMPLES = 10**12  # n = round(d ** alpha) beyond this is a typo, not an experiment (and overflows a float)
DEVICES: tuple[str, ...] = ("cpu", "cuda")

FAMILY_DATASETS = {"kkt": ("sphere",), "subspace": ("subspace", "digits")}
FAMILY_MODELS = {"kkt": ("vanilla", "small-init", "l2", "robust-construction"), "subspace": ("vanilla", "small-init", "l2")}
FAMILY_DEFAULTS = {
    "kkt": {
        "models": ("vanilla", "robust-construction"),
        # every attack that applies to data off any subspace (pgd-on/-off and subspace-z need one)
        "attacks": ("universal-z", "pgd", "fmn", "boundary-walk", "fb-fmn", "fb-ddn", "fb-deepfool", "fb-cw", "fb-boundary", "fb-brendel-bethge"),
        "train": TrainSpec(),
    },
    "subspace": {"models": ("vanilla", "small-init", "l2"), "attacks": ("subspace-z", "pgd", "pgd-off", "pgd-on"), "train": SUBSPACE_TRAIN},
}


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
    alpha: float | None = None  # n = round(d ** alpha), where the spec gave alpha rather than n
    ell: int | None = None  # codimension of the data subspace P (subspace family)
    n_eval: int = 0  # held-out points of P that are attacked (subspace family)
    label_rule: str = "random"
    init_scale: float = 1.0  # multiplies the initialization's standard deviation
    l2: float | None = None  # lambda for the l2 model; None: chosen by Corollary 6.2

    @property
    def run_id(self) -> str:
        parts = [self.family, self.dataset, f"d{self.d}"]
        if self.ell is not None:
            parts.append(f"l{self.ell}")
        parts += [f"n{self.n}", f"w{self.width}", self.model]
        if self.init_scale != 1.0:
            parts.append(f"x{self.init_scale:g}")
        parts.append(f"s{self.seed}")
        return "-".join(parts)


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """A grid of runs: every model x seed at one data setting, every attack on every run.

    Fields left at None take the family's defaults (FAMILY_DEFAULTS, FAMILY_DATASETS).
    """

    family: str = "kkt"  # kkt: Vardi et al. 2022; subspace: Melamed et al. 2023
    dataset: str | None = None  # None: the family's first dataset (sphere / subspace)
    d: int = 64  # input dimension (digits: always 64)
    n: int | None = None  # number of training examples; None: round(d ** alpha)
    alpha: float = 1.0  # n = round(d ** alpha) when n is None (Vardi et al.'s m = d^alpha)
    ell: int | None = None  # codimension of P for subspace data; None: d - d // 4 (digits: 54)
    n_eval: int = 100  # held-out points of P that are attacked (subspace family)
    label_rule: str = "random"  # subspace data: random labels, or linear (a halfspace within P)
    width: int = 256  # hidden neurons of trained models
    init_scale: float = 1.0  # multiplies the init's standard deviation (Melamed et al. Fig. 4: 1/factor)
    l2: float | None = None  # lambda of the l2 model; None: subspace (1 - lr lambda)^T = 1/sqrt(2d) (Cor 6.2), kkt 1e-10
    models: tuple[str, ...] | None = None
    attacks: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    train: TrainSpec | None = None  # None: the family's recipe (Vardi et al.'s schedule / SUBSPACE_TRAIN)

    def __post_init__(self) -> None:
        # One check per line, in the order a user reads the options; each names the option and what is wrong.
        if self.family not in FAMILIES:
            raise SpecError(f"unknown family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        if self.dataset is not None and _of_other_family(self.dataset, self.family, FAMILY_DATASETS):
            allowed = ", ".join(FAMILY_DATASETS[self.family])
            raise SpecError(f"dataset {self.dataset!r} is not part of the {self.family} family; choose from: {allowed}")
        for option, value in (("--d", self.d), ("--n", self.n), ("--width", self.width)):
            if value is not None and not _is_int(value):
                raise SpecError(f"{option} must be an integer, got {value!r}")
        if self.d < 2:
            raise SpecError(f"--d must be at least 2, got {self.d}")
        if self.dataset_name == "digits" and self.d != DIGITS_DIM:
            raise SpecError(f"digits data live in R^64: --d must be 64, got {self.d}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise SpecError(f"--alpha must be a positive number, got {self.alpha}")
        if self.n is None and self.alpha * math.log(self.d) > math.log(MAX_EXAMPLES):
            raise SpecError(f"--alpha {self.alpha} gives n = d^alpha above {MAX_EXAMPLES:.0e} examples for d = {self.d}")
        if self.n_examples < 2:
            raise SpecError(f"the number of examples n must be at least 2, got {self.n_examples}")
        if self.width < 1:
            raise SpecError(f"--width must be at least 1, got {self.width}")
        if self.family == "kkt" and self.ell is not None:
            raise SpecError("--ell applies to subspace data only (the subspace family)")
        if self.family == "subspace":
            ell = self.codim
            if ell is None or not 1 <= ell < self.d:
                raise SpecError(f"--ell must satisfy 1 <= ell < d = {self.d}, got {ell}")
            if self.n_eval < 1:
                raise SpecError(f"--n-eval must be at least 1, got {self.n_eval}")
        if self.label_rule not in LABEL_RULES:
            raise SpecError(f"unknown label rule {self.label_rule!r}; choose one of: {', '.join(LABEL_RULES)}")
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise SpecError(f"--init-scale must be a positive number, got {self.init_scale}")
        if self.l2 is not None and not (math.isfinite(self.l2) and self.l2 >= 0):
            raise SpecError(f"--l2 must be a non-negative number, got {self.l2}")
        for what, names in (("model", self.model_names), ("attack", self.attack_names), ("seed", self.seeds)):
            if not names:
                raise SpecError(f"give at least one {what}")
            if len(set(names)) != len(names):
                raise SpecError(f"a {what} is listed twice: {', '.join(map(str, names))}")
        if not all(_is_int(s) and 0 <= s <= MAX_SEED for s in self.seeds):
            raise SpecError(f"seeds must be non-negative integers below 2^64, got {', '.join(map(str, self.seeds))}")
        if self.family == "kkt" and "l2" in self.model_names and self.l2 == 0:
            raise SpecError("--l2 0 leaves the kkt l2 model nothing to be stationary for: give lambda > 0 (default 1e-10)")
        if self.device not in DEVICES:
            raise SpecError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")

    @property
    def dataset_name(self) -> str:
        return self.dataset if self.dataset is not None else FAMILY_DATASETS[self.family][0]

    @property
    def codim(self) -> int | None:
        """ell for subspace data (the default where it was not given), None for the kkt family."""
        if self.family != "subspace":
            return None
        if self.ell is not None:
            return self.ell
        return DIGITS_DIM - 10 if self.dataset_name == "digits" else self.d - self.d // 4

    @property
    def n_examples(self) -> int:
        return self.n if self.n is not None else round(self.d**self.alpha)

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.models if self.models is not None else FAMILY_DEFAULTS[self.family]["models"]  # type: ignore[return-value]

    @property
    def attack_names(self) -> tuple[str, ...]:
        return self.attacks if self.attacks is not None else FAMILY_DEFAULTS[self.family]["attacks"]  # type: ignore[return-value]

    @property
    def train_spec(self) -> TrainSpec:
        return self.train if self.train is not None else FAMILY_DEFAULTS[self.family]["train"]  # type: ignore[return-value]

    def runs(self) -> tuple[RunSpec, ...]:
        """One RunSpec per (model, seed), models outermost."""
        return tuple(
            RunSpec(
                family=self.family,
                dataset=self.dataset_name,
                d=self.d,
                n=self.n_examples,
                width=self.width,
                model=model,
                seed=seed,
                device=self.device,
                train=self.train_spec,
                alpha=self.alpha if self.n is None else None,
                ell=self.codim,
                n_eval=self.n_eval if self.family == "subspace" else 0,
                label_rule=self.label_rule,
                init_scale=self.init_scale,
                l2=self.l2,
            )
            for model in self.model_names
            for seed in self.seeds
        )


def _of_other_family(name: str, family: str, members: Mapping[str, tuple[str, ...]]) -> bool:
    """Whether ``name`` is a built-in of another family only (names registered by users belong to every family)."""
    return name not in members[family] and any(name in names for names in members.values())


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
        if values.get("train") is not None:
            values["train"] = TrainSpec(**values["train"])
        return ExperimentSpec(**values)
    except (TypeError, ValueError) as err:
        raise SpecError(f"the spec is not valid: {err}") from None
