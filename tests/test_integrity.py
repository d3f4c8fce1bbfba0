"""Integrity fails closed (issue 24): a deleted checksum entry, an edited manifest or an unlisted run is refused,
not skipped; `check --deep` recomputes every norm and flip; `-o` writes regular files only and never a result
directory's own; `attack --out` stays outside its source; a malformed baseline is one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import run_cli
from marginbench.bench.report import check as check_module
from marginbench.bench.results.manifest import SEAL, save_manifest
from marginbench.bench.results.store import _csv_bytes, _sha256


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marginbench: error: ") and "Traceback" not in err, err
    return lines[0]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".marginbench")}


@pytest.fixture()
def copy(reference_sweep: Path, tmp_path: Path) -> Path:
    out = tmp_path / "d"
    shutil.copytree(reference_sweep, out)
    return out


def _first_run(root: Path) -> Path:
    return sorted((root / "runs").iterdir())[0]


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Edit a JSON file by hand, as a person would: nothing else is recomputed."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _reseal(root: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Edit the manifest and recompute its own checksum (what the per-entry rules must still catch)."""
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    save_manifest(root, manifest)


def _refused_everywhere(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], message: str, *, resume: bool = True) -> None:
    """Every reporting command, and run --resume, exit 2 with ``message`` in one line; nothing is changed."""
    before = _snapshot(root)
    baseline = tmp_path / "b.json"
    commands = [["leaderboard", str(root)], ["check", str(root), "--deep"], ["baseline", str(root), "-o", str(baseline)], ["plot", str(root)]]
    if resume:
        commands.append(["run", "--resume", str(root), "--no-progress"])
    for command in commands:
        capsys.readouterr()
        assert run_cli(command) == 2, command
        assert message in _one_line_error(capsys.readouterr().err), command
    assert _snapshot(root) == before  # no run retrained, none dropped, no table rewritten
    assert not baseline.exists()


# --- the manifest covers itself: specs, preset, commit, the list of runs, the table checksums -----------------

MANIFEST_EDITS = {
    "width 16 to 4096 in specs": lambda m: m["specs"][0].__setitem__("width", 4096),
    "git_commit": lambda m: m.__setitem__("git_commit", "0" * 40),
    "preset": lambda m: m.__setitem__("preset", "smoke"),
    "a run removed from runs": lambda m: m["runs"].pop(sorted(m["runs"])[0]),
    "examples.csv's table checksum deleted": lambda m: m["tables"].pop("examples.csv"),
}


