"""The sweep: check a sweep's specs, compute its runs on an executor, and write each into the result store.

Only this process writes: ``run_sweep`` saves each record (arrays, rows, then the completion marker), and
rebuilds the tables from every finished run in the sweep's order, so the result directory is the same
whatever the executor and whatever order the runs finish in; an interruption loses only the runs in
progress. ``resume=True`` reads the finished runs back from their files and computes only the others.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import marginbench
from marginbench.bench.execution.estimate import SweepProgress, sweep_cost
from marginbench.bench.execution.executors import ExecutorSpec, SweepAborted, check_ray_address, import_ray, make_executor
from marginbench.bench.execution.runner import Log, RunTask, one_line, resolve_device
from marginbench.bench.execution.twin import twin_report
from marginbench.bench.experiment.spec import ExperimentSpec, SpecError, Sweep, first_difference, spec_from_dict
from marginbench.bench.registry.plugins import check_recorded, load_entry_points, loaded_plugins, recorded_sources
from marginbench.bench.registry.provenance import library_versions
from marginbench.bench.registry.registries import DATASETS, check_names
from marginbench.bench.results.manifest import load_manifest, sweep_manifest
from marginbench.bench.results.session import ResultSession
from marginbench.bench.results.store import ResultStore
from marginbench.models.precision import choose_precision


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def environment() -> dict[str, Any]:
    """Provenance: library versions (``library_versions``), git commit, device description."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(marginbench.__file__).parent, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    devices = {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        devices["cuda"] = torch.cuda.get_device_name(0)
    return {"versions": library_versions(), "git_commit": commit, "machine": devices, "platform": platform.platform()}


def check_spec(spec: ExperimentSpec) -> torch.device:
    """Everything about ``spec`` that can be checked before any work: names, device, the data themselves.

    Builds each run's dataset once on the CPU (the Dataset class rejects NaN/inf and labels outside
    {-1, +1}) and turns what it raises into a one-line SpecError. Returns the spec's device, resolved.
    """
    check_names(spec)
    device = resolve_device(spec.device)
    for train in {run.train for run in spec.runs() if run.train.precision is not None}:
        try:
            choose_precision(train.precision or "float64", device)
        except ValueError as err:
            raise SpecError(f"--precision {train.precision}: {one_line(err)}") from None
    seen: set[int] = set()
    for run in spec.runs():
        if run.seed in seen:
            continue
        seen.add(run.seed)
        try:
            DATASETS.get(run.dataset)(run)
        except (ValueError, MemoryError) as err:
            raise SpecError(f"dataset {run.dataset!r} (d={run.d}, n={run.n}, seed {run.seed}): {one_line(err)}") from None
    return device


def stored_sweep(root: Path | str) -> tuple[Sweep, str | None]:
    """(sweep, preset) recorded in the manifest of DIR, to resume; nothing is written (``run_sweep`` locks DIR)."""
    ResultStore.check_resumable(root)
    manifest = sweep_manifest(root)
    return _sweep_of(manifest), manifest.get("preset")


def _sweep_of(manifest: dict[str, Any]) -> Sweep:
    return tuple(spec_from_dict(stored) for stored in manifest["specs"])


def check_same_sweep(root: Path | str, asked: Sweep, stored: Sweep) -> None:
    """SpecError naming the first field where ``asked`` contradicts the sweep stored in ``root``."""
    if len(asked) != len(stored):
        raise SpecError(f"resume {root}: the sweep has {len(asked)} settings, its manifest {len(stored)}")
    for mine, theirs in zip(asked, stored, strict=True):
        differ = first_difference(mine, theirs)
        if differ is None:
            continue
        name, value, recorded = differ
        option = "--n/--alpha" if name in ("n", "alpha") else "--" + name.replace("_", "-")
        raise SpecError(
            f"resume {root}: {name} = {_shown(value)} contradicts its manifest ({name} = {_shown(recorded)})",
            cli=f"--resume {root}: {option} {_shown(value)} contradicts its manifest ({name} = {_shown(recorded)}); leave it out",
        )


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def sweep_plugins(sweep: Sweep) -> list[dict[str, Any]]:
    """manifest ``plugins``: where each name of the sweep that is not built in comes from."""
    names = {
        "dataset": [spec.dataset_name for spec in sweep],
        "model": [m for spec in sweep for m in spec.model_names],
        "attack": [a for spec in sweep for a in spec.attack_names],
    }
    return recorded_sources(names)


def recorded_plugins(root: Path | str) -> list[dict[str, Any]]:
    """The plugin sources that DIR's manifest records, its first session's and every later one's."""
    try:
        manifest = load_manifest(root, sealed=False)
    except SpecError:
        return []  # the store's own checks say what is wrong with it
    sessions = [manifest, *manifest.get("resumed", []), *manifest.get("attacked", [])]
    return [entry for session in sessions if isinstance(session, dict) for entry in session.get("plugins", []) if isinstance(entry, dict)]


def _new_manifest(sweep: Sweep, preset: str | None, devices: Sequence[str], session: dict[str, Any], now: str) -> dict[str, Any]:
    return {
        "preset": preset,
        "specs": [dataclasses.asdict(spec) for spec in sweep],
        "seeds": sorted({seed for spec in sweep for seed in spec.seeds}),
        "device": ", ".join(devices),
        "started": now,
        **session,
    }


