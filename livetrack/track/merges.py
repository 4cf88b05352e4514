"""Nuclei the segmentation merged, split again where the tracks say two cells were; and
convex objects it cut in two, joined again where the tracks say one cell was.

In crowded frames touching nuclei are sometimes outlined as one object. When two (or more)
tracks seen as separate objects in the previous frame both land, at their predicted
positions, inside one object of this frame, and that object is clearly larger than the
largest of them (``TrackConfig.merge_area_ratio``), its pixels are shared between them,
each pixel to the nearest predicted position (on a strongly curved object a part can come
out in two pieces). The split is kept only when every part keeps at least half its track's
last area.

The evidence is the previous frame's: the tracks were there as separate objects. A merge
that persists is split again in every frame, because the tracks stay separate; a nucleus
the previous frame had cut in two fragments is cut again in the same way, so the rule only
pays where merges are more common than such cuts: on crowded simulated nuclei, not on the
real sequences measured here, so it is off unless asked for (docs/training.md). It
corrects livetrack's own segmentation only: label images given with the frames are never
changed. It is a deterministic function of the open tracks and the
frame's labels, so a resumed run splits exactly as the uninterrupted one would.

The converse (``TrackConfig.hold_convex_splits``, ``hold_splits``): two touching objects
where only one track of the previous frame is predicted, cut along a long line, whose union
is convex, are joined — a nucleus cut in two, or a mother whose chromatin has separated but
whose outline shows no waist yet (how Fluo-N2DH-SIM+ annotates a mother until her daughters
part). Daughters that have parted show a waist (a union far from convex) and stay apart.
Also a deterministic function of the open tracks and the frame's labels.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from skimage.morphology import convex_hull_image

from livetrack.config import TrackConfig
from livetrack.track.online import OpenTracks
from livetrack.types import Detections, LabelImage, Segmentation

log = logging.getLogger("livetrack.track")


def split_merges(
    mask: LabelImage,
    detections: Detections,
    tracks: OpenTracks,
    frame: int,
    config: TrackConfig,
) -> tuple[LabelImage, Detections, int]:
    """The frame's labels with merged objects split between the tracks they hold.

    Returns (mask, detections, number of objects split); the inputs themselves when
    nothing is split (``mask`` is never modified in place)."""
    if config.merge_area_ratio <= 0 or len(tracks) < 2 or len(detections) == 0:
        return mask, detections, 0
    recent = np.flatnonzero(tracks.last == frame - 1)
    if len(recent) < 2:
        return mask, detections, 0
    h, w = mask.shape
    pred = tracks.predicted(frame, config.velocity_damping)[recent]
    yx = np.rint(pred).astype(np.int64)
    inside = (yx[:, 0] >= 0) & (yx[:, 0] < h) & (yx[:, 1] >= 0) & (yx[:, 1] < w)
    recent, yx, pred = recent[inside], yx[inside], pred[inside]
    hit = np.asarray(mask)[yx[:, 0], yx[:, 1]].astype(np.int64)
    keep = hit > 0
    recent, yx, hit, pred = recent[keep], yx[keep], hit[keep], pred[keep]
    if len(hit) < 2:
        return mask, detections, 0
    values, counts = np.unique(hit, return_counts=True)
    shared = values[counts >= 2]
    if len(shared) == 0:
        return mask, detections, 0
    row_of = {int(v): i for i, v in enumerate(detections.labels)}
    out: LabelImage | None = None
    next_label = int(np.max(mask)) + 1
    n_split = 0
    for value in shared:
        i = row_of.get(int(value))
        if i is None:
            continue
        members = np.flatnonzero(hit == value)
        parts = _split_object(
            np.asarray(mask),
            int(value),
            detections.bboxes[i],
            float(detections.areas[i]),
            pred[members],
            tracks.area[recent[members]],
            config,
        )
        if parts is None:
            continue
        (y0, x0), sub = parts
        if out is None:
            out = np.array(mask, copy=True)
        region = out[y0 : y0 + sub.shape[0], x0 : x0 + sub.shape[1]]
        for k in range(2, int(sub.max()) + 1):
            region[sub == k] = next_label
            next_label += 1
        n_split += 1
    if out is None:
        return mask, detections, 0
    return out, Detections.from_labels(out), n_split


def _split_object(
    mask: NDArray[np.integer],
    value: int,
    bbox: NDArray[np.int32],
    area: float,
    seeds: NDArray[np.float64],
    track_areas: NDArray[np.float64],
    config: TrackConfig,
) -> tuple[tuple[int, int], NDArray[np.int32]] | None:
    """The object's pixels shared between the seeds, each pixel to the nearest (labels
    1..k in its bounding box), or None when the object is not clearly larger than the
    largest track or a part would keep less than half its track's last area."""
    if area < config.merge_area_ratio * float(np.max(track_areas)):
        return None
    y0, x0, y1, x1 = (int(v) for v in bbox)
    obj = mask[y0:y1, x0:x1] == value
    ys, xs = np.nonzero(obj)
    d2 = (ys[:, None] + y0 - seeds[None, :, 0]) ** 2 + (xs[:, None] + x0 - seeds[None, :, 1]) ** 2
    nearest = np.argmin(d2, axis=1)
    part_area = np.bincount(nearest, minlength=len(seeds)).astype(np.float64)
    if np.any(part_area < 0.5 * np.maximum(track_areas, 1.0)):
        return None
    sub = np.zeros(obj.shape, np.int32)
    sub[ys, xs] = nearest.astype(np.int32) + 1
    return (y0, x0), sub


