"""The classical segmentation baseline: normalise → smooth → Otsu foreground → distance-
transform markers → marker-based watershed, all scaled by the nucleus diameter."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed
from skimage.transform import resize

from livetrack.blur import downscale, gaussian_filter
from livetrack.config import SegmentConfig
from livetrack.segment.postprocess import relabel
from livetrack.segment.scale import NucleusScale, ScaledSegmenter, foreground, normalise
from livetrack.types import LabelImage

log = logging.getLogger("livetrack.segment.classical")


class ClassicalSegmenter(ScaledSegmenter):
    """One instance per position: it keeps the diameter it settled on for that position."""

    name = "classical"
    device = "cpu"

    def __init__(self, config: SegmentConfig | None = None) -> None:
        self.config = config or SegmentConfig()
        self._scale = NucleusScale(self.config)

    def segment(self, image: NDArray[np.generic], diameter_px: float) -> LabelImage:
        c = self.config
        scale = (
            min(1.0, c.canonical_diameter_px / diameter_px)
            if diameter_px > 1.3 * c.canonical_diameter_px
            else 1.0
        )
        img = normalise(image)
        if scale < 1.0:
            shape = (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale)))
            img = downscale(img, shape).astype(np.float32)  # skimage's resize, banded blur
        d = diameter_px * scale
        smoothed = gaussian_filter(img, max(c.smoothing * d, 0.5))
        fg = foreground(smoothed, c.min_contrast, dim_sigma=c.dim_nuclei_sigma)
        if fg is None:
            return np.zeros(image.shape, np.int32)
        fg = ndi.binary_fill_holes(fg)
        comps, _ = ndi.label(fg)
        dist = distance_inside(comps)
        # Nuclei are blobs: smoothing the distance map merges the ridge maxima of elongated
        # shapes into one centre per nucleus.
        dist_s = gaussian_filter(dist, max(0.1 * d, 0.5))
        peaks = peak_local_max(
            dist_s,
            min_distance=max(1, round(c.marker_min_distance * d)),
            threshold_abs=c.marker_min_depth * d,
            labels=comps,
            exclude_border=False,
        )
        markers = np.zeros(fg.shape, np.int32)
        markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        labels = watershed(-dist_s, markers, mask=fg).astype(np.int32)
        min_area = c.min_area_fraction * np.pi * d * d / 4.0
        keep = None
        if labels.max() > 0:
            keep = np.bincount(labels.ravel()) >= min_area
        if scale < 1.0:
            labels = resize(
                labels, image.shape, order=0, anti_aliasing=False, preserve_range=True
            ).astype(np.int32)
        return relabel(labels, keep=keep)


def distance_inside(components: NDArray[np.int32]) -> NDArray[np.float32]:
    """Euclidean distance to the background inside each connected component.

    One transform per component's bounding box (padded by a pixel) instead of one over the
    frame: the foreground is typically 10–30% of a frame, so this is 4–6× faster than
    ``distance_transform_edt`` on the whole image (1024², ~300 nuclei: ~20 vs ~90 ms). It
    equals the global transform except that pixels of other components count as
    background, which changes distances by under a pixel where components touch
    diagonally.
    """
    out = np.zeros(components.shape, np.float32)
    h, w = components.shape
    for k, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        ys, xs = box
        pad = (
            slice(max(0, ys.start - 1), min(h, ys.stop + 1)),
            slice(max(0, xs.start - 1), min(w, xs.stop + 1)),
        )
        inside = components[pad] == k
        out[pad][inside] = ndi.distance_transform_edt(inside)[inside]
    return out
