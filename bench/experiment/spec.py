"""Experiment specs: what to run, as frozen dataclasses checked when they are built.

An ``ExperimentSpec`` is a grid (models x seeds, every attack on every run) at one data setting; ``runs()``
expands it into ``RunSpec``s (``marginbench.bench.experiment.run_spec``), one trained (or constructed) network each. A preset may hold several specs
(a sweep over d, alpha, width or init scale). Names of datasets, models and attacks are checked against the
registries by ``marginbench.bench.registry.registries.check_names`` before any work starts.

Each family's defaults (its datasets, models, attacks, training recipe) are decided once, in
``marginbench.bench.experiment.families``; ``SpecError`` is in ``marginbench.bench.errors`` (both importable from here).
Every default is written once, beside what it belongs to; the command line's options and help read them from there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from marginbench.attacks.exact import EXACT_SECONDS
from marginbench.bench.errors import SpecError, field_error
from marginbench.bench.experiment.families import FAMILIES, KKT, FamilySpec, family_of
from marginbench.bench.experiment.run_spec import RunSpec
from marginbench.models.datasets import DIGITS_DIM, LABEL_RULES
from marginbench.models.train import TrainSpec
from marginbench.models.train_spec import on_schedule

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes no more
MAX_EXAMPLES = 10**12  # n = round(d ** alpha) beyond this is a typo, not an experiment (and overflows a float)
DEVICES: tuple[str, ...] = ("cpu", "cuda")
# --twin: the schedules a fast-trained net can be certified against: Vardi et al.'s (Section 6) on their summed
# loss (eq. 1), or on the mean loss, where the summed loss's first steps at lr 1e-5 diverge (large n ||x||^2)
TWINS: tuple[str, ...] = ("paper", "paper-mean")
TWIN_PRECISIONS: tuple[str, ...] = ("float64", "float32")  # the twin's dtype: the paper's float64, or float32 where that cannot finish


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """A grid of runs: every model x seed at one data setting, every attack on every run.

    Fields left at None take the family's defaults (``FAMILIES``).
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
    l2: float | None = None  # lambda of the l2 model; None: subspace (1 - lr lambda)^T = 1/sqrt(2d) (Cor 6.2), kkt KKT_L2_LAMBDA
    models: tuple[str, ...] | None = None
    attacks: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    train: TrainSpec | None = None  # None: the family's recipe (Vardi et al.'s schedule / SUBSPACE_TRAIN)
    twin: str | None = None  # "paper": every trained net again with Vardi et al.'s schedule, compared (kkt only)
    twin_precision: str = "float64"  # what the twin trains in (TWIN_PRECISIONS)
    exact_seconds: float = EXACT_SECONDS  # the exact attack's time limit per example (SCIP); beyond it a certified bound only
    attack_timeout: float | None = None  # each attack's wall-time limit in seconds (None: ATTACK_TIMEOUT); past it the attack fails

    def __post_init__(self) -> None:
        # One check per line, in the order a user reads the options; each names the field and what is wrong.
        family = family_of(self.family)
        if self.dataset is not None and _of_other_family(self.dataset, family):
            raise field_error("dataset", f"{self.dataset!r} is not part of the {family.name} family; choose from: {', '.join(family.datasets)}")
        for name in ("d", "n", "width"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise field_error(name, f"must be an integer, got {value!r}")
        if self.d < 2:
            raise field_error("d", f"must be at least 2, got {self.d}")
        if self.dataset_name == "digits" and self.d != DIGITS_DIM:
            raise SpecError(f"digits data live in R^64: d must be 64, got {self.d}", cli=f"digits data live in R^64: --d must be 64, got {self.d}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise field_error("alpha", f"must be a positive number, got {self.alpha}")
        if self.n is None and self.alpha * math.log(self.d) > math.log(MAX_EXAMPLES):
            raise field_error("alpha", f"{self.alpha} gives n = d^alpha above {MAX_EXAMPLES:.0e} examples for d = {self.d}")
        if self.n_examples < 2:
            raise SpecError(f"the number of examples n must be at least 2, got {self.n_examples}")
        if self.width < 1:
            raise field_error("width", f"must be at least 1, got {self.width}")
        batch = self.train_spec.batch_size
        if batch is not None and batch > self.n_examples:
            raise field_error("batch_size", f"{batch} is more than the n = {self.n_examples} training examples; leave it out for full-batch GD")
        if not family.on_subspace and self.ell is not None:
            raise field_error("ell", "applies to subspace data only (the subspace family)")
        if family.on_subspace:
            ell = self.codim
            if ell is None or not 1 <= ell < self.d:
                raise field_error("ell", f"must satisfy 1 <= ell < d = {self.d}, got {ell}")
            if self.n_eval < 1:
                raise field_error("n_eval", f"must be at least 1, got {self.n_eval}")
        if self.label_rule not in LABEL_RULES:
            raise field_error("label_rule", f"{self.label_rule!r} is unknown; choose one of: {', '.join(LABEL_RULES)}")
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise field_error("init_scale", f"must be a positive number, got {self.init_scale}")
        if self.l2 is not None and not (math.isfinite(self.l2) and self.l2 >= 0):
            raise field_error("l2", f"must be a non-negative number, got {self.l2}")
        for what, names in (("model", self.model_names), ("attack", self.attack_names), ("seed", self.seeds)):
            if not names:
                raise SpecError(f"give at least one {what}")
            if len(set(names)) != len(names):
                raise SpecError(f"a {what} is listed twice: {', '.join(map(str, names))}")
        if not all(_is_int(s) and 0 <= s <= MAX_SEED for s in self.seeds):
            raise SpecError(f"seeds must be non-negative integers below 2^64, got {', '.join(map(str, self.seeds))}")
        if self.twin is not None and self.twin not in TWINS:
            raise field_error("twin", f"{self.twin!r} is unknown; choose one of: {', '.join(TWINS)}")
        if self.twin_precision not in TWIN_PRECISIONS:
            raise field_error("twin_precision", f"{self.twin_precision!r} is unknown; choose one of: {', '.join(TWIN_PRECISIONS)}")
        if self.twin is not None and family is not KKT:
            raise field_error("twin", f"applies to the kkt family only (the {family.name} family trains with its paper's own constant step)")
        if not (math.isfinite(self.exact_seconds) and self.exact_seconds > 0):
            raise field_error("exact_seconds", f"must be a positive number of seconds, got {self.exact_seconds}")
        if self.attack_timeout is not None and not (math.isfinite(self.attack_timeout) and self.attack_timeout > 0):
            raise field_error("attack_timeout", f"must be a positive number of seconds, got {self.attack_timeout}")
        if self.device not in DEVICES:
            raise field_error("device", f"{self.device!r} is unknown; choose one of: {', '.join(DEVICES)}")

    @property
    def family_spec(self) -> FamilySpec:
        return family_of(self.family)

    @property
    def dataset_name(self) -> str:
        return self.dataset if self.dataset is not None else self.family_spec.datasets[0]

    @property
    def codim(self) -> int | None:
        """ell for subspace data (the family's default where it was not given), None for the kkt family."""
        if self.ell is not None and self.family_spec.on_subspace:
            return self.ell
        return self.family_spec.default_ell(self.dataset_name, self.d)

    @property
    def n_examples(self) -> int:
        return self.n if self.n is not None else round(self.d**self.alpha)

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.models if self.models is not None else self.family_spec.default_models

    @property
    def attack_names(self) -> tuple[str, ...]:
        return self.attacks if self.attacks is not None else self.family_spec.default_attacks

    @property
    def train_spec(self) -> TrainSpec:
        return self.train if self.train is not None else self.family_spec.train

    def runs(self) -> tuple[RunSpec, ...]:
        """One RunSpec per (model, seed), models outermost."""
        return tuple(RunSpec(experiment=self, model=model, seed=seed) for model in self.model_names for seed in self.seeds)


Sweep = tuple[ExperimentSpec, ...]  # the specs of one result directory (a preset, or options on the command line)


def _of_other_family(name: str, family: FamilySpec) -> bool:
    """Whether ``name`` is a built-in of another family only (names registered by users belong to every family)."""
    return name not in family.datasets and any(name in other.datasets for other in FAMILIES.values())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def with_options(spec: ExperimentSpec, options: Mapping[str, Any], train_options: Mapping[str, Any]) -> ExperimentSpec:
    """``spec`` with the given fields replaced, and the given fields of its training spec.

    ``options`` may hold any ExperimentSpec field (``n=None`` with ``alpha`` switches to n = d^alpha);
    ``train_options`` any TrainSpec field. Asking for a schedule brings its own step size and growth
    (``on_schedule``), unless they are given too. SpecError for an invalid result.
    """
    changed = dataclasses.replace(spec, **options)
    if not train_options:
        return changed
    train = changed.train_spec
    try:
        if "schedule" in train_options:  # a schedule brings its own step and growth, unless they are given too
            train = on_schedule(train, train_options["schedule"])
        return dataclasses.replace(changed, train=dataclasses.replace(train, **train_options))
    except SpecError:  # the spec's own check, already in the command line's words
        raise
    except ValueError as err:
        raise SpecError(str(err)) from None


def first_difference(asked: ExperimentSpec, stored: ExperimentSpec) -> tuple[str, Any, Any] | None:
    """(field, asked value, stored value) of the first field where two specs differ (a training field by its
    own name), or None where they are equal."""
    for name in (f.name for f in fields(ExperimentSpec)):
        mine, theirs = getattr(asked, name), getattr(stored, name)
        if mine == theirs:
            continue
        if name == "train":
            mine, theirs = asked.train_spec, stored.train_spec
            return next((f.name, getattr(mine, f.name), getattr(theirs, f.name)) for f in fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name))
        return name, mine, theirs
    return None


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
    except SpecError:
        raise
    except (TypeError, ValueError) as err:
        raise SpecError(f"the spec is not valid: {err}") from None
