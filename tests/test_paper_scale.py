"""The papers at their own scale: float32 training, the certification twin, the sweep's cost and progress line,
the medium presets, and Ray runs that ask for GPUs."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import marginbench.bench.execution.twin as twin_module
import marginbench.models.precision as precision_module
from conftest import SWEEP, assert_same_tables, read_json, run_cli
from marginbench.bench.errors import SpecError
from marginbench.bench.execution.estimate import ARC_STEPS_AT_R1, lower_bound_seconds, step_efficiency, steps_estimate
from marginbench.bench.execution.executors import ExecutorSpec
from marginbench.bench.execution.twin import TWIN_TOLERANCE, relative_difference, twin_report
from marginbench.bench.experiment.spec import ExperimentSpec
from marginbench.bench.registry.presets import FAST_TRAIN, PRESETS
from marginbench.bench.results.store import atomic_write
from marginbench.models.datasets import sphere
from marginbench.models.precision import choose_precision
from marginbench.models.train import TrainReport, TrainSpec, train
from marginbench.models.train_spec import ARC_LATE_STEP, arc_schedule
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init

# --- float32 training -------------------------------------------------------------------------------------

# How far a float32 trajectory's normalized margin may land from float64's (d = 16, width 64, arc schedule).
# Measured over 1 and 2 threads and the kernels that other CPUs take (ATEN_CPU_CAPABILITY default/avx2/avx512
# x MKL_ENABLE_INSTRUCTIONS SSE4_2/AVX2/AVX512): -0.02% to -0.31%; one machine's 1e-3 failed on another CPU.
FLOAT32_PATH = 1e-2


def test_float32_training_hands_back_float64_nets_on_the_float64_path() -> None:
    data = sphere(d=16, n=16, seed=0)
    init = pytorch_default_init(16, 64, generator=torch.Generator().manual_seed(0))
    margins = {}
    for precision in ("float64", "float32"):
        net, report = train(init, data.X, data.y, arc_schedule(TrainSpec(), precision=precision))
        assert net.W.dtype == torch.float64 and report.stop_reason == "target_loss"
        margins[precision] = float((data.y * net(data.X)).min()) / net.sq_norm()
    assert margins["float32"] != margins["float64"]  # it did compute in float32 ...
    assert margins["float32"] == pytest.approx(margins["float64"], rel=FLOAT32_PATH)  # ... and landed on the same net


# How far a bf16 trajectory's normalized margin may land from float64's (arc schedule). Measured on a Xeon with
# AMX (family 6 model 167), 1 thread, seeds 0-2 at d = 16, 32, 64 (width 4d) and n = d, d^1.2, d^1.5: -0.45% to
# +0.44% (float32: -0.17% to +0.17%). bf16 rounds the products' inputs to 8 bits, so a different kernel (AVX512_BF16
# without AMX, CUDA tensor cores, oneDNN's emulation elsewhere) moves the net by as much again: 4x the worst seen,
# as FLOAT32_PATH is 3x float32's.
BF16_PATH = 2e-2
DEVICES_HERE = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES_HERE)
@pytest.mark.parametrize(("d", "alpha", "seed"), [(16, 1.0, 0), (16, 1.5, 1), (32, 1.0, 2)], ids=["d16-n16-s0", "d16-n64-s1", "d32-n32-s2"])
def test_bf16_training_hands_back_float64_nets_on_the_float64_path(device: str, d: int, alpha: float, seed: int) -> None:
    data = sphere(d=d, n=round(d**alpha), seed=seed).to(torch.device(device))
    init = pytorch_default_init(d, 4 * d, generator=torch.Generator().manual_seed(seed)).to(torch.device(device))
    late = {"late_lr": ARC_LATE_STEP} if alpha > 1.2 else {}
    margins = {}
    for precision in ("float64", "float32", "bf16"):
        net, report = train(init, data.X, data.y, arc_schedule(TrainSpec(), precision=precision, **late))
        assert net.W.dtype == torch.float64 and net.W.device.type == device and report.stop_reason == "target_loss"
        margins[precision] = float((data.y * net(data.X)).min()) / net.sq_norm()
    assert margins["bf16"] not in (margins["float64"], margins["float32"])  # it did compute in bf16 ...
    assert margins["bf16"] == pytest.approx(margins["float64"], rel=BF16_PATH)  # ... and landed on the same net


def test_float32_precision_is_float32_inputs_bit_for_bit() -> None:
    """precision float32 casts and nothing else: the same bits as float32 nets and data with no precision."""
    data = sphere(d=8, n=8, seed=0)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(0))
    spec = arc_schedule(TrainSpec(), max_iters=50)
    cast, _ = train(init, data.X, data.y, dataclasses.replace(spec, precision="float32"))
    native, _ = train(init.to("cpu", torch.float32), data.X.float(), data.y.float(), spec)
    assert all(torch.equal(a.float(), b) for a, b in zip((cast.W, cast.b, cast.v), (native.W, native.b, native.v), strict=True))


def test_auto_chooses_bf16_where_the_cpu_has_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_info", lambda: ("Some CPU", ("amx_bf16",)))
    choice = choose_precision("auto", "cpu")
    assert (choice.used, choice.dtype, choice.hardware, choice.flags) == ("bf16", torch.float32, "Some CPU", ("amx_bf16",))
    assert "amx_bf16" in choice.reason
    small = choose_precision("auto", "cpu", step_gflop=0.5 * precision_module.AUTO_BF16_MIN_GFLOP)  # where bf16 does not pay
    assert small.used == "float32" and "does not pay" in small.reason
    assert choose_precision("auto", "cpu", step_gflop=2 * precision_module.AUTO_BF16_MIN_GFLOP).used == "bf16"
    assert choose_precision("bf16", "cpu", step_gflop=1e-6).used == "bf16"  # asked for explicitly: kept
    monkeypatch.setattr(precision_module, "cpu_info", lambda: ("Old CPU", ()))
    assert choose_precision("auto", "cpu").used == "float32"
    assert choose_precision("bf16", "cpu").used == "bf16"  # asked for: emulated where the units are missing
    with pytest.raises(ValueError, match="tf32 needs a CUDA device"):
        choose_precision("tf32", "cpu")
    assert run_cli(["run", "--d", "8", "--precision", "tf32", "--out", "unused"]) == 2  # refused before any work


def test_auto_records_its_choice_in_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "auto"
    args = [
        "run", "--d", "8", "--width", "16", "--schedule", "arc", "--precision", "auto", "--models", "vanilla",
        "--attacks", "universal-z", "--out", str(out), "--no-progress",
    ]
    assert run_cli(args) == 0
    (entry,) = read_json(out / "manifest.json")["runs"].values()
    expected = choose_precision("auto", "cpu", step_gflop=4e-9 * 8 * 8 * 16)  # n = d = 8, width 16
    assert entry["precision"] == {**dataclasses.asdict(expected), "flags": list(expected.flags)}
    assert entry["precision"]["requested"] == "auto" and entry["precision"]["used"] in ("bf16", "float32")
    assert entry["precision"]["reason"].startswith("auto: ") and entry["precision"]["hardware"]


def test_an_unknown_precision_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        TrainSpec(precision="float16")  # type: ignore[arg-type]
    assert run_cli(["run", "--d", "8", "--precision", "float16", "--out", "unused"]) == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


# --- the certification twin ------------------------------------------------------------------------------


@pytest.mark.slow
def test_twin_paper_puts_the_paper_schedules_net_beside_the_arc_schedules(tmp_path: Path) -> None:
    """d = 8, width 16: the twin's 72,000 paper-schedule steps take about 30 s."""
    out = tmp_path / "twin"
    args = [
        "run", "--d", "8", "--width", "16", "--schedule", "arc", "--twin", "paper", "--models",
        "vanilla,robust-construction", "--attacks", "universal-z", "--out", str(out), "--no-progress",
    ]
    assert run_cli(args) == 0
    summary = pd.read_csv(out / "summary.csv").query("attack == 'universal-z'").set_index("model")
    fast = summary.loc["vanilla"]
    assert fast["twin_stop_reason"] == "target_loss" and fast["twin_iterations"] > 50 * fast["train_iterations"]
    assert fast["twin_status"] == "ok"
    for key in ("common_c", "normalized_margin", "margin_fraction"):
        assert abs(fast[f"twin_{key}_rel_diff"]) <= TWIN_TOLERANCE
    # the fast net's common c is the universal-z row's; the twin's is the paper-schedule net's
    assert fast["twin_common_c_rel_diff"] == pytest.approx(relative_difference(fast["common_c"], fast["twin_common_c"]), rel=1e-9)
    assert summary.loc["robust-construction", "twin_status"] == "does not apply"


