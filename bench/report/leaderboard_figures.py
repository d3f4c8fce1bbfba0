"""Figures that every result directory with examples.csv supports (matplotlib, Agg, PNG).

- ``security_curves``: the security-evaluation curves, one panel per model setting (module ``security_curves``).
- ``leaderboard``: both tables. Above, each model setting's median best/sqrt(d) over its runs as a bar (with the
  min..max over runs as an error bar where a setting has two or more). Below, the attacks' optimality as a grid,
  an attack per row (ranked as in the attack table), a column per model setting (numbered by its rank in the
  bars above; the optimality is the mean over that setting's runs) and a first column ``all``, the attack
  table's mean over every run; "no flip" where the attack flipped none of a setting's examples, blank where it
  did not run.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from marginbench.bench.errors import SpecError
from marginbench.bench.report.leaderboard import MODEL_KEY, attack_table, model_table, scored_examples, setting_optimality
from marginbench.bench.report.paper_figures import Figures
from marginbench.bench.report.security_curves import NO_FLIP, security_figures, setting_label
from marginbench.bench.results.readback import Results


def _bars(ax: Axes, labels: list[str], values: np.ndarray, *, low: np.ndarray, high: np.ndarray, inf_note: str) -> None:
    """Horizontal bars, first row on top, with a low..high error bar where both are given (finite); a value
    that is +inf or NaN is written out instead of drawn."""
    y = np.arange(len(labels))
    finite = np.isfinite(values)
    spread = finite & np.isfinite(low) & np.isfinite(high)
    top = float(np.nanmax(np.where(spread, high, np.where(finite, values, np.nan)))) if finite.any() else 1.0
    ax.barh(y[finite], values[finite], height=0.6, color="tab:blue", alpha=0.8)
    ax.errorbar(values[spread], y[spread], xerr=[values[spread] - low[spread], high[spread] - values[spread]], fmt="none", ecolor="black", capsize=3, lw=1)
    ends = np.where(spread, high, values)  # where each bar's label goes: past its error bar
    for yi, value, end in zip(y, values, ends, strict=True):
        text = f"{value:.3g}" if np.isfinite(value) else (inf_note if value == np.inf else "n/a")
        ax.text(end if np.isfinite(end) else 0.0, float(yi), f"  {text}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, 1.25 * top)
    ax.grid(axis="x", alpha=0.3)


def _grid(fig: Figure, ax: Axes, models: pd.DataFrame, attacks: pd.DataFrame, per_setting: pd.DataFrame) -> None:
    """The attacks' optimality per model setting, annotated; see the module docstring."""
    cells = per_setting.merge(models[MODEL_KEY].assign(column=np.arange(1, len(models) + 1)), on=MODEL_KEY)  # column 0: all
    order = list(attacks["attack"])
    value = cells.pivot(index="attack", columns="column", values="optimality").reindex(index=order, columns=range(len(models) + 1))
    flipped = cells.pivot(index="attack", columns="column", values="success").reindex(index=order, columns=range(len(models) + 1))
    value[0], flipped[0] = attacks["optimality"].to_numpy(float), attacks["success"].to_numpy(float)
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="0.95")  # not run: a pale cell
    image = ax.imshow(value.to_numpy(float), cmap=colours, vmin=0.0, vmax=1.0, aspect="auto")
    if len(models) <= 16:  # room for a number in each cell
        for (row, col), v in np.ndenumerate(value.to_numpy(float)):
            text = "" if not np.isfinite(v) else NO_FLIP if flipped.iat[row, col] == 0 else f"{v:.2f}"
            ax.text(col, row, text, ha="center", va="center", fontsize=7, color="white" if v < 0.55 else "black")
    named = len(models) <= 5  # columns wide enough for the model's name
    labels = ["all", *(f"#{r['rank']}\n{r['model']}" if named else f"#{r['rank']}" for _, r in models.iterrows())]
    every = -(-len(models) // 16)  # at most 16 settings labelled
    ax.set_xticks([0, *range(every, len(labels), every)], [labels[0], *labels[every::every]], fontsize=8)
    ax.axvline(0.5, color="white", lw=4)  # "all" apart from the settings
    ax.set_yticks(range(len(order)), [f"{rank}. {a}" for rank, a in zip(attacks["rank"], order, strict=True)], fontsize=8)
    ax.tick_params(length=0)
    ax.set(title="Attacks, most optimal first: optimality per model setting", xlabel="all: over every run (the attack table); #k: the setting ranked k above")
    fig.colorbar(image, ax=ax, label="optimality", fraction=0.04, pad=0.02)


def _leaderboard_figure(results: Results) -> Figure | str:
    if results.examples is None:
        return "needs examples.csv in every result directory"
    try:
        models, attacks, per_setting = model_table(results), attack_table(results), setting_optimality(results)
    except SpecError as err:
        return str(err)
    # stacked, each panel as tall as its rows, so that every bar and every cell has the same height
    cells = max(len(attacks), 2)  # the grid's rows, at least as tall as the colour bar's label
    fig = Figure(figsize=(11.0, 2.6 + 0.32 * (len(models) + cells)), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(len(models) + 1.5, cells + 2.0))
    several = models["runs"].to_numpy(int) >= 2  # a spread needs two runs
    _bars(top, [f"{r['rank']}. {setting_label(r)}" for _, r in models.iterrows()], models["median"].to_numpy(float),
          low=np.where(several, models["low"], np.nan), high=np.where(several, models["high"], np.nan),
          inf_note="inf: over half never flipped")  # fmt: skip
    spread = "bars: min..max over runs" if several.any() else "one run each: no spread"
    top.set(title="Models, most robust first", xlabel=f"best norm / √d (median over examples, then over runs; {spread})")
    _grid(fig, bottom, models, attacks, per_setting)
    return fig


def build_leaderboard_figures(results: Results) -> Figures:
    """The security-evaluation curves and the leaderboard figure, or the reason each cannot be drawn."""
    missing = [c for c in ("dataset", "width") if c not in results.summary]
    if missing:  # a table written by hand, not by a sweep
        why = f"summary.csv lacks the column(s) {', '.join(missing)} that name a model setting"
        return Figures(skipped={"security_curves": why, "leaderboard": why})
    drawn: dict[str, Figure] = {}
    skipped: dict[str, str] = {}
    if results.examples is None:
        skipped["security_curves"] = "needs examples.csv in every result directory (the committed tables under results/ keep only summary.csv)"
    else:
        try:
            rows = scored_examples(results)
        except SpecError as err:
            skipped["security_curves"] = str(err)
        else:
            drawn.update(security_figures(rows.astype({"norm": float}), results.summary))
    board = _leaderboard_figure(results)
    if isinstance(board, str):
        skipped["leaderboard"] = board
    else:
        drawn["leaderboard"] = board
    return Figures(drawn=drawn, skipped=skipped)
