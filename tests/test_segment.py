"""The classical segmenter and nucleus-scale handling, on hand-made images and CTC data."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from livetrack.config import SegmentConfig
from livetrack.errors import ConfigError
from livetrack.segment.base import Segmenter
from livetrack.segment.classical import ClassicalSegmenter, distance_inside
from livetrack.segment.factory import make_segmenter
from livetrack.segment.scale import (
    DETECTION_SCALE_LIMIT,
    NucleusScale,
    estimate_diameter,
    resolve_diameter,
)
from livetrack.types import Detections, ScaleState
from tests.conftest import GOWT1, SIM_PLUS, integer_frames, needs_data


def discs(
    shape: tuple[int, int],
    centres: list[tuple[float, float]],
    diameter: float,
    *,
    noise: float = 0.0,
    seed: int = 0,
    brightness: list[float] | None = None,
) -> np.ndarray:
    """uint16 image of bright discs on a dark background (+ optional Gaussian noise)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 100.0)
    for i, (cy, cx) in enumerate(centres):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2
        img[inside] += 1000.0 * (brightness[i] if brightness else 1.0)
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def grid_centres(n: int, spacing: float, offset: float) -> list[tuple[float, float]]:
    return [(offset + i * spacing, offset + j * spacing) for i in range(n) for j in range(n)]


def test_isolated_discs_are_counted_exactly() -> None:
    img = discs((200, 200), grid_centres(3, 60, 40), 24, noise=20)
    seg = ClassicalSegmenter().predict(img)
    assert len(seg.detections) == 9
    assert seg.mask.shape == img.shape
    assert seg.mask.dtype == np.int32
    assert sorted(np.unique(seg.mask)[1:].tolist()) == list(range(1, 10))  # sequential
    # each detection sits on a disc centre
    centres = np.array(grid_centres(3, 60, 40))
    d = np.linalg.norm(seg.detections.centroids[:, None] - centres[None], axis=2)
    assert d.min(axis=1).max() < 2.0


def test_two_touching_nuclei_come_out_as_two_labels() -> None:
    img = discs((120, 160), [(60, 60), (60, 60 + 26)], 28, noise=10)
    seg = ClassicalSegmenter(SegmentConfig(nucleus_diameter_px=28)).predict(img)
    assert len(seg.detections) == 2
    left, right = sorted(seg.detections.centroids[:, 1])
    assert left < 73 < right


@pytest.mark.parametrize(
    "image", [np.zeros((64, 64), np.uint16), np.full((64, 64), 500, np.uint16)]
)
def test_empty_and_constant_frames_give_no_objects(image: np.ndarray) -> None:
    seg = ClassicalSegmenter().predict(image)
    assert len(seg.detections) == 0
    assert not seg.mask.any()


def test_pure_noise_gives_no_objects() -> None:
    noise = np.random.default_rng(1).normal(1000, 30, (256, 256)).astype(np.uint16)
    assert len(ClassicalSegmenter().predict(noise).detections) == 0


def test_dim_nuclei_next_to_bright_ones_are_found() -> None:
    centres = grid_centres(3, 70, 45)
    bright = [1.0, 0.08, 1.0, 0.08, 1.0, 0.08, 1.0, 0.08, 1.0]  # 12× dimmer
    img = discs((230, 230), centres, 30, noise=8, brightness=bright)
    seg = ClassicalSegmenter(SegmentConfig(nucleus_diameter_px=30)).predict(img)
    assert len(seg.detections) == 9


def test_dtype_does_not_change_the_result() -> None:
    base = discs((160, 160), grid_centres(2, 70, 45), 26, noise=15)
    scaled = (base.astype(np.float64) - 100) / 1100 * 200 + 20  # into uint8 range
    results = [
        ClassicalSegmenter(SegmentConfig(nucleus_diameter_px=26)).predict(img).mask
        for img in (base, base.astype(np.float32), scaled.astype(np.uint8))
    ]
    assert all(len(np.unique(m)) - 1 == 4 for m in results)
    for m in results[1:]:
        overlap = np.count_nonzero((m > 0) & (results[0] > 0)) / np.count_nonzero(results[0])
        assert overlap > 0.9


