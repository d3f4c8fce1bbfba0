"""The ``marginbench`` command: a thin layer that turns options into a spec and hands it to the runner."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from marginbench.bench.executor import EXECUTORS, ExecutorSpec
from marginbench.bench.presets import PRESETS
from marginbench.bench.registry import ATTACKS, DATASETS, MODELS, Registry
from marginbench.bench.spec import DEVICES, FAMILIES, ExperimentSpec, SpecError, spec_from_dict
from marginbench.models.train import LOSSES

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

models (kkt family):
  vanilla              PyTorch default init, all of W, b, v trained with the paper's schedule
                       (lr 1e-5, x1.1 every 100 iterations, stop at loss < 1e-30)
  robust-construction  Vardi et al. Thm 3.1's closed-form net (width n, one neuron per example; --width
                       does not apply): no perturbation below (1-c)/4 sqrt(d) flips a training point
attacks:
  universal-z          Thm 4.1's direction z = sum_{i in I} y_i x_i over the margin set I (10% slack);
                       exact minimal scale per example and the common scale that flips all of I

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
    scale = run.add_argument_group("execution (does not change the results)")
    scale.add_argument("--workers", type=_finite(int), help="local: runs at once on a process pool (default 1: in this process); ray: most runs in flight")
    scale.add_argument("--executor", choices=EXECUTORS, default="local", help="local (default) or ray: one Ray task per run")
    scale.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)")
    run.set_defaults(handler=_run)

    listing = sub.add_parser("list", help="list the registered datasets, models, attacks and presets")
    listing.set_defaults(handler=_list)
    return parser


_GRID_OPTIONS = ("family", "dataset", "d", "width", "models", "attacks", "seeds", "device")
_TRAIN_OPTIONS = ("loss", "target_loss", "max_iters", "max_seconds", "lr", "lr_growth", "growth_every")


def spec_from_args(args: argparse.Namespace, base: ExperimentSpec | None = None) -> ExperimentSpec:
    """``base`` (default: the preset's spec) with every explicitly given option replacing its value."""
    if base is None:
        base = PRESETS.get(args.preset or "default")()
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


def resumed_spec(args: argparse.Namespace) -> tuple[ExperimentSpec, str | None]:
    """(spec, preset) from DIR/manifest.json for --resume DIR; SpecError if an explicit option contradicts it."""
    from marginbench.bench.store import ResultStore

    manifest = ResultStore.reopen(args.resume).read_manifest()
    spec, preset = spec_from_dict(manifest["spec"]), manifest.get("preset")
    if args.preset is not None and args.preset != preset:
        raise SpecError(f"--resume {args.resume}: --preset {args.preset} contradicts its manifest (preset {preset}); leave it out")
    asked = spec_from_args(args, base=spec)
    for name in (f.name for f in dataclasses.fields(ExperimentSpec)):
        mine, theirs = getattr(asked, name), getattr(spec, name)
        if mine == theirs:
            continue
        if name == "train":
            name, mine, theirs = next((f.name, getattr(mine, f.name), getattr(theirs, f.name)) for f in dataclasses.fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name))
        option = "--n/--alpha" if name in ("n", "alpha") else "--" + name.replace("_", "-")
        raise SpecError(f"--resume {args.resume}: {option} {_shown(mine)} contradicts its manifest ({name} = {_shown(theirs)}); leave it out")
    return spec, preset


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def prepare_run(args: argparse.Namespace) -> tuple[ExperimentSpec, str | None, str, ExecutorSpec]:
    """(spec, preset, result directory, executor) for ``run``'s options; SpecError for any mistake in them."""
    executor = ExecutorSpec(kind=args.executor, workers=args.workers, ray_address=args.ray_address)
    if args.resume is not None:
        spec, preset = resumed_spec(args)
        return spec, preset, args.resume, executor
    return spec_from_args(args), args.preset or "default", args.out, executor


def _run(args: argparse.Namespace) -> int:
    from marginbench.bench.executor import SweepAborted, run_sweep
    from marginbench.bench.report import run_table

    spec, preset, out, executor = prepare_run(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        _, summary = run_sweep(
            spec, out, preset=preset, overwrite=args.overwrite, resume=args.resume is not None, executor=executor, progress=progress
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
    return 0


def run_conflict(args: argparse.Namespace) -> str | None:
    """The message for options of ``run`` that cannot go together, or None."""
    if args.resume is not None and args.overwrite:
        return "--overwrite cannot be combined with --resume (resume keeps the finished runs)"
    if args.ray_address is not None and args.executor != "ray":
        return "--ray-address needs --executor ray"
    return None


def _list(args: argparse.Namespace) -> int:
    for registry in (DATASETS, MODELS, ATTACKS, PRESETS):
        print(f"{registry.kind}s: {', '.join(registry.names())}")
    return 0


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
