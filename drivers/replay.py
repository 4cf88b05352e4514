"""Replay a recorded movie in CTC layout (``tNNN.tif``, any zero-padding) as a live source.

Optionally with a folder of label masks (``man_trackNNN.tif``, ``man_segNNN.tif``,
``maskNNN.tif``…) to track instead of segmenting — tracking-only mode, used to score the
tracker alone. A frame that cannot be read is reported and skipped; the run goes on.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from livetrack.drivers.movie import (
    MovieSource,
    is_ndtiff,
    no_frames_read,
    open_ndtiff_movie,
    open_tiff_movie,
    pixel_size_from_tiff,
)
from livetrack.drivers.omezarr import is_ome_zarr, open_ome_zarr_movie

from livetrack.errors import SourceError
from livetrack.source import FrameMeta

log = logging.getLogger("livetrack.drivers.replay")

_FRAME_RE = re.compile(r"^t(\d+)\.tiff?$", re.IGNORECASE)
_MASK_RE = re.compile(r"^[A-Za-z_]*?(\d+)\.tiff?$", re.IGNORECASE)


def index_files(folder: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    """Map frame number → file for every file in ``folder`` whose name matches ``pattern``."""
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder")
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m:
            idx = int(m.group(1))
            if idx in found:
                raise SourceError(
                    f"{folder}: two files for frame {idx}: {found[idx].name}, {p.name}"
                )
            found[idx] = p
    return dict(sorted(found.items()))


class CTCReplaySource:
    """A FrameSource over a CTC-layout sequence folder."""

    n_positions = 1

    def __init__(
        self,
        seq_dir: Path,
        *,
        masks_dir: Path | None = None,
        pixel_size_um: float | None = None,
        position: str | None = None,
        fps: float | None = None,
    ) -> None:
        self.seq_dir = Path(seq_dir)
        self.frames_by_index = index_files(self.seq_dir, _FRAME_RE)
        if not self.frames_by_index:
            raise SourceError(f"{self.seq_dir} holds no frames named tNNN.tif")
        self.masks_by_index: dict[int, Path] | None = None
        if masks_dir is not None:
            self.masks_by_index = index_files(Path(masks_dir), _MASK_RE)
            missing = sorted(set(self.frames_by_index) - set(self.masks_by_index))
            if missing:
                raise SourceError(
                    f"{masks_dir} has no mask for {len(missing)} frame(s), first: {missing[:5]}"
                )
        first = next(iter(self.frames_by_index.values()))
        self.pixel_size_um = pixel_size_um or pixel_size_from_tiff(first)
        self.position = position or f"{self.seq_dir.parent.name}_{self.seq_dir.name}"
        self.fps = fps
        self.skipped: list[tuple[int, str]] = []
        self._closed = False

    @property
    def total_frames(self) -> int | None:
        return len(self.frames_by_index)

    def describe(self) -> str:
        mode = f" masks={self.masks_dir_name}" if self.masks_by_index is not None else ""
        return f"replay {self.seq_dir}{mode}"

    @property
    def masks_dir_name(self) -> str:
        if not self.masks_by_index:
            return ""
        return str(next(iter(self.masks_by_index.values())).parent)

    def frames(self) -> Iterator[tuple[np.ndarray, FrameMeta]]:
        next_due = time.monotonic()
        delivered = 0
        for idx, path in self.frames_by_index.items():
            if self._closed:
                return
            try:
                image = _read_2d(path)
                labels = None
                if self.masks_by_index is not None:
                    labels = _read_2d(self.masks_by_index[idx]).astype(np.int32)
                    if labels.shape != image.shape:
                        raise SourceError(
                            f"mask {self.masks_by_index[idx].name} is {labels.shape}, "
                            f"frame is {image.shape}"
                        )
            except SourceError as err:
                log.error("skipping frame %d: %s", idx, err)
                self.skipped.append((idx, str(err)))
                continue
            if self.fps:
                delay = next_due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_due += 1.0 / self.fps
            delivered += 1
            yield (
                image,
                FrameMeta(
                    position=self.position,
                    frame_index=idx,
                    timestamp=time.time(),
                    pixel_size_um=self.pixel_size_um,
                    labels=labels,
                ),
            )
        if not delivered and self.skipped and not self._closed:
            raise no_frames_read(f"replay {self.seq_dir}", [s[1] for s in self.skipped])

    def close(self) -> None:
        self._closed = True


def _read_2d(path: Path) -> np.ndarray:
    try:
        arr = tifffile.imread(path)
    except Exception as err:  # any failure (truncated file, codec error): skip this frame
        raise SourceError(f"cannot read {path.name}: {type(err).__name__}: {err}") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise SourceError(f"{path.name} has shape {arr.shape}; expected one 2-D plane")
    if arr.dtype.kind not in "uif":
        raise SourceError(f"{path.name} has unsupported pixel type {arr.dtype}")
    if arr.dtype == np.int64 or arr.dtype == np.uint64:
        arr = arr.astype(np.float64)
    return arr


def read_label_masks(folder: Path) -> tuple[list[np.ndarray], int]:
    """Every label mask of a CTC-style folder (``man_trackNNN.tif``, ``maskNNN.tif``…),
    frame 0 first, as int64 images — found the way ``replay --masks`` finds them — and the
    zero padding of their numbers (so results can be written with the same names).
    SourceError when the folder holds none, when frames are missing (they must be
    0..N-1), or when a mask is not a label image (fractional values)."""
    files = index_files(folder, _MASK_RE)
    if not files:
        raise SourceError(f"{folder} holds no label masks (e.g. man_track000.tif)")
    if list(files) != list(range(len(files))):
        missing = sorted(set(range(max(files) + 1)) - set(files))
        raise SourceError(f"{folder}: frames must be 0..N-1; missing {missing[:5]}")
    masks = []
    for path in files.values():
        arr = _read_2d(path)
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise SourceError(f"{path.name} is not a label image (fractional values)")
        masks.append(arr.astype(np.int64))
    numbers = (_MASK_RE.match(path.name) for path in files.values())
    digits = max(len(m.group(1)) for m in numbers if m is not None)
    return masks, digits


def open_movie(
    path: Path,
    *,
    masks_dir: Path | None = None,
    axes: str | None = None,
    channel: str | int | None = None,
    z: int | str | None = None,
    pixel_size_um: float | None = None,
    position: str | None = None,
    fps: float | None = None,
    realtime: bool = False,
) -> CTCReplaySource | MovieSource:
    """Open any recording ``livetrack replay`` understands, by what ``path`` is: an
    OME-Zarr (a ``*.zarr`` group or NGFF metadata), an NDTiff dataset folder
    (``NDTiff.index``), a CTC sequence folder (``tNNN.tif``), or a multi-page TIFF /
    OME-TIFF file. Options that do not apply to the format are errors,
    not silently ignored."""
    path = Path(path)
    if not path.exists():
        raise SourceError(
            f"{path} does not exist: it is not a folder (CTC / NDTiff / OME-Zarr) or a TIFF file"
        )
    if is_ome_zarr(path):
        _refuse(masks_dir=masks_dir, axes=axes, fmt="an OME-Zarr (its metadata names the axes)")
        return open_ome_zarr_movie(
            path,
            channel=channel,
            z=z,
            pixel_size_um=pixel_size_um,
            position=position,
            fps=fps,
            realtime=realtime,
        )
    if path.is_dir() and is_ndtiff(path):
        _refuse(masks_dir=masks_dir, axes=axes, position=position, fmt="an NDTiff dataset")
        return open_ndtiff_movie(
            path, channel=channel, z=z, pixel_size_um=pixel_size_um, fps=fps, realtime=realtime
        )
    if path.is_dir():
        _refuse(axes=axes, channel=channel, z=z, fmt="a CTC folder")
        if realtime:
            raise SourceError(f"{path}: a CTC folder has no recorded timestamps; use fps")
        return CTCReplaySource(
            path, masks_dir=masks_dir, pixel_size_um=pixel_size_um, position=position, fps=fps
        )
    _refuse(masks_dir=masks_dir, fmt="a TIFF movie")
    return open_tiff_movie(
        path,
        axes=axes,
        channel=channel,
        z=z,
        pixel_size_um=pixel_size_um,
        position=position,
        fps=fps,
        realtime=realtime,
    )


def _refuse(fmt: str, **options: object) -> None:
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise SourceError(f"{', '.join(given)} cannot be used with {fmt}")
