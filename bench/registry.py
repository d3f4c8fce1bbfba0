"""Registries: the public names of DESIGN.md mapped to factories.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from marginbench.attacks.base import Attack, AttackUnavailable
from marginbench.attacks.boundary_walk import BoundaryWalk
from marginbench.attacks.closed_form import SubspaceZ, UniversalZ
from marginbench.attacks.fmn import FMN
from marginbench.attacks.foolbox_adapter import FbBoundary, FbBrendelBethge, FbCW, FbDDN, FbDeepFool, FbFMN
from marginbench.attacks.pgd import MinimalPGD
from marginbench.attacks.subspace import SubspaceProjection
from marginbench.bench.spec import FAMILY_MODELS, ExperimentSpec, RunSpec, SpecError
from marginbench.models import datasets
from marginbench.models.construction import construction_radius, robust_construction
from marginbench.models.datasets import Dataset
from marginbench.models.train import NORMALIZED_LR, TrainReport, TrainSpec, train_batch
from marginbench.models.two_layer import TwoLayerNet, gaussian_init, pytorch_default_init

F = TypeVar("F")


class Registry(Generic[F]):
    """Name -> factory, for one kind of thing (dataset, model, attack, preset)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(factory: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> F:
        try:
            return self._factories[name]
        except KeyError:
            raise SpecError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


@dataclass(frozen=True)
class BuiltModel:
    """A network ready to attack, with how it came to be.

    Attributes:
        net: the network, on the run's device.
        train: the training report, or None for a closed-form construction.
        init: the parameters training started from (None for a construction).
        facts: scalars about the model (init scale beta, L2 lambda, Theorem 3.1's c and radius, ...).
    """

    net: TwoLayerNet
    train: TrainReport | None = None
    init: TwoLayerNet | None = None
    facts: Mapping[str, float] = field(default_factory=dict)


DatasetFactory = Callable[[RunSpec], Dataset]
ModelFactory = Callable[[Dataset, RunSpec, bool], BuiltModel]  # (data, run, show progress)
AttackFactory = Callable[[RunSpec, Dataset], Attack]  # the dataset gives e.g. the subspace basis P

DATASETS: Registry[DatasetFactory] = Registry("dataset")
MODELS: Registry[ModelFactory] = Registry("model")
ATTACKS: Registry[AttackFactory] = Registry("attack")


@DATASETS.register("sphere")
def _sphere(run: RunSpec) -> Dataset:
    return datasets.sphere(d=run.d, n=run.n, seed=run.seed)


@DATASETS.register("subspace")
def _subspace(run: RunSpec) -> Dataset:
    return datasets.subspace(d=run.d, ell=run.ell or 0, n=run.n, n_eval=run.n_eval, seed=run.seed, label_rule=run.label_rule)


@DATASETS.register("digits")
def _digits(run: RunSpec) -> Dataset:
    return datasets.digits(ell=run.ell or 0, n=run.n, n_eval=run.n_eval, seed=run.seed)


@dataclass(frozen=True)
class TrainingPlan:
    """A trained model before training: where it starts, how it trains, and its facts (init beta, L2 lambda...)."""

    init: TwoLayerNet
    spec: TrainSpec
    facts: Mapping[str, float] = field(default_factory=dict)


PlanFactory = Callable[[Dataset, RunSpec], TrainingPlan]
# The trained models' recipes; each is registered in MODELS too, as "plan, then train" (``_register_trained``).
TRAINING_PLANS: Registry[PlanFactory] = Registry("trained model")


def train_models(data: Sequence[Dataset], runs: Sequence[RunSpec], progress: bool) -> list[BuiltModel]:
    """The trained models of ``runs`` (one per dataset), trained in one batch (``train_batch``).

    Every run must name a model of TRAINING_PLANS and give the same training spec and network shape; the
    seeds of one model in one experiment do. ValueError otherwise.
    """
    plans = [TRAINING_PLANS.get(run.model)(d, run) for d, run in zip(data, runs, strict=True)]
    if len({plan.spec for plan in plans}) != 1 or len({tuple(plan.init.W.shape) for plan in plans}) != 1:
        raise ValueError(f"runs {', '.join(run.run_id for run in runs)} differ in training spec or shape: they cannot share a batch")
    inits = [plan.init.to(d.X.device) for plan, d in zip(plans, data, strict=True)]
    trained = train_batch(
        inits,
        torch.stack([d.X for d in data]),
        torch.stack([d.y for d in data]),
        plans[0].spec,
        seeds=[run.seed for run in runs],
        progress=progress,
        description=runs[0].run_id if len(runs) == 1 else f"{runs[0].run_id} and {len(runs) - 1} more",
    )
    return [BuiltModel(net=net, train=report, init=init, facts=plan.facts) for (net, report), init, plan in zip(trained, inits, plans, strict=True)]


def _register_trained(name: str) -> Callable[[PlanFactory], PlanFactory]:
    """Register a plan in TRAINING_PLANS and, in MODELS, the model it trains alone."""

    def add(plan: PlanFactory) -> PlanFactory:
        TRAINING_PLANS.register(name)(plan)

        def model(data: Dataset, run: RunSpec, progress: bool) -> BuiltModel:
            (built,) = train_models([data], [run], progress)
            return built

        model.__doc__ = plan.__doc__
        MODELS.register(name)(model)
        return plan

    return add


def _init(data: Dataset, run: RunSpec, *, small: bool) -> tuple[TwoLayerNet, dict[str, float]]:
    """The family's initialization; small-init divides its scale by sqrt(2d) (beta = 1/(d sqrt 2), Cor 6.1)."""
    generator = torch.Generator().manual_seed(run.seed)
    factor = run.init_scale / (math.sqrt(2 * data.d) if small else 1.0)
    if run.family == "kkt":  # Vardi et al.: PyTorch's default init, every tensor scaled by the factor
        return pytorch_default_init(data.d, run.width, generator=generator, scale=factor), {"init_factor": factor}
    beta = factor / math.sqrt(data.d)  # Melamed et al.: w_i ~ N(0, beta^2 I), beta^2 = 1/d for vanilla
    return gaussian_init(data.d, run.width, beta=beta, generator=generator), {"init_beta": beta}


@_register_trained("vanilla")
def _vanilla(data: Dataset, run: RunSpec) -> TrainingPlan:
    """The family's standard init (kkt: PyTorch default; subspace: beta^2 = 1/d), then the family's training."""
    init, facts = _init(data, run, small=False)
    return TrainingPlan(init=init, spec=run.train, facts=facts)


@_register_trained("small-init")
def _small_init(data: Dataset, run: RunSpec) -> TrainingPlan:
    """As vanilla with the init divided by sqrt(2d): beta = 1/(d sqrt 2) in the subspace family (Cor 6.1)."""
    init, facts = _init(data, run, small=True)
    return TrainingPlan(init=init, spec=run.train, facts=facts)


# The kkt family's l2 model (not in Vardi et al.): L(theta) + lambda/2 ||theta||^2 over all of W, b, v. Its
# stationary points satisfy problem (2)'s KKT stationarity exactly (multipliers -loss'(q_i)/lambda), and
# complementary slackness up to factors e^{-(q_i - q_min)}; they approach KKT points as lambda -> 0 (Wei et
# al. 2019, "Regularization matters"). Trained with the normalized schedule, whose step lr/L settles near
# lr/(lambda/(2 gamma)) at the regularized equilibrium, while the paper's growing step would pass 1/lambda.
KKT_L2_LAMBDA = 1e-10
KKT_L2_STATIONARITY = 1e-2
KKT_L2_MAX_ITERS = 20_000  # unless --max-iters says otherwise: directions converge slowly near equilibrium


def _kkt_l2_spec(train: TrainSpec, lam: float) -> TrainSpec:
    """The user's kkt spec turned into the regularized recipe above (normalized schedule, stop when stationary)."""
    recipe = dict(l2=lam, target_loss=None, target_margin=None, stationarity=train.stationarity or KKT_L2_STATIONARITY)
    if train.schedule == "paper":
        recipe.update(schedule="normalized", lr=NORMALIZED_LR, lr_growth=1.0)
    if train.max_iters == TrainSpec().max_iters:
        recipe.update(max_iters=KKT_L2_MAX_ITERS)
    return dataclasses.replace(train, **recipe)


@_register_trained("l2")
def _l2(data: Dataset, run: RunSpec) -> TrainingPlan:
    """Vanilla init, then L2-regularized training.

    subspace: exactly T = max_iters steps of the loss + lambda/2 ||W||^2 (Thm 6.2); unless --l2 gives lambda,
    (1 - lr lambda)^T = 1/sqrt(2d) (Corollary 6.2). kkt: see KKT_L2_LAMBDA above.
    """
    init, facts = _init(data, run, small=False)
    if run.family == "kkt":
        lam = run.l2 if run.l2 is not None else KKT_L2_LAMBDA
        return TrainingPlan(init=init, spec=_kkt_l2_spec(run.train, lam), facts={**facts, "l2_lambda": lam})
    T, lr = run.train.max_iters, run.train.lr
    lam = run.l2 if run.l2 is not None else (1.0 - (2.0 * data.d) ** (-0.5 / max(T, 1))) / lr
    spec = dataclasses.replace(run.train, l2=lam, target_loss=None, target_margin=None)
    return TrainingPlan(init=init, spec=spec, facts={**facts, "l2_lambda": lam})


@MODELS.register("robust-construction")
def _robust_construction(data: Dataset, run: RunSpec, progress: bool) -> BuiltModel:
    """Theorem 3.1's network (width n, one neuron per example); --width does not apply to it."""
    net, c = robust_construction(data.X, data.y)
    return BuiltModel(net=net, facts={"construction_c": c, "construction_radius": construction_radius(c, data.d)})


@ATTACKS.register("universal-z")
def _universal_z(run: RunSpec, data: Dataset) -> Attack:
    return UniversalZ()


# Issue 4: the attack suite (Thm 5.1's z, minimal-norm PGD on/off P, FMN, boundary walk, Foolbox L2).
def _subspace_basis(data: Dataset, attack: str) -> torch.Tensor:
    """The dataset's P_basis, or AttackUnavailable (recorded as such by the runner) where it has none."""
    if data.P_basis is None:
        raise AttackUnavailable(f"does not apply to dataset {data.name!r}: its points do not lie on a subspace P ({attack} needs one)")
    return data.P_basis


@ATTACKS.register("subspace-z")
def _subspace_z(run: RunSpec, data: Dataset) -> Attack:
    return SubspaceZ(basis=_subspace_basis(data, "subspace-z"))


@ATTACKS.register("pgd")
def _pgd(run: RunSpec, data: Dataset) -> Attack:
    return MinimalPGD(seed=run.seed)


@ATTACKS.register("pgd-off")
def _pgd_off(run: RunSpec, data: Dataset) -> Attack:
    return MinimalPGD(projection=SubspaceProjection(_subspace_basis(data, "pgd-off"), "P-perp"), seed=run.seed)


@ATTACKS.register("pgd-on")
def _pgd_on(run: RunSpec, data: Dataset) -> Attack:
    return MinimalPGD(projection=SubspaceProjection(_subspace_basis(data, "pgd-on"), "P"), seed=run.seed)


@ATTACKS.register("fmn")
def _fmn(run: RunSpec, data: Dataset) -> Attack:
    return FMN()


@ATTACKS.register("boundary-walk")
def _boundary_walk(run: RunSpec, data: Dataset) -> Attack:
    return BoundaryWalk()


@ATTACKS.register("fb-fmn")
def _fb_fmn(run: RunSpec, data: Dataset) -> Attack:
    return FbFMN()


@ATTACKS.register("fb-ddn")
def _fb_ddn(run: RunSpec, data: Dataset) -> Attack:
    return FbDDN()


@ATTACKS.register("fb-deepfool")
def _fb_deepfool(run: RunSpec, data: Dataset) -> Attack:
    return FbDeepFool()


@ATTACKS.register("fb-cw")
def _fb_cw(run: RunSpec, data: Dataset) -> Attack:
    return FbCW()


@ATTACKS.register("fb-boundary")
def _fb_boundary(run: RunSpec, data: Dataset) -> Attack:
    return FbBoundary()


@ATTACKS.register("fb-brendel-bethge")
def _fb_brendel_bethge(run: RunSpec, data: Dataset) -> Attack:
    return FbBrendelBethge()


def check_names(spec: ExperimentSpec) -> None:
    """Raise SpecError for any dataset, model or attack name that is not registered or not of the family."""
    DATASETS.get(spec.dataset_name)
    for name in spec.model_names:
        MODELS.get(name)
        if name not in FAMILY_MODELS[spec.family] and any(name in names for names in FAMILY_MODELS.values()):
            raise SpecError(f"model {name!r} is not part of the {spec.family} family; choose from: {', '.join(FAMILY_MODELS[spec.family])}")
    for name in spec.attack_names:
        ATTACKS.get(name)
