"""The examples of README.md and docs/*.md: found, run in order and compared with what their commands print.

tests/test_docs.py tests them; `python tests/doc_examples.py [--slow] [PAGE ...]` rewrites the printed blocks
with what the commands print now (docs/developing.md). A marker is an HTML comment on the line right before a
fenced block:

    <!-- runnable -->                 a bash or python block, run as written
    <!-- file: NAME -->               the block is written to NAME (a plugin file that a later command loads)
    <!-- output-of: CMD -->           the block is what CMD prints on stdout, whatever its exit status
    <!-- output-excerpt-of: CMD -->   the block is some of those lines, in order

`slow` after the marker's name (`<!-- runnable slow -->`, `<!-- output-of slow: CMD -->`) keeps a block for
the `slow` test. A page's blocks run in document order in one fresh folder, a copy of the repository's tracked
files (a fresh clone), so two examples of one page that write the same folder collide as they would for a
reader; `marginbench` and `python` there are this interpreter's. An output block whose command is exactly the
runnable block before it reuses that block's output instead of running it again.

Printed blocks compare line by line: text exactly (runs of spaces and of a table's dashes count as one),
numbers to a relative 1e-3 (the printed digits), and the cells of timing columns (TIMING_COLUMNS) not at all.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
MARKER = re.compile(r"<!--\s*(runnable|file|output-of|output-excerpt-of)(\s+slow)?\s*(?::\s*(.*?))?\s*-->")
RUNNABLE_LANGUAGES = ("bash", "python")
TIMING_COLUMNS = frozenset({"ms/example"})  # a machine's times: shown, never compared
RELATIVE = 1e-3
NUMBER = re.compile(r"\d+\.?\d*(?:[eE][-+]?\d+)?")  # unsigned: a sign or a hyphen is text, compared exactly
PRELUDE = 'set -eo pipefail\nmarginbench() { "$DOC_PYTHON" -m marginbench "$@"; }\npython() { "$DOC_PYTHON" "$@"; }\n'
TIMEOUT = 900


@dataclass(frozen=True)
class Block:
    """A fenced block of a page, with its marker (kind None: none)."""

    page: Path
    kind: str | None
    slow: bool
    arg: str  # the file name or the command
    language: str
    text: str
    start: int  # its first content line, 0-based
    stop: int  # the line after its last content line
    indent: str

    @property
    def where(self) -> str:
        return f"{_name(self.page)}:{self.start}"


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else page)


class DocExampleError(AssertionError):
    """A marker without its block, an example that failed, or a printed block that no longer matches."""


def blocks(page: Path) -> list[Block]:
    """Every fenced block of the page in order, each with the marker on the line before it."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    pending: tuple[re.Match[str], int] | None = None
    for token in MarkdownIt("commonmark").parse("\n".join(lines)):
        if token.type == "html_block" and MARKER.fullmatch(token.content.strip()):
            pending = (MARKER.fullmatch(token.content.strip()), token.map[1])  # type: ignore[arg-type,index]
            continue
        if token.type == "fence" and token.map is not None:
            opening = lines[token.map[0]]
            marker = pending[0] if pending is not None and pending[1] == token.map[0] else None
            if pending is not None and marker is None:
                raise DocExampleError(f"{_name(page)}:{pending[1]}: the marker is not on the line right before a fenced block")
            kind, slow, arg = (marker.group(1), bool(marker.group(2)), marker.group(3) or "") if marker else (None, False, "")
            if kind == "runnable" and token.info.strip() not in RUNNABLE_LANGUAGES:
                raise DocExampleError(f"{_name(page)}:{token.map[0]}: a runnable block must be bash or python, not {token.info!r}")
            indent = opening[: len(opening) - len(opening.lstrip())]
            found.append(Block(page, kind, slow, arg, token.info.strip(), token.content, token.map[0] + 1, token.map[1] - 1, indent))
            pending = None
        elif pending is not None and token.map is not None:
            raise DocExampleError(f"{_name(page)}:{pending[1]}: the marker is not on the line right before a fenced block")
    if pending is not None:
        raise DocExampleError(f"{_name(page)}:{pending[1]}: a marker at the end of the page")
    return found


