"""The ``marginbench`` command: a thin layer that turns options into a spec and hands it to the runner."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from marginbench.bench.presets import PRESETS, SCALES, Sweep
from marginbench.bench.registry import ATTACKS, DATASETS, MODELS, Registry
from marginbench.bench.spec import DEVICES, FAMILIES, LABEL_RULES, SpecError
from marginbench.models.train import LOSSES

PROG = "marginbench"

RUN_EPILOG = """\
examples:
  marginbench run --out runs/default
      the default preset: d=64, n=d, width 256; vanilla and robust-construction; universal-z (~1 min on CPU)
  marginbench run --preset smoke --out runs/smoke
  marginbench run --d 100 --alpha 0.5 --width 1000 --models vanilla --seeds 0,1,2 --out runs/d100

  marginbench run --family subspace --d 128 --ell 112 --width 64 --out runs/subspace
  marginbench run --preset paper-fig1a --scale small --out runs/fig1a

families, datasets and models (which combinations mean what):
  kkt       Vardi et al. 2022. Data: sphere (x uniform on the sphere of radius sqrt(d), random labels).
            All of W, b, v trained with the exponential loss and the paper's schedule (lr 1e-5,
            x1.1 every 100 iterations, stop at loss < 1e-30); attacked at the training points.
            vanilla              PyTorch's default init
            small-init           the same init divided by sqrt(2d): the KKT limit should not care
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
    run.add_argument("--scale", default="small", choices=SCALES, help="papers' presets: small runs on a CPU in minutes, full is the paper's grid (default: %(default)s)")
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
    grid.add_argument("--l2", type=_finite(float), help="lambda of the l2 model (default: (1 - lr lambda)^T = 1/sqrt(2d), Cor 6.2)")
    grid.add_argument("--models", type=_names(MODELS), metavar="A,B", help=f"comma-separated models: {', '.join(MODELS.names())}")
    grid.add_argument("--attacks", type=_names(ATTACKS), metavar="A,B", help=f"comma-separated attacks: {', '.join(ATTACKS.names())}")
    grid.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="comma-separated integer seeds (data and init)")
    grid.add_argument("--device", choices=DEVICES, help="where to train and attack (default cpu)")
    training = run.add_argument_group("training (defaults: the family's recipe, see below)")
    training.add_argument("--loss", choices=LOSSES, help="exp: e^{-q} (kkt default); logistic: log(1+e^{-q}) (subspace default)")
    training.add_argument("--target-loss", type=_finite(float), help="stop once the training loss is below this (kkt default 1e-30)")
    training.add_argument("--target-margin", type=_finite(float), help="stop once every training margin y N(x) is at least this (subspace default 1)")
    training.add_argument("--batch-size", type=_finite(int), help="SGD mini-batch size (default: full-batch GD)")
    training.add_argument("--max-iters", type=_finite(int), help="cap on iterations; reaching it is reported as stop reason max_iters")
    training.add_argument("--max-seconds", type=_finite(float), help="cap on training wall time per run, reported as max_seconds")
    training.add_argument("--lr", type=_finite(float), help="initial learning rate (kkt default 1e-5, subspace 0.05)")
    training.add_argument("--lr-growth", type=_finite(float), help="factor applied to the learning rate every --growth-every iterations (kkt default 1.1, subspace 1)")
    training.add_argument("--growth-every", type=_finite(int), help="iterations between learning-rate increases (default 100)")
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None, help="show progress bars (default: when stderr is a terminal)")
    shown.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")
    run.set_defaults(handler=_run)

    listing = sub.add_parser("list", help="list the registered datasets, models, attacks and presets")
    listing.set_defaults(handler=_list)
    return parser


_GRID_OPTIONS = ("family", "dataset", "d", "ell", "n_eval", "label_rule", "width", "init_scale", "l2", "models", "attacks", "seeds", "device")
_TRAIN_OPTIONS = ("loss", "target_loss", "target_margin", "batch_size", "max_iters", "max_seconds", "lr", "lr_growth", "growth_every")


def specs_from_args(args: argparse.Namespace) -> Sweep:
    """The preset's sweep with every explicitly given option replacing its value in each spec."""
    changes: dict[str, Any] = {key: getattr(args, key) for key in _GRID_OPTIONS if getattr(args, key) is not None}
    if args.n is not None:
        changes["n"] = args.n
    if args.alpha is not None:
        changes.update(n=None, alpha=args.alpha)
    train_changes = {key: getattr(args, key) for key in _TRAIN_OPTIONS if getattr(args, key) is not None}
    sweep = []
    for base in PRESETS.get(args.preset)(args.scale):
        spec = dataclasses.replace(base, **changes)
        if train_changes:
            try:
                spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train_spec, **train_changes))
            except ValueError as err:
                raise SpecError(str(err)) from None
        sweep.append(spec)
    return tuple(sweep)


def _run(args: argparse.Namespace) -> int:
    from marginbench.bench.report import run_table
    from marginbench.bench.runner import run_experiment

    specs = specs_from_args(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        _, summary = run_experiment(specs, args.out, preset=args.preset, overwrite=args.overwrite, progress=progress)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the runs that finished are in {args.out}", file=sys.stderr)
        return 130
    print(run_table(summary))
    print(f"\nresults: {args.out}/summary.csv, {args.out}/examples.csv, {args.out}/runs/")
    return 0


def _list(args: argparse.Namespace) -> int:
    for registry in (DATASETS, MODELS, ATTACKS):
        print(f"{registry.kind}s: {', '.join(registry.names())}")
    for name in PRESETS.names():
        doc = (PRESETS.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"preset {name}: {doc}")
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
