"""The learned scorer: Caliban's causal LSTM model on a stream of frames.

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
   (``online.select_divisions``). The assignment, gap closing, fates and events are the
   ``OnlineTracker``'s, the same for every scorer.

The embeddings are returned with every step (``TrackStep.embeddings``) and kept by the
store, so a restarted worker rebuilds the rings from the last ``window`` frames exactly.
Embeddings are rounded to float16 (as stored) before use, so a restored run continues
exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from livetrack.config import TrackConfig
from livetrack.errors import BadFrame, ConfigError
from livetrack.models import SHIPPED_TRACK_MODEL
from livetrack.track.assign import Candidates, gate
from livetrack.track.base import FrameHistory
from livetrack.track.features import FrameFeatures, frame_features
from livetrack.track.lap import DistanceScorer
from livetrack.track.model import (
    DIFF,
    PARENT,
    SAME,
    TRAINED_DIAMETERS_PX,
    TrackNet,
    load_tracknet,
)
from livetrack.track.online import DivisionScores, FrameScores, LinkCosts, OnlineTracker, OpenTracks
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
    others = sizes[group] - 1  # per pair, the other candidates of its track
    # Every (pair i, other pair j of the same track), grouped by i, j ascending.
    i_idx = np.repeat(np.arange(n), others)
    if len(i_idx) == 0:
        return out
    k = np.arange(len(i_idx)) - np.repeat(np.cumsum(others) - others, others)
    first = starts[group][i_idx]
    j_idx = first + k + (k >= i_idx - first)  # (skipping i itself)
    mid = 0.5 * (cand_pos[i_idx] + cand_pos[j_idx])
    asym = np.hypot(*(mid - track_pos[i_idx]).T) / diameter
    # Per i, the smallest asymmetry and the first j that has it (NaN ranks last, as in a
    # sort: where all are NaN, the first j).
    seg = np.flatnonzero(np.r_[True, i_idx[1:] != i_idx[:-1]])
    seg_len = np.diff(np.r_[seg, len(i_idx)])
    rows = i_idx[seg]
    low = np.fmin.reduceat(asym, seg)
    is_low = asym == np.repeat(low, seg_len)
    is_low[seg[np.isnan(low)]] = True
    hit = np.flatnonzero(is_low)
    hit_seg = np.repeat(np.arange(len(seg)), seg_len)[hit]
    pick = hit[np.r_[True, hit_seg[1:] != hit_seg[:-1]]]
    best = j_idx[pick]
    out[rows, 0] = np.minimum(asym[pick], 3.0)
    out[rows, 1] = np.log(np.maximum(cand_area[best], 1.0) / np.maximum(cand_area[rows], 1.0))
    out[rows, 2] = 1.0
    return out


def pair_probabilities(
    model: TrackNet,
    win_emb: NDArray[np.float32],
    win_present: NDArray[np.float32],
    win_disp: NDArray[np.float32],
    last_emb: NDArray[np.float32],
    emb: NDArray[np.float32],
    geom: NDArray[np.float32],
    pair_track: NDArray[np.intp],
    pair_det: NDArray[np.intp],
) -> NDArray[np.float64]:
    """(P, 3) probabilities (same, different, parent→daughter) for each (track row, detection)
    pair; the track summaries are computed once per track row of the windows, and the
    head's first layer once per track row and once per detection of ``emb``."""
    if len(pair_track) == 0:
        return np.zeros((0, 3))
    with torch.inference_mode():
        summary = model.summarise(
            torch.from_numpy(win_emb), torch.from_numpy(win_present), torch.from_numpy(win_disp)
        )
        logits = model.pair_logits_by_parts(
            summary,
            torch.from_numpy(last_emb),
            torch.from_numpy(emb),
            torch.from_numpy(pair_track.astype(np.int64)),
            torch.from_numpy(pair_det.astype(np.int64)),
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
        keys = [int(i) for i in ids] if not isinstance(ids, np.ndarray) else ids.tolist()
        for tid in keys:
            if tid not in self.slot:
                self.slot[tid] = self.free.pop() if self.free else self._grow()
        return np.fromiter(map(self.slot.__getitem__, keys), np.intp, count=len(keys))

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


@dataclass(frozen=True, eq=False)
class LearnedFrame:
    """One frame's learned scores (``FrameScores``): every gated pair's probabilities."""

    links: LinkCosts
    learned_threshold: float
    """Minimum learned division score."""
    embeddings: NDArray[np.float32]
    cand: Candidates
    """All gated pairs (the larger of the link and division radii), track-major."""
    prob: NDArray[np.float64]
    """(P, 3) (same, different, parent→daughter) per pair of ``cand``."""
    n_detections: int
    geometry: FrameScores | None = None
    """The distance scorer's view of the same frame, when the division decision also
    uses the geometric cues."""

    cues: str = "learned"
    """``TrackConfig.division_cues``: which cues decide a division, and how."""
    geometry_weight: float = 0.5
    """``TrackConfig.division_geometry_weight``: the geometric cue's share of the joint
    decision ("both")."""

    @property
    def division_threshold(self) -> float:
        """The learned threshold; 0.5 on the common scale of ``combine_division_cues``."""
        if self.geometry is None:
            return self.learned_threshold
        return self.geometry.division_threshold if self.cues == "geometry" else 0.5

    def pair_rows(self, t_idx: NDArray[np.intp], d_idx: NDArray[np.intp]) -> FloatArray:
        """(K, 3) class probabilities of (track index, detection index) pairs; zeros for a
        pair not scored this frame."""
        if len(t_idx) == 0 or len(self.cand) == 0:
            return np.zeros((len(t_idx), 3))
        n = max(self.n_detections, 1)
        # gate() sorts its pairs by track then detection, so these keys are increasing.
        keys = self.cand.track.astype(np.int64) * n + self.cand.detection
        key = t_idx.astype(np.int64) * n + d_idx
        pos = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
        return np.where((keys[pos] == key)[:, None], self.prob[pos], 0.0)

    def divisions(
        self, eligible: NDArray[np.bool_], sibling: NDArray[np.intp], newborn: NDArray[np.intp]
    ) -> DivisionScores:
        """The learned division scores, joined with the geometric ones when the scorer
        uses both cues (``combine_division_cues``)."""
        if self.geometry is None:
            return self.learned_divisions(eligible, sibling, newborn)
        geometric = self.geometry.divisions(eligible, sibling, newborn)
        if self.cues == "geometry":
            return geometric
        learned = self.learned_divisions(eligible, sibling, newborn)
        return combine_division_cues(
            rescaled(learned, self.learned_threshold),
            rescaled(geometric, self.geometry.division_threshold),
            self.geometry_weight,
        )

    def learned_divisions(
        self, eligible: NDArray[np.bool_], sibling: NDArray[np.intp], newborn: NDArray[np.intp]
    ) -> DivisionScores:
        """Every scored (eligible track, newborn) pair: p_parent→daughter for a track left
        unlinked; for a track linked to one daughter, ``division_posterior`` (a daughter the
        model half took for the mother itself does not veto a division its sister makes
        certain)."""
        if len(self.cand) == 0:
            return DivisionScores.none()
        is_new = np.zeros(self.n_detections, bool)
        is_new[newborn] = True
        keep = eligible[self.cand.track] & is_new[self.cand.detection]
        m, c = self.cand.track[keep], self.cand.detection[keep]
        if len(m) == 0:
            return DivisionScores.none()
        score = self.prob[keep, PARENT]
        linked = sibling[m] >= 0
        linked_p = self.pair_rows(m, np.maximum(sibling[m], 0))
        joint = division_posterior(score, linked_p[:, PARENT], linked_p[:, SAME])
        return DivisionScores(m, c, np.where(linked, joint, score))


def trained_diameter_range(meta: dict[str, Any]) -> tuple[float, float]:
    """The nucleus diameters (px, low and high) a tracking model was trained on: its
    config.json's ``train.diameters_px``, else ``model.TRAINED_DIAMETERS_PX`` (the shipped
    models, trained before the range was written)."""
    train = meta.get("train", {})
    sizes = train.get("diameters_px") if isinstance(train, dict) else None
    if sizes is None:
        return float(TRAINED_DIAMETERS_PX[0]), float(TRAINED_DIAMETERS_PX[1])
    ok = (
        isinstance(sizes, list | tuple)
        and len(sizes) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in sizes)
    )
    low, high = (float(sizes[0]), float(sizes[1])) if ok else (math.nan, math.nan)
    if not (ok and math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise ConfigError(
            "tracking model config.json: 'train.diameters_px' must be [low, high] in px, "
            f"0 <= low <= high, got {sizes!r}"
        )
    return low, high


def trained_min_diameter(meta: dict[str, Any]) -> float:
    """The smallest nucleus diameter (px) a tracking model was trained on
    (``trained_diameter_range``)."""
    return trained_diameter_range(meta)[0]


def rescaled(scores: DivisionScores, threshold: float) -> DivisionScores:
    """Scores in [0, 1] mapped piecewise linearly so that ``threshold`` becomes 0.5 (0 and 1
    stay): cues with different thresholds become comparable."""
    x = np.clip(scores.score, 0.0, 1.0)
    t = float(np.clip(threshold, 1e-6, 1.0 - 1e-6))
    y = np.where(x < t, 0.5 * x / t, 0.5 + 0.5 * (x - t) / (1.0 - t))
    return DivisionScores(scores.mother, scores.child, y)


def combine_division_cues(
    learned: DivisionScores, geometric: DivisionScores, geometry_weight: float = 0.5
) -> DivisionScores:
    """The sister pair decided jointly by both cues: per (mother, newborn) pair, the weighted
    mean of the learned posterior and the geometric score (``geometry_weight`` the geometric
    one's share), each ``rescaled`` so that 0.5 is its own threshold (a pair one cue did not
    score counts 0 for it).

    The geometry (the newborn near the mother, the two daughters symmetric about her last
    position, each smaller than her but not a fragment) is what a model cannot unlearn: a
    division whose daughters look unlike anything the model was trained on, or whose sister
    it took for the mother, still scores high there, so a hesitant model is carried over its
    threshold by clear geometry. The learned posterior keeps out what geometry alone would
    take: a nucleus split in two by the segmentation is as symmetric as a division, but it
    does not look like one. Chosen on the validation suite over "either cue alone" (more
    false divisions end to end) and a stricter geometric threshold (no better)."""
    w = float(geometry_weight)
    if len(geometric.mother) == 0:
        return DivisionScores(learned.mother, learned.child, (1.0 - w) * learned.score)
    if len(learned.mother) == 0:
        return DivisionScores(geometric.mother, geometric.child, w * geometric.score)
    m = np.concatenate([learned.mother, geometric.mother])
    c = np.concatenate([learned.child, geometric.child])
    s = np.concatenate([(1.0 - w) * learned.score, w * geometric.score])
    n = int(c.max()) + 1
    uniq, inv = np.unique(m.astype(np.int64) * n + c, return_inverse=True)
    mean = np.asarray(np.bincount(inv, weights=s, minlength=len(uniq)), np.float64)
    um, uc = np.divmod(uniq, n)
    return DivisionScores(um.astype(np.intp), uc.astype(np.intp), mean)


def gate_pairs(
    frame: int, tracks: OpenTracks, detections: Detections, diameter: float, cfg: TrackConfig
) -> tuple[Candidates, NDArray[np.bool_]]:
    """The pairs a pair classifier scores: detections within the larger of the link radius
    (around the predicted position, growing with missed frames) and, for a track that may
    divide, the division radius; and which of them may link."""
    missed = tracks.missed(frame)
    pred = tracks.predicted(frame, cfg.velocity_damping)
    r_link = cfg.max_displacement * diameter * (1.0 + cfg.gap_radius_growth * missed)
    r_div = np.where(
        frame - tracks.last - 1 <= cfg.division_max_gap, cfg.division_max_distance * diameter, 0.0
    )
    cand = gate(pred, detections.centroids, np.maximum(r_link, r_div))
    return cand, cand.distance <= r_link[cand.track]


def probability_frame(
    cand: Candidates,
    link: NDArray[np.bool_],
    prob: NDArray[np.float64],
    embeddings: NDArray[np.float32],
    link_threshold: float,
    division_threshold: float,
    geometry: FrameScores | None,
    cues: str = "learned",
    geometry_weight: float = 0.5,
) -> LearnedFrame:
    """A frame's ``FrameScores`` from pair probabilities: link cost ``1 − p_same`` in
    Caliban's layout (birth and death each half of ``1 − link_threshold``, so a link needs
    p_same above it)."""
    half = 0.5 * (1.0 - link_threshold)
    links = LinkCosts(cand.track[link], cand.detection[link], 1.0 - prob[link, SAME], half, half)
    return LearnedFrame(
        links,
        division_threshold,
        embeddings,
        cand,
        prob,
        len(embeddings),
        geometry,
        cues=cues,
        geometry_weight=geometry_weight,
    )


class LearnedScorer:
    """Caliban's causal LSTM pair classifier as a ``LinkScorer``: see the module docstring."""

    name = "lstm"

    def __init__(
        self,
        config: TrackConfig,
        model: TrackNet | None = None,
        *,
        meta: dict[str, Any] | None = None,
        link_threshold: float | None = None,
        division_threshold: float | None = None,
    ) -> None:
        self.config = config
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
        self.division_threshold = float(
            _first(
                division_threshold,
                config.lstm_division_threshold,
                thresholds.get("division"),
                0.5,
            )
        )
        if not (0.0 < self.link_threshold < 1.0 and 0.0 < self.division_threshold <= 1.0):
            raise ConfigError(
                f"link threshold {self.link_threshold} and division threshold "
                f"{self.division_threshold} must lie in (0, 1)"
            )
        self.min_trained_diameter_px = trained_min_diameter(meta)
        """Below this length unit (px) the frame's nuclei are smaller than any the model was
        trained on (``TrackConfig.division_geometry_weight_small``)."""
        cfg = model.config
        self._rings = _Rings(cfg.window, cfg.embed_dim)
        self._geometry = DistanceScorer(config)

    @property
    def history_window(self) -> int:
        return self.model.config.window

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
    ) -> LearnedFrame:
        """Embed the frame, gate with the larger of the link and division radii, classify
        every gated pair; links need p_same above ``link_threshold``; ``labels_given``
        picks the geometric cue's share of the division decision
        (``TrackConfig.geometry_weight``)."""
        emb = self._embed(detections, diameter, image, mask, features)
        cand, link = gate_pairs(frame, tracks, detections, diameter, self.config)
        prob = self._classify(frame, tracks, detections, emb, cand, diameter)
        geometry = None
        if self.config.division_cues != "learned":
            geometry = self._geometry.score(
                frame, tracks, detections, diameter, frame_shape, image, mask
            )
        return probability_frame(
            cand,
            link,
            prob,
            emb,
            self.link_threshold,
            self.division_threshold,
            geometry,
            self.config.division_cues,
            self.config.geometry_weight(labels_given, diameter < self.min_trained_diameter_px),
        )

    def commit(
        self,
        frame: int,
        track_ids: IntArray,
        ended: list[int],
        detections: Detections,
        scores: FrameScores,
    ) -> None:
        """Write the frame's embeddings into the windows of the tracks it continues."""
        self._rings.drop(ended)
        emb = scores.embeddings
        assert emb is not None
        self._rings.write(track_ids, frame, emb, detections.centroids)

    def reset(self) -> None:
        self._rings.clear()

    def restore(self, history: list[FrameHistory], open_ids: IntArray, last_frame: int) -> None:
        """Refill the windows of the open tracks from the stored embeddings."""
        opened = {int(i) for i in open_ids}
        window = self.model.config.window
        missing = 0
        for h in sorted(history, key=lambda h: h.frame):
            if h.frame < last_frame - window:
                continue
            keep = np.fromiter((int(i) in opened for i in h.track_ids), bool, len(h.track_ids))
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
            log.info(
                "%d restored frames have no embeddings from this model (made by another "
                "tracking model before a switch, or by a store before schema v2); their "
                "tracks continue on positions and motion only",
                missing,
            )

    # ------------------------------------------------------------------ internals

    def _embed(
        self,
        detections: Detections,
        diameter: float,
        image: NDArray[np.generic] | None,
        mask: NDArray[np.integer] | None,
        features: object | None,
    ) -> NDArray[np.float32]:
        if features is not None:
            if not isinstance(features, FrameFeatures) or len(features) != len(detections):
                raise BadFrame(
                    f"features must be FrameFeatures with one row per detection ({len(detections)})"
                )
            return encode_frame(self.model, features)
        if image is None or mask is None:
            raise BadFrame(
                "the lstm tracker needs the frame's image and label image (appearance "
                "features); use the lap tracker for detections only"
            )
        if image.shape != mask.shape:
            raise BadFrame(f"image {image.shape} and mask {mask.shape} differ in shape")
        cfg = self.model.config
        feats = frame_features(
            image,
            mask,
            detections,
            diameter,
            crop_diameters=cfg.crop_diameters,
            neighbour_diameters=cfg.neighbour_diameters,
            max_diameter_px=self.config.feature_max_diameter_px,
        )
        return encode_frame(self.model, feats)

    def _classify(
        self,
        frame: int,
        tr: OpenTracks,
        detections: Detections,
        emb: NDArray[np.float32],
        cand: Candidates,
        diam: float,
    ) -> NDArray[np.float64]:
        if len(cand) == 0:
            return np.zeros((0, 3))
        missed = tr.missed(frame)
        pred = tr.predicted(frame, self.config.velocity_damping)
        rows, pair_track = np.unique(cand.track, return_inverse=True)
        ids = tr.ids[rows]
        w_emb_raw, present, pos, frames = self._rings.window_of(ids, frame)
        w_emb, w_present, w_disp = window_inputs(w_emb_raw, present, pos, frames, diam)
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
            emb,
            geom,
            pair_track.astype(np.intp),
            cand.detection,
        )


def lstm_tracker(
    config: TrackConfig,
    frame_shape: tuple[int, int],
    model: TrackNet | None = None,
    *,
    meta: dict[str, Any] | None = None,
    link_threshold: float | None = None,
    division_threshold: float | None = None,
) -> OnlineTracker:
    """The learned tracker: an ``OnlineTracker`` over the ``LearnedScorer``."""
    scorer = LearnedScorer(
        config,
        model,
        meta=meta,
        link_threshold=link_threshold,
        division_threshold=division_threshold,
    )
    return OnlineTracker(config, frame_shape, scorer)


def _first(*values: object) -> float:
    for v in values:
        if v is not None:
            return float(v)  # type: ignore[arg-type]
    raise ConfigError("no threshold given")


__all__ = [
    "DEFAULT_MODEL",
    "DIFF",
    "LearnedFrame",
    "LearnedScorer",
    "division_posterior",
    "encode_frame",
    "gate_pairs",
    "lstm_tracker",
    "pair_geometry",
    "pair_probabilities",
    "probability_frame",
    "relative_geometry",
    "window_inputs",
]
