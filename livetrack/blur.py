"""A Gaussian blur of a large 2-D frame on horizontal bands in threads, the same values to
the last bit as one ``scipy.ndimage.gaussian_filter`` call.

``gaussian_filter`` filters along axis 0 and then along axis 1, each output pixel from the
pixels within the kernel's radius along that axis, with the same arithmetic wherever it
is. A band of rows extended by the radius on each side (except at the frame's own edges,
where the ``reflect`` boundary is the frame's) therefore gives exactly the full call's
values on the band's own rows. SciPy's filters release the GIL, so the bands run in
parallel (a 1024² frame: ~18 → ~9 ms on two cores); small frames take the single call.

``gaussian_filter_f32`` is the same blur in float32 arithmetic (PyTorch, both passes as
shifted adds of a symmetric kernel): equal to SciPy's to float32 rounding (relative
difference ≤ ~1e-6), ~3 ms for a 1024² frame instead of ~9. For the tracker's features
at run time, where the last bit does not matter; training keeps SciPy's values.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage as ndi

MIN_BAND_ROWS = 128
"""No band is cut thinner than this."""
MIN_BAND_PIXELS = 400_000
"""Nor smaller than this: a frame under ~800² is blurred in one call (measured here: no
faster in bands), 1024² in two bands (~18 → ~9 ms)."""
MAX_THREADS = 4

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def blur_threads() -> int:
    """Threads the bands run on: the cores this process may use, at most ``MAX_THREADS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


