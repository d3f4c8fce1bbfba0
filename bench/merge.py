"""Reading one or more result directories into two tables, for the commands that report on finished runs.

Runs from different directories stay distinct (a ``source`` column names the directory), even when their
run_ids agree: a run_id does not encode the training options, so equal ids need not be equal networks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from marginbench.bench.spec import SpecError

RUN_KEY = ["source", "run_id"]


@dataclass(frozen=True, kw_only=True)
class Results:
    """The merged tables of some result directories.

    Attributes:
        summary: summary.csv rows of every directory, plus ``source`` (the directory as given); ``alpha``
            (n = d^alpha) and ``init_scale`` are the runner's columns, or where a table lacks them, alpha
            fitted as log n / log d and init_scale NaN.
        examples: examples.csv rows plus ``source``; None when some directory has no examples.csv.
    """

    summary: pd.DataFrame
    examples: pd.DataFrame | None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise SpecError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _alpha(summary: pd.DataFrame) -> pd.Series:
    if "alpha" in summary:
        return summary["alpha"].astype(float)
    # n = round(d ** alpha) is coarse at small d (d = 32, alpha = 0.5 gives n = 6, log 6 / log 32 = 0.517):
    # one decimal recovers the papers' grid (0.5, 0.8, 1, 1.2, 1.5).
    fitted = [round(math.log(n) / math.log(d), 1) if n > 0 and d > 1 else math.nan for n, d in zip(summary["n"], summary["d"], strict=True)]
    return pd.Series(fitted, index=summary.index, dtype=float)


def read_results(dirs: Sequence[str | Path], *, need_examples: bool = False) -> Results:
    """The merged tables of ``dirs``; SpecError (one line) for a missing or incomplete directory."""
    summaries, examples = [], []
    for given in dirs:
        root = Path(given)
        if not root.is_dir():
            raise SpecError(f"{given}: no such result directory")
        if not (root / "summary.csv").is_file():
            raise SpecError(f"{given} has no summary.csv: not a marginbench result directory (or its first run has not finished)")
        summary = _read_csv(root / "summary.csv")
        missing = [c for c in ("run_id", "model", "attack", "d", "n") if c not in summary]
        if missing:
            raise SpecError(f"{root / 'summary.csv'} lacks the column(s) {', '.join(missing)}")
        summary.insert(0, "source", str(given))
        summary["alpha"] = _alpha(summary)
        if "init_scale" not in summary:
            summary["init_scale"] = math.nan
        summaries.append(summary)
        if (root / "examples.csv").is_file():
            frame = _read_csv(root / "examples.csv")
            missing = [c for c in ("run_id", "attack", "index", "norm") if c not in frame]
            if missing:
                raise SpecError(f"{root / 'examples.csv'} lacks the column(s) {', '.join(missing)}")
            frame.insert(0, "source", str(given))
            examples.append(frame)
        elif need_examples:
            raise SpecError(f"{given} has no examples.csv; the per-example norms are needed here")
    merged_examples = pd.concat(examples, ignore_index=True) if len(examples) == len(summaries) else None
    return Results(summary=pd.concat(summaries, ignore_index=True), examples=merged_examples)
