"""The ``marginbench run`` command's options: the experiment, training and execution groups, and the options
that cannot go together (nothing is run here)."""

from __future__ import annotations

import argparse
from typing import Any

import marginbench.bench.cli.commands as commands
from marginbench.attacks.exact import EXACT_SECONDS
from marginbench.bench.cli.help_text import (
    RUN_EPILOG,
    short,
)
from marginbench.bench.cli.option_types import add_plugin_option, finite, registered_names, seed_list
from marginbench.bench.execution.executors import EXECUTORS, ExecutorSpec
from marginbench.bench.execution.twin import TWIN_TOLERANCE
from marginbench.bench.experiment.families import FAMILIES, KKT, KKT_L2_LAMBDA, KKT_L2_STATIONARITY, SUBSPACE
from marginbench.bench.experiment.run_spec import ATTACK_TIMEOUT
from marginbench.bench.experiment.spec import DEVICES, TWIN_PRECISIONS, TWINS, ExperimentSpec
from marginbench.bench.performance.threads import ONE_THREAD_BELOW_GFLOP
from marginbench.bench.registry.presets import DEFAULT_PRESET, DEFAULT_SCALE, PRESETS, SCALES
from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS
from marginbench.models.datasets import DIGITS_ELL, LABEL_RULES
from marginbench.models.precision import PRECISIONS
from marginbench.models.train import LOSSES, NORMALIZED_LR, SCHEDULES
from marginbench.models.train_spec import ARC_LATE_BELOW, ARC_LATE_STEP, ARC_STEP, REDUCTIONS


