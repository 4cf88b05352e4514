"""Faster versions of library calls on the per-frame path give the library's values to the
last bit: the banded Gaussian blur, the lookup-table relabelling, and the tracker's
features built with them (checked against the plain computation they replaced). The
float32 blur and bilinear sampling of the tracker's run-time features give them to float32
rounding (training keeps the exact path)."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential
from skimage.transform import resize

import livetrack.blur
from livetrack.blur import (
    MIN_BAND_ROWS,
    band_cuts,
    blur_threads,
    downscale,
    gaussian_filter,
    gaussian_filter_f32,
)
from livetrack.segment.postprocess import relabel
from livetrack.track import features as F
from livetrack.types import Detections


@pytest.fixture
def small_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands on small test frames too (by default frames under ~800² take one call)."""
    monkeypatch.setattr(livetrack.blur, "MIN_BAND_PIXELS", 1)


@pytest.mark.usefixtures("small_bands")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_banded_blur_is_scipys_blur_bit_for_bit(dtype: type) -> None:
    assert len(band_cuts((5 * MIN_BAND_ROWS + 3, 97), 2, 7)) == 6  # five bands
    rng = np.random.default_rng(3)
    for h, w in [(5 * MIN_BAND_ROWS + 3, 97), (2 * MIN_BAND_ROWS, 40), (MIN_BAND_ROWS - 1, 33)]:
        img = (rng.random((h, w)) * 4000).astype(dtype)
        for sigma, truncate in [(0.6, 2.5), (1.7, 2.5), (3.0, 4.0), (12.0, 4.0)]:
            expected = ndi.gaussian_filter(img, sigma, truncate=truncate)
            for bands in (None, 1, 2, 3, 7):
                out = gaussian_filter(img, sigma, truncate=truncate, bands=bands)
                assert out.dtype == expected.dtype
                assert np.array_equal(out, expected), (h, w, sigma, bands)
    view = (rng.random((900, 300)) * 100).astype(np.float32)[::2, ::3]  # strided view
    assert np.array_equal(gaussian_filter(view, 1.3, bands=4), ndi.gaussian_filter(view, 1.3))


@pytest.mark.usefixtures("small_bands")
def test_banded_blur_per_axis_sigma_and_boundary_modes() -> None:
    img = np.random.default_rng(2).random((3 * MIN_BAND_ROWS + 1, 80))
    for mode in ("reflect", "mirror", "nearest", "constant"):
        for sigma in ((2.0, 0.7), (0.0, 1.5), 1.1):
            expected = ndi.gaussian_filter(img, sigma, mode=mode)
            assert np.array_equal(gaussian_filter(img, sigma, mode=mode, bands=3), expected)
    with pytest.raises(ValueError, match="wrap"):
        gaussian_filter(img, 1.0, mode="grid-wrap")


@pytest.mark.usefixtures("small_bands")
def test_downscale_is_skimages_resize_value_for_value() -> None:
    """The segmenters' anti-aliased downscaling (blur in bands) equals
    ``skimage.transform.resize(..., order=1, anti_aliasing=True, preserve_range=True)``."""
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        for (h, w), shape in [
            ((400, 310), (271, 200)),
            ((300, 300), (299, 150)),
            ((257, 90), (40, 89)),
        ]:
            img = (rng.random((h, w)) * 3 - 1).astype(dtype)
            expected = resize(img, shape, order=1, anti_aliasing=True, preserve_range=True)
            out = downscale(img, shape)
            assert out.dtype == expected.dtype
            assert out.shape == shape
            assert np.array_equal(out, expected), (dtype, h, w, shape)
    with_nan = rng.random((300, 200))
    with_nan[5, 7] = np.nan
    expected = resize(with_nan, (150, 100), order=1, anti_aliasing=True, preserve_range=True)
    assert np.array_equal(downscale(with_nan, (150, 100)), expected, equal_nan=True)
    with pytest.raises(ValueError, match="float"):
        downscale(np.zeros((10, 10), np.uint16), (5, 5))


