"""The security-evaluation curves of every result directory with examples.csv (matplotlib, Agg, PNG).

One panel per model setting (a row of the models table: model, dataset, d, n, width; the runs, i.e. seeds, of
a setting pooled, from every directory given): the fraction of attacked examples not flipped within radius eps,
#{i : norm_i > eps} / #examples, against eps / sqrt(d). One line per attack, each in its own (colour, marker),
dashed where it wraps another library's attack, and ``best`` (per example, the minimum over the attacks shown).
This is the robust-accuracy curve whose area AttackBench's optimality compares, per run, in the attack table.

- An attack that flips no example of a panel is not drawn there (its curve would lie on the frame at 1): the
  legend says "no flip" and, where the figure has several panels, in which ones.
- An attack whose registry entry proves the optimum (``exact``) is drawn black dashed; where examples.csv has a
  ``proved_optimal`` column, the panel's title says on how many examples its norm is proved minimal.
- Where examples.csv holds certified lower bounds (``lower_bound``, ``certified_lower_bound``) above 0, the band
  between their curve and ``best``'s is shaded: the curve of the true minimal norms lies inside it.
- Reference lines: sqrt(d) (at 1), and on a construction (summary.csv's ``construction_radius``) Theorem 3.1's
  radius (1 - c)/4 sqrt(d), within which no example can be flipped. The x-range holds every finite norm, the
  band and both lines.
- Every panel of a figure has the same x-scale: logarithmic where some panel's range spans WIDE times or more.

Settings beyond SETTINGS_PER_FIGURE continue in ``security_curves_2``, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from marginbench.bench.registry.registries import ATTACKS
from marginbench.bench.report.figure_style import WIDE, Style, attack_styles, panel_letter, plain_log_ticks
from marginbench.bench.report.leaderboard import MODEL_KEY
from marginbench.bench.results.readback import RUN_KEY

LOWER_BOUND = "lower_bound"  # examples.csv column of certified lower bounds on the minimal norm
CERTIFIED = "certified_lower_bound"  # exact's own per-example certified lower bound, a column of its rows
PROVED = "proved_optimal"  # examples.csv column: the example's best norm is within PROOF_GAP of its lower bound
RADIUS = "construction_radius"  # summary.csv: Theorem 3.1's (1 - c)/4 sqrt(d) of a construction's run
SETTINGS_PER_FIGURE = 6  # panels per security-curve figure: readable at 120 dpi
BAND = "minimal norm lies here (lower bound .. best)"
SQRT_D = "√d"
THEOREM = "Thm 3.1 radius (1-c)/4·√d: nothing flips within"
NO_FLIP = "no flip"


def not_flipped(norms: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """For each radius in ``eps``: the fraction of ``norms`` above it (a failure, +inf, is never flipped)."""
    ordered = np.sort(np.asarray(norms, dtype=float))
    return 1.0 - np.searchsorted(ordered, eps, side="right") / len(ordered)


def setting_label(row: pd.Series) -> str:
    init = f", init x{float(row['init_scale']):g}" if "init_scale" in row and float(row["init_scale"]) != 1.0 else ""
    return f"{row['model']} ({row['dataset']}, d={row['d']}, n={row['n']}, width={row['width']}{init})"


def _lower_bounds(rows: pd.DataFrame, example: list[str]) -> np.ndarray | None:
    """Per example, the largest certified lower bound on its minimal norm: the ``lower_bound`` and
    ``certified_lower_bound`` columns (not exact's norms: where its time ran out they are only upper bounds),
    0 where none is known; None when no example has a bound above 0 (nothing certified: no band to draw)."""
    bounds = [rows[[*example, column]].rename(columns={column: "bound"}) for column in (LOWER_BOUND, CERTIFIED) if column in rows]
    if not bounds:
        return None
    both = pd.concat(bounds).astype({"bound": float})
    per_example = both.groupby(example)["bound"].max()
    keys = rows.drop_duplicates(example).set_index(example).index
    known = per_example.reindex(keys).fillna(0.0).to_numpy(float)
    return known if (known > 0).any() else None


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


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One panel's numbers, every length over sqrt(d).

    Attributes:
        rows: the setting's attack rows (scored_examples: with ``best``).
        best: per example, the best norm.
        bounds: per example, its certified lower bound (0 where unknown); None without any.
        radii: Theorem 3.1's radius of the setting's construction runs (empty for other models).
        low, high: the smallest positive and the largest finite value the panel must show.
    """

    rows: pd.DataFrame
    best: np.ndarray
    bounds: np.ndarray | None
    radii: np.ndarray
    low: float
    high: float


def _setting(rows: pd.DataFrame, summary: pd.DataFrame) -> Setting:
    sqrt_d = math.sqrt(float(rows["d"].iloc[0]))
    example = [*RUN_KEY, "index"]
    best = rows.drop_duplicates(example)["best"].to_numpy(float) / sqrt_d
    bounds = _lower_bounds(rows, example)
    bounds = None if bounds is None else bounds / sqrt_d
    runs = summary.merge(rows[RUN_KEY].drop_duplicates(), on=RUN_KEY)
    radii = np.unique(runs[RADIUS].dropna().to_numpy(float)) / sqrt_d if RADIUS in runs else np.array([])
    norms = rows["norm"].to_numpy(float) / sqrt_d
    shown = np.concatenate([norms[np.isfinite(norms)], [] if bounds is None else bounds, radii, [1.0]])  # 1: the sqrt(d) line
    return Setting(rows=rows, best=best, bounds=bounds, radii=radii, low=float(shown[shown > 0].min()), high=float(shown.max()))


def _step(ax: Axes, norms: np.ndarray, x_min: float, x_max: float, **style: object) -> None:
    """The curve of ``norms`` (already over sqrt(d)) as the step function it is, from ``x_min`` out to ``x_max``."""
    finite = np.sort(norms[np.isfinite(norms) & (norms > x_min) & (norms <= x_max)])
    x = np.concatenate([[x_min], finite, [x_max]])
    ax.step(x, not_flipped(norms, x), where="post", **style)  # type: ignore[arg-type]  # matplotlib's Line2D properties


def _panel(ax: Axes, setting: Setting, styles: dict[str, Style], proving: set[str], *, log: bool) -> set[str]:
    """Draw one setting's curves; the attacks that flipped none of its examples (not drawn)."""
    x_min, x_max = (0.8 * setting.low if log else 0.0), 1.08 * setting.high
    if setting.bounds is not None:
        grid = np.unique(np.concatenate([[x_min, x_max], setting.best, setting.bounds]))
        grid = grid[(grid >= x_min) & (grid <= x_max)]
        ax.fill_between(grid, not_flipped(setting.bounds, grid), not_flipped(setting.best, grid), step="post", color="0.6", alpha=0.35, lw=0, label=BAND)
    _step(ax, setting.best, x_min, x_max, color="black", lw=3.2, alpha=0.45, label="best", zorder=2)
    failed = set()
    for i, (attack, part) in enumerate(setting.rows.groupby("attack", sort=True)):
        norms = part["norm"].to_numpy(float) / math.sqrt(float(part["d"].iloc[0]))
        if not np.isfinite(norms).any():
            failed.add(str(attack))
        else:
            style, truth = styles[str(attack)], attack in proving
            _step(ax, norms, x_min, x_max, color=style.color, ls=style.linestyle, marker=style.marker, mfc="none", ms=5, lw=1.6 if truth else 1.3,
                  label=str(attack), markevery=(0.09 * (i % 7) / 7, 0.09), zorder=4 if truth else 3)  # fmt: skip  # markers spread, each attack's shifted
    ax.axvline(1.0, color="black", lw=1.0, ls=":", label=SQRT_D, zorder=1)
    for radius in setting.radii:
        ax.axvline(radius, color="firebrick", lw=1.2, ls="-.", label=THEOREM, zorder=1)
    ax.set(xlim=(x_min, x_max), ylim=(-0.02, 1.02), xscale="log" if log else "linear", xlabel="ε / √d" + (" (log scale)" if log else ""))
    if log:
        plain_log_ticks(ax.xaxis)
    ax.set_ylabel("fraction not flipped within ε")
    if not np.isfinite(setting.best).any():
        ax.text(0.5, 0.5, "no attack flipped any example", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3)
    return failed


def _title(setting: Setting, letter: str, proving: set[str]) -> str:
    rows = setting.rows
    runs = rows[RUN_KEY].drop_duplicates().shape[0]
    return f"{letter} {setting_label(rows.iloc[0])}\n{runs} run{'s' if runs > 1 else ''}, {len(setting.best)} examples{exact_proofs(rows, proving)}"


def _legend(fig: Figure, styles: dict[str, Style], failed: dict[str, list[str]], ran: dict[str, list[str]], panels: int) -> None:
    """One legend below the panels: an attack has the same style in each; one that flipped nothing somewhere
    says where ("no flip", or "no flip in (a), (c)")."""
    shown: dict[str, Artist] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in styles:
                shown.setdefault(label, handle)
    for attack, style in styles.items():
        where = failed.get(attack, [])
        note = "" if not where else f" ({NO_FLIP})" if panels == 1 or where == ran[attack] else f" ({NO_FLIP} in {', '.join(where)})"
        shown[attack + note] = style.proxy(attack + note)
    fig.legend(shown.values(), shown.keys(), loc="outside lower center", ncols=min(4, len(shown)), fontsize=8)


def security_figures(rows: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Figure]:
    """The curves of ``rows`` (scored_examples, norms as floats), SETTINGS_PER_FIGURE panels a figure."""
    proving = ATTACKS.proving(rows["attack"])
    truth = Style(color=(0.0, 0.0, 0.0), marker="", linestyle="--")  # an attack that proves the optimum: the ground truth, black dashed
    styles = dict.fromkeys(sorted(proving), truth) | attack_styles(set(rows["attack"]) - proving)
    settings = [_setting(part, summary) for _, part in rows.groupby(MODEL_KEY, sort=True, dropna=False)]
    log = any(s.high > WIDE * s.low for s in settings)
    figures = {}
    for start in range(0, len(settings), SETTINGS_PER_FIGURE):
        chunk = settings[start : start + SETTINGS_PER_FIGURE]
        cols = min(3, len(chunk))
        lines = math.ceil(len(chunk) / cols)
        fig = Figure(figsize=(max(5.2 * cols, 8.0), 4.0 * lines + 1.2), layout="constrained")
        title = "Security-evaluation curves: examples not flipped within radius ε\n(seeds pooled; AttackBench's optimality compares their areas)"
        fig.suptitle(title, fontsize=10)
        failed: dict[str, list[str]] = {}
        ran: dict[str, list[str]] = {}
        for i, setting in enumerate(chunk):
            ax = fig.add_subplot(lines, cols, i + 1)
            letter = panel_letter(i)
            for attack in _panel(ax, setting, styles, proving, log=log):
                failed.setdefault(attack, []).append(letter)
            for attack in setting.rows["attack"].unique():
                ran.setdefault(str(attack), []).append(letter)
            ax.set_title(_title(setting, letter, proving), fontsize=9)
        _legend(fig, {a: s for a, s in styles.items() if a in ran}, failed, ran, len(chunk))
        page = start // SETTINGS_PER_FIGURE + 1
        figures["security_curves" if page == 1 else f"security_curves_{page}"] = fig
    return figures
