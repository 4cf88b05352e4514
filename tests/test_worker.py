"""The worker over real sockets and a real SQLite file, fed by the simulator."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from livetrack.drivers.simulator import SimulatorSource
from livetrack.simulators.nuclei import SimulationConfig

from livetrack.config import Settings, TrackConfig
from livetrack.messages import EndOfStream, FrameHeader, TrackEvent
from livetrack.pump import header_for, pump
from livetrack.store import Store
from livetrack.track.base import FrameHistory, TrackEnd, Tracker, TrackRecord, TrackStep
from livetrack.track.factory import make_tracker
from livetrack.transport import EventPublisher, EventSubscriber, FramePuller, FramePusher
from livetrack.types import Detections
from livetrack.worker import FrameResult, Worker

SIM = SimulationConfig(
    seed=3,
    n_frames=24,
    height=160,
    width=160,
    n_cells=10,
    nucleus_diameter_px=16,
    cell_cycle_frames=12,
)


def make_worker(db: Path, ctx: zmq.Context, closing, publisher: bool = False, **kw: Any) -> Worker:  # type: ignore[type-arg]
    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=1000, context=ctx))
    pub = closing(EventPublisher("tcp://127.0.0.1:0", context=ctx)) if publisher else None
    store = closing(Store(db))
    settings = Settings().model_copy(
        update={"worker": Settings().worker.model_copy(update={"exit_on_eos": True})}
    )
    return Worker(settings, store, puller, pub, **kw)


def pusher_for(worker: Worker, ctx: zmq.Context, closing) -> FramePusher:  # type: ignore[type-arg]
    return closing(FramePusher(worker.puller.endpoint, hwm=1000, context=ctx, linger_s=0))


def drain(worker: Worker, until_eos: bool = True, timeout_s: float = 60) -> list[FrameResult]:
    results: list[FrameResult] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = worker.poll_once(timeout_s=0.5)
        if isinstance(got, FrameResult):
            results.append(got)
        elif (isinstance(got, EndOfStream) and until_eos) or (got is None and not until_eos):
            return results
    raise AssertionError("worker did not see end-of-stream in time")


def gt_frames(config: SimulationConfig = SIM) -> list[tuple[np.ndarray, object]]:
    return list(SimulatorSource(config, with_labels=True).frames())


def test_worker_stores_every_frame_with_tracks_and_divisions(tmp_path, zmq_context, closing):
    worker = make_worker(tmp_path / "a.db", zmq_context, closing)
    pusher = pusher_for(worker, zmq_context, closing)
    result = pump(SimulatorSource(SIM, with_labels=True), pusher, "run1", description="sim")
    assert result.frames_sent == SIM.n_frames
    results = drain(worker)
    assert [r.status for r in results] == ["stored"] * SIM.n_frames
    store = worker.store
    assert store.frame_indices("run1", "sim") == list(range(SIM.n_frames))
    assert store.runs()[0]["status"] == "finished"
    # detections are exactly the GT objects of each frame
    for _image, meta in gt_frames()[:: SIM.n_frames // 4]:
        det, tids = store.frame_detections("run1", "sim", meta.frame_index)  # type: ignore[attr-defined]
        n_gt = len(np.unique(meta.labels)) - 1  # type: ignore[attr-defined]
        assert len(det) == n_gt
        assert (tids > 0).all()
    tracks = store.tracks("run1", "sim")
    assert tracks, "no tracks stored"
    divisions = store.events("run1", "sim", kinds=["division"])
    assert divisions, "the simulator divides cells; the tracker found none"
    children = {t.track_id: t.parent_id for t in tracks}
    for d in divisions:
        daughters = d["daughters"]
        assert len(daughters) >= 1
        assert all(children[k] == d["track_id"] for k in daughters)


def test_resent_frames_are_idempotent_and_late_frames_rejected(tmp_path, zmq_context, closing):
    worker = make_worker(tmp_path / "b.db", zmq_context, closing)
    pusher = pusher_for(worker, zmq_context, closing)
    frames = gt_frames()[:6]

    def send(i: int) -> None:
        image, meta = frames[i]
        pusher.send_frame(
            header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels),  # type: ignore[arg-type]
            image,
            meta.labels,  # type: ignore[attr-defined]
        )

    for i in (0, 1, 3):  # frame 2 goes missing
        send(i)
    send(1)  # re-sent after a driver reconnect: already stored
    send(2)  # arrives after 3: out of order
    send(4)
    results = drain(worker, until_eos=False)
    statuses = [(r.frame_index, r.status) for r in results]
    assert statuses == [
        (0, "stored"),
        (1, "stored"),
        (3, "stored"),
        (1, "duplicate"),
        (2, "rejected"),
        (4, "stored"),
    ]
    assert "arrived after frame 3" in results[4].message
    assert worker.store.frame_indices("r", "sim") == [0, 1, 3, 4]
    assert worker.frames_rejected == 1
    assert worker.frames_duplicate == 1


def test_bad_input_is_rejected_and_the_run_goes_on(tmp_path, zmq_context, closing):
    worker = make_worker(tmp_path / "c.db", zmq_context, closing)
    raw = closing(zmq_context.socket(zmq.PUSH))
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(worker.puller.endpoint)
    good = FrameHeader(
        run_id="r", position="p", frame_index=0, timestamp=1.0, shape=(64, 64), dtype="uint16"
    )
    img = np.zeros((64, 64), np.uint16)
    img[20:30, 20:30] = 1000
    raw.send_multipart([b"{broken json", b""])
    raw.send_multipart([good.model_dump_json().encode(), b"short"])
    raw.send_multipart([good.model_dump_json().encode(), img.tobytes()])
    bigger = good.model_copy(update={"frame_index": 1, "shape": (32, 32)})
    raw.send_multipart([bigger.model_dump_json().encode(), np.zeros((32, 32), np.uint16).tobytes()])
    nxt = good.model_copy(update={"frame_index": 2})
    raw.send_multipart([nxt.model_dump_json().encode(), img.tobytes()])
    results = drain(worker, until_eos=False)
    assert [r.status for r in results] == ["rejected", "rejected", "stored", "rejected", "stored"]
    assert "not valid JSON" in results[0].message
    assert "needs 8192" in results[1].message
    assert "earlier frames of this position were (64, 64)" in results[3].message
    assert worker.store.frame_indices("r", "p") == [0, 2]


def test_restarted_worker_continues_the_same_lineage(tmp_path, zmq_context, closing):
    """Kill the worker after k frames (no end-of-stream), start a new one on the same DB,
    send the remaining frames: the lineage equals an uninterrupted run's."""
    frames = gt_frames()

    def send_range(worker: Worker, lo: int, hi: int, eos: bool) -> None:
        pusher = pusher_for(worker, zmq_context, closing)
        for image, meta in frames[lo:hi]:
            pusher.send_frame(
                header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels),  # type: ignore[arg-type]
                image,
                meta.labels,  # type: ignore[attr-defined]
            )
        if eos:
            pusher.send_eos(EndOfStream(run_id="r", positions=("sim",)))
        drain(worker, until_eos=eos)

    straight = make_worker(tmp_path / "straight.db", zmq_context, closing)
    send_range(straight, 0, len(frames), eos=True)

    first = make_worker(tmp_path / "resumed.db", zmq_context, closing)
    send_range(first, 0, 11, eos=False)
    first.store.close()  # the process "dies": no end-of-stream, no finish()
    second = make_worker(tmp_path / "resumed.db", zmq_context, closing)
    send_range(second, 11, len(frames), eos=True)

    def lineage(store: Store) -> tuple[object, ...]:
        tracks = sorted(
            (t.track_id, t.parent_id, t.start_frame, t.end_frame, t.fate)
            for t in store.tracks("r", "sim")
        )
        per_frame = tuple(
            tuple(store.frame_detections("r", "sim", f)[1].tolist())
            for f in store.frame_indices("r", "sim")
        )
        return tuple(tracks), per_frame

    assert lineage(second.store) == lineage(straight.store)


