"""GEFF export: the detection-level tracking graph plus its segmentation, in one zarr.

GEFF (graph exchange file format, https://liveimagetrackingtools.org/geff) is read by
traccuracy, napari-geff, ultrack, Trackastra and motile. Layout written here (zarr v2)::

    OUT.zarr/                 the GEFF group (``geff`` metadata in its attributes)
        nodes/ids, nodes/props/{t,y,x,seg_id,area,track_id,lineage_id,perimeter,...}
        edges/ids             (source, target) node ids: parent → child
        segmentation          (T, Y, X) int32 label images, one chunk per frame

Nodes are detections: ``t`` (frame), ``y``/``x`` (centroid, pixels; the axes carry the
pixel size as ``scale`` when it is known), ``seg_id`` (the detection's value in
``segmentation[t]``), ``area`` (pixels), ``track_id`` (tracklet), ``lineage_id`` (the root
track of its lineage), ``perimeter``, ``eccentricity``, ``mean_intensity`` (NaN when the
images were not at hand). Edges go from a detection to the next detection of its track and
from a mother's last detection to each daughter's first.

The metadata declares ``segmentation`` as a related object of type ``labels`` linked by
``seg_id`` (``node_prop``), and ``track_node_props`` {tracklet: track_id, lineage:
lineage_id}. traccuracy (0.4.3) reads it with
``load_geff_data(OUT, seg_path=OUT/segmentation, seg_property="seg_id")``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from livetrack.errors import EvaluationError

if TYPE_CHECKING:
    import networkx as nx
    import pandas as pd

    from livetrack.results import PositionData

logger = logging.getLogger("livetrack.evaluate")

SEGMENTATION = "segmentation"
"""Name of the label-image array inside the GEFF zarr."""
NODE_PROPS = (
    "t",
    "y",
    "x",
    "seg_id",
    "area",
    "track_id",
    "lineage_id",
    "perimeter",
    "eccentricity",
    "mean_intensity",
)


def tracking_graph(df: pd.DataFrame) -> nx.DiGraph:
    """The detection graph of one position's detections table (node id = row index)."""
    import networkx as nx

    g: nx.DiGraph = nx.DiGraph()
    if len(df) == 0:
        return g
    roots = _lineage_roots(df)
    table = {
        "t": df["t"].to_numpy(np.int64),
        "y": df["y"].to_numpy(np.float64),
        "x": df["x"].to_numpy(np.float64),
        "seg_id": df["label"].to_numpy(np.int64),
        "area": df["area"].to_numpy(np.int64),
        "track_id": df["track"].to_numpy(np.int64),
        "lineage_id": df["track"].map(roots).to_numpy(np.int64),
        "perimeter": df["perimeter"].to_numpy(np.float64),
        "eccentricity": df["eccentricity"].to_numpy(np.float64),
        "mean_intensity": df["mean_intensity"].to_numpy(np.float64),
    }
    ids = df.index.to_numpy(np.int64)
    for i, node in enumerate(ids.tolist()):
        g.add_node(node, **{k: v[i].item() for k, v in table.items()})
    g.add_edges_from(_edges(df))
    return g


def _lineage_roots(df: pd.DataFrame) -> dict[int, int]:
    """track -> the track at the root of its lineage (following parents)."""
    per_track = df.drop_duplicates("track")
    parent: dict[int, int | None] = {
        int(t): (int(p) or None)
        for t, p in zip(per_track["track"], _parents(per_track), strict=True)
    }
    roots: dict[int, int] = {}
    for track in parent:
        seen, cur = [], track
        while cur not in roots and parent.get(cur) is not None and cur not in seen:
            seen.append(cur)
            cur = parent[cur]  # type: ignore[assignment]
        root = roots.get(cur, cur)
        for t in [*seen, cur]:
            roots[t] = root
    return roots