def test_banded_blur_cuts_bands_only_where_they_pay() -> None:
    """Frames under ~800² or with too few rows for two bands (or a kernel wider than a
    band): one plain call; 1024² on two cores: two bands; a 3-D image is refused rather
    than blurred along the wrong axes."""
    assert band_cuts((1024, 1024), 3, 2) == [0, 512, 1024]
    assert band_cuts((2048, 2048), 3, 4) == [0, 512, 1024, 1536, 2048]
    assert band_cuts((700, 700), 3, 4) == [0, 700]
    assert band_cuts((1024, 1024), 300, 4) == [0, 1024]
    img = np.random.default_rng(0).random((2 * MIN_BAND_ROWS, 50)).astype(np.float32)
    # A kernel radius of 200 rows makes every band mostly margin: still the same values.
    assert np.array_equal(gaussian_filter(img, 50.0, bands=4), ndi.gaussian_filter(img, 50.0))
    assert 1 <= blur_threads() <= 4
    with pytest.raises(ValueError, match="2-D"):
        gaussian_filter(np.zeros((4, 4, 4), np.float32), 1.0)


def test_relabel_is_relabel_sequential() -> None:
    rng = np.random.default_rng(5)
    for dtype in (np.int32, np.int64, np.uint16, np.uint8):
        lab = rng.choice(np.array([0, 0, 0, 3, 7, 8, 40, 41, 200], dtype), size=(60, 70))
        expected, _, _ = relabel_sequential(lab)
        out = relabel(lab)
        assert out.dtype == np.int32
        assert np.array_equal(out, expected)
    assert np.array_equal(relabel(np.zeros((4, 5), np.int32)), np.zeros((4, 5), np.int32))
    assert relabel(np.zeros((0, 3), np.int32)).shape == (0, 3)
    with pytest.raises(ValueError, match="non-negative"):
        relabel(np.array([[-1, 2]]))


def test_relabel_drops_the_labels_not_kept() -> None:
    """``keep``: the removed objects become background and the rest are renumbered, as
    zeroing them before ``relabel_sequential`` did (labels past ``keep``'s end stay)."""
    lab = np.array([[0, 2, 2, 5], [5, 9, 9, 9], [1, 1, 0, 12]], np.int32)
    keep = np.bincount(lab.ravel()) >= 2  # label 12 (one pixel) is dropped
    before = lab.copy()
    before[np.isin(before, np.flatnonzero(~keep))] = 0
    assert np.array_equal(relabel(lab, keep=keep), relabel_sequential(before)[0])
    short = np.array([True, True, False])  # label 2 dropped; 5, 9, 12 beyond: kept
    assert np.array_equal(
        relabel(lab, keep=short),
        np.array([[0, 0, 0, 2], [2, 3, 3, 3], [1, 1, 0, 4]], np.int32),
    )


