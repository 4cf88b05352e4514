"""The tracker seam: per-position online trackers that extend lineages frame by frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import LineageError
from livetrack.types import Detections

Fate = Literal["active", "divided", "lost", "left"]
"""How a track ended: still running ("active"), divided into two daughters ("divided"),
ended inside the field ("lost": the cell was no longer found; nothing says it died) or
ended at the frame border ("left": it left the field of view). livetrack never says a cell
died: no tracker detects death (the store's schema still allows a 'died' fate for one
that would)."""

EventKind = Literal["new_track", "division", "lost", "left"]
"""What a biologist sees happen live: a track that appears without a mother ("new_track":
a cell entering the field, or one missed until now), a mother that divides into two
daughters ("division"), a track that ends inside the field ("lost") or at its border
("left")."""

EVENT_WORDS: dict[str, str] = {
    "new_track": "new track",
    "division": "division",
    "lost": "lost",
    "left": "left the field",
}
"""The words a user reads for each event kind (CLI summary, dashboard feed)."""

FATE_WORDS: dict[str, str] = {
    "active": "active",
    "divided": "divided",
    "lost": "lost",
    "left": "left the field",
    "died": "died",
}
"""The words a user reads for each track fate."""

LEGACY_EVENT_KINDS: dict[str, EventKind] = {"birth": "new_track", "death": "lost"}
"""Event kinds written before store schema 3 → today's kinds (a "birth" was a new track,
a "death" a track lost inside the field)."""


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
    """Something a biologist wants to see live: a new track, a division, a track lost or
    leaving the field."""

    kind: EventKind
    frame: int
    track_id: int
    """Division: the mother. New track: the track. Lost / left: the ended track."""
    daughters: tuple[int, ...] = ()
    """Division: the two daughters' track ids; else ()."""
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

    @property
    def name(self) -> str:
        """What scores the pairs ("lstm", "lap", …): shown in the worker's status."""
        ...

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
        *,
        labels_given: bool = False,
    ) -> TrackStep:
        """Link ``detections`` of ``frame`` to the active tracks and return the decisions.

        ``image`` (the raw 2-D frame) and ``mask`` (its label image, whose values are
        ``detections.labels``) are given by the worker; trackers that look at appearance need
        them, distance-only trackers ignore them. ``labels_given``: the label image came with
        the frame (tracking only) instead of from livetrack's segmentation."""
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


def check_lineage(step: TrackStep) -> None:
    """Raise LineageError unless every division in ``step`` has exactly two daughters.

    A division is one event, the mother's end with fate "divided" and two new tracks whose
    parent is the mother, all in the same step; a track with a parent and no such division
    (a mother with one daughter) is a tracker bug. Trackers call this under ``__debug__``
    (tests and normal runs; ``python -O`` skips it)."""
    kids: dict[int, set[int]] = {}
    for s in step.started:
        if s.parent_id is not None:
            kids.setdefault(s.parent_id, set()).add(s.track_id)
    divided = {e.track_id for e in step.ended if e.fate == "divided"}
    events = {e.track_id: e for e in step.events if e.kind == "division"}
    for mother in sorted(set(kids) | divided | set(events)):
        daughters = kids.get(mother, set())
        ev = events.get(mother)
        got = tuple(sorted(ev.daughters)) if ev is not None else ()
        if len(daughters) != 2 or mother not in divided or got != tuple(sorted(daughters)):
            raise LineageError(
                f"frame {step.frame}: track {mother} has {len(daughters)} new daughter "
                f"track(s) {sorted(daughters)}, fate "
                f"{'divided' if mother in divided else 'not divided'}, division event "
                f"daughters {list(got) if ev is not None else None}; a division has "
                "exactly two daughters"
            )
