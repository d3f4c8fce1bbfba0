"""Attack the frozen models of a result directory (``marginbench attack DIR``): no training.

Each finished run's saved network (``model.pt``) and points (``data.npz``) go through the runner's own
per-attack code path (``measure_attack``: the same seed, the same verification), so a re-attacked run holds
the numbers of a run that had the attack from the start. The new rows join the run's own (the per-example
``best`` is rebuilt), the new perturbations join ``perturbations.npz``, the run's completion marker is
rewritten (``ResultStore.rewrite_rows``: a crash leaves the old run or the new one), and the tables and the
manifest are rebuilt after each run, as ``run`` does.

The manifest's specs gain the attacks (so ``run --resume`` gives unfinished runs every attack), and
``attacked`` records each session: attacks, when, by which version and commit, with which plugins. A session
cut short is finished by the same command: the runs it already rewrote carry its id and are skipped.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from marginbench.bench.errors import SpecError
from marginbench.bench.execution.estimate import run_threads
from marginbench.bench.execution.runner import Log, measure_attack, resolve_device, theory_diagnostics
from marginbench.bench.execution.sweep import environment, recorded_plugins
from marginbench.bench.experiment.recipes import BuiltModel, RunContext
from marginbench.bench.experiment.spec import ExperimentSpec, RunSpec, spec_from_dict
from marginbench.bench.performance.threads import using
from marginbench.bench.registry.plugins import check_recorded, load_entry_points, recorded_sources
from marginbench.bench.registry.registries import ATTACKS
from marginbench.bench.results.manifest import load_manifest, save_manifest, sweep_manifest
from marginbench.bench.results.record import BEST, RunKeys, RunRecord
from marginbench.bench.results.rows import best_attack_row, best_rows, certify_frames
from marginbench.bench.results.session import ResultSession
from marginbench.bench.results.writer_lock import LOCK_FILE, WRITER_FILE, WriterLock
from marginbench.models.datasets import Dataset
from marginbench.models.three_layer import ThreeLayerNet
from marginbench.models.train import TrainReport
from marginbench.models.two_layer import TwoLayerNet

THREE_LAYER_KEYS = frozenset(field.name for field in dataclasses.fields(ThreeLayerNet))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_net(path: Path) -> TwoLayerNet | ThreeLayerNet:
    """The network saved in a run's model.pt; SpecError (one line) for a file that holds neither net."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file
        raise SpecError(f"{path} cannot be read ({type(err).__name__}); it cannot be attacked") from None
    keys = set(state) if isinstance(state, dict) else set()
    if keys == {"W", "b", "v"}:
        return TwoLayerNet.from_state_dict(state)
    if keys == THREE_LAYER_KEYS:
        return ThreeLayerNet.from_state_dict(state)
    raise SpecError(f"{path} holds neither a two-layer net (W, b, v) nor a three-layer one ({', '.join(sorted(THREE_LAYER_KEYS))}): it cannot be attacked")


def load_data(path: Path, name: str) -> Dataset:
    """The run's dataset as data.npz saved it (X, y and, where present, X_eval, y_eval, P_basis)."""
    with np.load(path) as saved:
        arrays = {key: torch.from_numpy(saved[key]) for key in saved.files}
    return Dataset(name=name, **arrays)


def _copy_of(out: Path, source: Path) -> bool:
    """Whether ``out`` is a copy of ``source`` that an earlier ``attack --out`` made (to be finished there)."""
    try:
        manifest = load_manifest(out, sealed=False)
    except SpecError:
        return False
    return manifest.get("copied_from", {}).get("path") == str(source.resolve())


def copy_directory(source: Path, out: Path) -> None:
    """Copy the result directory ``source`` to ``out`` (locked against writers meanwhile), all or nothing.

    A copy that an earlier interrupted ``attack --out`` made is kept, to be finished; anything else in
    ``out`` is refused.
    """
    if out.exists():
        if _copy_of(out, source):
            return
        if not out.is_dir() or any(out.iterdir()):
            raise SpecError(f"--out {out} already exists and is not an empty directory: choose another, or attack a directory in place without --out")
    if not (source / "manifest.json").is_file():
        raise SpecError(f"{source}: no manifest.json there, so nothing to attack")
    staging = out.parent / f".{out.name}.copying"  # renamed into place once complete: no half copy is ever out
    with WriterLock(source, create=False):
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(source, staging, ignore=shutil.ignore_patterns(LOCK_FILE, WRITER_FILE, ".*.tmp"))
            manifest = sweep_manifest(staging)  # checked before it is sealed again with copied_from
            manifest["copied_from"] = {"path": str(source.resolve()), "at": _now()}
            save_manifest(staging, manifest)
            if out.exists():
                out.rmdir()
            os.replace(staging, out)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise SpecError(f"cannot copy {source} to --out {out}: {err.strerror or err}") from None