def test_events_are_published_live(tmp_path, zmq_context, closing):
    worker = make_worker(tmp_path / "d.db", zmq_context, closing, publisher=True)
    assert worker.publisher is not None
    sub = closing(EventSubscriber(worker.publisher.endpoint, context=zmq_context))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until the subscription is live
        worker.publisher.publish(worker.status("idle"))
        if sub.recv(timeout_s=0.1) is not None:
            break
    pusher = pusher_for(worker, zmq_context, closing)
    pump(SimulatorSource(SIM, with_labels=True), pusher, "run1", description="sim")
    drain(worker)
    received = []
    while (msg := sub.recv(timeout_s=0.5)) is not None:
        received.append(msg)
    events = [m for m in received if isinstance(m, TrackEvent)]
    stored = worker.store.events("run1", "sim")
    assert len(events) == len(stored) > 0
    assert {(e.frame, e.event, e.track_id) for e in events} == {
        (s["frame"], s["kind"], s["track_id"]) for s in stored
    }


@pytest.mark.parametrize("positions", [("A1", "B2")])
def test_positions_are_tracked_independently(tmp_path, zmq_context, closing, positions):
    worker = make_worker(tmp_path / "e.db", zmq_context, closing)
    pusher = pusher_for(worker, zmq_context, closing)
    frames = gt_frames()[:8]
    for image, meta in frames:  # interleave two positions, same content
        for pos in positions:
            h = header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels)  # type: ignore[arg-type]
            pusher.send_frame(h.model_copy(update={"position": pos}), image, meta.labels)  # type: ignore[attr-defined]
    results = drain(worker, until_eos=False)
    assert sum(r.status == "stored" for r in results) == 16
    assert sorted(worker.store.positions("r")) == list(positions)
    a, b = (worker.store.tracks("r", p) for p in positions)
    assert [(t.track_id, t.parent_id, t.start_frame) for t in a] == [
        (t.track_id, t.parent_id, t.start_frame) for t in b
    ]


