"""napari data: a Tracks layer (data + graph + properties) and a Labels layer.

napari itself is not needed: :class:`NapariTracks` holds the arrays napari's
``add_tracks`` / ``add_labels`` take, ``add_to(viewer)`` adds both to a viewer, and
``write_napari`` / ``read_napari`` keep them in one ``.npz`` file (plain arrays, no
pickles) for a viewer on another machine::

    n = livetrack.evaluate.napari.read_napari("run.npz")
    viewer.add_labels(n.labels, scale=n.scale)
    viewer.add_tracks(n.data, graph=n.graph, properties=n.properties, scale=n.scale)

Tracks ``data`` is napari's (N, 4) ``[track_id, t, y, x]``; ``graph`` maps each daughter
track to ``[mother]``; ``properties`` has t, area, perimeter, eccentricity,
mean_intensity, label and fate per row; ``labels`` is the (T, Y, X) segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import EvaluationError

if TYPE_CHECKING:
    import pandas as pd

    from livetrack.results import PositionData

PROPERTIES = ("t", "label", "area", "perimeter", "eccentricity", "mean_intensity", "fate")


@dataclass(frozen=True, eq=False)
class NapariTracks:
    """The arrays of a napari Tracks layer and the matching Labels layer."""

    data: NDArray[np.float64]
    """(N, 4): track_id, t, y, x — sorted by track, then t (napari's order)."""
    graph: dict[int, list[int]]
    """daughter track -> [mother track]."""
    properties: dict[str, NDArray[Any]]
    """Per row of ``data``."""
    labels: NDArray[np.int32]
    """(T, Y, X) label images (0 = background)."""
    scale: tuple[float, float, float]
    """(t, y, x) scale: (1, pixel size µm, pixel size µm), or all 1 when unknown."""

    def add_to(self, viewer: Any, name: str = "livetrack") -> tuple[Any, Any]:
        """Add the labels and the tracks to a napari viewer; returns both layers."""
        labels = viewer.add_labels(self.labels, name=f"{name} labels", scale=self.scale)
        tracks = viewer.add_tracks(
            self.data,
            graph=self.graph,
            properties=self.properties,
            name=f"{name} tracks",
            scale=self.scale,
        )
        return labels, tracks


def napari_tracks(df: pd.DataFrame, pos: PositionData) -> NapariTracks:
    """Build napari data from one position's detections table and its masks."""
    ordered = df.sort_values(["track", "t"], kind="stable")
    data = ordered[["track", "t", "y", "x"]].to_numpy(np.float64).reshape(-1, 4)
    graph = {
        int(rec.track_id): [int(rec.parent_id)]
        for rec in pos.track_records()
        if rec.parent_id is not None and rec.parent_id in pos.tracks
    }
    props: dict[str, NDArray[Any]] = {}
    for name in PROPERTIES:
        col = ordered[name]
        props[name] = col.to_numpy(str) if name == "fate" else col.to_numpy(np.float64)
    n_frames = pos.frames[-1] + 1 if pos.frames else 0
    labels = np.zeros((n_frames, *pos.shape), np.int32)
    for f in pos.frames:
        labels[f] = pos.mask_of(f)
    ps = pos.pixel_size_um or 1.0
    return NapariTracks(data, graph, props, labels, (1.0, ps, ps))


def write_napari(tracks: NapariTracks, path: Path) -> Path:
    """Save as ``.npz`` (compressed): tracks, graph (K, 2 daughter/mother), labels,
    scale and ``prop_<name>`` arrays."""
    path = check_napari_path(Path(path))
    graph = np.array([[d, m[0]] for d, m in sorted(tracks.graph.items())], np.int64).reshape(-1, 2)
    arrays: dict[str, Any] = {f"prop_{k}": v for k, v in tracks.properties.items()}
    arrays.update(
        tracks=tracks.data,
        graph=graph,
        labels=tracks.labels,
        scale=np.asarray(tracks.scale, np.float64),
    )
    np.savez_compressed(path, **arrays)
    return path


def check_napari_path(path: Path) -> Path:
    """``path`` if napari data can be saved there, else EvaluationError."""
    if path.suffix != ".npz":
        raise EvaluationError(f"napari export {path}: use a .npz file name")
    if not path.parent.is_dir():
        raise EvaluationError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def read_napari(path: Path | str) -> NapariTracks:
    """Load what ``write_napari`` wrote (no pickles are loaded)."""
    with np.load(Path(path), allow_pickle=False) as f:
        props = {k.removeprefix("prop_"): f[k] for k in f.files if k.startswith("prop_")}
        graph = {int(d): [int(m)] for d, m in f["graph"]}
        scale = tuple(float(v) for v in f["scale"])
        return NapariTracks(
            data=f["tracks"],
            graph=graph,
            properties=props,
            labels=f["labels"],
            scale=(scale[0], scale[1], scale[2]),
        )
