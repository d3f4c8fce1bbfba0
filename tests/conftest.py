"""Shared fixtures: tiny sizes by default; the trained nets are built once per session."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from marginbench.bench.cli import main
from marginbench.bench.results.manifest import save_manifest
from marginbench.bench.results.store import ResultStore
from marginbench.models.datasets import Dataset, sphere
from marginbench.models.train import TrainReport, TrainSpec, train
from marginbench.models.two_layer import TwoLayerNet, pytorch_default_init


@dataclass(frozen=True)
class Trained:
    data: Dataset
    net: TwoLayerNet
    report: TrainReport


@pytest.fixture(scope="session")
def trained_vanilla() -> Trained:
    """d = 64, n = 64, width 64, trained with the paper's schedule to loss < 1e-30 (about 12 s)."""
    data = sphere(d=64, n=64, seed=0)
    init = pytorch_default_init(64, 64, generator=torch.Generator().manual_seed(0))
    net, report = train(init, data.X, data.y, TrainSpec())
    return Trained(data=data, net=net, report=report)


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A result directory written by `marginbench run --preset smoke` (both models, seeds 0 and 1)."""
    out = tmp_path_factory.mktemp("smoke") / "results"
    # The paper's growth ten times as often: the same regime in a tenth of the steps (seconds, not a minute).
    assert main(["run", "--preset", "smoke", "--growth-every", "10", "--out", str(out), "--no-progress"]) == 0
    return out


def random_net(d: int, width: int, seed: int, *, bias_scale: float = 1.0) -> TwoLayerNet:
    """A net with N(0, 1) weights: an arbitrary piecewise-linear function for property tests."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, d, generator=g, dtype=torch.float64)
    b = bias_scale * torch.randn(width, generator=g, dtype=torch.float64)
    v = torch.randn(width, generator=g, dtype=torch.float64)
    return TwoLayerNet(W=W, b=b, v=v)


# One quick run per model of the kkt family's defaults (vanilla, robust-construction), seed 0: a second or two.
QUICK = ["--d", "8", "--width", "8", "--max-iters", "300", "--attacks", "universal-z", "--no-progress"]

# A sweep of six runs (three trained, three constructed) that takes a few seconds: long enough to be killed
# part-way, short enough to run three times. Resume, process-pool and Ray tests all compare with it.
SWEEP = [
    "--d",
    "8",
    "--width",
    "8",
    "--max-iters",
    "4000",
    "--models",
    "vanilla,robust-construction",
    "--attacks",
    "universal-z",
    "--seeds",
    "0,1,2",
    "--no-progress",
]
TIMING_COLUMNS = ["train_seconds", "attack_seconds"]
# "tables": the checksums of summary.csv and examples.csv, whose timing columns differ from run to run;
# "manifest_sha256": the manifest's checksum of itself, timings included
TIMING_KEYS = {"seconds", "wall_seconds", "train_seconds", "attack_seconds", "started", "finished", "resumed", "command", "log", "tables", "manifest_sha256"}


def run_cli(argv: Sequence[str]) -> int:
    """``marginbench`` in this process: its exit status, whether it returned or exited."""
    try:
        return main(list(argv))
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.fixture(scope="session")
def reference_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SWEEP run in this process, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "results"
    assert run_cli(["run", *SWEEP, "--out", str(out)]) == 0
    return out


def assert_same_tables(first: Path, second: Path) -> None:
    """summary.csv and examples.csv of two result directories hold the same rows, timing columns aside."""
    assert (first / "examples.csv").read_bytes() == (second / "examples.csv").read_bytes()
    a, b = (pd.read_csv(root / "summary.csv").drop(columns=TIMING_COLUMNS) for root in (first, second))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not a.duplicated(["run_id", "attack"]).any()


