"""Named experiments: ``marginbench run --preset NAME [--scale small|medium|full]``.

A preset is a sweep, a tuple of ExperimentSpecs written into one result directory. The papers' presets come
in three scales: ``small`` is small d and widths (Vardi et al.: d = 16 ... 64; Melamed et al.: a sphere in
R^196 and the digits); ``medium`` is the papers' own width and d = 100 ... 300 (Melamed et al.: their d = 784),
trained with the arc schedule in precision auto (certified against the paper's schedule by ``--twin paper``),
sized for one CPU; ``full`` is the paper's grid (d up to 1000) on the same recipe, for one CPU with bf16 matrix
units or a GPU (``--device cuda``). ``marginbench list`` prints each one's size and estimated time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from marginbench.bench.experiment.families import KKT, SUBSPACE
from marginbench.bench.experiment.spec import ExperimentSpec, Sweep
from marginbench.bench.registry.registries import Registry
from marginbench.models.train import TrainSpec
from marginbench.models.train_spec import ARC_LATE_STEP, SUBSPACE_TRAIN, arc_schedule

Scale = Literal["small", "medium", "full"]
SCALES: tuple[str, ...] = ("small", "medium", "full")
DEFAULT_SCALE: Scale = "small"  # where --scale is not given
DEFAULT_PRESET = "default"  # where --preset is not given

# The medium scale's training: the arc schedule (a few hundred to a few thousand steps instead of ~72,000),
# precision auto (the large products in bf16 where the hardware has bf16 matrix units, float32 elsewhere; the
# manifest records which), stopped where the paper stops (loss 1e-30). On a Xeon with AMX, d = 300, n = 5196,
# width 1000: a bf16 step ~5x faster than float32's; bf16 lands on float64's net within 0.5% in normalized
# margin (d = 16 ... 64, 3 seeds; float32 within 0.2%), and --twin paper certifies each run.
FAST_TRAIN = arc_schedule(TrainSpec(), precision="auto")


def fast_train(n: int, d: int) -> TrainSpec:
    """FAST_TRAIN, with the shorter late step ARC_LATE_STEP where n > 2d: with many examples per dimension the
    late phase needs it to land within 1% of the paper's net (models/train_spec.py has the measurements)."""
    return dataclasses.replace(FAST_TRAIN, late_lr=ARC_LATE_STEP) if n > 2 * d else FAST_TRAIN


@dataclass(frozen=True)
class Preset:
    """A named sweep at each scale; ``figures``: it reproduces a paper's figure, which `marginbench run` draws
    into DIR/figures when the sweep ends."""

    sweep: Callable[[Scale], Sweep]
    figures: bool = False

    @property
    def summary(self) -> str:
        """The first line of the sweep's docstring."""
        return (self.sweep.__doc__ or "").strip().splitlines()[0]


PRESETS: Registry[Preset] = Registry("preset")


def preset(name: str, *, figures: bool = False) -> Callable[[Callable[[Scale], Sweep]], Callable[[Scale], Sweep]]:
    """Register a sweep function as preset ``name``."""

    def add(sweep: Callable[[Scale], Sweep]) -> Callable[[Scale], Sweep]:
        PRESETS.register(name)(Preset(sweep, figures=figures))
        return sweep

    return add


@preset(DEFAULT_PRESET)
def default(scale: Scale) -> Sweep:
    """Every kkt model x attack on d = 64, n = d, width 256, seed 0 (`marginbench run` with no options)."""
    return (ExperimentSpec(family="kkt", d=64, alpha=1.0, width=256, seeds=(0,)),)


@preset("smoke")
def smoke(scale: Scale) -> Sweep:
    """A quick check of the kkt pipeline: d = 16, n = d, width 32, seeds 0 and 1, universal-z."""
    return (ExperimentSpec(family="kkt", d=16, alpha=1.0, width=32, attacks=("universal-z",), seeds=(0, 1)),)


PAPER_ALPHAS = (0.5, 0.8, 1.0, 1.2, 1.5)  # Vardi et al. Section 6: n = d^alpha
PAPER_SEEDS = (0, 1, 2, 3, 4)
MEDIUM_DIMS = (100, 200, 300)


def _medium(d: int, alpha: float, scale: Scale) -> TrainSpec | None:
    """The medium and full scales' training for n = d^alpha (the arc schedule in precision auto, to loss 1e-30
    like the paper; ``--twin paper`` certifies it); None (the family's recipe, the paper's schedule) at small."""
    return fast_train(round(d**alpha), d) if scale in ("medium", "full") else None


