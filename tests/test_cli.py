"""The command line: help, bad input as one clean line with exit 2, determinism."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import QUICK, assert_same_tables, read_json, run_cli, without_timing
from marginbench.bench.cli import main
from marginbench.bench.registry.presets import PRESETS, SCALES
from marginbench.bench.registry.registries import ATTACKS, MODELS


def test_help_names_every_option_and_registered_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--family",
        "--dataset",
        "--d",
        "--n",
        "--alpha",
        "--width",
        "--models",
        "--attacks",
        "--seeds",
        "--device",
        "--loss",
        "--target-loss",
        "--max-iters",
        "--out",
        "--ell",
        "--n-eval",
        "--label-rule",
        "--init-scale",
        "--l2",
        "--batch-size",
        "--target-margin",
        "--scale",
    ):
        assert re.search(rf"(?<![\w-]){option}(?![\w-])", text), option  # a whole option: "--d" is not "--device"
    for name in MODELS.names() + ATTACKS.names() + ["sphere", "subspace", "digits"]:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name  # "pgd" alone, not only in "pgd-on"


def test_python_dash_m_works() -> None:
    done = subprocess.run([sys.executable, "-m", "marginbench", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "run" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--d", "1"], "--d must be at least 2"),
        (["--n", "1"], "at least 2"),
        (["--width", "0"], "--width must be at least 1"),
        (["--alpha", "-1"], "--alpha must be a positive number"),
        (["--alpha", "nan"], "finite number"),
        (["--models", "vanila"], "unknown model 'vanila'; choose from: l2, robust-construction, small-init, three-layer, vanilla"),
        (["--attacks", "pgdd"], "unknown attack 'pgdd'"),
        (["--seeds", "0,x"], "seeds must be comma-separated integers"),
        (["--seeds", "-1"], "non-negative integers"),
        (["--resume", "somewhere", "--out", "elsewhere"], "not allowed with argument"),
        (["--n", "5", "--alpha", "1"], "not allowed with argument"),
        (["--preset", "nope"], "invalid choice"),
        (["--target-loss", "0"], "target loss must be a positive number"),
        (["--lr", "-1"], "learning rate must be > 0"),
        (["--ell", "3"], "--ell applies to subspace data only"),
        (["--family", "subspace", "--ell", "8"], "1 <= ell < d"),
        (["--family", "subspace", "--models", "robust-construction"], "not part of the subspace family"),
        (["--schedule", "normalized", "--batch-size", "8"], "needs full-batch GD"),
        (["--stationarity", "0"], "stationarity must be a tolerance > 0"),
        (["--models", "l2", "--l2", "0"], "give lambda > 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["run", *QUICK, "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_unwritable_or_occupied_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_cli(["run", *QUICK, "--out", str(blocker / "sub")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err
    assert run_cli(["run", *QUICK, "--out", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err
    out = tmp_path / "out"
    assert run_cli(["run", *QUICK, "--models", "robust-construction", "--out", str(out)]) == 0
    capsys.readouterr()
    assert run_cli(["run", *QUICK, "--models", "robust-construction", "--out", str(out)]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert run_cli(["run", *QUICK, "--models", "robust-construction", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_without_a_gpu_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", *QUICK, "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_cpu(tmp_path: Path) -> None:
    for device in ("cpu", "cuda"):
        assert run_cli(["run", *QUICK, "--device", device, "--out", str(tmp_path / device)]) == 0
    cpu, gpu = (pd.read_csv(tmp_path / dev / "examples.csv") for dev in ("cpu", "cuda"))
    pd.testing.assert_series_equal(cpu["success"], gpu["success"])
    pd.testing.assert_series_equal(cpu["norm"], gpu["norm"], rtol=1e-6)


def test_same_spec_and_seed_give_identical_results(tmp_path: Path) -> None:
    """Every result file is identical apart from timings: tables, manifest, and each run's files byte for byte."""
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run_cli(["run", *QUICK, "--seeds", "3,4", "--out", str(out)]) == 0
    assert_same_tables(a, b)
    assert without_timing(read_json(a / "manifest.json")) == without_timing(read_json(b / "manifest.json"))
    run_dirs = sorted(p.name for p in (a / "runs").iterdir())
    assert run_dirs == sorted(p.name for p in (b / "runs").iterdir()) and len(run_dirs) == 4
    for run_id in run_dirs:
        for name in ("model.pt", "data.npz", "perturbations.npz", "examples.csv"):
            assert (a / "runs" / run_id / name).read_bytes() == (b / "runs" / run_id / name).read_bytes(), (run_id, name)
        first, second = (read_json(out / "runs" / run_id / "run.json") for out in (a, b))
        assert without_timing(first) == without_timing(second)


