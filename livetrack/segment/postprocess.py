"""From the model's three maps to a label image: one marker per inner-distance peak,
marker-based watershed on the outer distance inside the foreground (Caliban, REFERENCE §1).

Pure functions over arrays, so they are tested on hand-made maps without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from livetrack.blur import gaussian_filter
from livetrack.types import LabelImage

FloatArray32 = NDArray[np.float32]


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds of the post-processing; lengths in nucleus diameters."""

    fg_threshold: float = 0.5
    """Foreground probability above which a pixel belongs to a nucleus."""
    peak_threshold: float = 0.3
    """Minimum inner-distance value of a marker (1 = a nucleus centre; edges are ~0.3;
    the model's blurred peaks reach 0.4–0.7)."""
    peak_prominence: float = 0.05
    """A marker's peak must dip at least this much on the way to any higher peak within a
    diameter (straight line); 0 keeps every local maximum. Two lobes of one elongated
    nucleus give a shallow dip, two touching nuclei a deep one."""
    peak_min_distance: float = 0.3
    """Minimum distance between two markers, in diameters."""
    min_area_fraction: float = 0.15
    """Objects smaller than this fraction of a typical nucleus' area are dropped."""
    large_object_area: float = 1.3
    """Objects larger than this many nominal nucleus areas (π d²/4) are looked at again for
    markers with ``large_object_prominence``: an object that big is more likely touching
    nuclei than one (0: off)."""
    large_object_prominence: float = 0.03
    """The dip between two peaks that keeps both inside such a large object."""
    border_min_area_fraction: float = 0.02
    """The same for objects touching the frame's edge (a nucleus cut by it); used when
    smaller than ``min_area_fraction``."""
    min_mean_probability: float = 0.0
    """Objects whose mean foreground probability over their pixels is below this are
    dropped (0: none): faint structures the model is unsure of, not nuclei it outlines."""


def labels_from_maps(
    inner: NDArray[np.floating],
    outer: NDArray[np.floating],
    fg_prob: NDArray[np.floating],
    diameter_px: float,
    params: PostprocessParams | None = None,
) -> LabelImage:
    """Label image (int32, sequential) from the three maps at the model's scale.

    Foreground components that hold no marker (e.g. a nucleus whose centre peak is weak)
    are kept as one object each when large enough, rather than silently dropped.
    """
    p = params or PostprocessParams()
    fg = np.asarray(fg_prob) > p.fg_threshold
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    fg = ndi.binary_fill_holes(fg)
    smooth_inner = gaussian_filter(np.asarray(inner, np.float32), max(0.05 * diameter_px, 0.5))
    relief_in = np.where(fg, smooth_inner, 0.0).astype(np.float32)
    candidates = peak_local_max(
        relief_in,
        min_distance=max(1, round(p.peak_min_distance * diameter_px)),
        threshold_abs=p.peak_threshold,
        exclude_border=False,
    )
    peaks = candidates
    if p.peak_prominence > 0:
        peaks = _drop_shallow_peaks(relief_in, candidates, p.peak_prominence, diameter_px)
    relief = -np.asarray(outer, np.float32) - smooth_inner
    labels = _watershed(relief, peaks, fg)
    if p.large_object_area > 0 and p.large_object_prominence < p.peak_prominence:
        # Objects much larger than a nucleus are most likely touching nuclei: inside them
        # a shallower dip between two peaks is enough to keep both.
        nominal = np.pi * diameter_px**2 / 4.0
        large = np.bincount(labels.ravel()) > p.large_object_area * nominal
        large[0] = False
        if large.any():
            low = _drop_shallow_peaks(relief_in, candidates, p.large_object_prominence, diameter_px)
            have = {(int(y), int(x)) for y, x in peaks}
            extra = [
                (int(y), int(x))
                for y, x in low
                if (int(y), int(x)) not in have and large[labels[y, x]]
            ]
            if extra:
                peaks = np.concatenate([peaks, np.asarray(extra, peaks.dtype)])
                labels = _watershed(relief, peaks, fg)
    orphans, n_orphans = ndi.label(fg & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + int(labels.max()), labels).astype(np.int32)
    nominal = np.pi * diameter_px**2 / 4.0
    areas = np.bincount(labels.ravel())
    keep = areas >= p.min_area_fraction * nominal
    if p.border_min_area_fraction < p.min_area_fraction:
        # A nucleus cut by the frame's edge can show any part of itself.
        edge = np.zeros(len(areas), bool)
        for line in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            edge[line] = True
        keep |= edge & (areas >= p.border_min_area_fraction * nominal)
    if p.min_mean_probability > 0:
        weights = np.asarray(fg_prob, np.float64).ravel()
        total = np.bincount(labels.ravel(), weights=weights, minlength=len(areas))
        keep &= total >= p.min_mean_probability * areas
    return relabel(labels, keep=keep)


