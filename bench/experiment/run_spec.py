"""A run: one network of an experiment (a model and a seed), with the experiment's settings resolved for it.

``ExperimentSpec.runs`` (``marginbench.bench.experiment.spec``) makes them; a RunSpec holds its experiment and
reads every other setting from it, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from marginbench.bench.experiment.families import FamilySpec
from marginbench.models.train_spec import TrainSpec

if TYPE_CHECKING:
    from marginbench.bench.experiment.spec import ExperimentSpec

# Each attack's default time limit (--attack-timeout): an hour, 20x the slowest attack measured (exact: 131 s on
# the zoo's kkt net, 64 examples at 2 s each; fb-brendel-bethge 36 s, every other one under 6 s; results/zoo,
# results/medium), or 3x exact's own budget (exact_seconds per example, up to ~2x that when it closes a gap) if longer.
ATTACK_TIMEOUT = 3600.0


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One network of an experiment: a model and a seed. Every attack of the experiment runs on it.

    Everything else is the experiment's (``experiment``), read through the properties below: the fields as
    given, and the ones the family fills in resolved (dataset, n, ell, n_eval, train). The attributes are those
    of the ExperimentSpec field of the same name, so the two cannot drift apart.
    """

    experiment: ExperimentSpec
    model: str
    seed: int

    @property
    def family(self) -> str:
        return self.experiment.family

    @property
    def dataset(self) -> str:
        return self.experiment.dataset_name

    @property
    def d(self) -> int:
        return self.experiment.d

    @property
    def n(self) -> int:
        """The number of training examples."""
        return self.experiment.n_examples

    @property
    def alpha(self) -> float | None:
        """n = round(d ** alpha), where the spec gave alpha rather than n."""
        return self.experiment.alpha if self.experiment.n is None else None

    @property
    def ell(self) -> int | None:
        """The codimension of the data subspace P (subspace family)."""
        return self.experiment.codim

    @property
    def n_eval(self) -> int:
        """The held-out points of P that are attacked (subspace family; 0 elsewhere)."""
        return self.experiment.n_eval if self.family_spec.on_subspace else 0

    @property
    def width(self) -> int:
        """Hidden neurons (the robust construction uses n instead)."""
        return self.experiment.width

    @property
    def device(self) -> str:
        return self.experiment.device

    @property
    def train(self) -> TrainSpec:
        return self.experiment.train_spec

    @property
    def label_rule(self) -> str:
        return self.experiment.label_rule

    @property
    def init_scale(self) -> float:
        return self.experiment.init_scale

    @property
    def l2(self) -> float | None:
        """lambda for the l2 model; None: the family's choice (see bench/experiment/recipes.py)."""
        return self.experiment.l2

    @property
    def twin(self) -> str | None:
        return self.experiment.twin

    @property
    def exact_seconds(self) -> float:
        return self.experiment.exact_seconds

    @property
    def attack_timeout(self) -> float | None:
        return self.experiment.attack_timeout

    @property
    def family_spec(self) -> FamilySpec:
        return self.experiment.family_spec

    @property
    def n_attacked(self) -> int:
        """The points the attacks (and the lower bounds) take: the held-out n_eval on a subspace, else the n training points."""
        return self.n_eval or self.n

    @property
    def attack_seconds_limit(self) -> float:
        """Each attack's time limit: attack_timeout, or ATTACK_TIMEOUT (3x exact's budget where that is longer)."""
        if self.attack_timeout is not None:
            return self.attack_timeout
        return max(ATTACK_TIMEOUT, 3 * self.exact_seconds * self.n_attacked)

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
