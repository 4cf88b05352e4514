"""The segmenter seam: anything that turns a frame into labelled nuclei."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from livetrack.types import ScaleState, Segmentation


@runtime_checkable
class Segmenter(Protocol):
    """Turns one 2-D frame into a label image plus measured detections.

    Implementations keep any per-position adaptation (e.g. an estimated nucleus
    diameter) themselves; the worker creates one segmenter per position.
    """

    name: str

    def predict(
        self, image: NDArray[np.generic], pixel_size_um: float | None = None
    ) -> Segmentation:
        """Segment ``image`` (2-D, any real dtype). ``pixel_size_um`` is the frame's pixel
        size when the source knows it, else None. Returns labels at the frame's resolution.

        ``Segmentation.info`` may carry ``diameter_px`` (the nucleus diameter used) and
        ``diameter_estimate`` (the scale measurement made on this frame: from its image, or
        from its detections — ``SegmentConfig.scale_source``); the worker stores both."""
        ...

    def restore_scale(self, state: ScaleState) -> None:
        """Resume: continue the per-position scale from the stored state (a segmenter
        without an adaptive scale ignores it)."""
        ...