def _perimeter_by_full_frame_comparison(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pixels of each object with a 4-neighbour of another label or on the frame's edge,
    found by comparing every pair of neighbouring pixels of the frame (the code before)."""
    lab = np.maximum(mask, 0).astype(np.int64)
    edge = np.zeros(lab.shape, bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    rows = lab[1:] != lab[:-1]
    edge[1:] |= rows
    edge[:-1] |= rows
    cols = lab[:, 1:] != lab[:, :-1]
    edge[:, 1:] |= cols
    edge[:, :-1] |= cols
    return np.bincount(lab.ravel()[edge.ravel()], minlength=int(labels.max()) + 1)[labels]


def _eccentricity_by_pixel_sums(mask: np.ndarray, det: Detections) -> np.ndarray:
    """Eccentricity from second moments summed pixel by pixel (the code before the sums
    over runs of one label along the rows)."""
    lab = np.maximum(mask, 0).astype(np.int64)
    labels = det.labels.astype(np.int64)
    size = int(labels.max()) + 1
    ys, xs = np.nonzero(lab)
    flat = lab[ys, xs]
    area = np.maximum(det.areas.astype(np.float64), 1)
    ys, xs = ys.astype(np.float64), xs.astype(np.float64)
    cen = det.centroids.astype(np.float64)

    def mean(w: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=w, minlength=size)[labels] / area

    myy = mean(ys * ys) - cen[:, 0] ** 2
    mxx = mean(xs * xs) - cen[:, 1] ** 2
    mxy = mean(xs * ys) - cen[:, 0] * cen[:, 1]
    root = np.sqrt(np.maximum((myy - mxx) ** 2 / 4.0 + mxy**2, 0.0))
    l1 = (myy + mxx) / 2.0 + root
    l2 = np.maximum((myy + mxx) / 2.0 - root, 0.0)
    return np.sqrt(np.clip(1.0 - l2 / np.maximum(l1, 1e-9), 0.0, 1.0)).astype(np.float32)


@pytest.mark.usefixtures("small_bands")
def test_tracker_features_are_those_of_the_plain_computation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Label images of several integer types, objects on the frame's edges, large nuclei
    (the blurred path) and small ones: with ``exact`` (training), crops and morphology equal
    to the last bit to those with one plain ``ndi.gaussian_filter`` call and int64 labels;
    the perimeter equal to the full-frame comparison's, the eccentricity to that of moments
    summed pixel by pixel. The run-time path (float32 blur, bilinear sampling by hand) gives
    the same shapes, the same morphology except the brightness (float32 rounding) and crops
    equal to float32 rounding."""
    from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig

    cfg = SimulationConfig(
        seed=4,
        n_frames=2,
        height=2 * MIN_BAND_ROWS + 40,
        width=190,
        n_cells=30,
        nucleus_diameter_px=26,
    )
    for f in NucleiSimulator(cfg).frames():
        det = Detections.from_labels(f.labels)
        assert len(det) > 10
        border = np.concatenate([f.labels[[0, -1]].ravel(), f.labels[:, [0, -1]].ravel()])
        assert (border > 0).any()
        perimeter = _perimeter_by_full_frame_comparison(f.labels, det.labels)
        eccentricity = _eccentricity_by_pixel_sums(f.labels, det)
        for diameter in (26.0, 14.0):  # crops blurred (step > 1.5 px) and not
            with monkeypatch.context() as m:
                m.setattr(F, "gaussian_filter", ndi.gaussian_filter)
                plain = F.frame_features(
                    f.image, f.labels.astype(np.int64), det, diameter, exact=True
                )
            assert np.array_equal(plain.morph[:, 1], (perimeter / diameter).astype(np.float32))
            assert np.array_equal(plain.morph[:, 2], eccentricity)
            for mask in (f.labels, f.labels.astype(np.int64), f.labels.astype(np.uint16)):
                got = F.frame_features(f.image, mask, det, diameter, exact=True)
                assert np.array_equal(got.morph, plain.morph)
                assert np.array_equal(got.crops, plain.crops)
                fast = F.frame_features(f.image, mask, det, diameter)
                assert fast.crops.shape == plain.crops.shape
                assert np.array_equal(fast.crops[:, 1], plain.crops[:, 1])  # inside masks
                assert np.array_equal(fast.morph[:, :3], plain.morph[:, :3])
                np.testing.assert_allclose(fast.morph[:, 3], plain.morph[:, 3], atol=1e-5)
                np.testing.assert_allclose(fast.crops, plain.crops, atol=2e-4)
                if diameter == 26.0:  # the blurred path really differs from the plain one
                    assert not np.array_equal(fast.crops, plain.crops)


def test_shape_features_break_runs_at_row_starts() -> None:
    """An object at the end of one row and the start of the next (adjacent in memory, not in
    the frame), frames one pixel wide or high, a single object: the shape features from runs
    of one label are those of moments summed pixel by pixel."""
    masks = []
    m = np.zeros((6, 7), np.int32)
    m[0, 4:] = 1  # the end of row 0 …
    m[1, :3] = 1  # … and the start of row 1: one object, two runs
    m[2:5, 2:6] = 2
    m[5, :] = 3
    masks.append(m)
    masks.append(np.array([[1], [1], [0], [2], [2], [2]], np.int32))  # one pixel wide
    masks.append(np.array([[1, 1, 0, 2, 2, 2, 0, 1]], np.int32))  # one high; label 1 twice
    masks.append(np.ones((3, 4), np.int32))
    for mask in masks:
        det = Detections.from_labels(mask)
        image = (mask * 100 + 20).astype(np.uint16)
        got = F.frame_features(image, mask, det, 4.0, exact=True)
        assert np.array_equal(got.morph[:, 2], _eccentricity_by_pixel_sums(mask, det))
        perimeter = _perimeter_by_full_frame_comparison(mask, det.labels)
        assert np.array_equal(got.morph[:, 1], (perimeter / 4.0).astype(np.float32))


def test_float32_blur_is_scipys_blur_to_float32_rounding() -> None:
    """``gaussian_filter_f32``: SciPy's ``reflect`` blur of any 2-D frame (integer or
    float, tiny, one pixel wide, kernels wider than the frame), in float32, within float32
    rounding of SciPy's float64 sums; not the same to the last bit."""
    rng = np.random.default_rng(5)
    differs = False
    for h, w in [(300, 211), (7, 90), (90, 7), (1, 40), (3, 3)]:
        for dtype in (np.uint16, np.float32, np.float64):
            img = (rng.random((h, w)) * 4000).astype(dtype)
            for sigma, truncate in [(1.17, 2.5), (0.3, 2.5), (3.0, 4.0), (0.1, 4.0)]:
                expected = ndi.gaussian_filter(img.astype(np.float64), sigma, truncate=truncate)
                out = gaussian_filter_f32(img, sigma, truncate=truncate)
                assert out.dtype == np.float32
                assert out.shape == img.shape
                np.testing.assert_allclose(out, expected, rtol=0, atol=4000 * 1e-6)
                differs |= not np.array_equal(out, expected.astype(np.float32))
    assert differs
    with pytest.raises(ValueError, match="2-D"):
        gaussian_filter_f32(np.zeros((2, 3, 4), np.float32), 1.0)


def test_float32_blur_of_a_read_only_frame() -> None:
    """A float32 frame received over the socket is a read-only view: blurred as any other
    (no warning from torch, which the suite's settings make an error), and left as it was."""
    img = (np.random.default_rng(7).random((64, 48)) * 100).astype(np.float32)
    view = np.frombuffer(img.tobytes(), np.float32).reshape(img.shape)
    assert not view.flags.writeable
    out = gaussian_filter_f32(view, 1.17, truncate=2.5)
    np.testing.assert_array_equal(out, gaussian_filter_f32(img.copy(), 1.17, truncate=2.5))
    np.testing.assert_array_equal(view, img)


def test_bilinear_sampling_is_map_coordinates_nearest() -> None:
    """The crops' sampling by hand: ``map_coordinates(order=1, mode="nearest")`` at every
    point of each grid, inside the frame, on its edges and beyond them (the edge pixels
    continue)."""
    rng = np.random.default_rng(6)
    img = (rng.random((40, 57)) * 1000).astype(np.float32)
    ys = rng.uniform(-8, 48, (200, 5))
    xs = rng.uniform(-8, 65, (200, 7))
    ys[0] = [0.0, 39.0, 39.5, -0.5, 20.0]
    xs[0, :5] = [0.0, 56.0, 56.5, 3.0, -1.0]
    yy, xx = np.broadcast_arrays(ys[:, :, None], xs[:, None, :])
    expected = ndi.map_coordinates(img, np.stack([yy.ravel(), xx.ravel()]), order=1, mode="nearest")
    got = F._bilinear_grids(img, ys, xs)
    assert got.shape == (200, 5, 7)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.ravel(), expected, rtol=0, atol=1e-3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.usefixtures("small_bands")
def test_banded_blur_works_in_a_forked_child() -> None:
    """The thread pool started in the parent does not survive a fork: the child starts
    its own (without that, the child's first banded blur would wait forever)."""
    img = np.random.default_rng(1).random((3 * MIN_BAND_ROWS, 64)).astype(np.float32)
    expected = ndi.gaussian_filter(img, 1.0)
    assert np.array_equal(gaussian_filter(img, 1.0, bands=2), expected)  # pool started
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_blur_in_child, (img,))
        assert np.array_equal(result.get(timeout=60), expected)


