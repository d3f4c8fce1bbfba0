"""The leaderboard as one self-contained static HTML page (``marginbench leaderboard --format html -o PAGE``).

Everything is inline, so the page opens offline and can be published as one file, the way RobustBench and
AttackBench publish theirs: the styles, a small script that sorts a table by the header clicked (numbers
numerically, from the full-precision value each cell carries; blanks last), the figures as base64 PNG, and
per result directory its provenance, its runs and the specs from its manifest. Every text is escaped.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

import marginbench
from marginbench.bench.registry.provenance import library_versions
from marginbench.bench.report.export import COLUMNS, RENAMED, provenance
from marginbench.bench.report.leaderboard import ATTACK_HEADERS, MODEL_HEADERS, attack_table, model_table
from marginbench.bench.results.readback import Results

RUN_HEADERS = {
    "run_id": "run", "model": "model", "dataset": "dataset", "seed": "seed", "d": "d", "n": "n", "width": "width", "ell": "ell",
    "init_scale": "init scale", "clean_accuracy_train": "train acc", "clean_accuracy_attacked": "attacked acc",
    "train_iterations": "training steps", "train_stop_reason": "training stop", "train_seconds": "training (s)",
    "run_status": "status",
}  # fmt: skip

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2329; margin: 0; background: #f6f7f9; }
main { max-width: 1280px; margin: 0 auto; padding: 1.2em 2em 3em; }
h1 { margin: 0.2em 0; } h2 { margin-top: 1.8em; border-bottom: 2px solid #d8dde3; padding-bottom: 0.2em; }
nav a { margin-right: 1.2em; } a { color: #1f5fa8; }
p.note { color: #4a5560; max-width: 70em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; margin: 0.6em 0 1.2em; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
table { font-size: 0.9em; }
th, td { padding: 0.35em 0.6em; border-bottom: 1px solid #e3e7eb; text-align: left; white-space: nowrap; }
thead th { white-space: normal; max-width: 10em; vertical-align: bottom; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #2e3b4e; color: #fff; position: sticky; top: 0; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th:hover { background: #3f5069; }
table.sortable thead th::after { content: "\\00a0\\2195"; opacity: 0.35; }
table.sortable thead th[aria-sort="ascending"]::after { content: "\\00a0\\25B2"; opacity: 1; }
table.sortable thead th[aria-sort="descending"]::after { content: "\\00a0\\25BC"; opacity: 1; }
tbody tr:nth-child(even) { background: #f3f5f8; } tbody tr:hover { background: #e6eef9; }
table.facts th { background: #eef1f4; color: #1d2329; width: 11em; }
table.facts td { white-space: normal; overflow-wrap: anywhere; }
figure { margin: 1.2em 0; background: #fff; padding: 0.6em; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #4a5560; font-size: 0.92em; margin-top: 0.4em; }
details { background: #fff; margin: 0.8em 0; padding: 0.5em 1em; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f3f5f8; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
code { font-size: 0.92em; }
"""

# Click (or Enter on) a header: sort by that column, ascending first, then toggling. Numbers compare by the
# cell's data-value (full precision; "inf" is larger than every number); blank cells stay last either way.
SCRIPT = """
(function () {
  function key(cell, numeric) {
    var raw = cell.getAttribute("data-value");
    if (raw === null || raw === "") return null;
    if (!numeric) return raw;
    return raw === "inf" ? Infinity : raw === "-inf" ? -Infinity : Number(raw);
  }
  function sortBy(table, th, col) {
    var numeric = th.getAttribute("data-type") === "number";
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0], sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
      if (x === null || y === null) return (x === null) - (y === null);
      if (numeric) return sign * (x < y ? -1 : x > y ? 1 : 0);
      return sign * x.localeCompare(y, undefined, {numeric: true});
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""


def _shown(value: Any) -> tuple[str, str]:
    """(text shown, data-value for sorting) of a cell: floats to 4 significant digits, the value at full precision."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "", ""
    if isinstance(value, bool):
        return str(value), str(value)
    if isinstance(value, float):
        if math.isinf(value):
            text = "inf" if value > 0 else "-inf"
            return text, text
        return (str(int(value)), repr(value)) if value.is_integer() and abs(value) < 1e15 else (f"{value:.4g}", repr(value))
    return str(value), str(value)


def _table(frame: pd.DataFrame, headers: dict[str, str], *, ident: str, described: dict[str, str] | None = None) -> str:
    """A sortable <table>: one header per column of ``headers`` that ``frame`` has, numeric columns marked."""
    columns = [c for c in headers if c in frame]
    head = []
    for c in columns:
        numeric = pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        title = (described or {}).get(RENAMED.get(c, c), "")
        attrs = f' data-type="{"number" if numeric else "text"}"' + (' class="num"' if numeric else "") + (f' title="{escape(title)}"' if title else "")
        head.append(f"<th{attrs}>{escape(headers[c]).replace('/', '/<wbr>')}</th>")  # "forward/example" may wrap after its slash
    body = []
    for record in frame[columns].astype(object).to_dict("records"):
        cells = []
        for c in columns:
            value = record[c].item() if hasattr(record[c], "item") else record[c]
            text, key = _shown(value)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            cells.append(f'<td{" class=num" if numeric else ""} data-value="{escape(key)}" title="{escape(key)}">{escape(text)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="sortable" id="{ident}"><thead><tr>{"".join(head)}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table></div>"
    )


