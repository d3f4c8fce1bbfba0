"""The ``marginbench`` command: a thin layer that turns options into a spec and hands it to the runner."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from marginbench.bench.executor import EXECUTORS, ExecutorSpec
from marginbench.bench.presets import FIGURE_PRESETS, PRESETS, SCALES, Sweep
from marginbench.bench.registry import ATTACKS, DATASETS, MODELS, Registry
from marginbench.bench.spec import DEVICES, FAMILIES, LABEL_RULES, ExperimentSpec, SpecError, spec_from_dict
from marginbench.models.train import LOSSES, NORMALIZED_LR, SCHEDULES

if TYPE_CHECKING:
    import pandas as pd

PROG = "marginbench"

RUN_EPILOG = """\
examples:
  marginbench run --out runs/default
      the default preset: d=64, n=d, width 256; vanilla and robust-construction; universal-z (~1 min on CPU)
  marginbench run --preset smoke --out runs/smoke
  marginbench run --d 100 --alpha 0.5 --width 1000 --models vanilla --seeds 0,1,2 --out runs/d100
  marginbench run --resume runs/d100
      finish an interrupted sweep: finished runs are kept, the others run (the spec comes from its manifest)
  marginbench run --preset smoke --seeds 0,1,2,3 --workers 4 --out runs/pool
      four runs at a time on a local process pool
  marginbench run --preset smoke --executor ray --ray-address auto --out runs/ray
      one Ray task per run on the running Ray cluster (pip install 'marginbench[ray]')

  marginbench run --family subspace --d 128 --ell 112 --width 64 --out runs/subspace
  marginbench run --preset paper-fig1a --scale small --out runs/fig1a

families, datasets and models (which combinations mean what):
  kkt       Vardi et al. 2022. Data: sphere (x uniform on the sphere of radius sqrt(d), random labels).
            All of W, b, v trained with the exponential loss and the paper's schedule (lr 1e-5,
            x1.1 every 100 iterations, stop at loss < 1e-30); attacked at the training points.
            vanilla              PyTorch's default init
            small-init           the same init divided by sqrt(2d): the KKT limit should not care
            l2                   vanilla init, loss + lambda/2 ||theta||^2 over W, b, v (lambda: --l2,
                                 default 1e-10) with the normalized schedule, until stationary to
                                 --stationarity (default 1e-2) or --max-iters (default 20000): its
                                 stationary points are KKT points of the max-margin problem as lambda -> 0
            robust-construction  Thm 3.1's closed-form net (width n, one neuron per example; --width
                                 does not apply): nothing below (1-c)/4 sqrt(d) flips a training point
  subspace  Melamed et al. 2023. Data: subspace (a random (d-ell)-dim subspace P, points at radius
            sqrt(d), --label-rule random|linear) or digits (sklearn's 8x8 digits, odd vs even, on their
            top 64-ell principal components). Only W trained (no bias, u_i = +-1/sqrt(width) fixed),
            logistic loss, constant step (GD, or SGD with --batch-size) until every training margin
            is >= 1; attacked at --n-eval held-out points of P.
            vanilla     w_i ~ N(0, I/d)
            small-init  w_i ~ N(0, beta^2 I), beta = 1/(d sqrt 2) (Cor 6.1)
            l2          vanilla init, exactly T = --max-iters steps of loss + lambda/2 ||W||^2 with
                        (1 - lr lambda)^T = 1/sqrt(2d) (Cor 6.2) unless --l2 sets lambda
            --init-scale multiplies any init's standard deviation (Melamed et al. Fig. 4: 1/factor)
