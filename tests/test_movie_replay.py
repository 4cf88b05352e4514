"""Replay of recorded movies: OME-TIFF / ImageJ / plain multi-page TIFF written by
tifffile and NDTiff datasets written by ndstorage, through a real worker into SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from livetrack.drivers.movie import MovieSource, open_ndtiff_movie, open_tiff_movie
from livetrack.drivers.replay import CTCReplaySource, open_movie

from livetrack.config import Settings
from livetrack.errors import NoFramesRead, SourceError
from livetrack.runner import run_pipeline
from livetrack.store import Store

H, W = 64, 80


def _blobs(seed: int, n: int = 6, radius: float = 5.0) -> np.ndarray:
    """A frame of bright round nuclei on a dim noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    img = rng.normal(100, 5, (H, W))
    for _ in range(n):
        cy, cx = rng.uniform(10, H - 10), rng.uniform(10, W - 10)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += 900
    return img.clip(0, 65535).astype(np.uint16)


def _movie(n_t: int, n_c: int, n_z: int = 1, seed: int = 0) -> np.ndarray:
    frames = [_blobs(seed * 1000 + i) for i in range(n_t * n_c * n_z)]
    return np.stack(frames).reshape(n_t, n_c, n_z, H, W)


def _rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _replay(source: Any, db: Path, run_id: str = "replay") -> Any:
    return run_pipeline(
        source,
        Settings(),
        description=source.describe(),
        run_id=run_id,
        db_path=db,
        events_endpoint="tcp://127.0.0.1:0",  # 5558 may be taken by a running worker
    )


def test_ome_tiff_two_positions_choose_channel(tmp_path: Path) -> None:
    a, b = _movie(5, 2, seed=1)[:, :, 0], _movie(5, 2, seed=2)[:, :, 0]
    path = tmp_path / "plate.ome.tif"
    md = {"axes": "TCYX", "Channel": {"Name": ["DAPI", "GFP"]}, "PhysicalSizeX": 0.65}
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(a, metadata={**md, "Name": "A1", "PhysicalSizeY": 0.65})
        w.write(b, metadata={**md, "Name": "B2", "PhysicalSizeY": 0.65})

    src = open_movie(path, channel="GFP")
    assert isinstance(src, MovieSource)
    got = [(m.position, m.frame_index, m.channel, img) for img, m in src.frames()]
    assert [(p, t) for p, t, _, _ in got] == [(p, t) for t in range(5) for p in ("A1", "B2")]
    assert {c for _, _, c, _ in got} == {"GFP"}
    for pos, t, _, img in got:
        np.testing.assert_array_equal(img, (a if pos == "A1" else b)[t, 1])
    assert src.pixel_size_um == pytest.approx(0.65)

    db = tmp_path / "ome.db"
    summary = _replay(open_movie(path, channel=1), db)
    assert summary.frames_stored == 10
    with Store(db, readonly=True) as store:
        assert store.positions("replay") == ["A1", "B2"]
        assert store.frame_indices("replay", "A1") == list(range(5))
        assert store.frame_indices("replay", "B2") == list(range(5))
    assert {r[0] for r in _rows(db, "SELECT channel FROM frames")} == {"GFP"}
    sizes = {r[0] for r in _rows(db, "SELECT pixel_size_um FROM positions")}
    assert sorted(sizes) == pytest.approx([0.65])
    assert _rows(db, "SELECT COUNT(*) FROM detections")[0][0] > 0


def test_imagej_hyperstack_max_projects_z(tmp_path: Path) -> None:
    data = _movie(4, 2, 3, seed=3)  # T C Z Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data.transpose(0, 2, 1, 3, 4), imagej=True, metadata={"axes": "TZCYX"})
    frames = list(open_tiff_movie(path, channel=1).frames())
    assert [m.frame_index for _, m in frames] == [0, 1, 2, 3]
    for img, m in frames:
        np.testing.assert_array_equal(img, data[m.frame_index, 1].max(axis=0))
    one_plane = list(open_tiff_movie(path, channel=0, z=2).frames())
    np.testing.assert_array_equal(one_plane[3][0], data[3, 0, 2])


def test_plain_multipage_tiff_axes_flag(tmp_path: Path) -> None:
    data = _movie(6, 1)[:, 0, 0]
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data)  # no axes metadata: the user says what the pages are
    frames = list(open_tiff_movie(path, axes="TYX", position="w1").frames())
    assert [(m.position, m.frame_index) for _, m in frames] == [("w1", t) for t in range(6)]
    # The same pages declared as a z-stack: one max-projected frame.
    ((img, _meta),) = list(open_tiff_movie(path, axes="ZYX").frames())
    np.testing.assert_array_equal(img, data.max(axis=0))
    with pytest.raises(SourceError, match="cannot split its 6 planes"):
        open_tiff_movie(path, axes="TCYX")  # how many channels?
    with pytest.raises(SourceError, match="multiply to 2 planes"):
        open_tiff_movie(path, axes="T2C1YX")
    with pytest.raises(SourceError, match="real-time"):
        open_tiff_movie(path, axes="TYX", realtime=True)  # no recorded timestamps


