"""Leaderboards: models ranked by the per-example best norm over sqrt(d), attacks ranked against that best.

Definitions (per run = one trained or constructed network; runs from different directories are distinct):

- best_i: example i's smallest verified norm over every attack run on it (+inf if none flipped it); it is
  recomputed from the attacks' rows, so it is the minimum over exactly the attacks shown.
- Model score: per run, the median over examples of best_i / sqrt(d); per model setting (model, dataset, d,
  n, width), the median of that over runs (seeds), with the min..max spread over runs. Higher is more robust;
  equal scores share a rank.
- Attack "best on": the fraction of examples (with a finite best) where the attack's norm equals best_i
  to BEST_TIE (relative), ties counted for every attack that attains it.
- Attack "ratio to best": the median over examples (with a finite best) of norm_i / best_i (+inf where the
  attack failed); 1 means it matches the best on at least half the examples.
- Attack optimality (AttackBench's local optimality, Cinà et al. 2024): on one run, the robust accuracy of an
  attack at radius eps is ra(eps) = #{i : norm_i > eps} / n, a non-increasing curve; with eps_max the largest
  finite norm any attack found on that run, its area is A = integral_0^eps_max ra = mean_i min(norm_i,
  eps_max), so a failure (+inf) counts as eps_max. The best's curve lies below every attack's, and the
  optimality is A_best / A_attack in (0, 1]: 1 when the attack matches the best everywhere, smaller the more
  robustness it overstates. The table shows its mean over runs (AttackBench's global optimality); runs where
  nothing was flipped (no eps_max) are left out. Where every example of a run has a proved optimum
  (``proved_optimal``, from ``exact``), the reference curve is the proved one (the certified lower bounds,
  within 0.01% of the optimum) instead of the best attack's; "runs fully proved" is the share of the attack's
  runs measured so, blank where none was.
- Certified gap (models): per run, the median over examples of best_i / lower_bound_i, the certified lower
  bound on the minimal flip (the relaxation's, or exact's); 1 means the leaderboard's number is the truth.
  "proved" is the share of examples whose best is a proved optimum. Both are empty for result directories
  written before lower bounds existed.
- Clean accuracy (models): per run, the fraction of the training points with y N(x) > 0 (``train acc``) and
  of the attacked points (``attacked acc``: the held-out points where the dataset has them, else the
  training points again), from summary.csv; the mean over runs. Empty for directories written before them.
- Flag (models): a model setting is flagged where, on some run, N never changes sign on the attacked points
  (N(x_i) >= 0 for all i, or <= 0 for all i, N = 0 included: "constant sign", e.g. v >= 0 and no bias; a
  flip norm of such a net measures nothing, and where its sign is constant everywhere it is +inf), or the net
  misclassifies some of its own training points ("misclassifies k/n training points", k and n summed over
  runs). Errors on held-out attacked points do not flag: an attack flips the net's own sign, not the label,
  so the norm keeps its meaning there (random labels on held-out points cannot be learned); the attacked
  accuracy shows them. Flagged settings are ranked after every unflagged one (ranks continue), never "most
  robust".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from marginbench.bench.errors import SpecError
from marginbench.bench.results.readback import RUN_KEY, Results
from marginbench.bench.results.record import BEST, PASS_COLUMNS
from marginbench.bench.results.rows import best_of

MODEL_KEY = ["model", "dataset", "d", "n", "width", "init_scale"]  # init_scale: Melamed et al. Fig. 4's nets differ only in it


def _with_best(examples: pd.DataFrame) -> pd.DataFrame:
    """Attack rows (the stored ``best`` rows dropped) with column ``best``: the per-example minimum."""
    rows = examples[examples["attack"] != BEST].copy()
    if rows.empty:
        raise SpecError("the result directories hold no attack rows")
    rows["norm"] = rows["norm"].astype(float)
    example = [*RUN_KEY, "index"]
    best = best_of(rows, example)[[*example, "norm"]].rename(columns={"norm": "best"})
    return rows.merge(best, on=example, how="left", validate="many_to_one").set_axis(rows.index)


def _ranks(score: pd.Series, *, ascending: bool) -> pd.Series:
    """1, 2, 2, 4, ...: equal scores share the better rank; NaN last."""
    return score.rank(method="min", ascending=ascending, na_option="bottom").astype(int)


def scored_examples(results: Results) -> pd.DataFrame:
    """Attack rows with ``best`` (the per-example minimum) and their run's model setting (MODEL_KEY) from summary.csv."""
    if results.examples is None:
        raise SpecError("the model leaderboard needs examples.csv in every result directory")
    rows = _with_best(results.examples)
    summary = results.summary if "init_scale" in results.summary else results.summary.assign(init_scale=1.0)  # written before the column
    sizes = summary.drop_duplicates(RUN_KEY)[[*RUN_KEY, "dataset", "d", "n", "width", "init_scale"]].fillna({"init_scale": 1.0})
    return rows.drop(columns=[c for c in ("dataset",) if c in rows]).merge(sizes, on=RUN_KEY)