def _forget_pool() -> None:
    """In a forked child the parent's threads do not exist: start a new pool there."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(blur_threads(), thread_name_prefix="livetrack-blur")
        return _pool


def band_cuts(shape: tuple[int, ...], radius: int, bands: int) -> list[int]:
    """Row boundaries of the bands a frame of ``shape`` is blurred in: at most ``bands``,
    none thinner than ``MIN_BAND_ROWS`` rows or twice the kernel ``radius``, none smaller
    than ``MIN_BAND_PIXELS`` ([0, rows]: one call)."""
    h = int(shape[0])
    size = h * int(np.prod(shape[1:]))
    n = min(int(bands), h // max(MIN_BAND_ROWS, 2 * radius + 1), size // MIN_BAND_PIXELS)
    n = max(n, 1)
    return [round(i * h / n) for i in range(n + 1)]


def gaussian_filter(
    image: NDArray[Any],
    sigma: float | Sequence[float],
    *,
    truncate: float = 4.0,
    mode: str = "reflect",
    bands: int | None = None,
) -> NDArray[Any]:
    """``scipy.ndimage.gaussian_filter(image, sigma, truncate=truncate, mode=mode)`` (output
    in the image's dtype) of a 2-D ``image``, bit for bit, computed on up to ``bands``
    horizontal bands at once (default: ``blur_threads()``). ``sigma``: one for both axes
    or (rows, columns). Any boundary mode but the wrapping ones (a band cannot see the
    frame's other end)."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"gaussian_filter takes a 2-D image, got shape {img.shape}")
    if "wrap" in mode:
        raise ValueError(f"mode {mode!r} is not supported in bands; use scipy.ndimage")
    rows_sigma = float(np.ravel(np.asarray(sigma, np.float64))[0])
    radius = int(truncate * rows_sigma + 0.5)  # scipy's kernel radius along the rows
    cuts = band_cuts(img.shape, radius, blur_threads() if bands is None else int(bands))
    if len(cuts) == 2:
        return ndi.gaussian_filter(img, sigma, truncate=truncate, mode=mode)
    out = np.empty_like(img)
    h = img.shape[0]
    n = len(cuts) - 1

    def band(i: int) -> None:
        a, b = cuts[i], cuts[i + 1]
        lo, hi = max(a - radius, 0), min(b + radius, h)
        res = ndi.gaussian_filter(img[lo:hi], sigma, truncate=truncate, mode=mode)
        out[a:b] = res[a - lo : b - lo]

    try:
        futures = [_executor().submit(band, i) for i in range(n)]
    except RuntimeError:  # the interpreter is shutting down: no new threads; one call
        return ndi.gaussian_filter(img, sigma, truncate=truncate, mode=mode)
    for done in futures:
        done.result()
    return out


def gaussian_kernel_half(sigma: float, truncate: float) -> NDArray[np.float64]:
    """The weights g_0 … g_r of SciPy's Gaussian kernel (``ndimage._gaussian_kernel1d``,
    order 0): ``exp(-x² / 2σ²)`` normalised over −r … r, r = ``int(truncate·σ + 0.5)``."""
    sigma = float(sigma)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 / (sigma * sigma) * x * x)
    k /= k.sum()
    return k[radius:]


def reflect_indices(start: int, stop: int, n: int) -> NDArray[np.int64]:
    """Indices start … stop − 1 into an axis of length ``n``, those outside folded back as
    SciPy's ``reflect`` mode does (d c b a | a b c d | d c b a), one fold at most."""
    i = np.arange(start, stop, dtype=np.int64)
    i = np.where(i < 0, -i - 1, i)
    return np.where(i >= n, 2 * n - 1 - i, i)


def gaussian_filter_f32(
    image: NDArray[Any], sigma: float, *, truncate: float = 4.0
) -> NDArray[np.float32]:
    """``scipy.ndimage.gaussian_filter(image, sigma, truncate=truncate)`` (mode ``reflect``)
    of a 2-D frame as float32, in float32 arithmetic: the same kernel, applied along the
    rows and then the columns as g_0·x + Σ_k g_k·(x[−k] + x[+k]) on the padded frame
    (PyTorch's element-wise kernels, threaded). Equal to SciPy's to float32 rounding; not
    bit for bit (SciPy adds in float64). Kernels wider than the frame take SciPy's call."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"gaussian_filter_f32 takes a 2-D image, got shape {img.shape}")
    g = gaussian_kernel_half(sigma, truncate)
    r = len(g) - 1
    h, w = img.shape
    if r == 0 or r >= min(h, w):  # nothing to blur, or folds beyond one reflection
        return ndi.gaussian_filter(img.astype(np.float32), sigma, truncate=truncate)
    arr = np.ascontiguousarray(img, dtype=np.float32)
    if not arr.flags.writeable:  # a received float32 frame is a read-only view: torch
        arr = arr.copy()  # warns on those (and would let a write through); it only reads
    x = torch.from_numpy(arr)
    with torch.inference_mode():
        rows = x.index_select(0, torch.from_numpy(reflect_indices(-r, h + r, h)))
        out = rows[r : r + h] * float(g[0])
        for k in range(1, r + 1):
            out.add_(rows[r - k : r - k + h] + rows[r + k : r + k + h], alpha=float(g[k]))
        cols = out.index_select(1, torch.from_numpy(reflect_indices(-r, w + r, w)))
        out = cols[:, r : r + w] * float(g[0])
        for k in range(1, r + 1):
            out.add_(cols[:, r - k : r - k + w] + cols[:, r + k : r + k + w], alpha=float(g[k]))
    return out.numpy()


def downscale(image: NDArray[np.floating], shape: tuple[int, int]) -> NDArray[np.floating]:
    """``skimage.transform.resize(image, shape, order=1, anti_aliasing=True,
    preserve_range=True)`` of a 2-D float32 or float64 frame, value for value, with the
    anti-aliasing blur in bands (the same steps: a Gaussian of sigma (factor − 1) / 2 per
    axis, mode ``mirror``; ``ndimage.zoom`` with ``grid_mode``; clipped to the input's
    range)."""
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype not in (np.float32, np.float64):
        raise ValueError(f"downscale takes a 2-D float frame, got {img.dtype} {img.shape}")
    factors = np.divide(img.shape, shape)
    sigma = np.maximum(0, (factors - 1) / 2)
    filtered = gaussian_filter(img, tuple(float(s) for s in sigma), mode="mirror")
    out = ndi.zoom(
        filtered, [1 / f for f in factors], order=1, mode="mirror", cval=0, grid_mode=True
    )
    lo = np.min(img)
    low, high = (np.nanmin(img), np.nanmax(img)) if np.isnan(lo) else (lo, np.max(img))
    np.clip(out, np.asarray(low), np.asarray(high), out=out)
    return out