HOLD_MIN_CUT = 0.9
"""``hold_splits``: the cut between the two objects, in 4-neighbour pixel pairs across it
(a diagonal cut counts up to √2 its length), is at least this × the smaller one's
equivalent diameter — a straight cut through a nucleus, not two round nuclei that touch."""


def hold_splits(
    mask: LabelImage,
    detections: Detections,
    tracks: OpenTracks,
    frame: int,
    config: TrackConfig,
) -> tuple[LabelImage, Detections, int]:
    """The frame's labels with convex objects cut in two made whole again
    (``TrackConfig.hold_convex_splits``).

    Two touching objects are joined when one of them holds the predicted position of
    exactly one track, seen in the previous frame, and the other holds no open track's
    (one cell was there), the cut between them is long (``HOLD_MIN_CUT``) and their union
    is convex — its solidity (area over the area of its convex hull, the hull through the
    pixels' corners) at least ``hold_convex_splits``: no waist, so no cleavage furrow yet.
    That hull makes small objects less solid: a disc cut in two reaches 0.95 only from
    ~26 px across, so at the default the rule acts on large nuclei only — below that,
    pixel steps make two touching daughters look as convex as a cut nucleus. A mother
    whose daughters are still parting, or a nucleus the segmentation cut, stays one
    object; daughters that have parted show a waist and are left apart.
    Returns (mask, detections, number of pairs joined); the inputs themselves when nothing
    is joined (``mask`` is never modified in place)."""
    threshold = config.hold_convex_splits
    if threshold <= 0 or len(tracks) == 0 or len(detections) < 2:
        return mask, detections, 0
    recent = np.flatnonzero(tracks.last == frame - 1)
    if len(recent) == 0:
        return mask, detections, 0
    m = np.asarray(mask)
    held = _held(m, tracks, recent, frame, config)  # tracks seen in the previous frame
    held_any = _held(m, tracks, np.arange(len(tracks)), frame, config)  # any open track
    labels = np.asarray(detections.labels, np.int64)
    row_lut = np.full(len(held), -1, np.int64)
    row_lut[labels] = np.arange(len(labels))
    diam = 2.0 * np.sqrt(np.asarray(detections.areas, np.float64) / np.pi)
    # Only an object no open track is in (a piece the cut made) can be joined to a
    # neighbour that holds exactly one track, seen in the previous frame; of several such
    # neighbours, the one it shares the longest cut with.
    pairs: list[tuple[int, int, int]] = []
    for row in np.flatnonzero(held_any[labels] == 0):
        best: tuple[int, int] | None = None
        for other, cut in _neighbours(m, int(labels[row]), detections.bboxes[row]):
            other_row = int(row_lut[other])
            if other_row < 0 or held[other] != 1 or held_any[other] != 1:
                continue
            if cut < HOLD_MIN_CUT * min(diam[row], diam[other_row]):
                continue
            if best is None or cut > best[1]:
                best = (other, cut)
        if best is not None:
            pairs.append((int(labels[row]), best[0], best[1]))
    out: LabelImage | None = None
    joined: set[int] = set()
    n_joined = 0
    for gone, keep, _ in sorted(pairs, key=lambda p: (-p[2], p[0])):  # longest cut first
        if gone in joined or keep in joined:
            continue
        gone_row, keep_row = int(row_lut[gone]), int(row_lut[keep])
        box_gone, box_keep = detections.bboxes[gone_row], detections.bboxes[keep_row]
        if _union_solidity(m, gone, keep, box_gone, box_keep) < threshold:
            continue
        if out is None:
            out = np.array(mask, copy=True)
        y0, x0, y1, x1 = (int(v) for v in box_gone)
        region = out[y0:y1, x0:x1]
        region[region == gone] = keep
        joined.update((gone, keep))
        n_joined += 1
    if out is None:
        return mask, detections, 0
    return out, Detections.from_labels(out), n_joined