def test_a_twin_that_differs_is_marked_and_reported_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A twin on a quick growing schedule (the baseline preset's) against arc steps 100 times the default: off the path.
    monkeypatch.setattr(twin_module, "twin_spec", lambda run: TrainSpec(lr=1e-2, lr_growth=1.2, growth_every=10))
    out = tmp_path / "differs"
    args = [
        "run", "--d", "8", "--width", "16", "--schedule", "arc", "--lr", "0.3", "--twin", "paper", "--models",
        "vanilla", "--attacks", "universal-z", "--seeds", "0,1", "--out", str(out), "--no-progress",
    ]
    assert run_cli(args) == 0
    summary = pd.read_csv(out / "summary.csv").query("attack == 'universal-z'")
    assert set(summary["twin_status"]) <= {"ok", "differs"} and "differs" in set(summary["twin_status"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("twin differs")]
    assert [line.split(": ")[1] for line in lines] == summary.query("twin_status == 'differs'")["run_id"].tolist()
    assert all("common c" in line and "normalized margin" in line for line in lines)


def test_the_mean_loss_is_the_summed_losss_schedule_at_lr_over_n_stopped_at_n_times_the_target() -> None:
    """Vardi et al.'s eq. (1) sums the loss; the mean divides L and its gradient by n, nothing else (float64)."""
    data = sphere(d=6, n=40, seed=0)
    net = pytorch_default_init(6, 12, generator=torch.Generator().manual_seed(1))
    n, fast = 40, {"lr": 1e-3, "lr_growth": 1.05, "growth_every": 10, "target_loss": 1e-6}
    mean_net, mean = train(net, data.X, data.y, TrainSpec(**fast, reduction="mean"))
    sum_net, summed = train(net, data.X, data.y, TrainSpec(**{**fast, "lr": fast["lr"] / n, "target_loss": fast["target_loss"] * n}))
    assert mean.stop_reason == summed.stop_reason == "target_loss" and mean.iterations == summed.iterations > 100
    assert mean.log10_loss == pytest.approx(summed.log10_loss - math.log10(n), abs=1e-9)
    for a, b in zip((mean_net.W, mean_net.b, mean_net.v), (sum_net.W, sum_net.b, sum_net.v), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="mean loss"):
        TrainSpec(reduction="mean", lr_growth=1.0, l2=0.1)
    # the estimate: to the same point (the mean below 1e-30 / n) the mean's n times slower flow takes ~100 ln(n) / ln(1.1) more steps
    paper, mean_paper = TrainSpec(), TrainSpec(reduction="mean", target_loss=1e-30 / 5196)
    extra = steps_estimate(mean_paper, 5196, 300) - steps_estimate(paper, 5196, 300)
    assert extra == pytest.approx(100 * math.log(5196) / math.log(1.1), rel=0.01)


def test_twin_paper_mean_in_float32_records_what_it_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "mean"
    monkeypatch.setattr(twin_module, "CHECKPOINT_EVERY", 2000)
    saved: list[Path] = []
    monkeypatch.setattr(twin_module, "atomic_write", lambda path, write: (saved.append(path), atomic_write(path, write)))
    args = [
        "run", "--d", "8", "--width", "16", "--schedule", "arc", "--twin", "paper-mean", "--twin-precision", "float32",
        "--models", "vanilla", "--attacks", "universal-z", "--target-loss", "1e-6", "--out", str(out), "--no-progress",
    ]
    assert run_cli(args) == 0
    row = pd.read_csv(out / "summary.csv").query("attack == 'universal-z'").iloc[0]
    assert (row["twin_schedule"], row["twin_precision"], row["twin_stop_reason"]) == ("paper-mean", "float32", "target_loss")
    assert row["twin_status"] in ("ok", "differs") and math.isfinite(row["twin_common_c_rel_diff"])  # 1e-6: not yet on one path
    assert read_json(out / "manifest.json")["specs"][0]["twin_precision"] == "float32"
    # the twin kept its checkpoint in its run's directory, and removed it when done
    assert saved and set(saved) == {out / "runs" / row["run_id"] / "twin.checkpoint.pt"} and not saved[0].exists()


def test_a_killed_twin_resumes_from_its_checkpoint_onto_the_unbroken_twins_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper schedule in pieces (checkpoints every 500 iterations here): the same net, bit for bit, killed or not."""
    data = sphere(d=8, n=20, seed=0)
    init = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(0))
    spec = TrainSpec(lr=1e-3, lr_growth=1.05, growth_every=10, target_loss=1e-6)  # float64: lr 1e-3 x 1.05^k's last bits matter
    whole, whole_report = train(init, data.X, data.y, spec)
    assert whole_report.stop_reason == "target_loss" and whole_report.iterations > 1500
    monkeypatch.setattr(twin_module, "CHECKPOINT_EVERY", 500)
    checkpoint = tmp_path / "runs" / "r" / "twin.checkpoint.pt"
    pieces: list[int] = []

    def killed_after_two(net: TwoLayerNet, X: torch.Tensor, y: torch.Tensor, piece: TrainSpec, **options: object) -> tuple[TwoLayerNet, TrainReport]:
        if len(pieces) == 2:
            raise KeyboardInterrupt
        pieces.append(piece.max_iters)
        return train(net, X, y, piece, **options)

    monkeypatch.setattr(twin_module, "train", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        twin_module.train_twin(init, data, spec, checkpoint)
    assert torch.load(checkpoint, weights_only=True)["iterations"] == 1000
    monkeypatch.setattr(twin_module, "train", train)
    resumed, report = twin_module.train_twin(init, data, spec, checkpoint)
    assert (report.iterations, report.stop_reason) == (whole_report.iterations, "target_loss") and not checkpoint.exists()
    for a, b in zip((resumed.W, resumed.b, resumed.v), (whole.W, whole.b, whole.v), strict=True):
        assert torch.equal(a, b)
    # another init (or spec) does not take that checkpoint: it starts over
    twin_module.train_twin(init, data, spec, checkpoint)  # leaves none
    other = pytorch_default_init(8, 16, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(twin_module, "train", killed_after_two)
    pieces.clear()
    with pytest.raises(KeyboardInterrupt):
        twin_module.train_twin(init, data, spec, checkpoint)
    monkeypatch.setattr(twin_module, "train", train)
    other_net, _ = twin_module.train_twin(other, data, spec, checkpoint)
    assert torch.equal(other_net.W, train(other, data.X, data.y, spec)[0].W)


def test_twin_report_and_relative_difference() -> None:
    row = {
        "twin_status": "differs",
        "twin_common_c_rel_diff": 0.021,
        "twin_normalized_margin_rel_diff": -0.004,
        "twin_margin_fraction_rel_diff": 0.0,
        "twin_stop_reason": "max_iters",
    }
    line = twin_report("r", row)
    assert line is not None and "common c +2.10%" in line and "normalized margin -0.40%" in line and "the twin stopped: max_iters" in line
    assert twin_report("r", {**row, "twin_status": "ok"}) is None
    assert relative_difference(1.01, 1.0) == pytest.approx(0.01)
    assert math.isnan(relative_difference(math.inf, 1.0)) and math.isnan(relative_difference(1.0, 0.0))


def test_twin_applies_to_the_kkt_family_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SpecError, match="twin applies to the kkt family only"):
        ExperimentSpec(family="subspace", d=16, twin="paper")
    with pytest.raises(SpecError, match="twin 'adam' is unknown"):
        ExperimentSpec(d=16, twin="adam")
    assert run_cli(["run", "--family", "subspace", "--d", "16", "--twin", "paper", "--out", "unused"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- the sweep's size, estimate and progress line ---------------------------------------------------------


def test_steps_estimate_follows_the_measured_rule() -> None:
    arc = arc_schedule(TrainSpec())
    assert steps_estimate(arc, 100, 100) == ARC_STEPS_AT_R1
    assert steps_estimate(arc, 1000, 100) == pytest.approx(1473, rel=0.05)  # measured at d = 100, n = 1000
    assert steps_estimate(arc, 10, 100) == pytest.approx(129, rel=0.1)
    assert steps_estimate(arc_schedule(TrainSpec(), max_iters=50), 1000, 100) == 50
    assert steps_estimate(TrainSpec(), 100, 100) > 50_000  # the paper's schedule


def test_the_estimate_counts_the_lower_bounds_and_bf16s_elementwise_share() -> None:
    """The estimate's two measured rules: the certified lower bounds of paper-fig1b's largest full-scale run took
    46 s at 2 threads of the rates 330 (float32) and 150 (float64) GFLOP/s; bf16 steps reach at most 0.3 of
    their matmul rate (the elementwise passes), float32 steps all of theirs."""
    (largest,) = ExperimentSpec(family="kkt", d=1000, alpha=1.0, width=8000, models=("vanilla",)).runs()
    assert lower_bound_seconds(largest, 330.0, 150.0) == pytest.approx(46, rel=0.5)
    (small,) = ExperimentSpec(family="kkt", d=100, alpha=1.0, width=1000, models=("vanilla",)).runs()
    assert lower_bound_seconds(small, 330.0, 150.0) < lower_bound_seconds(largest, 330.0, 150.0) / 50
    assert step_efficiency(32.0, "bf16") == 0.3 and step_efficiency(32.0, "float32") == 1.0
    assert step_efficiency(1.0, "bf16") < step_efficiency(32.0, "bf16")


def test_a_sweep_says_its_size_first_and_shows_one_progress_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", *SWEEP[:-1], "--progress", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    first = err.lstrip().splitlines()[0]
    assert first.startswith("sweep: 6 runs, 3 trainings, ~") and re.search(r"GFLOP/s float64, \d+ threads?; lower bounds included, attacks not counted", first)
    assert "of the estimated work" in err and "6/6 runs" in err and "ETA" in err


# --- the medium scale -------------------------------------------------------------------------------------


def test_the_medium_presets_are_the_issues_grids() -> None:
    fig1a = PRESETS.get("paper-fig1a").sweep("medium")
    runs = [run for spec in fig1a for run in spec.runs()]
    assert len(runs) == 75 and {r.d for r in runs} == {100, 200, 300} and {r.width for r in runs} == {1000}
    assert {r.alpha for r in runs} == {0.5, 0.8, 1.0, 1.2, 1.5} and {r.seed for r in runs} == {0, 1, 2, 3, 4}
    assert FAST_TRAIN.schedule == "arc" and FAST_TRAIN.precision == "auto" and FAST_TRAIN.late_lr is None
    late = {(r.d, r.alpha) for r in runs if r.train == dataclasses.replace(FAST_TRAIN, late_lr=ARC_LATE_STEP)}
    assert late == {(d, a) for d in (100, 200, 300) for a in (1.2, 1.5)}  # n > 2d: the late step
    assert all(r.train == FAST_TRAIN for r in runs if (r.d, r.alpha) not in late)
    fig1b = [run for spec in PRESETS.get("paper-fig1b").sweep("medium") for run in spec.runs()]
    assert {r.width for r in fig1b} == {100, 500, 1000, 2000, 4000, 8000} and all(r.n == r.d for r in fig1b) and len(fig1b) == 90
    fig4 = [run for spec in PRESETS.get("melamed-fig4").sweep("medium") for run in spec.runs()]
    assert {(r.dataset, r.d) for r in fig4} == {("subspace", 784), ("digits", 64)}
    assert {r.model for r in fig4} == {"vanilla", "three-layer"} and len([r for r in fig4 if r.model == "vanilla"]) == 36
    assert PRESETS.get("paper-fig2").sweep("medium") == PRESETS.get("paper-fig1a").sweep("medium")


# --- Ray runs that ask for GPUs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpus_per_run": 0.5}, "gpus_per_run applies to the ray executor only"),
        ({"kind": "ray", "gpus_per_run": 1.5}, "a fraction below 1 or a whole number"),
        ({"kind": "ray", "gpus_per_run": 0.0}, "a fraction below 1 or a whole number"),
    ],
)
def test_bad_gpus_per_run_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ExecutorSpec(**changes)


def test_gpus_per_run_without_ray_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--d", "8", "--gpus-per-run", "0.25", "--out", "unused"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--gpus-per-run needs --executor ray" in line


@pytest.mark.slow
@pytest.mark.ray
def test_ray_schedules_each_run_on_its_share_of_the_declared_gpus(tmp_path: Path, reference_sweep: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is optional: pip install -c constraints.txt -e '.[test,ray]'")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)  # GPUs declared on a CPU machine
    try:
        out = tmp_path / "gpus"
        assert run_cli(["run", *SWEEP, "--executor", "ray", "--gpus-per-run", "0.5", "--out", str(out)]) == 0
    finally:
        ray.shutdown()
    assert_same_tables(reference_sweep, out)  # the runs themselves on the CPU: the sequential sweep's numbers
    manifest = read_json(out / "manifest.json")
    assert manifest["execution"]["gpus_per_run"] == 0.5
    ids = [run["ray_gpu_ids"] for run in manifest["runs"].values()]
    assert len(ids) == 6 and all(len(i) == 1 and i[0] in ("0", "1") for i in ids)



def test_the_paper_schedule_asked_of_a_medium_preset_is_the_papers() -> None:
    from marginbench.bench.cli.commands import specs_from_args
    from marginbench.bench.cli.parser import make_parser

    args = make_parser().parse_args(["run", "--preset", "paper-fig1b", "--scale", "medium", "--schedule", "paper", "--out", "x"])
    train = specs_from_args(args)[0].train_spec
    assert (train.schedule, train.lr, train.lr_growth, train.growth_every, train.precision) == ("paper", 1e-5, 1.1, 100, "auto")
