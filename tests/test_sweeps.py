"""Crash-safe, resumable sweeps, and the executors: a killed sweep resumes to the same tables, whatever runs them."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import SWEEP, assert_same_tables, read_json, run_cli

N_RUNS = 6  # SWEEP: two models x three seeds


def test_a_sweep_killed_part_way_and_resumed_equals_an_uninterrupted_one(tmp_path: Path, reference_sweep: Path) -> None:
    out = tmp_path / "killed"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "marginbench", "run", *SWEEP, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("runs/*/COMPLETE")):
            assert sweep.poll() is None, f"the sweep ended before it could be killed: {sweep.stderr.read() if sweep.stderr else ''}"
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.005)
        sweep.send_signal(signal.SIGKILL)
    finally:
        sweep.kill()
        sweep.wait()
    finished = len(list(out.glob("runs/*/COMPLETE")))
    assert 1 <= finished < N_RUNS, f"killed after {finished} of {N_RUNS} runs"
    assert read_json(out / "manifest.json")["status"] == "running"

    assert run_cli(["run", "--resume", str(out), "--no-progress"]) == 0
    assert_same_tables(reference_sweep, out)
    manifest = read_json(out / "manifest.json")
    assert manifest["status"] == "complete" and len(manifest["runs"]) == N_RUNS and len(manifest["resumed"]) == 1
    assert not list(out.rglob("*.tmp"))


def test_resume_redoes_exactly_the_runs_whose_marker_is_missing_or_does_not_match(
    tmp_path: Path, reference_sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "damaged"
    shutil.copytree(reference_sweep, out)
    runs = sorted((out / "runs").iterdir())
    (runs[0] / "COMPLETE").unlink()  # killed just before its marker
    (runs[1] / "run.json").write_text("{}")  # files that the marker does not vouch for
    shutil.rmtree(runs[2])  # never started
    (runs[3] / ".model.pt.x1y2.tmp").write_bytes(b"half a file")  # killed mid-write
    (out / "summary.csv").write_text("run_id\n")  # tables are rebuilt from the runs' own files
    (out / "examples.csv").unlink()
    capsys.readouterr()
    assert run_cli(["run", "--resume", str(out), "--no-progress"]) == 0
    assert f"{N_RUNS - 3} of {N_RUNS} runs finished, 3 to run" in capsys.readouterr().err
    assert_same_tables(reference_sweep, out)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--d", "9"], "--d 9 contradicts its manifest (d = 8)"),
        (["--seeds", "0,1"], "--seeds 0,1 contradicts its manifest (seeds = 0)"),
        (["--lr", "0.1"], "--lr 0.1 contradicts its manifest (lr = 1e-05)"),
        (["--preset", "smoke"], "--preset smoke contradicts its manifest (preset default)"),
        (["--overwrite"], "--overwrite cannot be combined with --resume"),
        (["--out", "elsewhere"], "not allowed with argument"),
    ],
)
def test_resume_refuses_options_that_contradict_the_manifest(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    assert run_cli(["run", "--d", "8", "--models", "robust-construction", "--attacks", "universal-z", "--no-progress", "--out", str(out)]) == 0
    before = (out / "manifest.json").read_bytes()
    capsys.readouterr()
    assert run_cli(["run", "--resume", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert (out / "manifest.json").read_bytes() == before
    assert run_cli(["run", "--resume", str(out), "--d", "8", "--preset", "default", "--no-progress"]) == 0  # agreeing options are fine


def test_resume_without_a_manifest_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no manifest.json there" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{not json")
    assert run_cli(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: where a lone net's products may be split across threads, batched training agrees only
    to tolerance with unbatched (bench/execution/executors.py, SequentialExecutor)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_seeds_trained_in_one_batch_write_the_same_tables_and_resume_trains_only_the_unfinished(tmp_path: Path) -> None:
    plain, batched = tmp_path / "plain", tmp_path / "batched"
    assert run_cli(["run", *SWEEP, "--out", str(plain)]) == 0
    assert run_cli(["run", *SWEEP, "--batch-seeds", "--out", str(batched)]) == 0
    assert_same_tables(plain, batched)
    assert read_json(batched / "manifest.json")["execution"]["batch_seeds"] is True
    # Two of the three trained seeds unfinished: resume trains those two together, and nothing changes.
    for run_dir in sorted(batched.glob("runs/*-vanilla-s*"))[1:]:
        (run_dir / "COMPLETE").unlink()
    assert run_cli(["run", "--resume", str(batched), "--batch-seeds", "--no-progress"]) == 0
    assert_same_tables(plain, batched)
    assert len(read_json(batched / "manifest.json")["resumed"]) == 1


def test_batch_seeds_with_a_process_pool_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", *SWEEP, "--batch-seeds", "--workers", "2", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("--batch-seeds applies to runs in this process only (--executor local, --workers 1)")


@pytest.mark.slow
def test_a_process_pool_writes_the_same_results(tmp_path: Path, reference_sweep: Path) -> None:
    out = tmp_path / "pool"
    assert run_cli(["run", *SWEEP, "--workers", "2", "--out", str(out)]) == 0
    assert_same_tables(reference_sweep, out)
    manifest = read_json(out / "manifest.json")
    assert manifest["execution"] == {"kind": "local", "workers": 2, "ray_address": None, "batch_seeds": False, "gpus_per_run": None, "threads": None}
    assert list(manifest["runs"]) == list(read_json(reference_sweep / "manifest.json")["runs"])  # spec order, not finish order


@pytest.mark.slow
@pytest.mark.ray
def test_bf16_runs_give_the_same_tables_sequentially_in_a_pool_and_on_ray(tmp_path: Path) -> None:
    """--precision bf16 (issue 22): the bf16 kernel is deterministic wherever the run is computed (each run
    at the thread count of bench/performance/threads.py's rule, in this process, a pool worker or a Ray task)."""
    bf16 = [*SWEEP, "--precision", "bf16"]
    assert run_cli(["run", *bf16, "--out", str(tmp_path / "seq")]) == 0
    assert run_cli(["run", *bf16, "--workers", "2", "--out", str(tmp_path / "pool")]) == 0
    assert_same_tables(tmp_path / "seq", tmp_path / "pool")
    if importlib.util.find_spec("ray") is not None:
        assert run_cli(["run", *bf16, "--executor", "ray", "--workers", "2", "--out", str(tmp_path / "ray")]) == 0
        assert_same_tables(tmp_path / "seq", tmp_path / "ray")
    assert (
        read_json(tmp_path / "seq" / "manifest.json")["runs"][next(iter(read_json(tmp_path / "seq" / "manifest.json")["runs"]))]["precision"]["used"] == "bf16"
    )


def _worker_pids(parent: int) -> list[int]:
    """The process-pool workers of ``parent`` (its children started by multiprocessing's spawn)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the pool's workers through /proc")
def test_a_killed_pool_worker_ends_the_sweep_in_one_line_and_resume_finishes_it(tmp_path: Path, reference_sweep: Path) -> None:
    out = tmp_path / "pool"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "marginbench", "run", *SWEEP, "--workers", "2", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("runs/*/COMPLETE")):  # the constructions are queued last: work is pending
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        workers = _worker_pids(sweep.pid)
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)  # what the OOM killer does
        _, err = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
        sweep.wait()
    assert sweep.returncode == 1, err
    # (after it, multiprocessing's resource tracker may warn about the semaphores the killed workers held)
    (line,) = [line for line in err.splitlines() if line.startswith("marginbench: error:")]
    assert line.startswith("marginbench: error: a worker process died") and "marginbench run --resume" in line, err
    assert "Traceback" not in err
    assert 1 <= len(list(out.glob("runs/*/COMPLETE"))) < N_RUNS
    assert run_cli(["run", "--resume", str(out), "--workers", "2", "--no-progress"]) == 0
    assert_same_tables(reference_sweep, out)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_tasks_resume_a_sweep_to_the_same_results(tmp_path: Path, reference_sweep: Path) -> None:
    pytest.importorskip("ray", reason="ray is optional: pip install -c constraints.txt -e '.[test,ray]'")
    out = tmp_path / "ray"
    shutil.copytree(reference_sweep, out)
    for run_dir in sorted((out / "runs").iterdir())[::2]:
        (run_dir / "COMPLETE").unlink()
    assert run_cli(["run", "--resume", str(out), "--executor", "ray", "--workers", "2", "--no-progress"]) == 0
    assert_same_tables(reference_sweep, out)
    assert read_json(out / "manifest.json")["resumed"][-1]["execution"]["kind"] == "ray"


def test_ray_executor_without_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert run_cli(["run", "--d", "8", "--executor", "ray", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'marginbench[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
