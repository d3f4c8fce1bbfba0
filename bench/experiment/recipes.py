"""Recipes: how each public name becomes, for one run, a dataset, a network or an attack.

The papers' constants live here, next to the recipe that uses them; ``marginbench.bench.registry.registries`` maps the
names of DESIGN.md to these factories. A factory receives the run's ``RunContext`` (its spec, the torch device
resolved once for the sweep, whether to show progress) and never reads a device off a tensor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from marginbench.attacks.base import Attack, AttackUnavailable
from marginbench.attacks.pgd import MinimalPGD
from marginbench.attacks.subspace import Onto, SubspaceProjection
from marginbench.bench.errors import SpecError, field_error
from marginbench.bench.experiment.families import KKT, KKT_L2_LAMBDA, KKT_L2_MAX_ITERS, KKT_L2_STATIONARITY
from marginbench.bench.experiment.spec import ExperimentSpec, RunSpec
from marginbench.models import datasets
from marginbench.models.construction import construction_radius, robust_construction
from marginbench.models.datasets import Dataset
from marginbench.models.three_layer import ThreeLayerNet, three_layer_init, train_three_layer
from marginbench.models.train import TrainReport, TrainSpec, normalized_schedule, train_batch
from marginbench.models.two_layer import TwoLayerNet, gaussian_init, pytorch_default_init


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """What every factory of a run receives besides the data."""

    run: RunSpec
    device: torch.device  # resolved once for the sweep
    progress: bool = False  # tqdm bars while training

    @classmethod
    def of(cls, run: RunSpec, *, progress: bool = False) -> RunContext:
        """The context of ``run`` on the device it names (for calling a factory by hand; a sweep resolves and
        checks the device once for all its runs)."""
        return cls(run=run, device=torch.device(run.device), progress=progress)


@dataclass(frozen=True)
class BuiltModel:
    """A network ready to attack, with how it came to be.

    Attributes:
        net: the network, on the run's device.
        train: the training report, or None for a closed-form construction.
        init: the parameters training started from (None for a construction).
        facts: scalars about the model (init scale beta, L2 lambda, Theorem 3.1's c and radius, ...).
    """

    net: TwoLayerNet | ThreeLayerNet
    train: TrainReport | None = None
    init: TwoLayerNet | ThreeLayerNet | None = None
    facts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingPlan:
    """A trained model before training: where it starts, how it trains, and its facts (init beta, L2 lambda...)."""

    init: TwoLayerNet
    spec: TrainSpec
    facts: Mapping[str, float] = field(default_factory=dict)


DatasetFactory = Callable[[RunSpec], Dataset]  # on the CPU; the runner moves it to the run's device
ModelFactory = Callable[[Dataset, RunContext], BuiltModel]
PlanFactory = Callable[[Dataset, RunSpec], TrainingPlan]
AttackFactory = Callable[[Dataset, RunContext], Attack]  # the dataset gives e.g. the subspace basis P


# Datasets ------------------------------------------------------------------------------------------------


def sphere_data(run: RunSpec) -> Dataset:
    return datasets.sphere(d=run.d, n=run.n, seed=run.seed)


def subspace_data(run: RunSpec) -> Dataset:
    return datasets.subspace(d=run.d, ell=run.ell or 0, n=run.n, n_eval=run.n_eval, seed=run.seed, label_rule=run.label_rule)


def digits_data(run: RunSpec) -> Dataset:
    return datasets.digits(ell=run.ell or 0, n=run.n, n_eval=run.n_eval, seed=run.seed)


# Trained models ------------------------------------------------------------------------------------------


def family_init(data: Dataset, run: RunSpec, *, small: bool) -> tuple[TwoLayerNet, dict[str, float]]:
    """The family's initialization; small-init divides its scale by sqrt(2d) (beta = 1/(d sqrt 2), Cor 6.1)."""
    generator = torch.Generator().manual_seed(run.seed)
    factor = run.init_scale / (math.sqrt(2 * data.d) if small else 1.0)
    if not run.family_spec.on_subspace:  # Vardi et al.: PyTorch's default init, every tensor scaled by the factor
        return pytorch_default_init(data.d, run.width, generator=generator, scale=factor), {"init_factor": factor}
    beta = factor / math.sqrt(data.d)  # Melamed et al.: w_i ~ N(0, beta^2 I), beta^2 = 1/d for vanilla
    return gaussian_init(data.d, run.width, beta=beta, generator=generator), {"init_beta": beta}


def vanilla_plan(data: Dataset, run: RunSpec) -> TrainingPlan:
    """The family's standard init (kkt: PyTorch default; subspace: beta^2 = 1/d), then the family's training."""
    init, facts = family_init(data, run, small=False)
    return TrainingPlan(init=init, spec=run.train, facts=facts)


def small_init_plan(data: Dataset, run: RunSpec) -> TrainingPlan:
    """As vanilla with the init divided by sqrt(2d): beta = 1/(d sqrt 2) in the subspace family (Cor 6.1)."""
    init, facts = family_init(data, run, small=True)
    return TrainingPlan(init=init, spec=run.train, facts=facts)


# The kkt family's l2 model (not in Vardi et al.): its defaults KKT_L2_LAMBDA, KKT_L2_STATIONARITY and
# KKT_L2_MAX_ITERS, and why, are in bench/experiment/families.py.


def kkt_l2_spec(train: TrainSpec, lam: float) -> TrainSpec:
    """The user's kkt spec turned into the regularized recipe above (normalized schedule, stop when stationary)."""
    if train.schedule != "normalized":  # the paper's step grows past 1/lambda; arc's steps do not shrink to rest
        train = normalized_schedule(train)
    max_iters = train.max_iters if train.max_iters is not None else KKT_L2_MAX_ITERS
    stationarity = train.stationarity or KKT_L2_STATIONARITY
    return dataclasses.replace(train, l2=lam, target_loss=None, target_margin=None, stationarity=stationarity, max_iters=max_iters)


def l2_plan(data: Dataset, run: RunSpec) -> TrainingPlan:
    """Vanilla init, then L2-regularized training.

    subspace: exactly T = max_iters steps of the loss + lambda/2 ||W||^2 (Thm 6.2); unless --l2 gives lambda,
    (1 - lr lambda)^T = 1/sqrt(2d) (Corollary 6.2). kkt: see KKT_L2_LAMBDA above.
    """
    init, facts = family_init(data, run, small=False)
    if run.family_spec is KKT:
        lam = run.l2 if run.l2 is not None else KKT_L2_LAMBDA
        return TrainingPlan(init=init, spec=kkt_l2_spec(run.train, lam), facts={**facts, "l2_lambda": lam})
    T, lr = run.train.iteration_cap, run.train.lr
    lam = run.l2 if run.l2 is not None else (1.0 - (2.0 * data.d) ** (-0.5 / max(T, 1))) / lr
    spec = dataclasses.replace(run.train, l2=lam, target_loss=None, target_margin=None)
    return TrainingPlan(init=init, spec=spec, facts={**facts, "l2_lambda": lam})


def l2_spec_problem(spec: ExperimentSpec) -> SpecError | None:
    """The kkt l2 model's check of its experiment: lambda = 0 leaves it no regularized rest point to stop at."""
    if spec.family_spec is KKT and spec.l2 == 0:
        return field_error("l2", f"0 leaves the kkt l2 model nothing to be stationary for: give lambda > 0 (default {KKT_L2_LAMBDA:g})")
    return None


def l2_steps(run: RunSpec) -> float:
    """The l2 model's training steps: to a rest point (kkt, at most max_iters or KKT_L2_MAX_ITERS) or exactly
    max_iters (subspace), as ``l2_plan`` sets them."""
    return run.train.iteration_cap if run.family_spec.on_subspace else (run.train.max_iters or KKT_L2_MAX_ITERS)


def train_plans(data: Sequence[Dataset], runs: Sequence[RunSpec], plans: Sequence[TrainingPlan], context: RunContext) -> list[BuiltModel]:
    """The nets of ``plans`` (one per run and dataset, all on ``context.device``), trained in one batch.

    The plans must share their training spec and network shape, as the seeds of one model in one experiment
    do; ValueError otherwise.
    """
    if len({plan.spec for plan in plans}) != 1 or len({tuple(plan.init.W.shape) for plan in plans}) != 1:
        raise ValueError(f"runs {', '.join(run.run_id for run in runs)} differ in training spec or shape: they cannot share a batch")
    inits = [plan.init.to(context.device) for plan in plans]
    trained = train_batch(
        inits,
        torch.stack([d.X for d in data]),
        torch.stack([d.y for d in data]),
        plans[0].spec,
        seeds=[run.seed for run in runs],
        progress=context.progress,
        description=runs[0].run_id if len(runs) == 1 else f"{runs[0].run_id} and {len(runs) - 1} more",
    )
    return [BuiltModel(net=net, train=report, init=init, facts=plan.facts) for (net, report), init, plan in zip(trained, inits, plans, strict=True)]


def trained(plan: PlanFactory) -> ModelFactory:
    """The model that ``plan`` trains alone."""

    def model(data: Dataset, context: RunContext) -> BuiltModel:
        (built,) = train_plans([data], [context.run], [plan(data, context.run)], context)
        return built

    model.__doc__ = plan.__doc__
    return model


def three_layer_model(data: Dataset, context: RunContext) -> BuiltModel:
    """Melamed et al. Figure 4's net: two hidden ReLU layers of --width, PyTorch's init with the first layer's
    multiplied by --init-scale (1 / the paper's divisor), every layer trained with the family's loss, step and
    stopping rule (subspace family: logistic loss, lr 0.05, until every training margin is >= 1)."""
    run = context.run
    init = three_layer_init(data.d, run.width, generator=torch.Generator().manual_seed(run.seed), first_scale=run.init_scale)
    init = init.to(context.device)
    net, report = train_three_layer(init, data.X, data.y, dataclasses.replace(run.train, layers="all"))
    return BuiltModel(net=net, train=report, init=init, facts={"init_factor": run.init_scale})


THREE_LAYER_STEPS = 300  # the three-layer net, mean loss, step 0.5, to margin 1: 254 steps (d = 784, init / 1); more at / 32


def three_layer_steps(run: RunSpec) -> float:
    """The three-layer net's estimated training steps (THREE_LAYER_STEPS, at most the iteration cap)."""
    return min(THREE_LAYER_STEPS, run.train.iteration_cap)


def three_layer_step_gflop(run: RunSpec) -> float:
    """GFLOPs of one of its training steps: the second hidden layer's (width, width) products, and autograd's overhead."""
    return 1.5 * 4e-9 * run.n * (run.d + run.width) * run.width


def robust_construction_model(data: Dataset, context: RunContext) -> BuiltModel:
    """Theorem 3.1's network (width n, one neuron per example); --width does not apply to it."""
    net, c = robust_construction(data.X, data.y)
    return BuiltModel(net=net.to(context.device), facts={"construction_c": c, "construction_radius": construction_radius(c, data.d)})


# Attacks -------------------------------------------------------------------------------------------------


def no_subspace(data: Dataset, attack: str) -> str:
    """Why ``attack``, which needs a subspace P, does not apply to ``data`` (which has none)."""
    return f"does not apply to dataset {data.name!r}: its points do not lie on a subspace P ({attack} needs one)"


def subspace_basis(data: Dataset, attack: str) -> torch.Tensor:
    """The dataset's P_basis, or AttackUnavailable (recorded as such by the runner) where it has none."""
    if data.P_basis is None:
        raise AttackUnavailable(no_subspace(data, attack))
    return data.P_basis


def plain(attack: Callable[[], Attack]) -> AttackFactory:
    """An attack with no randomness and no data of its own: built with its defaults."""
    return lambda data, context: attack()


def seeded(attack: Callable[..., Attack]) -> AttackFactory:
    """An attack that draws random numbers: seeded with the run's seed."""
    return lambda data, context: attack(seed=context.run.seed)


def exact(data: Dataset, context: RunContext) -> Attack:
    """The mixed-integer QP attack (SCIP), with the run's time limit per example and seed."""
    from marginbench.attacks.exact import Exact

    return Exact(time_limit=context.run.exact_seconds, seed=context.run.seed)


def on_basis(attack: Callable[..., Attack], name: str) -> AttackFactory:
    """An attack that needs the data's subspace P (``basis=P``); unavailable where the data have none."""
    return lambda data, context: attack(basis=subspace_basis(data, name))


def projected_pgd(onto: Onto, name: str) -> AttackFactory:
    """Minimal-norm PGD whose steps are projected onto P or P-perp; seeded with the run's seed."""
    return lambda data, context: MinimalPGD(projection=SubspaceProjection(subspace_basis(data, name), onto), seed=context.run.seed)
