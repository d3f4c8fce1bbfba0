"""Figures that every result directory with examples.csv supports (matplotlib, Agg, PNG).

- ``security_curves``: the security-evaluation curve of each model setting (one panel per row of the models
  table: model, dataset, d, n, width; the runs, i.e. seeds, of a setting are pooled, from every directory
  given): the fraction of attacked examples not flipped within radius eps, #{i : norm_i > eps} / #examples,
  against eps / sqrt(d). One line per attack, and ``best`` (per example, the minimum over the attacks shown).
  This is the robust-accuracy curve whose area AttackBench's optimality compares, per run, in the attack
  table. An attack whose registry entry proves the optimum (``exact``: the solver's flips, found within a time
  limit per example) is drawn black dashed; where examples.csv has a ``proved_optimal`` column, the panel's title
  says on how many examples its norm is proved minimal. Where examples.csv has a ``lower_bound`` column
  (certified lower bounds), the band between their curve and ``best``'s is shaded: the curve of the true minimal
  norms lies inside it. Where some attack's norms reach WIDE times the best's, the x-axis is logarithmic. Settings
  beyond SETTINGS_PER_FIGURE continue in ``security_curves_2``, ...
- ``leaderboard``: both tables as horizontal bars: each model setting's median best/sqrt(d) over runs (the
  min..max over runs as an error bar), and each attack's optimality.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from marginbench.bench.errors import SpecError
from marginbench.bench.registry.registries import ATTACKS
from marginbench.bench.report.leaderboard import MODEL_KEY, attack_table, model_table, scored_examples
from marginbench.bench.report.paper_figures import Figures
from marginbench.bench.results.readback import RUN_KEY, Results

LOWER_BOUND = "lower_bound"  # examples.csv column of certified lower bounds on the minimal norm
CERTIFIED = "certified_lower_bound"  # exact's own per-example certified lower bound, a column of its rows
PROVED = "proved_optimal"  # examples.csv column: the example's best norm is within PROOF_GAP of its lower bound
SETTINGS_PER_FIGURE = 6  # panels per security-curve figure: readable at 120 dpi
Colour = tuple[float, float, float, float]
WIDE = 10.0  # a log x-axis where some attack's largest finite norm is this many times the best's


def not_flipped(norms: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """For each radius in ``eps``: the fraction of ``norms`` above it (a failure, +inf, is never flipped)."""
    ordered = np.sort(np.asarray(norms, dtype=float))
    return 1.0 - np.searchsorted(ordered, eps, side="right") / len(ordered)


def _step(ax: Axes, norms: np.ndarray, x_min: float, x_max: float, **style: Any) -> None:
    """The curve of ``norms`` (already over sqrt(d)) as the step function it is, from ``x_min`` out to ``x_max``."""
    finite = np.sort(norms[np.isfinite(norms) & (norms > x_min) & (norms <= x_max)])
    x = np.concatenate([[x_min], finite, [x_max]])
    ax.step(x, not_flipped(norms, x), where="post", **style)


def setting_label(row: pd.Series) -> str:
    init = f", init x{float(row['init_scale']):g}" if "init_scale" in row and float(row["init_scale"]) != 1.0 else ""
    return f"{row['model']} ({row['dataset']}, d={row['d']}, n={row['n']}, width={row['width']}{init})"


def _lower_bounds(rows: pd.DataFrame, example: list[str]) -> pd.Series | None:
    """Per example, the largest certified lower bound on its minimal norm: the ``lower_bound`` and
    ``certified_lower_bound`` columns (not exact's norms: where its time ran out they are only upper bounds);
    None when the rows hold neither."""
    bounds = [rows[[*example, column]].rename(columns={column: "bound"}) for column in (LOWER_BOUND, CERTIFIED) if column in rows]
    if not bounds:
        return None
    both = pd.concat(bounds).astype({"bound": float})
    per_example = both.groupby(example)["bound"].max()
    keys = rows.drop_duplicates(example).set_index(example).index
    return per_example.reindex(keys).fillna(0.0)  # no bound known: only 0


def exact_proofs(rows: pd.DataFrame, proving: set[str]) -> str:
    """What a panel's rows prove of the ``proving`` attacks' norms: "; exact proved minimal on k/n", k the
    examples whose best norm is proved optimal (``proved_optimal``) and is that attack's own; "" without such an
    attack or without proofs."""
    parts = []
    for attack in sorted(proving):
        own = rows[rows["attack"] == attack]
        if own.empty or PROVED not in own:
            continue
        proved = own[PROVED].eq(True) & (own["norm"] <= own["best"])  # its norm is the example's proved best
        parts.append(f"; {attack} proved minimal on {int(proved.sum())}/{len(own)}")
    return "".join(parts)


def _panel(ax: Axes, rows: pd.DataFrame, colors: dict[str, Colour], proving: set[str]) -> None:
    sqrt_d = math.sqrt(float(rows["d"].iloc[0]))
    example = [*RUN_KEY, "index"]
    per_example = rows.drop_duplicates(example)
    best = per_example["best"].to_numpy(float) / sqrt_d
    finite = rows["norm"].to_numpy(float)[np.isfinite(rows["norm"].to_numpy(float))] / sqrt_d
    x_max = 1.08 * float(finite.max()) if finite.size else 1.0
    # Attacks that overshoot the best by 10x and more would squeeze the curves that matter against the axis.
    wide = finite.size > 0 and finite.max() > WIDE * best[np.isfinite(best)].max()
    x_min = 0.8 * float(finite.min()) if wide else 0.0
    bounds = _lower_bounds(rows, example)
    if bounds is not None:
        grid = np.unique(np.concatenate([[x_min, x_max], best, bounds.to_numpy(float) / sqrt_d]))
        grid = grid[(grid >= x_min) & (grid <= x_max)]
        low, high = not_flipped(bounds.to_numpy(float) / sqrt_d, grid), not_flipped(best, grid)
        ax.fill_between(grid, low, high, step="post", color="0.6", alpha=0.35, lw=0, label="minimal norm lies here (lower bound .. best)")
    _step(ax, best, x_min, x_max, color="black", lw=3.2, alpha=0.45, label="best", zorder=2)
    for attack, part in rows.groupby("attack", sort=True):
        norms = part["norm"].to_numpy(float) / sqrt_d
        if attack in proving:
            _step(ax, norms, x_min, x_max, color="black", lw=1.6, ls="--", label=attack, zorder=4)
        else:
            _step(ax, norms, x_min, x_max, color=colors[str(attack)], lw=1.3, label=str(attack), zorder=3)
    runs = per_example[RUN_KEY].drop_duplicates().shape[0]
    ax.set_title(f"{setting_label(rows.iloc[0])}\n{runs} run(s), {len(per_example)} examples{exact_proofs(rows, proving)}", fontsize=9)
    ax.set(xlim=(x_min, x_max), ylim=(-0.02, 1.02), xlabel="ε / √d (log scale)" if wide else "ε / √d", ylabel="fraction not flipped within ε")
    if wide:
        ax.set_xscale("log")
    if not finite.size:
        ax.text(0.5, 0.5, "no attack flipped any example", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3)


def _security_figures(results: Results) -> dict[str, Figure] | str:
    if results.examples is None:
        return "needs examples.csv in every result directory (the committed tables under results/ keep only summary.csv)"
    try:
        rows = scored_examples(results)
    except SpecError as err:
        return str(err)
    rows["norm"] = rows["norm"].astype(float)
    palette = matplotlib.colormaps["tab10" if rows["attack"].nunique() <= 10 else "tab20"]
    proving = ATTACKS.proving(rows["attack"])  # drawn as the ground truth, in black
    colors: dict[str, Colour] = {str(attack): palette(i) for i, attack in enumerate(sorted(set(rows["attack"]) - proving))}
    settings = [part for _, part in rows.groupby(MODEL_KEY, sort=True, dropna=False)]
    figures = {}
    for start in range(0, len(settings), SETTINGS_PER_FIGURE):
        chunk = settings[start : start + SETTINGS_PER_FIGURE]
        cols = min(3, len(chunk))
        fig = Figure(figsize=(4.8 * cols, 3.9 * math.ceil(len(chunk) / cols)), layout="constrained")
        fig.suptitle(
            "Security-evaluation curves: examples not flipped within radius ε (seeds pooled; AttackBench's optimality compares their areas)", fontsize=10
        )
        for i, part in enumerate(chunk):
            _panel(fig.add_subplot(math.ceil(len(chunk) / cols), cols, i + 1), part, colors, proving)
        # one legend for all panels: an attack has the same colour in each
        shown: dict[str, Artist] = {}
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                shown.setdefault(label, handle)
        fig.legend(shown.values(), shown.keys(), loc="outside lower center", ncols=min(6, len(shown)), fontsize=8)
        page = start // SETTINGS_PER_FIGURE + 1
        figures["security_curves" if page == 1 else f"security_curves_{page}"] = fig
    return figures


def _bars(ax: Axes, labels: list[str], values: np.ndarray, *, low: np.ndarray | None = None, high: np.ndarray | None = None, inf_note: str) -> None:
    """Horizontal bars, first row on top; a value that is +inf or NaN is written out instead of drawn."""
    y = np.arange(len(labels))
    finite = np.isfinite(values)
    top = float(np.nanmax(np.where(finite, high if high is not None else values, np.nan))) if finite.any() else 1.0
    ax.barh(y[finite], values[finite], height=0.6, color="tab:blue", alpha=0.8)
    ends = values.copy()  # where each bar's label goes: past its error bar
    if low is not None and high is not None:
        ok = finite & np.isfinite(low) & np.isfinite(high)
        ax.errorbar(values[ok], y[ok], xerr=[values[ok] - low[ok], high[ok] - values[ok]], fmt="none", ecolor="black", capsize=3, lw=1)
        ends[ok] = high[ok]
    for yi, value, end in zip(y, values, ends, strict=True):
        text = f"{value:.3g}" if np.isfinite(value) else (inf_note if value == np.inf else "n/a")
        ax.text(end if np.isfinite(end) else 0.0, float(yi), f"  {text}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, 1.25 * top)
    ax.grid(axis="x", alpha=0.3)


def _leaderboard_figure(results: Results) -> Figure | str:
    if results.examples is None:
        return "needs examples.csv in every result directory"
    try:
        models, attacks = model_table(results), attack_table(results)
    except SpecError as err:
        return str(err)
    # stacked, each panel as tall as its rows, so that every bar has the same thickness
    fig = Figure(figsize=(10.0, 2.2 + 0.32 * (len(models) + len(attacks))), layout="constrained")
    left, right = fig.subplots(2, 1, height_ratios=(len(models) + 1.5, len(attacks) + 1.5))
    _bars(left, [f"{r['rank']}. {setting_label(r)}" for _, r in models.iterrows()], models["median"].to_numpy(float),
          low=models["low"].to_numpy(float), high=models["high"].to_numpy(float), inf_note="inf: over half never flipped")  # fmt: skip
    left.set(title="Models, most robust first", xlabel="best norm / √d (median over runs; bars: min..max)")
    _bars(right, [f"{r['rank']}. {r['attack']}" for _, r in attacks.iterrows()], attacks["optimality"].to_numpy(float), inf_note="inf")
    right.set(title="Attacks, most optimal first", xlabel="optimality: area under the best's security curve / the attack's (1 = the best)")
    right.axvline(1.0, color="black", lw=0.8, ls=":")
    return fig


def build_leaderboard_figures(results: Results) -> Figures:
    """The security-evaluation curves and the leaderboard figure, or the reason each cannot be drawn."""
    missing = [c for c in ("dataset", "width") if c not in results.summary]
    if missing:  # a table written by hand, not by a sweep
        why = f"summary.csv lacks the column(s) {', '.join(missing)} that name a model setting"
        return Figures(skipped={"security_curves": why, "leaderboard": why})
    drawn: dict[str, Figure] = {}
    skipped: dict[str, str] = {}
    curves = _security_figures(results)
    if isinstance(curves, str):
        skipped["security_curves"] = curves
    else:
        drawn.update(curves)
    board = _leaderboard_figure(results)
    if isinstance(board, str):
        skipped["leaderboard"] = board
    else:
        drawn["leaderboard"] = board
    return Figures(drawn=drawn, skipped=skipped)