def _fig1a(scale: Scale) -> Sweep:
    if scale == "full":  # Vardi et al. Section 6: d in {100, ..., 1000}, n = d^alpha, width 1000, 5 seeds
        dims, alphas, width, seeds = tuple(range(100, 1001, 100)), PAPER_ALPHAS, 1000, PAPER_SEEDS
    elif scale == "medium":
        dims, alphas, width, seeds = MEDIUM_DIMS, PAPER_ALPHAS, 1000, PAPER_SEEDS
    else:
        dims, alphas, width, seeds = (16, 32, 64), (0.5, 1.0, 1.2), 128, (0, 1)
    return tuple(
        ExperimentSpec(family="kkt", d=d, alpha=a, width=width, models=("vanilla",), attacks=("universal-z",), seeds=seeds, train=_medium(d, a, scale))
        for a in alphas
        for d in dims
    )


@preset("paper-fig1a", figures=True)
def paper_fig1a(scale: Scale) -> Sweep:
    """Vardi et al. Figure 1a: universal-z's common c vs d for n = d^alpha (width 1000, 5 seeds at full scale)."""
    return _fig1a(scale)


@preset("paper-fig2", figures=True)
def paper_fig2(scale: Scale) -> Sweep:
    """Vardi et al. Figure 2: the fraction of examples on the margin, over Figure 1a's grid."""
    return _fig1a(scale)


PAPER_WIDTHS = (100, 500, 1000, 2000, 4000, 8000)  # Vardi et al. Figure 1b


@preset("paper-twin")
def paper_twin(scale: Scale) -> Sweep:
    """The arc schedule certified: d = 100, every alpha, width 1000, seed 0, each net also on the paper's schedule.

    The medium scale's training (arc, precision auto, the late step where n > 2d), with --twin paper: every net trained again with Vardi
    et al.'s schedule in float64 and compared (small: d = 16, width 128; full: d = 200 and 300 at alpha = 1.5, the largest n/d,
    where the late step matters most; at d = 300 the summed loss's steps diverge, so that twin is the schedule on the mean loss,
    in float32: ~82,000 steps at n = 5,196, which float64 could not finish within a session on a 2-core CPU).
    """
    if scale == "full":
        cells = [(200, 1.5, "paper", "float64"), (300, 1.5, "paper-mean", "float32")]
        width = 1000
    else:
        d, width = (16, 128) if scale == "small" else (100, 1000)
        cells = [(d, a, "paper", "float64") for a in PAPER_ALPHAS]
    return tuple(
        ExperimentSpec(
            family="kkt",
            d=d,
            alpha=a,
            width=width,
            models=("vanilla",),
            attacks=("universal-z",),
            seeds=(0,),
            train=_medium(d, a, "medium"),
            twin=twin,
            twin_precision=precision,
        )
        for d, a, twin, precision in cells
    )


@preset("paper-fig1b", figures=True)
def paper_fig1b(scale: Scale) -> Sweep:
    """Vardi et al. Figure 1b: universal-z's common c vs d for n = d at widths 100 ... 8000."""
    train = FAST_TRAIN if scale in ("medium", "full") else None
    if scale == "full":
        dims, widths, seeds = tuple(range(100, 1001, 100)), PAPER_WIDTHS, PAPER_SEEDS
    elif scale == "medium":
        dims, widths, seeds = MEDIUM_DIMS, PAPER_WIDTHS, PAPER_SEEDS
    else:
        dims, widths, seeds = (16, 32, 64), (32, 128, 512), (0, 1)
    return tuple(
        ExperimentSpec(family="kkt", d=d, alpha=1.0, width=w, models=("vanilla",), attacks=("universal-z",), seeds=seeds, train=train)
        for w in widths
        for d in dims
    )


FIG4_FACTORS = (1, 2, 4, 8, 16, 32)  # Melamed et al. Figure 4's x-axis
# The paper's own Figure 4 net (models/three_layer.py): every layer trained on the mean logistic loss, step 0.5
# (0.05, the two-layer recipe's step, on the mean needs thousands of steps), to margin 1 like the two-layer nets.
THREE_LAYER_TRAIN = dataclasses.replace(SUBSPACE_TRAIN, lr=0.5, layers="all")
MEDIUM_THREE_LAYER = dict(factors=(1, 4, 16, 32), seeds=(0,))  # 6-28 s a run: the sweep takes 6 min; there is room for more


