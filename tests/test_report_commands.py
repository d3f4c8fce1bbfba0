"""leaderboard, baseline/check and plot: known orderings, drift detection, figures, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import degenerate_result_dir, figure_summary, known_result_dir, write_result_dir
from marginbench.bench.cli import main
from marginbench.bench.report.check import compare, make_baseline, read_baseline, write_baseline
from marginbench.bench.report.leaderboard import attack_table, leaderboard_text, model_table
from marginbench.bench.report.paper_figures import FIGURES, build_figures, save_figures
from marginbench.bench.report.tables import run_table
from marginbench.bench.results.readback import read_results
from marginbench.bench.results.rows import certify_frames
from marginbench.models.three_layer import three_layer_init

RESULTS = Path(__file__).resolve().parents[1] / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_leaderboard_orders_a_known_case(tmp_path: Path) -> None:
    results = read_results([known_result_dir(tmp_path / "r")])
    models = model_table(results)
    assert list(models["model"]) == ["strong", "weak"] and list(models["rank"]) == [1, 2]
    # weak: per-run medians of best/sqrt(4) are 2.5/2 = 1.25 and 2.75/2 = 1.375; the model's score is their median
    weak = models.set_index("model").loc["weak"]
    assert weak["median"] == pytest.approx((1.25 + 1.375) / 2) and weak["low"] == pytest.approx(1.25) and weak["seeds"] == "0,1"
    attacks = attack_table(results).set_index("attack")
    assert list(attack_table(results)["attack"]) == ["a", "c", "b"]
    assert attacks.loc["a", "optimality"] == pytest.approx(1.0) and attacks.loc["a", "best_on"] == 1.0
    assert attacks.loc["b", "median_ratio"] == pytest.approx(2.0)
    # b: every norm doubled; eps_max = b's largest norm, so nothing is clipped and the areas are 1 : 2
    assert attacks.loc["b", "optimality"] == pytest.approx(0.5)
    # c: ties with a on examples 0, 1 (both count as best there) and fails on 2, 3 (counted at eps_max = 2 * 4 * scale)
    assert attacks.loc["c", "best_on"] == pytest.approx(0.5) and attacks.loc["c", "success"] == pytest.approx(0.5)
    assert attacks.loc["c", "optimality"] == pytest.approx(10 / (1 + 2 + 8 + 8))
    assert attacks.loc["b", "forward_per_example"] == pytest.approx(10.0)


def test_best_on_counts_a_last_bits_tie_as_best_and_a_real_gap_not(tmp_path: Path) -> None:
    """Two attacks on one minimal flip differ in the last bits, which bits being the CPU's: a tie to BEST_TIE."""
    root = known_result_dir(tmp_path / "r")
    examples = pd.read_csv(root / "examples.csv")
    c_rows = examples.index[(examples["attack"] == "c") & np.isfinite(examples["norm"])]
    examples.loc[c_rows[:1], "norm"] *= 1 + 1e-12  # one of c's ties with a, a rounding apart: still best
    examples.loc[c_rows[1:2], "norm"] *= 1 + 1e-3  # the other, a real gap: not
    write_result_dir(root, examples, pd.read_csv(root / "summary.csv"))
    attacks = attack_table(read_results([root])).set_index("attack")
    assert attacks.loc["c", "best_on"] == pytest.approx(7 / 16) and attacks.loc["a", "best_on"] == 1.0  # c tied on 8 of 16, one gap


def test_equal_scores_share_a_rank(tmp_path: Path) -> None:
    root = known_result_dir(tmp_path / "r")
    examples = pd.read_csv(root / "examples.csv")
    examples.loc[examples["model"] == "strong", "norm"] /= 3.0  # now both models score the same
    write_result_dir(root, examples, pd.read_csv(root / "summary.csv"))
    assert list(model_table(read_results([root]))["rank"]) == [1, 1]


def test_leaderboard_cli_merges_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, two = known_result_dir(tmp_path / "one"), known_result_dir(tmp_path / "two")
    assert main(["leaderboard", str(one), str(two), "--format", "plain"]) == 0
    out = capsys.readouterr().out
    assert "optimality" in out and "forward/example" in out and "strong" in out
    assert set(model_table(read_results([one, two]))["runs"]) == {4}  # 2 seeds x 2 directories, kept distinct


