"""The runner: one run, dataset -> model -> attacks -> verified rows (``execute_run``).

``marginbench.bench.executor`` runs the runs of a spec (in this process, on a process pool or on Ray) and
writes them to the store: after each run its files and the updated tables are on disk, so an interruption
loses only the runs that were in progress.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

import marginbench
from marginbench.attacks.base import AttackResult, AttackUnavailable
from marginbench.bench.counting import CountingNet
from marginbench.bench.measure import BEST, best_rows, example_rows, verify, verify_shared
from marginbench.bench.registry import ATTACKS, DATASETS, MODELS, BuiltModel
from marginbench.bench.spec import ExperimentSpec, RunSpec, SpecError
from marginbench.models.datasets import Dataset
from marginbench.models.diagnostics import (
    kkt_residual,
    margin_set,
    normalized_margin,
    off_manifold_gradients,
    off_weight_drift,
    thm51_assumption,
)
from marginbench.models.two_layer import TwoLayerNet

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunOutcome:
    """What one run adds: per-example rows, run- and attack-level facts, and the arrays of runs/<run_id>/."""

    examples: pd.DataFrame
    run_row: dict[str, Any]
    attack_rows: list[dict[str, Any]]
    manifest_entry: dict[str, Any]
    state: dict[str, torch.Tensor]  # model.pt
    data: dict[str, np.ndarray]  # data.npz
    perturbations: dict[str, np.ndarray]  # perturbations.npz


def resolve_device(name: str) -> torch.device:
    """The torch device for --device; SpecError if CUDA is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device cuda: no CUDA device is available to PyTorch on this machine")
    return torch.device(name)


