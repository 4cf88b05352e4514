"""The Python API for notebooks and scripts: track a movie in-process, open a stored run.

``livetrack.track(images)`` segments and tracks a (T, Y, X) movie in this process, through
the same segmenter and tracker factories as the worker (no sockets; no database unless
``db=`` asks for one). ``livetrack.open_run(db)`` reads a run the worker stored, also
while it is still being written. Both return a :class:`livetrack.results.TrackingResult`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import ConfigError, EvaluationError, SourceError, StoreError
from livetrack.results import LineageBuilder, TrackingResult, read_position

if TYPE_CHECKING:
    from livetrack.config import SegmentConfig, Settings, TrackConfig
    from livetrack.store import Store

logger = logging.getLogger("livetrack.api")

__all__ = ["TrackingResult", "open_run", "track"]


class Movie(Protocol):
    """Anything indexable by frame with a shape: NumPy, dask, zarr, memmap."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: Any) -> Any: ...


MovieLike = Movie | Sequence[NDArray[Any]] | str | Path
"""A (T, Y, X) array (NumPy, dask, zarr, ...), a list of 2-D frames, or a path: a TIFF
stack, a ``.npy`` file, or a folder of one TIFF per frame (sorted by name, as in the CTC
layout)."""


def track(
    images: MovieLike,
    masks: MovieLike | None = None,
    *,
    pixel_size: float | None = None,
    segmenter: str | SegmentConfig | None = None,
    tracker: str | TrackConfig | None = None,
    settings: Settings | None = None,
    position: str = "0",
    db: str | Path | None = None,
    run_id: str | None = None,
) -> TrackingResult:
    """Segment and track a movie in this process and return the lineages.

    Args:
        images: (T, Y, X) frames (see ``MovieLike``); one frame is read at a time, so a
            dask or zarr array larger than memory works.
        masks: (T, Y, X) label images to track instead of segmenting (tracking only).
        pixel_size: µm per pixel, when known (segmentation scale, GEFF and napari scale).
        segmenter: 'classical', 'learned' or a ``SegmentConfig`` (default: the settings').
        tracker: 'lap', 'lstm' or a ``TrackConfig`` (default: the settings').
        settings: full settings (default: livetrack's defaults and LIVETRACK_* variables).
        position: position name in the result (and in ``db``).
        db: also store the run in this SQLite file (as the worker does), so the dashboard,
            ``livetrack export`` and ``open_run`` can read it. Default: nothing written.
        run_id: the stored run's id (with ``db``); default: ``python-<time>-<random>``.

    Raises:
        SourceError: images or masks that are not (T, Y, X), or whose shapes differ.
        ConfigError: an unknown segmenter or tracker.
        StoreError: ``db`` cannot be written, or already holds ``run_id``.
    """
    cfg = _settings(settings, segmenter, tracker)
    movie = as_movie(images, "images")
    labels = as_movie(masks, "masks") if masks is not None else None
    n_frames, shape = _check_movies(movie, labels)
    from livetrack.evaluate.table import measure
    from livetrack.finite import describe_non_finite, finite_frame
    from livetrack.percentile import one_frame
    from livetrack.segment.factory import make_segmenter
    from livetrack.track.factory import make_tracker
    from livetrack.track.merges import split_segmentation
    from livetrack.types import Detections, Segmentation

    seg = make_segmenter(cfg.segment) if labels is None else None
    trk = make_tracker(cfg.track, shape)
    builder = LineageBuilder(position, shape, pixel_size)
    store, run_id = _open_db(db, run_id, cfg) if db is not None else (None, None)
    t0 = time.perf_counter()
    warned_non_finite = False
    try:
        for t in range(n_frames):
            image, n_bad = finite_frame(_frame(movie, t, shape, "images"))
            if n_bad == image.size:
                logger.warning("frame %d: no pixel is a finite number; tracked as empty", t)
            elif n_bad and not warned_non_finite:
                warned_non_finite = True
                logger.warning(
                    "frame %d: %s (said once)", t, describe_non_finite(n_bad, image.size)
                )
            with one_frame(image):  # the frame's histogram counted once
                if labels is not None:
                    mask = _frame(labels, t, shape, "masks").astype(np.int32)
                    result = Segmentation(mask=mask, detections=Detections.from_labels(mask))
                else:
                    assert seg is not None
                    result = split_segmentation(seg.predict(image, pixel_size), trk, t)
                step = trk.step(
                    t, result.detections, image=image, mask=result.mask, labels_given=seg is None
                )
            builder.add_frame(result.mask, result.detections, step)
            dets = builder.detections[t][0]
            builder.features[t] = measure(result.mask, dets.labels, image)
            if store is not None and run_id is not None:
                store.write_frame(
                    run_id,
                    position,
                    t,
                    timestamp=time.time(),
                    mask=result.mask,
                    detections=result.detections,
                    step=step,
                    pixel_size_um=pixel_size,
                    diameter_px=result.info.get("diameter_px"),
                    diameter_estimate_px=result.info.get("diameter_estimate"),
                )
        ends = trk.finish(n_frames - 1)
        builder.end_tracks(ends)
        if store is not None and run_id is not None:
            store.write_track_ends(run_id, position, ends)
            store.end_run(run_id, "finished")
    except BaseException:
        if store is not None and run_id is not None:
            store.end_run(run_id, "aborted")
        raise
    finally:
        if store is not None:
            store.close()
    logger.info(
        "tracked %d frames in %.1f s: %d tracks",
        n_frames,
        time.perf_counter() - t0,
        len(builder.tracks),
    )
    return TrackingResult(
        [builder.build(lambda f: _frame(movie, f, shape, "images"))], run_id=run_id
    )