def embedding_of(frame: int, dets: Detections) -> np.ndarray:
    """What the recording tracker returns: per detection (label, y, x, frame)."""
    return np.column_stack([dets.labels, dets.centroids, np.full(len(dets), frame)]).astype(
        np.float32
    )


@dataclass
class RecordingTracker:
    """The real tracker, plus a record of what the worker gave it, returning embeddings."""

    inner: Tracker
    name: str = "recording"
    steps: list[tuple[int, Detections, Any, Any]] = field(default_factory=list)
    restored: list[FrameHistory] = field(default_factory=list)
    labels_given: list[bool] = field(default_factory=list)

    @property
    def history_window(self) -> int:
        return self.inner.history_window

    def step(
        self,
        frame: int,
        detections: Detections,
        image: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        *,
        labels_given: bool = False,
    ) -> TrackStep:
        self.steps.append((frame, detections, image, mask))
        self.labels_given.append(labels_given)
        step = self.inner.step(frame, detections, image=image, mask=mask, labels_given=labels_given)
        return replace(step, embeddings=embedding_of(frame, detections))

    def finish(self, last_frame: int) -> list[TrackEnd]:
        return self.inner.finish(last_frame)

    def restore(self, history: list[FrameHistory], tracks: list[TrackRecord]) -> None:
        self.restored = list(history)
        self.inner.restore(history, tracks)


