"""Measurement: re-verify what attacks propose, and build every row and table of a result directory.

The harness never trusts an attack: every norm is recomputed from the perturbation, and a perturbation
counts only if a plain forward pass of the network shows a flip beyond rounding, s N(x + delta) < -tau
(``marginbench.attacks.flips``), so that no summation order can reverse the verdict. Per-example
rows stay per example until ``summarize``; the per-example ``best`` is computed in one place (``best_of``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from marginbench.attacks.base import SEARCH_RADIUS, AttackResult, SharedPerturbation
from marginbench.attacks.exact import proved_optimal
from marginbench.attacks.flips import near_ties, strict_flips
from marginbench.models.certify import bracket_top, certified_radius
from marginbench.models.two_layer import TwoLayerNet

if TYPE_CHECKING:
    from marginbench.bench.spec import RunSpec

EXAMPLE_COLUMNS = ["run_id", "family", "dataset", "model", "attack", "seed", "index", "label", "margin", "on_margin", "norm", "success"]
SUMMARY_COLUMNS = [
    "run_id", "family", "dataset", "model", "attack", "seed", "d", "n", "width", "ell",
    "n_attacked", "success_rate", "median_norm", "mean_norm", "max_norm", "sqrt_d", "median_norm_over_sqrt_d",
    "train_seconds", "attack_seconds",
]  # fmt: skip
KKT_COLUMNS = ["common_c", "margin_fraction", "normalized_margin", "kkt_residual"]
STATUS_COLUMNS = ["run_status", "attack_status", "error"]  # last columns of summary.csv
PASS_COLUMNS = ("forward_passes_per_example", "backward_passes_per_example")
CERTIFIED = "certified_lower_bound"  # an attack's own per-example lower bound (exact's), a column of its rows
BEST = "best"  # the pseudo-attack whose norm is, per example, the minimum over the attacks run


@dataclass(frozen=True)
class Verified:
    """An attack's proposal after an independent check.

    Attributes:
        delta: (n, d) the perturbations that flip (zeros where none does).
        norm: (n,) ||delta_i|| where it flips, +inf elsewhere.
        success: (n,) bool, a flip beyond rounding was confirmed.
        ties: (n,) bool, proposals rejected as near-ties: |N(x + delta)| within the rounding bound tau.
    """

    delta: Tensor
    norm: Tensor
    success: Tensor
    ties: Tensor


def verify(net: TwoLayerNet, X: Tensor, result: AttackResult) -> Verified:
    """Keep the proposals of ``result`` on X: (n, d) that a forward pass confirms as flips beyond rounding."""
    proposed = torch.where(result.found[:, None], result.delta, 0.0)
    success = result.found & strict_flips(net, X, X + proposed)
    ties = result.found & ~success & near_ties(net, X, X + proposed)
    delta = torch.where(success[:, None], proposed, 0.0)
    norm = torch.where(success, delta.norm(dim=1), torch.inf)
    return Verified(delta=delta, norm=norm, success=success, ties=ties)


def verify_shared(net: TwoLayerNet, X: Tensor, shared: SharedPerturbation | None) -> float:
    """The common norm of a universal perturbation if it flips every one of its rows, else +inf; NaN for an
    attack that proposes none."""
    if shared is None:
        return math.nan
    if not bool(shared.rows.any()):
        return math.inf
    rows = shared.rows
    delta = shared.delta[rows]
    if not bool(strict_flips(net, X[rows], X[rows] + delta).all()):
        return math.inf
    return float(delta.norm(dim=1).max())


@dataclass(frozen=True, kw_only=True)
class RunKeys:
    """What identifies a run in every row of the tables."""

    run_id: str
    family: str
    dataset: str
    model: str
    seed: int

    @classmethod
    def of(cls, run: RunSpec) -> RunKeys:
        return cls(run_id=run.run_id, family=run.family, dataset=run.dataset, model=run.model, seed=run.seed)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What one run adds to a result directory; it crosses process boundaries (plain numpy and pandas).

    Attributes:
        index: the run's position in the sweep (the order of every table).
        keys: the run's identity.
        examples: one row per (attack, example), EXAMPLE_COLUMNS first; empty where the run failed early.
        run_row: the run's sizes, training facts and theory diagnostics (summary.csv columns).
        attack_rows: one dict per attack (and ``best``): wall time, common c, passes, status.
        manifest: the run's entry in manifest.json (wall times per stage, training report, status).
        log: the run's log lines.
        arrays: model.pt, data.npz and perturbations.npz as numpy arrays; empty where the run had no model.
    """

    index: int
    keys: RunKeys
    examples: pd.DataFrame
    run_row: Mapping[str, Any]
    attack_rows: Sequence[Mapping[str, Any]]
    manifest: Mapping[str, Any]
    log: Sequence[str] = ()
    arrays: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.keys.run_id

    @property
    def failed(self) -> bool:
        return self.run_row["run_status"] != "ok"

    def as_json(self) -> dict[str, Any]:
        """run.json's content: everything but the example rows and the arrays."""
        keys = {"family": self.keys.family, "dataset": self.keys.dataset, "model": self.keys.model, "seed": self.keys.seed}
        return {"keys": keys, "run_row": dict(self.run_row), "attack_rows": [dict(r) for r in self.attack_rows], "manifest": dict(self.manifest), "log": list(self.log)}

    @classmethod
    def from_json(cls, index: int, run_id: str, examples: pd.DataFrame, data: Mapping[str, Any]) -> RunRecord:
        """The record that ``as_json`` wrote for ``run_id`` (without its arrays)."""
        return cls(
            index=index,
            keys=RunKeys(run_id=run_id, **data["keys"]),
            examples=examples,
            run_row=data["run_row"],
            attack_rows=data["attack_rows"],
            manifest=data["manifest"],
            log=tuple(data.get("log", ())),
        )