def open_run(
    db: str | Path,
    run: str | None = None,
    position: str | None = None,
    *,
    images: MovieLike | None = None,
) -> TrackingResult:
    """Read a stored run (read-only; also while a worker is writing it).

    What was committed when this is called is read in one consistent snapshot; call it
    again to see later frames. Close the result (or use ``with``) to release the file.

    Args:
        db: the SQLite file the worker writes.
        run: run id; default the most recently begun run.
        position: one position; default all of them (``tracks`` then has several values
            in its ``position`` column).
        images: the movie the run was made from, (T, Y, X), to fill ``mean_intensity``
            (the store keeps masks, not images); only with a single position.

    Raises:
        StoreError: no such file or run, or not a livetrack database.
        EvaluationError: an unknown position, or ``images`` with several positions.
    """
    from livetrack.store import Store

    store = Store(Path(db), readonly=True)
    try:
        run_id = run or store.latest_run_id()
        if run_id is None:
            raise StoreError(f"{db} holds no runs")
        if not store.has_run(run_id):
            known = [r["run_id"] for r in store.runs()]
            raise StoreError(f"{db} has no run {run_id!r} (has {known})")
        names = store.positions(run_id)
        if position is not None:
            if position not in names:
                raise EvaluationError(f"run {run_id} has no position {position!r} (has {names})")
            names = [position]
        image_of = _image_reader(images, names)
        positions = [read_position(store, run_id, name, image_of) for name in names]
        config = store.run_config(run_id)
    except BaseException:
        store.close()
        raise
    return TrackingResult(positions, run_id=run_id, store=store, config=config)


def export_stored(
    db: Path,
    run_id: str | None,
    position: str | None,
    *,
    geff: Path | None = None,
    table: Path | None = None,
    napari: Path | None = None,
) -> list[str]:
    """``livetrack export`` for the formats besides CTC: one line per file written.

    The table covers every position of the run unless one is chosen; GEFF and napari
    describe one position (the only one, or ``position``)."""
    from livetrack.evaluate.napari import check_napari_path, write_napari
    from livetrack.evaluate.table import check_table_path

    if table is not None:  # refuse a bad name before writing anything
        check_table_path(table)
    if napari is not None:
        check_napari_path(napari)
    done: list[str] = []
    with open_run(db, run_id, position) as result:
        what = f"run {result.run_id}"
        if table is not None:
            result.to_table(table)
            done.append(f"exported {what} positions {result.positions}: table → {table}")
        one = _only_position(result) if (geff is not None or napari is not None) else None
        if geff is not None and one is not None:
            one.to_geff(geff, overwrite=True)
            done.append(f"exported {what} position {one.positions[0]}: GEFF → {geff}")
        if napari is not None and one is not None:
            write_napari(one.to_napari(), napari)
            done.append(f"exported {what} position {one.positions[0]}: napari → {napari}")
    return done


def _only_position(result: TrackingResult) -> TrackingResult:
    if len(result.positions) != 1:
        raise EvaluationError(
            f"run {result.run_id} has positions {result.positions}; choose one with --position"
        )
    return result


# ---------------------------------------------------------------------- helpers


