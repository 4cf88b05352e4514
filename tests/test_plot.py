"""Pictures (livetrack plot lineage|summary|overlay, result.plot_*): made from real runs
(a simulated movie replayed through the CLI into SQLite), read back and checked for what
they must show: the lineage's ids in the SVG, the run's frame count in the GIF, the
counts behind the summary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import tifffile
from livetrack.simulators.nuclei import SimulationConfig, write_ctc

import livetrack
from livetrack.cli import main
from livetrack.plot import summary_counts
from livetrack.store import Store

pytest.importorskip("matplotlib")
from PIL import Image, ImageSequence

REPO = Path(__file__).resolve().parents[1]
SIM = SimulationConfig(
    seed=3, n_frames=10, height=96, width=96, n_cells=8, nucleus_diameter_px=14,
    cell_cycle_frames=6,
)  # fmt: skip
"""Small, with divisions (the lineage has branches)."""
FAST = ["--segmenter", "classical", "--tracker", "lap", "--no-tui"]
EVENTS = ["--events", "tcp://127.0.0.1:0"]  # a port another program holds must not matter


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A stored run: the simulated movie replayed through the CLI (one position)."""
    root = tmp_path_factory.mktemp("plot")
    seq = write_ctc(SIM, root)
    db = root / "run.db"
    code = main(["replay", str(seq), "--db", str(db), *FAST, *EVENTS])
    assert code == 0
    return {"root": root, "seq": seq, "db": db}


def _family(db: Path) -> tuple[int, set[int], set[int]]:
    """A track with at least two generations below it, its lineage, and every other id."""
    with livetrack.open_run(db) as result:
        g = result.lineage
    roots = [n for n in g if g.in_degree(n) == 0]
    root = max(roots, key=lambda n: (len(nx.descendants(g, n)), -n))
    family = {root, *nx.descendants(g, root)}
    assert len(family) >= 3, "the simulated movie should have a division"
    return root, family, set(g) - family