def _watershed(
    relief: NDArray[np.float32], peaks: NDArray[np.intp], fg: NDArray[np.bool_]
) -> NDArray[np.int32]:
    markers = np.zeros(fg.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    return np.asarray(watershed(relief, markers, mask=fg), dtype=np.int32)


def bilinear_resize(values: NDArray[np.floating], shape: tuple[int, int]) -> NDArray[np.float32]:
    """``values`` interpolated bilinearly to ``shape`` (pixel centres aligned, as
    ``skimage.transform.resize(order=1)`` aligns them; edges held): two separable passes,
    a few times faster than skimage's general warp."""
    a = np.asarray(values, np.float32)

    def taps(n_out: int, n_in: int) -> tuple[NDArray[np.intp], NDArray[np.intp], FloatArray32]:
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
        lo = np.floor(src).astype(np.intp)
        return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)

    x0, x1, wx = taps(shape[1], a.shape[1])
    cols = np.take(a, x0, axis=1)
    cols *= 1.0 - wx
    cols += np.take(a, x1, axis=1) * wx
    y0, y1, wy = taps(shape[0], a.shape[0])
    out = np.take(cols, y0, axis=0)
    out *= (1.0 - wy)[:, None]
    out += np.take(cols, y1, axis=0) * wy[:, None]
    return out


