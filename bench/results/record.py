"""A run's record: what one run adds to a result directory, and the columns that scripts rely on (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from marginbench.bench.experiment.spec import RunSpec

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
        return {
            "keys": keys,
            "run_row": dict(self.run_row),
            "attack_rows": [dict(r) for r in self.attack_rows],
            "manifest": dict(self.manifest),
            "log": list(self.log),
        }

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


def failed_record(
    index: int, keys: RunKeys, sizes: Mapping[str, int], attacks: Sequence[str], error: str, manifest: Mapping[str, Any], log: Sequence[str]
) -> RunRecord:
    """The record of a run that raised before it had rows: every attack "not run", the error in one line."""
    run_row = {"run_id": keys.run_id, **sizes, "run_status": "failed", "run_error": error}
    attack_rows = [{"run_id": keys.run_id, "attack": name, "attack_status": "not run", "attack_error": ""} for name in attacks]
    return RunRecord(
        index=index, keys=keys, examples=pd.DataFrame(columns=EXAMPLE_COLUMNS), run_row=run_row, attack_rows=attack_rows, manifest=manifest, log=log
    )
