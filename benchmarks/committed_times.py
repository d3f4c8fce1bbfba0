"""The wall times of the committed result directories, read from their manifests: docs/throughput.md's table of
them is this script's output, and tests/test_docs.py compares the two.

    python benchmarks/committed_times.py

Per directory: the preset and scale of the command that wrote it, its runs, the sweep's wall time (from the
manifest's `started` to `finished`: the last session, where a sweep was resumed), the runs' own wall times and
training times added up, and the device (the GPU where there was one).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from tabulate import tabulate

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _option(command: list[str], name: str, default: str) -> str:
    return command[command.index(name) + 1] if name in command[:-1] else default


def rows() -> list[list[str]]:
    table = []
    for manifest_path in sorted(RESULTS.glob("**/manifest.json")):
        if "runs" in manifest_path.relative_to(RESULTS).parts[:-1]:
            continue  # a run's own files, not a result directory
        manifest = json.loads(manifest_path.read_text())
        runs = list(manifest["runs"].values()) if isinstance(manifest["runs"], dict) else list(manifest["runs"])
        command = manifest.get("command") or []
        preset = _option(command, "--preset", "options" if "--d" in command else manifest.get("preset") or "default")
        sweep = (datetime.fromisoformat(manifest["finished"]) - datetime.fromisoformat(manifest["started"])).total_seconds()
        device = manifest.get("machine", {}).get("cuda") or "CPU"
        table.append(
            [
                str(manifest_path.parent.relative_to(RESULTS.parent)),
                f"{preset} {_option(command, '--scale', '')}".strip(),
                str(len(runs)),
                _minutes(sweep),
                _minutes(sum(run.get("wall_seconds") or 0.0 for run in runs)),
                _minutes(sum((run.get("train") or {}).get("seconds") or 0.0 for run in runs)),
                device,
            ]
        )
    return table


if __name__ == "__main__":
    print(tabulate(rows(), headers=["directory", "preset", "runs", "sweep wall", "runs' wall (sum)", "training (sum)", "device"], tablefmt="github"))
