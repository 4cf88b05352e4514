"""Tracking-only mode: the driver sends each frame's label image (ground truth, or another
program's segmentation) and the worker tracks it instead of segmenting.

``given_label_image`` checks and, when needed, renumbers what arrived; ``GivenLabels`` is
the segmenter that hands it on. Kept out of the worker, which only picks it per frame.
"""

from __future__ import annotations

import numpy as np

from livetrack.errors import BadFrame
from livetrack.types import Detections, LabelImage, ScaleState, Segmentation


class GivenLabels:
    """Segmenter used in tracking-only mode: the frame came with its label image (already
    checked by ``given_label_image``)."""

    name = "given-labels"

    def __init__(self, labels: LabelImage) -> None:
        self._labels = labels

    def predict(self, image: np.ndarray, pixel_size_um: float | None = None) -> Segmentation:
        mask = self._labels
        return Segmentation(mask=mask, detections=Detections.from_labels(mask))

    def restore_scale(self, state: ScaleState) -> None:
        """Given labels need no scale."""


def given_label_image(labels: np.ndarray) -> tuple[LabelImage, bool]:
    """A label image sent by a driver as int32, and whether it was renumbered.

    Negative labels are bad input (BadFrame). Labels larger than the pixel count are
    renumbered 1..N in increasing order (0 stays background): measuring objects costs
    arrays as long as the largest label, so one pixel of 2**31-1 would ask for 16 GiB,
    and uint32 labels beyond 2**31-1 do not fit int32 at all. Labels up to the pixel
    count are kept as they are (e.g. ground-truth ids)."""
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise BadFrame(f"label image must hold integers, got {lab.dtype}")
    if lab.size == 0:
        return lab.astype(np.int32), False
    low, high = int(lab.min()), int(lab.max())
    if low < 0:
        raise BadFrame(
            f"label image has negative labels (min {low}); use 0 for background and "
            "positive labels for objects"
        )
    if high <= lab.size:
        return lab.astype(np.int32, copy=False), False
    values, inverse = np.unique(lab, return_inverse=True)
    offset = 0 if values[0] == 0 else 1
    return (inverse.reshape(lab.shape) + offset).astype(np.int32), True