def _check_apart(source: Path, out: Path) -> None:
    """SpecError unless --out and DIR are apart: a copy into the directory it copies never ends."""
    a, b = source.resolve(), out.resolve()
    if a == b:
        raise SpecError(f"--out {out} is {source} itself: leave --out out to attack {source} in place")
    if a in b.parents:
        raise SpecError(f"--out {out} lies inside {source}: a copy cannot go into the directory it copies; choose a folder outside it")
    if b in a.parents:
        raise SpecError(f"--out {out} holds {source}: a copy cannot replace a folder around the directory it copies; choose a folder outside it")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_attacks(attacks: Sequence[str]) -> tuple[str, ...]:
    names = tuple(attacks)
    if not names:
        raise SpecError("give at least one attack", cli="--attacks is empty: give at least one attack")
    if len(set(names)) != len(names):
        raise SpecError("an attack is named twice", cli="--attacks names an attack twice")
    if BEST in names:
        raise SpecError(f"{BEST!r} is not an attack: it is the per-example minimum over the attacks, rebuilt with them")
    for name in names:
        ATTACKS.get(name)
    return names


def _pending(manifest: dict[str, Any], root: Path, attacks: tuple[str, ...], overwrite: bool) -> dict[str, Any] | None:
    """The session an earlier ``attack`` of DIR left unfinished, if it is this one; SpecError if another is."""
    sessions = manifest.get("attacked", [])
    last = sessions[-1] if sessions else None
    if not (isinstance(last, dict) and last.get("status") == "running"):
        return None
    if tuple(last.get("attacks", ())) != attacks or bool(last.get("overwrite")) != overwrite:
        flag = " --overwrite" if last.get("overwrite") else ""
        raise SpecError(f"{root}: an attack with --attacks {','.join(last.get('attacks', ()))}{flag} did not finish; run it again to finish it first")
    return last


def _check_not_present(root: Path, sweep: Sequence[ExperimentSpec], attacks: tuple[str, ...]) -> None:
    for spec in sweep:
        present = [name for name in attacks if name in spec.attack_names]
        if present:
            raise SpecError(f"{root} already holds attack {present[0]!r}; pass --overwrite to replace its rows, or leave it out")