def _settings(
    settings: Settings | None,
    segmenter: str | SegmentConfig | None,
    tracker: str | TrackConfig | None,
) -> Settings:
    from livetrack.config import load_settings

    base = settings if settings is not None else load_settings()
    update: dict[str, Any] = {}
    if segmenter is not None:
        update["segment"] = _section(base.segment, segmenter, "segmenter")
    if tracker is not None:
        update["track"] = _section(base.track, tracker, "tracker")
    return base.model_copy(update=update) if update else base


def _section(current: Any, choice: Any, what: str) -> Any:
    if isinstance(choice, str):
        try:
            return type(current).model_validate({**current.model_dump(), "method": choice})
        except ValueError as exc:
            raise ConfigError(f"unknown {what} {choice!r}") from exc
    if not isinstance(choice, type(current)):
        raise ConfigError(f"{what} must be a method name or a {type(current).__name__}")
    return choice


def as_movie(source: MovieLike, what: str) -> Movie | Sequence[NDArray[Any]]:
    """An indexable (T, Y, X) movie from an array or a path (read lazily where possible)."""
    if isinstance(source, str | Path):
        return _read_path(Path(source), what)
    if hasattr(source, "shape") and hasattr(source, "__getitem__"):
        shape = tuple(source.shape)
        if len(shape) == 2:  # one frame
            return np.asarray(source)[None]
        if len(shape) != 3:
            raise SourceError(f"{what} must be (T, Y, X), got shape {shape}")
        return source
    if isinstance(source, Sequence):
        return cast("Sequence[NDArray[Any]]", source)
    raise SourceError(f"{what}: expected an array, a list of 2-D frames or a path")


def _read_path(path: Path, what: str) -> Movie | Sequence[NDArray[Any]]:
    import tifffile

    if not path.exists():
        raise SourceError(f"{what}: {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        if not files:
            raise SourceError(f"{what}: no .tif files in {path}")
        return _LazyFrames(files, tifffile.imread)
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    elif path.suffix.lower() in (".tif", ".tiff"):
        arr = tifffile.imread(path)
    else:
        raise SourceError(f"{what}: {path}: use a TIFF stack, a .npy file or a folder of TIFFs")
    return as_movie(arr, f"{what} ({path})")


class _LazyFrames(Sequence[NDArray[Any]]):
    """One file per frame, read when indexed."""

    def __init__(self, files: list[Path], read: Callable[[Path], NDArray[Any]]) -> None:
        self.files = files
        self._read = read

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._read(f) for f in self.files[index]]
        return self._read(self.files[index])


def _n_frames(movie: Movie | Sequence[NDArray[Any]]) -> int:
    shape = getattr(movie, "shape", None)
    return int(shape[0]) if shape is not None else len(movie)  # type: ignore[arg-type]


def _check_movies(
    movie: Movie | Sequence[NDArray[Any]], labels: Movie | Sequence[NDArray[Any]] | None
) -> tuple[int, tuple[int, int]]:
    n = _n_frames(movie)
    if n == 0:
        raise SourceError("images: the movie has no frames")
    first = np.asarray(movie[0])
    if first.ndim != 2:
        raise SourceError(f"images: each frame must be 2-D (Y, X), got shape {first.shape}")
    shape = (int(first.shape[0]), int(first.shape[1]))
    if labels is not None and _n_frames(labels) != n:
        raise SourceError(f"masks have {_n_frames(labels)} frames, images {n}")
    return n, shape


def _frame(
    movie: Movie | Sequence[NDArray[Any]], t: int, shape: tuple[int, int], what: str
) -> NDArray[Any]:
    frame = np.asarray(movie[t])
    if frame.shape != shape:
        raise SourceError(f"{what} frame {t} has shape {frame.shape}, expected {shape}")
    return frame


def _image_reader(
    images: MovieLike | None, positions: list[str]
) -> Callable[[int], NDArray[Any]] | None:
    if images is None:
        return None
    if len(positions) != 1:
        raise EvaluationError(
            f"images= describes one position; the run has {positions}: choose a position"
        )
    movie = as_movie(images, "images")
    return lambda f: np.asarray(movie[f])


def _open_db(db: str | Path, run_id: str | None, settings: Settings) -> tuple[Store, str]:
    """The store a run is also written to, with the run begun (never resumed)."""
    from livetrack.store import Store
    from livetrack.worker import run_config

    run_id = run_id or f"python-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    store = Store(Path(db))
    try:
        if store.has_run(run_id):
            raise StoreError(f"{db} already holds run {run_id!r}; choose another run_id")
        store.begin_run(run_id, source="python: livetrack.track", config=run_config(settings))
    except BaseException:
        store.close()
        raise
    return store, run_id