CLEAN_ACCURACY = ("clean_accuracy_train", "clean_accuracy_attacked")  # the runner's run-level facts (summary.csv)


def _run_flags(rows: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per run (RUN_KEY): ``constant_sign`` (N(x_i) of one sign, or 0, on every attacked point, from the rows'
    margin y N(x) and label y) and ``misclassified`` / ``trained_on`` (training points with y N(x) <= 0, and
    the training set's size; NaN where summary.csv predates clean_accuracy_train)."""
    per_run = rows.drop_duplicates([*RUN_KEY, "index"])
    if {"margin", "label"} <= set(per_run):
        value = per_run["margin"].astype(float) * per_run["label"].astype(float)  # N(x_i), as y is +-1
        sign = value.groupby([per_run[k] for k in RUN_KEY])
        flags = ((sign.max() <= 0) | (sign.min() >= 0)).rename("constant_sign").reset_index()
    else:
        flags = per_run[RUN_KEY].drop_duplicates().assign(constant_sign=False)
    facts = summary.drop_duplicates(RUN_KEY)
    trained_on = facts["n"].astype(float)
    accuracy = facts["clean_accuracy_train"].astype(float) if "clean_accuracy_train" in facts else pd.Series(np.nan, index=facts.index)
    wrong = pd.DataFrame({**{k: facts[k] for k in RUN_KEY}, "misclassified": ((1.0 - accuracy) * trained_on).round(), "trained_on": trained_on})
    return flags.merge(wrong, on=RUN_KEY, how="left")


def _flag(runs: pd.DataFrame) -> str | None:
    """The flag of one model setting from its runs' _run_flags (None: no flag)."""
    reasons = []
    constant = int(runs["constant_sign"].sum())
    if constant:
        reasons.append("constant sign" + ("" if constant == len(runs) else f" ({constant}/{len(runs)} runs)"))
    known = runs.dropna(subset=["misclassified"])
    if known["misclassified"].sum() > 0:
        reasons.append(f"misclassifies {int(known['misclassified'].sum())}/{int(known['trained_on'].sum())} training points")
    return "; ".join(reasons) or None


def _flagged_ranks(score: pd.Series, flagged: pd.Series) -> pd.Series:
    """_ranks of ``score`` (higher first) among the unflagged rows, then continuing among the flagged ones."""
    ranks = pd.Series(0, index=score.index)
    clean = ~flagged
    if clean.any():
        ranks[clean] = _ranks(score[clean], ascending=False)
    if flagged.any():
        ranks[flagged] = int(clean.sum()) + _ranks(score[flagged], ascending=False)
    return ranks.astype(int)


def model_table(results: Results) -> pd.DataFrame:
    """One row per model setting, ranked by the median over runs of the median best_i / sqrt(d), flagged
    settings (constant sign, misclassified training points) after the rest; see the module docstring."""
    scored = scored_examples(results)
    rows = scored.drop_duplicates([*RUN_KEY, "index"])
    rows["score"] = rows["best"] / np.sqrt(rows["d"].astype(float))
    per_run_extra, extra = {}, {}
    if "lower_bound" in rows:
        rows["gap"] = rows["best"] / rows["lower_bound"].astype(float)
        per_run_extra["gap"], extra["certified_gap"] = ("gap", "median"), ("gap", "median")
    if "proved_optimal" in rows:
        rows["proved"] = rows["proved_optimal"].astype(float)
        per_run_extra["proved"], extra["proved"] = ("proved", "mean"), ("proved", "mean")
    per_run = rows.groupby([*RUN_KEY, *MODEL_KEY, "seed"], as_index=False).agg(
        score=("score", "median"), flipped=("best", lambda s: float(np.isfinite(s).mean())), **per_run_extra
    )
    accuracies = [c for c in CLEAN_ACCURACY if c in results.summary]
    if accuracies:
        facts = results.summary.drop_duplicates(RUN_KEY)[[*RUN_KEY, *accuracies]]
        per_run = per_run.merge(facts.astype({c: float for c in accuracies}), on=RUN_KEY, how="left")
        extra.update({c: (c, "mean") for c in accuracies})
    per_run = per_run.merge(_run_flags(scored, results.summary), on=RUN_KEY, how="left")
    table = per_run.groupby(MODEL_KEY, as_index=False).agg(
        median=("score", "median"),
        low=("score", "min"),
        high=("score", "max"),
        runs=("score", "size"),
        seeds=("seed", lambda s: ",".join(str(v) for v in sorted(set(s)))),
        flipped=("flipped", "mean"),
        **extra,
    )
    flags = pd.DataFrame([(*key, _flag(runs)) for key, runs in per_run.groupby(MODEL_KEY)], columns=[*MODEL_KEY, "flag"], dtype=object)
    table = table.merge(flags.astype({k: table[k].dtype for k in MODEL_KEY}), on=MODEL_KEY, how="left")
    table.insert(0, "rank", _flagged_ranks(table["median"], table["flag"].notna()))
    return table.sort_values(["rank", "model", "d"], kind="stable").reset_index(drop=True)


def proved_run(run: pd.DataFrame) -> bool:
    """Whether every example of one run's rows has a proved optimum."""
    if "proved_optimal" not in run or bool(run["proved_optimal"].isna().any()):  # a directory from before the bounds
        return False
    return bool(run["proved_optimal"].astype(bool).all())


def _optimality(run: pd.DataFrame) -> pd.Series:
    """A_reference / A_attack per attack on one run's rows, the reference being the proved optimum where every
    example has one, else the best (see the module docstring)."""
    finite = run["norm"][np.isfinite(run["norm"])]
    if finite.empty:
        return pd.Series(np.nan, index=run["attack"].unique())
    eps_max = float(finite.max())
    examples = run.drop_duplicates("index")
    reference = examples["lower_bound"].astype(float).where(np.isfinite(examples["best"]), np.inf) if proved_run(run) else examples["best"]
    area_best = np.minimum(reference, eps_max).mean()
    area = run.assign(clipped=np.minimum(run["norm"], eps_max)).groupby("attack")["clipped"].mean()
    return area_best / area


# Two attacks that end on the same minimal flip (region-walk's exact one, boundary-walk's bisection onto it)
# differ in the last bits, and which bits depends on the CPU's vector unit (AVX2 or AVX-512 kernels round
# differently): "best on" counts both as best within this, so the table is the same on every machine.
BEST_TIE = 1e-6


def attack_table(results: Results) -> pd.DataFrame:
    """One row per attack: how often it is the best, its median ratio to the best, optimality, cost."""
    if results.examples is None:
        raise SpecError("the attack leaderboard needs examples.csv in every result directory")
    rows = _with_best(results.examples)
    finite = rows[np.isfinite(rows["best"])]
    ratio = finite["norm"] / finite["best"]
    table = pd.DataFrame(
        {
            "best_on": (finite["norm"] <= finite["best"] * (1 + BEST_TIE)).groupby(finite["attack"]).mean(),
            "median_ratio": ratio.groupby(finite["attack"]).median(),
            "success": rows.groupby("attack")["norm"].apply(lambda s: float(np.isfinite(s).mean())),
            "runs": rows.drop_duplicates([*RUN_KEY, "attack"]).groupby("attack").size(),
        }
    )
    runs = [run for _, run in rows.groupby(RUN_KEY)]
    table["optimality"] = pd.concat([_optimality(run) for run in runs]).groupby(level=0).mean()
    proved = pd.concat([pd.Series(float(proved_run(run)), index=run["attack"].unique()) for run in runs]).groupby(level=0).mean()
    table["proved_runs"] = proved.where(proved > 0)  # blank where no run of the attack was fully proved: every optimality is against the best
    summary = results.summary[results.summary["attack"] != BEST].copy()
    n = summary["n_attacked"].astype(float) if "n_attacked" in summary else summary["n"].astype(float)
    if "attack_seconds" in summary:
        table["ms_per_example"] = (1e3 * summary["attack_seconds"] / n).groupby(summary["attack"]).median()
    for column in PASS_COLUMNS:  # the forward/backward passes per example that the runner counts (AttackBench)
        kind = column.split("_")[0]
        if column in summary:
            table[f"{kind}_per_example"] = summary[column].astype(float).groupby(summary["attack"]).median()
    table = table.rename_axis("attack").reset_index()
    table.insert(0, "rank", _ranks(table["optimality"], ascending=False))
    return table.sort_values(["rank", "best_on", "attack"], ascending=[True, False, True], kind="stable").reset_index(drop=True)


def setting_optimality(results: Results) -> pd.DataFrame:
    """Per model setting (MODEL_KEY) and attack: ``optimality``, the mean over the setting's runs (the attack
    table's is over every run, all settings pooled), and ``success``, the fraction of its examples flipped."""
    rows = scored_examples(results)
    per_run = [_optimality(run).rename("optimality").rename_axis("attack").reset_index().assign(**run.iloc[0][MODEL_KEY]) for _, run in rows.groupby(RUN_KEY)]
    key = [*MODEL_KEY, "attack"]
    optimality = pd.concat(per_run).groupby(key)["optimality"].mean()
    success = rows.groupby(key)["norm"].apply(lambda s: float(np.isfinite(s).mean())).rename("success")
    return pd.concat([optimality, success], axis=1).reset_index()


MODEL_HEADERS = {
    "rank": "rank", "model": "model", "dataset": "dataset", "d": "d", "n": "n", "width": "width", "init_scale": "init",
    "median": "best/√d (median)", "low": "min", "high": "max", "runs": "runs", "seeds": "seeds", "flipped": "flipped",
    "clean_accuracy_train": "train acc", "clean_accuracy_attacked": "attacked acc",
    "certified_gap": "certified gap", "proved": "proved", "flag": "flag",
}  # fmt: skip
ATTACK_HEADERS = {
    "rank": "rank", "attack": "attack", "optimality": "optimality", "proved_runs": "runs fully proved", "best_on": "best on",
    "median_ratio": "ratio to best (median)",
    "success": "success", "runs": "runs", "ms_per_example": "ms/example", "forward_per_example": "forward/example",
    "backward_per_example": "backward/example",
}  # fmt: skip


def _render(table: pd.DataFrame, headers: dict[str, str], tablefmt: str) -> str:
    shown = table[[c for c in headers if c in table]].rename(columns=headers)
    shown = shown.astype(object).where(shown.notna(), None)
    return tabulate(shown, headers="keys", tablefmt=tablefmt, showindex=False, floatfmt=".4g", missingval="")


def leaderboard_text(results: Results, *, tablefmt: str = "github") -> str:
    """Both tables with their headings, as ``marginbench leaderboard`` prints them."""
    return "\n".join(
        [
            "Models, most robust first, flagged ones ranked after the rest (flag: N of one sign on every attacked point, or training points"
            " misclassified; per run: median over examples of the best norm / sqrt(d); then median over runs; certified gap: median best /"
            " certified lower bound; acc: clean accuracy, mean over runs)",
            "",
            _render(model_table(results), MODEL_HEADERS, tablefmt),
            "",
            "Attacks, most optimal first (optimality = area under the best's robust-accuracy curve / the attack's)",
            "",
            _render(attack_table(results), ATTACK_HEADERS, tablefmt),
        ]
    )