attacks:
  universal-z          Thm 4.1's direction z = sum_{i in I} y_i x_i over the margin set I (10% slack);
                       exact minimal scale per example and the common scale that flips all of I
  subspace-z           Melamed et al. Thm 5.1's off-manifold z (needs data on a subspace P): per example
                       whether the theorem's own z flips and its norm against the bound (examples.csv
                       thm51_* columns), and the exact minimal scale along its universal direction
  pgd                  L2 PGD (8 normalized steps of 0.25 eps, 1 restart), minimal norm by bisecting eps
                       per example to 1% relative precision: a Polyak/DeepFool walk brackets, then each round
                       runs up to 10 budgets per example at once, warm started from the smallest flip
  pgd-off, pgd-on      the same with every step projected onto P-perp / onto P (subspace data only;
                       elsewhere recorded as "unavailable: does not apply")
  fmn                  native fast minimum-norm L2 (Pintor et al. 2021, Alg. 1, with its eps-ball projection)
  boundary-walk        exact first sign change along segments to the nearest other-side points and the
                       local normals, then shrinking; finds flips where gradients vanish (robust-construction)
  fb-fmn               Foolbox 3.3.4 L2FMNAttack as shipped: it never projects onto its eps-ball, so its
                       norms are not minimal (kept for comparison; use fmn)
  fb-ddn, fb-deepfool  Foolbox DDN (100 steps) and L2 DeepFool (2 candidates)
  fb-cw                Foolbox Carlini-Wagner L2 with initial_const 1, stepsize 1e-3, 500 steps, 9 binary
                       searches (Foolbox's defaults, made for [0,1] images, give norms ~100x DDN's here);
                       the slowest gradient attack: a reference point, not a fast leaderboard entry
  fb-boundary          Foolbox Boundary attack (2000 steps), decision-based, started at the nearest
                       other-side point
  fb-brendel-bethge    Foolbox L2 Brendel-Bethge (200 steps) from the nearest other-side point; needs numba
                       (pip install 'marginbench[foolbox]'; its first call compiles for ~1 min); without it
                       it is recorded as unavailable and the run goes on
  Foolbox attacks use the box [min X - 10 sqrt(d), max X + 10 sqrt(d)], so no answer of norm <= 10 sqrt(d)
  is clipped. Every attack's wall time and forward/backward passes per example are in summary.csv.