def test_run_prints_the_table_of_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One printed line per summary.csv row, whose median norm is that row's, rounded."""
    assert run_cli(["run", *QUICK, "--out", str(tmp_path / "o")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    summary = pd.read_csv(tmp_path / "o" / "summary.csv")
    assert len(rows) == len(summary) == 4  # (vanilla, robust-construction) x (universal-z, best)
    assert header[:4] == ["model", "dataset", "init", "attack"] and {"train acc", "attacked acc"} <= set(header)
    assert "nan" not in " ".join(lines)  # blank where a column does not apply (common c/√d on best, training stop on the construction)
    for row in rows:
        (expected,) = summary.loc[(summary["model"] == row["model"]) & (summary["attack"] == row["attack"]), "median_norm"]
        assert float(row["median norm"]) == pytest.approx(expected, rel=1e-3)
        assert float(row["median/√d"]) == pytest.approx(expected / math.sqrt(8), rel=1e-3)
        assert row["dataset"] == "sphere" and float(row["init"]) == 1.0
        (accuracy,) = summary.loc[(summary["model"] == row["model"]) & (summary["attack"] == row["attack"]), "clean_accuracy_train"]
        assert float(row["train acc"]) == float(row["attacked acc"]) == pytest.approx(accuracy)  # sphere data: the attacked points are the training ones
        assert accuracy == 1.0 or row["model"] == "vanilla"  # the construction classifies its points; vanilla, trained briefly, need not


def test_subspace_family_runs_from_the_command_line(tmp_path: Path) -> None:
    args = ["run", "--family", "subspace", "--d", "24", "--ell", "16", "--n", "12", "--n-eval", "6", "--width", "16",
            "--max-iters", "200", "--attacks", "universal-z", "--no-progress", "--out", str(tmp_path / "o")]  # fmt: skip
    assert run_cli(args) == 0
    summary = pd.read_csv(tmp_path / "o" / "summary.csv")
    assert set(summary["model"]) == {"vanilla", "small-init", "l2"}
    for column in ("median_k", "median_g_off", "median_g_off_lower", "median_g_off_upper", "off_weight_drift", "thm51_assumption"):
        assert column in summary
    examples = pd.read_csv(tmp_path / "o" / "examples.csv")
    assert len(examples) == 3 * 2 * 6 and {"k", "g_off", "g_off_lower", "g_off_upper"} <= set(examples.columns)
    assert (summary["ell"] == 16).all()
    accuracy = summary.drop_duplicates("run_id")
    assert accuracy["clean_accuracy_train"].between(0, 1).all() and accuracy["clean_accuracy_attacked"].between(0, 1).all()
    # the attacked points are the 6 held-out ones: the accuracy counts examples.csv's margins y N(x) > 0 there
    margins = examples[examples["attack"] == "best"].groupby("run_id")["margin"].apply(lambda m: float((m > 0).mean()))
    assert dict(zip(accuracy["run_id"], accuracy["clean_accuracy_attacked"], strict=True)) == pytest.approx(margins.to_dict())


@pytest.mark.slow
def test_throughput_json_has_the_documented_records(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from marginbench.bench.performance.throughput import TAGS

    assert main(["throughput", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["kernel"] for r in records} >= {"matmul-fp64", "train-step-fp64", "autograd-step-fp64", "line-search (universal-z)"}
    for record in records:
        assert set(record) == {
            "kernel",
            "shape",
            "seconds",
            "gflops",
            "fraction_of_matmul",
            "examples_per_s",
            "median_norm_over_sqrt_d",
            "examples_per_s_over_fb_fmn",
            "normalized_margin",
            "common_c_over_sqrt_d",
            "speedup_over_recipe",
            "steps",
            "precision",
            "fraction_of_matmul_by_precision",
        }
        assert record["seconds"] > 0 and record["examples_per_s"] > 0
        assert record["shape"] == "d=64 n=64 width=256"
    # The rates follow from the shape and the seconds: a training step is two (n, d) x (d, width) products.
    step = next(r for r in records if r["kernel"] == "train-step-fp64")
    assert step["gflops"] == pytest.approx(1e-9 * 4 * 64 * 64 * 256 / step["seconds"])
    assert step["examples_per_s"] == pytest.approx(64 / step["seconds"])
    assert 0 < step["fraction_of_matmul"] < 10  # against the matmul rate measured in the same run
    assert step["precision"] == "float64" and step["fraction_of_matmul_by_precision"]["float64"] == pytest.approx(step["fraction_of_matmul"])
    offered = {r["precision"] for r in records if r["kernel"].startswith("matmul")}
    assert offered >= {"float64", "float32"} and set(step["fraction_of_matmul_by_precision"]) == offered
    assert {f"train-step-{TAGS[p]}" for p in offered} <= {r["kernel"] for r in records}  # bf16 too where the CPU has the units
    pgd = next(r for r in records if r["kernel"].startswith("pgd"))
    fmn = next(r for r in records if r["kernel"].startswith("fb-fmn"))  # foolbox is in the test extra
    assert 0 < pgd["examples_per_s_over_fb_fmn"] < math.inf
    # Foolbox 3.3.4's FMN never projects onto its eps-ball, so the minimal-norm PGD's median is not above it.
    assert 0 < pgd["median_norm_over_sqrt_d"] <= fmn["median_norm_over_sqrt_d"] < math.inf


@pytest.mark.slow
def test_time_to_margin_records_reach_the_recipes_margin() -> None:
    """The paper recipe (plain PyTorch) sets the target margin; every schedule's record says how far it got."""
    from marginbench.bench.performance.throughput import time_to_margin

    records = time_to_margin(torch.device("cpu"), shape=(8, 8, 16))
    recipe, *others = records
    assert recipe.kernel.startswith("paper recipe") and recipe.speedup_over_recipe == 1
    assert [r.kernel for r in others] == [
        "paper schedule, analytic step, fp64", "normalized schedule, fp64", "normalized schedule, fp32",
        "arc schedule, fp64 (to loss 1e-30)", "arc schedule, fp32 (to loss 1e-30)",
    ]  # fmt: skip
    margin_targeted, arc = others[:3], others[3:]
    for record in margin_targeted:
        assert record.normalized_margin >= recipe.normalized_margin * (1 - 1e-6)  # fp32: the margin in fp64 of fp32 weights
    for record in arc:  # stopped at the recipe's loss, not its margin: the same network to within 1%
        assert record.normalized_margin == pytest.approx(recipe.normalized_margin, rel=0.01)
        assert record.steps is not None and record.steps < recipe.steps / 10
    for record in others:
        assert record.seconds > 0 and 0 < record.speedup_over_recipe < math.inf
        assert record.common_c_over_sqrt_d == pytest.approx(recipe.common_c_over_sqrt_d, rel=0.1)


def _preset_section(listing: str, name: str) -> str:
    return listing.split(f"\npreset {name}: ", 1)[1].split("\npreset ", 1)[0]


def test_list_shows_each_presets_scales_with_their_size_and_estimated_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    fig1a = _preset_section(out, "paper-fig1a")
    for scale in SCALES:  # the counts from the preset itself (medium: 75 runs)
        runs = sum(len(spec.runs()) for spec in PRESETS.get("paper-fig1a").sweep(scale))
        assert re.search(rf"^    {scale}: {runs} runs, \d+ trainings?, (under a minute|~\d+ min)$", fig1a, re.M), fig1a
    assert re.search(r"^    every scale: 4 runs, 2 trainings, ", _preset_section(out, "smoke"), re.M)  # the same sweep at every scale: one line
    (basis,) = [line for line in out.splitlines() if line.startswith("preset times: ")]
    assert "estimates before a sweep" in basis and "GFLOP/s" in basis
