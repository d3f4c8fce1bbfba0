"""Every default is written once: the command line's options reach the spec fields by the parser's own groups,
and the numbers of the README and docs/ are those of the code."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from marginbench.attacks.exact import EXACT_SECONDS, Exact
from marginbench.bench.cli import make_parser
from marginbench.bench.experiment.families import KKT, KKT_L2_LAMBDA, KKT_L2_MAX_ITERS, KKT_L2_STATIONARITY, SUBSPACE
from marginbench.bench.experiment.run_spec import ATTACK_TIMEOUT, RunSpec
from marginbench.bench.experiment.spec import ExperimentSpec
from marginbench.bench.performance.threads import ONE_THREAD_BELOW_GFLOP
from marginbench.models.train_spec import ARC_LATE_BELOW, ARC_LATE_STEP, ARC_STEP, CHECK_EVERY, MAX_ITERS, NORMALIZED_LR, STALL_ITERS, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
README = "\n".join(page.read_text() for page in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))))
NOT_OPTIONS = {"train"}  # ExperimentSpec: the training group's options set its TrainSpec
TRAIN_NOT_OPTIONS = {"layers", "l2", "late_below"}  # TrainSpec: the recipes' (layers, l2) and a constant (ARC_LATE_BELOW)


def _spec_options() -> tuple[tuple[str, ...], tuple[str, ...]]:
    given = make_parser().parse_args(["run", "--out", "x"]).spec_options
    return given.experiment, given.training


def test_the_run_options_are_the_spec_fields() -> None:
    """Each option of the experiment group is an ExperimentSpec field and each of the training group a TrainSpec
    field, and every field has its option, except those named above."""
    experiment, training = _spec_options()
    assert sorted(experiment) == sorted({f.name for f in fields(ExperimentSpec)} - NOT_OPTIONS)
    assert sorted(training) == sorted({f.name for f in fields(TrainSpec)} - TRAIN_NOT_OPTIONS)


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--init-scale", "0.5"], "init_scale", 0.5),
        (["--exact-seconds", "3"], "exact_seconds", 3.0),
        (["--l2", "0.25"], "l2", 0.25),
        (["--attack-timeout", "7"], "attack_timeout", 7.0),
        (["--n-eval", "9", "--family", "subspace"], "n_eval", 9),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_an_experiment_option_reaches_its_field(argv: list[str], field: str, value: object) -> None:
    from marginbench.bench.cli import specs_from_args

    (spec,) = specs_from_args(make_parser().parse_args(["run", "--out", "x", *argv]))
    assert getattr(spec, field) == value


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [(["--target-loss", "1e-20"], "target_loss", 1e-20), (["--stationarity", "0.5"], "stationarity", 0.5), (["--growth-every", "7"], "growth_every", 7)],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_a_training_option_reaches_its_field_and_l2_stays_the_experiments(argv: list[str], field: str, value: object) -> None:
    from marginbench.bench.cli import specs_from_args

    (spec,) = specs_from_args(make_parser().parse_args(["run", "--out", "x", "--l2", "0.5", *argv]))
    assert getattr(spec.train_spec, field) == value
    assert spec.l2 == 0.5 and spec.train_spec.l2 == 0.0  # --l2 is the experiment's lambda, not the TrainSpec field


def test_a_run_reads_its_experiment() -> None:
    """RunSpec shares ExperimentSpec's settings instead of copying them: every attribute is the experiment's (or,
    for the ones the family fills in, the experiment's resolved value)."""
    spec = ExperimentSpec(family="subspace", d=16, n=12, width=8, init_scale=0.5, l2=0.01, exact_seconds=3.0, models=("vanilla", "l2"), seeds=(4, 5))
    runs = spec.runs()
    assert [(run.model, run.seed) for run in runs] == [("vanilla", 4), ("vanilla", 5), ("l2", 4), ("l2", 5)]
    run = runs[0]
    assert (run.family, run.dataset, run.d, run.n, run.alpha, run.ell, run.n_eval) == ("subspace", "subspace", 16, 12, None, spec.codim, spec.n_eval)
    assert (run.width, run.device, run.train, run.label_rule, run.init_scale, run.l2) == (8, "cpu", spec.train_spec, "random", 0.5, 0.01)
    assert (run.twin, run.exact_seconds, run.attack_timeout, run.experiment) == (None, 3.0, None, spec)
    assert run.run_id == "subspace-subspace-d16-l12-n12-w8-vanilla-x0.5-s4"
    kkt = ExperimentSpec(d=9, alpha=1.0).runs()[0]
    assert (kkt.n, kkt.alpha, kkt.ell, kkt.n_eval, kkt.attack_seconds_limit) == (9, 1.0, None, 0, ATTACK_TIMEOUT)
    assert {f.name for f in fields(RunSpec)} == {"experiment", "model", "seed"}


def test_the_exact_time_limit_is_one_number() -> None:
    assert ExperimentSpec().exact_seconds == Exact().time_limit == EXACT_SECONDS


# The README's defaults: name -> (a pattern around one value or several, the code's values). A default changed
# in the code fails here until the README says so too.
README_DEFAULTS: dict[str, tuple[str, list[object]]] = {
    "exact-seconds": (r"within `--exact-seconds` per example \(default ([\d.]+):", [EXACT_SECONDS]),
    "kkt-l2-lambda": (r"λ = `--l2`, default ([\de.-]+)\)", [KKT_L2_LAMBDA]),
    "kkt-l2-stop": (r"`--stationarity`·λ‖θ‖, default ([\de.-]+)\) or `--max-iters` \(default (\d+)\)", [KKT_L2_STATIONARITY, KKT_L2_MAX_ITERS]),
    "subspace-l2-steps": (r"exactly T = `--max-iters` \(default (\d+)\)", [SUBSPACE.train.max_iters]),
    "subspace-lr": (r"constant step ([\d.]+) \(GD, or SGD", [SUBSPACE.train.lr]),
    "subspace-margin": (r"until every training margin is ≥ ([\d.]+) \|", [SUBSPACE.train.target_margin]),
    "paper-schedule": (
        r"paper's schedule: lr ([\de.-]+), \u00d7([\d.]+) every (\d+) iterations, stop at loss < ([\de.-]+)",
        [KKT.train.lr, KKT.train.lr_growth, KKT.train.growth_every, KKT.train.target_loss],
    ),
    "synopsis-targets": (r"--target-loss ([\de.-]+)  --target-margin ([\d.]+)", [KKT.train.target_loss, SUBSPACE.train.target_margin]),
    "normalized-lr": (r"normalized GD on log L; lr ([\d.]+) unless `--lr`", [NORMALIZED_LR]),
    "arc-step": (r"\u03c1 = `--lr`, default ([\d.]+)\)", [ARC_STEP]),
    "arc-late-step": (r"`--late-lr ([\d.]+)`, once the loss is below ([\de.-]+)", [ARC_LATE_STEP, ARC_LATE_BELOW]),
    "iteration-cap": (r"without `--max-iters` a training stops at ([\d,]+) iterations", [MAX_ITERS]),
    "stuck-checks": (r"every (\d+) iterations the trainer checks", [CHECK_EVERY]),
    "stall": (r"has not moved for ([\d,]+) iterations", [STALL_ITERS]),
    "attack-timeout": (r"`--attack-timeout` seconds \(default (\d+),", [ATTACK_TIMEOUT]),
    "one-thread-below": (r"below (\d+) GFLOP\*\*", [ONE_THREAD_BELOW_GFLOP]),
    "label-rule": (r"labels `--label-rule (\w+)` \(default\)", [ExperimentSpec.label_rule]),
}


@pytest.mark.parametrize("name", README_DEFAULTS)
def test_the_readme_states_the_codes_defaults(name: str) -> None:
    pattern, values = README_DEFAULTS[name]
    found = re.search(pattern, README)
    assert found is not None, f"the README no longer says {pattern!r}: update README_DEFAULTS[{name!r}] to its new wording"
    for text, value in zip(found.groups(), values, strict=True):
        stated: object = text if isinstance(value, str) else float(text.replace(",", ""))
        assert stated == value, f"README: {found.group(0)!r}; the code: {value}"
