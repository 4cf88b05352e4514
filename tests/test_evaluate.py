"""CTC export and evaluation on small synthetic CTC folders written to tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livetrack.errors import EvaluationError
from livetrack.evaluate import (
    EvaluationResult,
    ExportFrame,
    evaluate_ctc,
    export_ctc,
    format_table,
)
from livetrack.evaluate.matching import match_frame
from livetrack.track.base import TrackRecord

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIZE = 32
HALF = 2  # squares are 5×5

Track = tuple[int, int, int, int]  # L B E P
Place = dict[int, dict[int, tuple[int, int]]]  # frame -> label -> (y, x) centre

# GT: cell 1 (frames 0-2) divides into 2 and 3 (frames 3-5); cell 4 lives frames 0-5.
GT_TRACKS: list[Track] = [(1, 0, 2, 0), (2, 3, 5, 1), (3, 3, 5, 1), (4, 0, 5, 0)]
GT_PLACES: Place = {
    t: ({1: (8, 8)} if t < 3 else {2: (5, 5), 3: (11, 11)}) | {4: (24, 24)} for t in range(6)
}
N_FRAMES = 6


def _square_mask(places: dict[int, tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint16)
    for label, (y, x) in places.items():
        mask[y - HALF : y + HALF + 1, x - HALF : x + HALF + 1] = label
    return mask


def write_gt(root: Path, tracks: list[Track], places: Place, *, seg: bool = True) -> Path:
    gt = root / "01_GT"
    (gt / "TRA").mkdir(parents=True)
    for t in range(N_FRAMES):
        mask = _square_mask(places.get(t, {}))
        tifffile.imwrite(gt / "TRA" / f"man_track{t:03d}.tif", mask)
        if seg:
            (gt / "SEG").mkdir(exist_ok=True)
            tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", mask)
    _write_tracks(gt / "TRA" / "man_track.txt", tracks)
    return gt


def write_res(root: Path, tracks: list[Track], places: Place) -> Path:
    res = root / "01_RES"
    res.mkdir(parents=True)
    for t in range(N_FRAMES):
        tifffile.imwrite(res / f"mask{t:03d}.tif", _square_mask(places.get(t, {})))
    _write_tracks(res / "res_track.txt", tracks)
    return res


def _write_tracks(path: Path, tracks: list[Track]) -> None:
    path.write_text("".join(f"{lab} {b} {e} {p}\n" for lab, b, e, p in tracks))


@pytest.fixture
def gt_dir(tmp_path: Path) -> Path:
    return write_gt(tmp_path, GT_TRACKS, GT_PLACES)


# ---------------------------------------------------------------------------- evaluation


def test_perfect_result_scores_one(tmp_path: Path, gt_dir: Path) -> None:
    res = write_res(tmp_path, GT_TRACKS, GT_PLACES)
    r = evaluate_ctc(res, gt_dir)
    assert pytest.approx(1.0) == r.TRA
    assert pytest.approx(1.0) == r.DET
    assert pytest.approx(1.0) == r.SEG
    assert (r.n_gt_divisions, r.n_res_divisions, r.correct) == (1, 1, 1)
    assert r.division_f1 == pytest.approx(1.0)
    assert r.mbc == pytest.approx(1.0)
    assert pytest.approx(1.0) == r.TE
    assert pytest.approx(1.0) == r.AA


def test_seg_is_none_without_seg_folder(tmp_path: Path) -> None:
    gt = write_gt(tmp_path, GT_TRACKS, GT_PLACES, seg=False)
    r = evaluate_ctc(write_res(tmp_path, GT_TRACKS, GT_PLACES), gt)
    assert r.SEG is None
    assert pytest.approx(1.0) == r.TRA
    assert "n/a" in format_table(r, "no SEG")


def test_removed_division_is_missed(tmp_path: Path, gt_dir: Path) -> None:
    # The mother goes on as daughter 2; daughter 3 is a new root track.
    tracks = [(1, 0, 5, 0), (3, 3, 5, 0), (4, 0, 5, 0)]
    places = {
        t: {(1 if lab == 2 else lab): p for lab, p in GT_PLACES[t].items()} for t in GT_PLACES
    }
    r = evaluate_ctc(write_res(tmp_path, tracks, places), gt_dir)
    assert (r.correct, r.missed, r.incorrect, r.false_positive) == (0, 1, 0, 0)
    assert r.division_recall == pytest.approx(0.0)
    assert r.division_precision is None  # no result division at all
    assert r.mbc == pytest.approx(0.0)
    assert r.TRA is not None
    assert r.TRA < 1.0
    assert r.AA is not None
    assert r.AA < 1.0


def _late_division() -> tuple[list[Track], Place]:
    """The result mother divides one frame after the GT one."""
    tracks = [(1, 0, 3, 0), (5, 4, 5, 1), (6, 4, 5, 1), (7, 3, 3, 0), (4, 0, 5, 0)]
    places: Place = {}
    for t in range(N_FRAMES):
        if t < 3:
            places[t] = {1: (8, 8)}
        elif t == 3:
            places[t] = {1: (5, 5), 7: (11, 11)}
        else:
            places[t] = {5: (5, 5), 6: (11, 11)}
        places[t][4] = (24, 24)
    return tracks, places


def test_shifted_division_needs_tolerance(tmp_path: Path, gt_dir: Path) -> None:
    res = write_res(tmp_path, *_late_division())
    tolerant = evaluate_ctc(res, gt_dir, frame_tolerance=1)
    assert (tolerant.correct, tolerant.missed, tolerant.false_positive) == (1, 0, 0)
    assert tolerant.division_f1 == pytest.approx(1.0)
    strict = evaluate_ctc(res, gt_dir, frame_tolerance=0)
    assert (strict.correct, strict.missed, strict.false_positive) == (0, 1, 1)
    assert strict.division_f1 == pytest.approx(0.0)


def test_wrong_daughters_is_incorrect(tmp_path: Path, gt_dir: Path) -> None:
    # The mother divides on time, but one "daughter" sits on an empty spot.
    places = {t: dict(GT_PLACES[t]) for t in GT_PLACES}
    for t in range(3, N_FRAMES):
        places[t][3] = (26, 6)
        places[t][8] = (11, 11)
    tracks = [*GT_TRACKS, (8, 3, 5, 0)]
    r = evaluate_ctc(write_res(tmp_path, tracks, places), gt_dir)
    assert (r.correct, r.missed, r.incorrect, r.false_positive) == (0, 0, 1, 0)
    assert r.mbc == pytest.approx(0.0)


def test_false_division_counted(tmp_path: Path, gt_dir: Path) -> None:
    # Cell 4 "divides" at frame 2 into 8 (where 4 is) and 9 (an empty spot).
    tracks = [(1, 0, 2, 0), (2, 3, 5, 1), (3, 3, 5, 1), (4, 0, 2, 0), (8, 3, 5, 4), (9, 3, 5, 4)]
    places = {t: dict(GT_PLACES[t]) for t in GT_PLACES}
    for t in range(3, N_FRAMES):
        del places[t][4]
        places[t] |= {8: (24, 24), 9: (24, 8)}
    r = evaluate_ctc(write_res(tmp_path, tracks, places), gt_dir)
    assert (r.correct, r.false_positive, r.n_res_divisions) == (1, 1, 2)
    assert r.division_precision == pytest.approx(0.5)
    assert r.division_recall == pytest.approx(1.0)
    assert r.division_f1 == pytest.approx(2 / 3)


def test_broken_link_lowers_te_and_aa(tmp_path: Path, gt_dir: Path) -> None:
    # Cell 4 is cut in two unlinked tracks at frame 3.
    places = {t: dict(GT_PLACES[t]) for t in GT_PLACES}
    for t in range(3, N_FRAMES):
        places[t][10] = places[t].pop(4)
    tracks = [(1, 0, 2, 0), (2, 3, 5, 1), (3, 3, 5, 1), (4, 0, 2, 0), (10, 3, 5, 0)]
    r = evaluate_ctc(write_res(tmp_path / "cut", tracks, places), gt_dir)
    gt_links = 2 + 2 * 2 + 2 + 5  # mother, two daughters, two division links, cell 4
    assert pytest.approx((gt_links - 1) / gt_links) == r.AA
    n_nodes = 3 + 3 + 3 + 6
    assert pytest.approx((n_nodes - 3) / n_nodes) == r.TE
    # Linked as a single-child continuation (how export writes a gap): same cell again.
    linked = [*tracks[:4], (10, 3, 5, 4)]
    r2 = evaluate_ctc(write_res(tmp_path / "linked", linked, places), gt_dir)
    assert pytest.approx(1.0) == r2.AA
    assert pytest.approx(1.0) == r2.TE
    assert r2.n_res_divisions == 1  # a single child is not a division


def test_invalid_result_names_the_track(tmp_path: Path, gt_dir: Path) -> None:
    places = {t: dict(GT_PLACES[t]) for t in GT_PLACES}
    del places[4][4]  # track 4 claims frames 0-5 but is missing from frame 4
    res = write_res(tmp_path, GT_TRACKS, places)
    with pytest.raises(EvaluationError, match=r"Label 4 in res_track but not in mask"):
        evaluate_ctc(res, gt_dir)


def test_ground_truth_that_disagrees_with_its_masks_is_named(tmp_path: Path) -> None:
    res = write_res(tmp_path / "res", GT_TRACKS, GT_PLACES)

    def gt_without(name: str, t: int, label: int) -> Path:
        places = {k: dict(v) for k, v in GT_PLACES.items()}
        del places[t][label]
        return write_gt(tmp_path / name, GT_TRACKS, places)

    # Daughter 3 is in man_track.txt from frame 3 but her marker only appears at frame 4;
    # mother 1 ends at frame 2 but has no marker there (py-ctcmetrics would fail with an
    # IndexError while building the parent links).
    with pytest.raises(
        EvaluationError,
        match=r"man_track.txt disagrees with its masks: daughter 3 \(3 3 5 1\) has no mask "
        r"in frame 3$",
    ):
        evaluate_ctc(res, gt_without("daughter", 3, 3))
    with pytest.raises(
        EvaluationError,
        match=r"mother 1 of track 2 has no mask in her last frame 2; "
        r"mother 1 of track 3 has no mask in her last frame 2$",
    ):
        evaluate_ctc(res, gt_without("mother", 2, 1))
    # Markers missing elsewhere (a gap, or a track without parent links missing in its
    # last frame) are scored as py-ctcmetrics scores them.
    for name, t in (("gap", 4), ("end", 5)):
        r = evaluate_ctc(res, gt_without(name, t, 4))
        assert r.DET is not None
        assert r.DET < 1.0


def test_bad_track_file_and_layout(tmp_path: Path, gt_dir: Path) -> None:
    res = write_res(tmp_path, [*GT_TRACKS[:3], (4, 0, 5, 2)], GT_PLACES)
    with pytest.raises(EvaluationError, match=r"track 4 .*parent 2 ends at frame 5"):
        evaluate_ctc(res, gt_dir)
    _write_tracks(res / "res_track.txt", GT_TRACKS)
    (res / "mask005.tif").unlink()
    with pytest.raises(EvaluationError, match=r"5 mask\*\.tif files but the ground truth has 6"):
        evaluate_ctc(res, gt_dir)


def test_result_to_dict_and_table(tmp_path: Path, gt_dir: Path) -> None:
    r = evaluate_ctc(write_res(tmp_path, GT_TRACKS, GT_PLACES), gt_dir)
    d = r.to_dict()
    assert list(d) == list(EvaluationResult.__dataclass_fields__)
    assert d["n_gt_divisions"] == 1
    table = format_table(r, "synthetic")
    assert table.splitlines()[0] == "synthetic"
    assert "TRA" in table
    assert "1.0000" in table


def test_match_frame_agrees_with_py_ctcmetrics(tmp_path: Path) -> None:
    from ctc_metrics.utils.representations import match

    rng = np.random.default_rng(3)
    ref = np.zeros((40, 40), np.uint16)
    comp = np.zeros((40, 40), np.uint16)
    for lab in range(1, 9):
        y, x = rng.integers(2, 34, size=2)
        ref[y : y + 6, x : x + 6] = lab
        dy, dx = rng.integers(-3, 4, size=2)
        comp[y + dy : y + dy + 6, x + dx : x + dx + 5] = lab + 20
    tifffile.imwrite(tmp_path / "ref.tif", ref)
    tifffile.imwrite(tmp_path / "comp.tif", comp)
    expected = match(str(tmp_path / "ref.tif"), str(tmp_path / "comp.tif"))
    got = match_frame(ref, comp)
    assert got.labels_ref == expected[0]
    assert got.labels_comp == expected[1]
    assert sorted(zip(got.mapped_ref, got.mapped_comp, strict=True)) == sorted(
        zip(expected[2], expected[3], strict=True)
    )
    assert sorted(got.ious) == pytest.approx(sorted(expected[4]))
    assert 0 < len(got.mapped_ref) < 8  # some pairs match, some do not


# -------------------------------------------------------------------------------- export


def _frame(t: int, places: dict[int, tuple[int, int]], track_of: dict[int, int]) -> ExportFrame:
    """Detections get mask values 10, 11, ... so they differ from the track ids."""
    mask = np.zeros((SIZE, SIZE), np.int32)
    labels, tids = [], []
    for i, (tid, (y, x)) in enumerate(sorted(places.items())):
        mask[y - HALF : y + HALF + 1, x - HALF : x + HALF + 1] = 10 + i
        labels.append(10 + i)
        tids.append(track_of.get(tid, tid))
    return ExportFrame(t, mask, np.array(labels, np.int32), np.array(tids, np.int64))


def _read_res(out: Path) -> tuple[list[np.ndarray], list[Track]]:
    masks = [tifffile.imread(p) for p in sorted(out.glob("mask*.tif"))]
    rows = [
        tuple(int(v) for v in line.split())
        for line in (out / "res_track.txt").read_text().splitlines()
    ]
    return masks, [(r[0], r[1], r[2], r[3]) for r in rows]


def _assert_ctc_rules(masks: list[np.ndarray], tracks: list[Track]) -> None:
    """Every track present in every frame B..E and nowhere else; parents end first."""
    by_label = {t[0]: t for t in tracks}
    for lab, b, e, p in tracks:
        present = [t for t, m in enumerate(masks) if (m == lab).any()]
        assert present == list(range(b, e + 1)), f"track {lab}"
        if p:
            assert by_label[p][2] < b
    assert {int(v) for m in masks for v in np.unique(m) if v} == set(by_label)


def test_export_splits_gaps_and_links_divisions(tmp_path: Path) -> None:
    # Track 7: frames 0, (gap at 1), 2; then divides into 8 and 9 (frames 3-4).
    # Track 5: frames 0-4 except 3. Frame 5 is not given (empty), nor frame 1 for 5.
    frames = [
        _frame(0, {7: (8, 8), 5: (24, 24)}, {}),
        _frame(1, {5: (24, 24)}, {}),
        _frame(2, {7: (8, 8), 5: (24, 24)}, {}),
        _frame(3, {8: (5, 5), 9: (11, 11)}, {}),
        _frame(4, {8: (5, 5), 9: (11, 11), 5: (24, 24)}, {}),
    ]
    records = [
        TrackRecord(7, None, 0, 2, "divided"),
        TrackRecord(8, 7, 3, 4, "active"),
        TrackRecord(9, 7, 3, 4, "active"),
        TrackRecord(5, None, 0, 4, "active"),
    ]
    out = export_ctc(iter(frames), records, tmp_path / "res", n_frames=7)
    masks, tracks = _read_res(out)
    assert len(masks) == 7
    assert all(m.dtype == np.uint16 for m in masks)
    assert not masks[5].any()
    assert not masks[6].any()
    _assert_ctc_rules(masks, tracks)
    table = {(b, e): (lab, p) for lab, b, e, p in tracks}
    first7, second7 = table[(0, 0)], table[(2, 2)]
    assert second7[1] == first7[0]  # the segment after the gap continues the one before
    daughters = [(lab, p) for lab, b, e, p in tracks if b == 3]
    assert len(daughters) == 2
    assert all(p == second7[0] for _, p in daughters)  # parent = mother's LAST segment
    root5 = int(masks[0][24, 24])
    five = sorted((b, e, p) for lab, b, e, p in tracks if root5 in (lab, p))
    assert five[0][:2] == (0, 2)
    assert five[1][:2] == (4, 4)
    assert five[1][2] == root5
    assert int(masks[4][24, 24]) != root5
    assert int(masks[3][5, 5]) in {lab for lab, _ in daughters}


def test_export_roundtrip_scores_perfectly(tmp_path: Path, gt_dir: Path) -> None:
    """GT masks and lineage exported as a livetrack result evaluate to TRA = 1."""

    def frames() -> Iterator[ExportFrame]:
        for t in range(N_FRAMES):
            mask = tifffile.imread(gt_dir / "TRA" / f"man_track{t:03d}.tif").astype(np.int32)
            labels = np.unique(mask)[1:]
            yield ExportFrame(t, mask, labels, labels.astype(np.int64) + 100)

    records = [
        TrackRecord(lab + 100, p + 100 if p else None, b, e, "active") for lab, b, e, p in GT_TRACKS
    ]
    out = export_ctc(frames(), records, tmp_path / "res", n_frames=N_FRAMES)
    r = evaluate_ctc(out, gt_dir)
    assert pytest.approx(1.0) == r.TRA
    assert r.division_f1 == pytest.approx(1.0)


def test_export_drops_untracked_and_removes_stale_masks(tmp_path: Path) -> None:
    out = tmp_path / "res"
    out.mkdir()
    tifffile.imwrite(out / "mask099.tif", np.zeros((2, 2), np.uint16))
    frame = _frame(0, {3: (8, 8), 4: (24, 24)}, {4: 0})  # second detection untracked
    export_ctc([frame], [TrackRecord(3, None, 0, 0, "active")], out)
    masks, tracks = _read_res(out)
    assert len(masks) == 1
    assert tracks == [(1, 0, 0, 0)]
    assert set(np.unique(masks[0]).tolist()) == {0, 1}


def test_export_four_digits_beyond_1000_frames(tmp_path: Path) -> None:
    frame = _frame(0, {3: (8, 8)}, {})
    out = export_ctc([frame], [], tmp_path / "res", n_frames=1001)
    assert (out / "mask0000.tif").exists()
    assert (out / "mask1000.tif").exists()
    assert not (out / "mask000.tif").exists()


def test_export_rejects_bad_input(tmp_path: Path) -> None:
    f0, f1 = _frame(0, {3: (8, 8)}, {}), _frame(1, {3: (8, 8)}, {})
    with pytest.raises(EvaluationError, match="increasing order"):
        export_ctc([f1, f0], [], tmp_path / "a")
    twice = ExportFrame(0, f0.mask, np.array([10, 10]), np.array([3, 3]))
    with pytest.raises(EvaluationError, match="appear twice"):
        export_ctc([twice], [], tmp_path / "b")
    # Daughter 4 starts while its mother 3 is still present.
    both = _frame(1, {3: (8, 8), 4: (24, 24)}, {})
    records = [TrackRecord(3, None, 0, 1, "active"), TrackRecord(4, 3, 1, 1, "active")]
    with pytest.raises(EvaluationError, match=r"parent track 3|after its child"):
        export_ctc([f0, both], records, tmp_path / "c")
    with pytest.raises(EvaluationError, match="beyond n_frames"):
        export_ctc([f0, f1], [], tmp_path / "d", n_frames=1)


def test_export_rejects_more_than_uint16_labels(tmp_path: Path) -> None:
    n = 65536
    mask = np.arange(1, n + 1, dtype=np.int32).reshape(256, 256)
    frame = ExportFrame(0, mask, mask.ravel().copy(), mask.ravel().astype(np.int64))
    with pytest.raises(EvaluationError, match="uint16"):
        export_ctc([frame], [], tmp_path / "res")


# ---------------------------------------------------------------------------------- data


@pytest.mark.data
@pytest.mark.skipif(not DATA.exists(), reason="shared CTC data not available")
def test_sim_gt_against_itself(tmp_path: Path) -> None:
    gt = DATA / "Fluo-N2DH-SIM+" / "01_GT"
    res = tmp_path / "01_RES"
    res.mkdir()
    for path in sorted((gt / "TRA").glob("man_track*.tif")):
        shutil.copy(path, res / path.name.replace("man_track", "mask"))
    shutil.copy(gt / "TRA" / "man_track.txt", res / "res_track.txt")
    r = evaluate_ctc(res, gt)
    assert r.TRA == 1.0
    assert r.DET == 1.0
    assert r.n_gt_divisions == 28  # the 3 single-child parents are not divisions
    assert r.correct == 28
    assert r.division_f1 == 1.0
    assert r.TE == 1.0
    assert r.AA == 1.0


def test_export_refuses_absurd_frame_ranges_without_writing_masks(tmp_path: Path) -> None:
    """A frame index of 2**63 - 1 (accepted from the wire by older versions) made export
    write empty masks forever; now it is refused at once, naming the frame."""
    from livetrack.messages import MAX_FRAMES

    f0 = _frame(0, {3: (8, 8)}, {})
    out = tmp_path / "res"
    with pytest.raises(EvaluationError, match=f"frame {2**63 - 1}"):
        export_ctc([f0, _frame(2**63 - 1, {3: (8, 8)}, {})], [], out)
    assert len(list(out.glob("mask*.tif"))) <= 1
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "mask000.tif").write_bytes(b"earlier export")
    with pytest.raises(EvaluationError, match="refusing to export"):
        export_ctc([f0], [], keep, n_frames=MAX_FRAMES + 1)
    assert (keep / "mask000.tif").read_bytes() == b"earlier export"  # nothing touched
    assert export_ctc([f0], [], tmp_path / "ok", n_frames=3) == tmp_path / "ok"
