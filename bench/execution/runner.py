"""The runner: one run, dataset -> model -> attacks -> verified rows, as a ``RunRecord`` (``compute_run``).

Any failure of a run (an exception, NaN/inf in training) becomes a failed record rather than an exception:
the sweep goes on. The executors (``marginbench.bench.execution.executors``) decide where runs are computed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from marginbench.attacks.base import AttackUnavailable
from marginbench.bench.errors import SpecError
from marginbench.bench.execution.estimate import run_threads, step_gflop
from marginbench.bench.execution.time_limit import AttackTimeout, time_limit
from marginbench.bench.execution.twin import twin_facts, twin_line
from marginbench.bench.experiment.families import KKT
from marginbench.bench.experiment.recipes import BuiltModel, RunContext, no_subspace
from marginbench.bench.experiment.spec import RunSpec
from marginbench.bench.performance.counting import CountingAutogradNet, counting
from marginbench.bench.performance.threads import using
from marginbench.bench.performance.timing import clocked
from marginbench.bench.registry.plugins import load_plugins, plugin_code, quiet
from marginbench.bench.registry.registries import ATTACKS, DATASETS, MODELS
from marginbench.bench.results.record import RunKeys, RunRecord, failed_record
from marginbench.bench.results.rows import attack_row, best_attack_row, best_rows, certify_frames, example_rows
from marginbench.checking.proposal import AttackResult
from marginbench.checking.verify import verify, verify_shared
from marginbench.checking.well_formed import checked
from marginbench.models.datasets import Dataset
from marginbench.models.diagnostics import (
    clean_accuracy,
    kkt_residual,
    margin_set,
    normalized_margin,
    off_manifold_gradients,
    off_weight_drift,
    project_off,
    thm51_assumption,
)
from marginbench.models.precision import choose_precision
from marginbench.models.train_spec import STUCK
from marginbench.models.two_layer import TwoLayerNet

Log = Callable[[str], None]


class TrainingStuck(RuntimeError):
    """Training stopped because the net cannot train (models.train_spec.STUCK): the run fails, with that reason."""


@dataclass(frozen=True, kw_only=True)
class RunTask:
    """One run to compute, as a worker receives it."""

    index: int  # position in the sweep's runs (the order of every table)
    total: int
    run: RunSpec
    attacks: tuple[str, ...]
    device: torch.device  # resolved once for the sweep
    progress: bool  # tqdm bars (in this process only)
    plugins: tuple[str, ...] = ()  # --plugin modules and files, loaded again by a worker process
    threads: int | None = None  # --threads: torch's intra-op threads for every run (None: bench/performance/threads.py's rule)
    run_dir: str | None = None  # the run's directory in the result store: where a long --twin keeps its checkpoint


@dataclass(frozen=True)
class Prebuilt:
    """A run's data and model made beforehand (its seeds trained in one batch), and the data's seconds."""

    data: Dataset
    built: BuiltModel
    data_seconds: float


def resolve_device(name: str) -> torch.device:
    """The torch device for ``device`` in a spec; SpecError if CUDA is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            "device cuda: no CUDA device is available to PyTorch on this machine", cli="--device cuda: no CUDA device is available to PyTorch on this machine"
        )
    return torch.device(name)


def make_data(run: RunSpec, device: torch.device) -> tuple[Dataset, float]:
    """The run's dataset on ``device`` and the seconds it took."""
    return clocked(lambda: DATASETS.get(run.dataset)(run).to(device), device)


