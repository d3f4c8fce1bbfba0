"""The experiment families: the paper each follows and every default of its experiments, decided once."""

from __future__ import annotations

from dataclasses import dataclass

from marginbench.bench.errors import field_error
from marginbench.models.datasets import DIGITS_ELL
from marginbench.models.train import SUBSPACE_TRAIN, TrainSpec

# The kkt family's l2 model (not in Vardi et al.): L(theta) + lambda/2 ||theta||^2 over all of W, b, v. Its
# stationary points satisfy problem (2)'s KKT stationarity exactly (multipliers -loss'(q_i)/lambda), and
# complementary slackness up to factors e^{-(q_i - q_min)}; they approach KKT points as lambda -> 0 (Wei et
# al. 2019, "Regularization matters"). Trained with the normalized schedule, whose step lr/L settles near
# lr/(lambda/(2 gamma)) at the regularized equilibrium, while the paper's growing step would pass 1/lambda
# (the recipe: bench/experiment/recipes.py, kkt_l2_spec).
KKT_L2_LAMBDA = 1e-10  # lambda unless --l2 gives it (ExperimentSpec.l2 None)
KKT_L2_STATIONARITY = 1e-2  # unless --stationarity is given
KKT_L2_MAX_ITERS = 20_000  # unless max_iters is given: directions converge slowly near equilibrium


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """One experiment family: the paper it follows and every default of its experiments."""

    name: str
    paper: str
    datasets: tuple[str, ...]  # built-in datasets; the first is the default
    default_models: tuple[str, ...]
    default_attacks: tuple[str, ...]
    train: TrainSpec  # the family's training recipe
    on_subspace: bool  # data lie on a subspace P of codimension ell; held-out points of P are attacked

    def default_ell(self, dataset: str, d: int) -> int | None:
        """The codimension of P where the spec gives none: digits keep 10 components, the others d // 4."""
        if not self.on_subspace:
            return None
        return DIGITS_ELL if dataset == "digits" else d - d // 4


KKT = FamilySpec(
    name="kkt",
    paper="Vardi et al. 2022",
    datasets=("sphere",),
    default_models=("vanilla", "robust-construction"),
    # every attack that applies to data off any subspace (pgd-on/-off and subspace-z need one)
    default_attacks=(
        "universal-z",
        "pgd",
        "fmn",
        "boundary-walk",
        "region-walk",
        "fb-fmn",
        "fb-ddn",
        "fb-deepfool",
        "fb-cw",
        "fb-boundary",
        "fb-brendel-bethge",
    ),
    train=TrainSpec(),
    on_subspace=False,
)
SUBSPACE = FamilySpec(
    name="subspace",
    paper="Melamed et al. 2023",
    datasets=("subspace", "digits"),
    default_models=("vanilla", "small-init", "l2"),
    default_attacks=("subspace-z", "pgd", "pgd-off", "pgd-on"),
    train=SUBSPACE_TRAIN,
    on_subspace=True,
)
FAMILIES: dict[str, FamilySpec] = {family.name: family for family in (KKT, SUBSPACE)}


def family_of(name: str) -> FamilySpec:
    """The family called ``name``; SpecError naming the choices otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise field_error("family", f"{name!r} is unknown; choose one of: {', '.join(FAMILIES)}") from None