def fresh_clone(folder: Path) -> Path:
    """The repository's tracked files copied into folder, as a fresh clone has them."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        for name in listed.stdout.split("\0"):
            if name and (ROOT / name).is_file():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, folder / name)
    else:  # not a git checkout: everything but what git would ignore
        shutil.copytree(ROOT, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", "__pycache__", "*.egg-info", ".*cache"))
    return folder


def _run(block_language: str, text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOC_PYTHON": sys.executable, "MPLBACKEND": "Agg"}
    argv = ["bash", "-c", PRELUDE + text] if block_language == "bash" else [sys.executable, "-c", text]
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def run_page(page: Path, folder: Path, *, slow: bool) -> list[tuple[Block, str]]:
    """Run the page's examples in order in folder; its printed blocks, each with what its command printed.
    Without slow, the blocks marked slow are left out."""
    printed: list[tuple[Block, str]] = []
    last: tuple[str, str] | None = None  # the last runnable block's text and stdout
    for block in blocks(page):
        if block.kind is None or (block.slow and not slow):
            continue
        if block.kind == "file":
            (folder / block.arg).write_text(block.text)
        elif block.kind == "runnable":
            done = _run(block.language, block.text, folder)
            if done.returncode != 0:
                raise DocExampleError(f"{block.where}: the example exits {done.returncode}\n{block.text}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            last = (block.text.strip(), done.stdout)
        else:
            if last is not None and last[0] == block.arg:
                printed.append((block, last[1]))
            else:
                done = _run("bash", block.arg, folder)
                printed.append((block, done.stdout if done.stdout else done.stderr))
    return printed


def _normal(lines: list[str]) -> list[str]:
    """Lines as compared: runs of spaces and of dashes made one, the cells of timing columns emptied."""
    out, blank = [], set[int]()
    for i, line in enumerate(lines):
        cells = line.split("|")
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[-|: ]+\|", lines[i + 1].strip()):
            blank = {j for j, cell in enumerate(cells) if cell.strip() in TIMING_COLUMNS}  # a table's header
        elif not line.startswith("|"):
            blank = set()
        cells = ["" if j in blank else cell for j, cell in enumerate(cells)] if line.startswith("|") else cells
        out.append(re.sub(r"-{3,}", "---", re.sub(r"\s+", " ", "|".join(cells))).strip())
    return out


def _same(expected: str, actual: str) -> bool:
    if NUMBER.sub("#", expected) != NUMBER.sub("#", actual):
        return False
    pairs = zip((float(x) for x in NUMBER.findall(expected)), (float(y) for y in NUMBER.findall(actual)), strict=True)
    return all(abs(x - y) <= RELATIVE * max(abs(x), abs(y)) for x, y in pairs)


def _trimmed(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def mismatch(block: Block, actual: str) -> str | None:
    """None where the printed block matches what its command printed; else a diff to read."""
    want, got = _trimmed(block.text), _trimmed(actual)
    norm_want, norm_got = _normal(want), _normal(got)
    if block.kind == "output-of":
        ok = len(norm_want) == len(norm_got) and all(_same(w, g) for w, g in zip(norm_want, norm_got, strict=True))
    else:  # an excerpt: every line of the block, in order, among the printed ones
        at = 0
        for line in norm_want:
            while at < len(norm_got) and not _same(line, norm_got[at]):
                at += 1
            at += 1
        ok = at <= len(norm_got)
    if ok:
        return None
    diff = "\n".join(difflib.unified_diff(want, got, "the page", "the command", lineterm="", n=1))
    return f"{block.where}: the printed block is not what `{block.arg}` prints now (regenerate: python tests/doc_examples.py):\n{diff}"


def _words(line: str) -> list[str]:
    return [w for w in re.split(r"[|\s]+", NUMBER.sub(" ", line)) if w.strip("-:")]


def regenerated(block: Block, actual: str) -> list[str]:
    """The block's new lines: the command's output, or for an excerpt each line's counterpart in it (the next
    printed line whose words hold the old line's words in order; a table's dash line stays a dash line)."""
    got = _trimmed(actual)
    if block.kind == "output-of":
        return got
    new, at = [], 0
    for line in _trimmed(block.text):
        old = _words(line)
        for j in range(at, len(got)):
            words, it = _words(got[j]), iter(_words(got[j]))
            if (old and all(w in it for w in old)) or (not old and not words and got[j].strip().startswith("|-") == line.strip().startswith("|-")):
                new.append(got[j])
                at = j + 1
                break
        else:
            new.append(line)
    return new


def _commands(page: Path) -> list[tuple[str, str]]:
    """(command line, where) for every line of the page's bash blocks, every marker's command and every inline
    code span that starts with `marginbench `."""
    found = []
    for block in blocks(page):
        lines = block.text.replace("\\\n", " ").splitlines() if block.language == "bash" else []
        found += [(line, block.where) for line in lines + ([block.arg] if block.kind in ("output-of", "output-excerpt-of") else [])]
    for token in MarkdownIt("commonmark").parse(page.read_text()):
        for child in token.children or []:
            if child.type == "code_inline" and child.content.startswith("marginbench "):
                found.append((child.content, f"{_name(page)}:{token.map[0] if token.map else 0}"))
    return found


def written_outputs(page: Path) -> list[tuple[str, str, bool, str]]:
    """(path, command, overwrites, where) for every `--out PATH` or `-o PATH` of a marginbench command of the page
    (bash blocks, markers, inline code), and every result directory a python block passes to run_sweep."""
    found = []
    for line, where in _commands(page):
        for command in " ".join(shlex.split(line, comments=True)).replace("||", "&&").replace(";", "&&").split("&&"):
            argv = command.split()
            for flag in ("--out", "-o"):
                if argv[:1] == ["marginbench"] and flag in argv[:-1]:
                    found.append((argv[argv.index(flag) + 1], " ".join(argv), "--overwrite" in argv, where))
    for block in blocks(page):
        if block.language == "python":
            for path in re.findall(r"run_sweep\([^)]*?,\s*[\"']([^\"']+)[\"']|out=[\"']([^\"']+)[\"']", block.text):
                found.append((path[0] or path[1], block.text.strip(), False, block.where))
    return found


def _main(argv: list[str]) -> int:
    slow = "--slow" in argv
    pages = [Path(a).resolve() for a in argv if a != "--slow"] or list(PAGES)
    for page in pages:
        with tempfile.TemporaryDirectory() as tmp:
            printed = run_page(page, fresh_clone(Path(tmp)), slow=slow)
        lines = page.read_text().splitlines()
        for block, actual in reversed(printed):
            if mismatch(block, actual) is not None:
                lines[block.start : block.stop] = [block.indent + line if line else line for line in regenerated(block, actual)]
                print(f"rewrote {block.where} ({block.arg})")
        page.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
