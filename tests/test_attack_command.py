"""`marginbench attack DIR`: frozen models attacked without training give the numbers of a run that had the
attack from the start; the source is untouched with --out; an interrupted attack is finished by the same
command; a crash while a run's files are replaced leaves the old run or the new one; mistakes are one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_same_tables, run_cli
from marginbench.bench.execution.reattack import attack_directory
from marginbench.bench.results import store as store_module
from marginbench.bench.results.readback import verify_directory
from marginbench.bench.results.store import ResultStore
from marginbench.bench.results.writer_lock import WriterLock

KKT = ["--d", "8", "--width", "8", "--max-iters", "300", "--models", "vanilla,robust-construction", "--seeds", "0,1", "--no-progress"]
# the subspace family carries per-example theory columns (k, g_off, ...) on every attack's rows; three-layer nets
# take only the autograd attacks (fmn is recorded unavailable on them)
SUBSPACE = ["--family", "subspace", "--d", "16", "--ell", "10", "--width", "16", "--n", "10", "--n-eval", "8", "--max-iters", "500"]
SUBSPACE += ["--models", "vanilla,three-layer", "--seeds", "0", "--no-progress"]
CASES = {"kkt": (KKT, "universal-z", "pgd"), "subspace": (SUBSPACE, "subspace-z", "pgd-off,fmn")}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".marginbench")}


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marginbench: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module", params=sorted(CASES))
def sweeps(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(a sweep with attack A, the same sweep with A and B from the start, B)."""
    options, first, added = CASES[request.param]
    root = tmp_path_factory.mktemp(f"attack-{request.param}")
    assert run_cli(["run", *options, "--attacks", first, "--out", str(root / "a")]) in (0, 1)
    assert run_cli(["run", *options, "--attacks", f"{first},{added}", "--out", str(root / "ab")]) in (0, 1)
    return root / "a", root / "ab", added


def _perturbations(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "perturbations.npz") as saved:
        return {key: saved[key] for key in saved.files}


def test_a_reattacked_directory_equals_one_that_had_the_attack_from_the_start(sweeps: tuple[Path, Path, str], tmp_path: Path) -> None:
    first, both, added = sweeps
    before = _files(first)
    out = tmp_path / "copy"
    assert run_cli(["attack", str(first), "--attacks", added, "--out", str(out)]) in (0, 1)
    assert _files(first) == before  # --out leaves the source untouched
    assert_same_tables(out, both)  # examples.csv bitwise (every norm, and the per-example best), summary exactly
    for run_dir in sorted((both / "runs").iterdir()):
        mine = out / "runs" / run_dir.name
        assert (mine / "examples.csv").read_bytes() == (run_dir / "examples.csv").read_bytes()
        theirs, ours = _perturbations(run_dir), _perturbations(mine)
        assert list(ours) == list(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in theirs)
        assert (mine / "model.pt").read_bytes() == (first / "runs" / run_dir.name / "model.pt").read_bytes()
    verify_directory(out, out)  # markers and table checksums rewritten
    manifest = json.loads((out / "manifest.json").read_text())
    (session,) = manifest["attacked"]
    assert session["attacks"] == added.split(",") and session["status"] == "complete" and session["versions"]["marginbench"]
    assert {"started", "finished", "git_commit", "plugins"} <= set(session)
    assert manifest["copied_from"]["path"] == str(first.resolve())
    assert manifest["specs"][0]["attacks"] == json.loads((both / "manifest.json").read_text())["specs"][0]["attacks"]


def test_run_resume_after_an_attack_gives_a_redone_run_every_attack(sweeps: tuple[Path, Path, str], tmp_path: Path) -> None:
    first, both, added = sweeps
    out = tmp_path / "copy"
    assert run_cli(["attack", str(first), "--attacks", added, "--out", str(out)]) in (0, 1)
    victim = sorted((out / "runs").iterdir())[0]
    (victim / "COMPLETE").unlink()
    assert run_cli(["run", "--resume", str(out), "--no-progress"]) in (0, 1)
    assert_same_tables(out, both)