Result directory: manifest.json, summary.csv, examples.csv, runs/<run_id>/{model.pt,data.npz,perturbations.npz}
and each finished run's rows and completion marker, runs/<run_id>/{examples.csv,run.json,COMPLETE}.
Every reported norm is re-verified by a forward pass; failures are +inf. A run whose training hits NaN/inf,
or that raises, is recorded as failed (summary.csv: run_status, attack_status, error) and the sweep goes on.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _names(registry: Registry[Any]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated list of registered names."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        for name in names:
            if name not in registry:
                raise argparse.ArgumentTypeError(f"unknown {registry.kind} {name!r}; choose from: {', '.join(registry.names())}")
        return names

    return parse


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    return seeds


def _finite(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value

    return parse


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Minimal adversarial perturbation norms of two-layer ReLU networks, against sqrt(d).",
        epilog="Run `marginbench run --help` for the experiment options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

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
    run.add_argument("--preset", choices=PRESETS.names(), help="named experiment to start from (default: default)")
    run.add_argument("--scale", choices=SCALES, help="papers' presets: small runs on a CPU in minutes, full is the paper's grid (default: small)")
    grid = run.add_argument_group("experiment (override the preset)")
    grid.add_argument("--family", choices=FAMILIES, help="experiment family: kkt = Vardi et al. 2022, subspace = Melamed et al. 2023")
    grid.add_argument("--dataset", choices=DATASETS.names(), help="dataset name")
    grid.add_argument("--d", type=_finite(int), help="input dimension (>= 2)")
    size = grid.add_mutually_exclusive_group()
    size.add_argument("--n", type=_finite(int), help="number of training examples (>= 2)")
    size.add_argument("--alpha", type=_finite(float), help="n = round(d ** alpha), as in the paper's m = d^alpha")
    grid.add_argument("--ell", type=_finite(int), help="subspace data: codimension of the data subspace P, 1 <= ell < d (default: d - d//4; digits: 54)")
    grid.add_argument("--n-eval", type=_finite(int), help="subspace family: held-out points of P that are attacked (default 100)")
    grid.add_argument("--label-rule", choices=LABEL_RULES, help="subspace data: random labels, or linear (a halfspace within P)")
    grid.add_argument("--width", type=_finite(int), help="hidden neurons of trained models")
    grid.add_argument("--init-scale", type=_finite(float), help="multiplies the initialization's standard deviation (default 1)")
    grid.add_argument("--l2", type=_finite(float), help="lambda of the l2 model (subspace default: (1 - lr lambda)^T = 1/sqrt(2d), Cor 6.2; kkt: 1e-10)")
    grid.add_argument("--models", type=_names(MODELS), metavar="A,B", help=f"comma-separated models: {', '.join(MODELS.names())}")
    grid.add_argument("--attacks", type=_names(ATTACKS), metavar="A,B", help=f"comma-separated attacks: {', '.join(ATTACKS.names())}")
    grid.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="comma-separated integer seeds (data and init)")
    grid.add_argument("--device", choices=DEVICES, help="where to train and attack (default cpu)")
    training = run.add_argument_group("training (defaults: the family's recipe, see below)")
    training.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="paper: step lr grad L with lr grown x1.1 every 100 iterations (kkt default); normalized: step lr grad L / L, "
        f"the same gradient-flow path in far fewer steps (full batch; --lr defaults to {NORMALIZED_LR} and --lr-growth to 1)",
    )
    training.add_argument("--loss", choices=LOSSES, help="exp: e^{-q} (kkt default); logistic: log(1+e^{-q}) (subspace default)")
    training.add_argument("--target-loss", type=_finite(float), help="stop once the training loss is below this (kkt default 1e-30)")
    training.add_argument("--target-margin", type=_finite(float), help="stop once every training margin y N(x) is at least this (subspace default 1)")
    training.add_argument("--target-normalized-margin", type=_finite(float), help="stop once min y N(x) / ||theta||^2 is at least this")
    training.add_argument("--stationarity", type=_finite(float), help="l2 models: stop once ||grad(L + lambda/2 ||theta||^2)|| <= this * lambda ||theta|| (kkt l2 default 1e-2)")
    training.add_argument("--batch-size", type=_finite(int), help="SGD mini-batch size (default: full-batch GD)")
    training.add_argument("--max-iters", type=_finite(int), help="cap on iterations; reaching it is reported as stop reason max_iters")
    training.add_argument("--max-seconds", type=_finite(float), help="cap on training wall time per run, reported as max_seconds")
    training.add_argument("--lr", type=_finite(float), help="initial learning rate (kkt default 1e-5, subspace 0.05)")
    training.add_argument("--lr-growth", type=_finite(float), help="factor applied to the learning rate every --growth-every iterations (kkt default 1.1, subspace 1)")
    training.add_argument("--growth-every", type=_finite(int), help="iterations between learning-rate increases (default 100)")
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None, help="show progress bars (default: when stderr is a terminal)")
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    scale = run.add_argument_group("execution (does not change the results)")
    scale.add_argument("--workers", type=_finite(int), help="local: runs at once on a process pool (default 1: in this process); ray: most runs in flight")
    scale.add_argument(
        "--batch-seeds",
        action="store_true",
        help="train the seeds of each trained model together in one batch (runs in this process only); at one torch thread the numbers are bitwise those without it",
    )
    scale.add_argument("--executor", choices=EXECUTORS, default="local", help="local (default) or ray: one Ray task per run")
    scale.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)")
    run.set_defaults(handler=_run)

    speed = sub.add_parser(
        "throughput",
        help="time the training and attack kernels against the machine's matmul rate",
        description="Time the training step (analytic, and the plain-PyTorch autograd recipe as a yardstick), the "
        "exact line search and minimal-norm PGD, next to the matmul rate measured in the same run at the same shapes.",
        epilog="examples:\n  marginbench throughput\n  marginbench throughput --sizes paper --format json\n  marginbench throughput --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    speed.add_argument("--device", choices=DEVICES, default="cpu", help="where to run the kernels (default: %(default)s)")
    speed.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json records")
    speed.add_argument("--sizes", choices=("small", "paper"), default="small", help="small: d=n=64, width 256; paper: also d=n=width=1000")
    speed.set_defaults(handler=_throughput)

    listing = sub.add_parser("list", help="list the registered datasets, models, attacks and presets")
    listing.set_defaults(handler=_list)
    _add_report_commands(sub)
    return parser


_GRID_OPTIONS = ("family", "dataset", "d", "ell", "n_eval", "label_rule", "width", "init_scale", "l2", "models", "attacks", "seeds", "device")
_TRAIN_OPTIONS = ("schedule", "loss", "target_loss", "target_margin", "target_normalized_margin", "stationarity", "batch_size", "max_iters", "max_seconds", "lr", "lr_growth", "growth_every")


def specs_from_args(args: argparse.Namespace, bases: Sweep | None = None) -> Sweep:
    """``bases`` (default: the preset's sweep) with every explicitly given option replacing its value in each spec."""
    if bases is None:
        bases = PRESETS.get(args.preset or "default")(args.scale or "small")
    changes: dict[str, Any] = {key: getattr(args, key) for key in _GRID_OPTIONS if getattr(args, key) is not None}
    if args.n is not None:
        changes["n"] = args.n
    if args.alpha is not None:
        changes.update(n=None, alpha=args.alpha)
    train_changes = {key: getattr(args, key) for key in _TRAIN_OPTIONS if getattr(args, key) is not None}
    if train_changes.get("schedule") == "normalized":  # the paper's lr 1e-5 x1.1 means nothing to this schedule
        train_changes.setdefault("lr", NORMALIZED_LR)
        train_changes.setdefault("lr_growth", 1.0)
    sweep = []
    for base in bases:
        spec = dataclasses.replace(base, **changes)
        if train_changes:
            try:
                spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train_spec, **train_changes))
            except ValueError as err:
                raise SpecError(str(err)) from None
        sweep.append(spec)
    return tuple(sweep)