def _blur_in_child(img: np.ndarray) -> np.ndarray:
    return gaussian_filter(img, 1.0, bands=2)


def test_training_features_take_the_exact_path() -> None:
    """The tracker's training data is built with SciPy's blur and sampling (``exact``), so
    the shipped weights reproduce to the bit; the run-time path differs in the last bits."""
    from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig

    from livetrack.track.model import TrackNetConfig
    from livetrack.training.track import movie_from_frames

    cfg = SimulationConfig(seed=7, n_frames=2, height=160, width=150, n_cells=12)
    frames = list(NucleiSimulator(cfg).frames())
    cfg_model = TrackNetConfig()
    movie = movie_from_frames(
        [f.image for f in frames], [f.labels for f in frames], {}, cfg_model, window=3
    )
    last = frames[-1]
    det = Detections.from_labels(last.labels)
    diameter = movie.frames[-1].diameter
    assert diameter * cfg_model.crop_diameters / F.CROP > 1.5  # the blurred path
    kwargs = {"crop_diameters": cfg_model.crop_diameters}
    exact = F.frame_features(last.image, last.labels, det, diameter, exact=True, **kwargs)
    fast = F.frame_features(last.image, last.labels, det, diameter, **kwargs)
    assert np.array_equal(movie.frames[-1].crops, exact.crops)
    assert not np.array_equal(movie.frames[-1].crops, fast.crops)
