"""Third-party tracking baselines, run offline on label images and written as CTC results.

The tracking issue asks to compare our trackers with `laptrack
<https://github.com/yfukai/laptrack>`_ (Jaqaman-style global LAP: frame-to-frame linking,
then gap closing and splitting between track segments) in the same run, tracking-only on
the same label masks and scored with the same CTC evaluation
(:func:`livetrack.evaluate.evaluate_ctc`).

laptrack is an optional dependency (``pip install -e '.[compare]'``) and is imported only
when :func:`track_with_laptrack` runs.

Parameters are *not* tuned on any sequence: every distance is in nucleus diameters and
follows the defaults of our own LAP tracker (:class:`livetrack.config.TrackConfig`):

* frame-to-frame links up to ``max_displacement`` (1.5) diameters;
* gap closing over up to ``max_gap`` (2) missed frames, i.e. segments whose ends are at
  most ``max_gap + 1`` frames apart, up to the gating radius our tracker uses at its
  largest gap, ``max_displacement * (1 + gap_radius_growth * max_gap)`` (3) diameters;
* splitting (division): a daughter starts at most ``division_max_distance`` (2) diameters
  from its mother's position in the previous frame;
* no merging.

laptrack's default metric is the squared Euclidean distance, so each cutoff is the square
of the distance in pixels. The diameter, unless given, is the median equivalent diameter
(disc of the same area) of all objects of the movie — the rule our tracker applies to a
window of recent frames.

Conversion to the CTC: laptrack returns a directed graph of detections ``(frame, index)``.
A maximal unbranched chain of it is one cell; a node with two (or more) successors is a
mother whose successors start daughter cells. The cells are then cut into CTC tracks by
the same code as :func:`livetrack.evaluate.export_ctc`: a cell missing from some frames
(a gap-closed link) continues as a new CTC track whose parent is the piece before the gap
(a single-child parent link, which the CTC and our evaluation read as the same cell).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray

from livetrack.config import TrackConfig
from livetrack.errors import EvaluationError
from livetrack.evaluate.export import (
    CtcSegment,
    _assign_labels,
    _check_segments,
    _digits,
    _ExportState,
    _mask_path,
    _relabel,
    _remove_old_results,
    _write_track_file,
)
from livetrack.track.lap import equivalent_diameter

logger = logging.getLogger("livetrack.evaluate.baselines")

CtcRow = tuple[int, int, int, int]
"""One line of ``res_track.txt``: label, begin frame, end frame, parent label (0 = none)."""

INSTALL_HINT = "pip install -e '.[compare]'"


@dataclass(frozen=True)
class LapTrackParams:
    """The laptrack settings derived from the nucleus diameter (see the module docstring)."""

    diameter_px: float
    max_link_px: float
    max_gap_link_px: float
    max_gap_frames: int
    """laptrack's ``gap_closing_max_frame_count``: largest frame difference of a
    gap-closing link (1 + the number of missed frames)."""
    max_split_px: float

    @classmethod
    def from_diameter(cls, diameter_px: float, config: TrackConfig | None = None) -> LapTrackParams:
        cfg = config or TrackConfig()
        return cls(
            diameter_px=diameter_px,
            max_link_px=cfg.max_displacement * diameter_px,
            max_gap_link_px=cfg.max_displacement
            * (1.0 + cfg.gap_radius_growth * cfg.max_gap)
            * diameter_px,
            max_gap_frames=cfg.max_gap + 1,
            max_split_px=cfg.division_max_distance * diameter_px,
        )

    def laptrack_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``laptrack.LapTrack`` (squared distances)."""
        return {
            "cutoff": self.max_link_px**2,
            "gap_closing_cutoff": self.max_gap_link_px**2,
            "gap_closing_max_frame_count": self.max_gap_frames,
            "splitting_cutoff": self.max_split_px**2,
            "merging_cutoff": False,
        }


@dataclass(frozen=True)
class _FrameObjects:
    labels: NDArray[np.int64]
    centroids: NDArray[np.float64]
    """(N, 2) (y, x)."""
    areas: NDArray[np.int64]


def _objects(mask: NDArray[np.integer]) -> _FrameObjects:
    """Labels (sorted), centroids and areas of the objects of one label image."""
    flat = mask.ravel()
    fg = np.flatnonzero(flat > 0)
    labels, inverse, areas = np.unique(flat[fg], return_inverse=True, return_counts=True)
    ys, xs = np.divmod(fg, mask.shape[1])
    n = len(labels)
    cy = np.bincount(inverse, weights=ys, minlength=n)
    cx = np.bincount(inverse, weights=xs, minlength=n)
    safe = np.maximum(areas, 1)
    centroids = np.stack([cy / safe, cx / safe], axis=1) if n else np.zeros((0, 2))
    return _FrameObjects(labels.astype(np.int64), centroids, areas.astype(np.int64))


