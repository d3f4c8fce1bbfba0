"""Reliability, second round (issue 15): bad baselines and output paths get one line and exit 2, a resume names
every run it redoes and why, an impossible batch size is refused before any work."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import QUICK, run_cli
from marginbench.bench.cli import main
from marginbench.bench.report.check import make_baseline, write_baseline
from marginbench.bench.results.writer_lock import WriterLock


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marginbench: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "o"
    assert run_cli(["run", *QUICK, "--seeds", "0,1", "--out", str(out)]) == 0
    return out


def test_an_empty_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(["run", *QUICK, "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_baseline_into_a_directory_or_an_unwritable_place_is_one_line(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["baseline", str(finished), "-o", str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys.readouterr().err)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: a file in place of the folder instead
            target = tmp_path / "a-file" / "b.json"
            (tmp_path / "a-file").write_text("x")
        else:
            target = locked / "b.json"
        assert run_cli(["baseline", str(finished), "-o", str(target)]) == 2
        _one_line_error(capsys.readouterr().err)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b["bands"]["*"].update(rel=math.nan), "must be finite and >= 0"),
        (lambda b: b["bands"]["*"].update(abs=-1e-9), "must be finite and >= 0"),
        (lambda b: b.update(values=[]), "holds no values to check"),
    ],
)
def test_a_bad_baseline_is_refused_with_exit_2(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message: str) -> None:  # type: ignore[no-untyped-def]
    baseline = make_baseline(finished)
    change(baseline)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(baseline, allow_nan=True))
    assert main(["check", str(finished), "--baseline", str(path)]) == 2
    assert message in _one_line_error(capsys.readouterr().err)


def test_a_good_baseline_still_passes(finished: Path, tmp_path: Path) -> None:
    write_baseline(make_baseline(finished), tmp_path / "b.json")
    assert main(["check", str(finished), "--baseline", str(tmp_path / "b.json")]) == 0


def test_a_batch_larger_than_the_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert run_cli(["run", *QUICK, "--family", "subspace", "--ell", "4", "--n", "8", "--batch-size", "100000", "--out", str(out)]) == 2
    assert "--batch-size 100000 is more than the n = 8 training examples" in _one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_resume_names_each_run_it_redoes_and_why(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    runs = sorted(p for p in (out / "runs").iterdir())
    (runs[0] / "examples.csv").write_text((runs[0] / "examples.csv").read_text().replace("universal-z", "universal-y", 1))
    (runs[1] / "COMPLETE").unlink()
    capsys.readouterr()
    assert run_cli(["run", "--resume", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"redoing {runs[0].name}: examples.csv does not match the checksum in its completion marker" in err
    assert f"redoing {runs[1].name}: it has no completion marker (it did not finish)" in err
    assert f"resuming {out}: {len(runs) - 2} of {len(runs)} runs finished, 2 to run" in err


# --- one writer per directory -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once_naming_the_holder(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    out = tmp_path / "live"
    shutil.copytree(finished, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with WriterLock(out, create=False):  # a live sweep writing out
        for extra in (["--out", str(out), "--overwrite", *QUICK], ["--resume", str(out), "--no-progress"]):
            capsys.readouterr()
            assert run_cli(["run", *extra]) == 2
            line = _one_line_error(capsys.readouterr().err)
            assert f"is being written by another marginbench process (pid {os.getpid()} on " in line
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the live writer's files are untouched


def test_the_lock_of_a_killed_writer_is_taken_over(finished: Path, tmp_path: Path) -> None:
    import shutil
    import signal
    import subprocess
    import sys

    out = tmp_path / "stale"
    shutil.copytree(finished, out)
    holder = (
        "import sys, time; from marginbench.bench.results.writer_lock import WriterLock\n"
        "with WriterLock(sys.argv[1], create=False):\n"
        "    print('held', flush=True); time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert run_cli(["run", "--resume", str(out), "--no-progress"]) == 2
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert run_cli(["run", "--resume", str(out), "--no-progress"]) == 0


# --- no hangs, no leaks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "message"), [("garbage:1234", "unknown host 'garbage'"), ("127.0.0.1:1", "nothing answers there")])
def test_a_ray_address_where_no_ray_answers_is_one_line_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str, message: str) -> None:
    import time

    start = time.monotonic()
    assert run_cli(["run", *QUICK, "--executor", "ray", "--ray-address", address, "--out", str(tmp_path / "o")]) == 2
    assert time.monotonic() - start < 60  # ray.init alone retries such an address for minutes
    assert message in _one_line_error(capsys.readouterr().err)


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from Linux's /proc")
def test_pool_workers_exit_when_the_sweep_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    args = ["run", "--d", "64", "--width", "256", "--seeds", "0,1,2,3", "--models", "vanilla", "--attacks", "pgd", "--workers", "2", "--no-progress"]
    parent = subprocess.Popen([sys.executable, "-m", "marginbench", *args, "--out", str(tmp_path / "o")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(children := _children(parent.pid)) < 3 and time.monotonic() < deadline:  # two workers and the resource tracker
            time.sleep(0.5)
        assert len(children) >= 3, f"the pool did not start: {children}"
        time.sleep(2.0)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)]


# --- integrity: every reporting command verifies what it reads ----------------------------------------------


def _halve_perturbations(path: Path) -> None:
    import numpy as np

    arrays = dict(np.load(path))
    np.savez(path, **{name: value / 2 for name, value in arrays.items()})  # a valid file with other numbers


def _edit_csv(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    frame = pd.read_csv(path)
    change(frame)
    frame.to_csv(path, index=False)


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _first_run(root: Path) -> Path:
    return sorted((root / "runs").iterdir())[0]


TAMPERING = {
    "model.pt cut in half": (lambda r: (p := _first_run(r) / "model.pt").write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "model.pt does not match"),
    "flipped bytes in data.npz": (lambda r: _flip_bytes(_first_run(r) / "data.npz"), "data.npz does not match"),
    "perturbations halved": (lambda r: _halve_perturbations(_first_run(r) / "perturbations.npz"), "perturbations.npz does not match"),
    "a run's norm edited": (
        lambda r: _edit_csv(_first_run(r) / "examples.csv", lambda f: f.__setitem__("norm", f["norm"] * 0.5)),
        "examples.csv does not match",
    ),
    "a deleted marker": (lambda r: (_first_run(r) / "COMPLETE").unlink(), "it has no completion marker"),
    "a table's norm set to 0.01": (
        lambda r: _edit_csv(r / "examples.csv", lambda f: f.loc.__setitem__((0, "norm"), 0.01)),
        "examples.csv does not match its checksum",
    ),
    "a duplicated row": (
        lambda r: (p := r / "examples.csv").write_text(p.read_text() + p.read_text().splitlines()[1] + "\n"),
        "examples.csv does not match its checksum",
    ),
    "summary.csv cut in half": (
        lambda r: (p := r / "summary.csv").write_text(p.read_text()[: len(p.read_text()) // 2]),
        "summary.csv does not match its checksum",
    ),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_a_tampered_directory_is_refused_by_every_reporting_command_and_resume_mends_it(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    import shutil

    tamper, message = TAMPERING[case]
    out = tmp_path / "t"
    shutil.copytree(finished, out)
    baseline = tmp_path / "b.json"
    assert run_cli(["baseline", str(out), "-o", str(baseline)]) == 0
    tamper(out)
    for command in (
        ["leaderboard", str(out)],
        ["check", str(out), "--baseline", str(baseline)],
        ["plot", str(out)],
        ["baseline", str(out), "-o", str(tmp_path / "c.json")],
    ):
        capsys.readouterr()
        assert run_cli(command) == 2, command
        line = _one_line_error(capsys.readouterr().err)
        assert message in line and "--resume" in line, (command, line)
    capsys.readouterr()
    assert run_cli(["run", "--resume", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    if "does not match its checksum" not in message:  # a run's file, not a table: the run is named and redone
        assert f"redoing {_first_run(out).name}: " in err
    assert run_cli(["check", str(out), "--baseline", str(baseline)]) == 0  # rebuilt: the same numbers again


def test_the_committed_result_tables_verify() -> None:
    """results/: every committed directory's manifest vouches for its summary.csv (tables only, no runs/; results/zoo keeps its runs, verified too)."""
    from marginbench.bench.results.readback import read_results

    committed = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "results").rglob("manifest.json"))
    assert len(committed) >= 7
    for root in committed:
        read_results([root])