def test_per_component_distance_matches_the_global_transform() -> None:
    """The per-bounding-box distance transform used for speed equals scipy's on the whole
    frame for components that do not touch, including ones cut by the frame border."""
    img = discs((150, 170), [(40, 40), (40, 100), (110, 70), (5, 160), (140, 5)], 30)
    comps, n = ndi.label(img > 500)
    assert n == 5
    fast = distance_inside(comps)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, ndi.distance_transform_edt(comps > 0), atol=1e-5)


def test_three_dimensional_input_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        ClassicalSegmenter().predict(np.zeros((2, 8, 8), np.uint16))


@pytest.mark.parametrize("diameter", [8.0, 12.0, 24.0, 48.0])
def test_diameter_is_estimated_from_the_image(diameter: float) -> None:
    spacing = diameter * 2.2
    n = 4
    size = int(spacing * (n + 1))
    img = discs((size, size), grid_centres(n, spacing, spacing), diameter, noise=20, seed=2)
    est = estimate_diameter(img)
    assert est is not None
    assert est == pytest.approx(diameter, rel=0.25)


def test_diameter_from_clumped_nuclei_is_not_inflated() -> None:
    """Pairs of touching nuclei plus a few singles: the clumps must not drive the estimate."""
    centres = []
    for i in range(4):
        for j in range(3):
            cy, cx = 40 + i * 70, 40 + j * 90
            centres += [(cy, cx), (cy, cx + 22)]
    centres += [(330, 60), (330, 160), (330, 260), (400, 110)]
    img = discs((450, 320), centres, 24, noise=10)
    est = estimate_diameter(img)
    assert est is not None
    assert est == pytest.approx(24, rel=0.25)


@pytest.mark.parametrize("centres", [[(70.0, 90.0)], [(60.0, 60.0), (150.0, 170.0)]])
def test_a_sparse_field_of_one_or_two_nuclei_is_measured(
    centres: list[tuple[float, float]],
) -> None:
    """The first frames of a run often hold one or two cells: their scale is measured (it
    used to need three objects, and such frames came out empty)."""
    img = discs((220, 240), centres, 26, noise=20)
    est = estimate_diameter(img)
    assert est is not None
    assert est == pytest.approx(26, rel=0.15)
    seg = ClassicalSegmenter().predict(img)
    assert len(seg.detections) == len(centres)


@pytest.mark.parametrize(
    ("centres", "diameter", "why"),
    [
        ([(0.0, 100.0)], 26, "the only object is cut by the frame's edge"),
        ([(110.0, 120.0)], 120, "the only object spans half the frame"),
        ([(60.0, 60.0), (60.0, 82.0)], 26, "the only object is two touching nuclei"),
    ],
)
def test_a_sparse_field_is_not_measured_on_objects_that_may_not_be_one_nucleus(
    centres: list[tuple[float, float]], diameter: float, why: str
) -> None:
    img = discs((220, 240), centres, diameter, noise=20)
    assert estimate_diameter(img) is None, why


def test_a_frame_without_an_estimate_after_frames_with_nuclei_is_not_emptied() -> None:
    """Two nuclei, then a frame in which they touch (one object, no single nucleus to
    measure): segmented at the earlier frames' scale, not returned empty."""
    apart = discs((200, 220), [(60.0, 60.0), (140.0, 160.0)], 26, noise=20)
    touching = discs((200, 220), [(100.0, 90.0), (100.0, 113.0)], 26, noise=20)
    assert estimate_diameter(touching) is None
    seg = ClassicalSegmenter()
    seg.predict(apart)
    second = seg.predict(touching)
    assert second.info["diameter_px"] == pytest.approx(26, rel=0.15)
    assert len(second.detections) >= 1
    fresh = ClassicalSegmenter().predict(touching)  # with no earlier frame: nothing
    assert len(fresh.detections) == 0


