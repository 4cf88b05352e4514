"""The baseline online tracker: gated sparse linear assignment on predicted positions.

One ``LapTracker`` per position. Per frame: predict each open track's position (last
position + damped velocity), gate detections within a radius, solve the assignment with
birth/death options (``assign.assign_sparse``), find mothers for newborn detections
(``assign.select_parents``), close tracks that stayed unmatched longer than ``max_gap``.

Every length is in nucleus diameters. The diameter (unless configured) is the median
equivalent diameter of the detections in the last ``max_gap + 2`` frames, so it adapts to
the microscope and can be rebuilt exactly from the history the store gives back on restart.
State is a handful of arrays over the *open* tracks, sorted by track id, so the result of a
step is a deterministic function of (state, frame, detections).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import BadFrame
from livetrack.track.assign import assign_sparse, gate, select_parents
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
from livetrack.track.config import TrackConfig
from livetrack.types import Detections

log = logging.getLogger("livetrack.track.lap")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

DIVISION_WEIGHTS = (0.4, 0.3, 0.3)
"""Weights of the division cues (distance, symmetry, area) in the [0, 1] division score."""
SYMMETRY_SCALE = 0.75
"""Daughters' midpoint this many diameters away from the mother scores symmetry 0."""
AREA_RATIO_RAMP = (0.1, 0.3, 0.75, 1.25)
"""Daughter/mother area ratio: the area cue rises from 0 to 1 over the first two values
(smaller = a fragment, or a cell entering the field) and falls back to 0 over the last two
(a daughter does not outgrow its mother in one frame)."""


def equivalent_diameter(areas: NDArray[np.integer] | FloatArray) -> FloatArray:
    """Diameter of the disc with the same area (pixels)."""
    return np.asarray(2.0 * np.sqrt(np.asarray(areas, np.float64) / np.pi), np.float64)


@dataclass(frozen=True, eq=False)
class _OpenTracks:
    """Struct-of-arrays over the open tracks, always sorted by id."""

    ids: IntArray
    pos: FloatArray
    """(T, 2) last (y, x)."""
    vel: FloatArray
    """(T, 2) last frame-to-frame displacement (0 unless seen in consecutive frames)."""
    area: FloatArray
    last: IntArray
    """Last frame with a detection."""

    @classmethod
    def empty(cls) -> _OpenTracks:
        return cls(
            ids=np.zeros(0, np.int64),
            pos=np.zeros((0, 2)),
            vel=np.zeros((0, 2)),
            area=np.zeros(0),
            last=np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: NDArray[np.intp] | NDArray[np.bool_]) -> _OpenTracks:
        return _OpenTracks(
            self.ids[idx], self.pos[idx], self.vel[idx], self.area[idx], self.last[idx]
        )

    def concat(self, other: _OpenTracks) -> _OpenTracks:
        return _OpenTracks(
            np.concatenate([self.ids, other.ids]),
            np.concatenate([self.pos, other.pos]),
            np.concatenate([self.vel, other.vel]),
            np.concatenate([self.area, other.area]),
            np.concatenate([self.last, other.last]),
        )


@dataclass(frozen=True, eq=False)
class _Divisions:
    """Accepted divisions of one frame (one row per mother)."""

    mother: NDArray[np.intp]
    """Open-track index of each dividing mother."""
    daughters: list[tuple[int, ...]]
    """Detection indices of its two daughters."""
    confidence: FloatArray
    links: NDArray[np.intp] = field(default_factory=lambda: np.zeros((0, 2), np.intp))
    """(K, 2) (open-track index, detection index): a candidate mother that got only one
    daughter; not a division, the detection continues her track."""


