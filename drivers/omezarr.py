"""Replay a time-lapse OME-Zarr (NGFF v0.4 on zarr v2, v0.5 on zarr v3) as a live source.

An OME-Zarr image is a zarr group whose ``multiscales`` metadata names its axes (``t``,
``c``, ``z``, ``y``, ``x``; any but ``y`` and ``x`` may be absent) and lists its
resolution levels, finest first. livetrack reads level 0 — the one tracked at full
resolution — one plane at a time, so a movie larger than memory replays. From the
metadata it takes:

- the pixel size: the ``x`` entry of level 0's ``scale`` (times the image-wide ``scale``,
  when there is one), in the ``x`` axis' unit converted to µm;
- the time step: the ``t`` entry of the same scale, for ``--realtime`` pacing;
- the channel names: ``omero.channels[].label``, for ``--channel NAME``.

A group whose children are such images (a ``bioformats2raw`` layout: ``0/``, ``1/`` ...,
or a group per stage position) replays as one position per child. Plates (HCS) are
refused by name: replay one field of view at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from livetrack.drivers.movie import (
    MovieSource,
    PlaneRef,
    ZChoice,
    _max_of,
    _pick_channel,
    _pick_z,
    normalise_axes,
)

from livetrack.errors import MissingExtra, SourceError

log = logging.getLogger("livetrack.drivers.omezarr")

_UM_PER_UNIT = {
    "micrometer": 1.0,
    "micron": 1.0,
    "µm": 1.0,
    "um": 1.0,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "angstrom": 1e-4,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
_S_PER_UNIT = {
    "second": 1.0,
    "s": 1.0,
    "millisecond": 1e-3,
    "ms": 1e-3,
    "minute": 60.0,
    "min": 60.0,
    "hour": 3600.0,
    "h": 3600.0,
    "day": 86400.0,
}


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise MissingExtra(
            "reading OME-Zarr needs zarr: pip install 'livetrack[omezarr]'"
        ) from None
    return zarr


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """NGFF metadata: under ``ome`` from v0.5 on, at the top of the attributes before."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, Mapping) else attrs


def _has_metadata(path: Path) -> bool:
    return (path / ".zattrs").is_file() or (path / "zarr.json").is_file()


def is_ome_zarr(path: Path) -> bool:
    """A folder that is a zarr group (``.zattrs`` / ``zarr.json``) named ``*.zarr`` or
    holding NGFF metadata: what ``livetrack replay`` reads as OME-Zarr."""
    path = Path(path)
    if not path.is_dir() or not _has_metadata(path):
        return False
    if path.name.lower().endswith(".zarr"):
        return True
    for name in (".zattrs", "zarr.json"):
        f = path / name
        if f.is_file() and '"multiscales"' in f.read_text(encoding="utf-8", errors="replace"):
            return True
    return False


def open_ome_zarr_movie(
    path: Path,
    *,
    channel: str | int | None = None,
    z: ZChoice = None,
    pixel_size_um: float | None = None,
    position: str | None = None,
    fps: float | None = None,
    realtime: bool = False,
) -> MovieSource:
    """An OME-Zarr image (or a group of them, one per position) as a MovieSource; see the
    module docstring for what is read from the metadata."""
    zarr = _zarr()
    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a folder that is not zarr
        raise SourceError(f"cannot open {path} as zarr: {type(err).__name__}: {err}") from None
    images = _images(root, path)
    default_name = path.name.split(".")[0] or "omezarr"
    planes: list[PlaneRef] = []
    sizes: list[float] = []
    channel_names: set[str] = set()
    for name, group in images:
        pos = (position or default_name) if len(images) == 1 else name
        image = _image(group, f"{path.name}/{name}" if name else path.name)
        planes += image.planes(pos, channel, z)
        channel_names.add(image.channel_name)
        if image.pixel_size_um is not None:
            sizes.append(image.pixel_size_um)
    if position is not None and len(images) > 1:
        raise SourceError(f"{path} holds {len(images)} positions; --position names only one")
    if sizes and not np.allclose(sizes, sizes[0], rtol=1e-6):
        log.warning("%s: positions differ in pixel size %s; using the first", path, sizes)
    return MovieSource(
        planes,
        description=f"ome-zarr {path}",
        channel=sorted(channel_names)[0] if len(channel_names) == 1 else "default",
        pixel_size_um=pixel_size_um or (sizes[0] if sizes else None),
        fps=fps,
        realtime=realtime,
    )


def _images(root: Any, path: Path) -> list[tuple[str, Any]]:
    """(name, group) of each image: the root itself, or its children that are images."""
    ome = _ome(root.attrs.asdict())
    if "plate" in ome or "well" in ome:
        raise SourceError(
            f"{path} is an OME-Zarr plate (HCS); replay one field of view, e.g. {path.name}/A/1/0"
        )
    if "multiscales" in ome:
        return [("", root)]
    children = sorted(
        ((str(name), g) for name, g in root.groups() if "multiscales" in _ome(g.attrs.asdict())),
        key=lambda item: (len(item[0]), item[0]),  # 0, 1, ..., 10 in numeric order
    )
    if not children:
        raise SourceError(
            f"{path} is a zarr group without OME-Zarr 'multiscales' metadata (nor images "
            "inside): not an OME-Zarr image"
        )
    return children