def _write_pages(path: Path, planes: np.ndarray) -> None:
    """One page per plane and no metadata at all, as many tools write a stack."""
    with tifffile.TiffWriter(path) as w:
        for plane in planes:
            w.write(plane, contiguous=False, metadata=None)


def test_stack_without_axis_metadata_is_refused_until_axes_given(tmp_path: Path) -> None:
    """6 time points × 2 channels written page by page look like 12 pages to a reader:
    replaying them as 12 time points would interleave the channels. Refuse, name --axes."""
    data = _movie(6, 2)[:, :, 0]  # T C Y X
    path = tmp_path / "two_channels.tif"
    _write_pages(path, data.reshape(12, H, W))
    with pytest.raises(SourceError, match=r"12 planes with no axis metadata.*--axes"):
        open_tiff_movie(path)
    src = open_tiff_movie(path, axes="TC2YX", channel=1)  # 2 channels; T from the pages
    frames = list(src.frames())
    assert [m.frame_index for _, m in frames] == list(range(6))
    for img, m in frames:
        np.testing.assert_array_equal(img, data[m.frame_index, 1])
    # tifffile's own shaped files (no axis names either) are refused the same way.
    shaped = tmp_path / "shaped.tif"
    tifffile.imwrite(shaped, data)
    with pytest.raises(SourceError, match="--axes TCYX"):
        open_tiff_movie(shaped)
    assert len(list(open_tiff_movie(shaped, axes="TCYX").frames())) == 6


def test_rgb_stacks_are_read_as_one_colour_or_their_mean(tmp_path: Path) -> None:
    """An RGB export (a nuclear stain in blue): samples are not planes. By default the mean
    of red, green and blue is tracked; --channel picks one by name or index. An unlabelled
    RGB stack is refused with its true plane count; --axes TYX (or TYXS) reads it."""
    grey = _movie(4, 1)[:, 0, 0]
    blue8 = (grey // 257).astype(np.uint8)
    rgb = np.zeros((*blue8.shape, 3), np.uint8)
    rgb[..., 2] = blue8
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, rgb, imagej=True, photometric="rgb", metadata={"axes": "TYXS"})
    src = open_tiff_movie(ij)
    assert src.channel == "mean of RGB"
    frames = [img for img, _ in src.frames()]
    assert len(frames) == 4
    np.testing.assert_allclose(frames[0], blue8[0] / 3.0, rtol=1e-6)
    blue = [img for img, _ in open_tiff_movie(ij, channel="blue").frames()]
    np.testing.assert_array_equal(blue[2], blue8[2])
    red = [img for img, _ in open_tiff_movie(ij, channel=0).frames()]
    assert not red[1].any()
    with pytest.raises(SourceError, match="must be one of"):
        open_tiff_movie(ij, channel="cyan")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, rgb, photometric="rgb")
    with pytest.raises(SourceError, match=r"4 planes with no axis metadata.*--axes TYX"):
        open_tiff_movie(plain)
    for axes in ("TYX", "TYXS"):
        got = [img for img, _ in open_tiff_movie(plain, axes=axes, channel="blue").frames()]
        np.testing.assert_array_equal(np.stack(got), blue8)
    result = _replay(open_tiff_movie(ij), tmp_path / "rgb.db")
    grey_result = _replay(
        open_tiff_movie(_write_grey(tmp_path / "grey.tif", blue8)), tmp_path / "grey.db"
    )
    assert result.frames_stored == grey_result.frames_stored == 4
    n_rgb = _rows(tmp_path / "rgb.db", "SELECT count(*) FROM detections")[0][0]
    n_grey = _rows(tmp_path / "grey.db", "SELECT count(*) FROM detections")[0][0]
    assert n_rgb == n_grey > 0


def test_an_rgb_ome_tiff_with_channels_picks_the_channel_and_averages_its_colours(
    tmp_path: Path,
) -> None:
    data = (np.random.default_rng(0).random((3, 2, 32, 40, 3)) * 255).astype(np.uint8)
    path = tmp_path / "tcyxs.ome.tif"
    tifffile.imwrite(path, data, photometric="rgb", metadata={"axes": "TCYXS"}, ome=True)
    frames = [img for img, _ in open_tiff_movie(path, channel=1).frames()]
    assert len(frames) == 3
    np.testing.assert_allclose(frames[2], data[2, 1].mean(axis=-1), rtol=1e-6)


def _write_grey(path: Path, frames: np.ndarray) -> Path:
    tifffile.imwrite(path, frames, photometric="minisblack", metadata={"axes": "TYX"})
    return path


