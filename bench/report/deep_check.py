"""``marginbench check --deep DIR``: every reported norm and flip recomputed from the run's own files.

The checksums say that a file is as its sweep wrote it; this says that what the sweep wrote is true. For each
run, the network (model.pt) and the attacked points (data.npz: X_eval where present, else X) are loaded in
float64, each attack's perturbation (perturbations.npz) is applied, and the harness's own flip rule
(``strict_flips``: a change of sign beyond the forward pass's rounding bound) decides success; the norm is
||delta|| where it flips, +inf elsewhere, and ``best`` is the minimum over the attacks. Every examples.csv row
that disagrees (success, or a norm beyond NORM_RTOL) is listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate

from marginbench.bench.errors import SpecError
from marginbench.bench.results.readback import read_results
from marginbench.checking.flips import strict_flips
from marginbench.models.three_layer import ThreeLayerNet
from marginbench.models.two_layer import TwoLayerNet

BEST = "best"  # the per-example minimum over the attacks (results.record.BEST), rebuilt here from the others
# The norm of the same float64 delta, summed in another order (threads, SIMD), moves in the 16th digit.
NORM_RTOL = 1e-9
COLUMNS = ["run_id", "attack", "index", "problem", "stored_norm", "norm", "stored_success", "success"]


def _net(path: Path) -> TwoLayerNet | ThreeLayerNet:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file
        raise SpecError(f"{path} cannot be read ({type(err).__name__})") from None
    state = {key: value.to(torch.float64) for key, value in state.items()} if isinstance(state, dict) else {}
    if set(state) == {"W", "b", "v"}:
        return TwoLayerNet.from_state_dict(state)
    try:
        return ThreeLayerNet.from_state_dict(state)
    except (KeyError, TypeError, ValueError) as err:
        raise SpecError(f"{path} holds neither a two-layer nor a three-layer net ({type(err).__name__})") from None


def _recomputed(run_dir: Path, attacks: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray] | str]:
    """attack -> (norm, success) per attacked point, or why it cannot be recomputed."""
    net = _net(run_dir / "model.pt")
    with np.load(run_dir / "data.npz") as data:
        X = torch.from_numpy(data["X_eval"] if "X_eval" in data.files else data["X"]).to(torch.float64)
    out: dict[str, tuple[np.ndarray, np.ndarray] | str] = {}
    with np.load(run_dir / "perturbations.npz") as saved:
        for attack in attacks:
            if attack not in saved.files:
                out[attack] = "perturbations.npz holds no array for it"
                continue
            delta = torch.from_numpy(saved[attack]).to(torch.float64)
            if delta.shape != X.shape:
                out[attack] = f"its perturbations have shape {tuple(delta.shape)}, the attacked points {tuple(X.shape)}"
                continue
            success = strict_flips(net, X, X + delta)
            norm = torch.where(success, delta.norm(dim=1), torch.inf)
            out[attack] = (norm.numpy(), success.numpy())
    found = [value for value in out.values() if not isinstance(value, str)]
    if found:
        out[BEST] = (np.min([norm for norm, _ in found], axis=0), np.any([success for _, success in found], axis=0))
    return out


def _same_norm(stored: float, norm: float) -> bool:
    if np.isinf(stored) or np.isinf(norm):
        return bool(stored == norm)
    return bool(abs(stored - norm) <= NORM_RTOL * max(abs(norm), 1e-300))


def deep_check(root: Path | str) -> tuple[pd.DataFrame, int]:
    """(one row per disagreement, COLUMNS; the number of rows checked). DIR is verified first (checksums)."""
    examples = read_results([root], need_examples=True).examples
    assert examples is not None  # need_examples
    runs = Path(root) / "runs"
    if not runs.is_dir():
        raise SpecError(f"{root} has no runs/ folder (only its tables): --deep needs each run's model.pt, data.npz and perturbations.npz")
    problems: list[dict[str, object]] = []
    for run_id, rows in examples.groupby("run_id", sort=False):
        run_dir = runs / str(run_id)
        if not (run_dir / "model.pt").is_file():
            problems.append({"run_id": run_id, "attack": "", "index": "", "problem": "rows, but no model.pt to recompute them from"})
            continue
        recomputed = _recomputed(run_dir, [a for a in rows["attack"].unique() if a != BEST])
        for attack, frame in rows.groupby("attack", sort=False):
            result = recomputed.get(str(attack), "no attack's perturbations to take the minimum of")
            if isinstance(result, str):
                problems.append({"run_id": run_id, "attack": attack, "index": "", "problem": result})
                continue
            norms, flips = result
            for index, stored_norm, stored_success in zip(frame["index"], frame["norm"].astype(float), frame["success"].astype(bool), strict=True):
                if not 0 <= int(index) < len(norms):
                    problems.append({"run_id": run_id, "attack": attack, "index": index, "problem": f"no attacked point {index}"})
                    continue
                norm, success = float(norms[int(index)]), bool(flips[int(index)])
                if success != stored_success or not _same_norm(stored_norm, norm):
                    problem = "success differs" if success != stored_success else "norm differs"
                    row = {"stored_norm": stored_norm, "norm": norm, "stored_success": stored_success, "success": success}
                    problems.append({"run_id": run_id, "attack": attack, "index": int(index), "problem": problem, **row})
    return pd.DataFrame(problems, columns=COLUMNS), len(examples)


def deep_text(problems: pd.DataFrame, *, checked: int, tablefmt: str = "github") -> str:
    """What ``check --deep`` prints: every disagreement, or one line saying all rows agree."""
    if problems.empty:
        return f"ok: all {checked} rows of examples.csv agree with model.pt, data.npz and perturbations.npz (norm and flip recomputed)"
    shown = problems.astype(object).where(problems.notna(), "")
    table = tabulate(shown, headers="keys", tablefmt=tablefmt, showindex=False, floatfmt=".17g")
    return f"DISAGREE: {len(problems)} rows of examples.csv do not match what model.pt, data.npz and perturbations.npz give\n\n{table}"
