"""Reports: the tables printed for a result directory (numbers are rounded here, never in the store)."""

from __future__ import annotations

import pandas as pd
from tabulate import tabulate

RUN_TABLE_COLUMNS = {
    "model": "model",
    "dataset": "dataset",
    "init_scale": "init",
    "attack": "attack",
    "seed": "seed",
    "d": "d",
    "n": "n",
    "width": "width",
    "clean_accuracy_train": "train acc",
    "clean_accuracy_attacked": "attacked acc",
    "success_rate": "success",
    "median_norm": "median norm",
    "median_norm_over_sqrt_d": "median/√d",
    "common_c_over_sqrt_d": "common c/√d",
    "construction_radius": "Thm 3.1 radius",
    "train_stop_reason": "training stop",
}
ORDER = ("model", "dataset", "d", "n", "width", "init_scale", "attack", "seed")  # the rows of one model setting together


def run_table(summary: pd.DataFrame, *, tablefmt: str = "github") -> str:
    """One line per (run, attack): its setting (model, dataset, sizes, init scale), the clean accuracies, success
    rate, median verified norm, and the same over sqrt(d); blank where a column does not apply or a directory
    predates it."""
    columns = [c for c in RUN_TABLE_COLUMNS if c in summary and summary[c].notna().any()]  # no column that applies to no row
    table = summary.sort_values([c for c in ORDER if c in summary], kind="stable")[columns].rename(columns=RUN_TABLE_COLUMNS)
    table = table.astype(object).where(table.notna(), None)  # blank, not "nan", where a column does not apply
    return tabulate(table, headers="keys", tablefmt=tablefmt, showindex=False, floatfmt=".4g", missingval="")
