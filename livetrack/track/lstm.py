"""The learned online tracker: Caliban's causal LSTM model on a stream of frames.

Per frame, as it arrives:

1. features of every detection (``features.frame_features``) and ONE pass of the
   neighbourhood encoder → an embedding per detection (never the whole movie up front);
2. only the *open* tracks (seen within the last ``max_gap + 1`` frames) take part; each
   keeps a ring of its last ``window`` embeddings and positions (written once, when the
   frame is linked), from which an LSTM summary is computed for the tracks that have a
   candidate this frame;
3. distance gating (as the LAP baseline: predicted position, radius growing with missed
   frames) gives candidate (track, detection) pairs; the classifier gives p_same, p_diff and
   p_parent→daughter for each;
4. assignment with cost ``1 − p_same`` in Caliban's birth/death layout, split into the
   gated graph's connected blocks (``assign.assign_sparse``): a link needs p_same above
   ``link_threshold``;
5. newborn detections get a mother when the best eligible track's division score passes
   ``division_threshold`` (``assign.select_parents``): p_parent→daughter for a track left
   unlinked; for a track linked to one daughter, the posterior of "divided into both"
   against "continued as the linked cell" (``division_posterior``). A division has two
   daughters: an unlinked track that gets one newborn is continued by it instead
   (``lap.select_divisions``). Gap closing, fates and events come from the LAP tracker
   this class extends.

The embeddings are returned with every step (``TrackStep.embeddings``) and kept by the
store, so a restarted worker rebuilds the rings from the last ``window`` frames exactly.
Embeddings are rounded to float16 (as stored) before use, so a restored run continues
exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from livetrack.errors import BadFrame, ConfigError
from livetrack.models import SHIPPED_TRACK_MODEL
from livetrack.track.assign import Candidates, assign_sparse, gate
from livetrack.track.base import FrameHistory, TrackEnd, TrackRecord, TrackStep
from livetrack.track.config import TrackConfig
from livetrack.track.features import FrameFeatures, frame_features
from livetrack.track.lap import LapTracker, _Divisions, _LinkResult, select_divisions
from livetrack.track.model import DIFF, PARENT, SAME, TrackNet, load_tracknet
from livetrack.types import Detections

log = logging.getLogger("livetrack.track.lstm")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

DEFAULT_MODEL = SHIPPED_TRACK_MODEL


# ---------------------------------------------------------------------- shared with training


def relative_geometry(
    centroids: NDArray[np.float64], edges: NDArray[np.int64], diameter: float
) -> NDArray[np.float32]:
    """(E, 3) (dy, dx, distance) of each edge's source relative to its target, in d."""
    if edges.shape[1] == 0:
        return np.zeros((0, 3), np.float32)
    rel = (centroids[edges[0]] - centroids[edges[1]]) / diameter
    return np.concatenate([rel, np.hypot(rel[:, :1], rel[:, 1:])], axis=1).astype(np.float32)


def encode_frame(model: TrackNet, feats: FrameFeatures) -> NDArray[np.float32]:
    """(N, D) float32 embeddings of one frame, rounded to float16 precision (as stored)."""
    if len(feats) == 0:
        return np.zeros((0, model.config.embed_dim), np.float32)
    rel = relative_geometry(feats.centroids, feats.edges, feats.diameter)
    with torch.inference_mode():
        emb = model.encode(
            torch.from_numpy(feats.crops),
            torch.from_numpy(feats.morph),
            torch.from_numpy(feats.edges),
            torch.from_numpy(rel),
        )
    return emb.numpy().astype(np.float16).astype(np.float32)