def estimate_diameter(masks: Sequence[NDArray[np.integer]]) -> float:
    """Median equivalent diameter (px) of all objects in ``masks``, at least 1 px."""
    areas = [_objects(np.asarray(m)).areas for m in masks]
    sizes = np.concatenate(areas) if areas else np.zeros(0)
    if not len(sizes):
        return 1.0
    return max(float(np.median(equivalent_diameter(sizes))), 1.0)


def _check_masks(masks: Sequence[NDArray[np.integer]]) -> list[NDArray[np.integer]]:
    out = [np.asarray(m) for m in masks]
    for t, m in enumerate(out):
        if m.ndim != 2:
            raise EvaluationError(f"frame {t}: mask must be 2-D, got shape {m.shape}")
        if m.dtype.kind not in "iu":
            raise EvaluationError(f"frame {t}: mask must hold integer labels, got {m.dtype}")
        if m.shape != out[0].shape:
            raise EvaluationError(f"frame {t}: mask shape {m.shape} differs from {out[0].shape}")
        if m.size and int(m.min()) < 0:
            raise EvaluationError(f"frame {t}: negative labels")
    return out


def _import_laptrack() -> Any:
    try:
        import laptrack
    except ImportError as err:
        raise EvaluationError(
            f"the laptrack baseline needs the optional package laptrack: {INSTALL_HINT}"
        ) from err
    return laptrack


def track_with_laptrack(
    masks: Sequence[NDArray[np.integer]],
    *,
    diameter_px: float | None = None,
) -> tuple[list[NDArray[np.uint16]], list[CtcRow]]:
    """Track the objects of ``masks`` (label images in frame order) with laptrack.

    Returns the CTC result: one uint16 mask per frame whose pixel values are CTC track
    labels (objects keep their pixels, only the value changes), and the ``res_track.txt``
    rows ``(L, B, E, P)``. Write them with :func:`write_ctc_result`.

    Args:
        diameter_px: nucleus diameter in pixels, the unit of every cutoff; default: the
            median equivalent diameter of the objects.

    Raises:
        EvaluationError: laptrack is not installed, bad masks (not 2-D integer labels of
            one shape), a non-positive diameter, or more than 65535 CTC tracks.
    """
    frames = _check_masks(masks)
    if diameter_px is not None and not diameter_px > 0:
        raise EvaluationError(f"diameter_px must be > 0, got {diameter_px}")
    lt_module = _import_laptrack()
    diameter = float(diameter_px) if diameter_px is not None else estimate_diameter(frames)
    params = LapTrackParams.from_diameter(diameter)
    objects = [_objects(m) for m in frames]
    logger.info(
        "laptrack on %d frames, diameter %.1f px: link %.1f px, gap %.1f px over <= %d "
        "frames, split %.1f px",
        len(frames),
        diameter,
        params.max_link_px,
        params.max_gap_link_px,
        params.max_gap_frames,
        params.max_split_px,
    )
    edges: list[tuple[tuple[int, int], tuple[int, int]]] = []
    if sum(len(o.labels) for o in objects) > 0:
        tracker = lt_module.LapTrack(**params.laptrack_kwargs())
        graph = tracker.predict([o.centroids for o in objects])
        edges = [((int(a[0]), int(a[1])), (int(b[0]), int(b[1]))) for a, b in graph.edges()]
    cell_of, parents = _cells_from_edges(edges, [len(o.labels) for o in objects])
    return _to_ctc(frames, objects, cell_of, parents)


