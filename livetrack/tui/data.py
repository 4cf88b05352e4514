"""The dashboard's data layer: plain objects that read SQLite and the event socket.

Nothing here imports Textual. The app runs these in worker threads and posts what they
return to the UI thread, so a slow disk or a silent socket can never freeze the screen.
Two sources, merged by the app:

- ``LiveListener`` subscribes to the worker's PUB socket and drains it in short windows,
  so a burst of events becomes one ``LiveBatch`` (one screen update), and only the newest
  ``WorkerStatus`` of a window is kept.
- ``DbPoller`` opens the database read-only (WAL: it reads while the worker writes) and
  returns a ``DbSnapshot``: run, per-position health, division history (incrementally,
  by event id), cells-over-time series, and throughput/latency from committed frames.

Lineages always come from SQLite: the socket may drop messages, the store never does.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from livetrack.errors import BadMessage
from livetrack.messages import FrameRejected, ModelAnswer, TrackEvent, WorkerStatus
from livetrack.store import Store
from livetrack.timings import stage_medians
from livetrack.track.base import FATE_WORDS, TrackRecord
from livetrack.transport import EventSubscriber

log = logging.getLogger("livetrack.tui")

SPARK_FRAMES = 120
"""Frames of history kept per position for the cells-over-time sparkline."""
MAX_DIVISIONS_PER_POLL = 5000
"""Division rows read per poll: a huge finished run loads over several polls, never at once."""


@dataclass(frozen=True)
class Division:
    """One division as the feed shows it, from the socket ('live') or the store ('db')."""

    run_id: str
    position: str
    frame: int
    mother: int
    daughters: tuple[int, ...]
    confidence: float
    when: float
    """Acquisition time of the frame it was detected in, from either source (never the
    commit time, which is later by the worker's lag)."""
    origin: Literal["live", "db"]

    @property
    def key(self) -> str:
        """Identity across both sources, so a division seen twice is shown once."""
        return f"{self.run_id}/{self.position}/{self.frame}/{self.mother}"

    @property
    def order(self) -> tuple[int, str, int]:
        """Acquisition order: time point (frame index), then position, then mother. The
        same for a division whichever source it came from, and however far the worker
        lags behind, so the feed never reorders when the store catches up."""
        return (self.frame, self.position, self.mother)


@dataclass(frozen=True)
class PositionRow:
    """Health of one position, from a WorkerStatus or from the store."""

    position: str
    last_frame: int
    n_cells: int
    active_tracks: int
    divisions: int
    updated: float
    """Wall-clock time of the last committed frame."""
    interval_s: float | None = None
    """Typical seconds between committed frames (from the store), to judge staleness."""


@dataclass(frozen=True)
class RunStats:
    """Throughput and latency of a run, from a live status or from committed frames."""

    frames: int
    fps: float
    stage_ms: dict[str, float]
    lag_s: float | None
    device: str = ""
    state: str = ""


@dataclass(frozen=True)
class DbSnapshot:
    """Everything one poll of the store found."""

    path: Path
    run_id: str | None
    run_status: str = ""
    source: str = ""
    positions: tuple[PositionRow, ...] = ()
    new_divisions: tuple[Division, ...] = ()
    reset: bool = False
    """True when the run changed since the last poll: the feed must start over."""
    cells: dict[str, list[int]] = field(default_factory=dict)
    stats: RunStats | None = None


@dataclass(frozen=True)
class LiveBatch:
    """Messages received from the socket in one drain window, merged."""

    divisions: tuple[Division, ...]
    status: WorkerStatus | None
    rejected: tuple[FrameRejected, ...]
    n_messages: int
    n_invalid: int
    received: float
    models: tuple[ModelAnswer, ...] = ()
    """Answers to model switches (``livetrack use-model``) seen in the window."""


# --------------------------------------------------------------------------- live


class LiveListener:
    """SUB socket on a worker's event endpoint. ZeroMQ reconnects by itself when the
    worker restarts, so this object lives as long as the dashboard."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._sub = EventSubscriber(endpoint, allow_remote=True)

    def drain(self, window_s: float) -> LiveBatch | None:
        """Collect messages for up to ``window_s``; None when nothing arrived."""
        deadline = time.monotonic() + window_s
        divisions: list[Division] = []
        rejected: list[FrameRejected] = []
        models: list[ModelAnswer] = []
        status: WorkerStatus | None = None
        n = n_invalid = 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self._sub.recv(timeout_s=left)
            except BadMessage as err:
                n_invalid += 1
                log.warning("ignored an invalid message from %s: %s", self.endpoint, err)
                continue
            if msg is None:
                break
            n += 1
            if isinstance(msg, WorkerStatus):
                status = msg
            elif isinstance(msg, FrameRejected):
                rejected.append(msg)
            elif isinstance(msg, ModelAnswer):
                models.append(msg)
            elif isinstance(msg, TrackEvent) and msg.event == "division":
                divisions.append(division_from_event(msg))
        if n == 0 and n_invalid == 0:
            return None
        return LiveBatch(
            tuple(divisions),
            status,
            tuple(rejected),
            n,
            n_invalid,
            received=time.time(),
            models=tuple(models),
        )

    def close(self) -> None:
        self._sub.close()


def division_from_event(ev: TrackEvent) -> Division:
    return Division(
        run_id=ev.run_id,
        position=ev.position,
        frame=ev.frame,
        mother=ev.track_id,
        daughters=tuple(ev.daughters),
        confidence=ev.confidence,
        when=ev.timestamp,
        origin="live",
    )


def position_rows_from_status(status: WorkerStatus) -> list[PositionRow]:
    return [
        PositionRow(p.position, p.last_frame, p.n_cells, p.active_tracks, p.divisions, p.updated)
        for p in status.positions
    ]


def stats_from_status(status: WorkerStatus) -> RunStats:
    return RunStats(
        frames=status.frames_processed,
        fps=status.fps,
        stage_ms=dict(status.stage_ms),
        lag_s=status.lag_s,
        device=status.device,
        state=status.state,
    )


# --------------------------------------------------------------------------- store


class DbPoller:
    """Reads one run from a livetrack database, incrementally. Opens the file lazily and
    again after a failure, so a database that appears later (worker not started yet) is
    picked up by the next poll. Raises StoreError / SchemaMismatch with a clear message."""

    def __init__(self, path: Path, run_id: str | None = None) -> None:
        self.path = Path(path)
        self.pinned_run = run_id
        self.follow_run: str | None = None
        """Run announced by the live worker; used when no run was pinned."""
        self._store: Store | None = None
        self._run_id: str | None = None
        self._last_event_id = 0

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.path, readonly=True)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _choose_run(self) -> str | None:
        store = self.store
        for candidate in (self.pinned_run, self.follow_run):
            if candidate is not None and store.has_run(candidate):
                return candidate
        if self.pinned_run is not None:
            return None  # pinned to a run that is not (yet) in the file
        return store.latest_run_id()

    def poll(self) -> DbSnapshot:
        """One consistent look at the chosen run."""
        try:
            run_id = self._choose_run()
        except BaseException:
            self.close()
            raise
        reset = run_id != self._run_id
        if reset:
            self._run_id, self._last_event_id = run_id, 0
        if run_id is None:
            return DbSnapshot(self.path, None, reset=reset)
        store = self.store
        run = next((r for r in store.runs() if r["run_id"] == run_id), {})
        recent = store.recent_frames(run_id, limit=200)
        intervals = _intervals_by_position(recent)
        summaries = store.position_summaries(run_id)
        rows = tuple(
            PositionRow(
                s["position"],
                int(s["last_frame"]),
                int(s["n_cells"] or 0),
                int(s["active_tracks"]),
                int(s["divisions"]),
                float(s["updated"] or 0.0),
                intervals.get(s["position"]),
            )
            for s in summaries
        )
        events = store.divisions_acquired(
            run_id, after_id=self._last_event_id, limit=MAX_DIVISIONS_PER_POLL
        )
        if events:
            self._last_event_id = int(events[-1]["id"])
        cells = {
            r.position: [n for _, n in store.cells_per_frame(run_id, r.position, SPARK_FRAMES)]
            for r in rows
        }
        return DbSnapshot(
            path=self.path,
            run_id=run_id,
            run_status=str(run.get("status", "")),
            source=str(run.get("source", "")),
            positions=rows,
            new_divisions=tuple(_division_from_row(run_id, e) for e in events),
            reset=reset,
            cells=cells,
            stats=_stats_from_frames(recent, sum(int(s["n_frames"]) for s in summaries)),
        )

    def tracks(self, run_id: str, position: str) -> list[TrackRecord]:
        return self.store.tracks(run_id, position)


def _division_from_row(run_id: str, e: dict[str, Any]) -> Division:
    return Division(
        run_id=run_id,
        position=str(e["position"]),
        frame=int(e["frame"]),
        mother=int(e["track_id"]),
        daughters=tuple(int(d) for d in e["daughters"]),
        confidence=float(e["confidence"]),
        when=float(e["acquired"]),
        origin="db",
    )


def _intervals_by_position(recent: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median seconds between consecutive commits, per position."""
    times: dict[str, list[float]] = {}
    for r in recent:
        times.setdefault(str(r["position"]), []).append(float(r["received"]))
    out = {}
    for pos, ts in times.items():
        gaps = [b - a for a, b in itertools.pairwise(ts) if b > a]
        if gaps:
            out[pos] = statistics.median(gaps)
    return out


def _stats_from_frames(recent: Sequence[dict[str, Any]], n_frames: int) -> RunStats:
    """Throughput, median stage latency and lag over the most recent committed frames."""
    fps = 0.0
    if len(recent) >= 2:
        span = float(recent[-1]["received"]) - float(recent[0]["received"])
        fps = (len(recent) - 1) / span if span > 0 else 0.0
    stage_ms = stage_medians(r["timings"] for r in recent[-50:])
    lag = max(0.0, recent[-1]["received"] - recent[-1]["timestamp"]) if recent else None
    return RunStats(frames=n_frames, fps=fps, stage_ms=stage_ms, lag_s=lag)


# --------------------------------------------------------------------------- lineage


@dataclass(frozen=True)
class LineageNode:
    """A track and its descendants."""

    track: TrackRecord
    children: tuple[LineageNode, ...] = ()


@dataclass(frozen=True)
class Lineage:
    """The ancestry (root first, excluding the track) and the descendant tree of a track."""

    run_id: str
    position: str
    track_id: int
    ancestors: tuple[TrackRecord, ...]
    subtree: LineageNode | None
    """None when the track is not (yet) in the store."""


def build_lineage(
    tracks: Sequence[TrackRecord],
    track_id: int,
    *,
    run_id: str = "",
    position: str = "",
    max_nodes: int = 500,
) -> Lineage:
    """Walk ``parent_id`` up to the root and the daughters down, from a position's tracks.

    ``max_nodes`` bounds the descendant tree (a week-long run can hold thousands of
    generations of one clone); a cycle in bad data stops the walk instead of hanging.
    """
    by_id = {t.track_id: t for t in tracks}
    children: dict[int, list[TrackRecord]] = {}
    for t in tracks:
        if t.parent_id is not None:
            children.setdefault(t.parent_id, []).append(t)
    me = by_id.get(track_id)
    if me is None:
        return Lineage(run_id, position, track_id, (), None)
    ancestors: list[TrackRecord] = []
    seen = {track_id}
    parent = me.parent_id
    while parent is not None and parent in by_id and parent not in seen:
        seen.add(parent)
        ancestors.append(by_id[parent])
        parent = by_id[parent].parent_id
    budget = [max_nodes]

    def down(t: TrackRecord, visited: frozenset[int]) -> LineageNode:
        budget[0] -= 1
        kids = []
        for c in sorted(children.get(t.track_id, []), key=lambda r: r.track_id):
            if budget[0] <= 0 or c.track_id in visited:
                break
            kids.append(down(c, visited | {c.track_id}))
        return LineageNode(t, tuple(kids))

    return Lineage(
        run_id, position, track_id, tuple(reversed(ancestors)), down(me, frozenset({track_id}))
    )


def describe_track(t: TrackRecord) -> str:
    """'track 7  f12–f30  divided' — one tree label (fates in words: 'left the field')."""
    fate = FATE_WORDS.get(t.fate, t.fate)
    return f"track {t.track_id}  f{t.start_frame}–f{t.end_frame}  {fate}"
