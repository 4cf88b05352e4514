"""Per-detection features for the learned tracker, computed from ONE frame as it arrives.

For every detection (Caliban's features, at the canonical scale):

- an appearance crop: ``CROP`` × ``CROP`` samples of the raw frame on a square of
  ``crop_diameters`` nucleus diameters centred on the centroid (bilinear), z-scored with the
  mean and standard deviation of the pixels inside the detection's mask; a second channel
  says which samples lie inside the mask (outside samples are set to 0 in channel 0);
- morphology: area / diameter², perimeter / diameter, eccentricity, and the log of the
  detection's mean intensity over the median of the frame's detections (nuclei brighten in
  mitosis; relative, so independent of the microscope's gain);
- the centroid (used by the model only through relative offsets to neighbours and tracks,
  so nothing depends on where in the field a cell is);
- the neighbourhood graph: pairs of detections closer than ``neighbour_diameters``.

Everything is vectorised over the detections (one ``map_coordinates`` call for all crops,
``bincount`` for the moments), so a frame with thousands of nuclei costs a few array passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from livetrack.blur import gaussian_filter, gaussian_filter_f32
from livetrack.percentile import frame_percentiles
from livetrack.types import Detections

CROP = 16
"""Side of the appearance crop in samples (Caliban: 16 × 16)."""
N_MORPH = 4
"""Morphology numbers per detection."""

FloatArray = NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """Model inputs of one frame, rows in the order of the detections."""

    crops: FloatArray
    """(N, 2, CROP, CROP): z-scored appearance, inside-mask indicator."""
    morph: FloatArray
    """(N, 4): area / d², perimeter / d, eccentricity, log relative brightness."""
    centroids: NDArray[np.float64]
    """(N, 2) (y, x) in pixels."""
    edges: NDArray[np.int64]
    """(2, E) directed neighbour pairs (i → j, both directions, no self loops)."""
    diameter: float
    """The length unit d (px) the features were computed with."""

    def __len__(self) -> int:
        return len(self.centroids)

    @classmethod
    def empty(cls, diameter: float) -> FrameFeatures:
        return cls(
            crops=np.zeros((0, 2, CROP, CROP), np.float32),
            morph=np.zeros((0, N_MORPH), np.float32),
            centroids=np.zeros((0, 2)),
            edges=np.zeros((2, 0), np.int64),
            diameter=diameter,
        )


def reduction_factor(diameter: float, max_diameter_px: float | None) -> int:
    """The integer factor a frame is reduced by before its features are computed: the
    smallest that brings ``diameter`` to at most ``max_diameter_px`` (1: full resolution;
    always 1 when ``max_diameter_px`` is None or 0)."""
    if not max_diameter_px or diameter <= max_diameter_px:
        return 1
    return math.ceil(diameter / max_diameter_px)


def reduce_frame(
    image: NDArray[np.generic], mask: NDArray[np.integer], factor: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The frame reduced by ``factor``: the image by block means, the label image by the
    label at each block's centre (a partial block at the far edges is left out)."""
    f = int(factor)
    h, w = (np.asarray(image).shape[0] // f) * f, (np.asarray(image).shape[1] // f) * f
    img = np.asarray(image)[:h, :w].astype(np.float32)
    small = np.zeros((h // f, w // f), np.float32)
    for dy in range(f):
        for dx in range(f):
            small += img[dy::f, dx::f]
    small /= f * f
    lab = np.maximum(np.asarray(mask)[f // 2 : h : f, f // 2 : w : f], 0).astype(np.int64)
    return small, lab


def background_level(image: NDArray[np.generic]) -> float:
    """The 5th percentile of the frame's pixels as float32 (``np.percentile``'s linear
    method), from a histogram for integer images (the same value, several times faster)."""
    fast = frame_percentiles(image, (5.0,))
    if fast is None:
        return float(np.percentile(np.asarray(image).astype(np.float32, copy=False), 5))
    return fast[0]


def frame_features(
    image: NDArray[np.generic],
    mask: NDArray[np.integer],
    detections: Detections,
    diameter: float,
    *,
    crop_diameters: float = 1.25,
    neighbour_diameters: float = 4.0,
    max_diameter_px: float | None = None,
    exact: bool = False,
) -> FrameFeatures:
    """Features of every detection of one frame; ``diameter`` is the length unit in px.

    ``max_diameter_px``: nuclei larger than this have their crops and morphology computed
    on the frame reduced by an integer factor (``reduction_factor``, ``reduce_frame``), a
    fraction of the pixel work; the features are in units of the diameter either way. The
    centroids and neighbour pairs stay those of the full frame. None or 0: full resolution.

    ``exact``: the crops' anti-aliasing blur and sampling with SciPy (``gaussian_filter``,
    ``map_coordinates``), as the shipped models were trained (training passes True, so
    their weights reproduce to the bit). False (the tracker at run time): the same blur and
    bilinear sampling in float32 (``gaussian_filter_f32``, ``_bilinear_grids``), equal to
    float32 rounding and ~10 ms faster on a 1024² frame."""
    if image.shape != mask.shape or image.ndim != 2:
        raise ValueError(
            f"image {image.shape} and mask {mask.shape} must be 2-D and of the same shape"
        )
    n = len(detections)
    if n == 0:
        return FrameFeatures.empty(diameter)
    labels = detections.labels.astype(np.int64)
    cen = detections.centroids.astype(np.float64)
    factor = reduction_factor(diameter, max_diameter_px)
    if factor == 1:
        img = np.asarray(image, np.float32)
        lab = np.asarray(mask)  # any integer type bincount takes, as is
        if lab.dtype.kind not in "iu" or lab.dtype == np.uint64:
            lab = lab.astype(np.int64)
        if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
            lab = np.maximum(lab, 0)  # (a scan is cheaper than a copy)
        area = detections.areas.astype(np.float64)
        cen_f, unit = cen, float(diameter)
    else:
        img, lab = reduce_frame(image, mask, factor)
        size = int(labels.max()) + 1
        area = np.bincount(lab.ravel(), minlength=size)[labels].astype(np.float64)
        # Block i covers full-frame pixels f·i … f·i + f − 1; the centroid in block units
        # (an object too small to keep a pixel keeps its full-frame centroid, mapped).
        cen_f, unit = (cen - (factor - 1) / 2.0) / factor, float(diameter) / factor
        if np.any(area > 0):
            cen_f = np.where((area > 0)[:, None], _moments(lab, labels, area), cen_f)
    px = _Pixels.of(lab)
    crops, mean = _crops(img, lab, labels, cen_f, area, crop_diameters * unit, px, exact=exact)
    morph = _morphology(lab, labels, cen_f, area, unit, px)
    bg = background_level(image)  # background level, so the ratio is offset-free
    signal = np.maximum(mean - bg, 1e-3)
    rel_bright = np.log(signal / np.median(signal))
    morph = np.concatenate([morph, np.clip(rel_bright, -3, 3)[:, None].astype(np.float32)], 1)
    edges = neighbour_edges(cen, neighbour_diameters * diameter)
    return FrameFeatures(crops, morph, cen, edges, float(diameter))


def neighbour_edges(centroids: NDArray[np.float64], radius: float) -> NDArray[np.int64]:
    """(2, E) directed pairs of points closer than ``radius`` (both directions)."""
    if len(centroids) < 2:
        return np.zeros((2, 0), np.int64)
    pairs = cKDTree(centroids).query_pairs(r=radius, output_type="ndarray").astype(np.int64)
    if len(pairs) == 0:
        return np.zeros((2, 0), np.int64)
    return np.concatenate([pairs.T, pairs.T[::-1]], axis=1)


def _moments(
    lab: NDArray[np.int64], labels: NDArray[np.int64], area: NDArray[np.float64]
) -> NDArray[np.float64]:
    """(N, 2) centroids (y, x) of the labelled objects in ``lab``."""
    w = lab.shape[1]
    fg = np.flatnonzero(lab > 0)
    flat = lab.ravel()[fg]
    size = int(labels.max()) + 1
    ys = np.bincount(flat, weights=(fg // w).astype(np.float64), minlength=size)[labels]
    xs = np.bincount(flat, weights=(fg % w).astype(np.float64), minlength=size)[labels]
    a = np.maximum(area, 1.0)
    return np.stack([ys / a, xs / a], axis=1)


@dataclass(frozen=True, eq=False)
class _Pixels:
    """Where a label image's objects lie, found once for the crops and the shape."""

    fg: NDArray[np.intp]
    """Flat indices of the labelled pixels, in order."""
    fg_labels: NDArray[np.integer]
    """Their labels."""
    run_start: NDArray[np.intp]
    """Runs of one label along the rows, labelled runs only, in order: flat index of the
    first pixel, length and label (together they cover ``fg`` exactly, in order)."""
    run_length: NDArray[np.intp]
    run_label: NDArray[np.int64]
    cols: NDArray[np.bool_]
    """``lab[:, 1:] != lab[:, :-1]``."""

    @classmethod
    def of(cls, lab: NDArray[np.integer]) -> _Pixels:
        h, w = lab.shape
        # A run begins at each row's first pixel and wherever the label changes from the
        # pixel before; the comparison, over the whole frame in the labels' own type, is
        # the perimeter's test of horizontal neighbours too.
        starts = np.empty((h, w), bool)
        starts[:, 0] = True
        np.not_equal(lab[:, 1:], lab[:, :-1], out=starts[:, 1:])
        start = np.flatnonzero(starts)
        length = np.diff(start, append=lab.size)
        run_label = lab.ravel()[start].astype(np.int64)
        keep = run_label > 0
        fg = np.flatnonzero(lab > 0)  # (the same indices as of ``lab``, ~4x faster)
        return cls(fg, lab.ravel()[fg], start[keep], length[keep], run_label[keep], starts[:, 1:])

    def run_sums(self, values: NDArray[np.floating], size: int) -> NDArray[np.float64]:
        """Per label (0 … size − 1), the sum of ``values`` (one per labelled pixel, in the
        order of ``fg``): summed along each run, then over the runs of each label."""
        if len(values) == 0:
            return np.zeros(size)
        offsets = np.cumsum(self.run_length) - self.run_length
        per_run = np.add.reduceat(values.astype(np.float64, copy=False), offsets)
        out = np.bincount(self.run_label, weights=per_run, minlength=size)
        return out.astype(np.float64, copy=False)


def _crops(
    img: NDArray[np.float32],
    lab: NDArray[np.int64],
    labels: NDArray[np.int64],
    cen: NDArray[np.float64],
    area: NDArray[np.float64],
    side_px: float,
    px: _Pixels,
    *,
    exact: bool = True,
) -> tuple[FloatArray, NDArray[np.float64]]:
    """Crops (N, 2, CROP, CROP) and the mean intensity of each detection's pixels."""
    n = len(labels)
    step = side_px / CROP
    if step > 1.5:
        # Anti-aliasing: large nuclei are sampled sparsely, so low-pass the frame first
        # (the crop then looks the same whatever the magnification).
        # (exact: bands in threads, the same values as one ``ndi.gaussian_filter`` call.)
        if exact:
            img = gaussian_filter(img, 0.5 * step, truncate=2.5)
        else:
            img = gaussian_filter_f32(img, 0.5 * step, truncate=2.5)
    offs = (np.arange(CROP, dtype=np.float64) - (CROP - 1) / 2.0) * step
    # Each crop is a grid: its rows sample at ``ys``, its columns at ``xs``.
    ys = cen[:, 0, None] + offs[None, :]
    xs = cen[:, 1, None] + offs[None, :]
    if exact:
        yy, xx = np.broadcast_arrays(ys[:, :, None], xs[:, None, :])
        coords = np.stack([yy.ravel(), xx.ravel()])
        vals = ndi.map_coordinates(img, coords, order=1, mode="nearest").reshape(n, CROP, CROP)
    else:
        vals = _bilinear_grids(img, ys, xs)
    h, w = lab.shape
    near_y = np.clip(np.rint(ys), 0, h - 1).astype(np.intp)
    near_x = np.clip(np.rint(xs), 0, w - 1).astype(np.intp)
    near = lab.ravel()[near_y[:, :, None] * w + near_x[:, None, :]]
    inside = (near == labels[:, None, None]).astype(np.float32)
    # Statistics of the detection's own pixels (all of them, not only the sampled ones);
    # sums over the foreground only (the same sums, without the background's pixels):
    # exact, pixel by pixel in order (as in training); else along each run first.
    flat_img = img.ravel()[px.fg].astype(np.float64)
    size = int(labels.max()) + 1
    if exact:
        s1 = np.bincount(px.fg_labels, weights=flat_img, minlength=size)[labels].astype(np.float64)
        s2 = np.bincount(px.fg_labels, weights=flat_img**2, minlength=size)[labels].astype(
            np.float64
        )
    else:
        s1 = px.run_sums(flat_img, size)[labels]
        s2 = px.run_sums(flat_img * flat_img, size)[labels]
    mean = s1 / np.maximum(area, 1.0)
    std = np.sqrt(np.maximum(s2 / np.maximum(area, 1.0) - mean * mean, 0.0))
    std = np.maximum(std, 1e-3 * np.maximum(np.abs(mean), 1.0))
    z = (vals - mean[:, None, None]) / std[:, None, None]
    z = np.clip(z, -5.0, 5.0) * inside
    return np.stack([z, inside], axis=1).astype(np.float32), mean


def _bilinear_grids(
    img: NDArray[np.float32], ys: NDArray[np.float64], xs: NDArray[np.float64]
) -> NDArray[np.float32]:
    """(N, R, C) samples of ``img`` on N grids, grid i at rows ``ys[i]`` × columns ``xs[i]``:
    ``ndi.map_coordinates(img, …, order=1, mode="nearest")`` at every grid point by hand
    (the interpolation weights found once per row and per column, four gathers; beyond the
    frame the edge pixels continue), in float32: equal to float32 rounding."""
    h, w = img.shape
    y0, x0 = np.floor(ys), np.floor(xs)
    fy = (ys - y0).astype(np.float32)[:, :, None]
    fx = (xs - x0).astype(np.float32)[:, None, :]
    y0i, x0i = y0.astype(np.intp), x0.astype(np.intp)
    r0 = (np.clip(y0i, 0, h - 1) * w)[:, :, None]
    r1 = (np.clip(y0i + 1, 0, h - 1) * w)[:, :, None]
    c0 = np.clip(x0i, 0, w - 1)[:, None, :]
    c1 = np.clip(x0i + 1, 0, w - 1)[:, None, :]
    flat = np.asarray(img, np.float32).ravel()
    one = np.float32(1.0)
    top = flat[r0 + c0] * (one - fx) + flat[r0 + c1] * fx
    bottom = flat[r1 + c0] * (one - fx) + flat[r1 + c1] * fx
    out: NDArray[np.float32] = top * (one - fy) + bottom * fy
    return out


def _morphology(
    lab: NDArray[np.int64],
    labels: NDArray[np.int64],
    cen: NDArray[np.float64],
    area: NDArray[np.float64],
    diameter: float,
    px: _Pixels,
) -> FloatArray:
    h, w = lab.shape
    size = int(labels.max()) + 1
    # Second moments summed over the runs of equal label along each row (a few per object
    # and row instead of every pixel; integer sums, so the same to the last bit).
    start, length = px.run_start, px.run_length
    row = start // w
    c0 = start - row * w
    c1 = c0 + length - 1
    sum_x = (c0 + c1) * length // 2
    sum_xx = _sum_of_squares(c1) - _sum_of_squares(c0 - 1)
    a = np.maximum(area, 1)

    def total(weights: NDArray[np.int64]) -> NDArray[np.float64]:
        out = np.bincount(px.run_label, weights=weights.astype(np.float64), minlength=size)
        return out[labels].astype(np.float64, copy=False)

    syy = total(row * row * length) / a
    sxx = total(sum_xx) / a
    sxy = total(row * sum_x) / a
    myy = syy - cen[:, 0] ** 2
    mxx = sxx - cen[:, 1] ** 2
    mxy = sxy - cen[:, 0] * cen[:, 1]
    root = np.sqrt(np.maximum((myy - mxx) ** 2 / 4.0 + mxy**2, 0.0))
    l1 = (myy + mxx) / 2.0 + root
    l2 = np.maximum((myy + mxx) / 2.0 - root, 0.0)
    ecc = np.sqrt(np.clip(1.0 - l2 / np.maximum(l1, 1e-9), 0.0, 1.0))
    # Perimeter: pixels of the object with a 4-neighbour of another label (background
    # included) or on the frame's edge, counted over the foreground.
    cols = px.cols
    boundary = np.zeros((h, w), bool)
    boundary[[0, -1], :] = True
    boundary[:, [0, -1]] = True
    rows = lab[1:] != lab[:-1]
    boundary[1:] |= rows
    boundary[:-1] |= rows
    boundary[:, 1:] |= cols
    boundary[:, :-1] |= cols
    perim = np.bincount(px.fg_labels[boundary.ravel()[px.fg]], minlength=size)
    perim = perim[labels].astype(np.float64)
    d = max(float(diameter), 1.0)
    return np.stack([area / d**2, perim / d, ecc], axis=1).astype(np.float32)


def _sum_of_squares(n: NDArray[np.int64]) -> NDArray[np.int64]:
    """0² + 1² + … + n² (0 for n = −1)."""
    out: NDArray[np.int64] = n * (n + 1) * (2 * n + 1) // 6
    return out
