"""The online tracker: one per position, the same lineage bookkeeping for every scorer.

Per frame ``OnlineTracker.step``:

1. close tracks that missed more than ``max_gap`` frames;
2. ``scorer.score(...)`` → this frame's ``FrameScores``: gated link costs (with the birth and
   death costs of Caliban's layout) and, later, division scores;
3. sparse assignment over the gated graph (``assign.assign_sparse``);
4. division selection: each newborn detection may be a daughter of a track that either
   matched one detection in this frame (its other daughter) or was left unmatched (both
   daughters too far to link); the scorer scores these (mother, newborn) pairs and
   ``select_divisions`` picks two-daughter divisions globally;
5. bookkeeping: new ids, fates ("divided", "lost", "left", "active"), events, gap closing.

What differs between trackers is only *how a pair is scored*: the ``LinkScorer`` protocol
(``lap.DistanceScorer``: distance, area and division geometry; ``lstm.LearnedScorer``:
Caliban's causal LSTM over neighbourhood embeddings, optionally with the division geometry
next to its probabilities; ``fixed.FixedScorer``: given probabilities, for tests). A
scorer's per-frame results live in the ``FrameScores`` object it returns, never on the
scorer, so nothing of one frame leaks into the next; its long-lived state (the learned
scorer's per-track windows) is updated once per frame through ``commit``.

Every length is in nucleus diameters. The diameter (unless configured) is the median
equivalent diameter of the detections in the last ``history_window`` frames, so it adapts to
the microscope and can be rebuilt exactly from the history the store gives back on restart.
The open tracks are a handful of arrays sorted by track id, so a step is a deterministic
function of (state, frame, detections).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from livetrack.config import TrackConfig
from livetrack.errors import BadFrame
from livetrack.track.assign import assign_sparse, select_parents
from livetrack.track.base import (
    EventKind,
    Fate,
    FrameHistory,
    LineageEvent,
    TrackEnd,
    TrackRecord,
    TrackStart,
    TrackStep,
    check_lineage,
)
from livetrack.types import Detections

log = logging.getLogger("livetrack.track")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
IndexArray = NDArray[np.intp]


def equivalent_diameter(areas: NDArray[np.integer] | FloatArray) -> FloatArray:
    """Diameter of the disc with the same area (pixels)."""
    return np.asarray(2.0 * np.sqrt(np.asarray(areas, np.float64) / np.pi), np.float64)


DRIFT_MIN_TRACKS = 5
"""Fewer tracks with a known displacement than this and no drift is estimated."""
DRIFT_SIGNIFICANCE = 5.0
"""A drift is followed when the median displacement, in either axis, lies more than this
many standard errors from zero (a median's standard error: 1.2533 × 1.4826 × MAD / √n)."""


def estimate_drift(frame: int, tracks: OpenTracks) -> FloatArray:
    """(2,) the field's common displacement per frame (y, x) from the tracks seen in the
    latest frame any was seen in (the previous one, unless a frame went missing) whose
    displacement is known (``OpenTracks.known``): their median, kept only where it is
    significant (``DRIFT_SIGNIFICANCE``) in either axis, else zeros."""
    if len(tracks) == 0:
        return np.zeros(2)
    known = (tracks.last == tracks.last.max()) & tracks.known_vel()
    v = tracks.vel[known]
    if len(v) < DRIFT_MIN_TRACKS:
        return np.zeros(2)
    med = np.median(v, axis=0)
    mad = np.median(np.abs(v - med), axis=0)
    se = 1.2533 * 1.4826 * mad / np.sqrt(len(v))
    if np.all(np.abs(med) <= DRIFT_SIGNIFICANCE * se):
        return np.zeros(2)
    return np.asarray(med, np.float64)


def drift_corrected(frame: int, tracks: OpenTracks, drift: FloatArray) -> OpenTracks:
    """The open tracks as a scorer should see them under a common ``drift``: each moved by
    the drift for every frame since it was seen, its displacement less the drift (its own
    motion; unknown stays zero), so that ``predicted`` is last position + drift + damped own
    motion, and the divisions' reference is where the drift took the mother."""
    if not np.any(drift):
        return tracks
    gap = (frame - tracks.last).astype(np.float64)[:, None]
    known = tracks.known_vel()[:, None]
    return replace(
        tracks,
        pos=tracks.pos + drift[None, :] * gap,
        vel=np.where(known, tracks.vel - drift[None, :], 0.0),
    )


# ---------------------------------------------------------------------- what scorers see


@dataclass(frozen=True, eq=False)
class OpenTracks:
    """Struct-of-arrays over the open tracks, always sorted by id (what a scorer sees)."""

    ids: IntArray
    pos: FloatArray
    """(T, 2) last (y, x)."""
    vel: FloatArray
    """(T, 2) last frame-to-frame displacement (0 unless seen in consecutive frames)."""
    area: FloatArray
    last: IntArray
    """Last frame with a detection."""
    known: NDArray[np.bool_] | None = None
    """(T,) whether ``vel`` is a measured displacement (the track's last two detections in
    consecutive frames); None: wherever ``vel`` is not zero."""

    @classmethod
    def empty(cls) -> OpenTracks:
        return cls(
            ids=np.zeros(0, np.int64),
            pos=np.zeros((0, 2)),
            vel=np.zeros((0, 2)),
            area=np.zeros(0),
            last=np.zeros(0, np.int64),
            known=np.zeros(0, bool),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def known_vel(self) -> NDArray[np.bool_]:
        """``known``, or where ``vel`` is not zero when it was not given."""
        if self.known is not None:
            return self.known
        return np.asarray(np.any(self.vel != 0.0, axis=1))

    def take(self, idx: IndexArray | NDArray[np.bool_]) -> OpenTracks:
        return OpenTracks(
            self.ids[idx],
            self.pos[idx],
            self.vel[idx],
            self.area[idx],
            self.last[idx],
            self.known_vel()[idx],
        )

    def concat(self, other: OpenTracks) -> OpenTracks:
        return OpenTracks(
            np.concatenate([self.ids, other.ids]),
            np.concatenate([self.pos, other.pos]),
            np.concatenate([self.vel, other.vel]),
            np.concatenate([self.area, other.area]),
            np.concatenate([self.last, other.last]),
            np.concatenate([self.known_vel(), other.known_vel()]),
        )

    def missed(self, frame: int) -> FloatArray:
        """Frames each track missed before ``frame``."""
        return (frame - self.last - 1).astype(np.float64)

    def predicted(self, frame: int, damping: float) -> FloatArray:
        """(T, 2) predicted positions at ``frame``: last position + damped velocity."""
        return np.asarray(self.pos + damping * self.vel * (frame - self.last)[:, None])


@dataclass(frozen=True, eq=False)
class LinkCosts:
    """Gated (track, detection) link candidates with their assignment costs."""

    track: IndexArray
    detection: IndexArray
    cost: FloatArray
    birth_cost: float
    """Cost of leaving a detection unlinked (a new track or a daughter)."""
    death_cost: float
    """Cost of leaving a track unlinked in this frame."""


@dataclass(frozen=True, eq=False)
class DivisionScores:
    """Scored (mother, newborn) pairs: open-track index, detection index, score."""

    mother: IndexArray
    child: IndexArray
    score: FloatArray

    @classmethod
    def none(cls) -> DivisionScores:
        return cls(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))


class FrameScores(Protocol):
    """One frame's scores from a ``LinkScorer``."""

    @property
    def links(self) -> LinkCosts:
        """The link candidates and costs for the assignment."""
        ...

    @property
    def division_threshold(self) -> float:
        """Minimum score of a (mother, newborn) pair to be a division."""
        ...

    @property
    def embeddings(self) -> NDArray[np.float32] | None:
        """(N, D) per-detection state to store for a restart (``TrackStep.embeddings``)."""
        ...

    def divisions(
        self, eligible: NDArray[np.bool_], sibling: IndexArray, newborn: IndexArray
    ) -> DivisionScores:
        """Score (mother, newborn) pairs. ``eligible[t]``: track t may divide in this frame;
        ``sibling[t]``: the detection track t matched (its first daughter if it divides), -1
        if unmatched; ``newborn``: detections the assignment left unlinked."""
        ...


class LinkScorer(Protocol):
    """How pairs are scored: the one part of tracking that differs between trackers."""

    name: str

    @property
    def history_window(self) -> int:
        """How many last committed frames ``restore`` needs (0: none beyond the tracker's)."""
        ...

    def score(
        self,
        frame: int,
        tracks: OpenTracks,
        detections: Detections,
        diameter: float,
        frame_shape: tuple[int, int],
        image: NDArray[np.generic] | None,
        mask: NDArray[np.integer] | None,
        features: object | None,
        *,
        labels_given: bool = False,
    ) -> FrameScores:
        """Gate and score this frame's pairs (``features``: precomputed per-detection
        inputs a learned scorer accepts instead of ``image``/``mask``; ``labels_given``:
        the frame's labels came with it instead of from livetrack's segmentation)."""
        ...

    def commit(
        self,
        frame: int,
        track_ids: IntArray,
        ended: list[int],
        detections: Detections,
        scores: FrameScores,
    ) -> None:
        """The frame's decisions: ``track_ids[i]`` of ``detections[i]``; ``ended`` tracks
        will never be seen again."""
        ...

    def restore(self, history: list[FrameHistory], open_ids: IntArray, last_frame: int) -> None:
        """Rebuild the scorer's state from the last committed frames (oldest first)."""
        ...

    def reset(self) -> None:
        """Forget every track (the stream ended)."""
        ...


# ---------------------------------------------------------------------- divisions


@dataclass(frozen=True, eq=False)
class Divisions:
    """Accepted divisions of one frame (one row per mother)."""

    mother: IndexArray
    """Open-track index of each dividing mother."""
    daughters: list[tuple[int, ...]]
    """Detection indices of its two daughters."""
    confidence: FloatArray
    links: IndexArray
    """(K, 2) (open-track index, detection index): a candidate mother that got only one
    daughter; not a division, the detection continues her track."""

    @classmethod
    def none(cls) -> Divisions:
        return cls(np.zeros(0, np.intp), [], np.zeros(0), np.zeros((0, 2), np.intp))


def select_divisions(
    m: IndexArray,
    c: IndexArray,
    score: FloatArray,
    sibling: IndexArray,
    threshold: float,
) -> Divisions:
    """Pick mothers for newborn detections among scored (mother, newborn) rows: a mother
    already linked to a detection (``sibling[m] >= 0``, its first daughter) takes one more,
    an unlinked one up to two; the linked detection joins its daughters.

    A division has two daughters. An unlinked mother that gets only one newborn did not
    divide as far as the lineage can tell: that newborn is her only descendant in sight, so
    it continues her track (``Divisions.links``) — the reading the CTC gives a parent with
    a single child. Newborns no mother takes start new tracks with no parent."""
    capacity = np.where(sibling[m] >= 0, 1, 2)
    sel_m, sel_c, sel_s = select_parents(m, c, score, threshold, capacity)
    uniq, n_kids = np.unique(sel_m, return_counts=True)
    lone = (n_kids < 2) & (sibling[uniq] < 0)
    lone_rows = np.isin(sel_m, uniq[lone])
    links = np.stack([sel_m[lone_rows], sel_c[lone_rows]], axis=1).astype(np.intp)
    sel_m, sel_c, sel_s = sel_m[~lone_rows], sel_c[~lone_rows], sel_s[~lone_rows]
    uniq = uniq[~lone]
    daughters: list[tuple[int, ...]] = []
    conf = np.zeros(len(uniq))
    for k, mother in enumerate(uniq):
        mine = sel_m == mother
        kids = [int(d) for d in sel_c[mine]]
        if sibling[mother] >= 0:
            kids.append(int(sibling[mother]))
        daughters.append(tuple(sorted(kids)))
        conf[k] = float(np.clip(sel_s[mine].mean(), 0.0, 1.0))
    return Divisions(uniq.astype(np.intp), daughters, conf, links.reshape(-1, 2))


# ---------------------------------------------------------------------- the tracker


class OnlineTracker:
    """Online tracker for one position over a ``LinkScorer``; see the module docstring."""

    def __init__(
        self, config: TrackConfig, frame_shape: tuple[int, int], scorer: LinkScorer
    ) -> None:
        self.config = config
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.scorer = scorer
        self._tracks = OpenTracks.empty()
        self._next_id = 1
        self._last_frame: int | None = None
        self._diameters: deque[tuple[int, FloatArray]] = deque()
        self._seen_first = False

    @property
    def name(self) -> str:
        """The scorer's name ("lap", "lstm", …): what the worker's status shows."""
        return self.scorer.name

    @property
    def n_open(self) -> int:
        """Number of open (linkable) tracks."""
        return len(self._tracks)

    @property
    def open_tracks(self) -> OpenTracks:
        """The open tracks (read-only view, sorted by id)."""
        return self._tracks

    def _drift_view(self, frame: int, tracks: OpenTracks) -> OpenTracks:
        if not self.config.drift_correction:
            return tracks
        return drift_corrected(frame, tracks, estimate_drift(frame, tracks))

    @property
    def history_window(self) -> int:
        """How many last frames ``restore`` needs to rebuild the state exactly."""
        return max(self.config.max_gap + 2, self.scorer.history_window)

    def step(
        self,
        frame: int,
        detections: Detections,
        image: NDArray[np.generic] | None = None,
        mask: NDArray[np.integer] | None = None,
        *,
        features: object | None = None,
        labels_given: bool = False,
    ) -> TrackStep:
        """Link ``detections`` of ``frame`` to the open tracks; see the module docstring.
        ``image`` and ``mask`` go to the scorer (the distance scorer ignores them);
        ``features``: the learned scorer's per-detection inputs, when already computed;
        ``labels_given``: the detections come from a given label image (tracking only), not
        from livetrack's segmentation (``TrackConfig.geometry_weight``)."""
        if self._last_frame is not None and frame <= self._last_frame:
            raise BadFrame(f"frame {frame} arrived after frame {self._last_frame}")
        self._diameters.append((frame, equivalent_diameter(detections.areas)))
        diam = self._diameter(frame)
        ended: list[TrackEnd] = []
        events: list[LineageEvent] = []

        stale = frame - self._tracks.last - 1 > self.config.max_gap
        self._close(self._tracks.take(stale), diam, ended, events)
        self._tracks = tracks = self._tracks.take(~stale)

        seen = self._drift_view(frame, tracks)
        scores = self.scorer.score(
            frame,
            seen,
            detections,
            diam,
            self.frame_shape,
            image,
            mask,
            features,
            labels_given=labels_given,
        )
        lc = scores.links
        res = assign_sparse(
            len(tracks),
            len(detections),
            lc.track,
            lc.detection,
            lc.cost,
            lc.birth_cost,
            lc.death_cost,
        )
        matches, newborn = res.matches, res.unmatched_detections
        divisions = self._divisions(frame, tracks, matches, newborn, scores)
        if len(divisions.links):  # one-daughter "divisions" continue the mother's track
            matches = np.concatenate([matches, divisions.links])
            matches = matches[np.argsort(matches[:, 0], kind="stable")]
            newborn = np.setdiff1d(newborn, divisions.links[:, 1])
        is_mother = np.zeros(len(tracks), bool)
        is_mother[divisions.mother] = True
        leftover = leftover_links(
            seen.predicted(frame, self.config.velocity_damping),
            detections.centroids,
            _unmatched(len(tracks), matches[:, 0], is_mother, tracks.last == self._last_frame),
            np.setdiff1d(newborn, [d for kids in divisions.daughters for d in kids]),
            self.config.leftover_link_distance * diam,
        )
        if len(leftover):
            matches = np.concatenate([matches, leftover])
            matches = matches[np.argsort(matches[:, 0], kind="stable")]
            newborn = np.setdiff1d(newborn, leftover[:, 1])
        t_match, d_match = matches[:, 0], matches[:, 1]

        # Continuing tracks: matched and not dividing.
        cont = ~is_mother[t_match]
        track_ids = np.zeros(len(detections), np.int64)
        track_ids[d_match[cont]] = tracks.ids[t_match[cont]]
        updated = _advance(tracks, t_match[cont], d_match[cont], frame, detections)

        # New tracks: newborns and both daughters of every division, ids in detection order.
        parent = np.zeros(len(detections), np.int64)
        parent[newborn] = -1
        for m, kids in zip(divisions.mother, divisions.daughters, strict=True):
            parent[list(kids)] = tracks.ids[m]
        new_dets = np.flatnonzero(parent != 0)
        new_ids = self._next_id + np.arange(len(new_dets), dtype=np.int64)
        self._next_id += len(new_dets)
        track_ids[new_dets] = new_ids
        started = [
            TrackStart(int(tid), frame, int(parent[d]) if parent[d] > 0 else None)
            for tid, d in zip(new_ids, new_dets, strict=True)
        ]
        if self._seen_first:
            roots = parent[new_dets] < 0
            events += _birth_events(frame, new_ids[roots], detections.centroids[new_dets[roots]])
        ended += [
            TrackEnd(int(tracks.ids[m]), int(tracks.last[m]), "divided") for m in divisions.mother
        ]
        events += _division_events(frame, divisions, tracks, track_ids)

        # Unmatched, not dividing: stay open within max_gap, else close.
        unmatched = np.ones(len(tracks), bool)
        unmatched[t_match] = False
        unmatched &= ~is_mother
        expired = unmatched & (frame - tracks.last > self.config.max_gap)
        waiting = unmatched & ~expired
        self._close(tracks.take(expired), diam, ended, events)

        born = OpenTracks(
            ids=new_ids,
            pos=detections.centroids[new_dets].astype(np.float64),
            vel=np.zeros((len(new_dets), 2)),
            area=detections.areas[new_dets].astype(np.float64),
            last=np.full(len(new_dets), frame, np.int64),
            known=np.zeros(len(new_dets), bool),
        )
        keep = updated.concat(tracks.take(waiting))
        keep = keep.take(np.argsort(keep.ids, kind="stable"))
        self._tracks = keep.concat(born)
        self._last_frame = frame
        self._seen_first = True
        ended.sort(key=lambda e: e.track_id)
        self.scorer.commit(frame, track_ids, [e.track_id for e in ended], detections, scores)
        step = TrackStep(
            frame=frame,
            track_ids=track_ids,
            started=started,
            ended=ended,
            events=events,
            embeddings=scores.embeddings,
        )
        if __debug__:
            check_lineage(step)
        return step

    def finish(self, last_frame: int) -> list[TrackEnd]:
        """Close every open track: "active" if seen in ``last_frame``, else left/lost."""
        tracks = self._tracks
        diam = self._diameter(last_frame)
        fates = self._fates(tracks.pos, tracks.area, diam)
        ended = [
            TrackEnd(int(tid), int(last), "active" if last == last_frame else fate)
            for tid, last, fate in zip(tracks.ids, tracks.last, fates, strict=True)
        ]
        self._tracks = OpenTracks.empty()
        self.scorer.reset()
        return ended

    def restore(self, history: list[FrameHistory], tracks: list[TrackRecord]) -> None:
        """Rebuild the state from the last committed frames and the track table.

        Open tracks are the records with fate "active"; their last position/area come from
        their latest detection in ``history`` and their velocity from the frame before it.
        The diameter window and the next id (max id seen + 1) are rebuilt the same way, and
        the scorer rebuilds its own state from the same history, so continuing gives
        exactly what an uninterrupted run gives.
        """
        hist = sorted(history, key=lambda h: h.frame)
        for h in hist:
            if len(h.track_ids) != len(h.detections):
                raise BadFrame(
                    f"history frame {h.frame}: {len(h.track_ids)} track ids for "
                    f"{len(h.detections)} detections"
                )
        self._diameters = deque((h.frame, equivalent_diameter(h.detections.areas)) for h in hist)
        max_id = max(
            [r.track_id for r in tracks] + [int(h.track_ids.max(initial=0)) for h in hist] + [0]
        )
        self._next_id = max_id + 1
        open_ids = np.array(sorted(r.track_id for r in tracks if r.fate == "active"), np.int64)
        self._tracks = _rebuild_tracks(hist, open_ids)
        missing = np.setdiff1d(open_ids, self._tracks.ids)
        if len(missing):
            log.warning(
                "%d open tracks have no detection in the restored history; they are "
                "not continued (ids %s...)",
                len(missing),
                missing[:5].tolist(),
            )
        frames = [h.frame for h in hist] + [r.end_frame for r in tracks]
        self._last_frame = max(frames) if frames else None
        self._seen_first = bool(hist) or bool(tracks)
        self.scorer.reset()
        if self._last_frame is not None:
            self.scorer.restore(hist, self._tracks.ids, self._last_frame)

    # ------------------------------------------------------------------ internals

    def _diameter(self, frame: int) -> float:
        """Length unit (px): configured, or the median over the last ``history_window``
        frames (a window ``restore`` gets back)."""
        if self.config.nucleus_diameter_px is not None:
            return float(self.config.nucleus_diameter_px)
        oldest = frame - self.history_window + 1
        while self._diameters and self._diameters[0][0] < oldest:
            self._diameters.popleft()
        values = [d for f, d in self._diameters if f <= frame]
        sizes = np.concatenate(values) if values else np.zeros(0)
        if len(sizes):
            return max(float(np.median(sizes)), 1.0)  # never below one pixel
        if len(self._tracks):
            return float(np.median(equivalent_diameter(self._tracks.area)))
        return 1.0

    def _divisions(
        self,
        frame: int,
        tracks: OpenTracks,
        matches: IndexArray,
        newborn: IndexArray,
        scores: FrameScores,
    ) -> Divisions:
        """A track matched to one detection (its first daughter) may take one newborn; an
        unmatched one seen at most ``division_max_gap`` frames ago may take two."""
        if len(tracks) == 0 or len(newborn) == 0:
            return Divisions.none()
        sibling = np.full(len(tracks), -1, np.intp)
        sibling[matches[:, 0]] = matches[:, 1]
        eligible = (sibling >= 0) | (frame - tracks.last - 1 <= self.config.division_max_gap)
        ds = scores.divisions(eligible, sibling, newborn)
        if len(ds.mother) == 0:
            return Divisions.none()
        return select_divisions(ds.mother, ds.child, ds.score, sibling, scores.division_threshold)

    def _fates(self, pos: FloatArray, area: FloatArray, diam: float) -> list[Fate]:
        """How tracks that end now ended: "left" (the field) when the last detection's edge
        was within ``border_margin`` diameters of the frame border (its centroid's distance
        to the border minus its own radius), else "lost"."""
        h, w = self.frame_shape
        to_border = np.min(
            np.stack([pos[:, 0], h - 1 - pos[:, 0], pos[:, 1], w - 1 - pos[:, 1]]), axis=0
        )
        radius = 0.5 * equivalent_diameter(np.maximum(area, 0.0))
        near = to_border - radius <= self.config.border_margin * diam
        return ["left" if n else "lost" for n in near]

    def _close(
        self,
        closing: OpenTracks,
        diam: float,
        ended: list[TrackEnd],
        events: list[LineageEvent],
    ) -> None:
        """End tracks that can no longer be linked, with a "lost" or "left" event (its frame is
        the track's last frame)."""
        fates = self._fates(closing.pos, closing.area, diam)
        for tid, last, p, fate in zip(closing.ids, closing.last, closing.pos, fates, strict=True):
            ended.append(TrackEnd(int(tid), int(last), fate))
            kind: EventKind = "left" if fate == "left" else "lost"
            events.append(LineageEvent(kind, int(last), int(tid), y=float(p[0]), x=float(p[1])))


def _unmatched(
    n_tracks: int, matched: IndexArray, is_mother: NDArray[np.bool_], recent: NDArray[np.bool_]
) -> IndexArray:
    """Open-track indices neither matched nor dividing, among the ``recent`` ones."""
    free = np.ones(n_tracks, bool)
    free[matched] = False
    return np.flatnonzero(free & ~is_mother & recent)


def leftover_links(
    predicted: FloatArray,
    centroids: FloatArray,
    tracks: IndexArray,
    detections: IndexArray,
    max_distance: float,
) -> IndexArray:
    """(K, 2) (track index, detection index) links among the leftovers of a frame: the
    ``tracks`` (their ``predicted`` positions) and ``detections`` that are each other's
    nearest among these and at most ``max_distance`` px apart
    (``TrackConfig.leftover_link_distance``)."""
    if len(tracks) == 0 or len(detections) == 0 or max_distance <= 0:
        return np.zeros((0, 2), np.intp)
    p, c = predicted[tracks], centroids[detections]
    # Nearest within reach each way (a k-d tree: a frame with nothing linked stays cheap).
    reach = float(np.nextafter(max_distance, np.inf))  # the bound itself counts
    d_t, nearest_det = cKDTree(c).query(p, distance_upper_bound=reach)
    _, nearest_track = cKDTree(p).query(c, distance_upper_bound=reach)
    rows = np.flatnonzero(np.isfinite(d_t))
    rows = rows[nearest_track[nearest_det[rows]] == rows]
    out = np.stack([tracks[rows], detections[nearest_det[rows]]], axis=1)
    return out.astype(np.intp).reshape(-1, 2)


def touches_border(detections: Detections, frame_shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Detections whose bounding box touches the frame edge (area cut by the border)."""
    b = detections.bboxes
    h, w = frame_shape
    return np.asarray((b[:, 0] <= 0) | (b[:, 1] <= 0) | (b[:, 2] >= h) | (b[:, 3] >= w))


def _advance(
    tracks: OpenTracks,
    t_idx: IndexArray,
    d_idx: IndexArray,
    frame: int,
    detections: Detections,
) -> OpenTracks:
    """Continuing tracks with their new detection (velocity only across 1 frame)."""
    new_pos = detections.centroids[d_idx].astype(np.float64)
    consecutive = (tracks.last[t_idx] == frame - 1)[:, None]
    vel = np.where(consecutive, new_pos - tracks.pos[t_idx], 0.0)
    return OpenTracks(
        ids=tracks.ids[t_idx],
        pos=new_pos,
        vel=vel,
        area=detections.areas[d_idx].astype(np.float64),
        last=np.full(len(t_idx), frame, np.int64),
        known=consecutive[:, 0].copy(),
    )


def _birth_events(frame: int, ids: IntArray, pos: FloatArray) -> list[LineageEvent]:
    return [
        LineageEvent("new_track", frame, int(tid), y=float(p[0]), x=float(p[1]))
        for tid, p in zip(ids, pos, strict=True)
    ]


def _division_events(
    frame: int, divisions: Divisions, tracks: OpenTracks, track_ids: IntArray
) -> list[LineageEvent]:
    """One event per mother: daughters' new ids, the mother's last position."""
    return [
        LineageEvent(
            "division",
            frame,
            int(tracks.ids[m]),
            daughters=tuple(sorted(int(track_ids[d]) for d in kids)),
            y=float(tracks.pos[m, 0]),
            x=float(tracks.pos[m, 1]),
            confidence=float(conf),
        )
        for m, kids, conf in zip(
            divisions.mother, divisions.daughters, divisions.confidence, strict=True
        )
    ]


def _rebuild_tracks(hist: list[FrameHistory], open_ids: IntArray) -> OpenTracks:
    """Open-track arrays from the history: last detection per id, velocity from the frame
    right before it (as ``_advance`` computes it)."""
    if not hist or len(open_ids) == 0:
        return OpenTracks.empty()
    ids = np.concatenate([h.track_ids.astype(np.int64) for h in hist])
    frames = np.concatenate([np.full(len(h.track_ids), h.frame, np.int64) for h in hist])
    pos = np.concatenate([h.detections.centroids.astype(np.float64) for h in hist])
    area = np.concatenate([h.detections.areas.astype(np.float64) for h in hist])
    keep = np.isin(ids, open_ids)
    ids, frames, pos, area = ids[keep], frames[keep], pos[keep], area[keep]
    if len(ids) == 0:
        return OpenTracks.empty()
    order = np.lexsort((frames, ids))
    ids, frames, pos, area = ids[order], frames[order], pos[order], area[order]
    is_last = np.append(ids[1:] != ids[:-1], True)
    last = np.flatnonzero(is_last)
    prev = last - 1
    has_prev = (prev >= 0) & (ids[np.maximum(prev, 0)] == ids[last])
    has_prev &= frames[np.maximum(prev, 0)] == frames[last] - 1
    vel = np.where(has_prev[:, None], pos[last] - pos[np.maximum(prev, 0)], 0.0)
    return OpenTracks(ids[last], pos[last], vel, area[last], frames[last], has_prev)


__all__ = [
    "DivisionScores",
    "Divisions",
    "FrameScores",
    "LinkCosts",
    "LinkScorer",
    "OnlineTracker",
    "OpenTracks",
    "drift_corrected",
    "equivalent_diameter",
    "estimate_drift",
    "select_divisions",
    "touches_border",
]