def test_a_movie_of_one_nucleus_is_tracked_in_every_frame() -> None:
    """End to end with the defaults (learned segmenter, no diameter given)."""
    from livetrack.simulators.nuclei import NucleiSimulator, SimulationConfig

    from livetrack.api import track

    cfg = SimulationConfig(seed=5, n_frames=6, n_cells=1, height=160, width=160)
    frames = list(NucleiSimulator(cfg).frames())
    assert all(len(np.unique(f.labels)) == 2 for f in frames)
    table = track([f.image for f in frames]).tracks
    assert table.groupby("t").size().reindex(range(6), fill_value=0).tolist() == [1] * 6
    assert table.track.nunique() == 1


def test_diameter_resolution_order() -> None:
    assert resolve_diameter(30.0, 10.0, 0.5) == 30.0
    assert resolve_diameter(None, 10.0, 0.5) == pytest.approx(20.0)
    assert resolve_diameter(None, 10.0, None) is None
    assert resolve_diameter(None, None, 0.5) is None


def test_pixel_size_route_and_large_nuclei_are_downscaled() -> None:
    # 60 px nuclei at 0.25 µm/px = 15 µm: segmented at the canonical scale, labels returned
    # at full resolution.
    img = discs((400, 400), grid_centres(2, 160, 120), 60, noise=20)
    cfg = SegmentConfig(nucleus_diameter_um=15.0)
    seg = ClassicalSegmenter(cfg).predict(img, pixel_size_um=0.25)
    assert seg.info["diameter_px"] == pytest.approx(60.0)
    assert seg.mask.shape == (400, 400)
    assert len(seg.detections) == 4
    # Thresholding in log space puts the outline in the outer part of the (smoothed) edge:
    # sharp synthetic discs come out ~30% larger in area; real, blurred nuclei ~10% (SIM+).
    expected_area = np.pi * 30**2
    assert np.all(np.abs(seg.detections.areas - expected_area) < 0.4 * expected_area)
    assert np.ptp(seg.detections.areas) < 0.05 * expected_area


def test_estimated_diameter_is_kept_for_the_position() -> None:
    seg = ClassicalSegmenter(SegmentConfig(auto_diameter_frames=2))
    img = discs((200, 200), grid_centres(3, 60, 40), 24, noise=20)
    seg.predict(img)
    seg.predict(img)
    kept = seg.diameter_px
    big = discs((400, 400), grid_centres(3, 120, 80), 48, noise=20)
    seg.predict(big)  # a very different frame does not change the settled scale
    assert seg.diameter_px == kept


def test_estimated_diameter_follows_nuclei_that_shrink() -> None:
    """Once settled, the diameter is measured again every ``rescale_every`` frames and
    follows the median of the latest measurements (nuclei shrink as a population grows
    denser); with ``rescale_every=0`` it stays at the first estimate."""
    large = discs((240, 240), grid_centres(3, 70, 50), 32, noise=20)
    small = discs((240, 240), grid_centres(4, 50, 40), 18, noise=20)
    movie = [large] * 3 + [small] * 8

    def diameters(config: SegmentConfig) -> list[float]:
        seg = ClassicalSegmenter(config)
        out = []
        for img in movie:
            seg.predict(img)
            assert seg.diameter_px is not None
            out.append(seg.diameter_px)
        return out

    following = diameters(SegmentConfig(rescale_every=2, auto_diameter_frames=3))
    fixed = diameters(SegmentConfig(rescale_every=0, auto_diameter_frames=3))
    first = fixed[2]
    assert fixed[3:] == [first] * 8
    assert following[:5] == [first] * 5  # one small measurement among three: median unchanged
    assert following[-1] == pytest.approx(18, rel=0.25)  # two of three small: it follows
    assert following[-1] < 0.75 * first


