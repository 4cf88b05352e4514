"""The distance scorer: the baseline tracker's link costs and division cues.

``DistanceScorer`` (``--tracker lap``) scores a (track, detection) pair by the distance of
the detection from the track's predicted position (last position + damped velocity; the
gating radius grows with missed frames), a small area-change term and a penalty per missed
frame; a (mother, newborn) pair by three geometric cues of a division (``division_geometry``):
the newborn is near the mother, the two daughters sit symmetrically about her last position,
and each daughter is smaller than her but not a fragment. The lineage bookkeeping is the
``OnlineTracker``'s (``online.py``). These cues are also what the learned scorer falls back
on where its model is unsure (``lstm.LearnedScorer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from livetrack.config import TrackConfig
from livetrack.track.assign import gate
from livetrack.track.base import FrameHistory
from livetrack.track.online import (
    DivisionScores,
    LinkCosts,
    OnlineTracker,
    OpenTracks,
    equivalent_diameter,
    select_divisions,
    touches_border,
)
from livetrack.types import Detections

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

DIVISION_WEIGHTS = (0.4, 0.3, 0.3)
"""Weights of the division cues (distance, symmetry, area) in the [0, 1] division score."""
SYMMETRY_SCALE = 0.75
"""Daughters' midpoint this many diameters away from the mother scores symmetry 0."""
AREA_RATIO_RAMP = (0.1, 0.3, 0.75, 1.25)
"""Daughter/mother area ratio: the area cue rises from 0 to 1 over the first two values
(smaller = a fragment, or a cell entering the field) and falls back to 0 over the last two
(a daughter does not outgrow its mother in one frame)."""


@dataclass(frozen=True, eq=False)
class _DistanceFrame:
    """One frame's distance scores (``FrameScores``)."""

    links: LinkCosts
    division_threshold: float
    tracks: OpenTracks
    detections: Detections
    truncated: NDArray[np.bool_]
    diameter: float
    max_distance: float
    embeddings: None = None

    def divisions(
        self, eligible: NDArray[np.bool_], sibling: IndexArray, newborn: IndexArray
    ) -> DivisionScores:
        return division_geometry(
            self.tracks,
            self.detections,
            eligible,
            sibling,
            newborn,
            self.truncated,
            self.diameter,
            self.max_distance,
        )


class DistanceScorer:
    """Link costs from distance and area; divisions from geometry (the baseline)."""

    name = "lap"
    history_window = 0

    def __init__(self, config: TrackConfig) -> None:
        self.config = config

    def score(
        self,
        frame: int,
        tracks: OpenTracks,
        detections: Detections,
        diameter: float,
        frame_shape: tuple[int, int],
        image: NDArray[np.generic] | None = None,
        mask: NDArray[np.integer] | None = None,
        features: object | None = None,
        *,
        labels_given: bool = False,
    ) -> _DistanceFrame:
        """Gate and cost the frame's pairs; ``image``, ``mask`` and ``features`` are not
        used (distance and area only)."""
        cfg, diam = self.config, diameter
        missed = tracks.missed(frame)
        pred = tracks.predicted(frame, cfg.velocity_damping)
        radius = cfg.max_displacement * diam * (1.0 + cfg.gap_radius_growth * missed)
        cand = gate(pred, detections.centroids, radius)
        ratio = np.maximum(detections.areas[cand.detection], 1) / np.maximum(
            tracks.area[cand.track], 1.0
        )
        cost = (
            cand.distance / diam
            + cfg.area_weight * np.abs(np.log(ratio))
            + cfg.gap_penalty * missed[cand.track]
        )
        links = LinkCosts(cand.track, cand.detection, cost, cfg.birth_cost, cfg.death_cost)
        return _DistanceFrame(
            links,
            cfg.division_threshold,
            tracks,
            detections,
            touches_border(detections, frame_shape),
            diam,
            cfg.division_max_distance,
        )

    def commit(self, *args: object) -> None:
        """Nothing to remember beyond the open tracks."""

    def restore(self, history: list[FrameHistory], open_ids: object, last_frame: int) -> None:
        """Nothing to rebuild beyond the open tracks."""

    def reset(self) -> None:
        """Nothing to forget."""


def lap_tracker(config: TrackConfig, frame_shape: tuple[int, int]) -> OnlineTracker:
    """The baseline tracker: an ``OnlineTracker`` over the ``DistanceScorer``."""
    return OnlineTracker(config, frame_shape, DistanceScorer(config))


def division_geometry(
    tracks: OpenTracks,
    detections: Detections,
    eligible: NDArray[np.bool_],
    sibling: IndexArray,
    newborn: IndexArray,
    truncated: NDArray[np.bool_],
    diam: float,
    max_distance: float,
) -> DivisionScores:
    """Geometric division score in [0, 1] of every (eligible mother, newborn) pair within
    ``max_distance`` diameters of the mother's last position.

    Case (a): the mother matched one detection (``sibling``, the first daughter) in this
    frame — the newborn is the second. Case (b): the mother was not matched (both daughters
    too far to link) — the partner is the best other newborn of hers.
    """
    mothers = np.flatnonzero(eligible)
    if len(mothers) == 0 or len(newborn) == 0:
        return DivisionScores.none()
    cand = gate(tracks.pos[mothers], detections.centroids[newborn], max_distance * diam)
    if len(cand) == 0:
        return DivisionScores.none()
    m, c = mothers[cand.track], newborn[cand.detection]
    score = _division_scores(
        tracks.pos[m],
        tracks.area[m],
        m,
        c,
        sibling[m],
        cand.distance / diam,
        detections,
        truncated,
        diam,
        max_distance,
    )
    return DivisionScores(m, c, score)


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


__all__ = [
    "DistanceScorer",
    "OnlineTracker",
    "division_geometry",
    "equivalent_diameter",
    "lap_tracker",
    "select_divisions",
]
