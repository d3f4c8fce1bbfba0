"""Reading one or more result directories into two tables, for the commands that report on finished runs.

Runs from different directories stay distinct (a ``source`` column names the directory), even when their
run_ids agree: a run_id does not encode the training options, so equal ids need not be equal networks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from marginbench.bench.spec import SpecError

RUN_KEY = ["source", "run_id"]


@dataclass(frozen=True, kw_only=True)
class Results:
    """The merged tables of some result directories.

    Attributes:
        summary: summary.csv rows of every directory, plus ``source`` (the directory as given), ``alpha``
            (n = d^alpha; from the manifest's spec when it set alpha, else log n / log d) and ``init_scale``
            (a summary column if present, else the manifest's spec value, else NaN).
        examples: examples.csv rows plus ``source``; None when some directory has no examples.csv.
    """

    summary: pd.DataFrame
    examples: pd.DataFrame | None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise SpecError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _manifest_spec(root: Path) -> dict[str, Any]:
    try:
        spec = json.loads((root / "manifest.json").read_text()).get("spec", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _alpha(summary: pd.DataFrame, spec: dict[str, Any]) -> pd.Series:
    if "alpha" in summary:
        return summary["alpha"].astype(float)
    if spec.get("n") is None and isinstance(spec.get("alpha"), (int, float)):
        return pd.Series(float(spec["alpha"]), index=summary.index)
    # n = round(d ** alpha) is coarse at small d (d = 32, alpha = 0.5 gives n = 6, log 6 / log 32 = 0.517):
    # one decimal recovers the papers' grid (0.5, 0.8, 1, 1.2, 1.5).
    fitted = [round(math.log(n) / math.log(d), 1) if n > 0 and d > 1 else math.nan for n, d in zip(summary["n"], summary["d"])]
    return pd.Series(fitted, index=summary.index, dtype=float)


def _init_scale(summary: pd.DataFrame, spec: dict[str, Any]) -> pd.Series:
    if "init_scale" in summary:
        return summary["init_scale"].astype(float)
    for holder in (spec, spec.get("train") if isinstance(spec.get("train"), dict) else {}):
        if isinstance(holder.get("init_scale"), (int, float)):
            return pd.Series(float(holder["init_scale"]), index=summary.index)
    return pd.Series(math.nan, index=summary.index)


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
        spec = _manifest_spec(root)
        summary.insert(0, "source", str(given))
        summary["alpha"] = _alpha(summary, spec)
        summary["init_scale"] = _init_scale(summary, spec)
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
