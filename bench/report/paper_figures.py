"""The papers' figures from result directories (matplotlib, Agg, PNG).

Each figure is drawn only when the merged summary supports it; otherwise the reason is returned instead:

- ``fig1a_common_c_vs_d``: Vardi et al. Figure 1a. Theorem 4.1's common scale ``common_c`` (the smallest c
  that flips every margin example along -y_i z/||z||) against d, one line per alpha (n = d^alpha), mean and
  standard deviation over seeds, with the sqrt(d) line. Trained kkt models, attack universal-z.
- ``fig1b_common_c_vs_width``: Vardi et al. Figure 1b. The same number against d for n = d, one line per width.
- ``fig2a_margin_fraction``, ``fig2b_not_on_margin``: Vardi et al. Figures 2a/2b. The fraction of training
  examples on the margin (``margin_fraction``) and their number not on it ((1 - margin_fraction) n), against
  d per alpha.
- ``fig4_norm_vs_init_scale``: Melamed et al. Figure 4. The median verified norm of ``pgd-on``, ``pgd-off``
  and ``pgd`` against the factor the first layer's init is divided by (1 / ``init_scale``), one panel per
  dataset and model (two-layer vanilla, three-layer) swept over two or more init scales, lettered (a), (b), ...;
  settings where over half the points were not flipped (median +inf) are named, by panel, in the figure's
  legend instead of plotted. The y-axis is logarithmic on every panel where the norms span WIDE or more.

Every point is the mean over its runs (seeds), with a ± std bar only where it has two or more; each panel's
title says which. Series differ in colour and in (hollow, nested) marker; legends sit outside the axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from marginbench.bench.experiment.families import KKT
from marginbench.bench.registry.registries import MODELS
from marginbench.bench.report.figure_style import WIDE, Style, attack_styles, panel_letter, plain_log_ticks, seeds_note, series_styles
from marginbench.bench.results.store import atomic_write

FIGURES = ("fig1a_common_c_vs_d", "fig1b_common_c_vs_width", "fig2a_margin_fraction", "fig2b_not_on_margin", "fig4_norm_vs_init_scale")
# The attacks each paper figure plots are part of the figure's definition, as a preset names its attacks:
UNIVERSAL = "universal-z"  # Vardi et al. Figures 1a/1b: Theorem 4.1's common scale along its direction
PROJECTED = {"pgd-on": "projected on P", "pgd-off": "projected on P⊥", "pgd": "no projection"}  # Melamed et al. Figure 4's lines


@dataclass(frozen=True, kw_only=True)
class Figures:
    """Figures that the data supports, by name, and the reason for each one it does not."""

    drawn: dict[str, Figure] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _mean_std(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per x: mean and standard deviation of y (NaN for one run: nothing to compute it from), the runs, and
    their seeds (fewer where a point pools runs of several widths, models or directories)."""
    grouped = frame.groupby(x)
    stats = {"mean": grouped[y].mean(), "std": grouped[y].std(ddof=1), "runs": grouped.size(), "seeds": grouped["seed"].nunique()}
    return pd.DataFrame(stats).reset_index()


def _note(stats: list[pd.DataFrame]) -> str:
    """seeds_note of the points in ``stats``: in seeds where each point's runs are its seeds, else in runs."""
    every = pd.concat(stats)
    return seeds_note(every["runs"], unit="seeds" if (every["runs"] == every["seeds"]).all() else "runs")


def _errorbar(ax: Axes, stats: pd.DataFrame, x: str, style: Style, label: str, *, size: float = 7.0) -> None:
    """One series: its mean with a ± std bar at each point of two or more seeds; hollow markers, so that a
    series under another one still shows."""
    ax.errorbar(stats[x], stats["mean"], yerr=stats["std"], color=style.color, marker=style.marker, ls=style.linestyle, mfc="none", ms=size, mew=1.5,
                capsize=3, label=label)  # fmt: skip


def _series(ax: Axes, frame: pd.DataFrame, *, by: str, x: str, y: str, label: str) -> list[pd.DataFrame]:
    """A line per value of ``by`` (each its own colour and marker); each line's _mean_std."""
    groups = list(frame.groupby(by, sort=True))
    drawn = []
    for i, ((value, group), style) in enumerate(zip(groups, series_styles(len(groups)), strict=True)):
        drawn.append(_mean_std(group, x, y))
        _errorbar(ax, drawn[-1], x, style, label.format(value), size=max(11.0 - 1.5 * i, 5.0))  # nested where series meet
    return drawn


