"""README.md and docs/: the examples run as written, in order, in a fresh clone; each printed block is what its
command prints; no two examples write the same output; the links resolve; the README's first screen stays short
and its test command is the one CI runs. The markers are explained in tests/doc_examples.py."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from doc_examples import PAGES, ROOT, DocExampleError, blocks, fresh_clone, mismatch, run_page, written_outputs

# results/README.md holds no runnable example, but its commands must not write where the docs' examples do
ALL_PAGES = (*PAGES, ROOT / "results" / "README.md")
FRONT_DOOR_LINES = 120  # the README before its first reference section (Citing)


def _ids(pages: tuple[Path, ...]) -> list[str]:
    return [str(page.relative_to(ROOT)) for page in pages]


@pytest.mark.parametrize("page", ALL_PAGES, ids=_ids(ALL_PAGES))
def test_every_marker_sits_on_its_block(page: Path) -> None:
    for block in blocks(page):  # raises on a marker that is not right before a fenced block
        if block.kind in ("output-of", "output-excerpt-of"):
            assert block.arg.startswith(("marginbench ", "python ")), f"{block.where}: {block.arg!r}"
        if block.kind == "file":
            assert re.fullmatch(r"[\w.-]+", block.arg), f"{block.where}: {block.arg!r}"


def test_no_two_examples_write_the_same_output() -> None:
    """Two different commands may write one path only where the later one says --overwrite: the same command
    shown twice (a page and results/README.md) is one example."""
    writers: dict[str, list[tuple[str, bool, str]]] = defaultdict(list)
    for page in ALL_PAGES:
        for path, command, overwrites, where in written_outputs(page):
            if command not in [c for c, _, _ in writers[path.rstrip("/")]]:
                writers[path.rstrip("/")].append((command, overwrites, where))
    shared = {path: users for path, users in writers.items() if any(not overwrites for _, overwrites, _ in users[1:])}
    assert shared == {}


def test_the_checks_find_a_shared_output(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```bash\nmarginbench run --out runs/a\nmarginbench attack x --attacks pgd --out runs/a  # again\n```\n")
    assert [(p, o) for p, _, o, _ in written_outputs(page)] == [("runs/a", False), ("runs/a", False)]
    page.write_text("<!-- runnable -->\n\n```bash\nls\n```\n")
    with pytest.raises(DocExampleError, match="right before a fenced block"):
        blocks(page)


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", ALL_PAGES, ids=_ids(ALL_PAGES))
def test_every_link_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        name, _, anchor = target.partition("#")
        linked = (page.parent / name).resolve() if name else page
        assert linked.exists(), f"{page.name}: {target}"
        assert not anchor or linked.suffix != ".md" or anchor in _anchors(linked), f"{page.name}: {target}"


def test_the_readme_front_door_is_one_screenful_that_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    front = readme.split("\n## Citing", 1)[0]
    assert len(front.splitlines()) <= FRONT_DOOR_LINES
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= set(re.findall(r"\((docs/[\w-]+\.md)\)", front))
    assert "papers' claims" in front


def test_ci_runs_the_readme_test_command_word_for_word() -> None:
    commands = [b.text.strip() for b in blocks(ROOT / "README.md") if b.language == "bash"]
    assert commands[1].endswith("python -m pytest") and commands[1] in (ROOT / ".ci" / "run").read_text()


def _check_page(page: Path, tmp_path: Path, *, slow: bool) -> None:
    printed = run_page(page, fresh_clone(tmp_path), slow=slow)
    problems = [problem for block, actual in printed if (problem := mismatch(block, actual)) is not None]
    assert problems == [], "\n\n".join(problems)


QUICK = tuple(p for p in PAGES if any(b.kind is not None and not b.slow for b in blocks(p)))
SLOW = tuple(p for p in PAGES if any(b.kind is not None and b.slow for b in blocks(p)))


@pytest.mark.parametrize("page", QUICK, ids=_ids(QUICK))
def test_the_examples_of_a_page_run_and_print_what_it_shows(page: Path, tmp_path: Path) -> None:
    _check_page(page, tmp_path, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW, ids=_ids(SLOW))
def test_the_slow_examples_of_a_page_run_and_print_what_it_shows(page: Path, tmp_path: Path) -> None:
    """README.md: the default run's table and its check against results/default-baseline.json; docs/sweeps.md:
    the process pool."""
    _check_page(page, tmp_path, slow=True)
