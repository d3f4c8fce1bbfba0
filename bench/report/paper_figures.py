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
  dataset and model (two-layer vanilla, three-layer) swept over two or more init scales, mean and standard
  deviation over seeds; settings where over half the points were not flipped (median +inf) are named in the
  legend instead of plotted.
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
    """Per x: mean and standard deviation (0 for one seed) of y."""
    grouped = frame.groupby(x)[y]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1).fillna(0.0), "runs": grouped.size()}).reset_index()


def _series(ax: Axes, frame: pd.DataFrame, *, by: str, x: str, y: str, label: str) -> None:
    for value, group in frame.groupby(by, sort=True):
        stats = _mean_std(group, x, y)
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=label.format(value))


def _new(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


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
    _series(ax, rows.assign(series=rows["alpha"].map(_alpha_label)), by="series", x="d", y="common_c", label="{}")
    ds = np.linspace(rows["d"].min(), rows["d"].max(), 100)
    ax.plot(ds, np.sqrt(ds), "k--", label="√d")
    ax.legend()
    return fig


def _fig1b(summary: pd.DataFrame) -> Figure | str:
    if "common_c" not in summary:
        return "no common_c column (no kkt run with universal-z)"
    rows = _trained_kkt(summary)
    rows = rows[(rows["attack"] == UNIVERSAL) & (rows["n"] == rows["d"]) & np.isfinite(rows["common_c"].astype(float))]
    if rows["width"].nunique() < 2:
        return f"needs universal-z on trained kkt nets with n = d at two or more widths; found widths {sorted(rows['width'].unique().tolist())}"
    fig, ax = _new("Vardi et al. Fig. 1b: common perturbation, n = d, per width", "input dimension d", "minimal common c (flips all of I)")
    _series(ax, rows, by="width", x="d", y="common_c", label="width {}")
    ds = np.linspace(rows["d"].min(), rows["d"].max(), 100)
    ax.plot(ds, np.sqrt(ds), "k--", label="√d")
    ax.legend()
    return fig


def _margin_runs(summary: pd.DataFrame) -> pd.DataFrame | str:
    if "margin_fraction" not in summary:
        return "no margin_fraction column (no kkt runs)"
    rows = _trained_kkt(summary).drop_duplicates(["source", "run_id"])
    rows = rows[rows["margin_fraction"].notna()]
    if rows["d"].nunique() < 2:
        return f"needs trained kkt nets at two or more d; found d in {sorted(rows['d'].unique().tolist())}"
    return rows.assign(series=rows["alpha"].map(_alpha_label), not_on_margin=(1 - rows["margin_fraction"]) * rows["n"])


def _margin_figure(summary: pd.DataFrame, *, y: str, title: str, ylabel: str) -> Figure | str:
    rows = _margin_runs(summary)
    if isinstance(rows, str):
        return rows
    fig, ax = _new(title, "input dimension d", ylabel)
    _series(ax, rows, by="series", x="d", y=y, label="{}")
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig


def _fig2a(summary: pd.DataFrame) -> Figure | str:
    return _margin_figure(summary, y="margin_fraction", title="Vardi et al. Fig. 2a: fraction of examples on the margin", ylabel="fraction on the margin")


def _fig2b(summary: pd.DataFrame) -> Figure | str:
    return _margin_figure(summary, y="not_on_margin", title="Vardi et al. Fig. 2b: examples not on the margin", ylabel="number not on the margin")


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
    fig = Figure(figsize=(5.0 * columns, 4.0 * lines), layout="constrained")
    fig.suptitle("Melamed et al. Fig. 4:" + ("\n" if columns == 1 else " ") + "distance to the boundary vs init divisor")  # one panel: too narrow for a line
    for i, (model, dataset) in enumerate(swept):
        ax = fig.add_subplot(lines, columns, i + 1)
        ax.set(title=f"{model} net, {dataset} data (mean ± std over seeds)", xlabel="first-layer init divided by", ylabel="median verified L2 norm")
        ax.grid(alpha=0.3)
        for attack in PROJECTED:
            part = rows[(rows["model"] == model) & (rows["dataset"] == dataset) & (rows["attack"] == attack)]
            finite = part[np.isfinite(part["median_norm"])]
            stats = _mean_std(finite, "divisor", "median_norm")
            dropped = sorted(set(part["divisor"]) - set(finite["divisor"]))
            note = f"; median inf (over half not flipped) at {', '.join(f'{x:g}' for x in dropped)}" if dropped else ""
            ax.errorbar(stats["divisor"], stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=f"{attack} ({PROJECTED[attack]}){note}")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
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
