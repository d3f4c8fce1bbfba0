"""The ``marginbench`` command line: its parser, option types and option conflicts (nothing is run here)."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

import marginbench.bench.cli.commands as commands
from marginbench.bench.cli.help_text import (
    ATTACK_EPILOG,
    BASELINE_EPILOG,
    CHECK_EPILOG,
    LEADERBOARD_EPILOG,
    LIST_EPILOG,
    PLOT_EPILOG,
    THROUGHPUT_EPILOG,
)
from marginbench.bench.cli.option_types import add_plugin_option, comma_list
from marginbench.bench.cli.run_options import add_run_command
from marginbench.bench.experiment.spec import DEVICES
from marginbench.bench.registry.registries import ATTACKS

PROG = "marginbench"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Minimal adversarial perturbation norms of two-layer ReLU networks, against sqrt(d).",
        epilog="Run `marginbench run --help` for the experiment options, `marginbench attack --help` to attack saved models again.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    add_run_command(sub)

    speed = sub.add_parser(
        "throughput",
        help="time the training and attack kernels against the machine's matmul rate",
        description="Time the training step (analytic, and the plain-PyTorch autograd recipe as a yardstick), the "
        "exact line search and minimal-norm PGD, next to the matmul rate measured in the same run at the same shapes.",
        epilog=THROUGHPUT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    speed.add_argument("--device", choices=DEVICES, default="cpu", help="where to run the kernels (default: %(default)s)")
    speed.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json records")
    speed.add_argument(
        "--sizes",
        choices=("small", "paper", "medium"),
        default="small",
        help="small: d=n=64, width 256; paper: also d=n=width=1000; medium: the medium presets' heaviest cell "
        "(d=300, n=5196, width 1000), matmul and training step only, in every precision the device offers",
    )
    speed.set_defaults(handler=commands.throughput)

    attack = sub.add_parser(
        "attack",
        help="attack the saved models of a result directory (no training) and add the rows",
        description="Run attacks on the models and points saved in DIR (runs/<run_id>/model.pt, data.npz), with no training: "
        "the rows are added to each run and to the tables, which are rebuilt; the numbers equal those of a run that had the attack from the start.",
        epilog=ATTACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    attack.add_argument("dir", metavar="DIR", help="result directory written by `marginbench run`")
    # names are checked by the command, which can say which plugin an attack DIR already had came from
    attack.add_argument("--attacks", required=True, type=comma_list, metavar="A,B", help=f"comma-separated attacks to add: {', '.join(ATTACKS.names())}")
    attack.add_argument(
        "--out", metavar="NEWDIR", help="copy DIR to NEWDIR and attack the copy; DIR is left untouched (NEWDIR must lie outside DIR, and DIR outside NEWDIR)"
    )
    attack.add_argument("--overwrite", action="store_true", help="replace the rows of an attack DIR already holds (default: refuse)")
    add_plugin_option(attack)
    attack.set_defaults(handler=commands.attack)

    listing = sub.add_parser(
        "list",
        help="list the registered datasets, models, attacks and presets, where each comes from, and each preset's size per scale",
        description="List every registered name with its source: built-in, an installed distribution (entry point), or a plugin file or module; "
        "and each preset's runs, trainings and estimated training time at each scale.",
        epilog=LIST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_plugin_option(listing)
    listing.set_defaults(handler=commands.listing)
    _add_report_commands(sub)
    return parser


def _add_report_commands(sub: Any) -> None:
    """The subcommands that read finished result directories: leaderboard, baseline, check, plot."""
    raw = argparse.RawDescriptionHelpFormatter
    board = sub.add_parser(
        "leaderboard",
        help="rank models and attacks of one or more result directories",
        description="Ranked tables of models and of attacks.",
        epilog=LEADERBOARD_EPILOG,
        formatter_class=raw,
    )
    board.add_argument("dirs", nargs="+", metavar="DIR", help="result directories written by `marginbench run`")
    board.add_argument(
        "--format",
        default="github",
        metavar="FMT",
        help="a tabulate table format: github (default), plain, simple, grid, latex, ...; or json / csv: both tables as records at full "
        "precision with each directory's provenance (see below); or html: one self-contained page (needs -o)",
    )
    board.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE instead of standard output (required for --format html). A regular file only (a directory, device or FIFO is refused); "
        "a symlink is written through to its target; a result directory's own files (manifest.json, summary.csv, examples.csv, runs/) are refused.",
    )
    board.set_defaults(handler=commands.leaderboard)

    base = sub.add_parser(
        "baseline",
        help="write a regression baseline of a result directory",
        description="Write DIR's numbers and their tolerance bands to a JSON baseline.",
        epilog=BASELINE_EPILOG,
        formatter_class=raw,
    )
    base.add_argument("dir", metavar="DIR", help="result directory written by `marginbench run`")
    base.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="the baseline file to write (JSON). A regular file only (a directory, device or FIFO is refused); "
        "a symlink is written through to its target; a result directory's own files (manifest.json, summary.csv, examples.csv, runs/) are refused.",
    )
    base.set_defaults(handler=commands.baseline)

    check = sub.add_parser(
        "check",
        help="compare a result directory with a baseline, and/or recompute its norms and flips (--deep)",
        description="Check that every number of a baseline is within its band in DIR (--baseline), and/or that every norm and flip "
        "of DIR's examples.csv follows from its saved nets, points and perturbations (--deep). Give one of them, or both.",
        epilog=CHECK_EPILOG,
        formatter_class=raw,
    )
    check.add_argument("dir", metavar="DIR", help="result directory written by `marginbench run`")
    check.add_argument("--baseline", metavar="PATH", help="a file written by `marginbench baseline`")
    check.add_argument(
        "--deep",
        action="store_true",
        help="recompute every norm and flip of examples.csv from runs/*/{model.pt,data.npz,perturbations.npz} (float64, the harness's flip rule)",
    )
    check.add_argument("--format", default="github", metavar="FMT", help="tabulate format of the drift table (default: %(default)s)")
    check.set_defaults(handler=commands.check)

    plot = sub.add_parser(
        "plot",
        help="draw the security curves, the leaderboard and the papers' figures that the data supports (PNG)",
        description="Draw the security-evaluation curves, the leaderboard and the papers' figures from one or more result directories.",
        epilog=PLOT_EPILOG,
        formatter_class=raw,
    )
    plot.add_argument("dirs", nargs="+", metavar="DIR", help="result directories written by `marginbench run`")
    plot.add_argument("-o", "--out", metavar="OUTDIR", help="folder for the PNG files (default: DIR/figures for one DIR; required for several)")
    plot.set_defaults(handler=commands.plot)
