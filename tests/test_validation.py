"""Every spec is checked before any work: a valid run or one clean line and exit 2, never a traceback.

Property-based: hypothesis draws `marginbench run` argument lists over the whole option space (checked up
to the start of work, so huge sizes cost nothing) and over tiny sizes (run to the end).
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from marginbench.bench.cli import make_parser, prepare_run, run_conflict
from marginbench.bench.experiment.spec import ExperimentSpec, RunSpec, SpecError
from marginbench.bench.registry.presets import PRESETS
from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS, check_names
from marginbench.models.datasets import Dataset

_ODD = ["", " ", "x", "1.5", "1e3", "0x10", "nan", "inf", "-inf", "--d", "-0", "3 4", "\n", "é"]
INTS = st.one_of(st.integers(-5, 10**7).map(str), st.integers(-(2**70), 2**70).map(str), st.sampled_from(_ODD))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(_ODD))
NAMES = st.lists(st.sampled_from([*MODELS.names(), *ATTACKS.names(), *DATASETS.names(), "bogus", "", " "]), max_size=4).map(",".join)
SEEDS = st.one_of(
    st.lists(st.integers(-3, 2**66), max_size=4).map(lambda xs: ",".join(map(str, xs))), st.text(max_size=6), st.sampled_from(["0,0", "1,,2"])
)
OPTIONS = {
    "--preset": st.sampled_from([*PRESETS.names(), "nope"]),
    "--family": st.sampled_from(["kkt", "subspace", "KKT"]),
    "--dataset": st.sampled_from([*DATASETS.names(), "digits", ""]),
    "--d": INTS,
    "--n": INTS,
    "--alpha": FLOATS,
    "--width": INTS,
    "--models": NAMES,
    "--attacks": NAMES,
    "--seeds": SEEDS,
    "--device": st.sampled_from(["cpu", "cuda", "tpu"]),
    "--loss": st.sampled_from(["exp", "logistic", "hinge"]),
    "--target-loss": FLOATS,
    "--max-iters": INTS,
    "--max-seconds": FLOATS,
    "--lr": FLOATS,
    "--lr-growth": FLOATS,
    "--growth-every": INTS,
    "--workers": INTS,
    "--executor": st.sampled_from(["local", "ray", "dask"]),
    "--ray-address": st.sampled_from(["auto", "ray://head:10001", ""]),
}
FLAGS = ["--overwrite", "--progress", "--no-progress"]


@st.composite
def run_arguments(draw: st.DrawFn, options: dict[str, st.SearchStrategy[str]] = OPTIONS) -> list[str]:
    argv: list[str] = []
    for option in draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=7)):
        argv += [option, draw(options[option])]
    return argv + draw(st.lists(st.sampled_from(FLAGS), unique=True, max_size=2))


def _one_clean_line(err: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"marginbench( run)?: error: ", lines[0]), err


@settings(max_examples=300, deadline=None)
@given(argv=run_arguments())
def test_any_arguments_give_a_checked_spec_or_one_clean_line(argv: list[str]) -> None:
    """The layers `marginbench run` goes through before any work: parse, conflicts, spec, executor, names."""
    parser = make_parser()
    stderr = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(stderr):
        try:
            args = parser.parse_args(["run", *argv, "--out", str(Path(tmp) / "o")])
            conflict = run_conflict(args)
            if conflict is not None:
                parser.error(conflict)
            specs, _, _, _ = prepare_run(args)
            for spec in specs:
                check_names(spec)
        except SystemExit as stop:
            event("argparse error")
            assert stop.code == 2
            _one_clean_line(stderr.getvalue())
            return
        except SpecError as err:
            event("spec error")
            _one_clean_line(f"marginbench: error: {err.cli}")
            return
    event("valid spec")
    for spec in specs:
        assert isinstance(spec, ExperimentSpec) and spec.d >= 2 and spec.n_examples >= 2 and spec.width >= 1
        assert all(isinstance(seed, int) and seed >= 0 for seed in spec.seeds)


TINY = {
    "--d": st.integers(0, 5).map(str),
    "--n": st.integers(0, 5).map(str),
    "--alpha": st.sampled_from(["0.5", "1", "-1", "0", "nan"]),
    "--width": st.integers(0, 4).map(str),
    "--models": NAMES,
    "--attacks": NAMES,
    "--seeds": st.sampled_from(["0", "1", "0,1", "-1", "x", "0,0", ""]),
    "--max-iters": st.integers(-1, 40).map(str),
    "--lr": st.sampled_from(["1e-5", "1", "1e300", "-1", "0"]),
    "--loss": st.sampled_from(["exp", "logistic", "hinge"]),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=run_arguments(TINY))
def test_tiny_specs_run_to_the_end_or_fail_in_one_clean_line(argv: list[str]) -> None:
    stderr, stdout = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        out = Path(tmp) / "o"
        # tiny defaults first: the options drawn after them win (argparse keeps the last value)
        code = run_cli(["run", "--d", "4", "--width", "3", "--max-iters", "30", "--attacks", "universal-z", *argv, "--no-progress", "--out", str(out)])
        event(f"exit {code}")
        if code == 2:
            _one_clean_line(stderr.getvalue())
            assert not (out / "summary.csv").exists()
            return
        assert code in (0, 1), stderr.getvalue()
        assert "Traceback" not in stderr.getvalue()
        summary = pd.read_csv(out / "summary.csv")
        assert set(summary["run_status"]) <= {"ok", "failed"}
        assert (code == 1) == (summary["run_status"] == "failed").any()  # a failed run fails the sweep
        for run_id in summary["run_id"].unique():
            assert (out / "runs" / run_id / "COMPLETE").exists()


def _bad_points(kind: str):  # type: ignore[no-untyped-def]
    def factory(run: RunSpec) -> Dataset:
        X = torch.ones(run.n, run.d, dtype=torch.float64)
        y = torch.ones(run.n, dtype=torch.float64)
        if kind == "nan":
            X[1, 0] = float("nan")
        elif kind == "inf":
            X[0, 1] = float("inf")
        else:
            y[0] = 0.0
        return Dataset(name=kind, X=X, y=y)

    return factory


@pytest.mark.parametrize(
    ("kind", "message"),
    [("nan", "training data: X holds NaN or inf"), ("inf", "training data: X holds NaN or inf"), ("labels", "labels must be -1 or +1")],
)
def test_bad_user_data_is_one_line_before_any_work(
    kind: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(DATASETS._factories, f"user-{kind}", _bad_points(kind))
    out = tmp_path / "o"
    assert run_cli(["run", "--dataset", f"user-{kind}", "--d", "4", "--n", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _one_clean_line(err)
    assert f"dataset 'user-{kind}'" in err and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", str(2**64)], "below 2^64"),
        (["--d", "1000", "--alpha", "5"], "gives n = d^alpha above"),
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--executor", "dask"], "invalid choice"),
        (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    ],
)
def test_more_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--d", "8", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    _one_clean_line(err)
    assert message in err


def test_a_spec_is_checked_when_built_in_python_too() -> None:
    """A Python caller is told the field's name; the command line's wording names the option."""
    with pytest.raises(SpecError, match=r"^d must be an integer") as err:
        ExperimentSpec(d=8.0)  # type: ignore[arg-type]
    assert err.value.cli.startswith("--d must be an integer")
    with pytest.raises(SpecError, match=r"^n_eval must be at least 1") as err:
        ExperimentSpec(family="subspace", d=8, n_eval=0)
    assert err.value.cli.startswith("--n-eval must be at least 1")
    with pytest.raises(SpecError, match="seeds must be"):
        ExperimentSpec(seeds=(True,))
