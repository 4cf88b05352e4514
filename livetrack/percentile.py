"""Percentiles of a whole frame, the same to the last bit as ``np.percentile``, fast.

``np.percentile`` partitions a float copy of the frame (~13 ms for 1024² on this CPU, on
every frame, for the segmenter's normalisation and the tracker's background level). For
integer frames (up to 16 bits) a histogram gives the same order statistics; numpy's linear
interpolation between them is then repeated term for term, so the value is identical to
``np.percentile(frame.astype(np.float32), q)``. numpy has changed that interpolation between
versions: the shortcut is checked against the running numpy once and not used if they
differ.

The segmenter's normalisation, its scale estimate and the tracker's background level all
ask for percentiles of the same frame. Inside ``one_frame(image)`` (the worker wraps each
frame's segmentation and tracking in it) the histogram of that very array is counted once
and reused; outside it, or for any other array, it is counted on every call.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from numpy.typing import NDArray


def frame_percentiles(
    image: NDArray[np.generic], qs: tuple[float, ...], *, as_list: bool = False
) -> tuple[float, ...] | None:
    """``np.percentile(image.astype(np.float32), q)`` (the linear method) for each q, from a
    histogram — or, ``as_list``, ``np.percentile(image.astype(np.float32), list(qs))``,
    which interpolates in float64 instead of float32. None unless the frame holds integers
    of at most 16 bits (the caller then calls ``np.percentile`` itself)."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "ui" or arr.size == 0 or arr.dtype.itemsize > 2:
        return None
    if not _numpy_agrees():
        return None
    return _from_histogram(arr, qs, as_list, _histogram_of(image, arr))


_scope = threading.local()


@contextmanager
def one_frame(image: object) -> Iterator[None]:
    """Within this block the histogram of ``image`` (this very object, which must not change
    until the block ends) is counted at most once, whoever asks for its percentiles; the
    same values as without it. Blocks nest; each thread has its own."""
    before = getattr(_scope, "frame", None)
    _scope.frame = [image, None]
    try:
        yield
    finally:
        _scope.frame = before


def _histogram_of(image: object, arr: NDArray[np.generic]) -> tuple[NDArray[np.int64], int]:
    held = getattr(_scope, "frame", None)
    if held is None or held[0] is not image:
        return _histogram(arr)
    if held[1] is None:
        held[1] = _histogram(arr)
    hist: tuple[NDArray[np.int64], int] = held[1]
    return hist


def _histogram(arr: NDArray[np.generic]) -> tuple[NDArray[np.int64], int]:
    """Cumulative counts of the frame's values from its minimum (0 for unsigned frames),
    and that minimum."""
    flat = arr.ravel()
    low = int(flat.min()) if arr.dtype.kind == "i" else 0
    counts = np.cumsum(np.bincount((flat.astype(np.int64) - low) if low else flat))
    return counts, low


_AGREES: list[bool] = []


def _numpy_agrees() -> bool:
    """Whether this numpy's ``percentile`` interpolates as ``_from_histogram`` does (checked
    once, on random integer samples, both forms): numpy has changed how it rounds the
    weight between versions, and the values must be the same to the last bit."""
    if not _AGREES:
        rng = np.random.default_rng(0)
        ok = True
        for _ in range(40):
            sample = rng.integers(0, 4096, int(rng.integers(2, 400))).astype(np.uint16)
            f32 = sample.astype(np.float32)
            qs = (1.0, 5.0, 99.8, float(rng.uniform(0, 100)))
            one = tuple(float(np.percentile(f32, q)) for q in qs)
            listed = tuple(float(v) for v in np.percentile(f32, list(qs)))
            ok = ok and _from_histogram(sample, qs, False) == one
            ok = ok and _from_histogram(sample, qs, True) == listed
        _AGREES.append(ok)
    return _AGREES[0]


def _from_histogram(
    arr: NDArray[np.generic],
    qs: tuple[float, ...],
    as_list: bool,
    hist: tuple[NDArray[np.int64], int] | None = None,
) -> tuple[float, ...]:
    counts, low = _histogram(arr) if hist is None else hist
    size = arr.size
    out = []
    for q in qs:
        pos = (q / 100.0) * (size - 1)
        below = math.floor(pos)
        above = min(below + 1, size - 1)
        v_below = int(np.searchsorted(counts, below + 1)) + low
        v_above = int(np.searchsorted(counts, above + 1)) + low
        # numpy's _lerp, term for term: the weight t = pos - floor(pos) is float64; with one
        # q it is a Python float, so numpy computes on float32 with t (and 1 - t, taken in
        # float64) rounded to float32; with a list of q, on float64.
        a32, b32 = np.float32(v_below), np.float32(v_above)
        diff32 = b32 - a32
        t = pos - below
        if as_list:
            a, b, diff = np.float64(a32), np.float64(b32), np.float64(diff32)
            out.append(float(b - diff * (1.0 - t) if t >= 0.5 else a + diff * t))
        elif t >= 0.5:
            out.append(float(b32 - diff32 * np.float32(1.0 - t)))
        else:
            out.append(float(a32 + diff32 * np.float32(t)))
    return tuple(out)