@pytest.mark.parametrize("case", MANIFEST_EDITS)
def test_an_edited_manifest_is_refused_by_reports_and_by_resume(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    _edit_json(copy / "manifest.json", MANIFEST_EDITS[case])
    _refused_everywhere(copy, tmp_path, capsys, f"{copy / 'manifest.json'} does not match its own checksum ({SEAL})")


def test_a_manifest_without_its_own_checksum_is_refused(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit_json(copy / "manifest.json", lambda m: m.pop(SEAL))
    _refused_everywhere(copy, tmp_path, capsys, f"{copy / 'manifest.json'} carries no checksum of itself ({SEAL})")


def test_a_table_without_a_checksum_entry_is_refused_even_in_a_resealed_manifest(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _reseal(copy, lambda m: m["tables"].pop("examples.csv"))
    (copy / "examples.csv").write_text((copy / "examples.csv").read_text().replace("universal-z", "universal-y", 1))
    _refused_everywhere(copy, tmp_path, capsys, f"{copy / 'manifest.json'} holds no checksum of examples.csv", resume=False)


def test_a_finished_run_the_manifest_does_not_list_is_refused(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dropped = _first_run(copy).name
    _reseal(copy, lambda m: m["runs"].pop(dropped))
    _refused_everywhere(copy, tmp_path, capsys, f"{copy / 'runs' / dropped} is a finished run that {copy / 'manifest.json'} does not list", resume=False)
    # a run cut short between its marker and the manifest: resume lists it again
    assert run_cli(["run", "--resume", str(copy), "--no-progress"]) == 0
    assert run_cli(["leaderboard", str(copy)]) == 0


def test_resume_refuses_a_finished_run_outside_its_sweep(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(_first_run(copy), copy / "runs" / "kkt-sphere-d8-n8-w8-stranger-s0")
    capsys.readouterr()
    assert run_cli(["run", "--resume", str(copy), "--no-progress"]) == 2
    assert "runs/kkt-sphere-d8-n8-w8-stranger-s0 is a finished run that is not part of its sweep" in _one_line_error(capsys.readouterr().err)


# --- a marker must vouch for every file of its run ----------------------------------------------------------


def _drop_entry(name: str, *, then: str) -> Callable[[Path], None]:
    def tamper(root: Path) -> None:
        run_dir = _first_run(root)
        _edit_json(run_dir / "COMPLETE", lambda marker: marker["sha256"].pop(name))
        if then == "cut":
            (run_dir / name).write_bytes((run_dir / name).read_bytes()[:100])
        else:
            (run_dir / name).unlink()

    return tamper


MARKER_EDITS = {
    "model.pt's entry deleted, the file cut": (_drop_entry("model.pt", then="cut"), "its completion marker does not vouch for model.pt"),
    "perturbations.npz's entry deleted, the file cut": (
        _drop_entry("perturbations.npz", then="cut"),
        "its completion marker does not vouch for perturbations.npz",
    ),
    "model.pt's entry and file deleted": (_drop_entry("model.pt", then="delete"), "its completion marker does not vouch for model.pt"),
    "the marker of another run": (
        lambda r: _edit_json(_first_run(r) / "COMPLETE", lambda m: m.__setitem__("run_id", "another")),
        "its completion marker is another run's",
    ),
}


@pytest.mark.parametrize("case", MARKER_EDITS)
def test_a_marker_that_leaves_out_a_file_is_refused_not_skipped(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    tamper, message = MARKER_EDITS[case]
    tamper(copy)
    _refused_everywhere(copy, tmp_path, capsys, f"{_first_run(copy)}: {message}")


# --- check --deep -------------------------------------------------------------------------------------------


def test_deep_check_agrees_on_an_untouched_directory_and_with_a_baseline(copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = tmp_path / "b.json"
    assert run_cli(["baseline", str(copy), "-o", str(baseline)]) == 0
    capsys.readouterr()
    assert run_cli(["check", str(copy), "--deep", "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    rows = len(pd.read_csv(copy / "examples.csv"))
    assert "ok: all" in out and f"ok: all {rows} rows of examples.csv agree with model.pt, data.npz and perturbations.npz" in out


def _forge_table(root: Path, edit: Callable[[pd.DataFrame], None]) -> None:
    """Edit examples.csv and recompute its checksum and the manifest's: only --deep can tell."""
    frame = pd.read_csv(root / "examples.csv")
    edit(frame)
    (root / "examples.csv").write_bytes(_csv_bytes(frame))
    _reseal(root, lambda m: m["tables"].__setitem__("examples.csv", _sha256(root / "examples.csv")))


@pytest.mark.parametrize(
    ("case", "edit", "problem"),
    [
        ("a norm halved", lambda f: f.loc.__setitem__((f.index[f["success"]][0], "norm"), f.loc[f.index[f["success"]][0], "norm"] / 2), "norm differs"),
        ("a flip denied", lambda f: f.loc.__setitem__((f.index[f["success"]][0], "success"), False), "success differs"),
    ],
)
def test_deep_check_lists_rows_that_the_saved_files_contradict(
    copy: Path, capsys: pytest.CaptureFixture[str], case: str, edit: Callable[[pd.DataFrame], None], problem: str
) -> None:
    _forge_table(copy, edit)
    assert run_cli(["leaderboard", str(copy)]) == 0  # the checksums, recomputed, pass: a forger's case
    capsys.readouterr()
    assert run_cli(["check", str(copy), "--deep"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("DISAGREE: 1 rows of examples.csv do not match") and problem in out, case


def test_deep_check_needs_the_runs(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(copy / "runs")
    assert run_cli(["check", str(copy), "--deep"]) == 2
    assert "has no runs/ folder (only its tables): --deep needs" in _one_line_error(capsys.readouterr().err)


def test_check_with_neither_baseline_nor_deep_is_one_line(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["check", str(copy)]) == 2
    assert "give --baseline PATH, --deep, or both" in _one_line_error(capsys.readouterr().err)


def test_the_committed_zoo_passes_the_deep_check(capsys: pytest.CaptureFixture[str]) -> None:
    zoo = Path(__file__).resolve().parents[1] / "results" / "zoo"
    assert run_cli(["check", str(zoo), "--deep"]) == 0
    assert capsys.readouterr().out.startswith("ok: all ")


# --- -o writes a regular file, never a device, a FIFO, or a result directory's own files ---------------------

OUTPUT_COMMANDS = {
    "leaderboard json": lambda d, o: ["leaderboard", str(d), "--format", "json", "-o", str(o)],
    "leaderboard csv": lambda d, o: ["leaderboard", str(d), "--format", "csv", "-o", str(o)],
    "leaderboard html": lambda d, o: ["leaderboard", str(d), "--format", "html", "-o", str(o)],
    "baseline": lambda d, o: ["baseline", str(d), "-o", str(o)],
}


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_output_to_a_fifo_a_device_or_a_directory_is_refused(reference_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, message in ((fifo, "is not a regular file"), (Path("/dev/full"), "is not a regular file"), (tmp_path, "is a directory")):
        capsys.readouterr()
        assert run_cli(OUTPUT_COMMANDS[command](reference_sweep, target)) == 2
        assert f"-o {target} {message}" in _one_line_error(capsys.readouterr().err)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISCHR(Path("/dev/full").stat().st_mode)


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_output_through_a_symlink_writes_its_target_and_keeps_the_link(reference_sweep: Path, tmp_path: Path, command: str) -> None:
    target, link = tmp_path / "target.out", tmp_path / "link.out"
    target.write_text("old")
    link.symlink_to(target)
    assert run_cli(OUTPUT_COMMANDS[command](reference_sweep, link)) == 0
    assert link.is_symlink() and link.resolve() == target.resolve() and target.read_text() != "old"


@pytest.mark.parametrize("own", ["manifest.json", "summary.csv", "examples.csv", "runs/x.json", "runs"])
@pytest.mark.parametrize("command", ["leaderboard json", "baseline"])
def test_output_into_a_result_directory_s_own_files_is_refused(copy: Path, capsys: pytest.CaptureFixture[str], command: str, own: str) -> None:
    before = _snapshot(copy)
    assert run_cli(OUTPUT_COMMANDS[command](copy, copy / own)) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"is one of the result directory {copy}'s own files" in line or "is a directory" in line
    assert _snapshot(copy) == before
    assert run_cli(OUTPUT_COMMANDS[command](copy, copy / "report.out")) == 0  # next to them is fine


# --- attack --out stays outside its source ------------------------------------------------------------------


@pytest.mark.parametrize(("where", "message"), [("runs/x", "lies inside"), ("inner", "lies inside"), (".", "itself"), ("..", "holds")])
def test_attack_out_inside_or_around_its_source_is_refused_before_any_copy(copy: Path, capsys: pytest.CaptureFixture[str], where: str, message: str) -> None:
    before = _snapshot(copy)
    out = copy / where
    assert run_cli(["attack", str(copy), "--attacks", "pgd", "--out", str(out)]) == 2
    assert message in _one_line_error(capsys.readouterr().err)
    assert _snapshot(copy) == before and not list(copy.rglob(".*.copying"))


# --- check --baseline: bad baseline files are a user's mistake, one line, exit 2 ----------------------------


def _baseline_case(tmp_path: Path, case: str) -> Path:
    path = tmp_path / "bad.json"
    if case == "nested too deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "/dev/zero":
        return Path("/dev/zero")
    elif case == "a FIFO":
        os.mkfifo(path)
    elif case in ("no metric", "no value"):
        good = {"format": check_module.FORMAT, "bands": {"*": {"rel": 0, "abs": 0}}, "values": [{"run_id": "r", "attack": "a", "metric": "m", "value": 1.0}]}
        good["values"][0].pop(case.split()[1])
        path.write_text(json.dumps(good))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nested too deep", "is nested too deep to be a baseline"),
        ("/dev/zero", "is not a regular file"),
        ("a FIFO", "is not a regular file"),
        ("no metric", 'entry 0 of "values" lacks metric'),
        ("no value", 'entry 0 of "values" lacks value'),
    ],
)
def test_a_malformed_baseline_is_one_line_and_exit_2(
    reference_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    path = _baseline_case(tmp_path, case)
    assert run_cli(["check", str(reference_sweep), "--baseline", str(path)]) == 2
    assert f"baseline {path}" in (line := _one_line_error(capsys.readouterr().err)) and message in line


def test_an_oversize_baseline_is_refused_unread(
    reference_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check_module, "MAX_BASELINE_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"values": ["x" * 2000]}))
    assert run_cli(["check", str(reference_sweep), "--baseline", str(path)]) == 2
    assert f"baseline {path} is larger than 1,000 bytes" in _one_line_error(capsys.readouterr().err)