def resumed_specs(args: argparse.Namespace) -> tuple[Sweep, str | None]:
    """(sweep, preset) from DIR/manifest.json for --resume DIR; SpecError if an explicit option contradicts it."""
    from marginbench.bench.store import ResultStore

    manifest = ResultStore.reopen(args.resume).read_manifest()
    sweep, preset = tuple(spec_from_dict(stored) for stored in manifest["specs"]), manifest.get("preset")
    if args.preset is not None and args.preset != preset:
        raise SpecError(f"--resume {args.resume}: --preset {args.preset} contradicts its manifest (preset {preset}); leave it out")
    for asked, spec in zip(specs_from_args(args, bases=sweep), sweep, strict=True):
        for name in (f.name for f in dataclasses.fields(ExperimentSpec)):
            mine, theirs = getattr(asked, name), getattr(spec, name)
            if mine == theirs:
                continue
            if name == "train":
                mine, theirs = asked.train_spec, spec.train_spec
                name, mine, theirs = next((f.name, getattr(mine, f.name), getattr(theirs, f.name)) for f in dataclasses.fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name))
            option = "--n/--alpha" if name in ("n", "alpha") else "--" + name.replace("_", "-")
            raise SpecError(f"--resume {args.resume}: {option} {_shown(mine)} contradicts its manifest ({name} = {_shown(theirs)}); leave it out")
    return sweep, preset


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def prepare_run(args: argparse.Namespace) -> tuple[Sweep, str | None, str, ExecutorSpec]:
    """(sweep, preset, result directory, executor) for ``run``'s options; SpecError for any mistake in them."""
    executor = ExecutorSpec(kind=args.executor, workers=args.workers, ray_address=args.ray_address, batch_seeds=args.batch_seeds)
    if args.resume is not None:
        sweep, preset = resumed_specs(args)
        return sweep, preset, args.resume, executor
    return specs_from_args(args), args.preset or "default", args.out, executor