def test_committed_baseline_holds_for_a_fresh_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`marginbench run --preset baseline` reproduces results/baseline.json within its bands. (The default preset's check
    against results/default-baseline.json is the README's slow example: tests/test_docs.py.)"""
    out = tmp_path / "run"
    assert main(["run", "--preset", "baseline", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--baseline", str(RESULTS / "baseline.json")]) == 0
    assert "ok: all" in capsys.readouterr().out


def test_check_names_the_metric_moved_beyond_its_band(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "r"
    known_result_dir(root)
    baseline_path = tmp_path / "base.json"
    assert main(["baseline", str(root), "-o", str(baseline_path)]) == 0
    assert main(["check", str(root), "--baseline", str(baseline_path)]) == 0
    summary = pd.read_csv(root / "summary.csv")
    band = read_baseline(baseline_path)["bands"]["*"]
    row = (summary["model"] == "weak") & (summary["attack"] == "b") & (summary["seed"] == 1)
    old = float(summary.loc[row, "median_norm"].iloc[0])
    summary.loc[row, "median_norm"] = old * (1 + 0.5 * band.rel)  # inside the band: still passes
    summary.loc[row, "attack_seconds"] = 99.0  # timings are never checked
    examples = pd.read_csv(root / "examples.csv")
    write_result_dir(root, examples, summary)  # a new result, as a sweep writes it (an edit by hand would not verify)
    capsys.readouterr()
    assert main(["check", str(root), "--baseline", str(baseline_path)]) == 0
    summary.loc[row, "median_norm"] = old * (1 + 10 * band.rel) + 10 * band.abs
    write_result_dir(root, examples, summary)
    capsys.readouterr()
    assert main(["check", str(root), "--baseline", str(baseline_path)]) == 1
    out = capsys.readouterr().out
    assert "DRIFT: 1 of" in out and "median_norm" in out and "kkt-sphere-d4-n4-w8-weak-s1" in out


def test_check_reports_missing_rows_and_infinite_values(tmp_path: Path) -> None:
    root = known_result_dir(tmp_path / "r")
    baseline = make_baseline(root)
    baseline["values"].append({"run_id": "gone", "attack": "a", "metric": "median_norm", "value": math.inf})
    write_baseline(baseline, tmp_path / "b.json")
    assert "Infinity" in (tmp_path / "b.json").read_text()
    drifted = compare(root, read_baseline(tmp_path / "b.json"))
    assert list(drifted["run_id"]) == ["gone"] and math.isnan(drifted["value"].iloc[0])


EXPECTED_LABELS = {
    "fig1a_common_c_vs_d": {"n = d^0.5", "n = d^1", "√d"},
    "fig1b_common_c_vs_width": {"width 32", "width 128", "√d"},
    "fig2a_margin_fraction": {"n = d^0.5", "n = d^1"},
    "fig2b_not_on_margin": {"n = d^0.5", "n = d^1"},
    "fig4_norm_vs_init_scale": {"pgd-on", "pgd-off", "pgd"},  # the figure's legend says what each projects on
}


def test_every_figure_is_drawn_with_its_series_and_saved_as_png(tmp_path: Path) -> None:
    figures = build_figures(figure_summary())
    assert figures.skipped == {} and set(figures.drawn) == set(FIGURES)
    for name, fig in figures.drawn.items():
        ax = fig.axes[0]
        labels = set(ax.get_legend_handles_labels()[1])
        assert labels == EXPECTED_LABELS[name], name
        sqrt_d = [line for line in ax.lines if line.get_label() == "√d"]
        assert "√d" not in labels or max(sqrt_d[0].get_ydata()) == pytest.approx(8.0)  # sqrt(64)
    for path in save_figures(figures, tmp_path / "figs"):
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000


def test_fig4_has_one_panel_per_dataset_and_model_and_names_settings_where_most_points_did_not_flip() -> None:
    summary = figure_summary()
    digits = summary[summary["family"] == "subspace"].assign(dataset="digits", source="z")
    digits.loc[(digits["attack"] == "pgd-off") & (digits["init_scale"] == 16.0), "median_norm"] = np.inf
    fig = build_figures(pd.concat([summary, digits], ignore_index=True)).drawn["fig4_norm_vs_init_scale"]
    models = sorted(summary.loc[summary["family"] == "subspace", "model"].unique())
    panels = [f"({p}) {m} net, {d} data" for p, (m, d) in zip("abcd", [(m, d) for m in models for d in ("digits", "subspace")], strict=False)]
    assert [ax.get_title().splitlines()[0] for ax in fig.axes] == panels
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert "pgd-off (projected on P⊥); median inf (over half not flipped): (a) at 0.0625" in labels
    assert sorted(fig.axes[1].containers[0].lines[0].get_xdata()) == [0.0625, 0.25, 1.0]  # 1 / init_scale


def test_fig1a_averages_seeds_with_error_bars() -> None:
    fig = build_figures(figure_summary()).drawn["fig1a_common_c_vs_d"]
    container = fig.axes[0].containers[0]  # the first errorbar series: n = d^0.5
    y = container.lines[0].get_ydata()
    assert list(y) == pytest.approx([0.2 * np.sqrt(d) + 0.005 for d in (16, 32, 64)])


def test_plot_says_what_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = figure_summary()
    kkt_one_d = summary[(summary["family"] == "kkt") & (summary["d"] == 16)]
    root = write_result_dir(
        tmp_path / "r", pd.DataFrame({"run_id": [], "attack": [], "index": [], "norm": []}), kkt_one_d.drop(columns=["source", "alpha", "init_scale"])
    )
    assert main(["plot", str(root), "-o", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "fig1b_common_c_vs_width.png" in out  # two widths at one d
    assert "skipped fig1a_common_c_vs_d: needs universal-z on trained kkt nets at two or more d" in out
    assert "skipped fig4_norm_vs_init_scale" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["leaderboard", "{tmp}/nope"], "no such result directory"),
        (["leaderboard", "{tmp}"], "has no summary.csv"),
        (["leaderboard", "{tmp}/r", "--format", "fancy"], "is not a tabulate format"),
        (["baseline", "{tmp}/nope", "-o", "{tmp}/b.json"], "no such result directory"),
        (["baseline", "{tmp}/r", "-o", "{tmp}/no/such/b.json"], "does not exist"),
        (["check", "{tmp}/r", "--baseline", "{tmp}/missing.json"], "cannot read baseline"),
        (["check", "{tmp}/r", "--baseline", "{tmp}/r/summary.csv"], "is not valid JSON"),
        (["check", "{tmp}/r", "--baseline", "{tmp}/other.json"], "is not a marginbench baseline"),
        (["check", "{tmp}"], "give --baseline PATH, --deep, or both"),
        (["plot", "{tmp}/nope"], "no such result directory"),
        (["plot", "{tmp}/r", "{tmp}/r"], "give -o OUTDIR"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    known_result_dir(tmp_path / "r")
    (tmp_path / "other.json").write_text("[1, 2]")
    try:
        code = main([a.format(tmp=tmp_path) for a in args])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", ["leaderboard", "baseline", "check", "plot"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "examples:\n  marginbench" in capsys.readouterr().out


def test_a_figure_preset_draws_its_figures_when_the_run_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """paper-fig1a's sweep, shrunk to two tiny settings: `run` writes DIR/figures/fig1a_*.png itself."""
    from marginbench.bench.experiment.spec import ExperimentSpec
    from marginbench.bench.registry.presets import PRESETS, Preset
    from marginbench.models.train import TrainSpec

    fast = TrainSpec(lr=1e-2, lr_growth=1.2, growth_every=10)
    tiny = tuple(ExperimentSpec(d=d, alpha=1.0, width=8, models=("vanilla",), attacks=("universal-z",), train=fast) for d in (6, 8))
    monkeypatch.setitem(PRESETS._factories, "paper-fig1a", Preset(lambda scale: tiny, figures=True))
    out = tmp_path / "fig1a"
    assert main(["run", "--preset", "paper-fig1a", "--out", str(out), "--no-progress"]) == 0
    png = out / "figures" / "fig1a_common_c_vs_d.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- leaderboard semantics: clean accuracy, flags, proved runs (issue 25) ------------------------------------


def _grid(text: str) -> list[dict[str, str]]:
    """The rows of the first github-format table in ``text``, as {header: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    end = next((i for i in range(2, len(cells)) if cells[i] and set(lines[i]) <= set("|-")), len(cells))  # a second table's rule
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:end] if len(row) == len(cells[0])]


def test_a_model_that_never_changes_sign_or_misclassifies_is_flagged_and_ranked_after_the_rest(tmp_path: Path) -> None:
    results = read_results([degenerate_result_dir(tmp_path / "r")])
    models = model_table(results).set_index("model")
    # by score alone positive (+inf) would be first, "most robust"; flagged, it and sloppy come after good
    assert list(models.index) == ["good", "positive", "sloppy"] and list(models["rank"]) == [1, 2, 3]
    assert models.loc["good", "flag"] is None
    assert models.loc["positive", "flag"] == "constant sign; misclassifies 2/4 training points"
    assert models.loc["sloppy", "flag"] == "misclassifies 1/4 training points"
    assert models.loc["sloppy", "clean_accuracy_train"] == 0.75 and models.loc["good", "clean_accuracy_attacked"] == 1.0
    text = leaderboard_text(results)
    assert text.splitlines()[0].startswith("Models, most robust first, flagged ones ranked after the rest")
    rows = {row["model"]: row for row in _grid(text)}
    assert [row["model"] for row in _grid(text)] == ["good", "positive", "sloppy"]
    assert rows["good"]["flag"] == "" and rows["good"]["rank"] == "1" and rows["good"]["train acc"] == "1"
    assert rows["positive"]["flag"] == "constant sign; misclassifies 2/4 training points" and rows["positive"]["best/√d (median)"] == "inf"
    assert rows["sloppy"]["train acc"] == "0.75" and rows["sloppy"]["attacked acc"] == "0.75"


def test_n_identically_zero_is_constant_sign_and_held_out_errors_do_not_flag(tmp_path: Path) -> None:
    root = degenerate_result_dir(tmp_path / "r")
    examples, summary = pd.read_csv(root / "examples.csv"), pd.read_csv(root / "summary.csv")
    examples.loc[examples["model"] == "good", "margin"] = 0.0  # N = 0 on every point
    summary.loc[summary["model"] == "sloppy", ["clean_accuracy_train", "clean_accuracy_attacked"]] = [1.0, 0.5]  # wrong on held-out points only
    write_result_dir(root, examples, summary)
    models = model_table(read_results([root])).set_index("model")
    assert models.loc["good", "flag"] == "constant sign" and models.loc["sloppy", "flag"] is None
    assert list(models.index) == ["sloppy", "positive", "good"] and list(models["rank"]) == [1, 2, 3]


def test_a_directory_from_before_clean_accuracy_renders_blank_never_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = known_result_dir(tmp_path / "old"), degenerate_result_dir(tmp_path / "new")
    assert main(["leaderboard", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    rows = {row["model"]: row for row in _grid(out)}
    assert rows["strong"]["train acc"] == rows["strong"]["attacked acc"] == rows["strong"]["flag"] == ""  # no columns in the old directory
    assert [rows[m]["rank"] for m in ("strong", "weak", "good", "positive", "sloppy")] == ["1", "2", "3", "4", "5"]
    alone = model_table(read_results([old]))
    assert "clean_accuracy_train" not in alone and alone["flag"].isna().all() and list(alone["rank"]) == [1, 2]


def test_runs_fully_proved_is_a_share_of_runs_and_blank_where_none_was(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = attack_table(read_results([known_result_dir(tmp_path / "plain")]))
    assert plain["proved_runs"].isna().all()  # no exact rows: nothing proved
    root = known_result_dir(tmp_path / "exact", exact=True)
    examples = pd.read_csv(root / "examples.csv")
    proved = examples["run_id"].str.endswith("weak-s0")  # one run of four fully proved
    examples.loc[proved, "proved_optimal"] = True
    write_result_dir(root, examples, pd.read_csv(root / "summary.csv"))
    assert set(attack_table(read_results([root]))["proved_runs"]) == {0.25}
    assert main(["leaderboard", str(root)]) == 0
    out = capsys.readouterr().out
    attacks = _grid(out[out.index("Attacks") :])
    assert "vs proved" not in out and {row["runs fully proved"] for row in attacks} == {"0.25"}
    not_proved = known_result_dir(tmp_path / "unproved", exact=True)  # exact ran, but no run has every example proved
    assert attack_table(read_results([not_proved]))["proved_runs"].isna().all()


def test_the_run_table_tells_settings_apart_and_prints_no_nan() -> None:
    rows = []
    for dataset, scale, d, accuracy in (("subspace", 1.0, 784, 0.75), ("subspace", 0.25, 784, 0.7), ("digits", 1.0, 64, 0.98)):
        rows.append({"model": "vanilla", "dataset": dataset, "init_scale": scale, "attack": "best", "seed": 0, "d": d, "n": 100, "width": 100,
                     "success_rate": 1.0, "median_norm": 3.0, "median_norm_over_sqrt_d": 3.0 / math.sqrt(d), "common_c_over_sqrt_d": math.nan,
                     "clean_accuracy_train": 1.0, "clean_accuracy_attacked": accuracy})  # fmt: skip
    text = run_table(pd.DataFrame(rows))
    assert "nan" not in text and "common c" not in text  # a column that applies to no row is left out
    shown = _grid(text)
    assert list(shown[0])[:4] == ["model", "dataset", "init", "attack"]
    settings = [(row["dataset"], row["init"], row["attacked acc"]) for row in shown]
    assert settings == [("digits", "1", "0.98"), ("subspace", "0.25", "0.7"), ("subspace", "1", "0.75")]


def test_the_certified_line_of_a_net_without_a_closed_form_has_no_nan() -> None:
    net = three_layer_init(3, 4, generator=torch.Generator().manual_seed(0))
    X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    frame = pd.DataFrame({"index": range(5), "norm": [1.0, 2.0, np.inf, 0.5, 1.5]})
    lines: list[str] = []
    certify_frames(net, X, [frame], lines.append)
    assert lines == ["  certified: 0/5 examples proved optimal, no certified lower bound (not a two-layer net)"]
    assert frame["lower_bound"].isna().all()
