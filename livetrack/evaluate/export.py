"""Streaming export of livetrack lineages to the Cell Tracking Challenge (CTC) result layout.

The CTC result of one sequence is a folder with ``maskNNN.tif`` (uint16, pixel value =
CTC track label, one file per frame of the ground truth) and ``res_track.txt`` with one
line ``L B E P`` per track. The CTC demands that a track be present in *every* frame from
B to E. livetrack's tracker closes gaps of a frame or two, so one livetrack track may be
missing from some frames; such a track is cut at each gap into CTC segments, the segment
after a gap having the segment before it as its (single) parent. A single-child parent
link is how the CTC spells "same cell, seen again" (py-ctcmetrics merges such chains for
its identity metrics and so does :mod:`livetrack.evaluate.lineage`). A division is a parent
with two children; livetrack's trackers never give a mother one daughter, and a store
written before they stopped doing so (schema 2) has its one-daughter "divisions" exported
as such a single-child link: the same cell continuing, never a division.

The export is streaming: one frame's mask is in memory at a time; only the small table
of CTC segments is kept until the end.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from numpy.typing import NDArray

from livetrack.errors import EvaluationError
from livetrack.messages import MAX_FRAMES
from livetrack.track.base import TrackRecord

if TYPE_CHECKING:
    from livetrack.store import Store as StoreReader

logger = logging.getLogger("livetrack.evaluate")

MAX_CTC_LABEL = 65535
"""CTC masks are uint16, so a sequence can hold at most this many CTC tracks."""

_MASK_NAME = re.compile(r"^mask\d+\.tif$")
_LUT_MAX_LABEL = 1 << 22
"""Above this mask value relabelling uses a sort instead of a lookup table."""


@dataclass(frozen=True)
class ExportFrame:
    """One segmented and tracked frame, as the store gives it back.

    Attributes:
        frame: frame index (0-based; consecutive in a CTC sequence).
        mask: int32 label image as segmented.
        labels: (N,) mask values of the detections.
        track_ids: (N,) track id of each detection; 0 or negative = untracked (dropped).
    """

    frame: int
    mask: NDArray[np.integer]
    labels: NDArray[np.integer]
    track_ids: NDArray[np.integer]


@dataclass
class CtcSegment:
    """One CTC track (``L B E P``): a gap-free piece of a livetrack track."""

    label: int
    begin: int
    end: int
    parent: int
    track_id: int


@dataclass
class _ExportState:
    """What the streaming export remembers between frames (no masks)."""

    parents: dict[int, int | None]
    segments: list[CtcSegment] = field(default_factory=list)
    current: dict[int, CtcSegment] = field(default_factory=dict)
    """Track id -> its latest CTC segment."""
    next_label: int = 1
    shape: tuple[int, ...] | None = None
    next_frame: int = 0
    """The first frame index not yet written."""


def export_ctc(
    frames: Iterable[ExportFrame],
    tracks: Sequence[TrackRecord],
    out_dir: Path,
    *,
    n_frames: int | None = None,
) -> Path:
    """Write ``frames`` as a CTC result folder and return ``out_dir``.

    Frames must come in increasing frame order. Frames missing from ``frames`` (between
    two given frames, or after the last one up to ``n_frames``) are written as empty masks
    so that the number of mask files matches the ground truth. Files are named
    ``maskNNN.tif`` with 3 digits, 4 when the sequence has more than 1000 frames. Old
    ``mask*.tif`` and ``res_track.txt`` in ``out_dir`` are removed first, because a stale
    mask from a longer earlier export would silently change the frame count.

    Raises:
        EvaluationError: frames out of order, a track twice in one frame, more than
            65535 CTC tracks, ``n_frames`` smaller than the frames given, no frame with
            a known shape, a lineage the CTC format cannot express (a daughter that
            starts before its mother's last detection), or a frame range beyond
            ``MAX_FRAMES`` (a corrupt index would otherwise mean empty masks forever);
            checked before anything is written or removed where it can be.
    """
    if n_frames is not None and n_frames < 0:
        raise EvaluationError(f"n_frames must be >= 0, got {n_frames}")
    if n_frames is not None and n_frames > MAX_FRAMES:
        raise EvaluationError(
            f"refusing to export {n_frames} frames: no acquisition has more than "
            f"{MAX_FRAMES} time points (a corrupt frame index?)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_results(out_dir)
    digits = _digits(n_frames) if n_frames is not None else 3
    state = _ExportState(parents={t.track_id: t.parent_id for t in tracks})
    for item in frames:
        _export_one(item, state, out_dir, digits, n_frames)
    total = n_frames if n_frames is not None else state.next_frame
    if total > 0 and state.shape is None:
        raise EvaluationError("cannot export: no frame was given, so the mask shape is unknown")
    _write_empty_until(total, state, out_dir, digits)
    if n_frames is None and _digits(total) != digits:
        _rename_masks(out_dir, total, digits, _digits(total))
    _check_segments(state.segments)
    _write_track_file(out_dir / "res_track.txt", state.segments)
    logger.info("exported %d frames, %d CTC tracks to %s", total, len(state.segments), out_dir)
    return out_dir


def _digits(n_frames: int) -> int:
    """3 digits as the CTC uses, 4 (or more) when the last index needs them."""
    return max(3, len(str(max(n_frames - 1, 0))))


def _mask_path(out_dir: Path, frame: int, digits: int) -> Path:
    return out_dir / f"mask{frame:0{digits}d}.tif"


def _remove_old_results(out_dir: Path) -> None:
    for path in out_dir.iterdir():
        if path.is_file() and (_MASK_NAME.match(path.name) or path.name == "res_track.txt"):
            path.unlink()


def _export_one(
    item: ExportFrame, state: _ExportState, out_dir: Path, digits: int, n_frames: int | None
) -> None:
    """Relabel one frame to CTC labels, write it, and extend the segment table."""
    t = int(item.frame)
    if t < state.next_frame:
        raise EvaluationError(
            f"frames must come in increasing order: frame {t} after frame {state.next_frame - 1}"
        )
    if n_frames is not None and t >= n_frames:
        raise EvaluationError(f"frame {t} is beyond n_frames={n_frames}")
    if t >= MAX_FRAMES:
        raise EvaluationError(
            f"refusing to export frame {t}: frame indices stop at {MAX_FRAMES - 1} "
            "(a corrupt frame index?)"
        )
    mask = np.asarray(item.mask)
    if mask.ndim != 2:
        raise EvaluationError(f"frame {t}: mask must be 2-D, got shape {mask.shape}")
    if state.shape is None:
        state.shape = mask.shape
    elif mask.shape != state.shape:
        raise EvaluationError(f"frame {t}: mask shape {mask.shape} differs from {state.shape}")
    _write_empty_until(t, state, out_dir, digits)
    mask_labels, ctc_labels = _assign_labels(t, mask, item.labels, item.track_ids, state)
    tifffile.imwrite(
        _mask_path(out_dir, t, digits),
        _relabel(mask, mask_labels, ctc_labels),
        compression="zlib",
    )
    state.next_frame = t + 1


def _assign_labels(
    t: int,
    mask: NDArray[np.integer],
    det_labels: NDArray[np.integer],
    det_tracks: NDArray[np.integer],
    state: _ExportState,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """CTC label of each tracked detection that really has pixels in ``mask``.

    A detection whose label is absent from the mask is skipped: writing it in
    ``res_track.txt`` would make the result invalid ("label in res_track but not in mask").
    """
    labels = np.asarray(det_labels, dtype=np.int64)
    track_ids = np.asarray(det_tracks, dtype=np.int64)
    if labels.shape != track_ids.shape:
        raise EvaluationError(
            f"frame {t}: labels {labels.shape} and track_ids {track_ids.shape} disagree"
        )
    present = np.isin(labels, np.unique(mask)) & (track_ids > 0) & (labels > 0)
    labels, track_ids = labels[present], track_ids[present]
    if np.unique(track_ids).size != track_ids.size:
        ids, counts = np.unique(track_ids, return_counts=True)
        raise EvaluationError(f"frame {t}: track(s) {ids[counts > 1].tolist()} appear twice")
    ctc = np.array([_segment_for(int(tid), t, state).label for tid in track_ids], np.int64)
    return labels, ctc


def _segment_for(track_id: int, t: int, state: _ExportState) -> CtcSegment:
    """The CTC segment ``track_id`` belongs to in frame ``t`` (extended or newly opened)."""
    seg = state.current.get(track_id)
    if seg is not None and seg.end == t - 1:
        seg.end = t
        return seg
    # after a gap the new segment continues the one before it; else it is a new track
    parent = seg.label if seg is not None else _parent_label(track_id, t, state)
    if state.next_label > MAX_CTC_LABEL:
        raise EvaluationError(
            f"more than {MAX_CTC_LABEL} CTC tracks: they do not fit in uint16 masks"
        )
    new = CtcSegment(state.next_label, t, t, parent, track_id)
    state.next_label += 1
    state.segments.append(new)
    state.current[track_id] = new
    return new


def _parent_label(track_id: int, t: int, state: _ExportState) -> int:
    """CTC label of the mother's last segment, 0 when there is no (exported) mother."""
    parent_id = state.parents.get(track_id)
    if parent_id is None or parent_id <= 0:
        return 0
    mother = state.current.get(parent_id)
    if mother is None:
        logger.warning(
            "track %d: parent track %d has no detection before frame %d; exported as a root",
            track_id,
            parent_id,
            t,
        )
        return 0
    if mother.end >= t:
        raise EvaluationError(
            f"track {track_id} starts at frame {t} while its parent track {parent_id} "
            f"is still present in frame {mother.end}"
        )
    return mother.label


def _relabel(
    mask: NDArray[np.integer], mask_labels: NDArray[np.int64], ctc_labels: NDArray[np.int64]
) -> NDArray[np.uint16]:
    """Map mask values to CTC labels; everything not listed becomes background."""
    out_max = int(mask.max(initial=0))
    if int(mask.min(initial=0)) >= 0 and out_max < _LUT_MAX_LABEL:
        lut = np.zeros(out_max + 1, np.uint16)
        lut[mask_labels] = ctc_labels
        return lut[mask]
    order = np.argsort(mask_labels)
    keys, vals = mask_labels[order], ctc_labels[order]
    pos = np.clip(np.searchsorted(keys, mask), 0, max(len(keys) - 1, 0))
    hit = keys[pos] == mask if len(keys) else np.zeros(mask.shape, bool)
    return np.where(hit, vals[pos] if len(keys) else 0, 0).astype(np.uint16)


def _write_empty_until(stop: int, state: _ExportState, out_dir: Path, digits: int) -> None:
    """Write empty masks for frames ``state.next_frame .. stop-1`` (nothing was tracked)."""
    if stop <= state.next_frame:
        return
    if state.shape is None:
        return  # written once the first frame tells the shape
    empty = np.zeros(state.shape, np.uint16)
    for t in range(state.next_frame, stop):
        tifffile.imwrite(_mask_path(out_dir, t, digits), empty, compression="zlib")
    state.next_frame = stop


def _rename_masks(out_dir: Path, total: int, old: int, new: int) -> None:
    for t in range(total):
        _mask_path(out_dir, t, old).rename(_mask_path(out_dir, t, new))


def _check_segments(segments: list[CtcSegment]) -> None:
    """Enforce the CTC rules on the written table (a bug here would make the result invalid).

    Presence in every frame B..E holds by construction (a segment only grows by one
    frame at a time); what can break is a mother that reappears after her daughters
    were born.
    """
    by_label = {s.label: s for s in segments}
    children: dict[int, list[CtcSegment]] = {}
    for s in segments:
        if s.parent == 0:
            continue
        mother = by_label[s.parent]
        children.setdefault(mother.label, []).append(s)
        if mother.end >= s.begin:
            raise EvaluationError(
                f"track {mother.track_id} (CTC label {mother.label}) is present until frame "
                f"{mother.end}, after its child track {s.track_id} (CTC label {s.label}) "
                f"started at frame {s.begin}"
            )
    for label, kids in children.items():
        mother = by_label[label]
        own = [k for k in kids if k.track_id == mother.track_id]
        if own and len(kids) > len(own):
            raise EvaluationError(
                f"track {mother.track_id} reappears at frame {own[0].begin} after its "
                f"daughters {sorted({k.track_id for k in kids} - {mother.track_id})} were born"
            )


def _write_track_file(path: Path, segments: list[CtcSegment]) -> None:
    lines = [f"{s.label} {s.begin} {s.end} {s.parent}\n" for s in segments]
    path.write_text("".join(lines), encoding="utf-8")


def export_run(
    store: StoreReader,
    run_id: str | None,
    position: str | None,
    out_dir: Path,
    *,
    n_frames: int | None = None,
) -> tuple[str, str, int]:
    """Export one position of a stored run as a CTC result folder (``export_ctc``), one
    frame in memory at a time. ``run_id`` None: the newest run; ``position`` None: the
    run's only position. Returns (run, position, frames exported).

    Raises:
        EvaluationError: no run, an unknown position, or several positions and none chosen.
    """
    run_id = run_id or store.latest_run_id()
    if run_id is None:
        raise EvaluationError("the database holds no runs")
    positions = store.positions(run_id)
    if position is None:
        if len(positions) != 1:
            raise EvaluationError(
                f"run {run_id} has positions {positions}; choose one with --position"
            )
        position = positions[0]
    elif position not in positions:
        raise EvaluationError(f"run {run_id} has no position {position!r} (has {positions})")
    indices = store.frame_indices(run_id, position)

    def frames() -> Iterable[ExportFrame]:
        for f in indices:
            det, track_ids = store.frame_detections(run_id, position, f)
            yield ExportFrame(
                frame=f,
                mask=store.load_mask(run_id, position, f),
                labels=det.labels,
                track_ids=track_ids,
            )

    total = n_frames if n_frames is not None else (indices[-1] + 1 if indices else 0)
    export_ctc(frames(), store.tracks(run_id, position), out_dir, n_frames=total)
    return run_id, position, len(indices)


CORRECTION_INFO = "livetrack-correction.json"
"""Written next to a correction export: which run, position and frames it holds."""


def export_for_correction(
    store: StoreReader,
    run_id: str | None,
    position: str | None,
    out_dir: Path,
    read_image: Callable[[int], NDArray[np.generic]],
    *,
    first: int = 0,
    last: int | None = None,
    sequence: str = "01",
) -> tuple[str, str, int]:
    """Frames ``first..last`` of a stored position in the CTC *training* layout, to be
    corrected and then given to ``livetrack finetune``:

    - ``OUT/NN/tTTT.tif`` — the raw frames (from ``read_image``: the store keeps masks);
    - ``OUT/NN_GT/SEG/man_segTTT.tif`` — the run's label masks, one label per nucleus:
      correct these (napari: open the frames as an image layer and the SEG folder as a
      labels layer); delete the file of a frame left uncorrected, so it is not used;
    - ``OUT/NN_GT/TRA/man_trackTTT.tif`` + ``man_track.txt`` — the run's tracks and
      lineage over the same frames (labels = CTC track labels), for the tracker;
    - ``OUT/livetrack-correction.json`` — run, position and the first frame (frame TTT of
      the export is frame ``first`` + TTT of the run).

    Frames are renumbered from 0. Returns (run, position, frames written).

    Raises:
        EvaluationError: as ``export_run``, an empty range, or an image whose shape is not
            the mask's.
    """
    import json

    run_id = run_id or store.latest_run_id()
    if run_id is None:
        raise EvaluationError("the database holds no runs")
    positions = store.positions(run_id)
    if position is None:
        if len(positions) != 1:
            raise EvaluationError(
                f"run {run_id} has positions {positions}; choose one with --position"
            )
        position = positions[0]
    elif position not in positions:
        raise EvaluationError(f"run {run_id} has no position {position!r} (has {positions})")
    stored = store.frame_indices(run_id, position)
    end = stored[-1] if last is None and stored else (last if last is not None else -1)
    indices = [f for f in stored if first <= f <= end]
    if not indices:
        raise EvaluationError(
            f"run {run_id} position {position} has no stored frame in {first}-{end}"
        )
    n = indices[-1] - first + 1
    digits = _digits(n)
    images_dir = out_dir / sequence
    gt = out_dir / f"{sequence}_GT"
    tra, seg = gt / "TRA", gt / "SEG"
    for d in (images_dir, tra, seg):
        d.mkdir(parents=True, exist_ok=True)

    def frames() -> Iterable[ExportFrame]:
        for f in indices:
            det, track_ids = store.frame_detections(run_id, position, f)
            mask = store.load_mask(run_id, position, f)
            image = np.asarray(read_image(f))
            if image.shape != mask.shape:
                raise EvaluationError(
                    f"frame {f}: the image has shape {image.shape}, the stored mask "
                    f"{mask.shape}: are these the run's images?"
                )
            name = f"{f - first:0{digits}d}"
            tifffile.imwrite(images_dir / f"t{name}.tif", image, compression="zlib")
            yield ExportFrame(frame=f - first, mask=mask, labels=det.labels, track_ids=track_ids)

    export_ctc(frames(), store.tracks(run_id, position), tra, n_frames=n)
    have = set(indices)
    for f in sorted(tra.glob("mask*.tif")):
        name = f.stem.removeprefix("mask")
        if first + int(name) not in have:
            f.unlink()  # a frame the run did not store: not annotated, so no file
            continue
        target = tra / f"man_track{name}.tif"
        f.replace(target)
        (seg / f"man_seg{name}.tif").write_bytes(target.read_bytes())
    (tra / "res_track.txt").replace(tra / "man_track.txt")
    (out_dir / CORRECTION_INFO).write_text(
        json.dumps(
            {"run": run_id, "position": position, "first_frame": first, "frames": n}, indent=2
        )
        + "\n"
    )
    return run_id, position, len(indices)
