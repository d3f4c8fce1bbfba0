"""Measurement: re-verify what attacks propose, turn it into per-example rows, and summarize once.

The harness never trusts an attack: every norm is recomputed from the perturbation, and a perturbation
counts only if a plain forward pass of the network shows a strict flip, N(x) N(x + delta) < 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from marginbench.attacks.base import AttackResult, SharedPerturbation
from marginbench.models.two_layer import TwoLayerNet

EXAMPLE_COLUMNS = ["run_id", "family", "dataset", "model", "attack", "seed", "index", "label", "margin", "on_margin", "norm", "success"]
SUMMARY_COLUMNS = [
    "run_id", "family", "dataset", "model", "attack", "seed", "d", "n", "width", "ell",
    "n_attacked", "success_rate", "median_norm", "mean_norm", "max_norm", "sqrt_d", "median_norm_over_sqrt_d",
    "train_seconds", "attack_seconds",
]  # fmt: skip
KKT_COLUMNS = ["common_c", "margin_fraction", "normalized_margin", "kkt_residual"]
BEST = "best"  # the pseudo-attack whose norm is, per example, the minimum over the attacks run


@dataclass(frozen=True)
class Verified:
    """An attack's proposal after an independent check.

    Attributes:
        delta: (n, d) the perturbations that flip (zeros where none does).
        norm: (n,) ||delta_i|| where it flips, +inf elsewhere.
        success: (n,) bool, a strict flip was confirmed.
    """

    delta: Tensor
    norm: Tensor
    success: Tensor


def verify(net: TwoLayerNet, X: Tensor, result: AttackResult) -> Verified:
    """Keep the proposals of ``result`` on X: (n, d) that a forward pass confirms as strict flips."""
    proposed = torch.where(result.found[:, None], result.delta, 0.0)
    success = result.found & (net(X) * net(X + proposed) < 0)
    delta = torch.where(success[:, None], proposed, 0.0)
    norm = torch.where(success, delta.norm(dim=1), torch.inf)
    return Verified(delta=delta, norm=norm, success=success)


def verify_shared(net: TwoLayerNet, X: Tensor, shared: SharedPerturbation | None) -> float:
    """The common norm of a universal perturbation if it flips every one of its rows, else +inf; NaN for an
    attack that proposes none."""
    if shared is None:
        return math.nan
    if not bool(shared.rows.any()):
        return math.inf
    rows = shared.rows
    delta = shared.delta[rows]
    if not bool((net(X[rows]) * net(X[rows] + delta) < 0).all()):
        return math.inf
    return float(delta.norm(dim=1).max())


def example_rows(
    *,
    run: dict[str, object],
    attack: str,
    labels: Tensor,
    margins: Tensor,
    on_margin: Tensor,
    verified: Verified,
    extra: Mapping[str, Tensor] | None = None,
) -> pd.DataFrame:
    """One row per attacked example: EXAMPLE_COLUMNS, then the per-example ``extra`` columns (n,) each.

    ``run`` holds run_id, family, dataset, model, seed.
    """
    n = labels.shape[0]
    frame = pd.DataFrame(
        {
            "index": range(n),
            "label": labels.cpu().numpy().astype(int),
            "margin": margins.cpu().numpy(),
            "on_margin": on_margin.cpu().numpy(),
            "norm": verified.norm.cpu().numpy(),
            "success": verified.success.cpu().numpy(),
        }
    )
    for key in ("run_id", "family", "dataset", "model", "seed"):
        frame[key] = run[key]
    frame["attack"] = attack
    extra = extra or {}
    for key, values in extra.items():
        frame[key] = values.cpu().numpy()
    return frame[EXAMPLE_COLUMNS + list(extra)]


def best_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of attack ``best`` for one run: per example the smallest verified norm over the attacks' rows."""
    rows = pd.concat(frames, ignore_index=True)
    best = rows.loc[rows.groupby("index", sort=True)["norm"].idxmin()].copy()
    best["attack"] = BEST
    return best.reset_index(drop=True)


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
