"""What every figure shares: series styles that differ in colour and marker (and, for an attack that wraps
another library's, in line style), panel letters, and the note that says what an error bar is."""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

from matplotlib.axis import Axis
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

from marginbench.bench.registry.registries import ATTACKS

Colour = tuple[float, float, float]
# tab10 without its grey (the best curve's and the certified band's colour), then navy and magenta, which none of
# the nine resembles: eleven colours, one each for the default run's eleven attacks.
COLOURS: tuple[Colour, ...] = (*(c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7), to_rgb("navy"), to_rgb("magenta"))
# 7 shapes against 11 colours, coprime: the first 77 series all differ in (colour, marker).
MARKERS = ("o", "s", "^", "D", "v", "<", ">")
# An attack that wraps another library's (Foolbox's) has shapes of its own and a dashed line, beside the natives'.
WRAPPER_MARKERS = ("P", "X", "*", "p", "h", "d", "8")
WRAPPER_LINE = "--"
WIDE = 10.0  # a logarithmic axis where the values it shows span this factor or more


@dataclass(frozen=True, kw_only=True)
class Style:
    """How one series is drawn."""

    color: Colour
    marker: str
    linestyle: str = "-"

    def proxy(self, label: str) -> Line2D:
        """A legend entry in this style (for a series that a panel does not draw)."""
        return Line2D([], [], color=self.color, marker=self.marker, ls=self.linestyle, mfc="none", label=label)


def series_styles(count: int) -> list[Style]:
    """``count`` styles, each a different (colour, marker) pair."""
    return [Style(color=COLOURS[i % len(COLOURS)], marker=MARKERS[i % len(MARKERS)]) for i in range(count)]


def _library(attack: str) -> str | None:
    return ATTACKS.entry(attack).library if attack in ATTACKS else None  # a plugin's attack, not loaded now: taken for a native


def attack_styles(attacks: Iterable[object]) -> dict[str, Style]:
    """A style per attack, every (colour, marker) pair different. marginbench's own attacks take the colours
    in order and MARKERS, solid; the wrappers of another library's attacks take the colours from the far end
    and WRAPPER_MARKERS, dashed: ``fmn`` and Foolbox's ``fb-fmn`` never look alike."""
    names = sorted({str(a) for a in attacks})
    native = [a for a in names if _library(a) is None]
    wrappers = [a for a in names if _library(a) is not None]
    styles = {a: Style(color=COLOURS[i % len(COLOURS)], marker=MARKERS[i % len(MARKERS)]) for i, a in enumerate(native)}
    for j, a in enumerate(wrappers):
        styles[a] = Style(color=COLOURS[-1 - j % len(COLOURS)], marker=WRAPPER_MARKERS[j % len(WRAPPER_MARKERS)], linestyle=WRAPPER_LINE)
    return styles


def plain_log_ticks(axis: Axis) -> None:
    """A log axis's ticks written as plain numbers (0.1, 2, 50), at the powers of ten, and at 2 and 5 times
    them where the axis spans under two decades (call it once its limits are set)."""
    low, high = sorted(axis.get_view_interval())
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if high < 100 * low else (1.0,)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def panel_letter(index: int) -> str:
    """(a), (b), ...: how a legend entry names the panels it speaks of."""
    return f"({string.ascii_lowercase[index % 26]})"


def seeds_note(runs: Iterable[int], *, unit: str = "seeds") -> str:
    """What a panel's error bars are, from the number of runs behind each of its points (``unit``: what they
    are, "seeds", or "runs" where a point pools runs of more than its seeds)."""
    counts = sorted(set(runs))
    if not counts or counts[-1] < 2:
        return f"one {unit.removesuffix('s')}: no error bars"
    if counts[0] == counts[-1]:
        return f"mean ± std over {counts[-1]} {unit}"
    if counts[0] >= 2:
        return f"mean ± std over {counts[0]} to {counts[-1]} {unit}"
    return f"mean ± std over up to {counts[-1]} {unit}, no bar where one"