def run_sweep(
    specs: ExperimentSpec | Sequence[ExperimentSpec],
    out: Path | str,
    *,
    preset: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    keep_failed: bool = False,
    executor: ExecutorSpec | None = None,
    progress: bool = False,
    log: Log = _stderr,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every (model, seed) of each spec with its attacks on ``executor``; write DIR; return (examples, summary).

    Everything the user can get wrong is checked before any work. With ``resume``, DIR must hold the
    manifest of this very sweep: its finished runs are read back from their files and only the others run,
    each named with the reason (no marker, a file that does not match it, a failure that is retried unless
    ``keep_failed``). Every failed run is named, one line each, at the end.
    """
    executor = executor if executor is not None else ExecutorSpec()  # None: in this process
    sweep = (specs,) if isinstance(specs, ExperimentSpec) else tuple(specs)
    load_entry_points()
    if resume:  # before the names are checked: a missing plugin is named with how to get it back
        check_recorded(out, recorded_plugins(out))
    devices = {spec.device: check_spec(spec) for spec in sweep}
    planned = [(run, spec.attack_names) for spec in sweep for run in spec.runs()]
    runs = [run for run, _ in planned]
    if len({run.run_id for run in runs}) != len(runs):
        raise SpecError("the sweep holds the same run twice; give each setting once")
    if executor.kind == "ray":
        import_ray()
        check_ray_address(executor.ray_address)
    opened = ResultSession.resume(out) if resume else ResultSession.create(out, overwrite=overwrite)
    with opened as session:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        provenance = {"command": sys.argv, "execution": dataclasses.asdict(executor), **environment(), "plugins": sweep_plugins(sweep)}
        manifest = session.manifest
        if resume:
            # The first session's provenance stays on top; each resume adds its own (code may have changed since).
            check_same_sweep(out, sweep, _sweep_of(manifest))
            stray = session.store.stray_runs({run.run_id for run in runs})
            if stray:  # not this sweep's: resuming would leave it there, and every report would refuse DIR
                raise SpecError(f"resume {out}: {session.store.run_dir(stray[0])} is a finished run that is not part of its sweep; move it away first")
            manifest["resumed"] = [*manifest.get("resumed", []), {"started": now, **provenance}]
        else:
            manifest.update(_new_manifest(sweep, preset, sorted(str(device) for device in devices.values()), provenance, now))
        manifest["status"] = "running"

        finished = session.finished
        if resume:
            for index, run in enumerate(runs):
                record, why = session.read_run(index, run.run_id)
                if record is None:
                    if why != "it has not run":
                        log(f"redoing {run.run_id}: {why}")
                    continue
                if record.failed and not keep_failed:
                    log(f"retrying {run.run_id}: it failed ({record.run_row.get('run_error')}); --keep-failed keeps it")
                    continue
                session.keep(record)
            log(f"resuming {out}: {len(finished)} of {len(runs)} runs finished, {len(runs) - len(finished)} to run")
            unfinished = [s for s in manifest.get("attacked", []) if isinstance(s, dict) and s.get("status") == "running"]
            for attack in unfinished:  # its runs without the attack are finished runs: resuming does not redo them
                log(f"note: `marginbench attack {out} --attacks {','.join(attack.get('attacks', []))}` did not finish; run it again to finish it")
        tasks = [
            RunTask(
                index=i,
                total=len(runs),
                run=run,
                attacks=attacks,
                device=devices[run.device],
                progress=progress,
                plugins=loaded_plugins(),
                threads=executor.threads,
                run_dir=str(session.store.run_dir(run.run_id)),
            )
            for i, (run, attacks) in enumerate(planned)
            if i not in finished
        ]

        cost, weights = sweep_cost(sweep, executor.threads)
        log(cost.line())
        with SweepProgress(weights, finished, enabled=progress) as bar, make_executor(executor, bar.around(log)) as pool:
            session.write_tables()
            try:
                for record in pool.run(tasks):
                    if not pool.live:
                        for line in record.log:
                            bar.around(log)(line)
                    session.save(record)
                    bar.done(record.index)
            except SweepAborted as err:
                raise SweepAborted(f"{err}; {len(finished)} of {len(runs)} runs are saved; finish with: marginbench run --resume {out}") from None
        failed = sum(r.failed for r in finished.values())
        for record in sorted(finished.values(), key=lambda r: r.index):
            line = twin_report(record.run_id, record.run_row)
            if line is not None:
                log(line)
        manifest.update(status="complete", finished=datetime.now(UTC).isoformat(timespec="seconds"), failed_runs=failed)
        examples, summary = session.write_tables()
        for record in sorted(finished.values(), key=lambda r: r.index):
            if record.failed:
                log(f"failed: {record.run_id}: {record.run_row.get('run_error')}")
        if failed:
            log(
                f"{failed} of {len(runs)} runs failed (listed above; the run_status and error columns of {Path(out) / 'summary.csv'}); "
                f"`run --resume {out}` retries them"
            )
        return examples, summary