def test_lineage_svg_names_every_track_of_the_lineage_and_no_other(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, family, others = _family(run["db"])
    out = run["root"] / "lineage.svg"
    code, stdout, err = cli(capsys, "plot", "lineage", run["db"], "--track", root, "--out", out)
    assert code == 0, err
    assert f"lineage of track {root}" in stdout
    svg = out.read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml")
    assert "</svg>" in svg
    # text stays text: each track's label is an element with its id
    labelled = {int(m) for m in re.findall(r'<g id="track-(\d+)">', svg)}
    assert labelled == family
    texts = set(re.findall(r">([^<>]+)</text>", svg))
    assert {str(t) for t in family} <= texts
    assert "frame" in texts  # the time axis is labelled
    assert "divided" in texts  # the fate legend
    assert not {str(t) for t in others if t > SIM.n_frames} & texts  # ids, not ticks


def test_lineage_png_grows_with_the_lineage(run: dict[str, Path]) -> None:
    root, family, _ = _family(run["db"])
    with livetrack.open_run(run["db"]) as result:
        leaf = max(t for t in family if result.lineage.out_degree(t) == 0)
        big = result.plot_lineage(root, run["root"] / "big.png")
        result.plot_lineage(leaf, run["root"] / "small.png")
    assert big.axes[0].get_xlabel() == "frame"
    with Image.open(run["root"] / "big.png") as b, Image.open(run["root"] / "small.png") as s:
        assert b.format == s.format == "PNG"
        assert b.width == s.width == 1200  # 8 in at 150 dpi
        assert b.height > s.height >= 2.2 * 150 - 2
        assert np.asarray(b.convert("L")).std() > 10  # not a blank canvas


def test_summary_counts_are_the_stored_ones(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = run["root"] / "summary.png"
    code, _, err = cli(capsys, "plot", "summary", run["db"], "--out", out)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (1200, 840)
    with livetrack.open_run(run["db"]) as result:
        frames, cells, divisions = summary_counts(result.data)
        tracks = result.tracks
        fates = nx.get_node_attributes(result.lineage, "fate")
    assert frames.tolist() == list(range(SIM.n_frames))
    assert cells.tolist() == tracks.groupby("t").size().reindex(frames, fill_value=0).tolist()
    assert np.all(np.diff(divisions) >= 0)
    assert divisions[-1] == sum(f == "divided" for f in fates.values()) > 0


def test_overlay_gif_has_a_frame_per_stored_frame_with_outlines_over_the_images(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with_images, black = run["root"] / "overlay.gif", run["root"] / "black.gif"
    code, stdout, err = cli(
        capsys, "plot", "overlay", run["db"], "--images", run["seq"], "--out", with_images
    )
    assert code == 0, err
    assert f"{SIM.n_frames} frames" in stdout
    code, _, err = cli(capsys, "plot", "overlay", run["db"], "--out", black, "--fps", "10")
    assert code == 0, err
    first: list[np.ndarray] = []
    for path in (with_images, black):
        with Image.open(path) as gif:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
            assert len(frames) == SIM.n_frames
            assert gif.size[0] >= 384  # a 96-pixel movie is scaled up: legible ids
        assert not np.array_equal(frames[0], frames[-1])
        first.append(frames[0])
    # outlines: saturated colours (a grey image has r == g == b)
    img, dark = first
    spread = img.max(axis=2).astype(int) - img.min(axis=2)
    assert (spread > 100).sum() > 200
    # the raw frame shows under the outlines; without --images the background is black
    assert np.median(img) > np.median(dark)
    assert np.median(dark) < 10


def test_overlay_mp4(run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

    out = run["root"] / "overlay.mp4"
    code, _, err = cli(capsys, "plot", "overlay", run["db"], "--images", run["seq"], "--out", out)
    assert code == 0, err
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert n_frames == SIM.n_frames
    reader = imageio_ffmpeg.read_frames(str(out))
    try:
        width, height = next(reader)["size"]
    finally:
        reader.close()
    assert width >= 384
    assert width % 16 == 0
    assert height % 16 == 0


def test_plot_errors_are_one_line(run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    db, root = run["db"], run["root"]
    code, _, err = cli(capsys, "plot", "lineage", db, "--track", "9999", "--out", root / "x.png")
    assert code == 1
    assert "no track 9999" in err
    assert len(err.strip().splitlines()) == 1
    # the file name is checked before anything is read: a missing database is not reached
    code, _, err = cli(capsys, "plot", "summary", root / "nope.db", "--out", root / "x.jpg")
    assert code == 1
    assert ".png, .svg or .pdf" in err
    # images of another movie: refused, not drawn under the wrong cells
    other = root / "other.tif"
    tifffile.imwrite(other, np.zeros((SIM.n_frames, 50, 60), np.uint16))
    code, _, err = cli(capsys, "plot", "overlay", db, "--images", other, "--out", root / "o.gif")
    assert code == 1
    assert "shape" in err
    assert len(err.strip().splitlines()) == 1
    assert not (root / "o.gif").exists()


def test_several_positions_summary_and_lineage_needs_a_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A two-position OME-TIFF replayed: one line per position, --position chooses."""
    seqs = [
        write_ctc(SimulationConfig(**{**vars(SIM), "seed": s}), tmp_path / str(s)) for s in (1, 2)
    ]
    movies = [np.stack([tifffile.imread(p) for p in sorted(s.glob("t*.tif"))]) for s in seqs]
    path = tmp_path / "plate.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as w:
        for name, movie in zip(("A1", "B2"), movies, strict=True):
            w.write(movie, metadata={"axes": "TYX", "Name": name})
    db = tmp_path / "plate.db"
    assert main(["replay", str(path), "--db", str(db), *FAST, *EVENTS]) == 0
    capsys.readouterr()
    code, out, err = cli(capsys, "plot", "summary", db, "--out", tmp_path / "s.svg")
    assert code == 0, err
    assert "'A1', 'B2'" in out
    svg = (tmp_path / "s.svg").read_text(encoding="utf-8")
    assert ">A1</text>" in svg
    assert ">B2</text>" in svg
    code, _, err = cli(capsys, "plot", "lineage", db, "--track", "1", "--out", tmp_path / "l.png")
    assert code == 1
    assert "--position" in err
    code, _, err = cli(
        capsys, "plot", "lineage", db, "--track", "1", "--position", "B2",
        "--out", tmp_path / "l.png",
    )  # fmt: skip
    assert code == 0, err
    with Store(db, readonly=True) as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        assert store.positions(run_id) == ["A1", "B2"]


def test_without_matplotlib_the_error_names_the_extra(run: dict[str, Path]) -> None:
    """In a process where matplotlib cannot be imported (as after a plain install)."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from livetrack.cli import main\n"
        f"sys.exit(main(['plot', 'summary', {str(run['db'])!r}, '--out', 'x.png']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "livetrack plot: error: pictures need matplotlib: pip install 'livetrack[plot]'"
    )