def theory_diagnostics(run: RunSpec, data: Dataset, built: BuiltModel) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The family's theorem checks: run-level facts for summary.csv and per-example columns for examples.csv.

    kkt (Vardi et al.): fraction of training points on the margin, normalized margin, KKT residual.
    subspace (Melamed et al.), at the attacked points x0 of P: active neurons k, off-manifold gradient and
    its Theorem 4.1 / 6.1 (6.2 with L2) bounds and how often they hold, the off-manifold weight drift
    (Theorem A.2: zero without L2), and whether ell >= 32 (m - 1) log(m^2 d) (Theorem 5.1's assumption).
    """
    net = built.net
    if run.family == "kkt":
        q_train = data.y * net(data.X)
        facts = {
            "margin_fraction": float(margin_set(q_train).double().mean()),
            "normalized_margin": normalized_margin(net, q_train),
            "kkt_residual": kkt_residual(net, data.X, data.y),
        }
        return facts, {}
    if data.P_basis is None or built.init is None:
        return {}, {}
    X0, _ = data.attacked
    decay = built.train.weight_decay if built.train is not None else 1.0
    grads = off_manifold_gradients(net, X0, data.P_basis, beta=built.facts["init_beta"] * decay)
    per_example = {"k": grads.k, "g_off": grads.g_off, "g_off_lower": grads.lower, "g_off_upper": grads.upper}
    facts = {f"median_{key}": float(value.median()) for key, value in per_example.items()}
    facts.update(
        lower_bound_holds=float((grads.g_off >= grads.lower).double().mean()),
        upper_bound_holds=float((grads.g_off <= grads.upper).double().mean()),
        off_weight_drift=off_weight_drift(built.init, net, data.P_basis),
        weight_decay=decay,
        thm51_assumption=thm51_assumption(ell=data.d - data.P_basis.shape[1], width=net.width, d=data.d),
    )
    return facts, per_example


def execute_run(
    run: RunSpec, attacks: tuple[str, ...], device: torch.device, *, progress: bool, log: Log, prebuilt: tuple[Dataset, BuiltModel, float] | None = None
) -> RunOutcome:
    """One run: data, model, every attack (verified), diagnostics; its rows and the arrays to save.

    ``prebuilt``: the run's data, model and seconds spent on the data, where they were made beforehand (its
    seeds trained in one batch); its model seconds are then the net's training seconds.
    """
    seconds: dict[str, Any] = {}
    if prebuilt is not None:
        data, built, seconds["data"] = prebuilt
        seconds["model"] = built.train.seconds if built.train is not None else 0.0
    else:
        start = time.perf_counter()
        data = DATASETS.get(run.dataset)(run).to(device)
        seconds["data"] = time.perf_counter() - start
        start = time.perf_counter()
        built = MODELS.get(run.model)(data, run, progress)
        seconds["model"] = time.perf_counter() - start
    net = built.net
    if built.train is not None:
        t = built.train
        log(f"  trained {t.iterations} iterations in {t.seconds:.1f} s: log10 loss {t.log10_loss:.2f} ({t.stop_reason})")
        if t.stop_reason == "nonfinite":
            log(f"  warning: training hit NaN/inf at iteration {t.nonfinite_iteration}; attacking the last finite parameters")

    X, y = data.attacked
    margins = y * net(X)
    on_margin = margin_set(margins)
    sqrt_d = math.sqrt(data.d)

    start = time.perf_counter()
    run_row: dict[str, Any] = {
        "run_id": run.run_id,
        "d": data.d,
        "n": data.n,
        "width": net.width,
        "ell": run.ell if run.ell is not None else math.nan,
        "sqrt_d": sqrt_d,
        "alpha": run.alpha if run.alpha is not None else math.nan,
        "init_scale": run.init_scale,
        "train_seconds": built.train.seconds if built.train is not None else seconds["model"],
    }
    if built.train is not None:
        run_row.update(
            train_iterations=built.train.iterations,
            train_log10_loss=built.train.log10_loss,
            train_min_margin=built.train.min_margin,
            train_stop_reason=built.train.stop_reason,
        )
    run_row.update(built.facts)
    diagnostics, per_example = theory_diagnostics(run, data, built)
    run_row.update(diagnostics)
    seconds["diagnostics"] = time.perf_counter() - start

    keys = {"run_id": run.run_id, "family": run.family, "dataset": run.dataset, "model": run.model, "seed": run.seed}
    frames, attack_rows, perturbations = [], [], {}
    seconds["attacks"] = {}
    for name in attacks:
        counted = CountingNet.wrap(net)  # counts the attack's forward and backward passes
        start = time.perf_counter()
        result, status, error = attempt_attack(name, run, data, counted)
        if status != "ok":
            log(f"  {name}: {status}: {error}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        verified = verify(net, X, result)
        common_c = verify_shared(net, X, result.shared)
        seconds["attacks"][name] = elapsed
        extra = {**per_example, **{fact: values.detach() for fact, values in result.example_facts.items()}}
        frames.append(example_rows(run=keys, attack=name, labels=y, margins=margins, on_margin=on_margin, verified=verified, extra=extra))
        passes = {"forward_passes_per_example": counted.counts.forward / len(y), "backward_passes_per_example": counted.counts.backward / len(y)}
        outcome = {"attack_status": status, "attack_error": error}
        attack_rows.append({"run_id": run.run_id, "attack": name, "attack_seconds": elapsed, "common_c": common_c, **passes, **result.extras, **outcome})
        perturbations[name] = verified.delta.cpu().numpy()
        if status != "ok":
            continue
        median = float(np.median(verified.norm.cpu().numpy()))
        log(f"  {name}: {int(verified.success.sum())}/{len(verified.success)} flipped, median norm {median:.4g} = {median / sqrt_d:.3f} sqrt(d), {elapsed:.2f} s")

    frames.append(best_rows(frames))
    attack_rows.append(
        {
            "run_id": run.run_id,
            "attack": BEST,
            "attack_seconds": sum(seconds["attacks"].values()),
            **{key: sum(row[key] for row in attack_rows) for key in ("forward_passes_per_example", "backward_passes_per_example")},
            "attack_status": "ok",
            "attack_error": "",
        }
    )
    manifest_entry = {
        "seconds": seconds,
        "train": dataclasses.asdict(built.train) if built.train is not None else None,
        "facts": dict(built.facts),
    }
    return RunOutcome(
        examples=pd.concat(frames, ignore_index=True),
        run_row=run_row,
        attack_rows=attack_rows,
        manifest_entry=manifest_entry,
        state=net.state_dict(),
        data=data.arrays(),
        perturbations=perturbations,
    )


def attempt_attack(name: str, run: RunSpec, data: Dataset, net: TwoLayerNet | CountingNet) -> tuple[AttackResult, str, str]:
    """(result, status, error) of attack ``name`` on the run's attacked points.

    status is "ok"; "unavailable" where the attack does not apply to the data or an optional dependency is
    missing (AttackUnavailable); or "failed" where it raised or proposed arrays of the wrong shape. An attack
    that fails on one model must not end the sweep: its rows carry no proposal (every norm +inf), the error
    is one line, and the other attacks and runs go on.
    """
    X, y = data.attacked
    nothing = AttackResult(delta=torch.zeros_like(X), found=torch.zeros_like(y, dtype=torch.bool))
    try:
        result = ATTACKS.get(name)(run, data)(net, X, y)
        if result.delta.shape != X.shape or result.found.shape != y.shape:
            raise ValueError(f"proposed delta {tuple(result.delta.shape)} and found {tuple(result.found.shape)} for points {tuple(X.shape)}")
        return result, "ok", ""
    except AttackUnavailable as err:
        return nothing, "unavailable", one_line(err)
    except Exception as err:  # any failure of third-party attack code is recorded, not raised
        return nothing, "failed", one_line(err)


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line, for a status column and a log line."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def environment() -> dict[str, Any]:
    """Provenance: package versions, git commit, device description."""
    versions = {"marginbench": marginbench.__version__, "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__, "pandas": pd.__version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(marginbench.__file__).parent, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    devices = {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        devices["cuda"] = torch.cuda.get_device_name(0)
    return {"versions": versions, "git_commit": commit, "machine": devices, "platform": platform.platform()}


def run_experiment(
    specs: ExperimentSpec | Sequence[ExperimentSpec],
    out: Path | str,
    *,
    preset: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log: Log = lambda line: print(line, file=sys.stderr),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every (model, seed) of each spec with its attacks, in this process; write DIR; return (examples, summary).

    Kept for callers of the sequential runner: ``marginbench.bench.executor.run_sweep`` is the sweep (resume,
    process pool, Ray), and this is it with the sequential executor.
    """
    from marginbench.bench.executor import run_sweep  # the executor module builds on execute_run above

    return run_sweep(specs, out, preset=preset, overwrite=overwrite, progress=progress, log=log)