def window_inputs(
    emb: NDArray[np.float32],
    present: NDArray[np.bool_],
    pos: NDArray[np.float64],
    frames: IntArray,
    diameter: float,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """LSTM inputs from windows ordered oldest → newest.

    ``emb`` (T, W, D), ``present`` (T, W), ``pos`` (T, W, 2) px, ``frames`` (W,) the frame
    numbers of the window columns. Returns (embeddings zeroed where absent, presence as
    float, displacement per frame from the previous present entry in d + validity flag).
    """
    t, w = present.shape
    disp = np.zeros((t, w, 3), np.float32)
    last_pos = np.zeros((t, 2))
    last_frame = np.full(t, -1, np.int64)
    for j in range(w):
        ok = present[:, j] & (last_frame >= 0)
        dt = np.maximum(frames[j] - last_frame, 1)[:, None]
        d = (pos[:, j] - last_pos) / (diameter * dt)
        disp[ok, j, :2] = d[ok]
        disp[ok, j, 2] = 1.0
        last_pos = np.where(present[:, j, None], pos[:, j], last_pos)
        last_frame = np.where(present[:, j], frames[j], last_frame)
    e = np.where(present[..., None], emb, 0.0).astype(np.float32)
    return e, present.astype(np.float32), disp


def pair_geometry(
    pred: FloatArray,
    cand_pos: FloatArray,
    missed: FloatArray,
    area_ratio: FloatArray,
    diameter: float,
) -> NDArray[np.float32]:
    """(P, 5): offset of the candidate from the track's predicted position (d), its length,
    frames the track missed before this one, log(candidate area / track's last area)."""
    off = (cand_pos - pred) / diameter
    dist = np.hypot(off[:, 0], off[:, 1])
    return np.column_stack([off, dist, missed, np.log(np.maximum(area_ratio, 1e-3))]).astype(
        np.float32
    )


def partner_features(
    pair_track: NDArray[np.intp],
    cand_pos: FloatArray,
    track_pos: FloatArray,
    cand_area: FloatArray,
    diameter: float,
) -> NDArray[np.float32]:
    """(P, 3) division context of each (track, candidate) pair: among the track's OTHER
    candidates, the one whose midpoint with this candidate lies closest to the track's last
    position (a sister): that distance in d (capped at 3), log(its area / this area), and
    1 if there is one. Pairs of one track must be contiguous in ``pair_track``."""
    n = len(pair_track)
    out = np.zeros((n, 3), np.float32)
    out[:, 0] = 3.0
    if n < 2:
        return out
    starts = np.flatnonzero(np.r_[True, pair_track[1:] != pair_track[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(len(starts)), sizes)
    g = sizes[group]
    i_idx = np.repeat(np.arange(n), g)
    offset = np.arange(int(g.sum())) - np.repeat(np.cumsum(g) - g, g)
    j_idx = starts[group][i_idx] + offset
    ok = i_idx != j_idx
    i_idx, j_idx = i_idx[ok], j_idx[ok]
    if len(i_idx) == 0:
        return out
    mid = 0.5 * (cand_pos[i_idx] + cand_pos[j_idx])
    asym = np.hypot(*(mid - track_pos[i_idx]).T) / diameter
    order = np.lexsort((asym, i_idx))
    first = order[np.r_[True, i_idx[order][1:] != i_idx[order][:-1]]]
    rows, best = i_idx[first], j_idx[first]
    out[rows, 0] = np.minimum(asym[first], 3.0)
    out[rows, 1] = np.log(np.maximum(cand_area[best], 1.0) / np.maximum(cand_area[rows], 1.0))
    out[rows, 2] = 1.0
    return out


def pair_probabilities(
    model: TrackNet,
    win_emb: NDArray[np.float32],
    win_present: NDArray[np.float32],
    win_disp: NDArray[np.float32],
    last_emb: NDArray[np.float32],
    cand_emb: NDArray[np.float32],
    geom: NDArray[np.float32],
    pair_track: NDArray[np.intp],
) -> NDArray[np.float64]:
    """(P, 3) probabilities (same, different, parent→daughter) for each pair; the track
    summaries are computed once per track row of the windows."""
    if len(pair_track) == 0:
        return np.zeros((0, 3))
    with torch.inference_mode():
        summary = model.summarise(
            torch.from_numpy(win_emb), torch.from_numpy(win_present), torch.from_numpy(win_disp)
        )
        idx = torch.from_numpy(pair_track.astype(np.int64))
        logits = model.pair_logits(
            summary[idx],
            torch.from_numpy(last_emb)[idx],
            torch.from_numpy(cand_emb),
            torch.from_numpy(geom),
        )
        prob = torch.softmax(logits.double(), dim=1)
    return prob.numpy()


def division_posterior(
    p_newborn: FloatArray, p_linked_parent: FloatArray, p_linked_same: FloatArray
) -> FloatArray:
    """Probability that a track T linked in this frame to detection s divided into s and the
    newborn c, from the pair probabilities: the assignment's reading "T continued as s, c is
    another cell" has weight p_same(T, s)·(1 − p_pd(T, c)), the division p_pd(T, s)·p_pd(T, c).
    0 where neither was scored."""
    divided = p_linked_parent * p_newborn
    stayed = p_linked_same * (1.0 - p_newborn)
    total = divided + stayed
    return np.where(total > 0, divided / np.where(total > 0, total, 1.0), 0.0)


# ---------------------------------------------------------------------- the tracker


class _Rings:
    """Last ``window`` embeddings and positions of every open track, by frame % window."""

    def __init__(self, window: int, dim: int) -> None:
        self.window, self.dim = window, dim
        self.slot: dict[int, int] = {}
        self.free: list[int] = []
        self.emb = np.zeros((0, window, dim), np.float32)
        self.pos = np.zeros((0, window, 2))
        self.frame = np.zeros((0, window), np.int64)

    def slots_of(self, ids: IntArray) -> NDArray[np.intp]:
        """Slots of the tracks, allocating an empty one for a track not seen yet (e.g. one
        restored without stored embeddings)."""
        for tid in ids:
            tid = int(tid)
            if tid not in self.slot:
                self.slot[tid] = self.free.pop() if self.free else self._grow()
        return np.fromiter((self.slot[int(i)] for i in ids), np.intp, count=len(ids))

    def write(self, ids: IntArray, frame: int, emb: NDArray[np.float32], pos: FloatArray) -> None:
        s = self.slots_of(ids)
        col = frame % self.window
        self.emb[s, col] = emb
        self.pos[s, col] = pos
        self.frame[s, col] = frame

    def drop(self, ids: list[int]) -> None:
        for tid in ids:
            s = self.slot.pop(tid, None)
            if s is not None:
                self.frame[s] = -1
                self.emb[s] = 0.0
                self.pos[s] = 0.0
                self.free.append(s)

    def clear(self) -> None:
        self.__init__(self.window, self.dim)  # type: ignore[misc]

    def window_of(
        self, ids: IntArray, frame: int
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_], FloatArray, IntArray]:
        """Windows for frames ``frame - window .. frame - 1`` of the given tracks."""
        frames = frame - self.window + np.arange(self.window, dtype=np.int64)
        cols = frames % self.window
        s = self.slots_of(ids)
        present = self.frame[s][:, cols] == frames[None, :]
        return self.emb[s][:, cols], present, self.pos[s][:, cols], frames

    def _grow(self) -> int:
        n = len(self.frame)
        extra = max(64, n)
        self.emb = np.concatenate([self.emb, np.zeros((extra, self.window, self.dim), np.float32)])
        self.pos = np.concatenate([self.pos, np.zeros((extra, self.window, 2))])
        self.frame = np.concatenate([self.frame, np.full((extra, self.window), -1, np.int64)])
        self.free.extend(range(n + extra - 1, n, -1))
        return n


class LstmTracker(LapTracker):
    """Caliban's causal tracker, online: see the module docstring."""

    name = "lstm"

    def __init__(
        self,
        config: TrackConfig,
        frame_shape: tuple[int, int],
        model: TrackNet | None = None,
        *,
        meta: dict[str, Any] | None = None,
        link_threshold: float | None = None,
        division_threshold: float | None = None,
    ) -> None:
        super().__init__(config, frame_shape)
        if model is None:
            model, meta = load_tracknet(
                Path(config.model_dir) if config.model_dir else DEFAULT_MODEL
            )
        meta = meta or {}
        self.model = model
        self.meta = meta
        """The model folder's config.json (thresholds chosen with it): handed on with
        ``model`` so trackers of other positions share one loaded network."""
        thresholds = meta.get("thresholds", {})
        if not isinstance(thresholds, dict):
            raise ConfigError("tracking model config.json: 'thresholds' must be an object")
        self.link_threshold = float(
            _first(link_threshold, config.link_threshold, thresholds.get("link"), 0.5)
        )
        self.division_threshold_p = float(
            _first(
                division_threshold,
                config.lstm_division_threshold,
                thresholds.get("division"),
                0.5,
            )
        )
        if not (0.0 < self.link_threshold < 1.0 and 0.0 < self.division_threshold_p <= 1.0):
            raise ConfigError(
                f"link threshold {self.link_threshold} and division threshold "
                f"{self.division_threshold_p} must lie in (0, 1)"
            )
        cfg = model.config
        self._rings = _Rings(cfg.window, cfg.embed_dim)
        self._emb = np.zeros((0, cfg.embed_dim), np.float32)
        self._cand = Candidates(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))
        self._pair_prob = np.zeros((0, 3))  # of this frame's scored pairs, ``_cand`` order
        self._given: FrameFeatures | None = None

    @property
    def history_window(self) -> int:
        return max(self.config.max_gap + 2, self.model.config.window)

    def step(
        self,
        frame: int,
        detections: Detections,
        image: NDArray[np.generic] | None = None,
        mask: NDArray[np.integer] | None = None,
    ) -> TrackStep:
        step = super().step(frame, detections, image, mask)
        ended = [e.track_id for e in step.ended]
        self._rings.drop(ended)
        self._rings.write(step.track_ids, frame, self._emb, detections.centroids)
        return dataclasses.replace(step, embeddings=self._emb)

    def step_features(
        self, frame: int, detections: Detections, features: FrameFeatures
    ) -> TrackStep:
        """``step`` with the frame's features already computed (``features.frame_features``
        of this frame's image and mask, in the detections' order): lets validation and
        benchmarks reuse features instead of recomputing them."""
        if len(features) != len(detections):
            raise BadFrame(f"{len(features)} feature rows for {len(detections)} detections")
        self._given = features
        try:
            return self.step(frame, detections)
        finally:
            self._given = None

    def finish(self, last_frame: int) -> list[TrackEnd]:
        out = super().finish(last_frame)
        self._rings.clear()
        return out

    def restore(self, history: list[FrameHistory], tracks: list[TrackRecord]) -> None:
        super().restore(history, tracks)
        self._rings.clear()
        open_ids = {int(i) for i in self._tracks.ids}
        window = self.model.config.window
        missing = 0
        for h in sorted(history, key=lambda h: h.frame):
            if self._last_frame is not None and h.frame < self._last_frame - window:
                continue
            keep = np.fromiter((int(i) in open_ids for i in h.track_ids), bool, len(h.track_ids))
            emb = h.embeddings
            if emb is None or emb.shape != (len(h.detections), self._rings.dim):
                # Positions are known, appearance is not: zero embeddings, as the model saw
                # for a few tracks in training ("blank" tracks).
                missing += 1
                emb = np.zeros((len(h.detections), self._rings.dim), np.float32)
            self._rings.write(
                h.track_ids[keep],
                h.frame,
                emb[keep].astype(np.float32),
                h.detections.centroids[keep],
            )
        if missing:
            log.warning(
                "%d restored frames have no stored embeddings (a store written before "
                "schema v2?); their tracks continue on positions and motion only",
                missing,
            )

    # ------------------------------------------------------------------ internals

    def _prepare(
        self,
        frame: int,
        detections: Detections,
        image: NDArray[np.generic] | None,
        mask: NDArray[np.integer] | None,
    ) -> float:
        if self._given is not None:
            diam = super()._prepare(frame, detections, image, mask)
            self._emb = encode_frame(self.model, self._given)
            return diam
        if image is None or mask is None:
            raise BadFrame(
                "the lstm tracker needs the frame's image and label image (appearance "
                "features); use the lap tracker for detections only"
            )
        if image.shape != mask.shape:
            raise BadFrame(f"image {image.shape} and mask {mask.shape} differ in shape")
        diam = super()._prepare(frame, detections, image, mask)
        cfg = self.model.config
        feats = frame_features(
            image,
            mask,
            detections,
            diam,
            crop_diameters=cfg.crop_diameters,
            neighbour_diameters=cfg.neighbour_diameters,
        )
        self._emb = encode_frame(self.model, feats)
        return diam

    def _link(self, frame: int, detections: Detections, diam: float) -> _LinkResult:
        cfg, tr = self.config, self._tracks
        missed = (frame - tr.last - 1).astype(np.float64)
        pred = tr.pos + cfg.velocity_damping * tr.vel * (frame - tr.last)[:, None]
        r_link = cfg.max_displacement * diam * (1.0 + cfg.gap_radius_growth * missed)
        r_div = np.where(
            frame - tr.last - 1 <= cfg.division_max_gap, cfg.division_max_distance * diam, 0.0
        )
        # One gate for links and possible mothers: the larger of the two radii.
        cand = gate(pred, detections.centroids, np.maximum(r_link, r_div))
        prob = self._score(frame, detections, cand, pred, missed, diam)
        self._cand, self._pair_prob = cand, prob
        link = cand.distance <= r_link[cand.track]
        cost = 1.0 - prob[link, SAME]
        half = 0.5 * (1.0 - self.link_threshold)
        res = assign_sparse(
            len(tr), len(detections), cand.track[link], cand.detection[link], cost, half, half
        )
        return _LinkResult(res.matches, res.unmatched_detections)

    def _score(
        self,
        frame: int,
        detections: Detections,
        cand: Candidates,
        pred: FloatArray,
        missed: FloatArray,
        diam: float,
    ) -> NDArray[np.float64]:
        if len(cand) == 0:
            return np.zeros((0, 3))
        tr = self._tracks
        rows, pair_track = np.unique(cand.track, return_inverse=True)
        ids = tr.ids[rows]
        emb, present, pos, frames = self._rings.window_of(ids, frame)
        w_emb, w_present, w_disp = window_inputs(emb, present, pos, frames, diam)
        last_col = (tr.last[rows] % self.model.config.window).astype(np.intp)
        slots = self._rings.slots_of(ids)
        known = self._rings.frame[slots, last_col] == tr.last[rows]
        last_emb = np.where(known[:, None], self._rings.emb[slots, last_col], 0.0).astype(
            np.float32
        )
        ratio = np.maximum(detections.areas[cand.detection], 1) / np.maximum(
            tr.area[cand.track], 1.0
        )
        geom = pair_geometry(
            pred[cand.track], detections.centroids[cand.detection], missed[cand.track], ratio, diam
        )
        sister = partner_features(
            cand.track,
            detections.centroids[cand.detection],
            tr.pos[cand.track],
            detections.areas[cand.detection].astype(np.float64),
            diam,
        )
        geom = np.concatenate([geom, sister], axis=1)
        return pair_probabilities(
            self.model,
            w_emb,
            w_present,
            w_disp,
            last_emb,
            self._emb[cand.detection],
            geom,
            pair_track.astype(np.intp),
        )

    def _pair_rows(
        self, t_idx: NDArray[np.intp], d_idx: NDArray[np.intp], n_dets: int
    ) -> NDArray[np.float64]:
        """(K, 3) class probabilities of (track index, detection index) pairs; zeros for a
        pair not scored this frame."""
        if len(t_idx) == 0 or len(self._cand) == 0:
            return np.zeros((len(t_idx), 3))
        n = max(n_dets, 1)
        # gate() sorts its pairs by track then detection, so these keys are increasing.
        keys = self._cand.track.astype(np.int64) * n + self._cand.detection
        key = t_idx.astype(np.int64) * n + d_idx
        pos = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
        return np.where((keys[pos] == key)[:, None], self._pair_prob[pos], 0.0)

    def _divisions(
        self,
        frame: int,
        detections: Detections,
        matches: NDArray[np.intp],
        newborn: NDArray[np.intp],
        diam: float,
    ) -> _Divisions:
        """Mothers for newborn detections.

        An unlinked track seen at most ``division_max_gap`` frames ago can take two newborns
        (score = p_parent→daughter of each); a track linked in this frame can take one
        (score = ``division_posterior``: a daughter the model half took for the mother itself
        does not veto a division its sister makes certain).
        """
        cfg, tr = self.config, self._tracks
        none = _Divisions(np.zeros(0, np.intp), [], np.zeros(0))
        if len(tr) == 0 or len(newborn) == 0 or len(self._cand) == 0:
            return none
        n_d = len(detections)
        sibling = np.full(len(tr), -1, np.intp)
        sibling[matches[:, 0]] = matches[:, 1]
        eligible = (sibling >= 0) | (frame - tr.last - 1 <= cfg.division_max_gap)
        # Every scored pair (track, newborn) of an eligible track.
        m_all, c_all = self._cand.track, self._cand.detection
        is_new = np.zeros(n_d, bool)
        is_new[newborn] = True
        keep = eligible[m_all] & is_new[c_all]
        m, c = m_all[keep], c_all[keep]
        if len(m) == 0:
            return none
        score = self._pair_prob[keep, PARENT]
        linked = sibling[m] >= 0
        sib = np.maximum(sibling[m], 0)
        linked_p = self._pair_rows(m, sib, n_d)
        joint = division_posterior(score, linked_p[:, PARENT], linked_p[:, SAME])
        score = np.where(linked, joint, score)
        return select_divisions(m, c, score, sibling, self.division_threshold_p)


def _first(*values: object) -> float:
    for v in values:
        if v is not None:
            return float(v)  # type: ignore[arg-type]
    raise ConfigError("no threshold given")


__all__ = [
    "DEFAULT_MODEL",
    "DIFF",
    "LstmTracker",
    "division_posterior",
    "encode_frame",
    "pair_geometry",
    "pair_probabilities",
    "relative_geometry",
    "window_inputs",
]
