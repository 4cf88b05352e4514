"""Nuclei the segmentation merged, split again where the tracks say two cells were.

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
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

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


def split_segmentation(seg: Segmentation, tracker: object, frame: int) -> Segmentation:
    """``seg`` (livetrack's own segmentation of ``frame``) with merged objects split between
    the open tracks of ``tracker`` (an online tracker: its ``config`` and ``open_tracks``),
    when its settings ask for it (``TrackConfig.merge_area_ratio``); ``seg`` itself when
    they do not or nothing is split. Called between segmentation and tracking by the worker
    and by ``livetrack.track()``; never on label images given with the frames."""
    config = getattr(tracker, "config", None)
    tracks = getattr(tracker, "open_tracks", None)
    if not isinstance(config, TrackConfig) or tracks is None or config.merge_area_ratio <= 0:
        return seg
    mask, detections, n_split = split_merges(seg.mask, seg.detections, tracks, frame, config)
    if n_split == 0:
        return seg
    log.debug("frame %d: %d merged objects split between their tracks", frame, n_split)
    return Segmentation(mask=mask, detections=detections, info=dict(seg.info))


__all__ = ["split_merges", "split_segmentation"]