def _cells_from_edges(
    edges: Sequence[tuple[tuple[int, int], tuple[int, int]]], counts: Sequence[int]
) -> tuple[list[NDArray[np.int64]], dict[int, int | None]]:
    """Cell id (1, 2, ...) of every detection, and each cell's mother cell (or None).

    A cell is a maximal unbranched chain of the link graph: a detection continues its
    predecessor's cell when it is that predecessor's only successor. Successors of a node
    with several successors start daughter cells of the predecessor's cell.
    """
    succ: dict[tuple[int, int], list[tuple[int, int]]] = {}
    pred: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in edges:
        if b[0] <= a[0]:
            raise EvaluationError(f"laptrack link {a} -> {b} does not go forward in time")
        succ.setdefault(a, []).append(b)
        pred.setdefault(b, []).append(a)
    cell_of = [np.zeros(n, np.int64) for n in counts]
    parents: dict[int, int | None] = {}
    next_cell = 1
    for t, n in enumerate(counts):
        for j in range(n):
            before = pred.get((t, j), [])
            if len(before) == 1 and len(succ[before[0]]) == 1:
                cell_of[t][j] = cell_of[before[0][0]][before[0][1]]
                continue
            if len(before) > 1:  # a merge: laptrack runs with merging off, so never
                logger.warning("detection %s has %d predecessors; new root", (t, j), len(before))
            mother = cell_of[before[0][0]][before[0][1]] if len(before) == 1 else None
            parents[next_cell] = int(mother) if mother is not None else None
            cell_of[t][j] = next_cell
            next_cell += 1
    return cell_of, parents


def _to_ctc(
    frames: Sequence[NDArray[np.integer]],
    objects: Sequence[_FrameObjects],
    cell_of: Sequence[NDArray[np.int64]],
    parents: dict[int, int | None],
) -> tuple[list[NDArray[np.uint16]], list[CtcRow]]:
    """Relabel with CTC track labels, cutting cells at gaps exactly as ``export_ctc``."""
    state = _ExportState(parents=parents)
    out: list[NDArray[np.uint16]] = []
    for t, (mask, obj, cells) in enumerate(zip(frames, objects, cell_of, strict=True)):
        mask_labels, ctc_labels = _assign_labels(t, mask, obj.labels, cells, state)
        out.append(_relabel(mask, mask_labels, ctc_labels))
    _check_segments(state.segments)
    rows = [(s.label, s.begin, s.end, s.parent) for s in state.segments]
    return out, rows


def count_divisions(rows: Sequence[CtcRow]) -> int:
    """Tracks with two or more children (a single child is the same cell after a gap)."""
    children: dict[int, int] = {}
    for _, _, _, parent in rows:
        if parent > 0:
            children[parent] = children.get(parent, 0) + 1
    return sum(1 for n in children.values() if n >= 2)


def write_ctc_result(
    out_dir: Path,
    masks: Sequence[NDArray[np.integer]],
    rows: Sequence[CtcRow],
    *,
    digits: int | None = None,
) -> Path:
    """Write a CTC result folder: ``maskNNN.tif`` (uint16, one per frame) + ``res_track.txt``.

    ``digits`` is the zero padding of the frame number (use the ground truth's, e.g. 3
    for ``man_track000.tif``); default 3, or more when the last index needs more. Old
    ``mask*.tif`` and ``res_track.txt`` in ``out_dir`` are removed first.

    Raises:
        EvaluationError: masks not 2-D of one shape, labels outside 1..65535, or rows that
            break the CTC rules (bad frame range, unknown parent, parent not ended before
            its child begins).
    """
    frames = _check_masks(masks)
    n = len(frames)
    need = _digits(n)
    if digits is None or digits < need:
        digits = need
    segments = [CtcSegment(int(lab), int(b), int(e), int(par), int(lab)) for lab, b, e, par in rows]
    _check_rows(segments, n)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_results(out_dir)
    for t, mask in enumerate(frames):
        if mask.size and int(mask.max()) > 65535:
            raise EvaluationError(f"frame {t}: label {int(mask.max())} does not fit in uint16")
        tifffile.imwrite(_mask_path(out_dir, t, digits), mask.astype(np.uint16), compression="zlib")
    _write_track_file(out_dir / "res_track.txt", segments)
    logger.info("wrote %d frames, %d CTC tracks to %s", n, len(segments), out_dir)
    return out_dir


def _check_rows(segments: Sequence[CtcSegment], n_frames: int) -> None:
    by_label: dict[int, CtcSegment] = {}
    for s in segments:
        if not 1 <= s.label <= 65535 or s.label in by_label:
            raise EvaluationError(f"track label {s.label} is out of range or repeated")
        if not 0 <= s.begin <= s.end < n_frames:
            raise EvaluationError(
                f"track {s.label}: frames {s.begin}..{s.end} outside 0..{n_frames - 1}"
            )
        by_label[s.label] = s
    for s in segments:
        if s.parent != 0 and s.parent not in by_label:
            raise EvaluationError(f"track {s.label}: parent {s.parent} is not a track")
    _check_segments(list(segments))
