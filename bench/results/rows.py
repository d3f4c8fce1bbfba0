"""The rows and tables of a result directory, built from verified proposals.

Per-example rows stay per example until ``summarize``; the per-example ``best`` is computed in one place
(``best_of``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from marginbench.bench.results.record import BEST, CERTIFIED, EXAMPLE_COLUMNS, KKT_COLUMNS, PASS_COLUMNS, STATUS_COLUMNS, SUMMARY_COLUMNS, RunKeys, RunRecord
from marginbench.checking.proposal import AttackResult
from marginbench.checking.verify import Verified, certificates
from marginbench.models.two_layer import TwoLayerNet


def example_rows(
    *, keys: RunKeys, attack: str, labels: Tensor, margins: Tensor, on_margin: Tensor, verified: Verified, extra: Mapping[str, Tensor]
) -> pd.DataFrame:
    """One row per attacked example: EXAMPLE_COLUMNS, then the per-example ``extra`` columns (n,) each."""
    frame = pd.DataFrame(
        {
            "index": range(labels.shape[0]),
            "label": labels.cpu().numpy().astype(int),
            "margin": margins.cpu().numpy(),
            "on_margin": on_margin.cpu().numpy(),
            "norm": verified.norm.cpu().numpy(),
            "success": verified.success.cpu().numpy(),
        }
    )
    for key in ("run_id", "family", "dataset", "model", "seed"):
        frame[key] = getattr(keys, key)
    frame["attack"] = attack
    for key, values in extra.items():
        frame[key] = values.cpu().numpy()
    return frame[EXAMPLE_COLUMNS + list(extra)]


def certify_frames(net: TwoLayerNet | Any, X: Tensor, frames: Sequence[pd.DataFrame], log: Callable[[str], None] | None = None) -> None:
    """Add ``certificates``' columns to every frame of one run (each one attack's rows, index 0..n-1 in order,
    the ``best`` rows among them), from the frames alone: the same numbers for a run that had its attacks
    from the start and for one attacked again later (``marginbench attack``)."""
    norms = np.stack([frame["norm"].to_numpy(dtype=float) for frame in frames])
    best_norm = torch.as_tensor(norms.min(axis=0), dtype=X.dtype, device=X.device)
    bounds = [torch.tensor(frame[CERTIFIED].to_numpy(dtype=float), dtype=X.dtype, device=X.device) for frame in frames if CERTIFIED in frame]
    proved = certificates(net, X, best_norm, bounds)
    for frame in frames:
        for column, values in proved.items():
            frame[column] = values.cpu().numpy()
    if log is not None:
        proved_count = f"  certified: {int(proved['proved_optimal'].sum())}/{len(best_norm)} examples proved optimal"
        gaps = best_norm / proved["lower_bound"]
        gaps = gaps[~gaps.isnan()]  # NaN where no bound exists (no closed form: not a two-layer net, and no attack's own)
        if len(gaps) == 0:
            why = "not a two-layer net" if not isinstance(net, TwoLayerNet) else "no attack bounded it"
            log(f"{proved_count}, no certified lower bound ({why})")
        else:
            log(f"{proved_count}, median best / lower bound {float(gaps.median()):.4g}")


def best_of(rows: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per example (the rows that share ``by``), its row of smallest verified norm; the first attack on ties."""
    return rows.loc[rows.groupby(list(by), sort=True)["norm"].idxmin()]


