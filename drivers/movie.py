"""Replay recorded movies as live sources: multi-page TIFF / OME-TIFF / ImageJ hyperstacks
(T[C][Z]YX) and NDTiff datasets written by Micro-Manager / pycromanager (via ``ndstorage``).

Both readers reduce a recording to a list of ``PlaneRef`` — one 2-D frame per
(position, time point), read lazily — and ``MovieSource`` streams them in acquisition
order (time point by time point, positions interleaved as a microscope would), paced as
fast as possible, at ``fps`` time points per second, or at the recorded timestamps
(``realtime``). One channel is tracked (the worker tracks one channel per position);
several z-planes are max-projected unless one plane is chosen.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from livetrack.errors import MissingExtra, NoFramesRead, SourceError
from livetrack.source import FrameMeta

log = logging.getLogger("livetrack.drivers.movie")

ZChoice = int | str | None
"""A z-plane index, ``"max"`` for a max projection, or None (max when several planes)."""


@dataclass(frozen=True)
class PlaneRef:
    """One frame of a recording, not yet read."""

    position: str
    frame_index: int
    read: Callable[[], np.ndarray]
    recorded_s: float | None = None
    """Acquisition time relative to the recording's start, when the file says."""


class MovieSource:
    """A FrameSource over prepared planes; see the module docstring for pacing."""

    def __init__(
        self,
        planes: Sequence[PlaneRef],
        *,
        description: str,
        channel: str = "default",
        pixel_size_um: float | None = None,
        fps: float | None = None,
        realtime: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if not planes:
            raise SourceError(f"{description}: no frames to replay")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise SourceError(f"fps must be a positive number, got {fps}")
        if fps is not None and realtime:
            raise SourceError("choose either fps or realtime pacing, not both")
        if realtime and any(p.recorded_s is None for p in planes):
            raise SourceError(
                f"{description} has no recorded timestamps for real-time pacing; use fps"
            )
        self.planes = sorted(planes, key=lambda p: (p.frame_index, p.position))
        self.positions = tuple(dict.fromkeys(p.position for p in self.planes))
        self.description = description
        self.channel = channel
        self.pixel_size_um = pixel_size_um
        self.fps = fps
        self.realtime = realtime
        self._on_close = on_close
        self._closed = False
        self.skipped: list[tuple[str, int, str]] = []

    @property
    def n_positions(self) -> int:
        return len(self.positions)

    @property
    def total_frames(self) -> int | None:
        return len(self.planes)

    def describe(self) -> str:
        pace = "realtime" if self.realtime else (f"{self.fps:g} fps" if self.fps else "max speed")
        return f"{self.description} channel={self.channel} positions={len(self.positions)} {pace}"

    def frames(self) -> Iterator[tuple[np.ndarray, FrameMeta]]:
        start = time.monotonic()
        first_t = self.planes[0].frame_index
        t0_rec = self.planes[0].recorded_s or 0.0
        delivered = 0
        try:
            for plane in self.planes:
                if self._closed:
                    return
                self._wait(start, plane, first_t, t0_rec)
                try:
                    image = _as_2d(plane.read(), f"{plane.position} frame {plane.frame_index}")
                except SourceError as err:
                    log.error("skipping %s frame %d: %s", plane.position, plane.frame_index, err)
                    self.skipped.append((plane.position, plane.frame_index, str(err)))
                    continue
                delivered += 1
                yield (
                    image,
                    FrameMeta(
                        position=plane.position,
                        frame_index=plane.frame_index,
                        timestamp=time.time(),
                        pixel_size_um=self.pixel_size_um,
                        channel=self.channel,
                    ),
                )
            if not delivered and self.skipped:
                raise no_frames_read(self.description, [s[2] for s in self.skipped])
        finally:
            self.close()

    def _wait(self, start: float, plane: PlaneRef, first_t: int, t0_rec: float) -> None:
        """Sleep until this plane is due under the chosen pacing."""
        if self.realtime:
            due = (plane.recorded_s or 0.0) - t0_rec
        elif self.fps:
            due = (plane.frame_index - first_t) / self.fps
        else:
            return
        delay = start + due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close()


def no_frames_read(what: str, reasons: Sequence[str]) -> NoFramesRead:
    """The error for a recording none of whose frames could be read."""
    return NoFramesRead(
        f"{what}: none of its {len(reasons)} frame(s) could be read (first: {reasons[0]})"
    )


def _as_2d(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise SourceError(f"{what} has shape {arr.shape}; expected one 2-D plane")
    if arr.dtype.kind not in "uif":
        raise SourceError(f"{what} has unsupported pixel type {arr.dtype}")
    if arr.dtype.itemsize == 8 and arr.dtype.kind in "ui":
        arr = arr.astype(np.float64)
    return arr


def _pick_channel(names: Sequence[str], channel: str | int | None, what: str) -> int:
    """Index of ``channel`` (a name, or an index given as int / digit string)."""
    if channel is None:
        if len(names) > 1:
            log.info("%s has channels %s; tracking %r (choose one)", what, names, names[0])
        return 0
    if isinstance(channel, int) or (isinstance(channel, str) and channel.isdigit()):
        idx = int(channel)
        if not 0 <= idx < len(names):
            raise SourceError(f"{what} has {len(names)} channel(s); index {idx} is out of range")
        return idx
    if channel not in names:
        raise SourceError(f"{what} has no channel {channel!r}; it has {list(names)}")
    return list(names).index(channel)


def _pick_z(n_z: int, z: ZChoice, what: str) -> list[int]:
    """The z-plane indices to read: one plane, or all of them for a max projection."""
    if z is None or z == "max":
        return list(range(n_z))
    idx = int(z)
    if not 0 <= idx < n_z:
        raise SourceError(f"{what} has {n_z} z-plane(s); index {idx} is out of range")
    return [idx]


def _max_of(readers: Sequence[Callable[[], np.ndarray]]) -> Callable[[], np.ndarray]:
    if len(readers) == 1:
        return readers[0]

    def read() -> np.ndarray:
        out = np.asarray(readers[0]())
        for r in readers[1:]:
            out = np.maximum(out, r())
        return out

    return read


# ---------------------------------------------------------------------- TIFF
_KNOWN_AXES = set("TCZYX")


def normalise_axes(axes: str, shape: Sequence[int], what: str, *, given: bool = True) -> str:
    """Map a TIFF series' axes onto T/C/Z/Y/X. A sequence axis of an unlabelled
    multi-page file (tifffile's I/Q) is ambiguous — 12 pages may be 12 time points or 6
    time points × 2 channels — so a file's own I/Q axis of size > 1 is refused
    (``given=False``) until the user says the order; in an order the user gave, I/Q is
    time. Any other unknown axis must have size 1."""
    axes = axes.upper()
    if not given:
        _refuse_unlabelled(axes, shape, what)
    if len(axes) != len(shape):
        raise SourceError(f"{what}: axes {axes!r} do not match the data shape {tuple(shape)}")
    if not axes.endswith("YX"):
        raise SourceError(f"{what}: axes {axes!r} must end in YX (one 2-D plane per page)")
    out = []
    for a, n in zip(axes, shape, strict=True):
        if a in _KNOWN_AXES or n == 1:
            out.append(a)
        elif a in "IQ" and "T" not in axes:
            out.append("T")
        else:
            raise SourceError(
                f"{what}: axis {a!r} of size {n} is not understood; give the axis order "
                "explicitly (e.g. axes='TCZYX')"
            )
    if any(out.count(a) > 1 for a in _KNOWN_AXES):
        raise SourceError(f"{what}: axes {''.join(out)!r} repeat an axis")
    return "".join(out)


_EXAMPLE_AXES = {
    1: "TYX (time points), ZYX (z-planes), TC2YX (time points × 2 channels)",
    2: "TCYX",
    3: "TCZYX",
}
_AXIS_TOKEN = re.compile(r"([A-Za-z])(\d*)")


def sized_axes(axes: str, shape: Sequence[int], what: str) -> tuple[str, tuple[int, ...]]:
    """The user's axis order, with optional sizes (``TC2YX``: 2 channels, the time
    points from the page count), as letters and the shape to read the pages in. Sizes
    let a flat page sequence (no metadata) be read as time points × channels × planes;
    at most one leading axis may leave its size out."""
    tokens = _AXIS_TOKEN.findall(axes)
    if "".join(a + n for a, n in tokens) != axes or not tokens:
        raise SourceError(
            f"{what}: --axes {axes!r}: expected letters TCZYX, each optionally "
            "followed by its size, e.g. TCYX or TC2YX"
        )
    letters = "".join(a for a, _ in tokens).upper()
    sizes = [int(n) if n else None for _, n in tokens]
    if all(n is None for n in sizes) and len(letters) == len(shape):
        return letters, tuple(shape)
    if len(letters) < 3:
        raise SourceError(f"{what}: --axes {axes!r} must end in YX")
    n_planes = math.prod(shape[:-2])
    lead = sizes[:-2]
    known = math.prod(n for n in lead if n is not None)
    if lead.count(None) > 1 or known == 0 or n_planes % known:
        raise SourceError(
            f"{what}: --axes {axes!r} cannot split its {n_planes} planes (shape "
            f"{tuple(shape)}); give the size of every leading axis but one, e.g. TC2YX"
        )
    filled = tuple(n if n is not None else n_planes // known for n in lead)
    if math.prod(filled) != n_planes:
        raise SourceError(
            f"{what}: --axes {axes!r} sizes multiply to {math.prod(filled)} planes, "
            f"the file has {n_planes}"
        )
    return letters, (*filled, *shape[-2:])


def _refuse_unlabelled(axes: str, shape: Sequence[int], what: str) -> None:
    unlabelled = [n for a, n in zip(axes, shape, strict=False) if a in "IQ" and n > 1]
    if not unlabelled:
        return
    lead = len(shape) - 2
    pages = math.prod(shape[:-2])
    example = _EXAMPLE_AXES.get(lead, "TCZYX")
    raise SourceError(
        f"{what}: {pages} planes with no axis metadata (read as {axes!r}, shape "
        f"{tuple(shape)}): are they time points, channels or z-planes? Give the order "
        f"with --axes, e.g. --axes {example}"
    )


def _ome_image(tif: tifffile.TiffFile, index: int) -> dict[str, Any]:
    if not tif.is_ome or tif.ome_metadata is None:
        return {}
    images = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", [])
    images = images if isinstance(images, list) else [images]
    return images[index] if index < len(images) else {}


def _ome_channel_names(image: dict[str, Any], n: int) -> list[str]:
    channels = image.get("Pixels", {}).get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    names = [str(c.get("Name") or f"C{i}") for i, c in enumerate(channels)]
    return names if len(names) == n else [f"C{i}" for i in range(n)]


_UM_PER = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6}


def _ome_pixel_size(image: dict[str, Any]) -> float | None:
    px = image.get("Pixels", {})
    size = px.get("PhysicalSizeX")
    if size is None:
        return None
    factor = _UM_PER.get(str(px.get("PhysicalSizeXUnit", "µm")))
    return float(size) * factor if factor else None


def _ome_times(image: dict[str, Any], n_t: int) -> list[float] | None:
    """Per-time-point seconds from OME Plane DeltaT, else TimeIncrement."""
    px = image.get("Pixels", {})
    planes = px.get("Plane", [])
    planes = planes if isinstance(planes, list) else [planes]
    scale = {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}
    by_t: dict[int, float] = {}
    for p in planes:
        if "DeltaT" in p:
            unit = scale.get(str(p.get("DeltaTUnit", "s")), 1.0)
            by_t.setdefault(int(p.get("TheT", 0)), float(p["DeltaT"]) * unit)
    if len(by_t) == n_t:
        return [by_t[t] for t in sorted(by_t)]
    if "TimeIncrement" in px:
        step = float(px["TimeIncrement"]) * scale.get(str(px.get("TimeIncrementUnit", "s")), 1.0)
        return [t * step for t in range(n_t)]
    return None


def _imagej_times(tif: tifffile.TiffFile, n_t: int) -> list[float] | None:
    md = tif.imagej_metadata or {}
    step = md.get("finterval")
    return [t * float(step) for t in range(n_t)] if step else None


def pixel_size_from_tiff(path: Path) -> float | None:
    """Pixel size in µm from a TIFF's resolution tags, or None when absent/implausible."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            tags = page.tags
            res = tags.get("XResolution")
            unit = tags.get("ResolutionUnit")
            if res is None:
                return None
            num, den = res.value
            if num == 0 or den == 0:
                return None
            px_per_unit = num / den
            unit_val = int(unit.value) if unit is not None else 2
    except (OSError, tifffile.TiffFileError, ValueError):
        return None
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit_val)  # inch, centimetre
    if um_per_unit is None:
        return None
    size = um_per_unit / px_per_unit
    # 72/96 dpi defaults mean "unknown"; real microscopes are 0.01–50 µm/px.
    return size if 0.01 <= size <= 50 else None


def open_tiff_movie(
    path: Path,
    *,
    axes: str | None = None,
    channel: str | int | None = None,
    z: ZChoice = None,
    pixel_size_um: float | None = None,
    position: str | None = None,
    fps: float | None = None,
    realtime: bool = False,
) -> MovieSource:
    """A multi-page TIFF, ImageJ hyperstack or OME-TIFF as a MovieSource. Axis order from
    the file's metadata unless ``axes`` is given; every OME image (series) of the same
    shape is a position."""

    path = Path(path)
    try:
        tif = tifffile.TiffFile(path)
    except (OSError, tifffile.TiffFileError, ValueError) as err:
        raise SourceError(f"cannot read {path}: {err}") from None
    try:
        all_series = list(tif.series) if tif.is_ome else list(tif.series[:1])
        planes: list[PlaneRef] = []
        channel_name = "default"
        for si, series in enumerate(all_series):
            what = f"{path.name} series {si}"
            # RGB(A): samples per pixel are the pages' last axis (S), not planes.
            rgb = series.axes.upper().endswith("S") and series.shape[-1] in (3, 4)
            own_axes, own_shape = (
                (series.axes[:-1], tuple(series.shape[:-1]))
                if rgb
                else (series.axes, tuple(series.shape))
            )
            user = axes[:-1] if rgb and axes and axes.upper().endswith("S") else axes
            letters, shape = sized_axes(user, own_shape, what) if user else (None, None)
            shape = shape or own_shape
            ax = normalise_axes(letters or own_axes, shape, what, given=user is not None)
            image_md = _ome_image(tif, si)
            name = position if position and len(all_series) == 1 else None
            name = name or _series_position(path, series, si, len(all_series))
            sizes = dict(zip(ax, shape, strict=True))
            sample: int | None = None
            if rgb and "C" not in sizes:
                sample = _pick_sample(series.shape[-1], channel, what)
                channel_name = RGB_NAMES[sample] if sample >= 0 else "mean of RGB"
                ci = 0
            else:
                names = _ome_channel_names(image_md, sizes.get("C", 1))
                ci = _pick_channel(names, channel, what)
                channel_name = names[ci] if image_md or len(names) > 1 else "default"
                if rgb:  # channels and RGB samples both: --channel picks the channel
                    sample = -1
            zs = _pick_z(sizes.get("Z", 1), z, what)
            n_t = sizes.get("T", 1)
            times = _ome_times(image_md, n_t) if image_md else _imagej_times(tif, n_t)
            lead = list(ax[:-2])
            for t in range(n_t):
                readers = []
                for zi in zs:
                    idx = {"T": t, "C": ci, "Z": zi}
                    key = int(
                        np.ravel_multi_index(tuple(idx.get(a, 0) for a in lead), tuple(shape[:-2]))
                        if lead
                        else 0
                    )
                    readers.append(_page_reader(tif, si, key, sample if rgb else None))
                planes.append(PlaneRef(name, t, _max_of(readers), times[t] if times else None))
        first_md = _ome_image(tif, 0)
        size = pixel_size_um or _ome_pixel_size(first_md) or pixel_size_from_tiff(path)
        return MovieSource(
            planes,
            description=f"movie {path}",
            channel=channel_name,
            pixel_size_um=size,
            fps=fps,
            realtime=realtime,
            on_close=tif.close,
        )
    except SourceError:
        tif.close()
        raise


def _series_position(path: Path, series: Any, index: int, n_series: int) -> str:
    if n_series == 1:
        return path.name.split(".")[0]
    name = str(getattr(series, "name", "") or "")
    return name if name and not name.startswith("Image") else f"Pos{index}"


RGB_NAMES = ("red", "green", "blue", "alpha")
"""The samples of an RGB(A) TIFF, as ``--channel`` names them."""


def _pick_sample(n: int, channel: str | int | None, what: str) -> int:
    """Which sample of an RGB(A) page to track: one by name or index, or -1 for the mean of
    red, green and blue (the default: a nuclear stain exported in any one colour, or grey
    saved as RGB, is then what is tracked)."""
    if channel is None:
        log.info("%s is RGB; tracking the mean of red, green and blue (or --channel)", what)
        return -1
    names = list(RGB_NAMES[:n])
    if isinstance(channel, int) or (isinstance(channel, str) and channel.isdigit()):
        idx = int(channel)
        if not 0 <= idx < n:
            raise SourceError(f"{what} is RGB with {n} samples; index {idx} is out of range")
        return idx
    if channel.lower() not in names:
        raise SourceError(f"{what} is RGB; --channel must be one of {names} or an index")
    return names.index(channel.lower())


def _page_reader(
    tif: tifffile.TiffFile, series: int, key: int, sample: int | None = None
) -> Callable[[], np.ndarray]:
    """A reader of one page; of an RGB(A) page, one ``sample`` (-1: the mean of R, G, B)."""

    def read() -> np.ndarray:
        try:
            page = np.asarray(tif.asarray(series=series, key=key))
        except Exception as err:  # any failure (truncated file, codec error): skip this plane
            raise SourceError(
                f"page {key} of series {series}: {type(err).__name__}: {err}"
            ) from None
        if sample is None:
            return page
        if page.ndim != 3:
            raise SourceError(f"page {key} of series {series}: expected RGB, got {page.shape}")
        if sample >= 0:
            return page[..., sample]
        return page[..., :3].mean(axis=-1, dtype=np.float32)

    return read


# -------------------------------------------------------------------- NDTiff
def is_ndtiff(path: Path) -> bool:
    """An NDTiff dataset folder (``NDTiff.index`` inside)."""
    return (Path(path) / "NDTiff.index").is_file()


def open_ndtiff_movie(
    path: Path,
    *,
    channel: str | int | None = None,
    z: ZChoice = None,
    pixel_size_um: float | None = None,
    fps: float | None = None,
    realtime: bool = False,
) -> MovieSource:
    """An NDTiff dataset (Micro-Manager / pycromanager) as a MovieSource: its ``position``
    axis gives the positions, ``time`` the frame index; recorded times from each image's
    ``ElapsedTime-ms``; pixel size from its ``PixelSize_um`` tag."""
    path = Path(path)
    if not is_ndtiff(path):
        raise SourceError(f"{path} is not an NDTiff dataset (no NDTiff.index)")
    try:
        from ndstorage import Dataset
    except ImportError:
        raise MissingExtra(
            "reading NDTiff needs ndstorage: pip install 'livetrack[ndtiff]'"
        ) from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ndstorage prints progress
            ds = Dataset(str(path))
    except (OSError, ValueError, KeyError) as err:
        raise SourceError(f"cannot open NDTiff dataset {path}: {err}") from None
    coords = ds.get_image_coordinates_list()
    if not coords:
        ds.close()
        raise SourceError(f"{path} holds no images")
    try:
        return _ndtiff_source(ds, path, coords, channel, z, pixel_size_um, fps, realtime)
    except SourceError:
        ds.close()
        raise


def _ndtiff_source(
    ds: Any,
    path: Path,
    coords: list[dict[str, Any]],
    channel: str | int | None,
    z: ZChoice,
    pixel_size_um: float | None,
    fps: float | None,
    realtime: bool,
) -> MovieSource:
    channels = sorted({c.get("channel") for c in coords} - {None}, key=str)
    ci = _pick_channel([str(c) for c in channels], channel, path.name) if channels else None
    chosen = channels[ci] if ci is not None else None
    z_values = sorted({int(c["z"]) for c in coords if c.get("z") is not None})
    zi = _pick_z(len(z_values), z, path.name) if z_values else []
    z_chosen = [z_values[i] for i in zi]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in coords:
        if chosen is not None and c.get("channel") != chosen:
            continue
        if z_chosen and c.get("z") not in z_chosen:
            continue
        key = (str(c.get("position", path.name)), int(c.get("time", 0)))
        groups.setdefault(key, []).append(c)
    planes = [
        PlaneRef(pos, t, _max_of([_nd_reader(ds, c) for c in cs]), _nd_time(ds, cs[0]))
        for (pos, t), cs in groups.items()
    ]
    return MovieSource(
        planes,
        description=f"ndtiff {path}",
        channel=str(chosen) if chosen is not None else "default",
        pixel_size_um=pixel_size_um or _nd_pixel_size(ds, coords[0]),
        fps=fps,
        realtime=realtime,
        on_close=ds.close,
    )


def _nd_reader(ds: Any, axes: dict[str, Any]) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        try:
            return np.asarray(ds.read_image(**axes))
        except Exception as err:  # any failure (truncated file, codec error): skip this image
            raise SourceError(f"image {axes}: {type(err).__name__}: {err}") from None

    return read


def _nd_metadata(ds: Any, axes: dict[str, Any]) -> dict[str, Any]:
    try:
        md = ds.read_metadata(**axes)
    except (OSError, ValueError, KeyError):
        return {}
    return md if isinstance(md, dict) else {}


def _nd_time(ds: Any, axes: dict[str, Any]) -> float | None:
    elapsed = _nd_metadata(ds, axes).get("ElapsedTime-ms")
    return float(elapsed) / 1000.0 if elapsed is not None else None


def _nd_pixel_size(ds: Any, axes: dict[str, Any]) -> float | None:
    size = _nd_metadata(ds, axes).get("PixelSize_um")
    try:
        value = float(size) if size is not None else 0.0
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None