def test_a_movie_without_one_readable_frame_is_an_error(tmp_path: Path) -> None:
    """Every page's pixels garbage: the source ends with NoFramesRead (not an empty
    'complete' stream), after skipping and recording each page."""
    path = tmp_path / "garbage.tif"
    tifffile.imwrite(
        path,
        _movie(4, 1)[:, 0, 0],
        compression="zlib",
        photometric="minisblack",
        metadata={"axes": "TYX"},
    )
    with tifffile.TiffFile(path) as tif:
        spans = [(p.dataoffsets[0], p.databytecounts[0]) for p in tif.pages]  # type: ignore[union-attr]
    with open(path, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(b"\xff" * count)
    source = open_tiff_movie(path)
    with pytest.raises(NoFramesRead, match="none of its 4 frame"):
        list(source.frames())
    assert [i for _, i, _ in source.skipped] == [0, 1, 2, 3]

    seq = tmp_path / "01"
    seq.mkdir()
    for t in range(3):
        (seq / f"t{t:03d}.tif").write_bytes(b"not a tiff")
    ctc = CTCReplaySource(seq)
    with pytest.raises(NoFramesRead, match="none of its 3 frame"):
        list(ctc.frames())


def test_multipage_tiff_with_a_corrupt_page_skips_that_page(tmp_path: Path) -> None:
    data = _movie(5, 1)[:, 0, 0]
    path = tmp_path / "compressed.tif"
    tifffile.imwrite(path, data, compression="zlib", metadata={"axes": "TYX"})
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[2]
        offset, count = page.dataoffsets[0], page.databytecounts[0]  # type: ignore[union-attr]
    with open(path, "r+b") as f:  # page 2's compressed pixels become garbage
        f.seek(offset)
        f.write(b"\xff" * count)
    source = open_tiff_movie(path, position="w1")
    frames = list(source.frames())
    assert [m.frame_index for _, m in frames] == [0, 1, 3, 4]
    np.testing.assert_array_equal(frames[2][0], data[3])
    ((position, index, why),) = source.skipped
    assert (position, index) == ("w1", 2)
    assert "page 2" in why


def test_ndtiff_dataset_into_db(tmp_path: Path) -> None:
    from ndstorage import NDTiffDataset

    data = {p: _movie(4, 2, seed=10 + i)[:, :, 0] for i, p in enumerate(("A1", "B2"))}
    ds = NDTiffDataset(str(tmp_path), name="acq", writable=True)
    ds.initialize({})
    for t in range(4):
        for pos in ("A1", "B2"):
            for ci, ch in enumerate(("DAPI", "FITC")):
                md = {"ElapsedTime-ms": 500.0 * t, "PixelSize_um": 0.5}
                ds.put_image({"time": t, "position": pos, "channel": ch}, data[pos][t, ci], md)
    # ndstorage 0.1.18's finish() leaves its writer's read handle open (ResourceWarning,
    # an error under filterwarnings=error): close it ourselves.
    writer = ds.current_writer
    ds.finish()
    writer.reader.close()
    ds.close()
    path = tmp_path / "acq_1"

    src = open_movie(path, channel="FITC", realtime=False)
    assert isinstance(src, MovieSource)
    got = [(m.position, m.frame_index, img) for img, m in src.frames()]
    assert [(p, t) for p, t, _ in got] == [(p, t) for t in range(4) for p in ("A1", "B2")]
    for pos, t, img in got:
        np.testing.assert_array_equal(img, data[pos][t, 1])
    recorded = open_ndtiff_movie(path)
    assert [p.recorded_s for p in recorded.planes[::2]] == [0.0, 0.5, 1.0, 1.5]
    recorded.close()

    db = tmp_path / "nd.db"
    summary = _replay(open_movie(path, channel="DAPI", fps=200.0), db)
    assert summary.frames_stored == 8
    with Store(db, readonly=True) as store:
        assert store.positions("replay") == ["A1", "B2"]
        assert store.frame_indices("replay", "B2") == [0, 1, 2, 3]
    assert {r[0] for r in _rows(db, "SELECT channel FROM frames")} == {"DAPI"}
    assert {r[0] for r in _rows(db, "SELECT pixel_size_um FROM positions")} == {0.5}


def test_open_movie_dispatch_and_refusals(tmp_path: Path) -> None:
    seq = tmp_path / "01"
    seq.mkdir()
    for t in range(2):
        tifffile.imwrite(seq / f"t{t:03d}.tif", _blobs(t))
    assert isinstance(open_movie(seq), CTCReplaySource)
    with pytest.raises(SourceError, match="channel"):
        open_movie(seq, channel="GFP")
    with pytest.raises(SourceError, match="timestamps"):
        open_movie(seq, realtime=True)
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, np.stack([_blobs(0), _blobs(1)]), metadata={"axes": "TYX"})
    with pytest.raises(SourceError, match="masks_dir"):
        open_movie(movie, masks_dir=seq)
    with pytest.raises(SourceError, match="channel"):
        open_movie(movie, channel="GFP")
    with pytest.raises(SourceError, match="does not exist"):
        open_movie(tmp_path / "missing.tif")
    with pytest.raises(SourceError, match="not both"):
        open_movie(movie, fps=2.0, realtime=True)
