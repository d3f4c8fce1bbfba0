"""The runner: spec -> dataset -> model -> attacks -> verified rows -> store, one run at a time.

After each run its files and the updated tables are on disk, so an interruption loses only the run that
was in progress.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

import marginbench
from marginbench.attacks.base import AttackResult, AttackUnavailable
from marginbench.bench.counting import CountingNet
from marginbench.bench.measure import BEST, best_rows, example_rows, summarize, verify, verify_shared
from marginbench.bench.registry import ATTACKS, DATASETS, MODELS, BuiltModel, check_names
from marginbench.bench.spec import ExperimentSpec, RunSpec, SpecError
from marginbench.bench.store import ResultStore
from marginbench.models.datasets import Dataset
from marginbench.models.diagnostics import (
    kkt_residual,
    margin_set,
    normalized_margin,
    off_manifold_gradients,
    off_weight_drift,
    thm51_assumption,
)

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


def execute_run(run: RunSpec, attacks: tuple[str, ...], device: torch.device, *, progress: bool, log: Log) -> RunOutcome:
    """One run: data, model, every attack (verified), diagnostics; its rows and the arrays to save."""
    seconds: dict[str, Any] = {}
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
        status = "ok"
        try:
            result = ATTACKS.get(name)(run, data)(counted, X, y)
        except AttackUnavailable as err:
            status = f"unavailable: {err}"
        except Exception as err:  # noqa: BLE001 - one attack's failure is recorded; the run goes on
            status = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if status != "ok":
            result = AttackResult(delta=torch.zeros_like(X), found=torch.zeros(len(y), dtype=torch.bool, device=X.device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        verified = verify(net, X, result)
        common_c = verify_shared(net, X, result.shared)
        seconds["attacks"][name] = elapsed
        extra = {**per_example, **{fact: values.detach() for fact, values in result.example_facts.items()}}
        frames.append(example_rows(run=keys, attack=name, labels=y, margins=margins, on_margin=on_margin, verified=verified, extra=extra))
        passes = {"forward_passes_per_example": counted.counts.forward / len(y), "backward_passes_per_example": counted.counts.backward / len(y)}
        attack_rows.append({"run_id": run.run_id, "attack": name, "attack_seconds": elapsed, "common_c": common_c, "status": status, **passes, **result.extras})
        perturbations[name] = verified.delta.cpu().numpy()
        if status != "ok":
            log(f"  {name}: {status}")
            continue
        median = float(np.median(verified.norm.cpu().numpy()))
        log(f"  {name}: {int(verified.success.sum())}/{len(verified.success)} flipped, median norm {median:.4g} = {median / sqrt_d:.3f} sqrt(d), {elapsed:.2f} s")

    frames.append(best_rows(frames))
    attack_rows.append(
        {
            "run_id": run.run_id,
            "attack": BEST,
            "attack_seconds": sum(seconds["attacks"].values()),
            "status": "ok",
            **{key: sum(row[key] for row in attack_rows) for key in ("forward_passes_per_example", "backward_passes_per_example")},
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
    """Run every (model, seed) of each spec with its attacks; write DIR; return (examples, summary).

    Everything the user can get wrong (names, sizes, device, output directory) is checked before any work.
    """
    sweep = (specs,) if isinstance(specs, ExperimentSpec) else tuple(specs)
    for spec in sweep:
        check_names(spec)
    devices = {resolve_device(spec.device) for spec in sweep}
    planned = [(run, spec.attack_names) for spec in sweep for run in spec.runs()]
    run_ids = [run.run_id for run, _ in planned]
    if len(set(run_ids)) != len(run_ids):
        raise SpecError("the sweep holds the same run twice; give each setting once")
    store = ResultStore.open(out, overwrite=overwrite)
    manifest: dict[str, Any] = {
        "status": "running",
        "preset": preset,
        "specs": [dataclasses.asdict(spec) for spec in sweep],
        "seeds": sorted({seed for spec in sweep for seed in spec.seeds}),
        "device": ", ".join(sorted(str(device) for device in devices)),
        "command": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "runs": {},
    }
    store.write_manifest(manifest)
    frames: list[pd.DataFrame] = []
    run_rows: list[dict[str, Any]] = []
    attack_rows: list[dict[str, Any]] = []
    summary = pd.DataFrame()
    for i, (run, attacks) in enumerate(planned, start=1):
        log(f"[{i}/{len(planned)}] {run.run_id}")
        start = time.perf_counter()
        outcome = execute_run(run, attacks, torch.device(run.device), progress=progress, log=log)
        store.write_run(run.run_id, state=outcome.state, data=outcome.data, perturbations=outcome.perturbations)
        frames.append(outcome.examples)
        run_rows.append(outcome.run_row)
        attack_rows.extend(outcome.attack_rows)
        examples = pd.concat(frames, ignore_index=True)
        summary = summarize(examples, pd.DataFrame(run_rows), pd.DataFrame(attack_rows))
        store.write_tables(examples=examples, summary=summary)
        manifest["runs"][run.run_id] = {**outcome.manifest_entry, "wall_seconds": time.perf_counter() - start}
        store.write_manifest(manifest)
    manifest["status"] = "complete"
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.write_manifest(manifest)
    return pd.concat(frames, ignore_index=True), summary
