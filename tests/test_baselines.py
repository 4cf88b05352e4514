"""The laptrack baseline on a hand-made movie: CTC structure, our scorer, the CLI.

Tests that run laptrack skip when it is not installed (it is the optional extra
``compare``, not part of CI); the error paths run everywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livetrack.cli import main
from livetrack.errors import EvaluationError
from livetrack.evaluate import evaluate_ctc
from livetrack.evaluate.baselines import (
    LapTrackParams,
    count_divisions,
    track_with_laptrack,
    write_ctc_result,
)

H, W = 64, 112
RADIUS = 5
N_FRAMES = 8
DIVISION_FRAME = 4
GAP_FRAME = 3

Row = tuple[int, int, int, int]

# GT (CTC): 1 moves right through every frame; 2 divides into 3 and 4 at DIVISION_FRAME;
# 5 is missing from GAP_FRAME, so after the gap it is CTC track 6 with parent 5; 7-9 are
# still neighbours. laptrack prices "no split" / "no gap closing" at the 90th percentile
# of all candidate costs (TrackMate's rule), so a movie needs a few unlikely candidates
# (the neighbours, 13-17 px from a newborn) for a likely split or gap to be taken.
GT_ROWS: list[Row] = [
    (1, 0, N_FRAMES - 1, 0),
    (2, 0, DIVISION_FRAME - 1, 0),
    (3, DIVISION_FRAME, N_FRAMES - 1, 2),
    (4, DIVISION_FRAME, N_FRAMES - 1, 2),
    (5, 0, GAP_FRAME - 1, 0),
    (6, GAP_FRAME + 1, N_FRAMES - 1, 5),
    (7, 0, N_FRAMES - 1, 0),
    (8, 0, N_FRAMES - 1, 0),
    (9, 0, N_FRAMES - 1, 0),
]


def _centres(t: int) -> dict[int, tuple[float, float]]:
    """GT label -> disc centre (y, x) in frame t."""
    out = {1: (12.0, 10.0 + 3 * t)}
    if t < DIVISION_FRAME:
        out[2] = (40.0, 40.0)
    else:
        s = 3.0 * (t - DIVISION_FRAME + 1)  # daughters move apart
        out[3], out[4] = (40.0, 40.0 - s), (40.0, 40.0 + s)
    if t != GAP_FRAME:
        out[5 if t < GAP_FRAME else 6] = (40.0, 96.0)
    out[7], out[8], out[9] = (24.0, 43.0), (56.0, 37.0), (24.0, 96.0)
    return out


def _movie(scramble: bool = False) -> list[np.ndarray]:
    """GT label images; with ``scramble`` the same objects with arbitrary per-frame
    labels (as a segmenter would give), so the tracker cannot read the answer."""
    yy, xx = np.mgrid[:H, :W]
    rng = np.random.default_rng(0)
    frames = []
    for t in range(N_FRAMES):
        mask = np.zeros((H, W), np.uint16)
        for label, (cy, cx) in _centres(t).items():
            value = int(rng.integers(100, 60000)) if scramble else label
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS**2] = value
        frames.append(mask)
    return frames


def _write_gt(root: Path) -> Path:
    tra = root / "01_GT" / "TRA"
    tra.mkdir(parents=True)
    for t, mask in enumerate(_movie()):
        tifffile.imwrite(tra / f"man_track{t:03d}.tif", mask)
    (tra / "man_track.txt").write_text("".join(f"{a} {b} {c} {d}\n" for a, b, c, d in GT_ROWS))
    return root / "01_GT"


def _objects_by_row(masks: list[np.ndarray], rows: list[Row]) -> dict[int, list[int]]:
    """CTC label -> frames where it has pixels."""
    return {r[0]: [t for t, m in enumerate(masks) if (m == r[0]).any()] for r in rows}


def test_params_follow_our_tracker_rules_in_squared_pixels() -> None:
    p = LapTrackParams.from_diameter(10.0)
    kw = p.laptrack_kwargs()
    assert kw["cutoff"] == pytest.approx(15.0**2)  # 1.5 diameters
    assert kw["splitting_cutoff"] == pytest.approx(20.0**2)  # 2 diameters
    assert kw["gap_closing_cutoff"] == pytest.approx(30.0**2)  # radius at the largest gap
    assert kw["gap_closing_max_frame_count"] == 3  # up to 2 missed frames
    assert kw["merging_cutoff"] is False


def test_laptrack_rows_have_ctc_structure() -> None:
    pytest.importorskip("laptrack")
    masks, rows = track_with_laptrack(_movie(scramble=True))
    assert len(masks) == N_FRAMES
    assert all(m.dtype == np.uint16 and m.shape == (H, W) for m in masks)
    by_label = {r[0]: r for r in rows}
    # every row's label is present in exactly the frames B..E (CTC rule)
    for label, frames in _objects_by_row(masks, rows).items():
        _, begin, end, _ = by_label[label]
        assert frames == list(range(begin, end + 1)), label
    # the continuous mover keeps one label for the whole movie
    mover = int(masks[0][12, 10])
    assert by_label[mover] == (mover, 0, N_FRAMES - 1, 0)
    # the division: the mother ends before it, both daughters start at it, parent = mother
    mother = int(masks[0][40, 40])
    assert by_label[mother][1:] == (0, DIVISION_FRAME - 1, 0)
    daughters = [r for r in rows if r[3] == mother]
    assert len(daughters) == 2
    assert all(r[1:3] == (DIVISION_FRAME, N_FRAMES - 1) for r in daughters)
    left, right = _centres(DIVISION_FRAME)[3], _centres(DIVISION_FRAME)[4]
    seen = {int(masks[DIVISION_FRAME][int(y), int(x)]) for y, x in (left, right)}
    assert seen == {r[0] for r in daughters}
    # the gap-closed cell: a new CTC track after the gap, its parent the piece before it
    before = int(masks[0][40, 96])
    after = int(masks[GAP_FRAME + 1][40, 96])
    assert by_label[before][1:] == (0, GAP_FRAME - 1, 0)
    assert by_label[after][1:] == (GAP_FRAME + 1, N_FRAMES - 1, before)
    assert count_divisions(rows) == 1
    assert len(rows) == len(GT_ROWS)


def test_laptrack_result_scores_perfectly_with_our_evaluation(tmp_path: Path) -> None:
    pytest.importorskip("laptrack")
    gt = _write_gt(tmp_path)
    masks, rows = track_with_laptrack(_movie(scramble=True), diameter_px=2 * RADIUS)
    res = write_ctc_result(tmp_path / "01_RES", masks, rows, digits=3)
    assert sorted(p.name for p in res.iterdir())[:2] == ["mask000.tif", "mask001.tif"]
    result = evaluate_ctc(res, gt)
    assert pytest.approx(1.0) == result.TRA
    assert result.n_gt_divisions == 1
    assert result.correct == 1
    assert result.false_positive == 0
    assert result.division_f1 == pytest.approx(1.0)
    assert pytest.approx(1.0) == result.AA


def test_cli_baseline_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("laptrack")
    gt = _write_gt(tmp_path)
    out = tmp_path / "res"
    assert main(["baseline", "laptrack", str(gt / "TRA"), str(out), "--diameter", "10"]) == 0
    summary = capsys.readouterr().out
    assert f"{N_FRAMES} frames, {len(GT_ROWS)} tracks, 1 divisions" in summary
    assert main(["evaluate", str(out), str(gt), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["TRA"] == pytest.approx(1.0)
    assert scores["correct"] == 1


def test_empty_movie_gives_no_tracks() -> None:
    pytest.importorskip("laptrack")
    masks, rows = track_with_laptrack([np.zeros((8, 8), np.uint16)] * 3)
    assert rows == []
    assert [int(m.max()) for m in masks] == [0, 0, 0]


def test_cli_missing_folder_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["baseline", "laptrack", str(tmp_path / "nope"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "nope is not a folder" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_folder_without_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["baseline", "laptrack", str(tmp_path), str(tmp_path / "out")])
    assert code == 1
    assert "holds no label masks" in capsys.readouterr().err


def test_missing_laptrack_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "laptrack", None)  # import laptrack -> ImportError
    with pytest.raises(EvaluationError, match=r"pip install -e '\.\[compare\]'"):
        track_with_laptrack(_movie())


def test_bad_masks_and_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="differs"):
        track_with_laptrack([np.zeros((4, 4), np.uint16), np.zeros((4, 5), np.uint16)])
    with pytest.raises(EvaluationError, match="diameter_px"):
        track_with_laptrack([np.zeros((4, 4), np.uint16)], diameter_px=0)
    mask = np.zeros((4, 4), np.uint16)
    mask[1, 1] = 1
    with pytest.raises(EvaluationError, match="parent 9"):
        write_ctc_result(tmp_path, [mask], [(1, 0, 0, 9)])
    with pytest.raises(EvaluationError, match="outside"):
        write_ctc_result(tmp_path, [mask], [(1, 0, 1, 0)])