def _caption(name: str) -> str:
    if name.startswith("security_curves"):
        return (f"{name}: per model setting (seeds pooled), the fraction of examples that no perturbation of norm ≤ ε flipped, per attack and for "
                "the per-example best; the lower the curve, the stronger the attack. "
                "AttackBench's optimality is the ratio of the areas under best's and an attack's.")  # fmt: skip
    if name == "leaderboard":
        return "leaderboard: the models as bars (median over runs, min..max where two or more), and each attack's optimality per model setting."
    return f"{name}: one of the papers' figures (see marginbench plot --help)."


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _versions(versions: dict[str, Any], *, but: str = "") -> str:
    """``torch 2.5.1, numpy 2.1.0, ...`` (``but`` left out): a manifest's ``versions`` (an old one lists fewer
    libraries) or ``library_versions()``."""
    return ", ".join(f"{name} {version}" for name, version in versions.items() if name != but)


def _facts(record: dict[str, Any]) -> str:
    """A two-column table of one directory's provenance."""
    rows = {
        "preset": record.get("preset"), "git commit": record.get("git_commit"), "status": record.get("status"),
        "started": record.get("started"), "finished": record.get("finished"), "device": record.get("device"),
        "versions": _versions(record.get("versions") or {}), "machine": json.dumps(record.get("machine")) if record.get("machine") else None,
        "platform": record.get("platform"), "command": " ".join(record.get("command") or []) or None,
        **{f"{name} sha256": digest for name, digest in (record.get("tables_sha256") or {}).items()},
    }  # fmt: skip
    cells = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(str(v))}</code></td></tr>" for k, v in rows.items() if v not in (None, ""))
    return f'<table class="facts">{cells}</table>'


def _directory(index: int, record: dict[str, Any], summary: pd.DataFrame) -> str:
    runs = summary[summary["source"] == record["dir"]].drop_duplicates("run_id")
    runs = runs[[c for c in RUN_HEADERS if c in runs and runs[c].notna().any()]]  # no column that applies to no run (ell on sphere data)
    specs = json.dumps(record.get("specs"), indent=1, ensure_ascii=False)
    title = f"{record['dir']}: {len(runs)} run(s), preset {record.get('preset') or '?'}, commit {(record.get('git_commit') or '?')[:12]}"
    return (
        f"<details open><summary>{escape(title)}</summary>\n{_facts(record)}\n"
        f"<h4>Runs</h4>\n{_table(runs, RUN_HEADERS, ident=f'runs-{index}')}\n"
        f"<details><summary>Specs (manifest.json)</summary><pre>{escape(specs)}</pre></details></details>"
    )


def leaderboard_page(results: Results, dirs: Sequence[str | Path], figures: dict[str, Figure]) -> str:
    """The page's HTML: both tables, ``figures`` (name -> figure) and each directory's provenance and runs."""
    records = provenance(dirs)
    shown_dirs = ", ".join(str(d) for d in dirs)
    images = "\n".join(
        f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{_png(fig)}"><figcaption>{escape(_caption(name))}</figcaption></figure>'
        for name, fig in figures.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>marginbench leaderboard: {escape(shown_dirs)}</title><style>{STYLE}</style></head>
<body><main>
<h1>marginbench leaderboard</h1>
<p class="note">Minimal verified L2 perturbation norms of two-layer ReLU networks, against √d. Result directories: <code>{escape(shown_dirs)}</code>.
Written by marginbench {escape(marginbench.__version__)} with {escape(_versions(library_versions(), but='marginbench'))}.
Click a column header to sort; hover a number for its full precision.</p>
<nav><a href="#models">Models</a><a href="#attacks">Attacks</a><a href="#figures">Figures</a><a href="#runs">Runs and provenance</a></nav>
<h2 id="models">Models, most robust first</h2>
<p class="note">Per run: the median over examples of the best norm / √d, where an example's best norm is its smallest verified norm over every
attack run on it (+inf if none flipped it); per model setting, the median of that over runs (seeds), with its min and max over runs.
A <b>flag</b> marks a model whose output N never changes sign on the points it is attacked on (nothing to flip: its norm measures nothing)
or that misclassifies some of its own training points; flagged models are ranked after every unflagged one, never "most robust".
Clean accuracy (train acc, attacked acc): the fraction of points with y N(x) &gt; 0, the mean over runs.</p>
{_table(model_table(results), MODEL_HEADERS, ident="models", described=COLUMNS)}
<h2 id="attacks">Attacks, most optimal first</h2>
<p class="note">Optimality (AttackBench): per run, the area under the best's robust-accuracy-versus-ε curve divided by the attack's, both up to
the largest finite norm found on the run (1 = as good as the best on every example); the mean over runs.</p>
{_table(attack_table(results), ATTACK_HEADERS, ident="attacks", described=COLUMNS)}
<h2 id="figures">Figures</h2>
{images or '<p class="note">No figure: the directories do not support any.</p>'}
<h2 id="runs">Runs and provenance</h2>
{"".join(_directory(i, record, results.summary) for i, record in enumerate(records))}
</main>
<script>{SCRIPT}</script>
</body></html>
"""