def test_tracker_gets_image_and_mask_and_its_embeddings_survive_a_restart(
    tmp_path, zmq_context, closing
):
    trackers: list[RecordingTracker] = []

    def factory(shape: tuple[int, int]) -> Tracker:
        # the LAP tracker underneath: this test is about the worker's plumbing, and the
        # recorder replaces the embeddings with its own (the LSTM's restore is tested apart)
        trackers.append(RecordingTracker(make_tracker(TrackConfig(method="lap"), shape)))
        return trackers[-1]

    frames = gt_frames()[:9]
    db = tmp_path / "emb.db"

    def send(worker: Worker, lo: int, hi: int, *, labels: bool = True, pos: str = "sim") -> None:
        pusher = pusher_for(worker, zmq_context, closing)
        for image, meta in frames[lo:hi]:
            given = meta.labels if labels else None  # type: ignore[attr-defined]
            h = header_for("r", image, meta, source="t", total_frames=None, labels=given)  # type: ignore[arg-type]
            pusher.send_frame(h.model_copy(update={"position": pos}), image, given)
        results = drain(worker, until_eos=False)
        assert [r.status for r in results] == ["stored"] * (hi - lo)

    first = make_worker(db, zmq_context, closing, tracker_factory=factory)
    send(first, 0, 6)
    send(first, 0, 2, labels=False, pos="segmented")  # the segmenter's own label image
    assert len(trackers) == 2
    # the tracker is told whose label image it tracks (given ones weigh geometry more)
    assert trackers[0].labels_given == [True] * 6
    assert trackers[1].labels_given == [False] * 2
    for tracker, pos, sent in (
        (trackers[0], "sim", frames[:6]),
        (trackers[1], "segmented", frames[:2]),
    ):
        assert [s[0] for s in tracker.steps] == list(range(len(sent)))
        for (frame, dets, image, mask), (sent_image, meta) in zip(tracker.steps, sent, strict=True):
            assert image is not None
            assert mask is not None
            np.testing.assert_array_equal(image, sent_image)
            assert mask.shape == sent_image.shape
            np.testing.assert_array_equal(mask, first.store.load_mask("r", pos, frame))
            if pos == "sim":
                np.testing.assert_array_equal(mask, meta.labels)  # type: ignore[attr-defined]
            assert len(dets) > 0
            assert set(dets.labels.tolist()) == set(np.unique(mask).tolist()) - {0}

    # what step returned comes back from the store, row for row with the detections
    history = first.store.history("r", "sim", 100)
    assert [h.frame for h in history] == list(range(6))
    for h, (frame, dets, _, _) in zip(history, trackers[0].steps, strict=True):
        assert h.embeddings is not None
        order = np.argsort(dets.labels)
        np.testing.assert_array_equal(h.detections.labels, dets.labels[order])
        expected = embedding_of(frame, dets)[order]
        np.testing.assert_allclose(h.embeddings, expected, rtol=1e-3)
        np.testing.assert_array_equal(h.embeddings[:, 0], h.detections.labels)
    first.store.close()  # the worker "dies"

    second = make_worker(db, zmq_context, closing, tracker_factory=factory)
    send(second, 6, 9)
    restored = trackers[-1].restored
    window = trackers[-1].history_window
    assert [h.frame for h in restored] == list(range(6 - window, 6))
    for h in restored:
        assert h.embeddings is not None
        assert h.embeddings.shape == (len(h.detections), 4)
        np.testing.assert_array_equal(h.embeddings[:, 0], h.detections.labels)
        np.testing.assert_array_equal(h.embeddings[:, 3], h.frame)
    assert [h.embeddings is not None for h in second.store.history("r", "sim", 100)] == [True] * 9


# ------------------------------------------------------------- hostile label images
def labelled_frame(i: int, labels: np.ndarray, run: str = "r") -> tuple[FrameHeader, np.ndarray]:
    header = FrameHeader(
        run_id=run,
        position="p",
        frame_index=i,
        timestamp=float(i),
        shape=labels.shape,  # type: ignore[arg-type]
        dtype="uint16",
        labels_dtype=labels.dtype.name,
    )
    return header, (labels > 0).astype(np.uint16) * 1000


