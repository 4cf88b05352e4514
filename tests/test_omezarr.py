"""Replay of time-lapse OME-Zarr (NGFF v0.4 on zarr v2, v0.5 on zarr v3), written here with
zarr itself, through the real CLI and pipeline into SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livetrack.drivers.omezarr import is_ome_zarr, open_ome_zarr_movie
from livetrack.drivers.replay import open_movie
from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig

from livetrack.cli import main
from livetrack.errors import SourceError
from livetrack.store import Store

zarr = pytest.importorskip("zarr")

T, C, Z = 6, 2, 3
SIM = SimulationConfig(seed=4, n_frames=T, height=96, width=96, n_cells=6, nucleus_diameter_px=14)
FAST = ["--segmenter", "classical", "--tracker", "lap", "--no-tui"]
EVENTS = ["--events", "tcp://127.0.0.1:0"]


def _movie(seed: int = 0) -> np.ndarray:
    """(T, C, Z, Y, X): channel 0 the simulated nuclei (brightest in plane 1), channel 1
    a different, dim pattern, so reading the wrong channel or plane is visible."""
    config = SIM.model_copy(update={"seed": SIM.seed + seed})
    nuclei = np.stack([f.image for f in NucleiSimulator(config).frames()])
    out = np.zeros((T, C, Z, SIM.height, SIM.width), np.uint16)
    for zi, factor in enumerate((0.4, 1.0, 0.6)):
        out[:, 0, zi] = (nuclei * factor).astype(np.uint16)
    out[:, 1] = np.arange(SIM.width, dtype=np.uint16)[None, None, None, :]
    return out


def _multiscales(version: str, pixel_um: float, unit: str = "micrometer") -> dict[str, Any]:
    axes = [
        {"name": "t", "type": "time", "unit": "minute"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": unit},
        {"name": "y", "type": "space", "unit": unit},
        {"name": "x", "type": "space", "unit": unit},
    ]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {
                    "type": "scale",
                    "scale": [2.0, 1.0, 2.0, pixel_um * 2**level, pixel_um * 2**level],
                }
            ],
        }
        for level in (0, 1)
    ]
    return {"version": version, "name": "movie", "axes": axes, "datasets": datasets}


def write_ome_zarr(
    path: Path, data: np.ndarray, *, version: str = "0.4", pixel_um: float = 0.65, **kw: Any
) -> Path:
    """An OME-Zarr image with two resolution levels, written with zarr."""
    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    meta = {
        "multiscales": [_multiscales(version, pixel_um, **kw)],
        "omero": {"channels": [{"label": "DAPI"}, {"label": "GFP"}]},
    }
    root.attrs.update(meta if fmt == 2 else {"ome": {"version": version, **meta}})
    for level, arr in enumerate((data, data[..., ::2, ::2])):
        a = root.create_array(
            str(level), shape=arr.shape, dtype=arr.dtype, chunks=(1, 1, 1, *arr.shape[-2:])
        )
        a[:] = arr
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_replay_ome_zarr_through_the_cli(
    tmp_path: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _movie()
    path = write_ome_zarr(tmp_path / "movie.ome.zarr", data, version=version)
    db = tmp_path / "run.db"
    code = main(
        ["replay", str(path), "--channel", "DAPI", "--z", "1", "--db", str(db), *FAST, *EVENTS]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{T} frames stored" in out
    with Store(db, readonly=True) as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        assert store.positions(run_id) == ["movie"]
        info = store.position_info(run_id, "movie")
        assert info["pixel_size_um"] == pytest.approx(0.65)  # level 0, not level 1's 1.3
        assert (info["height"], info["width"]) == (SIM.height, SIM.width)
        assert store.frame_indices(run_id, "movie") == list(range(T))
        assert store.counts(run_id)["detections"] >= T * 3  # nuclei found: channel 0


def test_channel_z_and_time_step_are_read_from_the_metadata(tmp_path: Path) -> None:
    data = _movie()
    path = write_ome_zarr(tmp_path / "movie.ome.zarr", data, pixel_um=650.0, unit="nanometer")
    assert is_ome_zarr(path)
    src = open_movie(path, channel="GFP", z=2)
    got = [(m.frame_index, m.channel, img) for img, m in src.frames()]
    assert [t for t, _, _ in got] == list(range(T))
    assert {c for _, c, _ in got} == {"GFP"}
    np.testing.assert_array_equal(got[3][2], data[3, 1, 2])
    assert src.pixel_size_um == pytest.approx(0.65)  # nanometres → µm
    # no --z: the max projection of channel 0
    frames = [img for img, _ in open_ome_zarr_movie(path).frames()]
    np.testing.assert_array_equal(frames[2], data[2, 0].max(axis=0))
    # recorded times from the t scale (2 minutes), for --realtime
    assert [p.recorded_s for p in open_ome_zarr_movie(path).planes] == [120.0 * t for t in range(T)]
    # the --pixel-size option wins over the metadata
    assert open_movie(path, pixel_size_um=0.3).pixel_size_um == pytest.approx(0.3)


def test_a_group_of_images_replays_as_positions(tmp_path: Path) -> None:
    root = tmp_path / "plate.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    for i in range(2):
        write_ome_zarr(root / str(i), _movie(seed=i))
    src = open_movie(root, channel=0, z=1)
    assert src.n_positions == 2
    assert {(m.position, m.frame_index) for _, m in src.frames()} == {
        (p, t) for p in ("0", "1") for t in range(T)
    }


def test_what_is_not_an_ome_zarr_image_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write_ome_zarr(tmp_path / "m.ome.zarr", _movie())
    with pytest.raises(SourceError, match="no channel 'RFP'"):
        open_movie(path, channel="RFP")
    with pytest.raises(SourceError, match="3 z-plane"):
        open_movie(path, z=5)
    with pytest.raises(SourceError, match="axes"):
        open_movie(path, axes="TCZYX")
    bare = tmp_path / "bare.zarr"
    zarr.open_group(str(bare), mode="w", zarr_format=2).create_array(
        "0", shape=(2, 8, 8), dtype="u2"
    )
    with pytest.raises(SourceError, match="multiscales"):
        open_movie(bare)
    plate = tmp_path / "hcs.zarr"
    zarr.open_group(str(plate), mode="w", zarr_format=2).attrs["plate"] = {"wells": []}
    with pytest.raises(SourceError, match="plate"):
        open_movie(plate)


def test_without_a_unit_the_pixel_size_is_unknown(tmp_path: Path) -> None:
    path = write_ome_zarr(tmp_path / "m.ome.zarr", _movie())
    g = zarr.open_group(str(path), mode="r+")
    ms = g.attrs["multiscales"]
    for axis in ms[0]["axes"]:
        axis.pop("unit", None)
    g.attrs["multiscales"] = ms
    src = open_movie(path)
    assert src.pixel_size_um is None
    assert [p.recorded_s for p in src.planes] == [None] * T


def test_without_zarr_the_error_names_the_extra(tmp_path: Path) -> None:
    """In a process where zarr cannot be imported (as after a plain install)."""
    import subprocess
    import sys

    path = write_ome_zarr(tmp_path / "m.ome.zarr", _movie())
    code = (
        "import sys; sys.modules['zarr'] = None\n"
        "from livetrack.cli import main\n"
        f"sys.exit(main(['replay', {str(path)!r}, '--no-tui', '--db', 'x.db']))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "livetrack replay: error: reading OME-Zarr needs zarr: pip install 'livetrack[omezarr]'"
    )
    assert not (repo / "x.db").exists()
