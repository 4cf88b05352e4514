"""Nucleus scale: which diameter to use for a frame, and estimating it from the image.

Kept apart from any one segmenter so the learned model can reuse it.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from livetrack.blur import gaussian_filter
from livetrack.config import SegmentConfig
from livetrack.percentile import frame_percentiles
from livetrack.types import Detections, LabelImage, ScaleState, Segmentation

log = logging.getLogger("livetrack.segment.scale")

MIN_ESTIMATE_OBJECTS = 3
"""Fewer foreground objects than this and the estimate rests on the sparse-field rule
(``SPARSE_MAX_FRACTION``): isolated single nuclei only."""
SPARSE_MAX_FRACTION = 0.25
"""A sparse field (fewer than ``MIN_ESTIMATE_OBJECTS`` objects): an object counts towards
the estimate only if it is a single nucleus by shape, does not touch the frame's edge and
is at most this fraction of the frame's shorter side across. The first frames of a run
often hold one or two cells; without this rule they were empty until a third appeared.
Such a measurement counts like any other: a run whose first frames show only a speck of
dust of nucleus shape settles on its size, and ``max_scale_rise`` then holds the scale
near it when the nuclei come (a known limit; give ``nucleus_diameter_px`` there)."""
DETECTION_SCALE_LIMIT = 1.5
"""A scale measured from a frame's detections stays within this factor of the frame's image
estimate (either way): a bound on how far merged or split nuclei can move the scale."""
SINGLE_NUCLEUS_RATIO = 1.8
"""Components with area below this × π r² (r: largest inscribed radius) count as single
nuclei when estimating the diameter."""


def normalise(
    image: NDArray[np.generic], low: float = 1.0, high: float = 99.8
) -> NDArray[np.floating[Any]]:
    """Percentile normalisation to ~[0, 1] (float64: the percentiles are float64; float32
    for a flat image, which maps to zeros)."""
    img = np.asarray(image, dtype=np.float32)
    # np.percentile(img, [low, high]); from a histogram for integer frames (same values)
    fast = frame_percentiles(image, (low, high), as_list=True)
    lo, hi = np.percentile(img, [low, high]) if fast is None else map(np.float64, fast)
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12:
        return np.zeros_like(img)
    return (img - lo) / (hi - lo)


LOG_OFFSET = 0.02
"""Added to normalised intensities before the log, so the background noise floor does not
dominate the log histogram."""


def foreground(
    smoothed: NDArray[np.float32],
    min_contrast: float,
    *,
    log_space: bool = True,
    dim_sigma: float = 0.0,
) -> NDArray[np.bool_] | None:
    """Otsu foreground of a smoothed, normalised image, or None when the two classes are
    not separated by ``min_contrast`` background standard deviations (no nuclei).

    In ``log_space`` the threshold is found on log intensities: nuclei of one movie often
    differ several-fold in brightness (cell cycle, expression), and a linear Otsu threshold
    then falls between bright and dim nuclei instead of between nuclei and background.
    With ``dim_sigma`` > 0, isolated dim objects are added (see ``dim_objects``).
    """
    if float(smoothed.max()) - float(smoothed.min()) <= 1e-6:
        return None
    x = np.log(np.clip(smoothed, 0.0, None) + LOG_OFFSET) if log_space else smoothed
    t = threshold_otsu(x)
    mask = x > t
    fg, bg = x[mask], x[~mask]
    if fg.size == 0 or bg.size == 0:
        return None
    bg_std = float(bg.std()) or 1e-6
    if (float(fg.mean()) - float(bg.mean())) / bg_std < min_contrast:
        return None
    if dim_sigma > 0:
        mask |= dim_objects(smoothed, mask, dim_sigma)
    return mask


def noise_floor(x: NDArray[np.float32]) -> tuple[float, float]:
    """Background level (histogram mode) and noise (RMS spread of the values below it)."""
    hist, edges = np.histogram(x, bins=512)
    i = int(hist.argmax())
    mode = float(edges[i] + edges[i + 1]) / 2
    below = x[x < mode]
    sigma = float(np.sqrt(np.mean((below - mode) ** 2))) if below.size > 100 else 0.0
    return mode, sigma


def dim_objects(
    smoothed: NDArray[np.float32], bright: NDArray[np.bool_], dim_sigma: float
) -> NDArray[np.bool_]:
    """Connected regions above ``background + dim_sigma × noise`` that do not touch the
    bright foreground: dim nuclei a global threshold misses. Regions that touch it are left
    out so bright nuclei keep their tight (Otsu) outlines."""
    mode, sigma = noise_floor(smoothed)
    if sigma <= 0:
        return np.zeros_like(bright)
    low, n = ndi.label(smoothed > mode + dim_sigma * sigma)
    touches = np.zeros(n + 1, bool)
    touches[np.unique(low[bright])] = True
    touches[0] = True
    return np.asarray(~touches[low])


def estimate_diameter(image: NDArray[np.generic], min_contrast: float = 3.0) -> float | None:
    """Typical nucleus diameter in pixels, from the image alone, or None if unsure
    (``measure_diameter`` without saying whether the field was sparse)."""
    found = measure_diameter(image, min_contrast)
    return None if found is None else found[0]


def measure_diameter(
    image: NDArray[np.generic], min_contrast: float = 3.0
) -> tuple[float, bool] | None:
    """Typical nucleus diameter in pixels, from the image alone, and whether it rests on a
    sparse field (fewer than ``MIN_ESTIMATE_OBJECTS`` objects: ``SPARSE_MAX_FRACTION``), or
    None if unsure.

    Foreground by Otsu on a lightly smoothed image. Components whose area is close to
    their largest inscribed disc's are single nuclei; the median equivalent diameter of
    those is the estimate. Crowded frames where few components are single fall back on
    twice the median inscribed radius (one nucleus wide even inside clumps) × 1.15, the
    inscribed-to-equivalent ratio of an ellipse of axis ratio ~1.3.
    """
    img = normalise(image)
    step = max(1, int(max(img.shape) // 1024))  # big frames: estimate on a subsampled copy
    if step > 1:
        img = img[::step, ::step]
    first = _estimate(img, 2.0, min_contrast)
    if first is None:
        return None
    # The smoothing widens small nuclei by ~its sigma: re-measure with a sigma suited to
    # the first estimate (only ever smaller, so noise stays averaged for big nuclei).
    sigma = float(np.clip(0.06 * first[0], 0.7, 2.0))
    second = _estimate(img, sigma, min_contrast) if sigma < 2.0 else first
    return None if second is None else (second[0] * step, second[1])


def _estimate(
    img: NDArray[np.float32], sigma: float, min_contrast: float
) -> tuple[float, bool] | None:
    smoothed = gaussian_filter(img, sigma)
    mask = foreground(smoothed, min_contrast)
    if mask is None:
        return None
    mask = ndi.binary_opening(mask, iterations=1)
    labels, n = ndi.label(mask)
    if n == 0:
        return None
    dist = ndi.distance_transform_edt(mask)
    # The largest inscribed radius of each component: ndi.maximum's values, without its
    # sort of the whole frame (~0.1 s at 1024²); distances are >= 0, so 0 starts the max.
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    radii = np.zeros(n + 1)
    np.maximum.at(radii, flat[fg], dist.ravel()[fg])
    radii = radii[1:]
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    real = radii >= 2.0  # specks of noise
    # A single nucleus (an ellipse of axis ratio up to ~1.8) has an area of at most ~1.8×
    # the disc inscribed in it; clumps of touching nuclei have more. Measure singles only.
    single = areas < SINGLE_NUCLEUS_RATIO * np.pi * radii**2
    if np.count_nonzero(real) >= MIN_ESTIMATE_OBJECTS:
        if np.count_nonzero(single & real) >= MIN_ESTIMATE_OBJECTS:
            return float(2.0 * np.sqrt(np.median(areas[single & real]) / np.pi)), False
        return float(2.0 * np.median(radii[real]) * 1.15), False
    # A sparse field: only isolated single nuclei inside the frame, small against it.
    edge = np.zeros(n + 1, bool)
    edge[labels[0]] = edge[labels[-1]] = edge[labels[:, 0]] = edge[labels[:, -1]] = True
    diameter = 2.0 * np.sqrt(areas / np.pi)
    small = diameter <= SPARSE_MAX_FRACTION * min(img.shape)
    ok = real & single & small & ~edge[1:]
    if not np.any(ok):
        return None
    return float(np.median(diameter[ok])), True


def resolve_diameter(
    nucleus_diameter_px: float | None,
    nucleus_diameter_um: float | None,
    pixel_size_um: float | None,
) -> float | None:
    """The configured diameter in pixels, or None when it must be estimated."""
    if nucleus_diameter_px is not None:
        return nucleus_diameter_px
    if nucleus_diameter_um is not None and pixel_size_um:
        return nucleus_diameter_um / pixel_size_um
    return None


def check_frame(image: NDArray[np.generic]) -> None:
    """Segmenters take one 2-D plane of real numbers; anything else is a clear error."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise ValueError(f"expected a numeric frame, got dtype {image.dtype}")