def without_timing(value: Any) -> Any:
    """A JSON value with every timing or timestamp key removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the git commit in known_result_dir's manifest


def write_result_dir(root: Path, examples: pd.DataFrame, summary: pd.DataFrame, **manifest: Any) -> Path:
    """A hand-made result directory: the two tables and a manifest of ``manifest`` and their checksums (so that
    readback.verify_directory accepts it, as it does a sweep's)."""
    root.mkdir(parents=True, exist_ok=True)
    tables = ResultStore(root).write_tables(examples=examples, summary=summary)
    save_manifest(root, {**manifest, "tables": tables})
    return root


def known_result_dir(root: Path, *, exact: bool = False, dataset: str = "sphere") -> Path:
    """A result directory whose leaderboard is known: two models (two seeds each) and attacks a (always best),
    b (2x a), c (fails on half the examples); with ``exact``, an attack ``exact`` that proves a's norms on
    examples 0..2 (``lower_bound`` and ``proved_optimal`` columns) and leaves example 3 unflipped and unproved
    (its lower bound half of a's norm). Every net classifies its points (labels +1, -1, +1, -1) correctly, and
    summary.csv has no clean-accuracy columns, as a directory written before them. The manifest holds the
    tables' checksums and some provenance."""
    ex, su = [], []
    for model, scale in (("weak", 1.0), ("strong", 3.0)):
        for seed in (0, 1):
            run_id = f"kkt-{dataset}-d4-n4-w8-{model}-s{seed}"
            base = scale * (1.0 + 0.1 * seed) * np.arange(1, 5)
            norms = {"a": base, "b": 2 * base, "c": np.where(np.arange(4) < 2, base, np.inf)}
            if exact:
                norms["exact"] = np.where(np.arange(4) < 3, base, np.inf)
            for attack, norm in norms.items():
                for i, value in enumerate(norm):
                    row = {"run_id": run_id, "family": "kkt", "dataset": dataset, "model": model, "attack": attack, "seed": seed, "index": i,
                           "label": 1 - 2 * (i % 2), "margin": 1.0, "on_margin": True, "norm": value, "success": bool(np.isfinite(value))}  # fmt: skip
                    if exact:
                        row["lower_bound"] = base[i] if i < 3 else 0.5 * base[i]
                        row["proved_optimal"] = i < 3
                    ex.append(row)
                su.append({"run_id": run_id, "family": "kkt", "dataset": dataset, "model": model, "attack": attack, "seed": seed, "d": 4, "n": 4, "width": 8,
                           "n_attacked": 4, "median_norm": float(np.median(norm)), "attack_seconds": 0.004,
                           "forward_passes_per_example": 10 if attack == "b" else 2, "train_iterations": 100, "run_status": "ok"})  # fmt: skip
    return write_result_dir(root, pd.DataFrame(ex), pd.DataFrame(su), preset="default", specs=[{"d": 4, "width": 8, "note": "<i>&"}], git_commit=COMMIT,
                            versions={"marginbench": "0.1.0"}, command=["marginbench", "run", "--out", str(root)])  # fmt: skip


def degenerate_result_dir(root: Path) -> Path:
    """Three models, one run each, four attacked points (labels +1, -1, +1, -1), attack ``a``:

    - ``good``: N = y on every point (changes sign, classifies all), flipped at norm 2 (score 1);
    - ``sloppy``: N changes sign but 1 of its 4 training points is misclassified; flipped at norm 6 (score 3);
    - ``positive``: the README's v = 1, b = 0 net: N = 1 > 0 everywhere, never flipped (score +inf), misclassifies 2/4.
    """
    ex, su = [], []
    for model, norm, margins, accuracy in (
        ("good", 2.0, [1.0, 1.0, 1.0, 1.0], 1.0),
        ("sloppy", 6.0, [1.0, 1.0, 1.0, 1.0], 0.75),
        ("positive", math.inf, [1.0, -1.0, 1.0, -1.0], 0.5),  # margin y N(x) with N = 1
    ):
        run_id = f"kkt-sphere-d4-n4-w8-{model}-s0"
        for i, margin in enumerate(margins):
            ex.append({"run_id": run_id, "family": "kkt", "dataset": "sphere", "model": model, "attack": "a", "seed": 0, "index": i,
                       "label": 1 - 2 * (i % 2), "margin": margin, "on_margin": True, "norm": norm, "success": math.isfinite(norm)})  # fmt: skip
        su.append({"run_id": run_id, "family": "kkt", "dataset": "sphere", "model": model, "attack": "a", "seed": 0, "d": 4, "n": 4, "width": 8,
                   "n_attacked": 4, "median_norm": norm, "clean_accuracy_train": accuracy, "clean_accuracy_attacked": accuracy,
                   "run_status": "ok"})  # fmt: skip
    return write_result_dir(root, pd.DataFrame(ex), pd.DataFrame(su), preset="default", specs=[])


def figure_summary() -> pd.DataFrame:
    """A hand-made merged summary: kkt runs over d, alpha, width and seeds, and subspace runs over init scales."""
    rows = []
    for d in (16, 32, 64):
        for alpha in (0.5, 1.0):
            for width in (32, 128):
                for seed in (0, 1):
                    n = round(d**alpha)
                    for model in ("vanilla", "robust-construction"):
                        rows.append(
                            {
                                "source": "x",
                                "run_id": f"kkt-d{d}-n{n}-w{width}-{model}-s{seed}",
                                "family": "kkt",
                                "dataset": "sphere",
                                "model": model,
                                "attack": "universal-z",
                                "seed": seed,
                                "d": d,
                                "n": n,
                                "width": width,
                                "alpha": alpha,
                                "init_scale": np.nan,
                                "common_c": 0.2 * np.sqrt(d) + 0.01 * seed,
                                "margin_fraction": 0.9 + 0.05 * seed,
                                "median_norm": 1.0,
                            }
                        )
    for scale in (1.0, 4.0, 16.0):
        for attack, norm in (("pgd-on", 2.0), ("pgd-off", 0.3 * scale), ("pgd", 0.25 * scale)):
            for seed in (0, 1):
                rows.append(
                    {
                        "source": "y",
                        "run_id": f"sub-{scale}-s{seed}",
                        "family": "subspace",
                        "dataset": "subspace",
                        "model": "vanilla",
                        "attack": attack,
                        "seed": seed,
                        "d": 64,
                        "n": 32,
                        "width": 100,
                        "alpha": np.nan,
                        "init_scale": scale,
                        "common_c": np.nan,
                        "margin_fraction": np.nan,
                        "median_norm": norm + 0.1 * seed,
                    }
                )
    return pd.DataFrame(rows)


def layout_problems(fig: Figure) -> list[str]:
    """What a reader would stumble on in the drawn ``fig``: a legend over an axes' data area, a legend, title
    or axis label cut by the canvas's edge, two of them on top of each other (empty when none)."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # the canvas savefig draws on
    fig.draw(renderer)
    canvas = fig.bbox.padded(0.5)  # half a pixel: rounding
    axes = list(fig.axes)
    legends = [*fig.legends, *(legend for ax in axes if (legend := ax.get_legend()) is not None)]
    labels = [label for ax in axes for label in (ax.title, ax.xaxis.label, ax.yaxis.label)]  # a colour bar is one of the axes
    texts = [t for t in (fig._suptitle, *labels) if t is not None and t.get_text()]  # the suptitle's getter gives its text only
    problems = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        problems += [f"a legend lies over the data of {ax.get_title()!r}" for ax in axes if box.overlaps(ax.get_window_extent(renderer))]
        problems += [] if canvas.contains(box.x0, box.y0) and canvas.contains(box.x1, box.y1) else ["a legend runs off the canvas"]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    problems += [f"{text!r} runs off the canvas" for text, box in boxes if not (canvas.contains(box.x0, box.y0) and canvas.contains(box.x1, box.y1))]
    problems += [f"{a!r} and {b!r} overlap" for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :] if box.overlaps(other)]
    return problems
