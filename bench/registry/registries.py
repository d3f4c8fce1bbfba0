"""Registries: the public names of DESIGN.md mapped to the factories of ``marginbench.bench.experiment.recipes``.

A registry holds factories, never instances; registering a name twice raises; ``names()`` is sorted, and
the CLI's choices and the tests' parametrization both come from it. Code outside the package adds names with
``MODELS.register("my-model")(factory)`` and the like, or as a plugin (``marginbench.bench.registry.plugins``); each
name remembers its source (``marginbench.bench.registry.provenance``). A model's or an attack's registration
here is the only place that names it to decide anything: what it is or needs is its entry
(``marginbench.bench.registry.entries``), which the rest of the harness asks.
"""

from __future__ import annotations

from marginbench.attacks.boundary_walk import BoundaryWalk
from marginbench.attacks.closed_form import SubspaceZ, UniversalZ
from marginbench.attacks.fmn import FMN
from marginbench.attacks.foolbox_adapter import FbBoundary, FbBrendelBethge, FbCW, FbDDN, FbDeepFool, FbFMN
from marginbench.attacks.pgd import MinimalPGD
from marginbench.attacks.region_walk import RegionWalk
from marginbench.bench.errors import SpecError
from marginbench.bench.experiment import recipes
from marginbench.bench.experiment.families import KKT, SUBSPACE
from marginbench.bench.experiment.recipes import DatasetFactory, PlanFactory
from marginbench.bench.experiment.spec import ExperimentSpec
from marginbench.bench.registry.entries import AttackEntry, AttackRegistry, ModelEntry, ModelRegistry
from marginbench.bench.registry.registry import Registry

__all__ = ["ATTACKS", "DATASETS", "MODELS", "TRAINING_PLANS", "AttackEntry", "ModelEntry", "Registry", "check_names"]

DATASETS: Registry[DatasetFactory] = Registry(
    "dataset", {"sphere": recipes.sphere_data, "subspace": recipes.subspace_data, "digits": recipes.digits_data}
)
# The trained models' recipes: a model of TRAINING_PLANS can be trained in one batch with other seeds.
TRAINING_PLANS: Registry[PlanFactory] = Registry(
    "trained model", {"vanilla": recipes.vanilla_plan, "small-init": recipes.small_init_plan, "l2": recipes.l2_plan}
)
BOTH = (KKT.name, SUBSPACE.name)
MODELS = ModelRegistry(
    {
        "vanilla": ModelEntry(factory=recipes.trained(TRAINING_PLANS.get("vanilla")), families=BOTH),
        "small-init": ModelEntry(factory=recipes.trained(TRAINING_PLANS.get("small-init")), families=BOTH),
        # trains to a regularized rest point (kkt) or for exactly max_iters steps (subspace), not along the recipe
        "l2": ModelEntry(
            factory=recipes.trained(TRAINING_PLANS.get("l2")),
            families=BOTH,
            follows_recipe=False,
            training_steps=recipes.l2_steps,
            spec_problem=recipes.l2_spec_problem,
        ),
        "robust-construction": ModelEntry(factory=recipes.robust_construction_model, trained=False, families=(KKT.name,), follows_recipe=False),
        # Melamed et al. Figure 4's own net: no closed form, so only the autograd attacks (the pgd family)
        "three-layer": ModelEntry(
            factory=recipes.three_layer_model,
            closed_form=False,
            families=(SUBSPACE.name,),
            follows_recipe=False,
            training_steps=recipes.three_layer_steps,
            step_gflop=recipes.three_layer_step_gflop,
        ),
    }
)
FOOLBOX = "foolbox"  # the library that the fb-* attacks wrap (foolbox_adapter)
# pgd and its projections need only N(x) and autograd's input gradient: they take nets without a closed form.
ATTACKS = AttackRegistry(
    {
        "universal-z": AttackEntry(factory=recipes.plain(UniversalZ)),
        "subspace-z": AttackEntry(factory=recipes.on_basis(SubspaceZ, "subspace-z"), needs_subspace=True),
        "pgd": AttackEntry(factory=recipes.seeded(MinimalPGD), needs_closed_form=False),
        "pgd-off": AttackEntry(factory=recipes.projected_pgd("P-perp", "pgd-off"), needs_closed_form=False, needs_subspace=True),
        "pgd-on": AttackEntry(factory=recipes.projected_pgd("P", "pgd-on"), needs_closed_form=False, needs_subspace=True),
        "fmn": AttackEntry(factory=recipes.plain(FMN)),
        "boundary-walk": AttackEntry(factory=recipes.seeded(BoundaryWalk)),
        "region-walk": AttackEntry(factory=recipes.seeded(RegionWalk)),
        "exact": AttackEntry(factory=recipes.exact, proves_optimum=True),
        "fb-fmn": AttackEntry(factory=recipes.seeded(FbFMN), library=FOOLBOX),
        "fb-ddn": AttackEntry(factory=recipes.seeded(FbDDN), library=FOOLBOX),
        "fb-deepfool": AttackEntry(factory=recipes.seeded(FbDeepFool), library=FOOLBOX),
        "fb-cw": AttackEntry(factory=recipes.seeded(FbCW), library=FOOLBOX),
        "fb-boundary": AttackEntry(factory=recipes.seeded(FbBoundary), library=FOOLBOX),
        "fb-brendel-bethge": AttackEntry(factory=recipes.seeded(FbBrendelBethge), library=FOOLBOX),
    }
)


def check_names(spec: ExperimentSpec) -> None:
    """Raise SpecError for any dataset, model or attack name that is not registered or not of the family."""
    DATASETS.get(spec.dataset_name)
    family = spec.family_spec
    for name in spec.model_names:
        entry = MODELS.entry(name)
        if not entry.in_family(family.name):
            raise SpecError(f"model {name!r} is not part of the {family.name} family; choose from: {', '.join(MODELS.in_family(family.name))}")
        problem = entry.spec_problem(spec) if entry.spec_problem is not None else None
        if problem is not None:
            raise problem
    for name in spec.attack_names:
        ATTACKS.get(name)
