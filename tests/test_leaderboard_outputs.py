"""Pictures and publishable leaderboards: security-evaluation curves, the leaderboard figure, the JSON/CSV
exports, and the self-contained HTML page (rendered and sorted in headless Chromium where it is installed)."""

from __future__ import annotations

import base64
import csv
import importlib.metadata
import json
import math
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import same_color
from matplotlib.lines import Line2D

from conftest import COMMIT, degenerate_result_dir, known_result_dir
from marginbench.bench.cli import main
from marginbench.bench.registry.provenance import library_versions
from marginbench.bench.report.leaderboard import attack_table, model_table
from marginbench.bench.report.leaderboard_figures import build_leaderboard_figures
from marginbench.bench.report.security_curves import not_flipped
from marginbench.bench.results.readback import read_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- figures -----------------------------------------------------------------------------------------------


def test_not_flipped_counts_norms_strictly_above_each_radius() -> None:
    norms = np.array([1.0, 2.0, np.inf])
    assert list(not_flipped(norms, np.array([0.0, 1.0, 1.5, 2.0, 1e9]))) == pytest.approx([1, 2 / 3, 2 / 3, 1 / 3, 1 / 3])


def _lines(ax: Axes) -> dict[str, Line2D]:
    return {str(line.get_label()): line for line in ax.lines}


def test_security_curves_have_one_panel_per_model_setting_and_a_line_per_attack_and_best(tmp_path: Path) -> None:
    figures = build_leaderboard_figures(read_results([known_result_dir(tmp_path / "r")]))
    assert set(figures.drawn) == {"security_curves", "leaderboard"} and figures.skipped == {}
    axes = figures.drawn["security_curves"].axes
    assert [ax.get_title().splitlines()[0] for ax in axes] == [f"({p}) {m} (sphere, d=4, n=4, width=8)" for p, m in (("a", "strong"), ("b", "weak"))]
    weak = axes[1]
    assert set(weak.get_legend_handles_labels()[1]) == {"best", "a", "b", "c", "√d"}
    assert weak.get_xlabel() == "ε / √d (log scale)"  # strong's b reaches 13 times the sqrt(d) line: every panel is logarithmic
    # weak pools two seeds of 4 examples: a's norms (1..4) x (1, 1.1), over sqrt(d) = 2; best = a
    best = _lines(weak)["best"]
    x, y = np.asarray(best.get_xdata(), float), np.asarray(best.get_ydata(), float)
    expected = not_flipped(np.concatenate([np.arange(1, 5), 1.1 * np.arange(1, 5)]) / 2, x)
    assert list(y) == pytest.approx(list(expected)) and y[0] == 1.0 and y[-1] == 0.0
    c = _lines(weak)["c"]
    assert np.asarray(c.get_ydata(), float)[-1] == pytest.approx(0.5)  # c never flips half the examples: its curve stays at 1/2


def test_an_exact_attack_is_drawn_dashed_with_the_band_its_lower_bounds_leave(tmp_path: Path) -> None:
    figures = build_leaderboard_figures(read_results([known_result_dir(tmp_path / "r", exact=True)]))
    ax = figures.drawn["security_curves"].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "exact" in labels and "minimal norm lies here (lower bound .. best)" in labels
    line = _lines(ax)["exact"]
    assert line.get_linestyle() == "--" and same_color(line.get_color(), "black")
    # the panel pools two seeds: exact's norm is proved minimal on examples 0..2 of each, not on example 3
    assert ax.get_title().endswith("2 runs, 8 examples; exact proved minimal on 6/8")


def test_several_model_settings_continue_on_further_figures(tmp_path: Path) -> None:
    dirs = [known_result_dir(tmp_path / name, dataset=name) for name in ("s1", "s2", "s3", "s4")]
    drawn = build_leaderboard_figures(read_results(dirs)).drawn
    assert len(drawn["security_curves"].axes) == 6 and len(drawn["security_curves_2"].axes) == 2


