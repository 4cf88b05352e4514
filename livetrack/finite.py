"""Frames with pixels that are not numbers (NaN) or infinite.

Registration and drift correction pad the frame with NaN, and float TIFFs from other
programs can hold infinities. One such pixel turns the frame's percentiles, and so its
normalisation, into NaN: the frame came out empty. ``finite_frame`` replaces them before
the frame is segmented or tracked: NaN by the median of the frame's finite pixels (padding
reads as background), +inf by their maximum, -inf by their minimum.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def finite_frame(image: NDArray[np.generic]) -> tuple[NDArray[np.generic], int]:
    """``image`` with its non-finite pixels replaced (a new array; ``image`` itself when it
    has none: integer frames never do), and how many were replaced. A frame with no finite
    pixel at all becomes zeros."""
    arr = np.asarray(image)
    if arr.dtype.kind != "f" or arr.size == 0:
        return image, 0
    finite = np.isfinite(arr)
    n_bad = int(arr.size - np.count_nonzero(finite))
    if n_bad == 0:
        return image, 0
    out = np.array(arr, copy=True)
    if n_bad == arr.size:
        out[...] = 0
        return out, n_bad
    values = arr[finite]
    out[np.isnan(arr)] = np.median(values)
    out[np.isposinf(arr)] = values.max()
    out[np.isneginf(arr)] = values.min()
    return out, n_bad


def describe_non_finite(n_bad: int, size: int) -> str:
    """The log line's words: how many pixels, what became of them."""
    return (
        f"{n_bad} of {size} pixels are NaN or infinite ({100.0 * n_bad / size:.2g}%); "
        "treated as background (NaN: the frame's median; ±inf: its maximum or minimum)"
    )