def outline_on_frame(
    labels: NDArray[np.integer],
    fg_prob: NDArray[np.floating],
    threshold: float | None,
) -> LabelImage:
    """Each object of ``labels`` (already at the frame's resolution, e.g. upscaled by
    nearest neighbour from the model's scale) outlined where the foreground probability
    ``fg_prob`` (interpolated to the frame's pixels) is above ``threshold``: its pixels
    at or below that level leave it, and an unlabelled pixel above it next to an object
    (8-neighbours; the highest label if several) joins it, so a boundary follows the
    probability map between its samples, at a level of its own, instead of the blocks of an
    upscaled label image. No object is lost or gained: one that would keep less than half
    its pixels keeps the ones it had (a dim nucleus found just above the detection
    threshold), and pixels the cut would leave as a hole inside one object keep it. An
    object grows by one pixel at most (the blocks of a large upscale factor are wider:
    there the outline can only come in, never go out further than a pixel), and shrinks as
    far as the level says. Labels keep their values. None: ``labels`` unchanged."""
    lab = np.asarray(labels, np.int32)
    if threshold is None or lab.size == 0 or int(lab.max()) == 0:
        return lab
    if lab.shape != fg_prob.shape:
        raise ValueError(f"labels {lab.shape} and probabilities {fg_prob.shape} differ")
    h, w = lab.shape
    flat = lab.ravel()
    above = np.asarray(fg_prob).ravel() > threshold
    drop = np.flatnonzero(~above & (flat > 0))
    cand = np.flatnonzero(above & (flat == 0))
    # The highest label among each candidate's 8 neighbours inside the frame.
    row, col = np.divmod(cand, w)
    join = np.zeros(len(cand), np.int32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            r, c = row + dy, col + dx
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            nb = np.zeros(len(cand), np.int32)
            nb[inside] = flat[r[inside] * w + c[inside]]
            np.maximum(join, nb, out=join)
    add = cand[join > 0]
    join = join[join > 0]
    n = int(lab.max()) + 1
    before = np.bincount(flat, minlength=n)
    after = before - np.bincount(flat[drop], minlength=n) + np.bincount(join, minlength=n)
    lost = after < 0.5 * before
    lost[0] = False
    if lost.any():
        drop = drop[~lost[flat[drop]]]
        keep = ~lost[join]
        add, join = add[keep], join[keep]
    out = lab.copy()
    flat_out = out.ravel()
    flat_out[drop] = 0
    flat_out[add] = join
    if len(drop):
        # A dip of the map inside a nucleus (a nucleolus, say) is not its outline: dropped
        # pixels that one object encloses — a background component (4-connected, away from
        # the frame's edge) made of dropped pixels only, whose neighbours all belong to that
        # object — go back to it. (A gap enclosed by several touching objects stays open.)
        comp, n_comp = ndi.label(out == 0)
        sizes = np.bincount(comp.ravel(), minlength=n_comp + 1)
        ids = comp.ravel()[drop]
        hole = sizes == np.bincount(ids, minlength=n_comp + 1)
        for line in (comp[0], comp[-1], comp[:, 0], comp[:, -1]):
            hole[line] = False
        hole[0] = False
        inside = hole[ids]
        if inside.any():
            pix, cid = drop[inside], ids[inside]
            around = np.concatenate(
                [flat_out[pix - 1], flat_out[pix + 1], flat_out[pix - w], flat_out[pix + w]]
            )
            around_id = np.tile(cid, 4)
            lo = np.full(n_comp + 1, np.iinfo(np.int32).max, np.int64)
            hi = np.zeros(n_comp + 1, np.int64)
            nz = around > 0
            np.minimum.at(lo, around_id[nz], around[nz])
            np.maximum.at(hi, around_id[nz], around[nz])
            one = (hi > 0) & (lo == hi)
            back = pix[one[cid]]
            flat_out[back] = flat[back]
    return out


def relabel(labels: NDArray[np.integer], keep: NDArray[np.bool_] | None = None) -> LabelImage:
    """``labels`` (non-negative integers) renumbered 1, 2, … in the order of their values,
    background 0, as int32 — ``skimage.segmentation.relabel_sequential``'s labels, from a
    lookup table instead of ``np.unique`` over the frame (several times faster).
    ``keep``: per label value, whether the object stays (the others become background;
    values past its end stay)."""
    lab = np.asarray(labels)
    if lab.size == 0:
        return np.zeros(lab.shape, np.int32)
    if lab.dtype.kind not in "iu" or int(lab.min()) < 0:
        raise ValueError("relabel takes a label image of non-negative integers")
    present = np.bincount(lab.ravel()) > 0
    present[0] = False
    if keep is not None:
        k = np.asarray(keep, bool)[: len(present)]
        present[: len(k)] &= k
    lut = np.zeros(len(present), np.int32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lut[lab]


def _drop_shallow_peaks(
    relief: NDArray[np.float32], peaks: NDArray[np.intp], h: float, reach_px: float
) -> NDArray[np.intp]:
    """The ``peaks`` that do not sit on the flank of a higher one: a peak is dropped when
    the straight line to a higher peak within ``reach_px`` never dips more than ``h`` below
    it (a cheap, local form of the h-maxima criterion: that line is one path, so the true
    saddle is at least as high)."""
    if len(peaks) < 2:
        return peaks
    vals = relief[peaks[:, 0], peaks[:, 1]]
    order = np.argsort(-vals, kind="stable")
    pairs = cKDTree(peaks[order]).query_pairs(reach_px, output_type="ndarray")
    if len(pairs) == 0:
        return peaks
    hi, lo = order[pairs[:, 0]], order[pairs[:, 1]]  # query_pairs gives i < j: hi is higher
    steps = np.linspace(0.0, 1.0, max(3, int(np.ceil(reach_px)) + 1))
    a, b = peaks[hi].astype(np.float64), peaks[lo].astype(np.float64)
    line = a[:, None, :] + (b - a)[:, None, :] * steps[None, :, None]
    dips = ndi.map_coordinates(relief, line.reshape(-1, 2).T, order=1, mode="nearest")
    saddle = dips.reshape(len(pairs), len(steps)).min(axis=1)
    shallow = vals[lo] - saddle < h
    keep = np.ones(len(peaks), bool)
    keep[lo[shallow]] = False
    return peaks[keep]
