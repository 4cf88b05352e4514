"""The README's commands work as written.

Every fenced ``bash`` / ``python`` block of README.md is run, in README order, in one
temporary directory, with this checkout's ``livetrack`` — unless an HTML comment right before
the block says why it cannot run here::

    <!-- readme-test: skip (installs packages from the network) -->

Skipped blocks and the command blocks in ``docs/`` are still checked: every ``livetrack``
command in them must be accepted by the real argument parser (a renamed option fails).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from livetrack.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
CI_RUN = REPO / ".ci" / "run"

MARKER = re.compile(r"^<!--\s*readme-test:(?P<body>.*?)-->\s*$")
SKIP = re.compile(r"^\s*skip\s*\((?P<why>.+)\)\s*$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
COMMAND_LANGS = ("bash", "python")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    file: str
    line: int
    """1-based line of the opening fence."""
    lang: str
    code: str
    skip: str | None
    """Why the README test does not run it (from the marker before it), else None."""

    def where(self) -> str:
        return f"{self.file}:{self.line} ({self.lang} block)"


def parse_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` with the ``readme-test`` marker right before each.

    A marker must be the last non-blank line before a fence and say ``skip (why)``;
    anything else is an error, so a marker cannot silently stop applying."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str] | None = None  # (line, skip reason) of a marker not yet used
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line.strip())
        fence = FENCE.match(line)
        if marker:
            if pending is not None:
                raise AssertionError(f"{path.name}:{pending[0]}: marker not before a block")
            skip = SKIP.match(marker.group("body"))
            if skip is None or not skip.group("why").strip():
                raise AssertionError(
                    f"{path.name}:{i + 1}: marker must read 'readme-test: skip (reason)'"
                )
            pending = (i + 1, skip.group("why").strip())
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise AssertionError(f"{path.name}:{i + 1}: unclosed code block")
            code = "\n".join(lines[i + 1 : end]) + "\n"
            why = pending[1] if pending is not None else None
            blocks.append(Block(path.name, i + 1, fence.group("lang"), code, why))
            pending = None
            i = end
        elif line.strip() and pending is not None:
            raise AssertionError(f"{path.name}:{pending[0]}: marker not right before a block")
        i += 1
    if pending is not None:
        raise AssertionError(f"{path.name}:{pending[0]}: marker not before a block")
    return blocks


def livetrack_commands(block: Block) -> list[list[str]]:
    """The ``livetrack`` command lines of a bash block, as argument lists (no shell run)."""
    text = block.code.replace("\\\n", " ")
    commands: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in {";", "&&", "||", "|", "&"}:
                if current and current[0] == "livetrack":
                    commands.append(current[1:])
                current = []
            else:
                current.append(token)
    return commands


def parse_error(argv: list[str]) -> str | None:
    """The argument parser's complaint about ``livetrack ARGV``, or None if it accepts it."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue() else str(exc)
    return None


def readme_blocks() -> list[Block]:
    return parse_blocks(README)


# --------------------------------------------------------------------------- structure


def test_every_block_is_a_command_block_and_every_skip_says_why() -> None:
    blocks = readme_blocks()
    assert blocks, "README.md has no code blocks"
    for block in blocks:
        assert block.lang in COMMAND_LANGS, (
            f"{block.where()}: tag it ```bash or ```python so the README test sees it"
        )
        if block.skip is not None:
            assert len(block.skip) >= 10, f"{block.where()}: say why it is skipped"


