"""The FrameSource protocol every driver implements (simulator, replay, Micro-Manager), and
the optional capabilities a source may add."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


# Optional capabilities: a source may have any of these; callers ask with isinstance()
# (each is runtime-checkable), never with getattr, so the contract stays written here.


@runtime_checkable
class PositionCounting(Protocol):
    """A source that knows how many stage positions it cycles through, so a frame header
    can say how many frames each position will get (``total_frames / n_positions``)."""

    @property
    def n_positions(self) -> int: ...


@runtime_checkable
class Summarising(Protocol):
    """A source with its own account of the stream (e.g. frames it had to drop under a
    lossy overflow policy); the end-of-stream carries it to the worker."""

    def summary(self) -> str: ...


@runtime_checkable
class Skipping(Protocol):
    """A recording that skips unreadable frames and lists them, ``(frame, why)`` (CTC
    replay) or ``(position, frame, why)`` (movies), for the run's summary."""

    @property
    def skipped(self) -> Sequence[tuple[Any, ...]]: ...