def _new(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _finish(fig: Figure, ax: Axes, drawn: list[pd.DataFrame]) -> Figure:
    """Say what the error bars are under the title, and put the legend right of the axes, off the data."""
    ax.set_title(f"{ax.get_title()}\n({_note(drawn)})")
    fig.legend(loc="outside right upper", fontsize=9)
    return fig


def _sqrt_d(ax: Axes, rows: pd.DataFrame) -> None:
    ds = np.linspace(rows["d"].min(), rows["d"].max(), 100)
    ax.plot(ds, np.sqrt(ds), "k--", label="√d")


def _alpha_label(alpha: float) -> str:
    return f"n = d^{alpha:g}"


def _trained_kkt(summary: pd.DataFrame) -> pd.DataFrame:
    """The kkt rows of trained nets (the figures study training; a construction's entry says it is not trained)."""
    return summary[(summary.get("family", KKT.name) == KKT.name) & ~summary["model"].isin(MODELS.constructed(summary["model"]))]


def _fig1a(summary: pd.DataFrame) -> Figure | str:
    if "common_c" not in summary:
        return "no common_c column (no kkt run with universal-z)"
    rows = _trained_kkt(summary)
    rows = rows[(rows["attack"] == UNIVERSAL) & np.isfinite(rows["common_c"].astype(float))]
    if rows["d"].nunique() < 2:
        return f"needs universal-z on trained kkt nets at two or more d; found d in {sorted(rows['d'].unique().tolist())}"
    fig, ax = _new("Vardi et al. Fig. 1a: common perturbation vs d", "input dimension d", "minimal common c (flips all of I)")
    _sqrt_d(ax, rows)
    drawn = _series(ax, rows.assign(series=rows["alpha"].map(_alpha_label)), by="series", x="d", y="common_c", label="{}")
    return _finish(fig, ax, drawn)


def _fig1b(summary: pd.DataFrame) -> Figure | str:
    if "common_c" not in summary:
        return "no common_c column (no kkt run with universal-z)"
    rows = _trained_kkt(summary)
    rows = rows[(rows["attack"] == UNIVERSAL) & (rows["n"] == rows["d"]) & np.isfinite(rows["common_c"].astype(float))]
    if rows["width"].nunique() < 2:
        return f"needs universal-z on trained kkt nets with n = d at two or more widths; found widths {sorted(rows['width'].unique().tolist())}"
    fig, ax = _new("Vardi et al. Fig. 1b: common perturbation, n = d, per width", "input dimension d", "minimal common c (flips all of I)")
    _sqrt_d(ax, rows)
    drawn = _series(ax, rows, by="width", x="d", y="common_c", label="width {}")
    return _finish(fig, ax, drawn)


def _margin_runs(summary: pd.DataFrame) -> pd.DataFrame | str:
    if "margin_fraction" not in summary:
        return "no margin_fraction column (no kkt runs)"
    rows = _trained_kkt(summary).drop_duplicates(["source", "run_id"])
    rows = rows[rows["margin_fraction"].notna()]
    if rows["d"].nunique() < 2:
        return f"needs trained kkt nets at two or more d; found d in {sorted(rows['d'].unique().tolist())}"
    return rows.assign(series=rows["alpha"].map(_alpha_label), not_on_margin=(1 - rows["margin_fraction"]) * rows["n"])


def _margin_figure(summary: pd.DataFrame, *, y: str, title: str, ylabel: str, top: float | None = None) -> Figure | str:
    rows = _margin_runs(summary)
    if isinstance(rows, str):
        return rows
    fig, ax = _new(title, "input dimension d", ylabel)
    drawn = _series(ax, rows, by="series", x="d", y=y, label="{}")
    ax.set_ylim(-0.03 * (top or ax.get_ylim()[1]), top)  # from 0, with room for the markers there
    return _finish(fig, ax, drawn)


def _fig2a(summary: pd.DataFrame) -> Figure | str:
    title = "Vardi et al. Fig. 2a: fraction of examples on the margin"
    return _margin_figure(summary, y="margin_fraction", title=title, ylabel="fraction on the margin", top=1.05)  # 1 inside the frame


def _fig2b(summary: pd.DataFrame) -> Figure | str:
    return _margin_figure(summary, y="not_on_margin", title="Vardi et al. Fig. 2b: examples not on the margin", ylabel="number not on the margin")


def _inf_note(part: pd.DataFrame) -> str:
    """Where one attack's median norm is +inf (over half its points not flipped) on some runs of a panel:
    "2 (1 of 3 seeds), 4, 8", a divisor with no seed count having it on every run (no point drawn there)."""
    notes = []
    for divisor, runs in part.groupby("divisor", sort=True):
        infinite = int(np.isinf(runs["median_norm"]).sum())
        if infinite:
            notes.append(f"{divisor:g}" + ("" if infinite == len(runs) else f" ({infinite} of {len(runs)} seeds)"))
    return ", ".join(notes)


def _fig4(summary: pd.DataFrame) -> Figure | str:
    rows = summary[summary["attack"].isin(PROJECTED) & summary["init_scale"].notna()].copy()
    missing = [a for a in PROJECTED if a not in set(rows["attack"])]
    if missing:
        return f"needs the attacks {', '.join(PROJECTED)} on runs with a known init_scale; missing {', '.join(missing)}"
    # a panel for each (model, dataset) swept over init scales: a net at one scale (a zoo's) has no curve to draw
    scales = rows.groupby(["model", "dataset"])["init_scale"].nunique()
    swept = [pair for pair in sorted(scales.index) if scales[pair] >= 2]
    if not swept:
        return f"needs a model and dataset at two or more init scales; found {sorted(rows['init_scale'].unique().tolist())}"
    rows["divisor"] = 1.0 / rows["init_scale"]  # the paper's x-axis: the factor the init is divided by
    # one panel per dataset, as the paper's 4a (sphere) and 4b (MNIST); one row of panels per model
    columns = min(len(swept), rows["dataset"].nunique())
    lines = -(-len(swept) // columns)
    fig = Figure(figsize=(max(5.0 * columns, 7.0), 3.8 * lines + 1.4), layout="constrained")
    fig.suptitle("Melamed et al. Fig. 4: distance to the boundary vs init divisor")
    styles = attack_styles(PROJECTED)
    norms = rows["median_norm"][np.isfinite(rows["median_norm"])]
    wide = norms.max() > WIDE * norms.min()  # pgd's ~2 and pgd-off's ~100: a log y-axis (on every panel) keeps both readable
    infinite: dict[str, list[str]] = {attack: [] for attack in PROJECTED}
    for i, (model, dataset) in enumerate(swept):
        ax = fig.add_subplot(lines, columns, i + 1)
        panel = rows[(rows["model"] == model) & (rows["dataset"] == dataset)]
        drawn = []
        for j, attack in enumerate(PROJECTED):
            part = panel[panel["attack"] == attack]
            drawn.append(_mean_std(part[np.isfinite(part["median_norm"])], "divisor", "median_norm"))
            _errorbar(ax, drawn[-1], "divisor", styles[attack], attack, size=11.0 - 3.0 * j)  # nested: pgd's marker inside pgd-on's where they agree
            note = _inf_note(part)
            infinite[attack] += [f"{panel_letter(i)} at {note}"] if note else []
        ax.set_title(f"{panel_letter(i)} {model} net, {dataset} data\n({_note(drawn)})", fontsize=10)
        ax.set(xlabel="first-layer init divided by", ylabel="median verified L2 norm" + (" (log scale)" if wide else ""), yscale="log" if wide else "linear")
        if wide:
            plain_log_ticks(ax.yaxis)
        divisors = sorted(panel["divisor"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(divisors, [f"{x:g}" for x in divisors], minor=False)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    # one legend for all panels, below them; where a median is inf it is not drawn, and the legend says where
    labels = [f"{a} ({PROJECTED[a]})" + (f"; median inf (over half not flipped): {'; '.join(infinite[a])}" if infinite[a] else "") for a in PROJECTED]
    fig.legend([styles[a].proxy(label) for a, label in zip(PROJECTED, labels, strict=True)], labels, loc="outside lower center", fontsize=8)
    return fig


_DRAW = {
    "fig1a_common_c_vs_d": _fig1a,
    "fig1b_common_c_vs_width": _fig1b,
    "fig2a_margin_fraction": _fig2a,
    "fig2b_not_on_margin": _fig2b,
    "fig4_norm_vs_init_scale": _fig4,
}


def build_figures(summary: pd.DataFrame) -> Figures:
    """Every figure of FIGURES that ``summary`` (as read by ``read_results``) supports."""
    drawn: dict[str, Figure] = {}
    skipped: dict[str, str] = {}
    for name in FIGURES:
        made = _DRAW[name](summary)
        if isinstance(made, str):
            skipped[name] = made
        else:
            drawn[name] = made
    return Figures(drawn=drawn, skipped=skipped)


def save_figures(figures: Figures, out: Path) -> list[Path]:
    """Write each drawn figure to OUT/<name>.png; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.drawn.items():
        path = out / f"{name}.png"
        atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120))
        paths.append(path)
    return paths