def squares(shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    lab = np.zeros(shape, np.int32)
    lab[5:15, 5:15] = 1
    lab[30:40, 30:40] = 2
    return lab


def test_negative_labels_are_bad_input_not_storage_failures(tmp_path, zmq_context, closing):
    """Five such frames used to stop the worker 'because the store failed'."""
    worker = make_worker(tmp_path / "neg.db", zmq_context, closing)
    pusher = pusher_for(worker, zmq_context, closing)
    bad = squares()
    bad[50, 50] = -3
    for i in range(8):
        header, image = labelled_frame(i, bad)
        pusher.send_frame(header, image, bad)
    header, image = labelled_frame(8, squares())
    pusher.send_frame(header.model_copy(update={"previous_frame": 7}), image, squares())
    results = drain(worker, until_eos=False)
    assert [r.status for r in results] == ["rejected"] * 8 + ["stored"]
    assert all("negative labels (min -3)" in r.message for r in results[:8])
    assert worker.store.frame_indices("r", "p") == [8]
    assert worker._store_failures == 0


def test_huge_label_values_are_renumbered_in_bounded_memory(tmp_path, zmq_context, closing):
    """One pixel of 5,000,000 used to cost per-label arrays of 5,000,001 entries (~200 MB
    here; 16 GiB for 2**31-1), and uint32 labels beyond 2**31-1 wrapped to negatives."""
    import tracemalloc

    worker = make_worker(tmp_path / "big.db", zmq_context, closing)
    pusher = pusher_for(worker, zmq_context, closing)
    huge = squares((256, 256))
    huge[100:110, 100:110] = 5_000_000
    wide = squares((256, 256)).astype(np.uint32)
    wide[200:210, 200:210] = 4_000_000_000
    for i, labels in enumerate([huge, wide]):
        header, image = labelled_frame(i, labels)
        pusher.send_frame(header, image, labels)
    tracemalloc.start()
    try:
        results = drain(worker, until_eos=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.status for r in results] == ["stored", "stored"]
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB of Python/NumPy allocations"
    for frame, labels in enumerate([huge, wide]):
        mask = worker.store.load_mask("r", "p", frame)
        expected = np.searchsorted(np.unique(labels), labels).astype(np.int32)  # 0, 1, 2, 3
        np.testing.assert_array_equal(mask, expected)
        dets, _ = worker.store.frame_detections("r", "p", frame)
        assert dets.labels.tolist() == [1, 2, 3]
        assert dets.areas.tolist() == [100, 100, 100]


# ------------------------------------------------------------- bounded tracker memory
N_INTERLEAVED = 16
"""Frames per position (the simulator's first divisions happen by then)."""


def interleaved(worker: Worker, ctx, closing, positions: list[str]) -> None:  # type: ignore[no-untyped-def]
    pusher = pusher_for(worker, ctx, closing)
    for image, meta in gt_frames()[:N_INTERLEAVED]:
        for pos in positions:
            h = header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels)  # type: ignore[arg-type]
            pusher.send_frame(h.model_copy(update={"position": pos}), image, meta.labels)  # type: ignore[attr-defined]
    pusher.send_eos(EndOfStream(run_id="r", positions=tuple(positions)))
    assert all(r.status == "stored" for r in drain(worker, timeout_s=600))


def full_lineage(store: Store, positions: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pos in positions:
        out[pos] = (
            store.tracks("r", pos),
            [
                store.frame_detections("r", pos, f)[1].tolist()
                for f in store.frame_indices("r", pos)
            ],
            [
                (e["frame"], e["kind"], e["track_id"], e["daughters"], e["confidence"])
                for e in store.events("r", pos)
            ],
        )
    return out


@pytest.mark.parametrize("method", ["lstm", "lap"])
def test_trackers_beyond_the_limit_are_dropped_and_rebuilt_with_identical_lineages(
    tmp_path, zmq_context, closing, method
):
    """Three positions taking turns with room for one tracker: every frame rebuilds its
    position's tracker from the store, and every lineage equals the unbounded run's."""
    positions = ["A1", "B2", "C3"]

    def worker_with(db: str, limit: int) -> Worker:
        worker = make_worker(
            tmp_path / db,
            zmq_context,
            closing,
            tracker_factory=lambda shape: make_tracker(TrackConfig(method=method), shape),
        )
        worker.settings = worker.settings.model_copy(
            update={
                "worker": worker.settings.worker.model_copy(update={"max_live_trackers": limit})
            }
        )
        return worker

    unbounded = worker_with("all.db", 1000)
    interleaved(unbounded, zmq_context, closing, positions)
    bounded = worker_with("one.db", 1)
    interleaved(bounded, zmq_context, closing, positions)
    assert unbounded.trackers_dropped == 0
    assert bounded.trackers_dropped >= len(positions) * (N_INTERLEAVED - 1)
    assert full_lineage(bounded.store, positions) == full_lineage(unbounded.store, positions)
    events = full_lineage(bounded.store, positions)["A1"][2]
    assert any(e[1] == "division" for e in events)  # divisions to compare, too


def test_at_most_the_limit_of_trackers_is_in_memory(tmp_path, zmq_context, closing):
    worker = make_worker(tmp_path / "lim.db", zmq_context, closing)
    worker.settings = worker.settings.model_copy(
        update={"worker": worker.settings.worker.model_copy(update={"max_live_trackers": 3})}
    )
    pusher = pusher_for(worker, zmq_context, closing)
    image, meta = gt_frames()[0]
    live = []
    for i in range(10):
        h = header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels)  # type: ignore[arg-type]
        pusher.send_frame(h.model_copy(update={"position": f"P{i}"}), image, meta.labels)  # type: ignore[attr-defined]
        got = worker.poll_once(timeout_s=10)
        assert isinstance(got, FrameResult)
        assert got.status == "stored"
        live.append(sum(s.tracker is not None for s in worker.positions.values()))
    assert live == [1, 2, 3] + [3] * 7
    assert len(worker.positions) == 10  # the small summaries stay (status heartbeat)