def best_rows(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Rows of attack ``best`` for one run: per example the smallest verified norm over the attacks' rows."""
    best = best_of(pd.concat(frames, ignore_index=True), ["index"]).copy()
    best["attack"] = BEST
    return best.reset_index(drop=True)


def attack_row(
    run_id: str, attack: str, *, seconds: float, common_c: float, passes: Mapping[str, float], result: AttackResult, verified: Verified, status: str, error: str
) -> dict[str, Any]:
    """summary.csv's attack-level facts of one attack on one run; ``rejected_ties`` counts its proposals that
    were within rounding of N = 0 (no flip in some summation order)."""
    ties = int(verified.ties.sum())
    return {
        "run_id": run_id,
        "attack": attack,
        "attack_seconds": seconds,
        "common_c": common_c,
        **passes,
        "rejected_ties": ties,
        **result.extras,
        "attack_status": status,
        "attack_error": error,
    }


def best_attack_row(run_id: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The attack-level facts of ``best``: the attacks' wall times and passes added up."""
    totals = {key: sum(row[key] for row in rows) for key in ("attack_seconds", *PASS_COLUMNS)}
    return {"run_id": run_id, "attack": BEST, **totals, "attack_status": "ok", "attack_error": ""}


def summarize(examples: pd.DataFrame, runs: pd.DataFrame, attacks: pd.DataFrame) -> pd.DataFrame:
    """The one aggregation step: per (run_id, attack) statistics of the verified norms.

    Failures count as +inf norms, so a median is finite only when at least half the examples flipped.

    Args:
        examples: rows in EXAMPLE_COLUMNS.
        runs: one row per run_id (d, n, width, ell, train_seconds, sqrt_d and run-level diagnostics).
        attacks: one row per (run_id, attack) (attack_seconds, common_c, ...).
    """
    grouped = examples.groupby(["run_id", "attack"], sort=False)["norm"]
    stats = pd.DataFrame(
        {
            "n_attacked": grouped.size(),
            "success_rate": examples.groupby(["run_id", "attack"], sort=False)["success"].mean(),
            "median_norm": grouped.median(),
            "mean_norm": grouped.mean(),
            "max_norm": grouped.max(),
        }
    ).reset_index()
    if "lower_bound" in examples:  # what is proved: the share of examples at their proved optimum, the median gap to the bound
        certified = examples.assign(gap=examples["norm"] / examples["lower_bound"], proved=examples["proved_optimal"].astype(float))
        by = certified.groupby(["run_id", "attack"], sort=False)
        stats = stats.merge(by.agg(proved_fraction=("proved", "mean"), median_certified_gap=("gap", "median")).reset_index(), on=["run_id", "attack"])
    keys = examples[["run_id", "family", "dataset", "model", "seed"]].drop_duplicates("run_id")
    clash = (set(runs.columns) & set(attacks.columns)) - {"run_id"}
    if clash:  # a run-level fact and an attack's fact with one name would become name_x / name_y silently
        raise ValueError(f"run and attack facts share column names: {', '.join(sorted(clash))}")
    out = stats.merge(keys, on="run_id").merge(runs, on="run_id").merge(attacks, on=["run_id", "attack"], how="left")
    out["median_norm_over_sqrt_d"] = out["median_norm"] / out["sqrt_d"]
    if "common_c" in out:
        out["common_c_over_sqrt_d"] = out["common_c"] / out["sqrt_d"]
    first = SUMMARY_COLUMNS + [c for c in KKT_COLUMNS if c in out]
    return out[first + [c for c in out.columns if c not in first]]


def sweep_tables(records: Sequence[RunRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(examples, summary) of finished runs, in the order of their index; status columns last in summary.

    A run that failed before it had rows gets one summary row per attack, its statistics empty.
    """
    records = sorted(records, key=lambda r: r.index)
    with_rows = [r for r in records if not r.examples.empty]
    examples = pd.concat([r.examples for r in with_rows], ignore_index=True) if with_rows else pd.DataFrame(columns=EXAMPLE_COLUMNS)
    parts = []
    if with_rows:
        run_rows = pd.DataFrame([dict(r.run_row) for r in with_rows])
        attack_rows = pd.DataFrame([dict(row) for r in with_rows for row in r.attack_rows])
        parts.append(summarize(examples, run_rows, attack_rows))
    for r in records:
        if r.examples.empty:
            rows = pd.DataFrame([dict(row) for row in r.attack_rows]).merge(pd.DataFrame([dict(r.run_row)]), on="run_id")
            parts.append(rows.assign(family=r.keys.family, dataset=r.keys.dataset, model=r.keys.model, seed=r.keys.seed, n_attacked=0))
    if not parts:
        return examples, pd.DataFrame(columns=["run_id", "attack", *STATUS_COLUMNS])
    summary = pd.concat(parts, ignore_index=True)
    order = {r.run_id: r.index for r in records}
    summary = summary.iloc[summary["run_id"].map(order).argsort(kind="stable")].reset_index(drop=True)
    run_error = summary["run_error"].fillna("").astype(str)
    summary["error"] = run_error.where(run_error != "", summary["attack_error"].fillna("").astype(str))
    summary = summary.drop(columns=["run_error", "attack_error"])
    return examples, summary[[c for c in summary.columns if c not in STATUS_COLUMNS] + STATUS_COLUMNS]