class NucleusScale:
    """The nucleus diameter one position's segmenter uses, frame after frame.

    A configured diameter (px, or µm with the frame's pixel size) wins. Otherwise the
    diameter is estimated from each frame until ``auto_diameter_frames`` frames with
    nuclei were seen; their median is then used. Every ``rescale_every`` frames after
    that it is measured again and the median of the latest ``auto_diameter_frames``
    measurements replaces the diameter in use when it moved by more than
    ``rescale_tolerance``: nuclei shrink as a population grows denser.

    What a measurement is (``SegmentConfig.scale_source``): "detections" — the
    median equivalent diameter of the nuclei the segmenter found in the measured frame,
    the quantity its model was trained to see at its canonical size; the image estimate
    (``estimate_diameter``) starts the first frame and bounds the first measurements to
    within ``DETECTION_SCALE_LIMIT`` of itself; once settled, each re-measurement is
    bounded so around the scale in use (no image estimate: it costs ~0.3 s at 1024²), and
    ``max_scale_rise`` stops merges feeding on themselves. "image" — the image estimate
    alone (before that setting existed): it reads nuclei larger than they are where their
    edges are soft or they touch, and the model then sees them smaller than it was trained
    on. The learned segmenter measures from its detections by default, the classical one
    from the image.
    """

    def __init__(self, config: SegmentConfig, *, detections_by_default: bool = False) -> None:
        self.config = config
        source = config.scale_source
        self.from_detections = source == "detections" or (source is None and detections_by_default)
        """Measurements from the detections (else from the image alone)."""
        self._estimates: list[float] = []
        self._settled: float | None = None
        self._since_estimate = 0
        self.last: float | None = None
        """The diameter used for the last frame with nuclei (None before any)."""
        self.last_estimate: float | None = None
        """The measurement made on the last frame (None when that frame was not measured).
        Stored with the frame so a resumed run rebuilds the same scale."""
        self._pending: float | None = None
        """scale_source "detections": this frame is measured from its detections once they
        are known (``observe``); the frame's image estimate, which bounds the measurement."""
        self._smallest: float | None = None
        """The smallest diameter a frame was segmented with once the scale had settled
        (frames after the ``auto_diameter_frames``-th measurement): the scale never rises
        more than ``max_scale_rise`` above it. Frames before do not count: an early
        estimate off by much would cap the whole run (restored from the store)."""
        self._measured = 0
        """Measurements made so far (the restore needs only whether it reached the window)."""

    def for_frame(self, image: NDArray[np.generic], pixel_size_um: float | None) -> float | None:
        """Diameter in px for this frame, or None when it shows nothing like nuclei (and no
        earlier frame did)."""
        c = self.config
        self.last_estimate = None
        self._pending = None
        diameter = resolve_diameter(c.nucleus_diameter_px, c.nucleus_diameter_um, pixel_size_um)
        settled_before = self._measured >= c.auto_diameter_frames
        if diameter is None:
            diameter = self._estimate(image) if self._settled is None else self._follow(image)
            if diameter is None and self.last is not None:
                # No estimate on this frame (a sparse field whose objects touch or sit at the
                # edge, say) though an earlier one had nuclei: their scale, as a settled
                # scale would be used, rather than an empty frame.
                diameter = self.last
        if diameter is not None:
            self.last = diameter
            if settled_before:  # a frame after the window's last first measurement
                low = self._smallest
                self._smallest = diameter if low is None else min(low, diameter)
        return diameter

    def _capped(self, diameter: float) -> float:
        """``diameter``, at most ``max_scale_rise`` above the smallest used so far."""
        rise = self.config.max_scale_rise
        if self._smallest is None or rise is None:
            return diameter
        return min(diameter, self._smallest * rise)

    def _estimate(self, image: NDArray[np.generic]) -> float | None:
        found = measure_diameter(image, self.config.min_contrast)
        if found is None:
            return None
        estimate = found[0]  # (a sparse field's too: see ``SPARSE_MAX_FRACTION``)
        if self.from_detections:
            # Until the scale settles: the median of the detections' measurements so far
            # (the image estimate for the very first frame); this frame is measured next.
            self._pending = estimate
            if not self._estimates:
                return estimate
            return self._capped(float(statistics.median(self._estimates)))
        self.last_estimate = estimate
        return self._add(estimate, announce=True)

    def _follow(self, image: NDArray[np.generic]) -> float:
        """A settled scale: re-measure on every ``rescale_every``-th frame."""
        assert self._settled is not None
        self._since_estimate += 1
        every = self.config.rescale_every
        if every and self._since_estimate >= every:
            if self.from_detections:
                # Measured from this frame's detections (``observe``), bounded by the scale
                # in use: no image estimate (~0.3 s at 1024²) on every re-measured frame.
                self._pending = self._settled
                return self._settled
            estimate = estimate_diameter(image, self.config.min_contrast)
            if estimate is not None:
                self.last_estimate = estimate
                self._add(estimate, announce=True)
        return self._settled

    def observe(self, detections: Detections, areas: NDArray[np.integer] | None = None) -> None:
        """After segmenting a frame that ``for_frame`` chose to measure (scale_source
        "detections"): its measurement is the median equivalent diameter of the detections,
        kept within ``DETECTION_SCALE_LIMIT`` of the bound — the frame's image estimate
        until the scale settled, then the scale in use — and the bound itself when fewer
        than ``MIN_ESTIMATE_OBJECTS`` nuclei were found. ``areas``: the detections' areas
        as detected, when their outlines were drawn afterwards (default: their areas)."""
        bound, self._pending = self._pending, None
        if bound is None:
            return
        areas = np.asarray(detections.areas if areas is None else areas, np.float64)
        measured = bound
        if areas.size >= MIN_ESTIMATE_OBJECTS:
            found = float(2.0 * np.sqrt(np.median(areas) / np.pi))
            measured = float(
                np.clip(found, bound / DETECTION_SCALE_LIMIT, bound * DETECTION_SCALE_LIMIT)
            )
        self.last_estimate = measured
        self._add(measured, announce=True)

    def _add(self, estimate: float, *, announce: bool) -> float:
        c = self.config
        self._since_estimate = 0
        self._measured += 1
        self._estimates = [*self._estimates, estimate][-c.auto_diameter_frames :]
        measured = float(statistics.median(self._estimates))
        current = self._capped(measured)
        if len(self._estimates) < c.auto_diameter_frames:
            return current
        if self._settled is None:
            self._settled = current
            if announce:
                log.info("nucleus diameter estimated at %.1f px", current)
        elif abs(current / self._settled - 1.0) > c.rescale_tolerance:
            if announce:
                held = "" if current == measured else f", held from {measured:.1f}: max_scale_rise"
                log.info("nucleus diameter now %.1f px (was %.1f%s)", current, self._settled, held)
            self._settled = current
        return self._settled

    def restore(self, state: ScaleState) -> None:
        """Continue from a stored state (``ScaleState``): a resumed run then uses the
        diameters an uninterrupted run would have used, instead of estimating again."""
        n = self.config.auto_diameter_frames
        self._estimates = [float(e) for e in state.estimates[-n:]]
        self._measured = len(state.estimates)
        self._smallest = state.smallest_diameter
        last = state.last_diameter
        self._settled = float(last) if last is not None and len(state.estimates) >= n else None
        if self.from_detections and state.frames_since == 0 and len(state.estimates) >= n:
            # The last stored frame was measured after it was segmented (``observe``): its
            # measurement may have moved the scale, which its stored diameter does not show.
            # Replay that step: the scale settled on it (exactly n measurements ever made;
            # the state holds up to n + 1) or moved from the diameter it was segmented with.
            current = self._capped(float(statistics.median(self._estimates)))
            tolerance = self.config.rescale_tolerance
            if last is None or len(state.estimates) == n or abs(current / last - 1) > tolerance:
                self._settled = current
        self.last = state.last_diameter
        self._since_estimate = state.frames_since
        if self._settled is not None:
            log.info("nucleus diameter restored at %.1f px", self._settled)