class LapTracker:
    """Distance-based online tracker with gap closing and division detection."""

    name = "lap"

    def __init__(self, config: TrackConfig, frame_shape: tuple[int, int]) -> None:
        self.config = config
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self._tracks = _OpenTracks.empty()
        self._next_id = 1
        self._last_frame: int | None = None
        self._diameters: deque[tuple[int, FloatArray]] = deque()
        self._seen_first = False

    # ------------------------------------------------------------------ public API

    @property
    def n_open(self) -> int:
        """Number of open (linkable) tracks."""
        return len(self._tracks)

    @property
    def history_window(self) -> int:
        """How many last frames ``restore`` needs to rebuild the state exactly."""
        return self.config.max_gap + 2

    def step(
        self,
        frame: int,
        detections: Detections,
        image: NDArray[np.generic] | None = None,
        mask: NDArray[np.integer] | None = None,
    ) -> TrackStep:
        """Link ``detections`` of ``frame`` to the open tracks; see the module docstring.
        ``image`` and ``mask`` are not used (distance and area only)."""
        diam = self._prepare(frame, detections, image, mask)
        ended: list[TrackEnd] = []
        events: list[LineageEvent] = []

        stale = frame - self._tracks.last - 1 > self.config.max_gap
        self._close(self._tracks.take(stale), diam, frame, ended, events)
        self._tracks = self._tracks.take(~stale)

        tracks = self._tracks
        result = self._link(frame, detections, diam)
        divisions = self._divisions(
            frame, detections, result.matches, result.unmatched_detections, diam
        )
        result = result.with_links(divisions.links)  # one-daughter "divisions" continue
        t_match, d_match = result.matches[:, 0], result.matches[:, 1]
        is_mother = np.zeros(len(tracks), bool)
        is_mother[divisions.mother] = True

        # Continuing tracks: matched and not dividing.
        cont = ~is_mother[t_match]
        track_ids = np.zeros(len(detections), np.int64)
        track_ids[d_match[cont]] = tracks.ids[t_match[cont]]
        updated = self._advance(tracks, t_match[cont], d_match[cont], frame, detections)

        # New tracks: newborns and both daughters of every division, ids in detection order.
        parent = self._new_track_parents(detections, result.unmatched_detections, divisions, tracks)
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
        self._close(tracks.take(expired), diam, frame, ended, events)

        born = _OpenTracks(
            ids=new_ids,
            pos=detections.centroids[new_dets].astype(np.float64),
            vel=np.zeros((len(new_dets), 2)),
            area=detections.areas[new_dets].astype(np.float64),
            last=np.full(len(new_dets), frame, np.int64),
        )
        keep = updated.concat(tracks.take(waiting))
        keep = keep.take(np.argsort(keep.ids, kind="stable"))
        self._tracks = keep.concat(born)
        self._last_frame = frame
        self._seen_first = True
        ended.sort(key=lambda e: e.track_id)
        step = TrackStep(
            frame=frame, track_ids=track_ids, started=started, ended=ended, events=events
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
        self._tracks = _OpenTracks.empty()
        return ended

    def restore(self, history: list[FrameHistory], tracks: list[TrackRecord]) -> None:
        """Rebuild the state from the last committed frames and the track table.

        Open tracks are the records with fate "active"; their last position/area come from
        their latest detection in ``history`` and their velocity from the frame before it.
        The diameter window and the next id (max id seen + 1) are rebuilt the same way, so
        continuing gives exactly what an uninterrupted run gives.
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

    # ------------------------------------------------------------------ internals

    def _prepare(
        self,
        frame: int,
        detections: Detections,
        image: NDArray[np.generic] | None,
        mask: NDArray[np.integer] | None,
    ) -> float:
        """Check the frame order, update the diameter window; return the length unit (px).
        Subclasses extend this to compute per-detection features."""
        if self._last_frame is not None and frame <= self._last_frame:
            raise BadFrame(f"frame {frame} arrived after frame {self._last_frame}")
        self._diameters.append((frame, equivalent_diameter(detections.areas)))
        return self._diameter(frame)

    def _diameter(self, frame: int) -> float:
        """Length unit (px): configured, or median over the last ``max_gap + 2`` frames."""
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

    def _link(self, frame: int, detections: Detections, diam: float) -> _LinkResult:
        """Gate, cost and solve the frame's assignment."""
        cfg, tr = self.config, self._tracks
        missed = (frame - tr.last - 1).astype(np.float64)
        pred = tr.pos + cfg.velocity_damping * tr.vel * (frame - tr.last)[:, None]
        radius = cfg.max_displacement * diam * (1.0 + cfg.gap_radius_growth * missed)
        cand = gate(pred, detections.centroids, radius)
        ratio = np.maximum(detections.areas[cand.detection], 1) / np.maximum(
            tr.area[cand.track], 1.0
        )
        cost = (
            cand.distance / diam
            + cfg.area_weight * np.abs(np.log(ratio))
            + cfg.gap_penalty * missed[cand.track]
        )
        res = assign_sparse(
            len(tr),
            len(detections),
            cand.track,
            cand.detection,
            cost,
            cfg.birth_cost,
            cfg.death_cost,
        )
        return _LinkResult(res.matches, res.unmatched_detections)

    def _advance(
        self,
        tracks: _OpenTracks,
        t_idx: NDArray[np.intp],
        d_idx: NDArray[np.intp],
        frame: int,
        detections: Detections,
    ) -> _OpenTracks:
        """Continuing tracks with their new detection (velocity only across 1 frame)."""
        new_pos = detections.centroids[d_idx].astype(np.float64)
        consecutive = (tracks.last[t_idx] == frame - 1)[:, None]
        vel = np.where(consecutive, new_pos - tracks.pos[t_idx], 0.0)
        return _OpenTracks(
            ids=tracks.ids[t_idx],
            pos=new_pos,
            vel=vel,
            area=detections.areas[d_idx].astype(np.float64),
            last=np.full(len(t_idx), frame, np.int64),
        )

    def _divisions(
        self,
        frame: int,
        detections: Detections,
        matches: NDArray[np.intp],
        newborn: NDArray[np.intp],
        diam: float,
    ) -> _Divisions:
        """Score (mother, newborn) candidates and pick mothers globally.

        Case (a): the mother matched one detection (the first daughter) in this frame and a
        newborn is near — capacity 1. Case (b): the mother was not matched (both daughters
        went too far to link) — capacity 2.
        """
        cfg, tr = self.config, self._tracks
        none = _Divisions(np.zeros(0, np.intp), [], np.zeros(0))
        if len(tr) == 0 or len(newborn) == 0:
            return none
        sibling = np.full(len(tr), -1, np.intp)
        sibling[matches[:, 0]] = matches[:, 1]
        case_b = (sibling < 0) & (frame - tr.last - 1 <= cfg.division_max_gap)
        mothers = np.flatnonzero((sibling >= 0) | case_b)
        cand = gate(
            tr.pos[mothers], detections.centroids[newborn], cfg.division_max_distance * diam
        )
        if len(cand) == 0:
            return none
        m, c = mothers[cand.track], newborn[cand.detection]
        score = _division_scores(
            tr.pos[m],
            tr.area[m],
            m,
            c,
            sibling[m],
            cand.distance / diam,
            detections,
            self._touches_border(detections),
            diam,
            cfg.division_max_distance,
        )
        return select_divisions(m, c, score, sibling, cfg.division_threshold)

    def _new_track_parents(
        self,
        detections: Detections,
        newborn: NDArray[np.intp],
        divisions: _Divisions,
        tracks: _OpenTracks,
    ) -> IntArray:
        """Per detection: 0 = not a new track, -1 = new root, k > 0 = new with parent id k."""
        parent = np.zeros(len(detections), np.int64)
        parent[newborn] = -1
        for m, kids in zip(divisions.mother, divisions.daughters, strict=True):
            parent[list(kids)] = tracks.ids[m]
        return parent

    def _touches_border(self, detections: Detections) -> NDArray[np.bool_]:
        """Detections whose bounding box touches the frame edge (area cut by the border)."""
        b = detections.bboxes
        h, w = self.frame_shape
        return np.asarray((b[:, 0] <= 0) | (b[:, 1] <= 0) | (b[:, 2] >= h) | (b[:, 3] >= w))

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
        closing: _OpenTracks,
        diam: float,
        frame: int,
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


def select_divisions(
    m: NDArray[np.intp],
    c: NDArray[np.intp],
    score: FloatArray,
    sibling: NDArray[np.intp],
    threshold: float,
) -> _Divisions:
    """Pick mothers for newborn detections among scored (mother, newborn) rows: a mother
    already linked to a detection (``sibling[m] >= 0``, its first daughter) takes one more,
    an unlinked one up to two; the linked detection joins its daughters.

    A division has two daughters. An unlinked mother that gets only one newborn did not
    divide as far as the lineage can tell: that newborn is her only descendant in sight, so
    it continues her track (``_Divisions.links``) — the reading the CTC gives a parent with
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
    return _Divisions(uniq.astype(np.intp), daughters, conf, links.reshape(-1, 2))


def _birth_events(frame: int, ids: IntArray, pos: FloatArray) -> list[LineageEvent]:
    return [
        LineageEvent("new_track", frame, int(tid), y=float(p[0]), x=float(p[1]))
        for tid, p in zip(ids, pos, strict=True)
    ]


def _division_events(
    frame: int, divisions: _Divisions, tracks: _OpenTracks, track_ids: IntArray
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


@dataclass(frozen=True, eq=False)
class _LinkResult:
    matches: NDArray[np.intp]
    """(M, 2) (open-track index, detection index), sorted by track."""
    unmatched_detections: NDArray[np.intp]

    def with_links(self, links: NDArray[np.intp]) -> _LinkResult:
        """The same result with ``links`` (track, detection) pairs of unmatched tracks and
        detections added."""
        if len(links) == 0:
            return self
        matches = np.concatenate([self.matches, links])
        matches = matches[np.argsort(matches[:, 0], kind="stable")]
        return _LinkResult(matches, np.setdiff1d(self.unmatched_detections, links[:, 1]))


def _clip01(x: FloatArray) -> FloatArray:
    return np.clip(x, 0.0, 1.0)


def _area_cue(ratio: FloatArray) -> FloatArray:
    lo0, lo1, hi1, hi0 = AREA_RATIO_RAMP
    return _clip01(np.minimum((ratio - lo0) / (lo1 - lo0), (hi0 - ratio) / (hi0 - hi1)))


def _division_scores(
    m_pos: FloatArray,
    m_area: FloatArray,
    m: NDArray[np.intp],
    c: NDArray[np.intp],
    sib: NDArray[np.intp],
    dist: FloatArray,
    detections: Detections,
    truncated: NDArray[np.bool_],
    diam: float,
    max_distance: float,
) -> FloatArray:
    """Score in [0, 1] per (mother, newborn) pair from distance, symmetry and area cues.

    Symmetry: the daughters' midpoint should sit on the mother's last position. The other
    daughter is the mother's matched detection (case a) or the best partner among the
    mother's other newborn candidates (case b; none → symmetry 0). Area: daughters are
    smaller than their mother, but not tiny fragments.
    """
    pos = detections.centroids
    area = np.maximum(detections.areas.astype(np.float64), 1.0)
    m_area = np.maximum(m_area, 1.0)
    partner = sib.copy()
    b_rows = np.flatnonzero(sib < 0)
    if len(b_rows):
        partner[b_rows] = _best_partners(m[b_rows], c[b_rows], m_pos[b_rows], pos)
    has = partner >= 0
    p_safe = np.where(has, partner, c)
    mid = 0.5 * (pos[c] + pos[p_safe])
    asym = np.hypot(*(mid - m_pos).T) / diam
    symmetry = np.where(has, _clip01(1.0 - asym / SYMMETRY_SCALE), 0.0)
    # Both daughters must look like daughters; a detection cut by the frame border has
    # no trustworthy area (and is more likely a cell entering the field).
    cue_c = np.where(truncated[c], 0.0, _area_cue(area[c] / m_area))
    cue_p = np.where(truncated[p_safe], 0.0, _area_cue(area[p_safe] / m_area))
    area_cue = np.where(has, np.minimum(cue_c, cue_p), cue_c)
    w_d, w_s, w_a = DIVISION_WEIGHTS
    return np.asarray(
        w_d * _clip01(1.0 - dist / max_distance) + w_s * symmetry + w_a * area_cue,
        np.float64,
    )


def _best_partners(
    m: NDArray[np.intp], c: NDArray[np.intp], m_pos: FloatArray, pos: FloatArray
) -> NDArray[np.intp]:
    """For each (mother, newborn) row, the other newborn of the same mother that makes the
    most symmetric pair (-1 if the mother has a single candidate)."""
    out = np.full(len(m), -1, np.intp)
    order = np.argsort(m, kind="stable")
    bounds = np.flatnonzero(np.diff(m[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows) < 2:
            continue
        kids = c[rows]
        mid = 0.5 * (pos[kids][:, None, :] + pos[kids][None, :, :])
        asym = np.hypot(*(mid - m_pos[rows[0]]).transpose(2, 0, 1))
        np.fill_diagonal(asym, np.inf)
        out[rows] = kids[np.argmin(asym, axis=1)]
    return out


def _rebuild_tracks(hist: list[FrameHistory], open_ids: IntArray) -> _OpenTracks:
    """Open-track arrays from the history: last detection per id, velocity from the frame
    right before it (as ``LapTracker._advance`` computes it)."""
    if not hist or len(open_ids) == 0:
        return _OpenTracks.empty()
    ids = np.concatenate([h.track_ids.astype(np.int64) for h in hist])
    frames = np.concatenate([np.full(len(h.track_ids), h.frame, np.int64) for h in hist])
    pos = np.concatenate([h.detections.centroids.astype(np.float64) for h in hist])
    area = np.concatenate([h.detections.areas.astype(np.float64) for h in hist])
    keep = np.isin(ids, open_ids)
    ids, frames, pos, area = ids[keep], frames[keep], pos[keep], area[keep]
    if len(ids) == 0:
        return _OpenTracks.empty()
    order = np.lexsort((frames, ids))
    ids, frames, pos, area = ids[order], frames[order], pos[order], area[order]
    is_last = np.append(ids[1:] != ids[:-1], True)
    last = np.flatnonzero(is_last)
    prev = last - 1
    has_prev = (prev >= 0) & (ids[np.maximum(prev, 0)] == ids[last])
    has_prev &= frames[np.maximum(prev, 0)] == frames[last] - 1
    vel = np.where(has_prev[:, None], pos[last] - pos[np.maximum(prev, 0)], 0.0)
    return _OpenTracks(ids[last], pos[last], vel, area[last], frames[last])