def test_quick_start_is_the_two_commands_ci_runs() -> None:
    first = readme_blocks()[0]
    commands = [
        ln for ln in first.code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert len(commands) == 2, commands
    install, test = commands
    assert install.endswith("livetrack run --frames 50"), install
    assert test.endswith("&& python -m pytest"), test
    ci = CI_RUN.read_text(encoding="utf-8")
    spec = re.search(r"pip install (torch==\S+ -e \"\.\[[^\]]*\]\")", test)
    assert spec is not None, test
    assert spec.group(1) in ci, f".ci/run does not install {spec.group(1)}"
    assert re.search(r"^python -m pytest$", ci, re.MULTILINE), ".ci/run must run python -m pytest"


def test_the_blocks_that_matter_are_not_skipped() -> None:
    runnable = "".join(b.code for b in readme_blocks() if b.skip is None)
    for needed in (
        r"^livetrack simulate ",
        r"^livetrack replay ",
        r"^livetrack run ",
        r"^livetrack export ",
        r"^livetrack evaluate ",
        r"livetrack.open_run\(",
        r"livetrack.track\(",
    ):
        assert re.search(needed, runnable, re.MULTILINE), f"no runnable README block has {needed}"


def test_livetrack_commands_everywhere_are_accepted_by_the_parser() -> None:
    """Blocks the README test cannot run, and the docs' command blocks, still use real
    commands and options."""
    blocks = [b for b in readme_blocks() if b.skip is not None]
    for doc in sorted(DOCS.glob("*.md")):
        blocks += [b for b in parse_blocks(doc) if b.lang == "bash"]
    checked = 0
    for block in blocks:
        for argv in livetrack_commands(block):
            error = parse_error(argv)
            assert error is None, f"{block.where()}: livetrack {shlex.join(argv)}: {error}"
            checked += 1
    assert checked >= 10, f"only {checked} livetrack commands found outside runnable blocks"


def test_the_parser_check_catches_a_renamed_option() -> None:
    block = Block("x.md", 1, "bash", "livetrack run --n-frames 50 && ls\n", None)
    (argv,) = livetrack_commands(block)
    assert argv == ["run", "--n-frames", "50"]
    assert parse_error(argv) is not None
    assert parse_error(["run", "--frames", "50"]) is None


FORBIDDEN = {
    "a path on the developers' machines": re.compile(r"/work/|/tmp/|\.\./shared|notes/"),
    "an issue number": re.compile(r"\bissues?\s*#?\d", re.IGNORECASE),
    "talk of sessions": re.compile(r"\bsessions?\b", re.IGNORECASE),
}


def test_user_docs_have_no_private_paths_issue_numbers_or_sessions() -> None:
    for doc in [README, *sorted(DOCS.glob("*.md"))]:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                assert not pattern.search(line), f"{doc.name}:{n} has {what}: {line.strip()}"


def test_docs_are_linked_from_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    docs = sorted(DOCS.glob("*.md"))
    assert docs
    for doc in docs:
        assert f"](docs/{doc.name}" in readme, f"README does not link docs/{doc.name}"


LINK = re.compile(r"\]\((?P<target>[^)#\s]*)(?:#(?P<anchor>[^)\s]+))?\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_links_between_readme_and_docs_resolve() -> None:
    for doc in [README, *sorted(DOCS.glob("*.md"))]:
        for match in LINK.finditer(doc.read_text(encoding="utf-8")):
            target, anchor = match.group("target"), match.group("anchor")
            if target.startswith(("http://", "https://")):
                continue
            path = (doc.parent / target).resolve() if target else doc
            assert path.exists(), f"{doc.name}: link to missing {target}"
            if anchor:
                assert anchor in heading_anchors(path), f"{doc.name}: no heading #{anchor}"


# --------------------------------------------------------------------------- running them


def _environment(tmp_path: Path) -> dict[str, str]:
    """PATH with a ``livetrack`` that is this checkout's CLI under this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "livetrack"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m livetrack.cli "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # A port another program holds must not decide the test (the README's default is 5558).
    env["LIVETRACK_WORKER__EVENTS_ENDPOINT"] = "tcp://127.0.0.1:0"
    return env


def test_readme_commands_work_as_written(tmp_path: Path) -> None:
    work = tmp_path / "readme"
    work.mkdir()
    env = _environment(tmp_path)
    outputs: list[str] = []
    for n, block in enumerate(b for b in readme_blocks() if b.skip is None):
        if block.lang == "bash":
            argv = ["bash", "-euo", "pipefail", "-c", block.code]
        else:
            script = tmp_path / f"block{n}.py"
            script.write_text(block.code, encoding="utf-8")
            argv = [sys.executable, str(script)]
        done = subprocess.run(
            argv,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, (
            f"{block.where()} failed with exit code {done.returncode}:\n{block.code}\n"
            f"--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-3000:]}"
        )
        outputs.append(done.stdout)

    # What the blocks promise is there.
    assert (work / "result" / "res_track.txt").read_text().strip()
    assert any(re.search(r"^\s*TRA\s+0\.\d+", out, re.MULTILINE) for out in outputs)
    header, *rows = (work / "tracks.csv").read_text().splitlines()
    assert header == (
        "position,t,track,parent,label,y,x,area,perimeter,eccentricity,mean_intensity,fate"
    )
    assert (work / "movie_RES" / "res_track.txt").read_text().strip()
    with contextlib.closing(sqlite3.connect(work / "livetrack.db")) as db:
        (detections,) = db.execute("SELECT count(*) FROM detections").fetchone()
    assert len(rows) == detections > 0
