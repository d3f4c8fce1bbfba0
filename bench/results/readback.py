"""Result directories as the reports read them: verified against their checksums, then merged.

``verify_directory`` is what every reporting command (leaderboard, baseline, check, plot) runs first: a
directory whose tables or runs do not match what its sweep wrote is refused with one line naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from marginbench.bench.errors import SpecError
from marginbench.bench.results.manifest import MANIFEST, SEAL, load_manifest, save_manifest
from marginbench.bench.results.store import ResultStore, _sha256

RUN_KEY = ["source", "run_id"]


@dataclass(frozen=True, kw_only=True)
class Results:
    """The merged tables of some result directories.

    Attributes:
        summary: summary.csv rows of every directory, plus ``source`` (the directory as given); ``alpha``
            (n = d^alpha) and ``init_scale`` are the runner's columns, or where a table lacks them, alpha
            fitted as log n / log d and init_scale NaN.
        examples: examples.csv rows plus ``source``; None when some directory has no examples.csv.
    """

    summary: pd.DataFrame
    examples: pd.DataFrame | None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise SpecError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _alpha(summary: pd.DataFrame) -> pd.Series:
    if "alpha" in summary:
        return summary["alpha"].astype(float)
    # n = round(d ** alpha) is coarse at small d (d = 32, alpha = 0.5 gives n = 6, log 6 / log 32 = 0.517):
    # one decimal recovers the papers' grid (0.5, 0.8, 1, 1.2, 1.5).
    fitted = [round(math.log(n) / math.log(d), 1) if n > 0 and d > 1 else math.nan for n, d in zip(summary["n"], summary["d"], strict=True)]
    return pd.Series(fitted, index=summary.index, dtype=float)


def verify_directory(root: Path, given: str | Path) -> None:
    """SpecError, one line naming the file, unless DIR is as its sweep wrote it. Fails closed:

    manifest.json must match its own checksum (``manifest_sha256``: its specs, commit, run list and table
    checksums); its ``tables`` must vouch for summary.csv, and for examples.csv wherever that file is there;
    every run it lists must have files that match its completion marker, and a marker must vouch for every
    file of its run (``ResultStore.read_run``); a finished run under runs/ that it does not list is refused
    too. A directory whose runs/ folder was left out (the committed tables under results/) is verified by
    the manifest and its tables' checksums alone.
    """
    resume = f"`marginbench run --resume {given}` rebuilds it from the runs"
    path = root / MANIFEST
    if not path.exists():
        raise SpecError(f"{given} has no manifest.json: not a marginbench result directory, or its first run has not finished")
    manifest = load_manifest(root)
    tables = manifest.get("tables")
    if not isinstance(tables, dict):
        raise SpecError(f"{path} holds no checksums of the tables, so they cannot be verified; {resume}")
    for name in ("summary.csv", "examples.csv"):
        if name not in tables and (name == "summary.csv" or (root / name).exists()):
            raise SpecError(f"{path} holds no checksum of {name}, so it cannot be verified; {resume}")
    for name, digest in tables.items():
        if not (root / name).is_file():
            raise SpecError(f"{root / name} is missing, though {path} vouches for it; {resume}")
        if _sha256(root / name) != digest:
            raise SpecError(f"{root / name} does not match its checksum in {path} (edited, or cut short); {resume}")
    if (root / "runs").is_dir():
        store = ResultStore(root)
        listed = manifest.get("runs", {})
        for run_id in listed:
            _, why = store.read_run(run_id)
            if why is not None:
                raise SpecError(f"{store.run_dir(run_id)}: {why}; `marginbench run --resume {given}` redoes the run")
        stray = store.stray_runs(listed)
        if stray:
            raise SpecError(
                f"{store.run_dir(stray[0])} is a finished run that {path} does not list (a sweep cut short); `marginbench run --resume {given}` adds it"
            )


def seal_manifest(root: Path | str) -> None:
    """Add ``manifest_sha256`` to the manifest of a directory written before manifests carried it (a one-off
    for the committed results/; see results/README.md), after checking everything else as
    ``verify_directory`` does. SpecError if it is sealed already or anything else fails."""
    root = Path(root)
    before = (root / MANIFEST).read_bytes()
    manifest = load_manifest(root, sealed=False)
    if SEAL in manifest:
        raise SpecError(f"{root / MANIFEST} carries {SEAL} already")
    save_manifest(root, manifest)  # sealed as it is now, so that verify_directory can check the rest
    try:
        verify_directory(root, root)
    except SpecError:
        (root / MANIFEST).write_bytes(before)
        raise


def read_results(dirs: Sequence[str | Path], *, need_examples: bool = False) -> Results:
    """The merged tables of ``dirs``, each verified first (``verify_directory``); SpecError (one line) for a missing,
    incomplete or altered directory."""
    summaries, examples = [], []
    for given in dirs:
        root = Path(given)
        if not root.is_dir():
            raise SpecError(f"{given}: no such result directory")
        if not (root / "summary.csv").is_file():
            raise SpecError(f"{given} has no summary.csv: not a marginbench result directory (or its first run has not finished)")
        verify_directory(root, given)
        summary = _read_csv(root / "summary.csv")
        missing = [c for c in ("run_id", "model", "attack", "d", "n") if c not in summary]
        if missing:
            raise SpecError(f"{root / 'summary.csv'} lacks the column(s) {', '.join(missing)}")
        summary.insert(0, "source", str(given))
        summary["alpha"] = _alpha(summary)
        if "init_scale" not in summary:
            summary["init_scale"] = math.nan
        summaries.append(summary)
        if (root / "examples.csv").is_file():
            frame = _read_csv(root / "examples.csv")
            missing = [c for c in ("run_id", "attack", "index", "norm") if c not in frame]
            if missing:
                raise SpecError(f"{root / 'examples.csv'} lacks the column(s) {', '.join(missing)}")
            frame.insert(0, "source", str(given))
            examples.append(frame)
        elif need_examples:
            raise SpecError(f"{given} has no examples.csv; the per-example norms are needed here")
    merged_examples = pd.concat(examples, ignore_index=True) if len(examples) == len(summaries) else None
    return Results(summary=pd.concat(summaries, ignore_index=True), examples=merged_examples)


PROVENANCE = ("preset", "specs", "git_commit", "versions", "machine", "platform")


def read_manifest(root: Path | str) -> dict[str, Any]:
    """A directory's manifest.json as a dict (read it through ``read_results`` first, which verifies it);
    empty where it has no readable manifest."""
    try:
        return load_manifest(root, sealed=False)
    except SpecError:
        return {}


def read_provenance(root: Path | str) -> dict[str, Any]:
    """What manifest.json says about how a directory was made (preset, specs, commit, versions, machine);
    empty where it has no readable manifest."""
    manifest = read_manifest(root)
    return {k: manifest[k] for k in PROVENANCE if k in manifest}
