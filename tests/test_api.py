"""The public Python API as docs/plugins-and-zoo.md shows it: every name it lists is exported. (Its example runs in
tests/test_docs.py, with the leaderboard it prints: the harness keeps only verified flips and flags my-model.)"""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins-and-zoo.md"


def test_the_package_top_exports_every_name_the_docs_list() -> None:
    import marginbench

    paragraph = PAGE.read_text().split("The stable Python API is the package top", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`([A-Za-z_][A-Za-z_0-9]*)`", paragraph))
    assert {"ATTACKS", "MODELS", "AttackResult", "attack_directory", "load_plugins", "Source"} <= listed
    assert listed <= set(marginbench.__all__), listed - set(marginbench.__all__)
    for name in marginbench.__all__:
        assert getattr(marginbench, name) is not None
