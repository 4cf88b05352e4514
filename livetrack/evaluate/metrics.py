"""Scoring a CTC result folder against CTC ground truth.

DET, SEG and TRA come from py-ctcmetrics (the CTC's own Python implementation); the
division metrics, TE and AA (the Caliban paper's lineage metrics) are computed in
:mod:`livetrack.evaluate.lineage` over the same per-frame object matching.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from livetrack.errors import EvaluationError, MissingExtra
from livetrack.evaluate import lineage
from livetrack.evaluate.ctcfiles import (
    CtcTracks,
    check_layout,
    check_presence,
    mask_files,
    read_track_file,
    validate_tracks,
)
from livetrack.evaluate.matching import SequenceMatch, match_sequence

logger = logging.getLogger("livetrack.evaluate")


@dataclass(frozen=True)
class EvaluationResult:
    """Every metric of one sequence; a metric is None when it cannot be computed
    (SEG without SEG ground truth, division scores without divisions, ...)."""

    DET: float | None
    SEG: float | None
    TRA: float | None
    division_precision: float | None
    division_recall: float | None
    division_f1: float | None
    mbc: float | None
    n_gt_divisions: int
    n_res_divisions: int
    correct: int
    missed: int
    incorrect: int
    false_positive: int
    TE: float | None
    AA: float | None
    BC1: float | None = None
    """CTC branching correctness BC(1) (Ulman et al. 2017, py-ctcmetrics): F1 of division
    events matched with one frame of tolerance, daughters not checked; None without GT
    divisions."""

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain dict (JSON-ready) in field order."""
        return asdict(self)


def require_ctc_metrics() -> None:
    """Fail before any work when py-ctcmetrics (the ``eval`` extra) is not installed: a
    benchmark should not run its movies first and then find it cannot score them."""
    try:
        import ctc_metrics  # noqa: F401
    except ImportError:
        raise MissingExtra("scoring needs py-ctcmetrics: pip install 'livetrack[eval]'") from None


def evaluate_ctc(
    res_dir: Path,
    gt_dir: Path,
    *,
    frame_tolerance: int = 1,
) -> EvaluationResult:
    """Score the CTC result in ``res_dir`` against the CTC ground truth ``gt_dir``.

    ``gt_dir`` is an ``NN_GT`` folder: ``TRA/man_track*.tif`` + ``TRA/man_track.txt``
    and optionally ``SEG/man_seg*.tif`` (may be sparse, as in GOWT1). ``res_dir`` holds
    ``maskNNN.tif`` (as many as GT frames) and ``res_track.txt``.

    Matching (CTC): in each frame a result object matches a GT TRA marker when it covers
    more than 50 % of the marker's pixels; this works for markers smaller than nuclei.
    It is py-ctcmetrics' rule, computed vectorised in :mod:`livetrack.evaluate.matching`
    (one frame in memory at a time, single process).

    Metrics:

    * DET, SEG, TRA: py-ctcmetrics (AOGM-based, Matula et al. 2015; SEG = mean Jaccard
      over GT SEG objects). SEG is None when the GT has no SEG folder.
    * Divisions (Caliban, Schwartz et al. 2024; deepcell-tracking ``classify_divisions``,
      with the frame shift allowed up to ``frame_tolerance`` instead of deepcell's
      IoU-based "shifted division" correction). A division is a track with >= 2 children;
      a parent with exactly one child is the same cell continuing (not a division).
      Each GT division is *correct* (the matched result mother divides within
      ``frame_tolerance`` frames and its daughters match the GT daughters one-to-one),
      *incorrect* (the matched mother divides in time, daughters do not match) or
      *missed*; result divisions left unpaired are *false positives*. Exact rules in
      :func:`livetrack.evaluate.lineage.classify_divisions`.

      As in deepcell-tracking's ``calculate_summary_stats``, incorrect divisions enter
      neither precision nor recall:
      ``precision = correct / (correct + false_positive)``,
      ``recall = correct / (correct + missed)``, ``F1 = 2PR / (P + R)``.
      ``MBC = correct / (correct + missed + incorrect)`` as stated for the Caliban paper
      (deepcell-tracking's code divides by correct + missed + false_positive instead).
      A ratio with a zero denominator is None (deepcell reports 0).
    * TE (target effectiveness): per GT cell (track between divisions, single-child
      chains joined) the fraction of its frames matched to its single best result cell,
      averaged weighted by length. AA (association accuracy): fraction of GT links (same
      cell in successive frames, parent→daughter) whose two ends are matched to result
      objects joined by a link in the result. See :mod:`livetrack.evaluate.lineage`.

    Args:
        frame_tolerance: divisions may be shifted by this many frames (Caliban: 1).

    Raises:
        EvaluationError: missing files, mask count different from GT, or a result that
            breaks the CTC rules (the message names the track or label).
    """
    require_ctc_metrics()
    if frame_tolerance < 0:
        raise EvaluationError(f"frame_tolerance must be >= 0, got {frame_tolerance}")
    res_dir, gt_dir = Path(res_dir), Path(gt_dir)
    n_frames, has_seg = check_layout(res_dir, gt_dir)
    res_tracks = read_track_file(res_dir / "res_track.txt")
    gt_tracks = read_track_file(gt_dir / "TRA" / "man_track.txt")
    if len(res_tracks.table) == 0:
        raise EvaluationError(f"{res_dir / 'res_track.txt'} has no tracks")
    validate_tracks(res_tracks, n_frames, "res_track.txt")
    validate_tracks(gt_tracks, n_frames, "man_track.txt")
    matched = match_sequence(res_dir, gt_dir, has_seg)
    check_presence(
        gt_tracks, [f.labels_ref for f in matched.tra], str(gt_dir / "TRA" / "man_track.txt")
    )
    scores = _ctc_scores(res_tracks, gt_tracks, matched, res_dir, has_seg)
    matches = [dict(zip(f.mapped_ref, f.mapped_comp, strict=True)) for f in matched.tra]
    labels_gt = [f.labels_ref for f in matched.tra]
    labels_res = [f.labels_comp for f in matched.tra]
    div = lineage.classify_divisions(gt_tracks, res_tracks, matches, frame_tolerance)
    precision = _ratio(div.correct, div.correct + div.false_positive)
    recall = _ratio(div.correct, div.correct + div.missed)
    return EvaluationResult(
        DET=scores["DET"],
        SEG=scores.get("SEG"),
        TRA=scores["TRA"],
        division_precision=precision,
        division_recall=recall,
        division_f1=_f1(precision, recall),
        mbc=_ratio(div.correct, div.correct + div.missed + div.incorrect),
        n_gt_divisions=div.n_gt,
        n_res_divisions=div.n_res,
        correct=div.correct,
        missed=div.missed,
        incorrect=div.incorrect,
        false_positive=div.false_positive,
        TE=lineage.target_effectiveness(gt_tracks, res_tracks, labels_gt, matches),
        AA=lineage.association_accuracy(gt_tracks, res_tracks, labels_gt, labels_res, matches),
        BC1=scores.get("BC(1)"),
    )