def _held(
    m: NDArray[np.integer],
    tracks: OpenTracks,
    which: NDArray[np.intp],
    frame: int,
    config: TrackConfig,
) -> NDArray[np.int64]:
    """Per label of ``m``: how many of the tracks ``which`` are predicted inside it."""
    h, w = m.shape
    yx = np.rint(tracks.predicted(frame, config.velocity_damping)[which]).astype(np.int64)
    inside = (yx[:, 0] >= 0) & (yx[:, 0] < h) & (yx[:, 1] >= 0) & (yx[:, 1] < w)
    hit = m[yx[inside, 0], yx[inside, 1]].astype(np.int64)
    return np.bincount(hit[hit > 0], minlength=int(m.max()) + 1)


def _neighbours(
    m: NDArray[np.integer], label: int, bbox: NDArray[np.int32]
) -> list[tuple[int, int]]:
    """(neighbour label, 4-neighbour pixel pairs between it and ``label``) for every object
    that touches object ``label`` (bounding box ``bbox``: y0, x0, y1, x1)."""
    h, w = m.shape
    y0, x0 = max(int(bbox[0]) - 1, 0), max(int(bbox[1]) - 1, 0)
    y1, x1 = min(int(bbox[2]) + 1, h), min(int(bbox[3]) + 1, w)
    crop = m[y0:y1, x0:x1]
    found = []
    for u, v in ((crop[:, :-1], crop[:, 1:]), (crop[:-1, :], crop[1:, :])):
        found.append(v[(u == label) & (v > 0) & (v != label)])
        found.append(u[(v == label) & (u > 0) & (u != label)])
    values, counts = np.unique(np.concatenate(found).astype(np.int64), return_counts=True)
    return [(int(a), int(c)) for a, c in zip(values, counts, strict=True)]


def _union_solidity(
    m: NDArray[np.integer], a: int, b: int, box_a: NDArray[np.int32], box_b: NDArray[np.int32]
) -> float:
    """Area of objects ``a`` and ``b`` together over the area of their convex hull."""
    y0, x0 = min(int(box_a[0]), int(box_b[0])), min(int(box_a[1]), int(box_b[1]))
    y1, x1 = max(int(box_a[2]), int(box_b[2])), max(int(box_a[3]), int(box_b[3]))
    crop = m[y0:y1, x0:x1]
    union = (crop == a) | (crop == b)
    hull = convex_hull_image(union)
    return float(union.sum()) / max(float(hull.sum()), 1.0)


def split_segmentation(seg: Segmentation, tracker: object, frame: int) -> Segmentation:
    """``seg`` (livetrack's own segmentation of ``frame``) with merged objects split between
    the open tracks of ``tracker`` (an online tracker: its ``config`` and ``open_tracks``),
    when its settings ask for it (``TrackConfig.merge_area_ratio``), after objects cut in
    two where one track was are joined again (``TrackConfig.hold_convex_splits``, on by
    default); ``seg`` itself when neither changes anything. Called between segmentation
    and tracking by the worker and by ``livetrack.track()``; never on label images given
    with the frames."""
    config = getattr(tracker, "config", None)
    tracks = getattr(tracker, "open_tracks", None)
    if not isinstance(config, TrackConfig) or tracks is None:
        return seg
    if config.merge_area_ratio <= 0 and config.hold_convex_splits <= 0:
        return seg
    mask, detections, n_held = hold_splits(seg.mask, seg.detections, tracks, frame, config)
    mask, detections, n_split = split_merges(mask, detections, tracks, frame, config)
    if n_split == 0 and n_held == 0:
        return seg
    if n_held:
        log.debug("frame %d: %d objects cut in two joined again", frame, n_held)
    if n_split:
        log.debug("frame %d: %d merged objects split between their tracks", frame, n_split)
    return Segmentation(mask=mask, detections=detections, info=dict(seg.info))


__all__ = ["hold_splits", "split_merges", "split_segmentation"]
