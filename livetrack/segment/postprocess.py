"""From the model's three maps to a label image: one marker per inner-distance peak,
marker-based watershed on the outer distance inside the foreground (Caliban, REFERENCE §1).

Pure functions over arrays, so they are tested on hand-made maps without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import relabel_sequential, watershed

from livetrack.types import LabelImage


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds of the post-processing; lengths in nucleus diameters."""

    fg_threshold: float = 0.5
    """Foreground probability above which a pixel belongs to a nucleus."""
    peak_threshold: float = 0.5
    """Minimum inner-distance value of a marker (1 = a nucleus centre; edges are ~0.3)."""
    peak_min_distance: float = 0.3
    """Minimum distance between two markers, in diameters."""
    min_area_fraction: float = 0.15
    """Objects smaller than this fraction of a typical nucleus' area are dropped."""


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
    smooth_inner = ndi.gaussian_filter(np.asarray(inner, np.float32), max(0.05 * diameter_px, 0.5))
    peaks = peak_local_max(
        np.where(fg, smooth_inner, 0.0),
        min_distance=max(1, round(p.peak_min_distance * diameter_px)),
        threshold_abs=p.peak_threshold,
        exclude_border=False,
    )
    markers = np.zeros(fg.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    relief = -np.asarray(outer, np.float32) - smooth_inner
    labels = np.asarray(watershed(relief, markers, mask=fg), dtype=np.int32)
    orphans, n_orphans = ndi.label(fg & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + int(labels.max()), labels).astype(np.int32)
    min_area = p.min_area_fraction * np.pi * diameter_px**2 / 4.0
    areas = np.bincount(labels.ravel())
    small = np.flatnonzero(areas < min_area)
    small = small[small > 0]
    if small.size:
        labels[np.isin(labels, small)] = 0
    out, _, _ = relabel_sequential(labels)
    return np.asarray(out, dtype=np.int32)
