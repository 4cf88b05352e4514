"""The FrameSource protocol every driver implements (simulator, replay, Micro-Manager)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class FrameMeta:
    """What a driver knows about one frame besides its pixels."""

    position: str
    frame_index: int
    timestamp: float
    """Seconds since the epoch when the frame was acquired (or simulated/replayed)."""
    pixel_size_um: float | None = None
    channel: str = "default"
    labels: NDArray[np.integer] | None = None
    """A label image to track instead of segmenting (tracking-only mode), e.g. GT masks."""


@runtime_checkable
class FrameSource(Protocol):
    """Yields (image, meta) pairs in acquisition order. ``total_frames`` is the number of
    frames it will yield over all positions, or None when open-ended (live acquisition)."""

    @property
    def total_frames(self) -> int | None: ...

    def frames(self) -> Iterator[tuple[NDArray[np.generic], FrameMeta]]: ...

    def close(self) -> None: ...
