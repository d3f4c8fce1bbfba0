"""The tool is citable and licensed: CITATION.cff parses, says what pyproject.toml says (name, version, license),
cites the two papers, and LICENSE is the license pyproject.toml names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_citation_cff_parses_and_matches_pyproject() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["message"]
    assert cff["title"] == PROJECT["name"] and str(cff["version"]) == PROJECT["version"]
    assert cff["license"] == PROJECT["license"]["text"] == "MIT"
    assert cff["authors"] == [{"name": "marginbench developers"}]
    papers = {ref["year"]: ref for ref in cff["references"]}
    assert [a["family-names"] for a in papers[2022]["authors"]] == ["Vardi", "Yehudai", "Shamir"]
    assert [a["family-names"] for a in papers[2023]["authors"]] == ["Melamed", "Yehudai", "Vardi"]
    assert papers[2022]["title"] == "Gradient Methods Provably Converge to Non-Robust Networks"
    assert papers[2023]["title"] == "Adversarial Examples Exist in Two-Layer ReLU Networks for Low Dimensional Linear Subspaces"


def test_license_file_is_the_license_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.splitlines()[0] == f"{PROJECT['license']['text']} License"
    assert re.search(r"^Copyright \(c\) 2026 marginbench developers$", text, re.M)


def test_the_readme_cites_both_papers() -> None:
    section = (ROOT / "README.md").read_text().split("## Citing", 1)[1].split("\n## ", 1)[0]
    assert section.count("@inproceedings{") == 2 and "Vardi, Gal and Yehudai, Gilad and Shamir, Ohad" in section
    assert "Melamed, Odelia and Yehudai, Gilad and Vardi, Gal" in section