def test_an_interrupted_attack_is_finished_by_the_same_command(sweeps: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, both, added = sweeps
    work = tmp_path / "work"
    shutil.copytree(first, work)

    def stop_before_the_second_run(line: str) -> None:
        if line.startswith("[2/"):
            raise KeyboardInterrupt

    attacks = added.split(",")
    with pytest.raises(KeyboardInterrupt):
        attack_directory(work, attacks, log=stop_before_the_second_run)
    assert run_cli(["attack", str(work), "--attacks", "pgd" if added != "pgd" else "fmn"]) == 2  # another attack waits
    assert "did not finish" in _one_line_error(capsys.readouterr().err)
    assert run_cli(["attack", str(work), "--attacks", added]) in (0, 1)
    err = capsys.readouterr().err
    assert "finishing the unfinished attack" in err and "1 done already" in err
    assert_same_tables(work, both)
    assert [s["status"] for s in json.loads((work / "manifest.json").read_text())["attacked"]] == ["complete"]


def test_overwrite_replaces_an_attack_with_the_same_numbers(sweeps: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, both, added = sweeps
    work = tmp_path / "work"
    shutil.copytree(both, work)
    assert run_cli(["attack", str(work), "--attacks", added]) == 2
    assert "already holds attack" in _one_line_error(capsys.readouterr().err)
    assert run_cli(["attack", str(work), "--attacks", added, "--overwrite"]) in (0, 1)
    assert_same_tables(work, both)
    assert json.loads((work / "manifest.json").read_text())["attacked"][0]["overwrite"] is True


def test_a_crash_while_a_run_is_rewritten_leaves_the_old_run_or_the_new(
    sweeps: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, both, added = sweeps
    work = tmp_path / "work"
    shutil.copytree(first, work)
    real = os.replace
    calls = []

    def crash_on_the_second_rename(src: str | Path, dst: str | Path) -> None:
        if str(src).endswith(store_module.STAGED):
            calls.append(src)
            if len(calls) == 2:
                raise KeyboardInterrupt  # killed between two renames of the commit
        real(src, dst)

    monkeypatch.setattr(store_module.os, "replace", crash_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        attack_directory(work, added.split(","), log=lambda line: None)
    monkeypatch.setattr(store_module.os, "replace", real)
    assert any(work.glob(f"runs/*/*{store_module.STAGED}"))
    store = ResultStore.reopen(work)  # what every writer does first: the staged commit is finished
    assert not any(work.glob(f"runs/*/*{store_module.STAGED}"))
    for run_dir in (work / "runs").iterdir():
        rows, why = store.read_run(run_dir.name)
        assert why is None and rows is not None
    assert run_cli(["attack", str(work), "--attacks", added]) in (0, 1)
    assert_same_tables(work, both)


def test_mistakes_are_one_line(sweeps: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, _, added = sweeps
    assert run_cli(["attack", str(tmp_path / "nowhere"), "--attacks", added]) == 2
    assert "no manifest.json" in _one_line_error(capsys.readouterr().err)
    tables_only = tmp_path / "tables"
    tables_only.mkdir()
    shutil.copy(first / "manifest.json", tables_only)
    assert run_cli(["attack", str(tables_only), "--attacks", added]) == 2
    assert "no runs/ folder" in _one_line_error(capsys.readouterr().err)
    odd = tmp_path / "odd"
    shutil.copytree(first, odd)
    run_dir = sorted((odd / "runs").iterdir())[0]
    torch.save({"weights": torch.zeros(2)}, run_dir / "model.pt")
    marker = json.loads((run_dir / "COMPLETE").read_text())  # a valid marker: the file itself is the mistake
    marker["sha256"]["model.pt"] = hashlib.sha256((run_dir / "model.pt").read_bytes()).hexdigest()
    (run_dir / "COMPLETE").write_text(json.dumps(marker))
    assert run_cli(["attack", str(odd), "--attacks", added]) == 2
    assert "holds neither a two-layer net" in _one_line_error(capsys.readouterr().err)
    assert run_cli(["attack", str(first), "--attacks", added, "--out", str(odd)]) == 2
    assert "not an empty directory" in _one_line_error(capsys.readouterr().err)
    with WriterLock(first, create=False):  # another writer holds DIR
        assert run_cli(["attack", str(first), "--attacks", added]) == 2
    assert "being written by another marginbench process" in _one_line_error(capsys.readouterr().err)
    assert run_cli(["attack", str(first), "--attacks", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
    first_attack = pd.read_csv(first / "summary.csv")["attack"].iloc[0]
    assert run_cli(["attack", str(first), "--attacks", first_attack]) == 2
    assert "already holds attack" in _one_line_error(capsys.readouterr().err)