# ------------------------------------------------------------- database deleted
def test_deleted_database_stops_the_worker_before_anything_more_is_acknowledged(
    tmp_path, zmq_context, closing
):
    from livetrack.errors import StoreLost
    from livetrack.messages import FrameCommitted

    db = tmp_path / "del.db"
    worker = make_worker(db, zmq_context, closing, publisher=True)
    assert worker.publisher is not None
    sub = closing(EventSubscriber(worker.publisher.endpoint, context=zmq_context))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until the subscription is live
        worker.publisher.publish(worker.status("idle"))
        if sub.recv(timeout_s=0.1) is not None:
            break
    pusher = pusher_for(worker, zmq_context, closing)
    frames = gt_frames()

    def send(i: int) -> None:
        image, meta = frames[i]
        h = header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels)  # type: ignore[arg-type]
        pusher.send_frame(h, image, meta.labels)  # type: ignore[attr-defined]

    for i in range(3):
        send(i)
        assert worker.poll_once(timeout_s=10).status == "stored"  # type: ignore[union-attr]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()
    send(3)
    with pytest.raises(StoreLost, match=r"del\.db was deleted"):
        worker.poll_once(timeout_s=10)
    send(1)  # a re-send of a frame the lost file held: no "duplicate" acknowledgement
    with pytest.raises(StoreLost):
        worker.poll_once(timeout_s=10)
    acks = []
    while (msg := sub.recv(timeout_s=0.5)) is not None:
        if isinstance(msg, FrameCommitted):
            acks.append(msg.frame_index)
    assert acks == [0, 1, 2]


def test_status_names_what_really_runs_after_a_fallback(tmp_path, zmq_context, closing):
    """Configured learned + lstm, but the factories fall back (no torch, say) to classical
    and lap: the status (and so the dashboard header) must say classical / lap once a
    position runs, not what was asked for."""
    from livetrack.config import SegmentConfig, TrackConfig
    from livetrack.segment.classical import ClassicalSegmenter
    from livetrack.track.lap import lap_tracker

    worker = make_worker(
        tmp_path / "fb.db",
        zmq_context,
        closing,
        segmenter_factory=lambda: ClassicalSegmenter(SegmentConfig(nucleus_diameter_px=16)),
        tracker_factory=lambda shape: lap_tracker(TrackConfig(method="lap"), shape),
    )
    before = worker.status("idle")
    assert (before.segmenter, before.tracker) == ("learned", "lstm")  # nothing runs yet
    pusher = pusher_for(worker, zmq_context, closing)
    pump(SimulatorSource(SIM.model_copy(update={"n_frames": 3})), pusher, "fb", description="sim")
    drain(worker)
    assert worker.store.frame_indices("fb", "sim") == [0, 1, 2]
    after = worker.status("finished")
    assert (after.segmenter, after.tracker) == ("classical", "lap")


