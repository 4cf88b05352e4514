"""Per-frame matching of result objects to GT objects, the CTC way, vectorised.

The rule is py-ctcmetrics' ``ctc_metrics.utils.representations.match``: a result object
r matches a GT object g when r covers more than half of g's pixels; the IoU of each
matched pair feeds SEG. py-ctcmetrics builds the pixel confusion matrix with
``sklearn.metrics.confusion_matrix``, which maps every pixel through a Python dict
(~0.17 s per 690×628 frame, 95 % of an evaluation); here the same counts come from one
``np.unique`` over (gt, result) label pairs. The output has py-ctcmetrics' layout, so
its metric functions (AOGM, DET, TRA, SEG, validation) run unchanged on it, and a test
checks both matchings agree.

Masks are read one frame at a time (result, GT TRA, GT SEG of that frame), so memory
does not grow with the movie length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

from livetrack.errors import EvaluationError
from livetrack.evaluate.ctcfiles import frame_index, mask_files


@dataclass(frozen=True)
class FrameMatch:
    """Matching of one frame, as py-ctcmetrics' ``match`` returns it (Python ints)."""

    labels_ref: list[int]
    labels_comp: list[int]
    mapped_ref: list[int]
    """Matched GT labels, ascending; parallel to ``mapped_comp`` and ``ious``."""
    mapped_comp: list[int]
    ious: list[float]


@dataclass
class SequenceMatch:
    """Per-frame matchings of a sequence (``tra``) and of its SEG frames (``seg``)."""

    tra: list[FrameMatch] = field(default_factory=list)
    seg: list[FrameMatch] = field(default_factory=list)

    def traj(self) -> dict[str, list[list[int]] | list[list[float]]]:
        """py-ctcmetrics' ``traj`` dict."""
        return _as_dict(self.tra)

    def segm(self) -> dict[str, list[list[int]] | list[list[float]]]:
        """py-ctcmetrics' ``segm`` dict."""
        return _as_dict(self.seg)


def _as_dict(frames: list[FrameMatch]) -> dict[str, list[list[int]] | list[list[float]]]:
    return {
        "labels_ref": [f.labels_ref for f in frames],
        "labels_comp": [f.labels_comp for f in frames],
        "mapped_ref": [f.mapped_ref for f in frames],
        "mapped_comp": [f.mapped_comp for f in frames],
        "ious": [f.ious for f in frames],
    }


def match_frame(ref: NDArray[np.integer], comp: NDArray[np.integer]) -> FrameMatch:
    """Match the objects of ``comp`` (result) to those of ``ref`` (GT) in one frame."""
    if ref.shape != comp.shape:
        raise EvaluationError(f"GT mask shape {ref.shape} differs from result {comp.shape}")
    ref = ref.astype(np.int64, copy=False).ravel()
    comp = comp.astype(np.int64, copy=False).ravel()
    labels_ref, area_ref = np.unique(ref, return_counts=True)
    labels_comp, area_comp = np.unique(comp, return_counts=True)
    keep_r, keep_c = labels_ref > 0, labels_comp > 0
    labels_ref, area_ref = labels_ref[keep_r], area_ref[keep_r]
    labels_comp, area_comp = labels_comp[keep_c], area_comp[keep_c]
    both = (ref > 0) & (comp > 0)
    base = int(comp.max(initial=0)) + 1
    pairs, inter = np.unique(ref[both] * base + comp[both], return_counts=True)
    g, r = pairs // base, pairs % base
    ag = area_ref[np.searchsorted(labels_ref, g)]
    ar = area_comp[np.searchsorted(labels_comp, r)]
    hit = inter > 0.5 * ag
    g, r, inter, ag, ar = g[hit], r[hit], inter[hit], ag[hit], ar[hit]
    iou = inter / (ag + ar - inter)
    return FrameMatch(
        labels_ref=labels_ref.tolist(),
        labels_comp=labels_comp.tolist(),
        mapped_ref=g.tolist(),
        mapped_comp=r.tolist(),
        ious=iou.tolist(),
    )


def match_sequence(res_dir: Path, gt_dir: Path, has_seg: bool) -> SequenceMatch:
    """Match every result mask to its GT TRA mask, and to its GT SEG mask when the GT
    segments that frame (SEG may be sparse: only some frames, as in GOWT1)."""
    res_files = mask_files(res_dir, "mask")
    tra_files = mask_files(gt_dir / "TRA", "man_track")
    seg_files: dict[int, Path] = {}
    if has_seg:
        seg_files = {frame_index(p, "man_seg"): p for p in mask_files(gt_dir / "SEG", "man_seg")}
    out = SequenceMatch()
    for t, (res_path, tra_path) in enumerate(zip(res_files, tra_files, strict=True)):
        comp = _read(res_path)
        out.tra.append(match_frame(_read(tra_path), comp))
        if t in seg_files:
            out.seg.append(match_frame(_read(seg_files[t]), comp))
    missing = sorted(set(seg_files) - set(range(len(res_files))))
    if missing:
        raise EvaluationError(f"SEG masks for frames {missing} have no result frame")
    return out


def _read(path: Path) -> NDArray[np.integer]:
    try:
        image: NDArray[np.integer] = tifffile.imread(path)
    except (OSError, ValueError) as err:
        raise EvaluationError(f"cannot read {path}: {err}") from err
    if image.ndim != 2:
        raise EvaluationError(f"{path}: expected a 2-D label image, got shape {image.shape}")
    return image
