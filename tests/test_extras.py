"""The optional dependencies: the extras in pyproject.toml are the ones the docs name, the
core runs without any of them, and a command that needs a missing one says which extra
to install, in one line."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
OPTIONAL_MODULES = {
    # extra: the modules it brings that livetrack imports (only where needed)
    "eval": ["ctc_metrics"],
    "export": ["geff", "pyarrow"],
    "ndtiff": ["ndstorage"],
    "omezarr": ["zarr"],
    "plot": ["matplotlib", "imageio_ffmpeg"],
    "micromanager": ["pycromanager"],
    "mmcore": ["pymmcore_plus", "useq"],
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_the_planned_extras_exist_and_dev_brings_the_format_ones() -> None:
    for extra in ("micromanager", "mmcore", "eval", "ndtiff", "plot", "omezarr", "export"):
        assert EXTRAS.get(extra), f"no [{extra}] extra"
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for heavy in ("py-ctcmetrics", "ndstorage", "zarr", "matplotlib", "pycromanager", "geff"):
        assert heavy not in core, f"{heavy} is optional, not a core dependency"
    (self_ref,) = [r for r in EXTRAS["dev"] if _name(r) == "livetrack"]
    brought = set(re.search(r"\[(.*)\]", self_ref).group(1).split(","))  # type: ignore[union-attr]
    assert brought == {"export", "eval", "ndtiff", "omezarr", "plot"}
    # pycromanager records NDTiff (--save-dir): its extra replays what it records
    assert "livetrack[ndtiff]" in EXTRAS["micromanager"]


def test_every_extra_the_docs_install_exists() -> None:
    named: set[str] = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / ".ci" / "run"]:
        for group in re.findall(r"\.\[([a-z,]+)\]", doc.read_text(encoding="utf-8")):
            named.update(group.split(","))
    assert {"dev", "micromanager", "mmcore", "plot"} <= named
    assert named <= set(EXTRAS), f"unknown extras named: {named - set(EXTRAS)}"


BLOCK = "import sys\nfor m in {mods!r}:\n    sys.modules[m] = None  # as if not installed\n"


def _without_extras(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    mods = sorted({m for ms in OPTIONAL_MODULES.values() for m in ms})
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(mods=mods) + code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_the_core_tracks_stores_and_exports_without_any_extra(tmp_path: Path) -> None:
    code = """
from livetrack.cli import main
import livetrack
assert main(['run', '--frames', '4', '--size', '96', '96', '--cells', '5', '--no-tui',
             '--events', 'tcp://127.0.0.1:0', '--segmenter', 'classical', '--tracker', 'lap',
             '--db', 'run.db']) == 0
assert main(['export', 'run.db', '--ctc', 'res', '--table', 'tracks.csv']) == 0
with livetrack.open_run('run.db') as run:
    print('rows', len(run.tracks))
"""
    done = _without_extras(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = int(done.stdout.split("rows")[-1])
    assert rows > 0
    assert len(list((tmp_path / "res").glob("mask*.tif"))) == 4
    assert (tmp_path / "tracks.csv").read_text().count("\n") == rows + 1  # + the header


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["evaluate", "res", "gt"], "scoring needs py-ctcmetrics: pip install 'livetrack[eval]'"),
        (["replay", "nd"], "reading NDTiff needs ndstorage: pip install 'livetrack[ndtiff]'"),
        (["plot", "summary", "x.db", "--out", "s.png"], "pip install 'livetrack[plot]'"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(tmp_path: Path, argv: list[str], says: str) -> None:
    (tmp_path / "nd").mkdir()
    (tmp_path / "nd" / "NDTiff.index").write_bytes(b"")
    for sub in ("res", "gt/TRA"):
        (tmp_path / sub).mkdir(parents=True)
    tifffile.imwrite(tmp_path / "res" / "mask000.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "gt" / "TRA" / "man_track000.tif", np.zeros((8, 8), np.uint16))
    (tmp_path / "res" / "res_track.txt").write_text("")
    (tmp_path / "gt" / "TRA" / "man_track.txt").write_text("")
    code = (
        "from livetrack.cli import main\n"
        f"raise SystemExit(main({[*argv, '--no-tui'] if argv[0] == 'replay' else argv!r}))\n"
    )
    done = _without_extras(code, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert says in lines[-1]
    assert lines[-1].startswith(f"livetrack {argv[0]}: error: ")