class _Image:
    """Level 0 of one OME-Zarr image, with what its metadata says."""

    def __init__(self, array: Any, axes: str, scale: list[float], units: list[str | None],
                 channel_names: list[str], what: str) -> None:  # fmt: skip
        self.array = array
        self.axes = axes
        self.what = what
        self.channel_names = channel_names
        self.channel_name = "default"
        self.sizes = dict(zip(axes, array.shape, strict=True))
        self.pixel_size_um = _length_um(scale[axes.index("X")], units[axes.index("X")], what)
        self.step_s = (
            _seconds(scale[axes.index("T")], units[axes.index("T")]) if "T" in axes else None
        )

    def planes(self, position: str, channel: str | int | None, z: ZChoice) -> list[PlaneRef]:
        ci = _pick_channel(self.channel_names, channel, self.what) if "C" in self.axes else 0
        if "C" in self.axes and (channel is not None or len(self.channel_names) > 1):
            self.channel_name = self.channel_names[ci]
        zs = _pick_z(self.sizes.get("Z", 1), z, self.what)
        out = []
        for t in range(self.sizes.get("T", 1)):
            readers = [self._reader({"T": t, "C": ci, "Z": zi}) for zi in zs]
            recorded = t * self.step_s if self.step_s is not None else None
            out.append(PlaneRef(position, t, _max_of(readers), recorded))
        return out

    def _reader(self, at: dict[str, int]) -> Callable[[], np.ndarray]:
        index = tuple(at.get(a, 0) if a not in "YX" else slice(None) for a in self.axes)
        array, what = self.array, self.what

        def read() -> np.ndarray:
            try:
                return np.asarray(array[index])
            except Exception as err:  # a missing or corrupt chunk: skip this plane
                raise SourceError(
                    f"{what} plane {index[:-2]}: {type(err).__name__}: {err}"
                ) from None

        return read


def _image(group: Any, what: str) -> _Image:
    ome = _ome(group.attrs.asdict())
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        raise SourceError(f"{what}: 'multiscales' must be a non-empty list")
    ms = multiscales[0]
    raw_axes = ms.get("axes")
    if not isinstance(raw_axes, list) or not raw_axes:
        raise SourceError(f"{what}: multiscales has no 'axes' (NGFF before v0.3 is not read)")
    names = [str(a.get("name", "") if isinstance(a, Mapping) else a) for a in raw_axes]
    units = [a.get("unit") if isinstance(a, Mapping) else None for a in raw_axes]
    datasets = ms.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise SourceError(f"{what}: multiscales has no datasets")
    level0 = str(datasets[0]["path"])
    try:
        array = group[level0]
    except KeyError:
        raise SourceError(f"{what}: level 0 ({level0!r}) is missing") from None
    if len(array.shape) != len(names):
        raise SourceError(f"{what}: axes {names} do not match level 0's shape {tuple(array.shape)}")
    axes = normalise_axes("".join(n.upper()[:1] for n in names), array.shape, what)
    scale = _scale(datasets[0], len(names), what)
    whole = _scale(ms, len(names), what)  # image-wide transformations (optional)
    scale = [a * b for a, b in zip(scale, whole, strict=True)]
    n_c = dict(zip(axes, array.shape, strict=True)).get("C", 1)
    return _Image(array, axes, scale, units, _channel_names(ome, n_c), what)


def _scale(holder: Mapping[str, Any], n: int, what: str) -> list[float]:
    """The ``scale`` of a coordinateTransformations list (all ones when absent)."""
    for t in holder.get("coordinateTransformations") or []:
        if isinstance(t, Mapping) and t.get("type") == "scale":
            values = t.get("scale")
            if not isinstance(values, list) or len(values) != n:
                raise SourceError(f"{what}: a scale transformation needs {n} values")
            try:
                return [float(v) for v in values]
            except (TypeError, ValueError):
                raise SourceError(f"{what}: scale {values} is not numbers") from None
    return [1.0] * n


def _length_um(value: float, unit: str | None, what: str) -> float | None:
    if unit is None:
        log.info("%s: the x axis has no unit; pixel size unknown (give --pixel-size)", what)
        return None
    factor = _UM_PER_UNIT.get(unit.lower())
    if factor is None or not value > 0:
        log.warning("%s: x scale %s %s is not a length livetrack reads", what, value, unit)
        return None
    return value * factor


def _seconds(value: float, unit: str | None) -> float | None:
    factor = _S_PER_UNIT.get((unit or "").lower())
    return value * factor if factor is not None and value > 0 else None


def _channel_names(ome: Mapping[str, Any], n: int) -> list[str]:
    omero = ome.get("omero")
    channels = omero.get("channels") if isinstance(omero, Mapping) else None
    if isinstance(channels, list) and len(channels) == n:
        return [
            str(c.get("label") or f"C{i}") if isinstance(c, Mapping) else f"C{i}"
            for i, c in enumerate(channels)
        ]
    return [f"C{i}" for i in range(n)]
