"""What a reader of the figures would stumble on, checked on the matplotlib objects the drawing functions return:
one x-scale across the security curves' panels, an own (colour, marker) per attack, attacks that flip nothing
named in the legend instead of drawn on the frame, axes that hold the certified band and the reference lines,
error bars only where there are seeds to compute them, and legends and titles off the data and on the canvas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from conftest import figure_summary, known_result_dir, layout_problems, write_result_dir
from marginbench.bench.experiment.families import KKT
from marginbench.bench.registry.registries import ATTACKS
from marginbench.bench.report.figure_style import attack_styles, seeds_note
from marginbench.bench.report.leaderboard_figures import build_leaderboard_figures
from marginbench.bench.report.paper_figures import build_figures
from marginbench.bench.report.security_curves import BAND, NO_FLIP, SQRT_D, THEOREM
from marginbench.bench.results.readback import read_results

INF = math.inf


def _curves_dir(root: Path, norms: dict[str, dict[str, list[float]]], *, bounds: dict[str, list[float]] | None = None,
                radius: dict[str, float] | None = None, seeds: tuple[int, ...] = (0,)) -> Path:  # fmt: skip
    """A result directory of kkt runs at d = 4 (sqrt(d) = 2), four examples each: per model, each attack's norms
    (the same on every seed), its certified lower bounds where ``bounds`` names it and Theorem 3.1's radius where
    ``radius`` does."""
    ex, su = [], []
    for model, attacks in norms.items():
        for seed in seeds:
            run_id = f"kkt-sphere-d4-n4-w8-{model}-s{seed}"
            for attack, values in attacks.items():
                for i, value in enumerate(values):
                    ex.append({"run_id": run_id, "family": "kkt", "dataset": "sphere", "model": model, "attack": attack, "seed": seed, "index": i,
                               "label": 1 - 2 * (i % 2), "margin": 1.0, "on_margin": True, "norm": value, "success": math.isfinite(value),
                               "lower_bound": (bounds or {}).get(model, [math.nan] * 4)[i]})  # fmt: skip
                su.append({"run_id": run_id, "family": "kkt", "dataset": "sphere", "model": model, "attack": attack, "seed": seed, "d": 4, "n": 4,
                           "width": 8, "n_attacked": 4, "median_norm": float(np.median(values)),
                           "construction_radius": (radius or {}).get(model, math.nan), "run_status": "ok"})  # fmt: skip
    return write_result_dir(root, pd.DataFrame(ex), pd.DataFrame(su), preset="default", specs=[])


def _curves(root: Path) -> Figure:
    return build_leaderboard_figures(read_results([root])).drawn["security_curves"]


def _labels(ax_or_fig: object) -> list[str]:
    if isinstance(ax_or_fig, Figure):
        return [text.get_text() for legend in ax_or_fig.legends for text in legend.get_texts()]
    return list(ax_or_fig.get_legend_handles_labels()[1])  # type: ignore[attr-defined]


def _line(ax: object, label: str) -> Line2D:
    return next(line for line in ax.lines if line.get_label() == label)  # type: ignore[attr-defined]


NEAR = {"a": [1.0, 2.0, 3.0, 4.0]}  # over sqrt(d): 0.5 .. 2, with the sqrt(d) line at 1: a linear axis would do
FAR = {"a": [1.0, 2.0, 3.0, 4.0], "b": [40.0, 80.0, 120.0, 160.0]}  # b overshoots 40x: a log axis


def test_every_panel_of_the_curves_has_the_same_x_scale(tmp_path: Path) -> None:
    both = _curves(_curves_dir(tmp_path / "both", {"near": NEAR, "far": FAR}))
    assert [ax.get_xscale() for ax in both.axes] == ["log", "log"]
    assert all(ax.get_xlabel() == "ε / √d (log scale)" for ax in both.axes)
    alone = _curves(_curves_dir(tmp_path / "near", {"near": NEAR}))
    assert [ax.get_xscale() for ax in alone.axes] == ["linear"]  # the rule is shared, not "always log"


def test_an_attack_that_flips_nothing_is_named_in_the_legend_and_not_drawn(tmp_path: Path) -> None:
    fig = _curves(_curves_dir(tmp_path / "r", {"far": {**FAR, "c": [1.5] * 4}, "near": {**NEAR, "c": [INF] * 4}}))
    far, near = fig.axes  # panels in model order: (a) far, (b) near
    assert "c" in _labels(far) and "c" not in _labels(near)  # no curve along the frame at 1
    assert all(line.get_label() != "c" for line in near.lines)
    assert f"c ({NO_FLIP} in (b))" in _labels(fig)
    single = _curves(_curves_dir(tmp_path / "one", {"near": {**NEAR, "c": [INF] * 4}}))
    assert f"c ({NO_FLIP})" in _labels(single) and "a" in _labels(single)


def test_the_x_range_holds_the_certified_band_the_sqrt_d_line_and_theorem_3_1s_radius(tmp_path: Path) -> None:
    # the construction's best is 1..4 over sqrt(d); its bounds 0.2..0.8 and radius 0.1 lie far left of it
    construction = {"a": [2.0, 4.0, 6.0, 8.0], "b": [200.0, 400.0, 600.0, 800.0]}
    root = _curves_dir(tmp_path / "r", {"construction": construction, "plain": NEAR},
                       bounds={"construction": [0.4, 0.8, 1.2, 1.6]}, radius={"construction": 0.2})  # fmt: skip
    built, plain = _curves(root).axes
    low, high = built.get_xlim()
    assert low <= 0.1 and high >= 400.0  # the radius, the smallest bound and the largest norm
    assert BAND in _labels(built)
    band = next(c for c in built.collections if c.get_label() == BAND)
    assert band.get_paths()[0].vertices[:, 0].min() <= 0.2  # the band starts at the smallest bound, not cut off
    assert list(_line(built, SQRT_D).get_xdata()) == [1.0, 1.0] and list(_line(built, THEOREM).get_xdata()) == [0.1, 0.1]
    assert plain.get_xlim()[0] <= 1.0 <= plain.get_xlim()[1] and SQRT_D in _labels(plain)
    assert THEOREM not in _labels(plain) and BAND not in _labels(plain)  # no radius, no bound above 0: nothing certified


def test_distinct_attacks_get_distinct_colour_and_marker_and_wrappers_are_dashed() -> None:
    styles = attack_styles(ATTACKS.names())
    pairs = [(s.color, s.marker) for s in styles.values()]
    assert len(set(pairs)) == len(pairs)
    assert {a for a, s in styles.items() if s.linestyle == "--"} == {a for a in ATTACKS.names() if ATTACKS.entry(a).library}
    default = attack_styles(KKT.default_attacks)  # the default run's eleven attacks
    assert len({s.color for s in default.values()}) == len(default)  # each its own colour
    assert styles["fmn"].color != styles["fb-fmn"].color and styles["boundary-walk"].color != styles["fb-boundary"].color


def test_the_drawn_curves_differ_in_colour_and_marker(tmp_path: Path) -> None:
    attacks = {name: [float(k + 1)] * 4 for k, name in enumerate(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"])}
    ax = _curves(_curves_dir(tmp_path / "r", {"m": attacks})).axes[0]
    drawn = [(tuple(line.get_color()), line.get_marker()) for line in ax.lines if line.get_label() in attacks]
    assert len(drawn) == len(attacks) == len(set(drawn))


def test_the_leaderboard_draws_a_spread_only_from_two_runs_and_optimality_per_model(tmp_path: Path) -> None:
    one = build_leaderboard_figures(read_results([_curves_dir(tmp_path / "one", {"near": {**NEAR, "c": [INF] * 4}, "far": FAR})])).drawn["leaderboard"]
    models, grid = one.axes[0], one.axes[1]

    def spreads(ax: object) -> int:
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]  # type: ignore[attr-defined]
        return sum(len(seg) for c in bars for col in c.lines[2] if isinstance(col, LineCollection) for seg in [col.get_segments()])

    assert spreads(models) == 0 and "one run each" in models.get_xlabel()
    values = grid.get_images()[0].get_array()
    assert values.shape == (3, 3)  # attacks a, b, c; the pooled column and one per model setting
    assert NO_FLIP in [t.get_text() for t in grid.texts]  # c on near
    two = build_leaderboard_figures(read_results([known_result_dir(tmp_path / "two")])).drawn["leaderboard"]
    assert spreads(two.axes[0]) == 2 and "min..max over runs" in two.axes[0].get_xlabel()


@pytest.mark.parametrize("exact", [False, True], ids=["plain", "exact"])
def test_the_leaderboard_figures_keep_legends_off_the_data_and_titles_on_the_canvas(tmp_path: Path, exact: bool) -> None:
    figures = build_leaderboard_figures(read_results([known_result_dir(tmp_path / "r", exact=exact)])).drawn
    single = build_leaderboard_figures(read_results([_curves_dir(tmp_path / "one", {"near": {**NEAR, "c": [INF] * 4}})])).drawn
    lone = build_leaderboard_figures(read_results([_curves_dir(tmp_path / "lone", {"near": NEAR})])).drawn["leaderboard"]  # one attack: one row
    for name, fig in [*figures.items(), *(("single " + k, f) for k, f in single.items()), ("one attack", lone)]:
        assert layout_problems(fig) == [], name


def test_the_zoos_figures_are_readable() -> None:
    """The committed zoo: six settings, fifteen attacks, lower bounds, a construction."""
    zoo = read_results([Path(__file__).resolve().parents[1] / "results" / "zoo"])
    figures = build_leaderboard_figures(zoo).drawn
    for name, fig in figures.items():
        assert layout_problems(fig) == [], name
    curves = figures["security_curves"]
    assert len({ax.get_xscale() for ax in curves.axes}) == 1
    construction = next(ax for ax in curves.axes if "robust-construction" in ax.get_title())
    assert THEOREM in _labels(construction) and construction.get_xlim()[0] <= _line(construction, THEOREM).get_xdata()[0]
    assert any(NO_FLIP in label for label in _labels(curves))  # pgd, fmn, ... on the construction


# --- the papers' figures -------------------------------------------------------------------------------------


def test_the_papers_figures_keep_legends_off_the_data_and_titles_on_the_canvas() -> None:
    summary = figure_summary()
    digits = summary[summary["family"] == "subspace"].assign(dataset="digits", source="z")
    for name, fig in build_figures(pd.concat([summary, digits], ignore_index=True)).drawn.items():
        assert layout_problems(fig) == [], name


def _finite_error_bars(fig: Figure) -> int:
    return sum(int(np.size(seg) > 0 and np.isfinite(seg).all()) for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)
               for col in c.lines[2] for seg in col.get_segments())  # fmt: skip


def test_plus_minus_std_only_where_there_are_two_seeds_to_compute_it() -> None:
    summary = figure_summary()
    one_seed = build_figures(summary[summary["seed"] == 0]).drawn
    for name in ("fig1b_common_c_vs_width", "fig4_norm_vs_init_scale"):  # a line per width, per attack: one run a point
        fig = one_seed[name]
        assert all("±" not in ax.get_title() and "(one seed: no error bars)" in ax.get_title() for ax in fig.axes), name
        assert _finite_error_bars(fig) == 0, name
    # Figure 1a's points pool the two widths of each alpha: two runs, of one seed, and the title says runs
    assert "(mean ± std over 2 runs)" in one_seed["fig1a_common_c_vs_d"].axes[0].get_title()
    for name, fig in build_figures(summary[summary["width"] == 128]).drawn.items():
        if name != "fig1b_common_c_vs_width":  # one width: not drawn
            assert all("(mean ± std over 2 seeds)" in ax.get_title() for ax in fig.axes), name
            assert _finite_error_bars(fig) > 0, name


def _series_lines(ax: object) -> dict[str, Line2D]:
    return {str(c.get_label()): c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)}  # type: ignore[attr-defined]


def test_fig4_says_per_panel_what_its_bars_are_and_keeps_pgd_on_visible_under_pgd() -> None:
    summary = figure_summary()
    digits = summary[(summary["family"] == "subspace") & (summary["seed"] == 0)].assign(dataset="digits", source="z")  # one seed
    fig = build_figures(pd.concat([summary, digits], ignore_index=True)).drawn["fig4_norm_vs_init_scale"]
    assert [ax.get_title().splitlines()[1] for ax in fig.axes] == ["(one seed: no error bars)", "(mean ± std over 2 seeds)"]
    lines = list(_series_lines(fig.axes[1]).values())  # drawn in the order pgd-on, pgd-off, pgd
    assert list(_series_lines(fig.axes[1])) == ["pgd-on", "pgd-off", "pgd"]
    assert len({(tuple(line.get_color()), line.get_marker()) for line in lines}) == 3
    sizes = [line.get_markersize() for line in lines]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3  # nested hollow markers: the one drawn first is largest
    assert all(line.get_markerfacecolor() == "none" for line in lines)


def test_fig4s_panels_share_one_y_scale() -> None:
    summary = figure_summary()
    narrow = summary[summary["family"] == "subspace"].assign(dataset="digits", source="z")
    narrow["median_norm"] = 2.0 + 0.1 * narrow["init_scale"]  # alone, 2.1 .. 3.6: a linear axis would do
    fig = build_figures(pd.concat([summary, narrow], ignore_index=True)).drawn["fig4_norm_vs_init_scale"]
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log"]  # the subspace panel's pgd-off spans 0.25 .. 4.9
    alone = build_figures(pd.concat([summary[summary["family"] == "kkt"], narrow], ignore_index=True)).drawn["fig4_norm_vs_init_scale"]
    assert [ax.get_yscale() for ax in alone.axes] == ["linear"]


NOTES = [
    ([1, 1], "one seed: no error bars"),
    ([3, 3], "mean ± std over 3 seeds"),
    ([2, 3], "mean ± std over 2 to 3 seeds"),
    ([1, 3], "mean ± std over up to 3 seeds, no bar where one"),
]


@pytest.mark.parametrize(("runs", "note"), NOTES)
def test_seeds_note(runs: list[int], note: str) -> None:
    assert seeds_note(runs) == note
