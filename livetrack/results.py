"""Tracking results as plain Python objects: one position's lineage in memory, and the
result a notebook works with (tables, graphs, napari data, exports).

Two places fill a :class:`PositionData`: :class:`LineageBuilder` while livetrack tracks a
movie in-process (``livetrack.track``), and :func:`read_position` from a stored run
(``livetrack.open_run``). Everything downstream (DataFrames, graphs, GEFF, CTC, napari)
reads only ``PositionData``, so a stored run and an in-process one give the same output.

Track fates and event kinds are the words the tracker and the store use, passed through
unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import EvaluationError
from livetrack.track.base import TrackEnd, TrackRecord, TrackStep
from livetrack.types import Detections, LabelImage

if TYPE_CHECKING:
    import networkx as nx
    import pandas as pd
    from matplotlib.figure import Figure

    from livetrack.evaluate.napari import NapariTracks
    from livetrack.store import Store

logger = logging.getLogger("livetrack.results")

ImageReader = Callable[[int], NDArray[np.generic]]
"""Frame index -> the raw 2-D image of that frame."""


@dataclass
class PositionData:
    """Everything known about one position's lineage.

    Attributes:
        position: position name.
        shape: (rows, cols) of a frame.
        pixel_size_um: pixel size in µm when known.
        frames: committed frame indices, increasing.
        detections: frame -> (detections sorted as stored, track id of each).
        tracks: track id -> its record (parent, first/last frame, fate).
        events: lineage events as stored (``kind``, ``frame``, ``track_id``,
            ``daughters``, ``y``, ``x``, ``confidence``), in the order they happened.
        mask_of: frame -> its label image (values = ``detections[frame][0].labels``).
        image_of: frame -> its raw image, when the images are at hand (else None).
        features: frame -> precomputed per-detection features (columns of
            :mod:`livetrack.evaluate.table`), filled while tracking in-process.
        frame_models: (frame, segmenter, tracker) per stored frame: which models produced
            it (a live worker can switch models); empty for results tracked in memory and
            for frames stored before livetrack recorded it.
    """

    position: str
    shape: tuple[int, int]
    pixel_size_um: float | None
    frames: list[int]
    detections: dict[int, tuple[Detections, NDArray[np.int64]]]
    tracks: dict[int, TrackRecord]
    events: list[dict[str, Any]]
    mask_of: Callable[[int], LabelImage]
    image_of: ImageReader | None = None
    features: dict[int, dict[str, NDArray[np.float64]]] = field(default_factory=dict)
    frame_models: list[tuple[int, str, str]] = field(default_factory=list)

    def track_records(self) -> list[TrackRecord]:
        return [self.tracks[k] for k in sorted(self.tracks)]


class LineageBuilder:
    """Collects ``Tracker.step``/``finish`` results the way the store commits them
    (``Store.write_frame`` / ``write_track_ends``), in memory: a track starts with fate
    'active', its last frame follows its detections, an end sets its last frame and fate."""

    def __init__(self, position: str, shape: tuple[int, int], pixel_size_um: float | None):
        self.position = position
        self.shape = shape
        self.pixel_size_um = pixel_size_um
        self.frames: list[int] = []
        self.detections: dict[int, tuple[Detections, NDArray[np.int64]]] = {}
        self.tracks: dict[int, TrackRecord] = {}
        self.events: list[dict[str, Any]] = []
        self.masks: dict[int, LabelImage] = {}
        self.features: dict[int, dict[str, NDArray[np.float64]]] = {}

    def add_frame(self, mask: LabelImage, detections: Detections, step: TrackStep) -> None:
        """One tracked frame (frames in increasing order)."""
        frame = int(step.frame)
        if self.frames and frame <= self.frames[-1]:
            raise EvaluationError(f"frame {frame} after frame {self.frames[-1]}: out of order")
        if len(step.track_ids) != len(detections):
            raise EvaluationError(
                f"frame {frame}: {len(detections)} detections but {len(step.track_ids)} track ids"
            )
        order = np.argsort(detections.labels, kind="stable")  # the store's order: by label
        dets = detections.subset(order)
        ids = np.asarray(step.track_ids, np.int64)[order]
        for s in step.started:
            self.tracks[int(s.track_id)] = TrackRecord(
                int(s.track_id),
                None if s.parent_id is None else int(s.parent_id),
                int(s.start_frame),
                int(s.start_frame),
                "active",
            )
        for tid in ids.tolist():
            rec = self._track(tid, frame)
            if rec.end_frame < frame:
                self.tracks[tid] = replace(rec, end_frame=frame)
        self.end_tracks(step.ended)
        self.events.extend(
            {
                "frame": int(e.frame),
                "kind": e.kind,
                "track_id": int(e.track_id),
                "daughters": [int(d) for d in e.daughters],
                "y": float(e.y),
                "x": float(e.x),
                "confidence": float(e.confidence),
            }
            for e in step.events
        )
        self.frames.append(frame)
        self.detections[frame] = (dets, ids)
        self.masks[frame] = mask

    def end_tracks(self, ends: list[TrackEnd]) -> None:
        for e in ends:
            rec = self._track(int(e.track_id), int(e.end_frame))
            self.tracks[rec.track_id] = replace(rec, end_frame=int(e.end_frame), fate=e.fate)

    def _track(self, track_id: int, frame: int) -> TrackRecord:
        rec = self.tracks.get(track_id)
        if rec is None:
            raise EvaluationError(
                f"frame {frame}: the tracker used track {track_id} without starting it"
            )
        return rec

    def build(self, image_of: ImageReader | None = None) -> PositionData:
        masks = self.masks

        def mask_of(frame: int) -> LabelImage:
            try:
                return masks[frame]
            except KeyError:
                raise EvaluationError(f"no mask for frame {frame}") from None

        return PositionData(
            position=self.position,
            shape=self.shape,
            pixel_size_um=self.pixel_size_um,
            frames=list(self.frames),
            detections=self.detections,
            tracks=self.tracks,
            events=self.events,
            mask_of=mask_of,
            image_of=image_of,
            features=self.features,
        )


def read_position(
    store: Store, run_id: str, position: str, image_of: ImageReader | None = None
) -> PositionData:
    """One position of a stored run, as committed when this is called.

    Frames, detections, tracks and events are read in one read transaction
    (``Store.snapshot``), so they agree even while a worker keeps writing; masks are read
    later, one frame at a time, from the same (read-only) store — committed frames never
    change. Tracks the worker has not closed yet keep fate 'active'.
    """
    with store.snapshot():
        frames = store.frame_indices(run_id, position)
        detections = {f: store.frame_detections(run_id, position, f) for f in frames}
        tracks = {t.track_id: t for t in store.tracks(run_id, position)}
        events = store.events(run_id, position)
        info = store.position_info(run_id, position)
        models = store.frame_models(run_id, position)
    keep = ("frame", "kind", "track_id", "daughters", "y", "x", "confidence")
    return PositionData(
        position=position,
        shape=(int(info["height"]), int(info["width"])),
        pixel_size_um=info["pixel_size_um"],
        frames=frames,
        detections=detections,
        tracks=tracks,
        events=[{k: e[k] for k in keep} for e in events],
        mask_of=lambda f: store.load_mask(run_id, position, f),
        image_of=image_of,
        frame_models=models,
    )


class TrackingResult:
    """Lineages of one or more positions, for notebooks and exports.

    ``tracks`` and ``events`` are pandas DataFrames over every position (a ``position``
    column tells them apart). ``lineage``, ``graph``, ``to_napari``, ``to_geff`` and
    ``to_ctc`` describe one position: on a result with several, pick one first with
    ``result.position(name)``.
    """

    def __init__(
        self,
        positions: list[PositionData],
        *,
        run_id: str | None = None,
        store: Store | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._positions = {p.position: p for p in positions}
        self.run_id = run_id
        """The stored run this came from (or was saved as); None when only in memory."""
        self.config: dict[str, Any] = dict(config or {})
        """The stored run's settings as it was begun (``segment``, ``track``, …, ``models``:
        the sha256 of the weights), updated by each live model switch, which ``switches``
        lists (when, after which frame of each position, which models); empty when only
        in memory."""
        self._store = store
        self._tables: dict[str, pd.DataFrame] = {}

    def __repr__(self) -> str:
        parts = [
            f"{p.position!r}: {len(p.frames)} frames, {len(p.tracks)} tracks"
            for p in self._positions.values()
        ]
        run = f"run {self.run_id!r}, " if self.run_id else ""
        return f"<TrackingResult {run}{'; '.join(parts)}>"

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the store a stored run is read from (masks are read lazily from it)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> TrackingResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- positions
    @property
    def positions(self) -> list[str]:
        return list(self._positions)

    def position(self, name: str) -> TrackingResult:
        """The result of one position (shares this result's store; close either one)."""
        if name not in self._positions:
            raise EvaluationError(f"no position {name!r} (has {self.positions})")
        return TrackingResult(  # no store: ours
            [self._positions[name]], run_id=self.run_id, config=self.config
        )

    @property
    def data(self) -> PositionData:
        """The one position's raw data (error when the result has several)."""
        if len(self._positions) != 1:
            raise EvaluationError(
                f"this result has positions {self.positions}; choose one with result.position(name)"
            )
        return next(iter(self._positions.values()))

    # ---------------------------------------------------------------- tables
    @property
    def tracks(self) -> pd.DataFrame:
        """One row per detection: position, t, track, parent, label, y, x, area,
        perimeter, eccentricity, mean_intensity, fate (see ``livetrack.evaluate.table``)."""
        import pandas as pd

        from livetrack.evaluate.table import COLUMNS

        parts = [self._table(p) for p in self._positions.values()]
        if not parts:
            return pd.DataFrame(columns=list(COLUMNS))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].copy()

    def _table(self, pos: PositionData) -> pd.DataFrame:
        from livetrack.evaluate.table import detections_table

        if pos.position not in self._tables:
            self._tables[pos.position] = detections_table(pos)
        return self._tables[pos.position]

    @property
    def events(self) -> pd.DataFrame:
        """Lineage events in the order they happened: position, frame, kind, track_id,
        daughters, y, x, confidence (the store's words for ``kind``)."""
        import pandas as pd

        rows = [{"position": p.position, **e} for p in self._positions.values() for e in p.events]
        cols = ["position", "frame", "kind", "track_id", "daughters", "y", "x", "confidence"]
        return pd.DataFrame(rows, columns=cols)

    @property
    def models(self) -> pd.DataFrame:
        """Which models produced each stored frame: position, frame, segmenter, tracker
        (e.g. ``learned seg-unet-v2 921bb4a26434``, ``lstm track-lstm-v4 b45017fa…``). A
        live switch (``livetrack use-model``) shows as a change of ``segmenter``."""
        import pandas as pd

        rows = [
            (p.position, frame, segmenter, tracker)
            for p in self._positions.values()
            for frame, segmenter, tracker in p.frame_models
        ]
        return pd.DataFrame(rows, columns=["position", "frame", "segmenter", "tracker"])

    # ---------------------------------------------------------------- graphs
    @property
    def lineage(self) -> nx.DiGraph:
        """Track-level lineage: a node per track (attributes ``start``, ``end``, ``fate``,
        ``parent``), an edge mother → daughter."""
        import networkx as nx

        pos = self.data
        g: nx.DiGraph = nx.DiGraph()
        for rec in pos.track_records():
            g.add_node(
                rec.track_id,
                start=rec.start_frame,
                end=rec.end_frame,
                fate=rec.fate,
                parent=rec.parent_id,
            )
        for rec in pos.track_records():
            if rec.parent_id is not None and rec.parent_id in pos.tracks:
                g.add_edge(rec.parent_id, rec.track_id)
        return g

    @property
    def graph(self) -> nx.DiGraph:
        """Detection-level tracking graph (what GEFF and traccuracy read): a node per row of
        ``tracks`` (node id = row index; attributes t, y, x, seg_id, area, track_id, ...),
        an edge from each detection to the next one of its track and from a mother's last
        detection to each daughter's first."""
        from livetrack.evaluate.geff import tracking_graph

        self.data  # noqa: B018 (one position, else a clear error)
        return tracking_graph(self.tracks)

    # ---------------------------------------------------------------- exports
    def to_napari(self) -> NapariTracks:
        """Data for napari: ``viewer.add_tracks(n.data, graph=n.graph, properties=...)``
        and ``viewer.add_labels(n.labels)``, or ``n.add_to(viewer)``."""
        from livetrack.evaluate.napari import napari_tracks

        return napari_tracks(self.tracks, self.data)

    def to_geff(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the tracking graph + segmentation as a GEFF zarr (needs ``geff``)."""
        from livetrack.evaluate.geff import write_geff

        return write_geff(self.tracks, self.data, Path(path), overwrite=overwrite)

    def to_ctc(self, path: str | Path, *, n_frames: int | None = None) -> Path:
        """Write a Cell Tracking Challenge result folder (maskNNN.tif + res_track.txt)."""
        from livetrack.evaluate.export import ExportFrame, export_ctc

        pos = self.data

        def frames() -> Iterator[ExportFrame]:
            for f in pos.frames:
                dets, ids = pos.detections[f]
                yield ExportFrame(f, pos.mask_of(f), dets.labels, ids)

        total = n_frames if n_frames is not None else (pos.frames[-1] + 1 if pos.frames else 0)
        return export_ctc(frames(), pos.track_records(), Path(path), n_frames=total)

    def to_table(self, path: str | Path) -> Path:
        """Write ``tracks`` as CSV (``.csv``) or Parquet (``.parquet``, needs pyarrow)."""
        from livetrack.evaluate.table import write_table

        return write_table(self.tracks, Path(path))

    # ---------------------------------------------------------------- pictures
    def plot_lineage(self, track: int, path: str | Path | None = None) -> Figure:
        """The lineage tree of ``track`` and its descendants on a time axis (matplotlib
        ``Figure``; also written to ``path``, .png/.svg/.pdf, when given). Needs
        ``livetrack[plot]``."""
        from livetrack.plot import lineage_figure, save_figure

        fig = lineage_figure(self, int(track))
        if path is not None:
            save_figure(fig, path)
        return fig

    def plot_summary(self, path: str | Path | None = None) -> Figure:
        """Cells per frame and cumulative divisions, one line per position (a ``Figure``;
        also written to ``path`` when given). Needs ``livetrack[plot]``."""
        from livetrack.plot import save_figure, summary_figure

        fig = summary_figure(self)
        if path is not None:
            save_figure(fig, path)
        return fig

    def write_overlay(self, path: str | Path, *, fps: float = 5.0) -> Path:
        """An overlay movie (.gif or .mp4) of one position: outlines and track ids over
        the raw frames (over black when the images are not at hand: pass ``images=`` to
        ``open_run``). Needs ``livetrack[plot]``."""
        from livetrack.plot import write_overlay

        return write_overlay(self, path, fps=fps)