def _run(args: argparse.Namespace) -> int:
    from marginbench.bench.executor import SweepAborted, run_sweep
    from marginbench.bench.report import run_table

    specs, preset, out, executor = prepare_run(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        _, summary = run_sweep(
            specs, out, preset=preset, overwrite=args.overwrite, resume=args.resume is not None, executor=executor, progress=progress
        )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the runs that finished are in {out}; finish with: {PROG} run --resume {out}", file=sys.stderr)
        return 130
    except SweepAborted as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a directory removed under our feet: not a user mistake, still one line
        print(f"{PROG}: error: {err}; the runs that finished are in {out}; finish with: {PROG} run --resume {out}", file=sys.stderr)
        return 1
    print(run_table(summary))
    print(f"\nresults: {out}/summary.csv, {out}/examples.csv, {out}/runs/")
    if preset in FIGURE_PRESETS:
        from marginbench.bench.merge import read_results

        draw_figures(read_results([str(out)]).summary, Path(out) / "figures")
    return 0


def run_conflict(args: argparse.Namespace) -> str | None:
    """The message for options of ``run`` that cannot go together, or None."""
    if args.resume is not None and args.overwrite:
        return "--overwrite cannot be combined with --resume (resume keeps the finished runs)"
    if args.ray_address is not None and args.executor != "ray":
        return "--ray-address needs --executor ray"
    return None


def _throughput(args: argparse.Namespace) -> int:
    import json

    from tabulate import tabulate

    from marginbench.bench.runner import resolve_device
    from marginbench.bench.throughput import as_rows, measure

    rows = as_rows(measure(device=resolve_device(args.device), sizes=args.sizes))
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    else:
        print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4g", missingval=""))
    return 0


def _list(args: argparse.Namespace) -> int:
    for registry in (DATASETS, MODELS, ATTACKS):
        print(f"{registry.kind}s: {', '.join(registry.names())}")
    for name in PRESETS.names():
        doc = (PRESETS.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"preset {name}: {doc}")
    return 0


LEADERBOARD_EPILOG = """\
examples:
  marginbench leaderboard runs/default
  marginbench leaderboard runs/d16 runs/d32 runs/d64 --format plain
      several result directories merged (their runs stay distinct, even with equal run_ids)

Models are ranked by the median over runs (seeds) of each run's median best norm / sqrt(d), where an
example's best norm is the smallest over every attack run on it; equal scores share a rank. Attacks are
ranked by AttackBench's optimality: the area under the per-example best's robust-accuracy-vs-eps curve
over the area under the attack's (1 = as good as the best on every example; failures count as the largest
norm found on the run). Also shown: how often the attack is the best, its median ratio to the best, its
success rate, milliseconds and (where recorded) forward/backward passes per example.
"""

BASELINE_EPILOG = """\
examples:
  marginbench run --preset baseline --out runs/baseline
  marginbench baseline runs/baseline -o results/baseline.json

The baseline holds every numeric summary.csv value of the run (not the timings) and a tolerance band per
metric, {"rel": r, "abs": a}: a number passes when |value - baseline| <= a + r * |baseline|. Edit the bands
in the file to tighten or loosen one metric; "*" applies to metrics without their own band.
"""

CHECK_EPILOG = """\
examples:
  marginbench check runs/baseline --baseline results/baseline.json

Exit status: 0 when every number of the baseline is within its band in DIR, 1 when some drifted or are
missing (a table names each one: run, attack, metric, baseline, value, difference, allowed), 2 on bad input.
"""

PLOT_EPILOG = """\
examples:
  marginbench plot runs/grid -o figures/
  marginbench plot runs/d16 runs/d32 runs/d64 -o figures/

Figures (each drawn only when the data supports it; the others are listed with the reason):
  fig1a_common_c_vs_d       Vardi et al. Fig. 1a: universal-z's common c vs d per alpha, sqrt(d) line
  fig1b_common_c_vs_width   Vardi et al. Fig. 1b: the same for n = d, one line per width
  fig2a_margin_fraction     Vardi et al. Fig. 2a: fraction of the training set on the margin vs d
  fig2b_not_on_margin       Vardi et al. Fig. 2b: number of examples not on the margin vs d
  fig4_norm_vs_init_scale   Melamed et al. Fig. 4: pgd-on / pgd-off / pgd norms vs the init-scale factor
Error bars are standard deviations over seeds.
"""


def _add_report_commands(sub: Any) -> None:
    """The subcommands that read finished result directories: leaderboard, baseline, check, plot."""
    raw = argparse.RawDescriptionHelpFormatter
    board = sub.add_parser("leaderboard", help="rank models and attacks of one or more result directories", description="Ranked tables of models and of attacks.", epilog=LEADERBOARD_EPILOG, formatter_class=raw)
    board.add_argument("dirs", nargs="+", metavar="DIR", help="result directories written by `marginbench run`")
    board.add_argument("--format", default="github", metavar="FMT", help="a tabulate table format: github (default), plain, simple, grid, latex, ...")
    board.set_defaults(handler=_leaderboard)

    base = sub.add_parser("baseline", help="write a regression baseline of a result directory", description="Write DIR's numbers and their tolerance bands to a JSON baseline.", epilog=BASELINE_EPILOG, formatter_class=raw)
    base.add_argument("dir", metavar="DIR", help="result directory written by `marginbench run`")
    base.add_argument("-o", "--output", required=True, metavar="PATH", help="the baseline file to write (JSON)")
    base.set_defaults(handler=_baseline)

    check = sub.add_parser("check", help="compare a result directory with a baseline", description="Check that every number of a baseline is within its band in DIR.", epilog=CHECK_EPILOG, formatter_class=raw)
    check.add_argument("dir", metavar="DIR", help="result directory written by `marginbench run`")
    check.add_argument("--baseline", required=True, metavar="PATH", help="a file written by `marginbench baseline`")
    check.add_argument("--format", default="github", metavar="FMT", help="tabulate format of the drift table (default: %(default)s)")
    check.set_defaults(handler=_check)

    plot = sub.add_parser("plot", help="draw the papers' figures that the data supports (PNG)", description="Draw the papers' figures from one or more result directories.", epilog=PLOT_EPILOG, formatter_class=raw)
    plot.add_argument("dirs", nargs="+", metavar="DIR", help="result directories written by `marginbench run`")
    plot.add_argument("-o", "--out", metavar="OUTDIR", help="folder for the PNG files (default: DIR/figures for one DIR; required for several)")
    plot.set_defaults(handler=_plot)


def _table_format(name: str) -> str:
    from tabulate import tabulate_formats

    if name not in tabulate_formats:
        raise SpecError(f"--format {name!r} is not a tabulate format; choose from: {', '.join(sorted(tabulate_formats))}")
    return name


def _leaderboard(args: argparse.Namespace) -> int:
    from marginbench.bench.leaderboard import leaderboard_text
    from marginbench.bench.merge import read_results

    tablefmt = _table_format(args.format)
    print(leaderboard_text(read_results(args.dirs, need_examples=True), tablefmt=tablefmt))
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from marginbench.bench.check import make_baseline, write_baseline

    baseline = make_baseline(args.dir)
    write_baseline(baseline, args.output)
    print(f"wrote {args.output}: {len(baseline['values'])} numbers of {args.dir} with their tolerance bands")
    return 0


def _check(args: argparse.Namespace) -> int:
    from marginbench.bench.check import compare, drift_text, read_baseline

    tablefmt = _table_format(args.format)
    baseline = read_baseline(args.baseline)
    drifted = compare(args.dir, baseline)
    print(drift_text(drifted, checked=len(baseline["values"]), tablefmt=tablefmt))
    return 0 if drifted.empty else 1


def _plot(args: argparse.Namespace) -> int:
    from marginbench.bench.merge import read_results

    if args.out is None and len(args.dirs) > 1:
        raise SpecError("give -o OUTDIR when plotting several result directories")
    results = read_results(args.dirs)
    out = Path(args.out) if args.out is not None else Path(args.dirs[0]) / "figures"
    if out.exists() and not out.is_dir():
        raise SpecError(f"-o {out} exists and is not a directory")
    draw_figures(results.summary, out)
    return 0


def draw_figures(summary: pd.DataFrame, out: Path) -> None:
    """Write the papers' figures that ``summary`` supports into ``out``; say what was written and skipped."""
    from marginbench.bench.plots import build_figures, save_figures

    figures = build_figures(summary)
    try:
        written = save_figures(figures, out)
    except OSError as err:
        raise SpecError(f"cannot write figures to {out}: {err.strerror or err}") from None
    for path in written:
        print(f"wrote {path}")
    for name, reason in figures.skipped.items():
        print(f"skipped {name}: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marginbench`` console script and of ``python -m marginbench``."""
    parser = make_parser()
    args = parser.parse_args(argv)
    conflict = run_conflict(args) if args.command == "run" else None
    if conflict is not None:
        parser.error(conflict)
    try:
        return int(args.handler(args))
    except SpecError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