def example_rows(*, keys: RunKeys, attack: str, labels: Tensor, margins: Tensor, on_margin: Tensor, verified: Verified, extra: Mapping[str, Tensor]) -> pd.DataFrame:
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


def certificates(net: TwoLayerNet | Any, X: Tensor, best_norm: Tensor, bounds: Sequence[Tensor]) -> dict[str, Tensor]:
    """Per example of X: (n, d), what is proved about its minimal flip, as examples.csv columns (n,) each:

    - ``lower_bound``: the largest certified lower bound on the minimal norm: the triangle relaxation's
      radius (``models.certify``, two-layer nets; NaN for others) and the attacks' own ``bounds`` (n,) each
      (``exact``'s, from SCIP: its ``certified_lower_bound`` column; NaN where an attack has none);
    - ``proved_optimal``: the best verified norm ``best_norm`` (n,) is within PROOF_GAP of that bound, or no
      flip exists within the search radius where every attack stops.
    """
    top = bracket_top(best_norm, X.shape[1], SEARCH_RADIUS)
    lower = certified_radius(net, X, top) if isinstance(net, TwoLayerNet) else torch.full_like(best_norm, math.nan)
    for bound in bounds:
        lower = torch.fmax(lower, bound.to(lower))
    return {"lower_bound": lower, "proved_optimal": proved_optimal(best_norm, lower, X.shape[1])}


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
        gap = float((best_norm / proved["lower_bound"]).median())
        log(f"  certified: {int(proved['proved_optimal'].sum())}/{len(best_norm)} examples proved optimal, median best / lower bound {gap:.4g}")


def best_of(rows: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per example (the rows that share ``by``), its row of smallest verified norm; the first attack on ties."""
    return rows.loc[rows.groupby(list(by), sort=True)["norm"].idxmin()]


def best_rows(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Rows of attack ``best`` for one run: per example the smallest verified norm over the attacks' rows."""
    best = best_of(pd.concat(frames, ignore_index=True), ["index"]).copy()
    best["attack"] = BEST
    return best.reset_index(drop=True)


def attack_row(run_id: str, attack: str, *, seconds: float, common_c: float, passes: Mapping[str, float], result: AttackResult, verified: Verified, status: str, error: str) -> dict[str, Any]:
    """summary.csv's attack-level facts of one attack on one run; ``rejected_ties`` counts its proposals that
    were within rounding of N = 0 (no flip in some summation order)."""
    ties = int(verified.ties.sum())
    return {"run_id": run_id, "attack": attack, "attack_seconds": seconds, "common_c": common_c, **passes, "rejected_ties": ties, **result.extras, "attack_status": status, "attack_error": error}


def best_attack_row(run_id: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The attack-level facts of ``best``: the attacks' wall times and passes added up."""
    totals = {key: sum(row[key] for row in rows) for key in ("attack_seconds", *PASS_COLUMNS)}
    return {"run_id": run_id, "attack": BEST, **totals, "attack_status": "ok", "attack_error": ""}


def failed_record(index: int, keys: RunKeys, sizes: Mapping[str, int], attacks: Sequence[str], error: str, manifest: Mapping[str, Any], log: Sequence[str]) -> RunRecord:
    """The record of a run that raised before it had rows: every attack "not run", the error in one line."""
    run_row = {"run_id": keys.run_id, **sizes, "run_status": "failed", "run_error": error}
    attack_rows = [{"run_id": keys.run_id, "attack": name, "attack_status": "not run", "attack_error": ""} for name in attacks]
    return RunRecord(index=index, keys=keys, examples=pd.DataFrame(columns=EXAMPLE_COLUMNS), run_row=run_row, attack_rows=attack_rows, manifest=manifest, log=log)


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
