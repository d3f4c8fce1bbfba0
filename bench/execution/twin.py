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

import hashlib
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from marginbench.attacks.closed_form import UniversalZ
from marginbench.bench.experiment.recipes import BuiltModel, RunContext
from marginbench.bench.experiment.spec import RunSpec
from marginbench.bench.registry.registries import MODELS
from marginbench.bench.results.store import TWIN_CHECKPOINT, atomic_write
from marginbench.checking.verify import verify_shared
from marginbench.models.datasets import Dataset
from marginbench.models.diagnostics import margin_set, normalized_margin
from marginbench.models.train import TrainReport, TrainSpec, train
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


CHECKPOINT_EVERY = 10_000  # twin iterations between checkpoints (a multiple of the paper schedule's growth_every)


def train_twin(init: TwoLayerNet, data: Dataset, spec: TrainSpec, checkpoint: Path | None, **train_options: Any) -> tuple[TwoLayerNet, TrainReport]:
    """``train(init, ...)`` on the paper's schedule, in pieces of CHECKPOINT_EVERY iterations, each piece's net
    saved to ``checkpoint`` so that a killed twin (hours at d = 300) resumes where it was; None: one piece.

    A step depends on nothing but the net and the learning rate, which the trainer grows by g every ``every``
    iterations; so a piece that starts at iteration t (a multiple of every) from the net of iteration t, with the
    learning rate the last piece ended on (its report's final_lr: the same product of g's, not lr g^k, which
    rounds otherwise), takes the very steps an unbroken run takes: the same net, bit for bit
    (tests/test_paper_scale.py checks it in float64). A checkpoint is used only for the same init and spec (its
    fingerprint), and removed once the twin is done.
    """
    if checkpoint is None or spec.iteration_cap <= CHECKPOINT_EVERY or CHECKPOINT_EVERY % spec.growth_every:
        return train(init, data.X, data.y, spec, **train_options)
    init_bytes = b"".join(tensor.detach().cpu().numpy().tobytes() for tensor in (init.W, init.b, init.v))
    fingerprint = {"spec": repr(spec), "init": hashlib.sha256(init_bytes).hexdigest(), "dtype": str(init.W.dtype)}
    net, done, lr, seconds = init, 0, spec.lr, 0.0
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=init.W.device, weights_only=True)
        if saved.get("fingerprint") == fingerprint:
            net = TwoLayerNet(W=saved["W"], b=saved["b"], v=saved["v"])
            done, lr, seconds = int(saved["iterations"]), float(saved["lr"]), float(saved["seconds"])
    while True:
        net, report = train(net, data.X, data.y, replace(spec, lr=lr, max_iters=min(CHECKPOINT_EVERY, spec.iteration_cap - done)), **train_options)
        done, lr, seconds = done + report.iterations, report.final_lr, seconds + report.seconds
        if report.stop_reason != "max_iters" or done >= spec.iteration_cap:
            break
        state = {"fingerprint": fingerprint, "W": net.W, "b": net.b, "v": net.v, "iterations": done, "lr": lr, "seconds": seconds}
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(checkpoint, lambda handle, state=state: torch.save(state, handle))
    checkpoint.unlink(missing_ok=True)
    return net, replace(report, iterations=done, seconds=seconds)


def twin_facts(run: RunSpec, data: Dataset, built: BuiltModel, context: RunContext, run_dir: Path | None = None) -> dict[str, Any]:
    """summary.csv's twin columns for one run: the twin's readings, their relative differences from the run's
    net, the twin's training, and twin_status ("ok", "differs", or "does not apply": a construction, or a model
    whose entry does not follow the recipe, such as l2, which trains to a rest point, not along a path)."""
    if run.twin is None:
        return {}
    if built.init is None or built.train is None or not MODELS.entry(run.model).follows_recipe:
        return {"twin_status": "does not apply"}
    checkpoint = run_dir / TWIN_CHECKPOINT if run_dir is not None else None
    twin_net, report = train_twin(
        built.init.to(context.device), data, twin_spec(run), checkpoint, seed=run.seed, progress=context.progress, description=f"{run.run_id} twin"
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


def twin_line(facts: Mapping[str, Any]) -> str:
    """The run's log line for its twin (``twin_facts`` of a twin that trained)."""
    diffs = ", ".join(f"{key.replace('_', ' ')} {100 * facts[f'twin_{key}_rel_diff']:+.2f}%" for key in COMPARED)
    how = f"{facts['twin_schedule']} schedule, {facts['twin_precision']}"
    return f"  twin ({how}): {facts['twin_iterations']} iterations in {facts['twin_seconds']:.1f} s; {diffs}: {facts['twin_status']}"


def twin_report(run_id: str, row: Mapping[str, Any]) -> str | None:
    """One line for a twin that differs (None otherwise): each reading's relative difference."""
    if row.get("twin_status") != "differs":
        return None
    parts = [f"{key.replace('_', ' ')} {100 * row[f'twin_{key}_rel_diff']:+.2f}%" for key in COMPARED]
    if row.get("twin_stop_reason") not in ("target_loss", None):
        parts.append(f"the twin stopped: {row['twin_stop_reason']}")
    return f"twin differs by more than {100 * TWIN_TOLERANCE:g}%: {run_id}: {', '.join(parts)}"
