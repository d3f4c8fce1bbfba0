"""The result directory's writing session (bench/results/session.py): the lock, the sealed manifest, the runs
and the tables, written by one session and read back by the next."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marginbench.bench.errors import SpecError
from marginbench.bench.results.manifest import SEAL, load_manifest
from marginbench.bench.results.readback import verify_directory
from marginbench.bench.results.record import EXAMPLE_COLUMNS, RunKeys, RunRecord, failed_record
from marginbench.bench.results.session import ResultSession
from marginbench.bench.results.writer_lock import WriterLock

SPECS = [{"family": "kkt", "dataset": "sphere"}]


def _record(index: int, run_id: str, n: int = 3) -> RunRecord:
    """A finished run with one attack, made by hand (no training): what a runner hands the session."""
    keys = RunKeys(run_id=run_id, family="kkt", dataset="sphere", model="vanilla", seed=index)
    rng = np.random.default_rng(index)
    examples = pd.DataFrame(
        {
            "run_id": run_id, "family": "kkt", "dataset": "sphere", "model": "vanilla", "attack": "pgd", "seed": index,
            "index": range(n), "label": [1, -1, 1][:n], "margin": rng.random(n), "on_margin": [True, False, True][:n],
            "norm": [0.1 + 1 / 3, 2.0, float("inf")][:n], "success": [True, True, False][:n],
        }
    )[EXAMPLE_COLUMNS]  # fmt: skip
    run_row = {"run_id": run_id, "d": 4, "n": n, "width": 2, "ell": 0, "sqrt_d": 2.0, "train_seconds": 0.5, "run_status": "ok", "run_error": ""}
    attack_rows = [{"run_id": run_id, "attack": "pgd", "attack_seconds": 0.25, "attack_status": "ok", "attack_error": ""}]
    arrays = {
        "model.pt": {"W": rng.standard_normal((2, 4)), "b": np.zeros(2), "v": np.array([1.0, -1.0])},
        "data.npz": {"X": rng.standard_normal((n, 4)), "y": np.array([1.0, -1.0, 1.0][:n])},
        "perturbations.npz": {"pgd": rng.standard_normal((n, 4))},
    }
    return RunRecord(index=index, keys=keys, examples=examples, run_row=run_row, attack_rows=attack_rows, manifest={"seconds": {"train": 0.5}}, arrays=arrays)


def _held(root: Path) -> bool:
    """Whether another writer of ``root`` would be refused now."""
    try:
        with WriterLock(root, create=False):
            return False
    except SpecError as err:
        assert "is being written by another marginbench process" in str(err)
        return True


def test_a_session_writes_runs_and_tables_that_the_next_one_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "out"
    failed = failed_record(
        1, RunKeys(run_id="r1", family="kkt", dataset="sphere", model="vanilla", seed=1), {"d": 4, "n": 3}, ["pgd"], "boom", {}, ["log line"]
    )
    with ResultSession.create(root) as session:
        assert _held(root)  # one writer: the lock is held while the session is open
        session.manifest.update(preset="test", specs=SPECS, status="running")
        session.write_tables()  # nothing finished yet: empty tables, a sealed manifest
        assert load_manifest(root)["runs"] == {}
        saved = session.save(_record(0, "r0"))
        assert saved.arrays == {} and saved.examples["norm"].tolist() == [0.1 + 1 / 3, 2.0, float("inf")]  # as read back from the files
        session.save(failed)
        session.manifest["status"] = "complete"
        examples, summary = session.write_tables()
        verify_directory(root, root)  # tables, markers and manifest agree
    assert not _held(root)  # released on exit
    assert list(summary["run_id"]) == ["r0", "r1"] and list(summary["run_status"]) == ["ok", "failed"]
    tables = {name: (root / name).read_bytes() for name in ("examples.csv", "summary.csv", "manifest.json")}
    manifest = load_manifest(root)
    assert manifest["status"] == "complete" and list(manifest["runs"]) == ["r0", "r1"] and isinstance(manifest[SEAL], str)

    with ResultSession.resume(root) as again:
        assert _held(root)
        assert again.manifest == manifest
        for index, run_id in enumerate(["r0", "r1"]):
            record, why = again.read_run(index, run_id)
            assert record is not None and why is None
            again.keep(record)
        assert again.finished[1].failed and again.finished[1].log == ("log line",)
        pd.testing.assert_frame_equal(again.finished[0].examples, saved.examples)
        assert again.read_run(2, "r2") == (None, "it has not run")
        again_examples, again_summary = again.write_tables()
    assert {name: (root / name).read_bytes() for name in tables} == tables  # rebuilt byte for byte from the runs
    pd.testing.assert_frame_equal(again_summary, summary)
    pd.testing.assert_frame_equal(again_examples, examples)


def test_a_session_refuses_a_directory_it_cannot_trust(tmp_path: Path) -> None:
    root = tmp_path / "out"
    with ResultSession.create(root) as session:
        session.manifest.update(specs=SPECS)
        session.save(_record(0, "r0"))
    with pytest.raises(SpecError, match="already holds results"), ResultSession.create(root):
        pass
    assert not _held(root)  # a refused session does not keep the lock
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["preset"] = "edited"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match="does not match its own checksum"), ResultSession.resume(root):
        pass
    with pytest.raises(SpecError, match=r"no manifest\.json there"), ResultSession.resume(tmp_path / "nothing"):
        pass
