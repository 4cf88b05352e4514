"""The detections table: one row per detection with its track, lineage and shape features.

Columns (``COLUMNS``, in this order):

==============  ====================================================================
position        position name
t               frame index
track           track id (unique within a position)
parent          mother track of a daughter (the track this one divided from), else <NA>
label           value of the detection in the frame's label image (GEFF ``seg_id``)
y, x            centroid, pixels
area            pixel count
perimeter       contour length in pixels (scikit-image ``regionprops`` ``perimeter``)
eccentricity    of the ellipse with the same second moments (0 = disc, →1 = line)
mean_intensity  mean raw image value over the detection; NaN when the images are not
                at hand (a stored run keeps masks, not images: pass ``images=`` to
                ``livetrack.open_run``)
fate            how the track ended, as the tracker / store words it ('active' while
                it is still followed or at the end of the movie)
==============  ====================================================================

Written as CSV or Parquet (``write_table``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import EvaluationError

if TYPE_CHECKING:
    import pandas as pd

    from livetrack.results import PositionData

logger = logging.getLogger("livetrack.evaluate")

COLUMNS = (
    "position",
    "t",
    "track",
    "parent",
    "label",
    "y",
    "x",
    "area",
    "perimeter",
    "eccentricity",
    "mean_intensity",
    "fate",
)
FEATURES = ("perimeter", "eccentricity", "mean_intensity")
"""Computed from the label image (and the raw image for the intensity)."""


def measure(
    mask: NDArray[np.integer],
    labels: NDArray[np.integer],
    image: NDArray[np.generic] | None = None,
) -> dict[str, NDArray[np.float64]]:
    """Perimeter, eccentricity and mean intensity of the objects ``labels`` of ``mask``,
    in the order of ``labels`` (NaN for a label absent from the mask; mean intensity NaN
    without ``image``)."""
    from skimage.measure import regionprops_table

    labels = np.asarray(labels, np.int64)
    out = {name: np.full(len(labels), np.nan) for name in FEATURES}
    if len(labels) == 0:
        return out
    lab = np.maximum(np.asarray(mask), 0).astype(np.int32, copy=False)
    props = ["label", "perimeter", "eccentricity"]
    intensity = None
    if image is not None:
        intensity = np.asarray(image, np.float64)
        if intensity.shape != lab.shape:
            raise EvaluationError(f"image {intensity.shape} and mask {lab.shape} differ in shape")
        props.append("intensity_mean")
    table = regionprops_table(lab, intensity_image=intensity, properties=props)
    found = np.asarray(table["label"], np.int64)
    where = np.searchsorted(found, labels)
    hit = (where < len(found)) & (found[np.minimum(where, max(len(found) - 1, 0))] == labels)
    idx = where[hit]
    out["perimeter"][hit] = np.asarray(table["perimeter"], np.float64)[idx]
    out["eccentricity"][hit] = np.asarray(table["eccentricity"], np.float64)[idx]
    if image is not None:
        out["mean_intensity"][hit] = np.asarray(table["intensity_mean"], np.float64)[idx]
    return out


def detections_table(pos: PositionData) -> pd.DataFrame:
    """The table of one position (rows by frame, then track id)."""
    import pandas as pd

    parts: dict[str, list[NDArray[np.generic]]] = {c: [] for c in COLUMNS if c != "position"}
    parent_of = {t: (r.parent_id or 0) for t, r in pos.tracks.items()}
    fate_of = {t: r.fate for t, r in pos.tracks.items()}
    for f in pos.frames:
        dets, ids = pos.detections[f]
        feats = pos.features.get(f)
        if feats is None:
            image = pos.image_of(f) if pos.image_of is not None else None
            feats = measure(pos.mask_of(f), dets.labels, image)
        order = np.argsort(ids, kind="stable")
        n = len(ids)
        parts["t"].append(np.full(n, f, np.int64))
        parts["track"].append(ids[order])
        parts["parent"].append(np.array([parent_of.get(int(i), 0) for i in ids[order]], np.int64))
        parts["label"].append(dets.labels[order].astype(np.int64))
        parts["y"].append(dets.centroids[order, 0])
        parts["x"].append(dets.centroids[order, 1])
        parts["area"].append(dets.areas[order].astype(np.int64))
        for name in FEATURES:
            parts[name].append(np.asarray(feats[name], np.float64)[order])
        parts["fate"].append(np.array([fate_of.get(int(i), "") for i in ids[order]], object))
    cols: dict[str, object] = {"position": pos.position}
    for name, chunks in parts.items():
        cols[name] = np.concatenate(chunks) if chunks else np.zeros(0)
    df = pd.DataFrame(cols, columns=list(COLUMNS))
    df["position"] = df["position"].astype("string")
    df["fate"] = df["fate"].astype("string")
    for name in ("t", "track", "label", "area"):
        df[name] = df[name].astype(np.int64)
    df["parent"] = df["parent"].astype("Int64").mask(df["parent"] == 0)
    df.attrs["pixel_size_um"] = pos.pixel_size_um
    return df


def check_table_path(path: Path) -> Path:
    """``path`` if a table can be written there (see ``write_table``), else EvaluationError."""
    name = path.name.lower()
    if not path.parent.is_dir():
        raise EvaluationError(f"cannot write {path}: folder {path.parent} does not exist")
    if name.endswith(".parquet"):
        if importlib.util.find_spec("pyarrow") is None:
            raise EvaluationError(
                "writing Parquet needs pyarrow (pip install 'livetrack[export]'); "
                f"or write CSV: {path.with_suffix('.csv')}"
            )
    elif not name.endswith((".csv", ".csv.gz")):
        raise EvaluationError(f"table {path}: use a .csv, .csv.gz or .parquet file name")
    return path


def write_table(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` as CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, needs pyarrow).

    Raises:
        EvaluationError: another suffix, Parquet without pyarrow, or the folder is missing.
    """
    path = check_table_path(Path(path))
    if path.name.lower().endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    logger.info("wrote %d detections to %s", len(df), path)
    return path
