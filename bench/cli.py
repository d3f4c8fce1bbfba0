"""The ``marginbench`` command: a thin layer that turns options into a spec and hands it to the runner."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from marginbench.bench.presets import PRESETS
from marginbench.bench.registry import ATTACKS, DATASETS, MODELS, Registry
from marginbench.bench.spec import DEVICES, FAMILIES, ExperimentSpec, SpecError
from marginbench.models.train import LOSSES, TrainSpec

PROG = "marginbench"

RUN_EPILOG = """\
examples:
  marginbench run --out runs/default
      the default preset: d=64, n=d, width 256; vanilla and robust-construction; universal-z (~1 min on CPU)
  marginbench run --preset smoke --out runs/smoke
  marginbench run --d 100 --alpha 0.5 --width 1000 --models vanilla --seeds 0,1,2 --out runs/d100

models (kkt family):
  vanilla              PyTorch default init, all of W, b, v trained with the paper's schedule
                       (lr 1e-5, x1.1 every 100 iterations, stop at loss < 1e-30)
  robust-construction  Vardi et al. Thm 3.1's closed-form net (width n, one neuron per example; --width
                       does not apply): no perturbation below (1-c)/4 sqrt(d) flips a training point
attacks:
  universal-z          Thm 4.1's direction z = sum_{i in I} y_i x_i over the margin set I (10% slack);
                       exact minimal scale per example and the common scale that flips all of I
  subspace-z           Melamed et al. Thm 5.1's off-manifold z (needs data on a subspace P): per example
                       whether the theorem's own z flips and its norm against the bound (examples.csv
                       thm51_* columns), and the exact minimal scale along its universal direction
  pgd                  L2 PGD (50 normalized steps of 0.1 eps, 1 restart), minimal norm by doubling and
                       bisecting eps per example to 1% relative precision
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

Result directory: manifest.json, summary.csv, examples.csv, runs/<run_id>/{model.pt,data.npz,perturbations.npz}.
Every reported norm is re-verified by a forward pass; failures are +inf.
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
    run.add_argument("--out", required=True, metavar="DIR", help="result directory to write (created if missing)")
    run.add_argument("--overwrite", action="store_true", help="replace results already in DIR")
    run.add_argument("--preset", default="default", choices=PRESETS.names(), help="named experiment to start from (default: %(default)s)")
    grid = run.add_argument_group("experiment (override the preset)")
    grid.add_argument("--family", choices=FAMILIES, help="experiment family; kkt = Vardi et al. 2022")
    grid.add_argument("--dataset", choices=DATASETS.names(), help="dataset name")
    grid.add_argument("--d", type=_finite(int), help="input dimension (>= 2)")
    size = grid.add_mutually_exclusive_group()
    size.add_argument("--n", type=_finite(int), help="number of training examples (>= 2)")
    size.add_argument("--alpha", type=_finite(float), help="n = round(d ** alpha), as in the paper's m = d^alpha")
    grid.add_argument("--width", type=_finite(int), help="hidden neurons of trained models")
    grid.add_argument("--models", type=_names(MODELS), metavar="A,B", help=f"comma-separated models: {', '.join(MODELS.names())}")
    grid.add_argument("--attacks", type=_names(ATTACKS), metavar="A,B", help=f"comma-separated attacks: {', '.join(ATTACKS.names())}")
    grid.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="comma-separated integer seeds (data and init)")
    grid.add_argument("--device", choices=DEVICES, help="where to train and attack (default cpu)")
    training = run.add_argument_group("training (defaults: the paper's schedule)")
    training.add_argument("--loss", choices=LOSSES, help="exp: e^{-q} (default); logistic: log(1+e^{-q})")
    training.add_argument("--target-loss", type=_finite(float), help="stop once the training loss is below this (default 1e-30)")
    training.add_argument("--max-iters", type=_finite(int), help="cap on iterations; reaching it is reported as stop reason max_iters")
    training.add_argument("--max-seconds", type=_finite(float), help="cap on training wall time per run, reported as max_seconds")
    training.add_argument("--lr", type=_finite(float), help="initial learning rate (default 1e-5)")
    training.add_argument("--lr-growth", type=_finite(float), help="factor applied to the learning rate every --growth-every iterations (default 1.1)")
    training.add_argument("--growth-every", type=_finite(int), help="iterations between learning-rate increases (default 100)")
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None, help="show progress bars (default: when stderr is a terminal)")
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    run.set_defaults(handler=_run)

    listing = sub.add_parser("list", help="list the registered datasets, models, attacks and presets")
    listing.set_defaults(handler=_list)
    return parser


_GRID_OPTIONS = ("family", "dataset", "d", "width", "models", "attacks", "seeds", "device")
_TRAIN_OPTIONS = ("loss", "target_loss", "max_iters", "max_seconds", "lr", "lr_growth", "growth_every")


def spec_from_args(args: argparse.Namespace) -> ExperimentSpec:
    """The preset's spec with every explicitly given option replacing its value."""
    base = PRESETS.get(args.preset)()
    changes: dict[str, Any] = {key: getattr(args, key) for key in _GRID_OPTIONS if getattr(args, key) is not None}
    if args.n is not None:
        changes["n"] = args.n
    if args.alpha is not None:
        changes.update(n=None, alpha=args.alpha)
    train_changes = {key: getattr(args, key) for key in _TRAIN_OPTIONS if getattr(args, key) is not None}
    try:
        if train_changes:
            changes["train"] = dataclasses.replace(base.train, **train_changes)
    except ValueError as err:
        raise SpecError(str(err)) from None
    return dataclasses.replace(base, **changes)


def _run(args: argparse.Namespace) -> int:
    from marginbench.bench.report import run_table
    from marginbench.bench.runner import run_experiment

    spec = spec_from_args(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        _, summary = run_experiment(spec, args.out, preset=args.preset, overwrite=args.overwrite, progress=progress)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the runs that finished are in {args.out}", file=sys.stderr)
        return 130
    print(run_table(summary))
    print(f"\nresults: {args.out}/summary.csv, {args.out}/examples.csv, {args.out}/runs/")
    return 0


def _list(args: argparse.Namespace) -> int:
    for registry in (DATASETS, MODELS, ATTACKS, PRESETS):
        print(f"{registry.kind}s: {', '.join(registry.names())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marginbench`` console script and of ``python -m marginbench``."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SpecError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