def test_positions_share_one_loaded_model_of_each_kind(tmp_path, zmq_context, closing):
    """A 96-well plate must not hold 96 U-Nets and 96 tracking networks: the worker loads
    each learned model once and every position's segmenter/tracker uses that copy (each
    keeps its own scale and tracks)."""
    worker = make_worker(tmp_path / "share.db", zmq_context, closing)
    assert (worker.settings.segment.method, worker.settings.track.method) == ("learned", "lstm")
    pusher = pusher_for(worker, zmq_context, closing)
    config = SIM.model_copy(update={"n_frames": 2, "height": 96, "width": 96, "n_cells": 5})
    for image, meta in SimulatorSource(config).frames():
        for position in ("A1", "A2", "B1"):
            m = replace(meta, position=position)
            pusher.send_frame(header_for("plate", image, m, source="t", total_frames=2), image)
    results = drain(worker, until_eos=False)
    assert [r.status for r in results] == ["stored"] * 6
    states = list(worker.positions.values())
    assert len(states) == 3
    assert len({id(s.segmenter.model) for s in states}) == 1  # type: ignore[attr-defined]
    assert len({id(s.tracker.scorer.model) for s in states}) == 1  # type: ignore[union-attr]
    assert len({id(s.segmenter._scale) for s in states}) == 3  # type: ignore[attr-defined]
    assert worker.shared_models["segment"] is states[0].segmenter.model  # type: ignore[attr-defined]


# ------------------------------------------------------------- segmenter bug
class _BrokenOnFrame:
    """A segmenter with a bug: classical segmentation, except that the ``broken``-th call
    raises ValueError (as a NumPy shape mistake would)."""

    name = "broken"

    def __init__(self, broken: int) -> None:
        from livetrack.config import SegmentConfig
        from livetrack.segment.classical import ClassicalSegmenter

        self.inner = ClassicalSegmenter(SegmentConfig(nucleus_diameter_px=16))
        self.calls = 0
        self.broken = broken

    def predict(self, image: np.ndarray, pixel_size_um: float | None = None) -> Any:
        self.calls += 1
        if self.calls == self.broken:
            raise ValueError("operands could not be broadcast together")
        return self.inner.predict(image, pixel_size_um)

    def restore_scale(self, state: Any) -> None:
        self.inner.restore_scale(state)


def test_a_segmenter_bug_stops_the_worker_and_is_not_a_rejected_frame(
    tmp_path, zmq_context, closing
):
    """A ValueError from the segmenter is a bug, not bad input: the worker must not report
    the frame as rejected (and go on rejecting); it stops with an error naming the frame
    and the exception, keeps every committed frame, and the run resumes."""
    from livetrack.errors import LivetrackError
    from livetrack.worker import WorkerStopped

    db = tmp_path / "bug.db"
    results: list[FrameResult] = []
    worker = make_worker(
        db,
        zmq_context,
        closing,
        segmenter_factory=lambda: _BrokenOnFrame(3),
        on_frame=results.append,
    )
    pusher = pusher_for(worker, zmq_context, closing)
    frames = list(SimulatorSource(SIM.model_copy(update={"n_frames": 4})).frames())
    for image, meta in frames:
        pusher.send_frame(header_for("bug", image, meta, source="t", total_frames=4), image)
    for _ in range(2):
        got = worker.poll_once(timeout_s=10)
        assert isinstance(got, FrameResult)
        assert got.status == "stored"
    with pytest.raises(WorkerStopped, match=r"frame sim/2: the segmenter failed \(ValueError: "):
        worker.poll_once(timeout_s=10)
    assert issubclass(WorkerStopped, LivetrackError)  # the CLI reports it as one line
    assert worker.frames_rejected == 0
    assert [r.status for r in results] == ["stored", "stored"]
    assert worker.store.frame_indices("bug", "sim") == [0, 1]
    worker.store.close()

    fixed = make_worker(db, zmq_context, closing)
    pusher = pusher_for(fixed, zmq_context, closing)
    for image, meta in frames[2:]:
        pusher.send_frame(header_for("bug", image, meta, source="t", total_frames=4), image)
    assert [fixed.poll_once(timeout_s=10).status for _ in range(2)] == ["stored", "stored"]  # type: ignore[union-attr]
    assert fixed.store.frame_indices("bug", "sim") == [0, 1, 2, 3]


