"""Merged nuclei split between the tracks they hold (``track.merges``), and never on label
images given with the frames."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from livetrack.config import Settings, TrackConfig
from livetrack.store import Store
from livetrack.track.lap import lap_tracker
from livetrack.track.merges import hold_splits, split_merges, split_segmentation
from livetrack.track.online import OpenTracks
from livetrack.transport import FramePuller
from livetrack.types import Detections, Segmentation
from livetrack.worker import Worker
from tests.test_worker import drain, labelled_frame, pusher_for

ON = TrackConfig(merge_area_ratio=1.4)


def discs(shape: tuple[int, int], centres: list[tuple[float, float]], r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return out


def tracks_at(centres: list[tuple[float, float]], areas: list[float], last: int) -> OpenTracks:
    n = len(centres)
    return OpenTracks(
        ids=np.arange(1, n + 1, dtype=np.int64),
        pos=np.array(centres, np.float64),
        vel=np.zeros((n, 2)),
        area=np.array(areas, np.float64),
        last=np.full(n, last, np.int64),
    )


def test_two_tracks_inside_one_large_object_split_it_between_them() -> None:
    separate = discs((80, 80), [(40, 30), (40, 48)], 10)
    merged = (separate > 0).astype(np.int32) * 7
    before = merged.copy()
    areas = [float((separate == 1).sum()), float((separate == 2).sum())]
    mask, dets, n = split_merges(
        merged, Detections.from_labels(merged), tracks_at([(40, 30), (40, 48)], areas, 4), 5, ON
    )
    assert n == 1
    assert np.array_equal(merged, before)  # the input is not modified
    assert len(dets) == 2
    assert set(np.unique(mask)) == {0, 7, 8}
    # Each part holds its own disc's centre and about its area.
    assert mask[40, 30] != mask[40, 48]
    assert np.all(np.abs(np.sort(dets.areas) - np.sort(areas)) <= 0.1 * max(areas))
    assert np.array_equal(mask > 0, merged > 0)  # no pixel gained or lost


def test_no_split_unless_clearly_larger_than_the_largest_track() -> None:
    one = discs((80, 80), [(40, 40)], 10)
    area = float((one > 0).sum())
    # Two tracks of a nucleus' size land in an object no larger than one of them.
    tracks = tracks_at([(40, 36), (40, 44)], [area, area], 4)
    mask, dets, n = split_merges(one, Detections.from_labels(one), tracks, 5, ON)
    assert n == 0
    assert mask is one
    assert len(dets) == 1


def test_no_split_when_a_part_would_keep_less_than_half_its_track() -> None:
    separate = discs((80, 80), [(40, 30), (40, 48)], 10)
    merged = (separate > 0).astype(np.int32)
    area = float((separate == 1).sum())
    # The second track was large and sits at the object's rim: its share is too small. (The
    # object is 1.36 times the larger track, so at 1.2 only the half-area rule refuses.)
    tracks = tracks_at([(40, 38), (40, 57)], [area, 1.5 * area], 4)
    dets = Detections.from_labels(merged)
    assert split_merges(merged, dets, tracks, 5, TrackConfig(merge_area_ratio=1.2))[2] == 0
    fair = tracks_at([(40, 30), (40, 48)], [area, area], 4)
    assert split_merges(merged, dets, fair, 5, TrackConfig(merge_area_ratio=1.2))[2] == 1


def test_only_tracks_seen_in_the_previous_frame_count_and_zero_is_off() -> None:
    separate = discs((80, 80), [(40, 30), (40, 48)], 10)
    merged = (separate > 0).astype(np.int32)
    dets = Detections.from_labels(merged)
    areas = [float((separate == 1).sum()), float((separate == 2).sum())]
    old = tracks_at([(40, 30), (40, 48)], areas, 3)  # last seen two frames ago
    assert split_merges(merged, dets, old, 5, ON)[2] == 0
    recent = tracks_at([(40, 30), (40, 48)], areas, 4)
    assert split_merges(merged, dets, recent, 5, TrackConfig(merge_area_ratio=0))[2] == 0
    assert split_merges(merged, dets, recent, 5, ON)[2] == 1


def test_the_worker_step_splits_with_the_trackers_own_open_tracks() -> None:
    separate = discs((80, 80), [(40, 30), (40, 48)], 10)
    merged = (separate > 0).astype(np.int32)
    tracker = lap_tracker(ON, merged.shape)
    tracker.step(0, Detections.from_labels(separate))
    seg = Segmentation(mask=merged, detections=Detections.from_labels(merged))
    out = split_segmentation(seg, tracker, 1)
    assert len(out.detections) == 2
    step = tracker.step(1, out.detections)
    assert sorted(step.track_ids.tolist()) == [1, 2]  # both tracks go on, nobody new
    off = lap_tracker(TrackConfig(merge_area_ratio=0), merged.shape)
    off.step(0, Detections.from_labels(separate))
    assert split_segmentation(seg, off, 1) is seg


def test_given_label_images_are_never_split(tmp_path, zmq_context, closing):
    settings = Settings().model_copy(
        update={
            "worker": Settings().worker.model_copy(update={"exit_on_eos": True}),
            "track": Settings().track.model_copy(update={"method": "lap", "merge_area_ratio": 1.4}),
        }
    )
    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=1000, context=zmq_context))
    worker = Worker(settings, closing(Store(tmp_path / "given.db")), puller, None)
    pusher = pusher_for(worker, zmq_context, closing)
    separate = discs((80, 80), [(40, 30), (40, 48)], 10)
    merged = (separate > 0).astype(np.int32)
    for i, labels in enumerate([separate, merged, merged]):
        header, image = labelled_frame(i, labels)
        pusher.send_frame(header, image, labels)
    results = drain(worker, until_eos=False)
    assert [r.status for r in results] == ["stored"] * 3
    for i in (1, 2):
        assert np.array_equal(worker.store.load_mask("r", "p", i), merged)


class DiscSegmenter:
    """A plain segmenter for the worker: connected components of the bright pixels."""

    name = "components"

    def predict(self, image: np.ndarray, pixel_size_um: float | None = None) -> Segmentation:
        from scipy import ndimage as ndi

        mask = ndi.label(image > 500)[0].astype(np.int32)
        return Segmentation(mask=mask, detections=Detections.from_labels(mask))

    def restore_scale(self, state: object) -> None:
        """No adaptive scale."""


def test_the_worker_splits_its_own_segmentation_and_stores_the_split(
    tmp_path, zmq_context, closing
):
    settings = Settings().model_copy(
        update={
            "worker": Settings().worker.model_copy(update={"exit_on_eos": True}),
            "track": Settings().track.model_copy(update={"method": "lap", "merge_area_ratio": 1.4}),
        }
    )
    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=1000, context=zmq_context))
    store = closing(Store(tmp_path / "own.db"))
    worker = Worker(settings, store, puller, None, segmenter_factory=DiscSegmenter)
    pusher = pusher_for(worker, zmq_context, closing)
    separate = discs((80, 80), [(40, 30), (40, 48)], 10)
    apart = separate > 0
    apart[:, 39] = False  # the two nuclei apart in the first frame only
    for i, labels in enumerate([apart, separate > 0, separate > 0]):
        header, image = labelled_frame(i, labels.astype(np.int32))
        pusher.send_frame(header.model_copy(update={"labels_dtype": None}), image)
    results = drain(worker, until_eos=False)
    assert [r.status for r in results] == ["stored"] * 3
    for i in (1, 2):
        stored = worker.store.load_mask("r", "p", i)
        assert len(np.unique(stored[stored > 0])) == 2  # one object in the frame, two stored
        assert np.array_equal(stored > 0, separate > 0)
    assert [r.n_cells for r in results] == [2, 2, 2]


def test_the_python_api_splits_with_the_same_setting(monkeypatch) -> None:
    """``livetrack.track()`` applies the setting to its own segmentation as the worker does
    (the segmenter here: connected components, so the merge is certain)."""
    import livetrack.segment.factory as factory
    from livetrack.api import track

    monkeypatch.setattr(factory, "make_segmenter", lambda *a, **k: DiscSegmenter())
    separate = discs((80, 80), [(40, 30), (40, 48)], 10)
    movie = np.stack([separate > 0] * 3).astype(np.uint16) * 1000
    movie[0][:, 39] = 0  # apart in the first frame only
    on = track(movie, tracker=TrackConfig(method="lap", merge_area_ratio=1.4)).tracks
    off = track(movie, tracker=TrackConfig(method="lap")).tracks
    assert on.groupby("t").size().tolist() == [2, 2, 2]
    assert off.groupby("t").size().tolist() == [2, 1, 1]
    assert sorted(on[on.t == 2].track.tolist()) == sorted(on[on.t == 0].track.tolist())


@pytest.mark.parametrize("ratio", [0.5, 0.99])
def test_a_ratio_between_zero_and_one_is_refused_with_a_clear_error(ratio: float) -> None:
    with pytest.raises(ValidationError, match="0 \\(off\\) or at least 1"):
        TrackConfig(merge_area_ratio=ratio)
    assert TrackConfig(merge_area_ratio=0).merge_area_ratio == 0
    assert TrackConfig(merge_area_ratio=1).merge_area_ratio == 1


HOLD = TrackConfig(hold_convex_splits=0.95)


def cut_disc(shape: tuple[int, int] = (80, 80), r: float = 15.0) -> np.ndarray:
    """A disc cut straight through its middle into labels 1 (left) and 2 (right)."""
    one = discs(shape, [(40, 40)], r)
    one[(one > 0) & (np.arange(shape[1])[None, :] >= 40)] = 2
    return one


def test_a_convex_object_cut_in_two_where_one_track_was_is_joined() -> None:
    cut = cut_disc()
    before = cut.copy()
    area = float((cut > 0).sum())
    mask, dets, n = hold_splits(
        cut, Detections.from_labels(cut), tracks_at([(40, 41)], [area], 4), 5, HOLD
    )
    assert n == 1
    assert np.array_equal(cut, before)  # the input is not modified
    assert len(dets) == 1
    assert dets.labels.tolist() == [2]  # the part the track is in
    assert np.array_equal(mask > 0, cut > 0)  # no pixel gained or lost


def test_round_nuclei_that_touch_are_not_joined() -> None:
    """Two nuclei side by side: their union has a waist, so they stay two even where only
    one track was (the other just came in); a short cut is not enough either."""
    two = discs((80, 80), [(40, 27), (40, 53)], 13.5)
    assert len(np.unique(two)) == 3
    assert (two[40, 39:42] > 0).all()  # they touch
    tracks = tracks_at([(40, 27)], [float((two == 1).sum())], 4)
    assert hold_splits(two, Detections.from_labels(two), tracks, 5, HOLD)[2] == 0
    # and whatever the solidity asked for, a cut shorter than 0.9 diameters keeps them apart
    low = TrackConfig(hold_convex_splits=0.5)
    assert hold_splits(two, Detections.from_labels(two), tracks, 5, low)[2] == 0


def test_no_join_where_two_tracks_were_or_none_was_recent_or_zero() -> None:
    cut = cut_disc()
    dets = Detections.from_labels(cut)
    half = float((cut == 1).sum())
    two = tracks_at([(40, 33), (40, 47)], [half, half], 4)
    assert hold_splits(cut, dets, two, 5, HOLD)[2] == 0
    stale = tracks_at([(40, 41)], [2 * half], 3)  # last seen two frames ago
    assert hold_splits(cut, dets, stale, 5, HOLD)[2] == 0
    recent = tracks_at([(40, 41)], [2 * half], 4)
    assert hold_splits(cut, dets, recent, 5, TrackConfig(hold_convex_splits=0))[2] == 0
    assert TrackConfig().hold_convex_splits == 0.95  # on by default
    assert hold_splits(cut, dets, recent, 5, HOLD)[2] == 1
    with pytest.raises(ValidationError, match="hold_convex_splits"):
        TrackConfig(hold_convex_splits=1.5)


class CutSegmenter(DiscSegmenter):
    """Components of the bright pixels; in frames marked by a 7 at pixel (0, 0) each one is
    cut at column 40, as a segmenter cuts a nucleus (or a mother) in two."""

    def predict(self, image: np.ndarray, pixel_size_um: float | None = None) -> Segmentation:
        mask = super().predict(image).mask
        if image[0, 0] == 7:
            mask[(mask > 0) & (np.arange(mask.shape[1])[None, :] >= 40)] = mask.max() + 1
        return Segmentation(mask=mask, detections=Detections.from_labels(mask))


def test_the_python_api_holds_a_cut_nucleus_together(monkeypatch) -> None:
    import livetrack.segment.factory as factory
    from livetrack.api import track

    monkeypatch.setattr(factory, "make_segmenter", lambda *a, **k: CutSegmenter())
    movie = np.stack([discs((80, 80), [(40, 40)], 15) > 0] * 3).astype(np.uint16) * 1000
    movie[1:, 0, 0] = 7  # cut in frames 1 and 2
    on = track(movie, tracker=TrackConfig(method="lap")).tracks  # the default: 0.95
    off = track(movie, tracker=TrackConfig(method="lap", hold_convex_splits=0)).tracks
    assert on.groupby("t").size().tolist() == [1, 1, 1]
    assert on.track.nunique() == 1
    assert off.groupby("t").size().tolist() == [1, 2, 2]


def test_a_piece_where_a_track_missed_last_frame_is_predicted_is_not_joined() -> None:
    """A track still open after a missed frame counts: its cell may be the other piece."""
    cut = cut_disc()
    dets = Detections.from_labels(cut)
    half = float((cut == 1).sum())
    tracks = OpenTracks(
        ids=np.array([1, 2], np.int64),
        pos=np.array([[40.0, 45.0], [40.0, 33.0]]),
        vel=np.zeros((2, 2)),
        area=np.array([half, half]),
        last=np.array([4, 3], np.int64),  # the second was last seen two frames ago
    )
    assert hold_splits(cut, dets, tracks, 5, HOLD)[2] == 0
    only_recent = tracks_at([(40, 45)], [half], 4)
    assert hold_splits(cut, dets, only_recent, 5, HOLD)[2] == 1


def test_a_piece_between_two_tracked_objects_joins_the_one_it_shares_the_longest_cut_with() -> None:
    """A disc cut in three vertical slabs: the middle one (no track) goes to the neighbour it
    shares the longer cut with, though the other neighbour has the lower label."""
    one = discs((80, 80), [(40, 40)], 18)
    cols = np.arange(80)[None, :]
    three = np.where(one > 0, 3, 0).astype(np.int32)  # left slab: label 3
    three[(one > 0) & (cols >= 34)] = 2  # middle: cut at 34 (a 34 px chord) ...
    three[(one > 0) & (cols >= 50)] = 1  # ... and at 50 (30 px): right slab, label 1
    area = float((one > 0).sum())
    tracks = tracks_at([(40, 28), (40, 54)], [area / 3, area / 3], 4)
    mask, _, n = hold_splits(three, Detections.from_labels(three), tracks, 5, HOLD)
    assert n == 1
    assert set(np.unique(mask).tolist()) == {0, 1, 3}
    assert (mask[three == 2] == 3).all()  # joined to the left slab


def test_the_worker_joins_a_cut_nucleus_and_stores_it_whole(tmp_path, zmq_context, closing):
    """The worker (real sockets, real SQLite file) applies the default to its own
    segmentation: the nucleus cut in two in frames 1 and 2 is stored as one object of one
    track, and the stored masks keep every pixel."""
    settings = Settings().model_copy(
        update={
            "worker": Settings().worker.model_copy(update={"exit_on_eos": True}),
            "track": Settings().track.model_copy(update={"method": "lap"}),
        }
    )
    assert settings.track.hold_convex_splits == 0.95
    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=1000, context=zmq_context))
    store = closing(Store(tmp_path / "held.db"))
    worker = Worker(settings, store, puller, None, segmenter_factory=CutSegmenter)
    pusher = pusher_for(worker, zmq_context, closing)
    whole = discs((80, 80), [(40, 40)], 15)
    for i in range(3):
        header, image = labelled_frame(i, whole)
        image = image.copy()
        image[0, 0] = 7 if i else 0  # the segmenter cuts frames 1 and 2
        pusher.send_frame(header.model_copy(update={"labels_dtype": None}), image)
    results = drain(worker, until_eos=False)
    assert [r.status for r in results] == ["stored"] * 3
    assert [r.n_cells for r in results] == [1, 1, 1]
    for i in (1, 2):
        stored = worker.store.load_mask("r", "p", i)
        assert len(np.unique(stored[stored > 0])) == 1
        assert np.array_equal(stored > 0, whole > 0)