class ScaledSegmenter:
    """What both segmenters share: the frame check, the nucleus diameter of each frame
    (``NucleusScale``), empty frames, measuring the labels. Subclasses set ``_scale`` and
    implement ``segment``."""

    _scale: NucleusScale
    _detected_areas: NDArray[np.integer] | None = None
    """Set by ``segment`` when it outlines the objects after detecting them: the pixel
    count of each label value as detected (what the scale is measured on)."""

    @property
    def diameter_px(self) -> float | None:
        """The diameter used for the last frame (None before any frame with nuclei)."""
        return self._scale.last

    def restore_scale(self, state: ScaleState) -> None:
        """See ``NucleusScale.restore``."""
        self._scale.restore(state)

    def predict(
        self, image: NDArray[np.generic], pixel_size_um: float | None = None
    ) -> Segmentation:
        check_frame(image)
        diameter = self._scale.for_frame(image, pixel_size_um)
        if diameter is None:  # nothing that looks like nuclei
            return Segmentation.empty(image.shape)
        self._detected_areas = None
        mask = self.segment(image, diameter)
        detections = Detections.from_labels(mask)
        detected = self._detected_areas
        if detected is not None:
            detected = detected[detections.labels]
        self._scale.observe(detections, detected)
        info = {"diameter_px": diameter}
        if self._scale.last_estimate is not None:
            info["diameter_estimate"] = self._scale.last_estimate
        return Segmentation(mask=mask, detections=detections, info=info)

    def segment(self, image: NDArray[np.generic], diameter_px: float) -> LabelImage:
        """Labels at the frame's resolution for nuclei of ``diameter_px``."""
        raise NotImplementedError
