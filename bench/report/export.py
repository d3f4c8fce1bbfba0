"""The leaderboard for other tools and web pages: both tables as records, every float at full precision, with
the provenance of each result directory (``marginbench leaderboard --format json|csv``).

JSON (strict RFC 8259, which JavaScript's JSON.parse reads): ``{"format", "columns", "models", "attacks",
"provenance", "written_by"}``, one object per table row; +inf (an example set never flipped, a ratio to a
failure) is the string "inf", a value that does not apply is null. ``written_by``: the versions of the libraries
that computed the tables (``library_versions``); each directory's provenance lists those that computed its runs.
CSV: one table, the models' rows then the attacks', told apart by the first column ``table``; columns of the
other table are empty; +inf is ``inf``; the last column, ``provenance``, holds the same provenance list as the
JSON (compact JSON text, equal on every row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marginbench.bench.registry.provenance import library_versions
from marginbench.bench.report.leaderboard import ATTACK_HEADERS, MODEL_HEADERS, attack_table, model_table
from marginbench.bench.results.readback import Results, read_manifest

FORMAT = "marginbench-leaderboard/1"
# The tables' own names for their columns are short; exported records say what the numbers are.
RENAMED = {"median": "best_over_sqrt_d_median", "low": "best_over_sqrt_d_min", "high": "best_over_sqrt_d_max"}
COLUMNS = {
    "table": "csv only: models or attacks",
    "rank": "1 = most robust model / most optimal attack; equal scores share a rank; flagged models are ranked after the unflagged ones",
    "model": "model name", "dataset": "dataset name", "d": "input dimension", "n": "training examples", "width": "hidden neurons",
    "best_over_sqrt_d_median": "per run, the median over examples of the best verified norm / sqrt(d); then the median over runs",
    "best_over_sqrt_d_min": "the smallest per-run score", "best_over_sqrt_d_max": "the largest per-run score",
    "runs": "runs (seeds x directories) of the model setting / that the attack ran on", "seeds": "the seeds, comma-separated",
    "flipped": "fraction of examples some attack flipped",
    "attack": "attack name",
    "optimality": "AttackBench's optimality: per run, area under the best's robust-accuracy curve / the attack's (1 = the best); mean over runs",
    "best_on": "fraction of examples where the attack attains the best norm, to 1e-6 relative (ties count for each)",
    "median_ratio": "median over examples of the attack's norm / the best norm",
    "success": "fraction of examples the attack flipped",
    "ms_per_example": "median over runs of the attack's milliseconds per example",
    "forward_per_example": "median forward passes per example", "backward_per_example": "median backward passes per example",
    "init_scale": "the multiplier of the initialization's standard deviation (part of the model setting)",
    "certified_gap": "per run, the median over examples of the best norm / its certified lower bound (1 = proved); then the median over runs",
    "proved": "fraction of examples whose best norm is a proved optimum (within 0.01% of its certified lower bound)",
    "proved_runs": "share of the attack's runs on which every example has a proved optimum, so that its optimality was measured against the proved"
                   " optimum instead of the best; empty where no run was",
    "clean_accuracy_train": "per run, the fraction of training points the net classifies correctly (y N(x) > 0); the mean over runs",
    "clean_accuracy_attacked": "per run, the fraction of the attacked points (held-out points where the dataset has them, else the training points)"
                               " classified correctly; the mean over runs",
    "flag": "why the model setting is ranked after the unflagged ones: 'constant sign' (N of one sign, or 0, on every attacked point of a run) and/or"
            " 'misclassifies k/n training points'; empty where neither",
    "provenance": "csv only: the provenance list of the JSON export",
}  # fmt: skip


def plain(value: Any) -> Any:
    """``value`` as strict JSON can hold it: numpy scalars to Python, NaN to None, +-inf to "inf"/"-inf"."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None if value is pd.NA else value


def provenance(dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Per result directory, what its manifest says about how it was made, and the checksums of its tables."""
    keys = ("preset", "git_commit", "versions", "machine", "platform", "device", "started", "finished", "status", "command")
    records = []
    for given in dirs:
        manifest = read_manifest(given)
        records.append(
            {
                "dir": str(given),
                **{k: manifest.get(k) for k in keys},
                "tables_sha256": manifest.get("tables", {}),
                "specs": manifest.get("specs", []),
                "runs": manifest.get("runs", {}),
            }
        )
    return plain(records)


def tables(results: Results) -> dict[str, pd.DataFrame]:
    """The models and attacks tables with their exported column names; integer columns stay integers."""
    out = {}
    for name, table, headers in (("models", model_table(results), MODEL_HEADERS), ("attacks", attack_table(results), ATTACK_HEADERS)):
        table = table[[*[c for c in headers if c in table], *[c for c in table if c not in headers]]].rename(columns=RENAMED)
        out[name] = table.astype({c: "Int64" for c in table if pd.api.types.is_integer_dtype(table[c])})
    return out


def leaderboard_json(results: Results, dirs: Sequence[str | Path]) -> str:
    """The JSON export (see the module docstring)."""
    frames = tables(results)
    document = {
        "format": FORMAT,
        "columns": {k: v for k, v in COLUMNS.items() if k not in ("table", "provenance")},
        **{name: plain(frame.astype(object).to_dict("records")) for name, frame in frames.items()},
        "provenance": provenance(dirs),
        "written_by": library_versions(),
    }
    return json.dumps(document, indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def leaderboard_csv(results: Results, dirs: Sequence[str | Path]) -> str:
    """The CSV export (see the module docstring); floats are written as Python's repr, which reads back exactly."""
    frames = [frame.assign(table=name) for name, frame in tables(results).items()]
    merged = pd.concat(frames, ignore_index=True)
    merged["provenance"] = json.dumps(provenance(dirs), allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    order = ["table", *[c for c in merged if c not in ("table", "provenance")], "provenance"]
    return merged[order].to_csv(index=False)
