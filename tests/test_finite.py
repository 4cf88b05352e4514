"""Frames with NaN or infinite pixels (registration padding, float TIFFs): replaced before
segmentation and tracking, said once, and the frame is not lost."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig

from livetrack.finite import finite_frame

SIM = SimulationConfig(seed=4, n_frames=5, height=128, width=144, n_cells=6)


def test_integer_and_finite_frames_pass_through_untouched() -> None:
    ints = np.arange(12, dtype=np.uint16).reshape(3, 4)
    floats = ints.astype(np.float32)
    for frame in (ints, floats):
        out, n = finite_frame(frame)
        assert out is frame
        assert n == 0


def test_nan_becomes_the_median_and_infinities_the_extremes() -> None:
    img = np.array([[1.0, 2.0, np.nan], [3.0, np.inf, -np.inf], [10.0, np.nan, 4.0]], np.float32)
    before = img.copy()
    out, n = finite_frame(img)
    assert n == 4
    finite = np.array([1.0, 2.0, 3.0, 10.0, 4.0])
    assert out[0, 2] == out[2, 1] == np.float32(np.median(finite))
    assert out[1, 1] == 10.0
    assert out[1, 2] == 1.0
    assert out.dtype == np.float32
    np.testing.assert_array_equal(img, before)  # the caller's frame is not changed


def test_a_frame_with_no_finite_pixel_becomes_empty() -> None:
    out, n = finite_frame(np.full((4, 5), np.nan, np.float64))
    assert n == 20
    assert not out.any()


def padded_movie() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames as registration leaves them: a NaN band along the left edge, no cell in it
    (the band is laid over background only), and the same frames with the band filled with
    each frame's median by hand."""
    frames = list(NucleiSimulator(SIM).frames())
    with_nan, filled = [], []
    for f in frames:
        img = f.image.astype(np.float32)
        band = np.zeros(img.shape, bool)
        band[:, :12] = True
        band &= ~(f.labels > 0)  # no cell pixel is hidden
        nan = img.copy()
        nan[band] = np.nan
        fill = img.copy()
        fill[band] = np.median(img[~band])
        with_nan.append(nan)
        filled.append(fill)
    return with_nan, filled


def test_api_tracks_frames_with_nan_padding_as_if_it_were_background(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from livetrack.api import track

    with_nan, filled = padded_movie()
    with caplog.at_level(logging.WARNING, logger="livetrack.api"):
        got = track(with_nan).tracks
    want = track(filled).tracks
    assert len(want) >= SIM.n_cells * SIM.n_frames - 2  # the cells were found at all
    assert got.drop(columns=["mean_intensity"]).equals(want.drop(columns=["mean_intensity"]))
    warned = [r for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(warned) == 1  # said once, not on every frame


def test_worker_stores_frames_with_nan_padding(tmp_path, zmq_context, closing, caplog) -> None:  # type: ignore[no-untyped-def]
    """Through the real sockets and store: every frame stored, the cells found as in the
    same frames without NaN."""
    from livetrack.messages import FrameHeader
    from tests.test_worker import drain, make_worker, pusher_for

    with_nan, filled = padded_movie()
    counts = {}
    for name, movie in [("nan", with_nan), ("filled", filled)]:
        worker = make_worker(tmp_path / f"{name}.db", zmq_context, closing)
        pusher = pusher_for(worker, zmq_context, closing)
        for i, img in enumerate(movie):
            header = FrameHeader(
                run_id="r",
                position="p",
                frame_index=i,
                timestamp=float(i),
                shape=img.shape,  # type: ignore[arg-type]
                dtype="float32",
                previous_frame=i - 1 if i else None,
            )
            pusher.send_frame(header, img)
        with caplog.at_level(logging.WARNING, logger="livetrack.worker"):
            results = drain(worker, until_eos=False)
        assert [r.status for r in results] == ["stored"] * len(movie)
        counts[name] = [len(worker.store.frame_detections("r", "p", i)[0]) for i in range(5)]
    assert counts["nan"] == counts["filled"]
    assert min(counts["nan"]) >= SIM.n_cells - 1
    assert sum("NaN or infinite" in r.getMessage() for r in caplog.records) == 1
