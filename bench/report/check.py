"""Regression baselines: the numbers of a run, with per-metric tolerance bands, and the check against them.

A baseline is one JSON file (``marginbench baseline DIR -o PATH``)::

    {"format": "marginbench-baseline/1",
     "made_from": {...the run's preset, spec, git commit, versions, machine...},
     "bands": {"median_norm": {"rel": 1e-6, "abs": 1e-9, "why": "..."}, ..., "*": {...}},
     "values": [{"run_id": ..., "attack": ..., "metric": ..., "value": ...}, ...]}

A number passes when |value - baseline| <= abs + rel * |baseline| (both +inf, or both NaN, also pass). The
bands live in the file, so a reviewer can tighten or loosen one metric by editing it; ``"*"`` is the band of
any numeric summary column that has no band of its own (columns added later are checked too). Columns in
UNCHECKED (wall times, and the run's own identity) are never stored.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from marginbench.bench.errors import SpecError
from marginbench.bench.report.output_file import check_output, write_output
from marginbench.bench.results.readback import read_provenance, read_results

FORMAT = "marginbench-baseline/1"
VALUE_KEYS = ("run_id", "attack", "metric", "value")
MAX_BASELINE_BYTES = 256 * 2**20  # the committed baselines are ~70 kB: a file this large is not one
KEY = ("run_id", "attack")
# Never compared: timings vary from call to call and machine to machine; the rest are keys or inputs.
UNCHECKED = frozenset({"train_seconds", "attack_seconds", "seed", "source", "alpha", "init_scale"})


@dataclass(frozen=True, kw_only=True)
class Band:
    """|value - baseline| <= abs + rel * |baseline|."""

    rel: float
    abs: float
    why: str


# Why these widths: on one machine every number is reproducible to the last bit (seeded data and init,
# float64 training, deterministic kernels). Across machines, BLAS kernels may sum in another order (SIMD
# width, threads), changing results in the 16th digit; a few thousand gradient steps amplify that to
# roughly 1e-12 relative, far below a band of 1e-6, while any change of the method moves these numbers by
# more than 1e-3. Counts and set memberships are exact: they change only when an example crosses a
# threshold, which is a real change to investigate (or, once in a long while, a rounding tie; then widen
# the band in the baseline file and say so in the commit).
ROUNDING = "float64 results of seeded training: bit-identical on one machine, ~1e-12 apart across CPUs' summation orders"
BANDS: dict[str, Band] = {
    **{name: Band(rel=0.0, abs=0.0, why="sizes of the run: exact") for name in ("d", "n", "width", "ell", "n_attacked", "sqrt_d")},
    "success_rate": Band(rel=0.0, abs=1e-12, why="a fraction of counted flips: exact"),
    "margin_fraction": Band(rel=0.0, abs=1e-12, why="a fraction of the margin set (10% slack): exact unless an example sits on the threshold"),
    "margin_set_size": Band(rel=0.0, abs=0.0, why="a count: exact"),
    "train_iterations": Band(rel=0.0, abs=1.0, why="the iteration where the loss crosses the target may move by one if the loss sits on it"),
    "kkt_residual": Band(rel=1e-4, abs=1e-8, why="a non-negative least-squares solve (scipy nnls), accurate to its own tolerance, not to the last digit"),
    "construction_c": Band(rel=1e-9, abs=1e-12, why="closed form from the data: a max of inner products"),
    "construction_radius": Band(rel=1e-9, abs=1e-12, why="closed form from the data"),
    "rejected_ties": Band(rel=0.0, abs=0.0, why="a count of proposals within rounding of N = 0: exact"),
    "proved_fraction": Band(rel=0.0, abs=1e-12, why="a share of examples whose best is within 0.01% of a certified bound: exact unless one sits on it"),
    "median_certified_gap": Band(
        rel=1e-5, abs=1e-9, why="best / certified lower bound: the relaxation's bisection and SCIP's dual bound are accurate to ~1e-6, not to the last digit"
    ),
    "*": Band(rel=1e-6, abs=1e-9, why=ROUNDING),
}


def _numbers(summary: pd.DataFrame) -> pd.DataFrame:
    """Long form (run_id, attack, metric, value) of every checked numeric summary column."""
    numeric = [
        c
        for c in summary.columns
        if c not in UNCHECKED and c not in KEY and pd.api.types.is_numeric_dtype(summary[c]) and not pd.api.types.is_bool_dtype(summary[c])
    ]
    long = summary[[*KEY, *numeric]].melt(id_vars=list(KEY), var_name="metric", value_name="value")
    return long.dropna(subset=["value"]).reset_index(drop=True)


def make_baseline(result_dir: str | Path) -> dict[str, Any]:
    """The baseline of one result directory: its numbers and the bands (see the module docstring)."""
    summary = read_results([result_dir]).summary
    if summary.duplicated(list(KEY)).any():
        raise SpecError(f"{result_dir}/summary.csv has two rows for one (run_id, attack)")
    values = [{"run_id": r.run_id, "attack": r.attack, "metric": r.metric, "value": float(r.value)} for r in _numbers(summary).itertuples(index=False)]
    return {
        "format": FORMAT,
        "rule": "pass when |value - baseline| <= abs + rel * |baseline|; '*' is the band of metrics not listed",
        "made_from": {"dir": str(result_dir), **read_provenance(result_dir)},
        "bands": {name: {"rel": b.rel, "abs": b.abs, "why": b.why} for name, b in BANDS.items()},
        "unchecked": sorted(UNCHECKED),
        "values": values,
    }


def write_baseline(baseline: dict[str, Any], path: str | Path) -> None:
    """Write ``baseline`` as JSON (+inf as Infinity, which Python's json reads back)."""
    check_output(Path(path), example="baseline.json")
    head = json.dumps({k: v for k, v in baseline.items() if k != "values"}, indent=1, allow_nan=True)
    rows = ",\n  ".join(json.dumps(row, allow_nan=True) for row in baseline["values"])
    text = head[:-2] + f',\n "values": [\n  {rows}\n ]\n}}\n'  # one number per line: readable diffs
    write_output(Path(path), text, example="baseline.json")


def read_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline file, checked for shape; SpecError (one line) if it is missing, not a regular file, larger
    than MAX_BASELINE_BYTES, nested too deep, or malformed."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open: opening a FIFO blocks, /dev/zero never ends
            raise SpecError(f"baseline {path} is not a regular file (a device, FIFO or directory): give a file written by `marginbench baseline`")
        with open(path, "rb") as handle:
            data = handle.read(MAX_BASELINE_BYTES + 1)
    except OSError as err:
        raise SpecError(f"cannot read baseline {path}: {err.strerror or err}") from None
    if len(data) > MAX_BASELINE_BYTES:
        raise SpecError(f"baseline {path} is larger than {MAX_BASELINE_BYTES:,} bytes: not a baseline that `marginbench baseline` writes")
    try:
        baseline = json.loads(data)
    except RecursionError:
        raise SpecError(f"baseline {path} is nested too deep to be a baseline") from None
    except ValueError as err:
        raise SpecError(f"baseline {path} is not valid JSON: {err}") from None
    if not isinstance(baseline, dict) or baseline.get("format") != FORMAT:
        raise SpecError(f'baseline {path} is not a marginbench baseline (no "format": "{FORMAT}")')
    try:
        bands = {name: Band(rel=float(b["rel"]), abs=float(b["abs"]), why=str(b.get("why", ""))) for name, b in baseline["bands"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SpecError(f"baseline {path} is malformed: {type(err).__name__} {err}") from None
    entries = baseline.get("values")
    if not isinstance(entries, list):
        raise SpecError(f'baseline {path}: "values" is not a list of entries')
    for number, entry in enumerate(entries):
        # one bad entry would otherwise read as a missing number, a drift (exit 1) instead of a mistake (exit 2)
        missing = [key for key in VALUE_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise SpecError(f'baseline {path}: entry {number} of "values" lacks {", ".join(missing)}')
        if not all(isinstance(entry[key], str) for key in VALUE_KEYS[:3]) or isinstance(entry["value"], bool) or not isinstance(entry["value"], int | float):
            raise SpecError(f'baseline {path}: entry {number} of "values" needs strings run_id, attack, metric and a number value')
    values = pd.DataFrame(entries, columns=list(VALUE_KEYS)).astype({"value": float})
    if "*" not in bands:
        raise SpecError(f'baseline {path} has no default band "*"')
    for name, band in bands.items():
        if not (math.isfinite(band.rel) and math.isfinite(band.abs) and band.rel >= 0 and band.abs >= 0):
            raise SpecError(f"baseline {path}: the band of {name} (rel {band.rel}, abs {band.abs}) must be finite and >= 0")
    if values.empty:
        raise SpecError(f"baseline {path} holds no values to check")
    return {**baseline, "bands": bands, "values": values}


def _within(value: float, base: float, band: Band) -> bool:
    if math.isnan(base) or math.isnan(value):
        return math.isnan(base) and math.isnan(value)
    if math.isinf(base) or math.isinf(value):
        return value == base
    return abs(value - base) <= band.abs + band.rel * abs(base)


def compare(result_dir: str | Path, baseline: dict[str, Any]) -> pd.DataFrame:
    """One row per baseline number that is out of its band or missing from the run (empty when all hold).

    Columns: run_id, attack, metric, baseline, value, diff, rel_diff, allowed (abs + rel * |baseline|).
    """
    bands: dict[str, Band] = baseline["bands"]
    current = _numbers(read_results([result_dir]).summary)
    merged = baseline["values"].merge(current, on=["run_id", "attack", "metric"], how="left", suffixes=("_base", ""), indicator="found")
    drifted = []
    for row in merged.itertuples(index=False):
        band = bands.get(row.metric, bands["*"])
        base, value = float(row.value_base), float(row.value)
        if row.found == "both" and _within(value, base, band):
            continue
        diff = value - base if np.isfinite(value) and np.isfinite(base) else math.nan
        drifted.append(
            {
                "run_id": row.run_id,
                "attack": row.attack,
                "metric": row.metric,
                "baseline": base,
                "value": value,
                "diff": diff,
                "rel_diff": diff / abs(base) if base != 0 else math.nan,
                "allowed": band.abs + band.rel * abs(base),
            }
        )
    return pd.DataFrame(drifted, columns=["run_id", "attack", "metric", "baseline", "value", "diff", "rel_diff", "allowed"])


def drift_text(drifted: pd.DataFrame, *, checked: int, tablefmt: str = "github") -> str:
    """The table ``marginbench check`` prints: every number out of its band, or one line saying all hold."""
    if drifted.empty:
        return f"ok: all {checked} numbers are within their bands"
    # A run-level number (margin_fraction, train_iterations, ...) sits on every attack's row: show it once.
    keys = ["run_id", "metric", "baseline", "value"]
    collapsed = (
        drifted.groupby(keys, sort=False, dropna=False)
        .agg(attack=("attack", ", ".join), diff=("diff", "first"), rel_diff=("rel_diff", "first"), allowed=("allowed", "first"))
        .reset_index()[["run_id", "attack", "metric", "baseline", "value", "diff", "rel_diff", "allowed"]]
    )
    shown = collapsed.astype(object).where(collapsed.notna(), None)
    shown.loc[collapsed["value"].isna(), "value"] = "missing"
    table = tabulate(shown, headers="keys", tablefmt=tablefmt, showindex=False, floatfmt=".6g", missingval="")
    return f"DRIFT: {len(drifted)} of {checked} numbers are outside their bands\n\n{table}"
