"""The tracker seam: per-position online trackers that extend lineages frame by frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from livetrack.types import Detections

Fate = Literal["active", "divided", "lost", "left", "died"]
"""How a track ended: still running, divided into daughters, disappeared (unexplained),
left the field of view (last seen at the border), died (shrank/faded; a model may tell)."""

EventKind = Literal["birth", "division", "death"]


@dataclass(frozen=True)
class TrackStart:
    """A track that begins at this step."""

    track_id: int
    start_frame: int
    parent_id: int | None = None


@dataclass(frozen=True)
class TrackEnd:
    """A track that is closed at this step (it will never get another detection)."""

    track_id: int
    end_frame: int
    """Last frame the track has a detection in."""
    fate: Fate


@dataclass(frozen=True)
class LineageEvent:
    """Something a biologist wants to see live: a division, a birth, a death."""

    kind: EventKind
    frame: int
    track_id: int
    """Division: the mother. Birth: the new track. Death: the ended track."""
    daughters: tuple[int, ...] = ()
    y: float = float("nan")
    x: float = float("nan")
    confidence: float = 1.0


@dataclass(frozen=True)
class TrackStep:
    """What one ``Tracker.step`` decided for one frame.

    ``track_ids[i]`` is the track of ``detections[i]`` (same order as given). Every
    track id appearing in ``track_ids`` for the first time is listed in ``started``.
    """

    frame: int
    track_ids: NDArray[np.int64]
    started: list[TrackStart] = field(default_factory=list)
    ended: list[TrackEnd] = field(default_factory=list)
    events: list[LineageEvent] = field(default_factory=list)
    embeddings: NDArray[np.float32] | None = None
    """(N, D) per-detection state a learned tracker needs again after a restart (the
    neighbourhood embedding of each detection, same order as ``track_ids``); the store keeps
    it and gives it back in ``FrameHistory.embeddings``. None for trackers that need none."""


@dataclass(frozen=True)
class FrameHistory:
    """One committed frame as the store gives it back for restoring tracker state."""

    frame: int
    detections: Detections
    track_ids: NDArray[np.int64]
    embeddings: NDArray[np.float32] | None = None
    """What ``TrackStep.embeddings`` held for this frame (same row order as ``detections``),
    or None when none was stored."""


@dataclass(frozen=True)
class TrackRecord:
    """A track row as stored, used when restoring tracker state."""

    track_id: int
    parent_id: int | None
    start_frame: int
    end_frame: int
    fate: Fate


@runtime_checkable
class Tracker(Protocol):
    """Online tracker for ONE position. Frames arrive in increasing order."""

    name: str

    @property
    def history_window(self) -> int:
        """How many of the last committed frames ``restore`` needs."""
        ...

    def step(
        self,
        frame: int,
        detections: Detections,
        image: NDArray[np.generic] | None = None,
        mask: NDArray[np.integer] | None = None,
    ) -> TrackStep:
        """Link ``detections`` of ``frame`` to the active tracks and return the decisions.

        ``image`` (the raw 2-D frame) and ``mask`` (its label image, whose values are
        ``detections.labels``) are given by the worker; trackers that look at appearance need
        them, distance-only trackers ignore them."""
        ...

    def finish(self, last_frame: int) -> list[TrackEnd]:
        """Close every still-open track at the end of the stream (fate 'active' stays
        'active' for tracks seen in ``last_frame``; older ones are 'lost')."""
        ...

    def restore(self, history: list[FrameHistory], tracks: list[TrackRecord]) -> None:
        """Rebuild internal state after a restart from the last committed frames
        (oldest first) and the track table, so that the next ``step`` continues exactly
        as if the process had never stopped."""
        ...