def attack_directory(
    root: Path | str, attacks: Sequence[str], *, out: Path | str | None = None, overwrite: bool = False, log: Log = _stderr
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``attacks`` on the saved models of result directory ``root`` (or of its copy ``out``); return the
    rebuilt (examples, summary). SpecError (one line) for a mistake, before any work."""
    load_entry_points()
    source = Path(root)
    if not (source / "manifest.json").is_file():
        raise SpecError(f"{source}: no manifest.json there, so nothing to attack")
    # an attack that DIR already had from a plugin (to finish or to overwrite) is named with how to get it back
    check_recorded(source, [entry for entry in recorded_plugins(source) if entry.get("name") in attacks], kinds=("attack",))
    attacks = _check_attacks(attacks)
    if not (source / "runs").is_dir():
        raise SpecError(f"{source} has no runs/ folder (only its tables): there are no saved models to attack")
    target = source
    if out is not None:
        target = Path(out)
        _check_apart(source, target)
        if not _copy_of(target, source):
            sweep = tuple(spec_from_dict(stored) for stored in sweep_manifest(source)["specs"])
            if not overwrite:
                _check_not_present(source, sweep, attacks)
            copy_directory(source, target)
    with ResultSession.resume(target) as results:
        manifest = results.manifest
        sweep = tuple(spec_from_dict(stored) for stored in manifest["specs"])
        session = _pending(manifest, target, attacks, overwrite)
        if session is None:
            if not overwrite:
                _check_not_present(target, sweep, attacks)
            session = {"id": f"attack-{len(manifest.get('attacked', [])) + 1}", "attacks": list(attacks), "overwrite": overwrite, "status": "running"}
            session.update(started=_now(), command=sys.argv, **environment(), plugins=recorded_sources({"attack": attacks}))
            manifest["attacked"] = [*manifest.get("attacked", []), session]
            manifest["specs"] = [dataclasses.asdict(_with_attacks(spec, attacks)) for spec in sweep]
        else:
            log(f"finishing the unfinished attack of {target} with {', '.join(attacks)} ({session['id']}, started {session.get('started')})")
        runs = [run for spec in sweep for run in spec.runs()]
        stray = results.store.stray_runs({run.run_id for run in runs})
        if stray:
            raise SpecError(f"{target}: {results.store.run_dir(stray[0])} is a finished run that is not part of its sweep; move it away first")
        devices = {run.device: _device(target, run.device) for run in runs}

        todo = []
        for index, run in enumerate(runs):
            record, why = results.read_run(index, run.run_id)
            if record is None:
                log(f"skipping {run.run_id}: {why}; `marginbench run --resume {target}` runs it with every attack")
                continue
            results.keep(record)
            if session["id"] not in record.manifest.get("attacked_by", []):
                todo.append(index)
        for index in todo:  # every model readable before any work
            if (results.store.run_dir(runs[index].run_id) / "model.pt").exists():
                load_net(results.store.run_dir(runs[index].run_id) / "model.pt")
        log(f"attacking {target} with {', '.join(attacks)}: {len(todo)} of {len(runs)} runs to attack, {len(results.finished) - len(todo)} done already")

        results.write_tables()
        for count, index in enumerate(todo):
            run = runs[index]
            log(f"[{count + 1}/{len(todo)}] {run.run_id}")
            reattack_run(results, results.finished[index], run, attacks, devices[run.device], session["id"], log)
        session.update(status="complete", finished=_now(), runs_attacked=len(todo))
        return results.write_tables()


def _device(root: Path, name: str) -> torch.device:
    try:
        return resolve_device(name)
    except SpecError:
        raise SpecError(f"{root} was made on {name}, and no CUDA device is available here to attack its models there") from None


def _with_attacks(spec: ExperimentSpec, attacks: tuple[str, ...]) -> ExperimentSpec:
    return dataclasses.replace(spec, attacks=(*spec.attack_names, *(name for name in attacks if name not in spec.attack_names)))


def reattack_run(results: ResultSession, record: RunRecord, run: RunSpec, attacks: tuple[str, ...], device: torch.device, session: str, log: Log) -> RunRecord:
    """Attack one finished run's saved model with ``attacks``, rewrite its files (and the tables), and return it
    as read back."""
    run_dir = results.store.run_dir(run.run_id)
    stored = [dict(row) for row in record.attack_rows if row["attack"] != BEST]
    order = [row["attack"] for row in stored] + [name for name in attacks if name not in {row["attack"] for row in stored}]
    manifest = {**record.manifest, "attacked_by": [*record.manifest.get("attacked_by", []), session]}
    if not (run_dir / "model.pt").exists():  # the run failed before it had a model: as a failed run records it
        rows = {row["attack"]: row for row in stored} | {
            name: {"run_id": run.run_id, "attack": name, "attack_status": "not run", "attack_error": ""} for name in attacks
        }
        log("  no saved model (the run failed before training ended): recorded as not run")
        updated = dataclasses.replace(record, attack_rows=[rows[name] for name in order], manifest=manifest)
        return results.rewrite(updated)

    net = load_net(run_dir / "model.pt").to(device)
    data = load_data(run_dir / "data.npz", run.dataset).to(device)
    context = RunContext(run=run, device=device)
    per_example = _per_example(run, data, net, record)
    threads = run_threads(run, None)  # bench/performance/threads.py's rule, as in the run (OMP_NUM_THREADS if set)
    with using(threads):
        measured = {name: measure_attack(name, RunKeys.of(run), context, data, net, per_example, log) for name in attacks}

    examples = record.examples[record.examples["attack"] != BEST]
    frames = [measured[name].examples if name in measured else examples[examples["attack"] == name].copy() for name in order]
    rows = {row["attack"]: row for row in stored} | {name: m.row for name, m in measured.items()}
    attack_rows = [rows[name] for name in order]
    with np.load(run_dir / "perturbations.npz") as saved:
        perturbations = {key: saved[key] for key in saved.files}
    perturbations.update({name: m.perturbation for name, m in measured.items()})
    seconds = dict(manifest.get("seconds", {}))
    seconds["attacks"] = {**seconds.get("attacks", {}), **{name: m.seconds for name, m in measured.items()}}
    frames.append(best_rows(frames))
    with using(threads):
        certify_frames(net, data.attacked[0], frames, log)  # the bounds and proofs over every attack, old and new
    updated = dataclasses.replace(
        record,
        examples=pd.concat(frames, ignore_index=True),
        attack_rows=[*attack_rows, best_attack_row(run.run_id, attack_rows)],
        manifest={**manifest, "seconds": seconds},
    )
    return results.rewrite(updated, perturbations={name: perturbations[name] for name in order})


def _per_example(run: RunSpec, data: Dataset, net: TwoLayerNet | ThreeLayerNet, record: RunRecord) -> dict[str, torch.Tensor]:
    """The per-example theory columns every attack's rows carry (subspace family: k, g_off and its bounds),
    recomputed from the saved net as the runner computed them."""
    if not run.family_spec.on_subspace:
        return {}
    train = record.manifest.get("train")
    # The runner computes them only for a net with an init (a trained one); its rows say whether it did. The
    # init itself enters only the off-manifold weight drift, a run-level fact that is kept as it was.
    init = net if "g_off" in record.examples.columns else None
    built = BuiltModel(net=net, train=TrainReport(**train) if train else None, init=init, facts=record.manifest.get("facts", {}))
    return theory_diagnostics(run, data, built)[1]