def test_factory_and_protocol() -> None:
    seg = make_segmenter(SegmentConfig(method="classical"))
    assert isinstance(seg, Segmenter)
    assert seg.name == "classical"
    default = make_segmenter(SegmentConfig())
    assert isinstance(default, Segmenter)
    assert default.name == "learned"  # the default since the learned model beat classical
    with pytest.raises(ConfigError):
        make_segmenter(SegmentConfig.model_construct(method="nope"))  # type: ignore[arg-type]


def _object_recall_precision(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    both = (g > 0) & (p > 0)
    pairs, inter = np.unique(np.stack([g[both], p[both]]), axis=1, return_counts=True)
    iou = inter / (np.bincount(g)[pairs[0]] + np.bincount(p)[pairs[1]] - inter)
    return int((iou >= 0.5).sum()), len(np.unique(g)) - 1, len(np.unique(p)) - 1


@needs_data
@pytest.mark.data
def test_object_f1_on_ctc_sequences() -> None:
    seg = ClassicalSegmenter()
    tp = n_gt = n_pred = 0
    for idx in (0, 20, 40, 60):
        img = tifffile.imread(SIM_PLUS / "01" / f"t{idx:03d}.tif")
        gt = tifffile.imread(SIM_PLUS / "01_GT" / "SEG" / f"man_seg{idx:03d}.tif")
        a, b, c = _object_recall_precision(gt, seg.predict(img).mask)
        tp, n_gt, n_pred = tp + a, n_gt + b, n_pred + c
    f1 = 2 * tp / (n_gt + n_pred)
    assert f1 > 0.9  # measured 0.975 over all 65 frames
    assert seg.diameter_px == pytest.approx(54.6, rel=0.2)  # GT median equivalent diameter

    seg = ClassicalSegmenter()
    found = annotated = 0
    for f in sorted((GOWT1 / "01_GT" / "SEG").glob("man_seg*.tif"))[:8]:
        idx = int(f.stem.removeprefix("man_seg"))
        img = tifffile.imread(GOWT1 / "01" / f"t{idx:03d}.tif")
        a, b, _ = _object_recall_precision(tifffile.imread(f), seg.predict(img).mask)
        found, annotated = found + a, annotated + b
    assert found / annotated > 0.8  # sparse SEG: recall of annotated nuclei; measured 0.94


def _disc_detections(diameter: float, n: int = 9) -> Detections:
    """Detections of ``n`` discs of ``diameter`` (what a segmenter found)."""
    size = int(diameter * 2.5 * (n**0.5 + 1))
    img = discs((size, size), grid_centres(int(n**0.5), diameter * 2.5, diameter * 2), diameter)
    labels, _ = ndi.label(img > 500)
    return Detections.from_labels(labels)


def test_scale_from_detections_measures_what_the_segmenter_found() -> None:
    """scale_source "detections": the first frame is segmented at the image estimate, and
    every measurement is the median equivalent diameter of the frame's detections, within
    DETECTION_SCALE_LIMIT of the image estimate; with too few detections, the image
    estimate itself. The learned segmenter measures this way by default, the classical one
    from the image."""
    img = discs((240, 240), grid_centres(3, 70, 50), 24, noise=20)
    image_estimate = estimate_diameter(img)
    assert image_estimate is not None
    scale = NucleusScale(SegmentConfig(scale_source="detections", auto_diameter_frames=3))
    used = []
    for found in (20.0, 20.0, 20.0):
        used.append(scale.for_frame(img, None))
        scale.observe(_disc_detections(found))
        assert scale.last_estimate == pytest.approx(20.0, rel=0.03)
    assert used[0] == image_estimate  # nothing segmented yet: the image estimate
    assert used[1] == pytest.approx(20.0, rel=0.03)  # then the detections' measurements
    assert scale.for_frame(img, None) == pytest.approx(20.0, rel=0.03)  # settled

    bounded = NucleusScale(SegmentConfig(scale_source="detections", auto_diameter_frames=1))
    bounded.for_frame(img, None)
    bounded.observe(_disc_detections(60.0))  # merged or wrong: held near the image
    assert bounded.last_estimate == pytest.approx(image_estimate * DETECTION_SCALE_LIMIT)
    few = NucleusScale(SegmentConfig(scale_source="detections", auto_diameter_frames=1))
    few.for_frame(img, None)
    few.observe(_disc_detections(20.0, n=1))
    assert few.last_estimate == image_estimate

    image = NucleusScale(SegmentConfig(scale_source="image", auto_diameter_frames=1))
    assert image.for_frame(img, None) == image_estimate
    image.observe(_disc_detections(20.0))  # ignored
    assert image.last_estimate == image_estimate
    assert image.for_frame(img, None) == image_estimate

    assert not ClassicalSegmenter(SegmentConfig())._scale.from_detections
    assert ClassicalSegmenter(SegmentConfig(scale_source="detections"))._scale.from_detections


def _stored_state(used: list[float], measured: list[float | None], window: int) -> ScaleState:
    """The ScaleState the store gives after these frames (``Store.scale_state``: the latest
    ``window`` measurements, the frames after the last one, the last frame's diameter)."""
    taken = [i for i, m in enumerate(measured) if m is not None]
    return ScaleState(
        estimates=tuple(float(measured[i]) for i in taken[-window:]),  # type: ignore[arg-type]
        frames_since=len(used) - 1 - taken[-1] if taken else len(used),
        last_diameter=used[-1] if used else None,
        smallest_diameter=_settled_floor(used, measured, window - 1),
    )


def _settled_floor(used: list[float], measured: list[float | None], n: int) -> float | None:
    """The smallest diameter used on a frame after the n-th measurement (None before)."""
    taken = [i for i, m in enumerate(measured) if m is not None]
    after = used[taken[n - 1] + 1 :] if len(taken) >= n else []
    return min(after) if after else None


@pytest.mark.parametrize("source", ["detections", "image"])
def test_a_restored_scale_goes_on_exactly_wherever_the_run_stopped(source: str) -> None:
    """Cut after every frame — before the scale settles, on the frame it settles, on a
    re-measured frame that moves it and on one that does not: a scale restored from the
    stored state (window + 1 measurements, as the worker asks for) goes on with exactly
    the diameters of the uninterrupted one. Detections shrink during the movie, so the
    scale follows them (measured from the detections, it moves after a frame was already
    segmented: the restore has to replay that step); then they read large again (merged
    nuclei), and the scale stops at ``max_scale_rise`` above the smallest it used."""
    cfg = SegmentConfig(scale_source=source, auto_diameter_frames=3, rescale_every=2)  # type: ignore[arg-type]
    small = discs((240, 240), grid_centres(4, 50, 40), 18, noise=20)
    large = discs((240, 240), grid_centres(3, 70, 50), 26, noise=20)
    movie = [large] * 6 + [small] * 8 + [large] * 8
    found = [26.0] * 6 + [21.0] * 8 + [40.0] * 8

    def run(scale: NucleusScale, frames: range) -> tuple[list[float], list[float | None]]:
        used, measured = [], []
        for i in frames:
            d = scale.for_frame(movie[i], None)
            assert d is not None
            scale.observe(_disc_detections(found[i]))
            used.append(d)
            measured.append(scale.last_estimate)
        return used, measured

    used, measured = run(NucleusScale(cfg), range(len(movie)))
    assert len(set(used[4:14])) > 1  # the scale moved after it settled
    assert cfg.max_scale_rise is not None
    floor = _settled_floor(used, measured, cfg.auto_diameter_frames)
    assert floor is not None
    cap = floor * cfg.max_scale_rise
    assert max(used[14:]) == pytest.approx(cap)  # it rose again, up to the limit
    assert max(m for m in measured[14:] if m is not None) > cap * 1.02  # measured above it
    unlimited, _ = run(NucleusScale(cfg.model_copy(update={"max_scale_rise": None})), range(22))
    assert max(unlimited[14:]) > cap * 1.02  # before the limit existed: it followed
    n = cfg.auto_diameter_frames
    for cut in range(1, len(movie)):
        resumed = NucleusScale(cfg)
        resumed.restore(_stored_state(used[:cut], measured[:cut], n + 1))
        again, _ = run(resumed, range(cut, len(movie)))
        assert again == used[cut:], f"cut after frame {cut - 1}"


def test_the_rise_limit_counts_from_the_settled_scale_not_the_first_guess() -> None:
    """The first frame is segmented at the image estimate; when that guess is far too small
    it must not cap the run: the limit counts only frames after the scale settled."""
    small = discs((240, 240), grid_centres(4, 50, 40), 14, noise=20)
    large = discs((240, 240), grid_centres(3, 70, 50), 26, noise=20)
    cfg = SegmentConfig(scale_source="detections", auto_diameter_frames=3, rescale_every=1)
    scale = NucleusScale(cfg)
    used = []
    for image, found in [(small, 26.0)] + [(large, 26.0)] * 5 + [(large, 31.0)] * 6:
        d = scale.for_frame(image, None)
        assert d is not None
        used.append(d)
        scale.observe(_disc_detections(found))
    assert cfg.max_scale_rise is not None
    assert used[0] * cfg.max_scale_rise < 30.0  # the first guess would have capped it
    assert used[-1] == pytest.approx(31.0, rel=0.03)  # followed: 31 < 1.25 x 26


def test_one_frames_histogram_is_counted_once_and_only_for_that_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside ``one_frame(image)`` every percentile of that very array comes from one
    histogram, with the same values as without it; another array (even with the same
    values), or the same array after the block, is counted afresh."""
    from livetrack import percentile as P

    frame = next(integer_frames(3, 1, 80))
    other = frame.copy()
    expected = (P.frame_percentiles(frame, (5.0,)), P.frame_percentiles(frame, (1.0, 99.8)))
    counted: list[int] = []
    real = P._histogram

    def counting(arr: np.ndarray) -> tuple[np.ndarray, int]:
        counted.append(arr.size)
        return real(arr)

    monkeypatch.setattr(P, "_histogram", counting)
    with P.one_frame(frame):
        got = (P.frame_percentiles(frame, (5.0,)), P.frame_percentiles(frame, (1.0, 99.8)))
        assert len(counted) == 1
        assert P.frame_percentiles(other, (5.0,)) == expected[0]
        assert len(counted) == 2
        with P.one_frame(other):  # nested: the inner frame's own
            P.frame_percentiles(frame, (5.0,))
            assert len(counted) == 3
        P.frame_percentiles(frame, (1.0,))
        assert len(counted) == 3  # the outer frame's histogram again
    assert got == expected
    frame[0, 0] += 1  # the block has ended: nothing is held, the frame is counted afresh
    P.frame_percentiles(frame, (5.0,))
    assert len(counted) == 4


def test_normalise_is_numpys_percentile_normalisation_to_the_last_bit() -> None:
    """``normalise`` takes its percentiles from a histogram for integer frames
    (``frame_percentiles``): the result is the same array as with ``np.percentile``."""
    from livetrack.percentile import frame_percentiles
    from livetrack.segment.scale import normalise

    rng = np.random.default_rng(7)
    for frame in integer_frames(7, 200, 90):
        img = frame.astype(np.float32)
        qs = (1.0, 99.8, float(rng.uniform(0, 100)))
        assert frame_percentiles(frame, qs) == tuple(float(np.percentile(img, q)) for q in qs)
        listed = frame_percentiles(frame, qs, as_list=True)
        assert listed == tuple(float(v) for v in np.percentile(img, list(qs)))
        lo, hi = np.percentile(img, [1.0, 99.8])
        expected = np.zeros_like(img) if hi - lo <= 1e-12 else (img - lo) / (hi - lo)
        out = normalise(frame)
        assert out.dtype == expected.dtype
        assert np.array_equal(out, expected)
    floats = rng.normal(100, 10, (50, 60)).astype(np.float32)
    lo, hi = np.percentile(floats, [1.0, 99.8])
    assert np.array_equal(normalise(floats), (floats - lo) / (hi - lo))