def theory_diagnostics(run: RunSpec, data: Dataset, built: BuiltModel) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The family's theorem checks: run-level facts for summary.csv and per-example columns for examples.csv.

    kkt (Vardi et al.): fraction of training points on the margin, normalized margin, KKT residual.
    subspace (Melamed et al.), at the attacked points x0 of P: active neurons k, off-manifold gradient and
    its Theorem 4.1 / 6.1 (6.2 with L2) bounds and how often they hold, the off-manifold weight drift
    (Theorem A.2: zero without L2), and whether ell >= 32 (m - 1) log(m^2 d) (Theorem 5.1's assumption).
    """
    net = built.net
    if run.family_spec is KKT:
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
    if not isinstance(net, TwoLayerNet):  # no closed form, no bounds: the off-manifold gradient by autograd
        g_off = project_off(data.P_basis, net.value_and_input_grad(X0)[1]).norm(dim=1)
        return {"median_g_off": float(g_off.median())}, {"g_off": g_off}
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


def run_facts(run: RunSpec, data: Dataset, built: BuiltModel, model_seconds: float) -> dict[str, Any]:
    """summary.csv's run-level columns: sizes, clean accuracies (training, attacked points), training report, the model's facts."""
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "d": data.d,
        "n": data.n,
        "width": built.net.width,
        "ell": run.ell if run.ell is not None else math.nan,
        "sqrt_d": math.sqrt(data.d),
        "alpha": run.alpha if run.alpha is not None else math.nan,
        "init_scale": run.init_scale,
        "train_seconds": built.train.seconds if built.train is not None else model_seconds,
        "clean_accuracy_train": clean_accuracy(built.net, data.X, data.y),
        "clean_accuracy_attacked": clean_accuracy(built.net, *data.attacked),
    }
    if built.train is not None:
        t = built.train
        row.update(train_iterations=t.iterations, train_log10_loss=t.log10_loss, train_min_margin=t.min_margin, train_stop_reason=t.stop_reason)
    row.update(built.facts)
    return row


def attempt_attack(name: str, data: Dataset, context: RunContext, net: TwoLayerNet | CountingAutogradNet) -> tuple[AttackResult, str, str]:
    """(result, status, error) of attack ``name`` on the run's attacked points.

    status is "ok"; "unavailable" where the attack does not apply to the data or an optional dependency is
    missing (AttackUnavailable); or "failed" where it raised, proposed what cannot be verified, or ran past the
    run's attack_seconds_limit. An attack
    that fails on one model must not end the sweep: its rows carry no proposal (every norm +inf), the error
    is one line, and the other attacks and runs go on. So is an attack that calls sys.exit or raises
    KeyboardInterrupt itself (``plugin_code``: a user's Ctrl-C still stops the run), or that returns
    something the harness cannot verify (``well_formed.checked``).
    """
    X, y = data.attacked
    nothing = AttackResult(delta=torch.zeros_like(X), found=torch.zeros_like(y, dtype=torch.bool))
    seconds = context.run.attack_seconds_limit
    timed_out = f"timed out after {seconds:g} s (the per-attack limit, --attack-timeout); its rows count as not flipped"
    try:
        entry = ATTACKS.entry(name)  # what the attack needs, decided by its registration
        if not isinstance(net, TwoLayerNet) and entry.needs_closed_form:
            return nothing, "unavailable", f"needs the two-layer net's closed form; the {context.run.model} model takes {', '.join(ATTACKS.autograd())}"
        if entry.needs_subspace and data.P_basis is None:
            raise AttackUnavailable(no_subspace(data, name))
        with time_limit(seconds) as limit, plugin_code(f"attack {name}"):  # an alarm in this (main) thread: see bench/execution/time_limit.py
            result = ATTACKS.get(name)(data, context)(net, X, y)
        if limit.expired:  # it swallowed the alarm, or ran where none can be raised
            return nothing, "failed", timed_out
        return checked(result, X, y), "ok", ""
    except AttackTimeout:
        return nothing, "failed", timed_out
    except AttackUnavailable as err:
        return nothing, "unavailable", one_line(err)
    except Exception as err:  # any failure of third-party attack code is recorded, not raised
        return nothing, "failed", one_line(err)


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line, for a status column and a log line."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass(frozen=True)
class Measured:
    """One attack on one run, verified: its example rows, its summary facts, its perturbations and seconds."""

    examples: pd.DataFrame
    row: dict[str, Any]
    perturbation: np.ndarray
    seconds: float


def measure_attack(name: str, keys: RunKeys, context: RunContext, data: Dataset, net: TwoLayerNet, per_example: Mapping[str, Tensor], log: Log) -> Measured:
    """Attack ``name`` on the run's attacked points, verified: the one code path of ``run`` and of ``attack DIR``."""
    X, y = data.attacked
    margins = y * net(X)
    on_margin = margin_set(margins)
    counted = counting(net)  # counts the attack's forward and backward passes
    (result, status, error), elapsed = clocked(lambda: attempt_attack(name, data, context, counted), context.device)
    if status != "ok":
        log(f"  {name}: {status}: {error}")
    verified = verify(net, X, result)
    extra = {**per_example, **{fact: values.detach() for fact, values in result.example_facts.items()}}
    frame = example_rows(keys=keys, attack=name, labels=y, margins=margins, on_margin=on_margin, verified=verified, extra=extra)
    passes = {"forward_passes_per_example": counted.counts.forward / len(y), "backward_passes_per_example": counted.counts.backward / len(y)}
    common_c = verify_shared(net, X, result.shared)
    row = attack_row(context.run.run_id, name, seconds=elapsed, common_c=common_c, passes=passes, result=result, verified=verified, status=status, error=error)
    if status == "ok":
        median = float(np.median(verified.norm.cpu().numpy()))
        ties = f", {int(verified.ties.sum())} near-ties rejected" if bool(verified.ties.any()) else ""
        log(
            f"  {name}: {int(verified.success.sum())}/{len(verified.success)} flipped{ties}, "
            f"median norm {median:.4g} = {median / math.sqrt(data.d):.3f} sqrt(d), {elapsed:.2f} s"
        )
    return Measured(examples=frame, row=row, perturbation=verified.delta.cpu().numpy(), seconds=elapsed)


def _attack_all(
    task: RunTask, keys: RunKeys, context: RunContext, data: Dataset, built: BuiltModel, per_example: Mapping[str, Tensor], log: Log
) -> tuple[list[pd.DataFrame], list[dict[str, Any]], dict[str, np.ndarray], dict[str, float]]:
    """Every attack of ``task`` on the run's attacked points, verified: example rows, attack rows, the
    verified perturbations and each attack's seconds."""
    measured = {name: measure_attack(name, keys, context, data, built.net, per_example, log) for name in task.attacks}
    frames = [m.examples for m in measured.values()]
    rows = [m.row for m in measured.values()]
    frames.append(best_rows(frames))
    rows.append(best_attack_row(task.run.run_id, rows))
    seconds = {name: m.seconds for name, m in measured.items()}
    _, seconds["lower bounds"] = clocked(lambda: certify_frames(built.net, data.attacked[0], frames, log), context.device)
    return frames, rows, {name: m.perturbation for name, m in measured.items()}, seconds


def execute_run(task: RunTask, log: Log, prebuilt: Prebuilt | None = None) -> RunRecord:
    """One run: data, model, diagnostics, every attack (verified); raises what the run raises."""
    run = task.run
    context = RunContext(run=run, device=task.device, progress=task.progress)
    seconds: dict[str, Any] = {}
    if prebuilt is not None:
        data, built, seconds["data"] = prebuilt.data, prebuilt.built, prebuilt.data_seconds
        seconds["model"] = built.train.seconds if built.train is not None else 0.0
    else:
        data, seconds["data"] = make_data(run, task.device)
        built, seconds["model"] = clocked(lambda: MODELS.get(run.model)(data, context), task.device)
    if built.train is not None:
        t = built.train
        log(f"  trained {t.iterations} iterations in {t.seconds:.1f} s: log10 loss {t.log10_loss:.2f} ({t.stop_reason})")
        if t.stop_reason == "nonfinite":
            log(f"  warning: training hit NaN/inf at iteration {t.nonfinite_iteration}; attacking the last finite parameters")
        if t.stop_reason in STUCK:  # nothing to attack: a net that cannot train fails at once, with the reason
            raise TrainingStuck(f"training stopped at iteration {t.iterations}: {STUCK[t.stop_reason]}")
    start = time.perf_counter()
    row = run_facts(run, data, built, seconds["model"])
    diagnostics, per_example = theory_diagnostics(run, data, built)
    row.update(diagnostics)
    seconds["diagnostics"] = time.perf_counter() - start
    twin, seconds["twin"] = clocked(lambda: twin_facts(run, data, built, context, Path(task.run_dir) if task.run_dir else None), task.device)
    row.update(twin)
    if "twin_iterations" in twin:
        log(twin_line(twin))
    keys = RunKeys.of(run)
    frames, attack_rows, perturbations, seconds["attacks"] = _attack_all(task, keys, context, data, built, per_example, log)
    status, error = "ok", ""
    if built.train is not None and built.train.stop_reason == "nonfinite":
        status, error = "failed", f"training hit NaN/inf at iteration {built.train.nonfinite_iteration}; rows are for the last finite parameters"
        log(f"  failed: {error}")
    manifest = {"seconds": seconds, "train": dataclasses.asdict(built.train) if built.train is not None else None, "facts": dict(built.facts)}
    if built.train is not None:  # what training computed in, why (auto: the hardware's bf16 units), and on what
        manifest["precision"] = dataclasses.asdict(choose_precision(run.train.precision or "float64", task.device, step_gflop(run)))
    arrays = {
        "model.pt": {key: value.detach().cpu().numpy() for key, value in built.net.state_dict().items()},
        "data.npz": data.arrays(),
        "perturbations.npz": perturbations,
    }
    examples = pd.concat(frames, ignore_index=True)
    return RunRecord(
        index=task.index,
        keys=keys,
        examples=examples,
        run_row={**row, "run_status": status, "run_error": error},
        attack_rows=attack_rows,
        manifest=manifest,
        arrays=arrays,
    )


def compute_run(task: RunTask, echo: Log | None = None, prebuilt: Prebuilt | None = None) -> RunRecord:
    """Compute one run; any exception, and NaN/inf in training, make a failed record instead of raising.

    Log lines travel in the record; ``echo`` (in this process only) also receives them as they come.
    """
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if echo is not None:
            echo(line)

    run = task.run
    log(f"[{task.index + 1}/{task.total}] {run.run_id}")
    start = time.perf_counter()
    threads = run_threads(run, task.threads)
    log(f"  torch threads: {threads.count} ({threads.why})")
    try:
        load_plugins(task.plugins, warn=quiet)  # in a worker process; the main process has loaded and reported them
        with using(threads), plugin_code(f"the run's dataset or model ({run.dataset}, {run.model})"):  # a plugin's sys.exit fails this run only
            record = execute_run(task, log, prebuilt)
    except Exception as err:  # a failed run is recorded and the sweep goes on
        error = str(err) if isinstance(err, TrainingStuck) else one_line(err)
        log(f"  failed: {error}")
        manifest = {"wall_seconds": time.perf_counter() - start, "threads": threads.as_json(), "run_status": "failed", "error": error}
        return failed_record(task.index, RunKeys.of(run), {"d": run.d, "n": run.n, "width": run.width}, task.attacks, error, manifest, lines)
    status = {"run_status": record.run_row["run_status"], "error": record.run_row["run_error"]}
    manifest = {**record.manifest, "wall_seconds": time.perf_counter() - start, "threads": threads.as_json(), **status}
    return dataclasses.replace(record, manifest=manifest, log=tuple(lines))
