"""What each ``marginbench`` subcommand does with its parsed options: build the spec, call the library, print."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from marginbench.bench.execution.executors import ExecutorSpec
from marginbench.bench.experiment.spec import SpecError, Sweep, with_options
from marginbench.bench.registry.presets import DEFAULT_PRESET, DEFAULT_SCALE, PRESETS, SCALES, Preset, Scale
from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS
from marginbench.bench.results.record import BEST

if TYPE_CHECKING:
    from marginbench.bench.results.readback import Results

PROG = "marginbench"


@dataclass(frozen=True, kw_only=True)
class SpecOptions:
    """The options of ``run`` that set spec fields, by dest (= field name); the parser reads them off its groups."""

    experiment: tuple[str, ...]  # ExperimentSpec fields (n and alpha: see specs_from_args)
    training: tuple[str, ...]  # TrainSpec fields


def specs_from_args(args: argparse.Namespace, bases: Sweep | None = None) -> Sweep:
    """``bases`` (default: the preset's sweep) with every explicitly given option replacing its value in each spec."""
    if bases is None:
        bases = PRESETS.get(args.preset or DEFAULT_PRESET).sweep(args.scale or DEFAULT_SCALE)
    given = args.spec_options
    options: dict[str, Any] = {key: getattr(args, key) for key in given.experiment if key not in ("n", "alpha") and getattr(args, key) is not None}
    if args.n is not None:
        options["n"] = args.n
    if args.alpha is not None:
        options.update(n=None, alpha=args.alpha)
    train_options = {key: getattr(args, key) for key in given.training if getattr(args, key) is not None}
    return tuple(with_options(base, options, train_options) for base in bases)


def prepare_run(args: argparse.Namespace) -> tuple[Sweep, str | None, str, ExecutorSpec]:
    """(sweep, preset, result directory, executor) for ``run``'s options; SpecError for any mistake in them.

    With --resume the sweep is the one in DIR/manifest.json, and an explicit option that contradicts it is a
    mistake.
    """
    executor = ExecutorSpec(
        kind=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        batch_seeds=args.batch_seeds,
        gpus_per_run=args.gpus_per_run,
        threads=args.threads,
    )
    if args.resume is None:
        return specs_from_args(args), args.preset or DEFAULT_PRESET, args.out, executor
    from marginbench.bench.execution.sweep import check_same_sweep, stored_sweep

    sweep, preset = stored_sweep(args.resume)  # read only: the sweep itself locks DIR before it tidies or writes
    if args.preset is not None and args.preset != preset:
        raise SpecError(f"--resume {args.resume}: --preset {args.preset} contradicts its manifest (preset {preset}); leave it out")
    check_same_sweep(args.resume, specs_from_args(args, bases=sweep), sweep)
    return sweep, preset, args.resume, executor


def run(args: argparse.Namespace) -> int:
    from marginbench.bench.execution.executors import SweepAborted
    from marginbench.bench.execution.sweep import run_sweep
    from marginbench.bench.report.tables import run_table

    specs, preset, out, executor = prepare_run(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        _, summary = run_sweep(
            specs,
            out,
            preset=preset,
            overwrite=args.overwrite,
            resume=args.resume is not None,
            keep_failed=args.keep_failed,
            executor=executor,
            progress=progress,
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
    from marginbench.bench.results.readback import read_results

    # every run gets its security curves and leaderboard figure; a figure preset also its paper's figures
    papers = preset is not None and preset in PRESETS and PRESETS.get(preset).figures
    try:
        draw_figures(read_results([str(out)]), Path(out) / "figures", papers=papers)
    except Exception as err:  # a figure that fails to draw must not sink a finished sweep; a user mistake still ends it
        if isinstance(err, SpecError):
            raise
        print(f"{PROG}: figures not drawn ({type(err).__name__}: {err}); the results are complete; `{PROG} plot {out}` draws them", file=sys.stderr)
    return 1 if (summary["run_status"] != "ok").any() else 0  # a failed run is a failed sweep (listed above)


def attack(args: argparse.Namespace) -> int:
    from marginbench.bench.execution.reattack import attack_directory
    from marginbench.bench.report.tables import run_table

    if args.out is not None and not args.out.strip():
        raise SpecError("--out is empty: give the new result directory's name")
    target = args.out if args.out is not None else args.dir
    again = (
        f"{PROG} attack {args.dir} --attacks {','.join(args.attacks)}"
        + (f" --out {args.out}" if args.out is not None else "")
        + (" --overwrite" if args.overwrite else "")
    )
    try:
        _, summary = attack_directory(args.dir, args.attacks, out=args.out, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the runs attacked so far are saved in {target}; finish with: {again}", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a directory removed under our feet: not a user mistake, still one line
        print(f"{PROG}: error: {err}; finish with: {again}", file=sys.stderr)
        return 1
    from marginbench.bench.results.readback import verify_directory

    # as `run` does (its figures read DIR back, verified): a plugin's code ran here and may have damaged other runs
    verify_directory(Path(target), target)
    print(run_table(summary[summary["attack"].isin([*args.attacks, BEST])]))
    print(f"\nresults: {target}/summary.csv, {target}/examples.csv, {target}/runs/")
    return 1 if (summary["run_status"] != "ok").any() else 0


def throughput(args: argparse.Namespace) -> int:
    import json

    from tabulate import tabulate

    from marginbench.bench.execution.runner import resolve_device
    from marginbench.bench.performance.throughput import as_rows, measure

    rows = as_rows(measure(device=resolve_device(args.device), sizes=args.sizes))
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    else:
        print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4g", missingval=""))
    return 0


def listing(args: argparse.Namespace) -> int:
    from marginbench.bench.execution.estimate import rates_text

    for registry in (DATASETS, MODELS, ATTACKS):
        print(f"{registry.kind}s:")
        width = max(map(len, registry.names()))
        for name in registry.names():
            print(f"  {name:<{width}}  {registry.describe(name)}")
    rates: dict[str, float] = {}
    for name in PRESETS.names():
        print(f"preset {name}: {PRESETS.get(name).summary}")
        for line in preset_sizes(PRESETS.get(name), rates):
            print(f"    {line}")
    if rates:
        print(f"preset times: what `marginbench run` estimates before a sweep (training and lower bounds, not attacks), from this machine's matmul rates, "
              f"measured once: {rates_text(rates)}")  # fmt: skip
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def preset_sizes(preset: Preset, rates: dict[str, float]) -> list[str]:
    """Per scale of ``preset`` (one line where its sweep is the same at every scale): its runs, trainings and
    estimated time (the sweep's own estimate, ``sweep_cost``); ``rates`` collects the rates behind them."""
    from marginbench.bench.execution.estimate import sweep_cost
    from marginbench.bench.execution.runner import one_line

    try:
        sweeps = {scale: preset.sweep(cast(Scale, scale)) for scale in SCALES}
        costs = {scale: sweep_cost(sweep)[0] for scale, sweep in sweeps.items()}
    except Exception as err:  # a plugin's preset that cannot be built or estimated: the listing goes on
        return [f"no size: {one_line(err)}"]
    for cost in costs.values():
        rates.update(cost.rates)
    lines = {scale: f"{_count(cost.runs, 'run')}, {_count(cost.trainings, 'training')}, {cost.when()}" for scale, cost in costs.items()}
    if all(sweep == sweeps[SCALES[0]] for sweep in sweeps.values()):
        return [f"every scale: {lines[SCALES[0]]}"]
    return [f"{scale}: {line}" for scale, line in lines.items()]


EXPORTS = ("json", "csv", "html")  # leaderboard --format: records for other tools, and the static page


def _table_format(name: str, *, exports: tuple[str, ...] = ()) -> str:
    from tabulate import tabulate_formats

    if name not in tabulate_formats and name not in exports:
        also = f" (nor {', '.join(exports)})" if exports else ""
        raise SpecError(f"--format {name!r} is not a tabulate format{also}; choose from: {', '.join([*exports, *sorted(tabulate_formats)])}")
    return name


def leaderboard(args: argparse.Namespace) -> int:
    from marginbench.bench.report.output_file import check_output, write_output
    from marginbench.bench.results.readback import read_results

    tablefmt = _table_format(args.format, exports=EXPORTS)
    if tablefmt == "html" and args.output is None:
        raise SpecError("--format html writes a page with its figures: give -o PAGE, e.g. -o leaderboard.html")
    if args.output is not None:
        check_output(Path(args.output), example="leaderboard.html")
    results = read_results(args.dirs, need_examples=True)
    if tablefmt in ("json", "csv"):
        from marginbench.bench.report.export import leaderboard_csv, leaderboard_json

        text = (leaderboard_json if tablefmt == "json" else leaderboard_csv)(results, args.dirs)
    elif tablefmt == "html":
        from marginbench.bench.report.html_page import leaderboard_page
        from marginbench.bench.report.leaderboard_figures import build_leaderboard_figures
        from marginbench.bench.report.paper_figures import build_figures

        figures = {**build_leaderboard_figures(results).drawn, **build_figures(results.summary).drawn}
        text = leaderboard_page(results, args.dirs, figures)
    else:
        from marginbench.bench.report.leaderboard import leaderboard_text

        text = leaderboard_text(results, tablefmt=tablefmt) + "\n"
    if args.output is None:
        print(text, end="")
    else:
        write_output(Path(args.output), text, example="leaderboard.html")
        print(f"wrote {args.output}")
    return 0


def baseline(args: argparse.Namespace) -> int:
    from marginbench.bench.report.check import make_baseline, write_baseline
    from marginbench.bench.report.output_file import check_output

    check_output(Path(args.output), example="baseline.json")  # before any work
    baseline = make_baseline(args.dir)
    write_baseline(baseline, args.output)
    print(f"wrote {args.output}: {len(baseline['values'])} numbers of {args.dir} with their tolerance bands")
    return 0


def check(args: argparse.Namespace) -> int:
    from marginbench.bench.report.check import compare, drift_text, read_baseline
    from marginbench.bench.report.deep_check import deep_check, deep_text

    if args.baseline is None and not args.deep:
        raise SpecError("give --baseline PATH, --deep, or both: there is nothing to check DIR against")
    tablefmt = _table_format(args.format)
    failed = False
    if args.baseline is not None:
        baseline = read_baseline(args.baseline)
        drifted = compare(args.dir, baseline)
        print(drift_text(drifted, checked=len(baseline["values"]), tablefmt=tablefmt))
        failed = not drifted.empty
    if args.deep:
        problems, checked = deep_check(args.dir)
        print(deep_text(problems, checked=checked, tablefmt=tablefmt))
        failed = failed or not problems.empty
    return 1 if failed else 0


def plot(args: argparse.Namespace) -> int:
    from marginbench.bench.results.readback import read_results

    if args.out is None and len(args.dirs) > 1:
        raise SpecError("give -o OUTDIR when plotting several result directories")
    results = read_results(args.dirs)
    rows = results.summary  # the papers' figures need only summary rows; examples.csv may be absent or empty
    if "n_attacked" in rows:
        rows = rows[rows["n_attacked"] > 0]
    if (rows["attack"] == BEST).all():  # only failed runs: nothing to draw, said as `leaderboard` says it
        raise SpecError("the result directories hold no attack rows")
    out = Path(args.out) if args.out is not None else Path(args.dirs[0]) / "figures"
    if out.exists() and not out.is_dir():
        raise SpecError(f"-o {out} exists and is not a directory")
    draw_figures(results, out)
    return 0


def draw_figures(results: Results, out: Path, *, papers: bool = True) -> None:
    """Write the security curves, the leaderboard figure and (``papers``) the papers' figures that ``results``
    support into ``out``; say what was written and skipped."""
    from marginbench.bench.report.leaderboard_figures import build_leaderboard_figures
    from marginbench.bench.report.paper_figures import Figures, build_figures, save_figures

    ours = build_leaderboard_figures(results)
    theirs = build_figures(results.summary) if papers else Figures()
    figures = Figures(drawn={**ours.drawn, **theirs.drawn}, skipped={**ours.skipped, **theirs.skipped})
    try:
        written = save_figures(figures, out)
    except OSError as err:
        raise SpecError(f"cannot write figures to {out}: {err.strerror or err}") from None
    for path in written:
        print(f"wrote {path}")
    for name, reason in figures.skipped.items():
        print(f"skipped {name}: {reason}")