def _ctc_scores(
    res: CtcTracks, gt: CtcTracks, matched: SequenceMatch, res_dir: Path, has_seg: bool
) -> dict[str, Any]:
    """DET/TRA(/SEG) by py-ctcmetrics on our matching; its validity check (which warns,
    then prints "Invalid results!") becomes an EvaluationError naming the problem."""
    require_ctc_metrics()
    from ctc_metrics.metrics import valid
    from ctc_metrics.scripts.evaluate import calculate_metrics

    traj, segm = matched.traj(), matched.segm()
    masks = [str(p) for p in mask_files(res_dir, "mask")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        is_valid = valid(masks, res.table, traj["labels_comp"])
        if not is_valid:
            problems = [str(w.message) for w in caught if not str(w.message).startswith("Empty")]
            shown = "; ".join(problems[:10]) or "no detail given"
            more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
            raise EvaluationError(f"invalid CTC result in {res_dir}: {shown}{more}")
        metrics = ["DET", "TRA", "BC(1)", *(["SEG"] if has_seg else [])]
        scores: dict[str, Any] = calculate_metrics(
            res.table, gt.table, traj, segm, metrics, is_valid
        )
    for w in caught:
        logger.debug("py-ctcmetrics: %s", w.message)
    return scores


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


_SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("CTC", (("DET", "DET"), ("SEG", "SEG"), ("TRA", "TRA"))),
    (
        "Divisions",
        (
            ("n_gt_divisions", "GT divisions"),
            ("n_res_divisions", "result divisions"),
            ("correct", "correct"),
            ("missed", "missed"),
            ("incorrect", "incorrect"),
            ("false_positive", "false positive"),
            ("division_precision", "precision"),
            ("division_recall", "recall"),
            ("division_f1", "F1"),
            ("mbc", "MBC"),
            ("BC1", "BC(1)"),
        ),
    ),
    ("Lineage", (("TE", "TE"), ("AA", "AA"))),
)


def format_table(result: EvaluationResult, title: str = "") -> str:
    """A plain-text table of ``result`` for the terminal (n/a = not computable)."""
    values = result.to_dict()
    width = 20
    lines = [title, "=" * max(len(title), width + 8)] if title else []
    for section, rows in _SECTIONS:
        lines.append(f"{section}")
        for key, name in rows:
            lines.append(f"  {name:<{width}}{_fmt(values[key])}")
    return "\n".join(lines)


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"