def test_plot_writes_the_curves_and_the_leaderboard_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = known_result_dir(tmp_path / "r")
    assert main(["plot", str(root)]) == 0
    out = capsys.readouterr().out
    for name in ("security_curves", "leaderboard"):
        path = root / "figures" / f"{name}.png"
        assert f"wrote {path}" in out and path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000


def test_without_examples_the_curves_are_skipped_with_the_reason() -> None:
    committed = Path(__file__).resolve().parents[1] / "results" / "cpu-scale" / "paper-fig1a"
    figures = build_leaderboard_figures(read_results([committed]))
    assert figures.drawn == {} and "needs examples.csv" in figures.skipped["security_curves"]


@pytest.fixture
def tiny_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default preset shrunk to seconds: d = 6, two attacks, a fast schedule."""
    from marginbench.bench.experiment.spec import ExperimentSpec
    from marginbench.bench.registry.presets import PRESETS, Preset
    from marginbench.models.train import TrainSpec

    tiny = (ExperimentSpec(d=6, alpha=1.0, width=8, attacks=("universal-z", "boundary-walk"), train=TrainSpec(lr=1e-2, lr_growth=1.2, growth_every=10)),)
    monkeypatch.setitem(PRESETS._factories, "default", Preset(lambda scale: tiny))


@pytest.mark.usefixtures("tiny_default")
def test_the_default_run_draws_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`marginbench run --out DIR` with no preset: DIR/figures gets the curves and the leaderboard."""
    out = tmp_path / "default"
    assert main(["run", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in ("security_curves", "leaderboard"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "fig1a" not in printed  # the papers' figures are for their presets
    assert read_results([out]).summary["run_id"].nunique() == 2  # the figures did not disturb the directory


@pytest.mark.usefixtures("tiny_default")
def test_a_figure_that_fails_to_draw_does_not_sink_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import marginbench.bench.report.leaderboard_figures as figures

    def broken(results: object) -> None:
        raise RuntimeError("a plotting bug")

    monkeypatch.setattr(figures, "build_leaderboard_figures", broken)
    out = tmp_path / "default"
    assert main(["run", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"figures not drawn (RuntimeError: a plotting bug); the results are complete; `marginbench plot {out}` draws them" in err
    assert read_results([out]).summary["run_id"].nunique() == 2


# --- exports -----------------------------------------------------------------------------------------------


def _strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_export_has_both_tables_at_full_precision_and_the_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = known_result_dir(tmp_path / "r")
    assert main(["leaderboard", str(root), "--format", "json"]) == 0
    document = _strict(capsys.readouterr().out)
    results = read_results([root])
    models, attacks = model_table(results), attack_table(results)
    assert document["format"] == "marginbench-leaderboard/1"
    assert [m["model"] for m in document["models"]] == list(models["model"])
    assert [m["best_over_sqrt_d_median"] for m in document["models"]] == list(models["median"])  # exact, not rounded
    assert [a["optimality"] for a in document["attacks"]] == list(attacks["optimality"])
    assert {a["attack"]: a["median_ratio"] for a in document["attacks"]}["c"] == "inf"
    assert isinstance(document["models"][0]["d"], int) and document["models"][0]["seeds"] == "0,1"
    (prov,) = document["provenance"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert prov["dir"] == str(root) and prov["git_commit"] == COMMIT and prov["tables_sha256"] == manifest["tables"] and prov["specs"] == manifest["specs"]
    assert document["written_by"] == library_versions() and document["written_by"]["scipy"] == importlib.metadata.version("scipy")


def test_csv_export_reads_back_exactly(tmp_path: Path) -> None:
    root = known_result_dir(tmp_path / "r")
    assert main(["leaderboard", str(root), "--format", "csv", "-o", str(tmp_path / "board.csv")]) == 0
    back = pd.read_csv(tmp_path / "board.csv")
    results = read_results([root])
    models, attacks = back[back["table"] == "models"], back[back["table"] == "attacks"]
    assert list(models["best_over_sqrt_d_median"]) == list(model_table(results)["median"])
    assert list(attacks["attack"]) == list(attack_table(results)["attack"]) and list(attacks["optimality"]) == list(attack_table(results)["optimality"])
    assert math.isinf(dict(zip(attacks["attack"], attacks["median_ratio"], strict=True))["c"])
    assert list(back.columns[:2]) == ["table", "rank"] and back.columns[-1] == "provenance"
    with open(tmp_path / "board.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    assert first["d"] == "4" and _strict(first["provenance"])[0]["git_commit"] == COMMIT


# --- the HTML page -----------------------------------------------------------------------------------------


def _page(tmp_path: Path, *, exact: bool = False, dataset: str = "sphere") -> tuple[Path, str]:
    root = known_result_dir(tmp_path / "r", exact=exact, dataset=dataset)
    page = tmp_path / "board.html"
    assert main(["leaderboard", str(root), "--format", "html", "-o", str(page)]) == 0
    return root, page.read_text(encoding="utf-8")


def test_the_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    root, html = _page(tmp_path, exact=True, dataset="x<b>&y")
    assert not re.search(r"https?:", html), "the page must load nothing from the network"
    assert re.findall(r'\bsrc="([^"]*)"', html) and all(s.startswith("data:image/png;base64,") for s in re.findall(r'\bsrc="([^"]*)"', html))
    assert "<link" not in html and "@import" not in html and "<script src" not in html
    for src in re.findall(r'src="data:image/png;base64,([^"]*)"', html):
        assert base64.b64decode(src)[:8] == PNG_SIGNATURE
    assert "x<b>&y" not in html and "x&lt;b&gt;&amp;y" in html and "&lt;i&gt;&amp;" in html  # data and the manifest's spec
    assert COMMIT in html and json.loads((root / "manifest.json").read_text())["tables"]["summary.csv"] in html
    assert 'id="models"' in html and 'id="attacks"' in html and 'id="runs-0"' in html
    assert f"daqp {importlib.metadata.version('daqp')}" in html  # the libraries that computed the page's tables


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "html"], "--format html writes a page with its figures: give -o PAGE"),
        (["--format", "html", "-o", "{tmp}/no/such/page.html"], "the folder {tmp}/no/such does not exist"),
        (["--format", "json", "-o", "{tmp}"], "is a directory"),
        (["--format", "xml"], "is not a tabulate format (nor json, csv, html)"),
    ],
)
def test_bad_output_options_are_one_line_and_exit_2(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = known_result_dir(tmp_path / "r")
    assert main(["leaderboard", str(root), *[a.format(tmp=tmp_path) for a in extra]]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1, err


CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")  # fmt: skip


@contextmanager
def headless_chromium(tmp_path: Path) -> Iterator[Any]:
    """A selenium driver of headless Chromium with a fresh profile under tmp_path, its console log kept; quit after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="no chromium and chromedriver here: .ci/run installs Debian's chromium and chromium-driver"
)
def test_the_page_renders_and_sorts_in_headless_chromium(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    root, _ = _page(tmp_path)
    medians = [f"{value:.4g}" for value in model_table(read_results([root]))["median"]]
    with headless_chromium(tmp_path) as driver:
        driver.get((tmp_path / "board.html").as_uri())

        def column(table: str, header: str) -> list[str]:
            heads = [th.text.replace("\n", " ") for th in driver.find_elements(By.CSS_SELECTOR, f"#{table} thead th")]
            i = next(k for k, text in enumerate(heads) if text.startswith(header))
            return [row.find_elements(By.TAG_NAME, "td")[i].text for row in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]

        def click(table: str, header: str) -> None:
            next(th for th in driver.find_elements(By.CSS_SELECTOR, f"#{table} thead th") if th.text.replace("\n", " ").startswith(header)).click()

        assert column("models", "model") == ["strong", "weak"] and column("models", "rank") == ["1", "2"]
        assert column("models", "best/√d") == medians and column("models", "seeds") == ["0,1", "0,1"]
        assert column("attacks", "attack") == ["a", "c", "b"]
        click("models", "best/√d")  # ascending
        assert column("models", "model") == ["weak", "strong"]
        click("models", "best/√d")  # descending
        assert column("models", "model") == ["strong", "weak"]
        click("attacks", "ratio to best")  # numerically, +inf above every number: 1, 2, inf
        assert column("attacks", "attack") == ["a", "b", "c"] and column("attacks", "ratio to best") == ["1", "2", "inf"]
        click("attacks", "forward")  # 2, 2, 10: numbers, not text ("10" < "2")
        assert column("attacks", "forward") == ["2", "2", "10"]
        click("attacks", "attack")
        assert column("attacks", "attack") == ["a", "b", "c"]
        th = next(th for th in driver.find_elements(By.CSS_SELECTOR, "#attacks thead th") if th.text == "attack")
        assert th.get_attribute("aria-sort") == "ascending"
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 2 and all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [name for name in loaded if not name.startswith("data:")] == []
        assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []
        assert driver.get_screenshot_as_png()[:8] == PNG_SIGNATURE


def _html_rows(html: str, ident: str) -> list[dict[str, str]]:
    """The text of each row of table ``ident`` of a page, as {header: cell}."""
    table = html[html.index(f'id="{ident}"') :]
    table = table[: table.index("</table>")]
    heads = [re.sub(r"<[^>]+>", "", head) for head in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    rows = re.findall(r"<tr>(.*?)</tr>", table[table.index("<tbody>") :])
    return [dict(zip(heads, (unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)), strict=True)) for row in rows]


def test_the_page_flags_degenerate_models_and_shows_clean_accuracy(tmp_path: Path) -> None:
    root = degenerate_result_dir(tmp_path / "r")
    page = tmp_path / "board.html"
    assert main(["leaderboard", str(root), "--format", "html", "-o", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    models = _html_rows(html, "models")
    assert [(row["rank"], row["model"], row["flag"]) for row in models] == [
        ("1", "good", ""),
        ("2", "positive", "constant sign; misclassifies 2/4 training points"),
        ("3", "sloppy", "misclassifies 1/4 training points"),
    ]
    assert [row["train acc"] for row in models] == ["1", "0.5", "0.75"] and models[1]["best/√d (median)"] == "inf"
    assert "flagged models are ranked after every unflagged one" in html
    assert [row["train acc"] for row in _html_rows(html, "runs-0")] == ["1", "0.75", "0.5"]  # the runs' own numbers
    old = _page(tmp_path / "old")[1]
    # a directory from before clean accuracy: no such column (none of its runs has one), no "nan", no flag
    assert "train acc" not in _html_rows(old, "models")[0] and "train acc" not in _html_rows(old, "runs-0")[0]
    assert all(row["flag"] == "" for row in _html_rows(old, "models")) and not re.search(r">\s*nan\s*<", old, re.IGNORECASE)


def test_exports_name_the_new_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = degenerate_result_dir(tmp_path / "r")
    assert main(["leaderboard", str(root), "--format", "json"]) == 0
    document = _strict(capsys.readouterr().out)
    assert {"clean_accuracy_train", "clean_accuracy_attacked", "flag", "proved_runs"} <= set(document["columns"]) and "vs_proved" not in document["columns"]
    assert [(m["model"], m["flag"]) for m in document["models"]] == [
        ("good", None),
        ("positive", "constant sign; misclassifies 2/4 training points"),
        ("sloppy", "misclassifies 1/4 training points"),
    ]
    assert document["models"][2]["clean_accuracy_train"] == 0.75 and document["attacks"][0]["proved_runs"] is None