def _edges(df: pd.DataFrame) -> list[tuple[int, int]]:
    """Within-track links (consecutive detections) and mother → daughter links."""
    ordered = df.sort_values(["track", "t"], kind="stable")
    ids = ordered.index.to_numpy(np.int64)
    tracks = ordered["track"].to_numpy(np.int64)
    same = tracks[1:] == tracks[:-1]
    edges = list(zip(ids[:-1][same].tolist(), ids[1:][same].tolist(), strict=True))
    first = ordered.groupby("track", sort=False).head(1)
    last = ordered.groupby("track", sort=False).tail(1)
    last_of = dict(zip(last["track"].tolist(), last.index.tolist(), strict=True))
    last_t = dict(zip(last["track"].tolist(), last["t"].tolist(), strict=True))
    for node, track, t, parent in zip(
        first.index.tolist(), first["track"], first["t"], _parents(first).tolist(), strict=True
    ):
        if parent not in last_of:
            continue  # no mother (0), or a mother without detections here
        if last_t[parent] >= t:
            logger.warning("track %d starts before its mother %d ends; no edge", track, parent)
            continue
        edges.append((int(last_of[parent]), int(node)))
    return edges


def _parents(df: pd.DataFrame) -> np.ndarray:
    """The parent column as int64, 0 where there is none."""
    return df["parent"].fillna(0).to_numpy(np.int64)


def write_geff(df: pd.DataFrame, pos: PositionData, path: Path, *, overwrite: bool = False) -> Path:
    """Write one position as GEFF (graph + ``segmentation``) at ``path`` (see module doc).

    Raises:
        EvaluationError: geff is not installed, or ``path`` exists and is not a GEFF to
            overwrite.
    """
    try:
        import geff
        import zarr
        from geff_spec import GeffMetadata, RelatedObject
    except ImportError as exc:
        raise EvaluationError(
            f"writing GEFF needs the geff package (pip install 'livetrack[export]'): {exc}"
        ) from None
    path = Path(path)
    if _check_target(path, overwrite, zarr):
        shutil.rmtree(path)  # a GEFF the caller asked to replace (graph and segmentation)
    df = df.reset_index(drop=True)
    graph = tracking_graph(df)
    ps = pos.pixel_size_um
    kwargs: dict[str, Any] = {}
    if ps is not None:
        kwargs = {
            "axis_scales": [None, ps, ps],
            "scaled_units": [None, "micrometer", "micrometer"],
        }
    try:
        geff.write(
            graph,
            str(path),
            axis_names=["t", "y", "x"],
            axis_types=["time", "space", "space"],
            axis_units=[None, "pixel", "pixel"],
            zarr_format=2,
            **kwargs,
        )
    except FileExistsError:
        raise EvaluationError(f"{path} already holds a GEFF; choose overwrite") from None
    n_frames = pos.frames[-1] + 1 if pos.frames else 0
    root = zarr.open_group(str(path), mode="a", zarr_format=2)
    seg = root.create_array(
        SEGMENTATION,
        shape=(n_frames, *pos.shape),
        chunks=(1, *pos.shape),
        dtype="int32",
        fill_value=0,
        overwrite=True,
    )
    for f in pos.frames:
        seg[f] = np.asarray(pos.mask_of(f), np.int32)
    meta = GeffMetadata.read(str(path))
    meta = GeffMetadata.model_validate(
        {
            **meta.model_dump(exclude_none=True),
            "related_objects": [
                RelatedObject(type="labels", path=SEGMENTATION, node_prop="seg_id")
            ],
            "track_node_props": {"tracklet": "track_id", "lineage": "lineage_id"},
            "extra": {"livetrack": {"position": pos.position, "pixel_size_um": ps}},
        }
    )
    meta.write(str(path))
    logger.info(
        "wrote GEFF %s: %d nodes, %d edges, %d frames",
        path,
        graph.number_of_nodes(),
        graph.number_of_edges(),
        n_frames,
    )
    return path


def _check_target(path: Path, overwrite: bool, zarr: Any) -> bool:
    """Refuse to write into something that is not ours to replace; True when ``path`` is
    an existing GEFF to delete first."""
    if not path.exists():
        if not path.parent.is_dir():
            raise EvaluationError(f"cannot write {path}: folder {path.parent} does not exist")
        return False
    if path.is_file():
        raise EvaluationError(f"{path} is a file; a GEFF is a folder (e.g. OUT.zarr)")
    if not any(path.iterdir()):
        return False
    is_zarr = (path / ".zgroup").is_file() or (path / "zarr.json").is_file()
    if not is_zarr or "geff" not in zarr.open_group(str(path), mode="r").attrs:
        raise EvaluationError(f"{path} exists and is not a GEFF; not writing into it")
    if not overwrite:
        raise EvaluationError(f"{path} already exists; choose overwrite to replace it")
    return True