@preset("melamed-fig4", figures=True)
def melamed_fig4(scale: Scale) -> Sweep:
    """Melamed et al. Figure 4: attack norms on, off and across the data subspace vs the init scale divisor.

    (a) a (d - ell)-dimensional sphere inside R^d (full: 28 inside 784); (b) the digits, projected on their
    top principal components (full: 32 of 64; the paper: MNIST on 32). The first layer's init is divided by
    each factor; attacks pgd-on, pgd-off and pgd (no projection). Two nets: the two-layer vanilla net of the
    theorems (only W trained) and the paper's own three-layer net (every layer trained).
    """
    three_layer_train, three_factors, three_seeds = THREE_LAYER_TRAIN, FIG4_FACTORS, (0, 1, 2)
    if scale == "full":
        d, ell, n, n_eval, width, factors, seeds, digits_ell = 784, 756, 1000, 200, 1000, FIG4_FACTORS, (0, 1, 2), 32
    elif scale == "medium":  # the full scale's settings; the two-layer nets at every divisor and seed (~10 s a run)
        d, ell, n, n_eval, width, factors, seeds, digits_ell = 784, 756, 1000, 200, 1000, FIG4_FACTORS, (0, 1, 2), 32
        three_layer_train = dataclasses.replace(THREE_LAYER_TRAIN, precision="float32")
        three_factors, three_seeds = MEDIUM_THREE_LAYER["factors"], MEDIUM_THREE_LAYER["seeds"]
    else:
        d, ell, n, n_eval, width, factors, seeds, digits_ell = 196, 189, 100, 50, 100, (1, 4, 16), (0,), 48
        three_factors, three_seeds = factors, seeds
    attacks = ("pgd-on", "pgd-off", "pgd")
    digits = dict(d=64, ell=digits_ell, n=n if scale != "small" else 300, n_eval=n_eval if scale != "small" else 100)

    def part(dataset: str, size: dict, model: str, factors: tuple[int, ...], seeds: tuple[int, ...], train: TrainSpec | None) -> Sweep:
        return tuple(
            ExperimentSpec(
                family="subspace", dataset=dataset, **size, width=width, init_scale=1.0 / f, models=(model,), attacks=attacks, seeds=seeds, train=train
            )
            for f in factors
        )

    sphere = dict(d=d, ell=ell, n=n, n_eval=n_eval)
    return (
        part("subspace", sphere, "vanilla", factors, seeds, None)
        + part("digits", digits, "vanilla", factors, seeds, None)
        + part("subspace", sphere, "three-layer", three_factors, three_seeds, three_layer_train)
        + part("digits", digits, "three-layer", three_factors, three_seeds, three_layer_train)
    )


@preset("melamed-small")
def melamed_small(scale: Scale) -> Sweep:
    """The subspace family's three models on one setting (d = 128, ell = 112, width 64): the theorems' checks."""
    if scale == "full":
        return (ExperimentSpec(family="subspace", dataset="subspace", d=784, ell=756, n=1000, n_eval=200, width=1000, seeds=(0, 1, 2)),)
    return (ExperimentSpec(family="subspace", dataset="subspace", d=128, ell=112, n=50, n_eval=50, width=64, seeds=(0,)),)


@preset("baseline")
def baseline(scale: Scale) -> Sweep:
    """The regression run behind results/baseline.json: d = 8, n = d, width 16, seeds 0 and 1, the native attacks.

    A faster schedule than the paper's (lr 1e-2, x1.2 every 10 iterations) still trains to loss < 1e-30.
    """
    fast = TrainSpec(lr=1e-2, lr_growth=1.2, growth_every=10)
    attacks = ("universal-z", "pgd", "fmn", "boundary-walk", "region-walk")  # the native attacks: deterministic and quick
    return (ExperimentSpec(family="kkt", d=8, alpha=1.0, width=16, models=("vanilla", "robust-construction"), attacks=attacks, seeds=(0, 1), train=fast),)


# Attacks that apply to every two-layer net but are in no family's defaults (slower: a local and an exact search).
TWO_LAYER_EXTRA_ATTACKS = ("region-walk", "exact")
ZOO_EXACT_SECONDS = 2.0  # exact's time limit per example in the zoo: a certified lower bound where SCIP runs out


@preset("zoo")
def zoo(scale: Scale) -> Sweep:
    """The model zoo behind results/zoo: frozen nets of both families with every built-in attack.

    The default preset's kkt nets (d = 64, vanilla and robust-construction), the digits (vanilla, small-init)
    and a d = 784 subspace net (ell = 756) at init scales 1 and 1/4; each attacked by its family's default
    attacks, region-walk and exact (2 s a point). Sizes are kept small so the directory can be committed
    with its runs (a few MB): `marginbench attack` benchmarks new attacks on it without training.
    """
    kkt_attacks = tuple(dict.fromkeys(KKT.default_attacks + TWO_LAYER_EXTRA_ATTACKS))  # region-walk is a kkt default too
    subspace_attacks = tuple(dict.fromkeys(SUBSPACE.default_attacks + TWO_LAYER_EXTRA_ATTACKS))
    common = dict(family="subspace", width=100, attacks=subspace_attacks, seeds=(0,), exact_seconds=ZOO_EXACT_SECONDS)
    return (
        ExperimentSpec(family="kkt", d=64, alpha=1.0, width=256, attacks=kkt_attacks, seeds=(0,), exact_seconds=ZOO_EXACT_SECONDS),
        ExperimentSpec(dataset="digits", d=64, n=300, n_eval=50, models=("vanilla", "small-init"), **common),
        *(ExperimentSpec(dataset="subspace", d=784, ell=756, n=100, n_eval=20, init_scale=scale_, models=("vanilla",), **common) for scale_ in (1.0, 0.25)),
    )