def add_run_command(sub: Any) -> None:
    """Add ``run`` to the subcommands ``sub``."""
    run = sub.add_parser(
        "run",
        help="train, attack, verify and write a result directory",
        description="Train (or construct) networks, attack them, verify every perturbation, and write DIR. "
        "Options given explicitly override the preset's values.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR", help="result directory to write (created if missing)")
    where.add_argument(
        "--resume", metavar="DIR", help="finish the sweep in DIR: keep its finished runs, redo the others; the spec comes from DIR/manifest.json"
    )
    run.add_argument("--overwrite", action="store_true", help="replace results already in DIR")
    run.add_argument(
        "--keep-failed",
        action="store_true",
        help="with --resume: keep the runs that failed as they are (default: run them again, saying which and why)",
    )
    run.add_argument("--preset", choices=PRESETS.names(), help=f"named experiment to start from (default: {DEFAULT_PRESET})")
    run.add_argument("--scale", choices=SCALES, help="papers' presets: small is small d and widths (Vardi et al.: d = 16...64; Melamed et al.: R^196 and the "
        f"digits); medium is the papers' width at d = 100...300 (Melamed et al.: their d = 784), arc schedule in precision auto, sized for one CPU; "
        f"full is the papers' grid (d up to 1000) on that recipe, for a CPU with bf16 units or a GPU; `marginbench list` estimates each "
        f"(default: {DEFAULT_SCALE})")
    grid = run.add_argument_group("experiment (override the preset)")
    grid.add_argument("--family", choices=FAMILIES, help="experiment family: kkt = Vardi et al. 2022, subspace = Melamed et al. 2023")
    grid.add_argument("--dataset", choices=DATASETS.names(), help="dataset name")
    grid.add_argument("--d", type=finite(int), help="input dimension (>= 2)")
    size = grid.add_mutually_exclusive_group()
    size.add_argument("--n", type=finite(int), help="number of training examples (>= 2)")
    size.add_argument("--alpha", type=finite(float), help="n = round(d ** alpha), as in the paper's m = d^alpha")
    grid.add_argument(
        "--ell", type=finite(int), help=f"subspace data: codimension of the data subspace P, 1 <= ell < d (default: d - d//4; digits: {DIGITS_ELL})"
    )
    grid.add_argument("--n-eval", type=finite(int), help=f"subspace family: held-out points of P that are attacked (default {ExperimentSpec.n_eval})")
    grid.add_argument("--label-rule", choices=LABEL_RULES, help="subspace data: random labels, or linear (a halfspace within P)")
    grid.add_argument("--width", type=finite(int), help="hidden neurons of trained models")
    grid.add_argument("--init-scale", type=finite(float), help=f"multiplies the initialization's standard deviation (default {ExperimentSpec.init_scale:g})")
    grid.add_argument(
        "--l2", type=finite(float), help=f"lambda of the l2 model (subspace default: (1 - lr lambda)^T = 1/sqrt(2d), Cor 6.2; kkt: {short(KKT_L2_LAMBDA)})"
    )
    grid.add_argument("--models", type=registered_names(MODELS), metavar="A,B", help=f"comma-separated models: {', '.join(MODELS.names())}")
    grid.add_argument("--attacks", type=registered_names(ATTACKS), metavar="A,B", help=f"comma-separated attacks: {', '.join(ATTACKS.names())}")
    grid.add_argument("--seeds", type=seed_list, metavar="0,1,2", help="comma-separated integer seeds (data and init)")
    grid.add_argument("--device", choices=DEVICES, help=f"where to train and attack (default {ExperimentSpec.device})")
    grid.add_argument(
        "--twin",
        choices=TWINS,
        help="kkt family: train every net a second time with the paper's schedule (lr 1e-5 x1.1 every 100 iterations, to loss 1e-30) "
        "and put both side by side in summary.csv (twin_* columns: common c, normalized margin, margin fraction, relative differences, "
        f"twin_status); a twin more than {100 * TWIN_TOLERANCE:g}%% off is reported at the end. paper: on the summed loss (the paper's eq. 1); "
        "paper-mean: on the mean loss, where the sum's first steps diverge (n = d^1.5 from d ~ 300)",
    )
    grid.add_argument(
        "--twin-precision",
        choices=TWIN_PRECISIONS,
        help=f"what the twin trains in (default {ExperimentSpec.twin_precision}, the paper's; float32 is ~2x faster on a CPU)",
    )
    grid.add_argument(
        "--exact-seconds",
        type=finite(float),
        help=f"the exact attack's time limit per example, in seconds (default {EXACT_SECONDS:g}): within it SCIP proves the minimal flip; "
        "beyond it the example keeps SCIP's certified lower bound and the best flip known",
    )
    grid.add_argument(
        "--attack-timeout",
        type=finite(float),
        metavar="SECONDS",
        help=f"each attack's wall-time limit per run (default {ATTACK_TIMEOUT:g} s, or 3 x --exact-seconds per attacked point if longer; "
        "the slowest built-in attack measured takes ~130 s): an attack past it is stopped and recorded as failed "
        "(attack_status failed, error 'timed out'); the other attacks and runs go on",
    )
    training = run.add_argument_group("training (defaults: the family's recipe, see below)")
    training.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help=f"paper: step lr grad L with lr grown x{KKT.train.lr_growth:g} every {KKT.train.growth_every} iterations (kkt default); "
        "normalized: step lr grad L / L, "
        f"the same gradient-flow path in far fewer steps (full batch; --lr defaults to {NORMALIZED_LR} and --lr-growth to 1); "
        f"arc: steps of length lr ||theta|| along -grad log L, the same network at loss {short(KKT.train.target_loss or 0)} in a few hundred steps "
        f"(full batch; --lr defaults to {ARC_STEP})",
    )
    training.add_argument("--loss", choices=LOSSES, help="exp: e^{-q} (kkt default); logistic: log(1+e^{-q}) (subspace default)")
    training.add_argument(
        "--reduction", choices=REDUCTIONS, help="sum: L = sum_i loss(q_i), Vardi et al. eq. (1) (default); mean: L / n, i.e. the step / n"
    )
    training.add_argument(
        "--target-loss", type=finite(float), help=f"stop once the training loss is below this (kkt default {short(KKT.train.target_loss or 0)})"
    )
    training.add_argument(
        "--target-margin",
        type=finite(float),
        help=f"stop once every training margin y N(x) is at least this (subspace default {SUBSPACE.train.target_margin:g})",
    )
    training.add_argument("--target-normalized-margin", type=finite(float), help="stop once min y N(x) / ||theta||^2 is at least this")
    training.add_argument(
        "--stationarity",
        type=finite(float),
        help=f"l2 models: stop once ||grad(L + lambda/2 ||theta||^2)|| <= this * lambda ||theta|| (kkt l2 default {short(KKT_L2_STATIONARITY)})",
    )
    training.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="what training computes in (default: float64): float64, float32; bf16: the large products on bf16 matrix units "
        "(CPU AMX/AVX512_BF16, CUDA tensor cores), parameters, loss and stopping in float32; tf32: CUDA only; auto: bf16 "
        "where the hardware has bf16 matrix units, else float32 (the manifest records the choice); the trained nets are "
        "attacked and checked in float64",
    )
    training.add_argument("--batch-size", type=finite(int), help="SGD mini-batch size (default: full-batch GD)")
    training.add_argument("--max-iters", type=finite(int), help="cap on iterations; reaching it is reported as stop reason max_iters")
    training.add_argument("--max-seconds", type=finite(float), help="cap on training wall time per run, reported as max_seconds")
    training.add_argument("--lr", type=finite(float), help=f"initial learning rate (kkt default {short(KKT.train.lr)}, subspace {short(SUBSPACE.train.lr)})")
    training.add_argument(
        "--late-lr",
        type=finite(float),
        help=f"arc schedule: the relative step once the loss is below {ARC_LATE_BELOW:g}, where the margin is maximized "
        f"(medium presets: {ARC_LATE_STEP} where n > 2d; default: --lr throughout)",
    )
    training.add_argument(
        "--lr-growth",
        type=finite(float),
        help=f"factor applied to the learning rate every --growth-every iterations "
        f"(kkt default {KKT.train.lr_growth:g}, subspace {SUBSPACE.train.lr_growth:g})",
    )
    training.add_argument("--growth-every", type=finite(int), help=f"iterations between learning-rate increases (default {KKT.train.growth_every})")
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None, help="show progress bars (default: when stderr is a terminal)")
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    scale = run.add_argument_group("execution (does not change the results)")
    scale.add_argument("--workers", type=finite(int), help="local: runs at once on a process pool (default 1: in this process); ray: most runs in flight")
    scale.add_argument(
        "--batch-seeds",
        action="store_true",
        help="train the seeds of each trained model together in one batch (runs in this process only); "
        "at one torch thread the numbers are bitwise those without it",
    )
    scale.add_argument(
        "--threads",
        type=finite(int),
        metavar="N",
        help="torch's threads for each run's training and attacks (default: OMP_NUM_THREADS if set, else one thread for nets "
        f"whose training step is below {ONE_THREAD_BELOW_GFLOP:g} GFLOP (4 n d width), the process's share of the cores above)",
    )
    scale.add_argument("--executor", choices=EXECUTORS, default=ExecutorSpec.kind, help="local (default) or ray: one Ray task per run")
    scale.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)")
    scale.add_argument(
        "--gpus-per-run",
        type=finite(float),
        metavar="G",
        help="ray: the GPUs each run asks Ray for; a fraction packs runs onto one GPU, e.g. 0.25 for four (default: 1 with --device cuda, else 0)",
    )
    add_plugin_option(run)
    # the spec fields each group's options set, read off the groups themselves (argparse's list of a group's
    # actions), so that a new option reaches the spec without a second list to keep in step
    run.set_defaults(handler=commands.run, spec_options=commands.SpecOptions(experiment=_dests(grid), training=_dests(training)))


def _dests(group: argparse._ArgumentGroup) -> tuple[str, ...]:
    """The dest of every option in ``group``, its mutually exclusive subgroups' too."""
    return tuple(action.dest for action in group._group_actions)


def run_conflict(args: argparse.Namespace) -> str | None:
    """The message for options of ``run`` that cannot go together, or None."""
    if args.resume is not None and args.overwrite:
        return "--overwrite cannot be combined with --resume (resume keeps the finished runs)"
    if args.ray_address is not None and args.executor != "ray":
        return "--ray-address needs --executor ray"
    if args.gpus_per_run is not None and args.executor != "ray":
        return "--gpus-per-run needs --executor ray"
    if args.out is not None and not args.out.strip():
        return "--out is empty: give the result directory's name"
    if args.keep_failed and args.resume is None:
        return "--keep-failed applies to --resume (a new sweep has no failed runs to keep)"
    return None
