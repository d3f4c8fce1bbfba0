"""The certification twin (``--twin paper``): a run's network trained a second time, from the same init, with
Vardi et al.'s own schedule (Section 6: lr 1e-5 x1.1 every 100 iterations, float64), and the two compared.
``--twin paper-mean`` takes that schedule on the mean loss L / n, where the summed loss's steps diverge;
``--twin-precision float32`` trains the twin in float32 where float64 would not finish.

A fast schedule (normalized, arc, float32) claims to land on the paper schedule's network; the twin checks
the claim run by run on what Figures 1-2 read off the network: universal-z's common c (the scale along
Vardi et al.'s Theorem 4.1 direction, computed on both nets here), the normalized margin
min_i q_i / ||theta||^2 and the fraction of training points on the margin. A relative difference above
TWIN_TOLERANCE in any of them marks the twin "differs", in summary.csv's twin_status and in one line at the
end of the sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from marginbench.attacks.closed_form import UniversalZ
from marginbench.bench.experiment.recipes import BuiltModel, RunContext
from marginbench.bench.experiment.spec import RunSpec
from marginbench.bench.registry.registries import MODELS
from marginbench.checking.verify import verify_shared
from marginbench.models.datasets import Dataset
from marginbench.models.diagnostics import margin_set, normalized_margin
from marginbench.models.train import TrainSpec, train
from marginbench.models.two_layer import TwoLayerNet

TWIN_TOLERANCE = 0.01  # the bar: the fast path is "the same network" within 1%
COMPARED = ("common_c", "normalized_margin", "margin_fraction")


def twin_spec(run: RunSpec) -> TrainSpec:
    """The paper's schedule on the summed loss (twin "paper") or the mean ("paper-mean"), stopped where the run
    stops (its summed loss below its target: the mean below target / n, the same point of the flow's path, ~100
    ln(n) / ln(1.1) more steps), in the spec's twin precision (float64, the run's nets' dtype, unless float32)."""
    target = run.train.target_loss
    mean = run.twin == "paper-mean"
    return TrainSpec(
        target_loss=target / run.n if mean and target is not None else target,
        reduction="mean" if mean else "sum",
        precision="float32" if run.experiment.twin_precision == "float32" else None,
    )


def _readings(net: TwoLayerNet, data: Dataset) -> dict[str, float]:
    """What the twin compares: common c (universal-z on the training points), normalized margin, margin fraction."""
    q = data.y * net(data.X)
    common_c = verify_shared(net, data.X, UniversalZ()(net, data.X, data.y).shared)
    return {"common_c": common_c, "normalized_margin": normalized_margin(net, q), "margin_fraction": float(margin_set(q).double().mean())}


def relative_difference(fast: float, twin: float) -> float:
    """(fast - twin) / |twin|; NaN where either is not finite or the twin's is 0."""
    if not (math.isfinite(fast) and math.isfinite(twin)) or twin == 0:
        return math.nan
    return (fast - twin) / abs(twin)


def twin_facts(run: RunSpec, data: Dataset, built: BuiltModel, context: RunContext) -> dict[str, Any]:
    """summary.csv's twin columns for one run: the twin's readings, their relative differences from the run's
    net, the twin's training, and twin_status ("ok", "differs", or "does not apply": a construction, or a model
    whose entry does not follow the recipe, such as l2, which trains to a rest point, not along a path)."""
    if run.twin is None:
        return {}
    if built.init is None or built.train is None or not MODELS.entry(run.model).follows_recipe:
        return {"twin_status": "does not apply"}
    twin_net, report = train(
        built.init.to(context.device), data.X, data.y, twin_spec(run), seed=run.seed, progress=context.progress, description=f"{run.run_id} twin"
    )
    fast, twin = _readings(built.net, data), _readings(twin_net, data)
    facts: dict[str, Any] = {
        "twin_schedule": run.twin,
        "twin_precision": run.experiment.twin_precision,
        "twin_iterations": report.iterations,
        "twin_seconds": report.seconds,
        "twin_stop_reason": report.stop_reason,
    }
    for key in COMPARED:
        facts[f"twin_{key}"] = twin[key]
        facts[f"twin_{key}_rel_diff"] = relative_difference(fast[key], twin[key])
    within = report.reached_target and all(abs(facts[f"twin_{key}_rel_diff"]) <= TWIN_TOLERANCE for key in COMPARED)
    facts["twin_status"] = "ok" if within else "differs"
    return facts


def twin_report(run_id: str, row: Mapping[str, Any]) -> str | None:
    """One line for a twin that differs (None otherwise): each reading's relative difference."""
    if row.get("twin_status") != "differs":
        return None
    parts = [f"{key.replace('_', ' ')} {100 * row[f'twin_{key}_rel_diff']:+.2f}%" for key in COMPARED]
    if row.get("twin_stop_reason") not in ("target_loss", None):
        parts.append(f"the twin stopped: {row['twin_stop_reason']}")
    return f"twin differs by more than {100 * TWIN_TOLERANCE:g}%: {run_id}: {', '.join(parts)}"