def test_a_bad_frame_from_the_segmenter_is_still_a_rejection(tmp_path, zmq_context, closing):
    """livetrack's typed bad input (BadFrame) raised while segmenting rejects that frame,
    and the next frame is stored."""
    from livetrack.errors import BadFrame

    class RefusesSecond(_BrokenOnFrame):
        def predict(self, image: np.ndarray, pixel_size_um: float | None = None) -> Any:
            if self.calls == 1:
                self.calls += 1
                raise BadFrame("saturated frame")
            return super().predict(image, pixel_size_um)

    worker = make_worker(
        tmp_path / "bad.db", zmq_context, closing, segmenter_factory=lambda: RefusesSecond(0)
    )
    pusher = pusher_for(worker, zmq_context, closing)
    for image, meta in SimulatorSource(SIM.model_copy(update={"n_frames": 3})).frames():
        pusher.send_frame(header_for("bad", image, meta, source="t", total_frames=3), image)
    got = [worker.poll_once(timeout_s=10) for _ in range(3)]
    assert [g.status for g in got] == ["stored", "rejected", "stored"]  # type: ignore[union-attr]
    assert "segmentation failed: saturated frame" in got[1].message  # type: ignore[union-attr]
    assert worker.store.frame_indices("bad", "sim") == [0, 2]


# ------------------------------------------------------------- resume in one question
class _OneQuestion(Store):
    """A store that counts resume questions and refuses the unbounded reads a resume used
    to make (every track, every division row, a whole mask for its shape)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.resumes: list[tuple[str, str, int]] = []

    def resume_state(self, run_id: str, position: str, window: int, **kw: Any) -> Any:
        self.resumes.append((run_id, position, window))
        return super().resume_state(run_id, position, window, **kw)

    def tracks(self, run_id: str, position: str) -> list[TrackRecord]:
        raise AssertionError("a resume must not load every track of the position")

    def events(self, *args: Any, **kw: Any) -> list[dict[str, Any]]:
        raise AssertionError("a resume must not load event rows")

    def load_mask(self, run_id: str, position: str, frame: int) -> Any:
        raise AssertionError("a resume must not decode a mask")


def test_a_restarted_worker_resumes_each_position_with_one_question(tmp_path, zmq_context, closing):
    """Kill after 9 frames; the new worker asks the store once per position (with the
    tracker's window) and continues, through the end-of-stream, without the unbounded
    reads; the division count it reports is the stored one."""
    frames = gt_frames()
    db = tmp_path / "one.db"
    first = make_worker(db, zmq_context, closing)
    pusher = pusher_for(first, zmq_context, closing)
    for image, meta in frames[:9]:
        h = header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels)  # type: ignore[arg-type]
        pusher.send_frame(h, image, meta.labels)  # type: ignore[attr-defined]
    drain(first, until_eos=False)
    first.store.close()

    store = closing(_OneQuestion(db))
    settings = first.settings
    second = Worker(settings, store, closing(FramePuller("tcp://127.0.0.1:0", context=zmq_context)))
    pusher = pusher_for(second, zmq_context, closing)
    for image, meta in frames[9:]:
        h = header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels)  # type: ignore[arg-type]
        pusher.send_frame(h, image, meta.labels)  # type: ignore[attr-defined]
    results = drain(second, until_eos=False)
    assert [r.status for r in results] == ["stored"] * (len(frames) - 9)
    stored_divisions = Store.events(store, "r", "sim", kinds=["division"])  # the real rows
    assert stored_divisions, "the simulator divides cells: there are divisions to count"
    (status,) = second.status("running").positions
    assert status.divisions == len(stored_divisions)
    pusher.send_eos(EndOfStream(run_id="r", positions=("sim",)))
    drain(second)
    assert ("r", "sim") not in second.positions  # finished at the end-of-stream
    assert len(store.resumes) == 1
    run_id, position, window = store.resumes[0]
    assert (run_id, position) == ("r", "sim")
    assert window >= 2  # the tracker's history window, not the movie
    assert store.frame_indices("r", "sim") == list(range(len(frames)))
