"""Switching a live worker's segmentation model between frames (``UseModel``,
``livetrack use-model``), and the per-frame record of which models produced each frame.
Real sockets on 127.0.0.1, a real SQLite file, the shipped model and a second real one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zmq
from livetrack.drivers.simulator import SimulatorSource
from livetrack.simulators.nuclei import SimulationConfig

from livetrack.cli import main
from livetrack.config import Settings
from livetrack.errors import BadMessage
from livetrack.messages import EndOfStream, ModelAnswer, UseModel, WorkerStatus
from livetrack.models import SHIPPED_SEGMENT_MODEL, weights_digest
from livetrack.pump import header_for
from livetrack.store import Store
from livetrack.transport import (
    EventPublisher,
    FramePuller,
    FramePusher,
    decode_driver_message,
    decode_event,
)
from livetrack.worker import FrameResult, Worker

torch = pytest.importorskip("torch")

SIM = SimulationConfig(seed=5, n_frames=6, height=96, width=96, n_cells=5, nucleus_diameter_px=16)
SHIPPED_ID = f"learned {SHIPPED_SEGMENT_MODEL.name} {weights_digest(SHIPPED_SEGMENT_MODEL)[:12]}"  # type: ignore[index]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real model: the shipped one with its last layer's bias nudged (other
    weights, other sha256, same architecture)."""
    from livetrack.segment.model import load_model, save_model

    model = load_model(SHIPPED_SEGMENT_MODEL)
    with torch.no_grad():
        last = [p for name, p in model.named_parameters() if name.endswith("bias")][-1]
        last.add_(0.25)
    out = tmp_path_factory.mktemp("models") / "seg-finetuned"
    save_model(model, out, {"provenance": "test"})
    return out


def _worker(db: Path, ctx: zmq.Context, closing) -> Worker:  # type: ignore[type-arg]
    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=1000, context=ctx))
    publisher = closing(EventPublisher("tcp://127.0.0.1:0", context=ctx))
    settings = Settings().model_copy(
        update={"worker": Settings().worker.model_copy(update={"exit_on_eos": True})}
    )
    return Worker(settings, closing(Store(db)), puller, publisher)


def _send(pusher: FramePusher, frames: list, run: str = "live") -> None:  # type: ignore[type-arg]
    for image, meta in frames:
        pusher.send_frame(header_for(run, image, meta, source="t", total_frames=6), image)


def _handle(worker: Worker, n: int) -> list[object]:
    """Poll until ``n`` messages were handled (frames, requests)."""
    got: list[object] = []
    for _ in range(200):
        msg = worker.poll_once(timeout_s=0.5)
        if msg is not None:
            got.append(msg)
        if len(got) == n:
            return got
    raise AssertionError(f"handled {len(got)} of {n} messages")


def test_use_model_round_trips_on_the_wire_as_one_part() -> None:
    request = UseModel(segment_model="/models/seg-ft", request_id="abc")
    assert decode_driver_message([request.model_dump_json().encode()]) == request
    with pytest.raises(BadMessage, match="use-model request must be 1 part"):
        decode_driver_message([request.model_dump_json().encode(), b"extra"])
    with pytest.raises(BadMessage):
        decode_driver_message([b'{"kind": "use_model", "segment_model": ""}'])
    answer = ModelAnswer(request_id="abc", ok=False, segmenter="classical", timestamp=1.0)
    assert decode_event([b"model", answer.model_dump_json().encode()]) == answer
    both = UseModel(segment_model="/m/seg", track_model="/m/track", request_id="b")
    assert decode_driver_message([both.model_dump_json().encode()]) == both
    track_only = UseModel(track_model="/m/track")
    assert decode_driver_message([track_only.model_dump_json().encode()]) == track_only
    with pytest.raises(BadMessage, match="segment_model, a track_model or both"):
        decode_driver_message([b'{"kind": "use_model", "request_id": "none"}'])


def test_a_live_worker_switches_models_between_frames_and_records_each_frame(
    tmp_path, zmq_context, closing, other_model
):
    """Frames 0–2 with the shipped model, then the request, then frames 3–5 with the
    other one: the frame_models table says so frame by frame, each position keeps its
    nucleus scale, and the lineage goes on in the same run."""
    worker = _worker(tmp_path / "live.db", zmq_context, closing)
    pusher = closing(FramePusher(worker.puller.endpoint, hwm=1000, context=zmq_context))
    frames = list(SimulatorSource(SIM).frames())
    _send(pusher, frames[:3])
    assert [r.status for r in _handle(worker, 3)] == ["stored"] * 3  # type: ignore[attr-defined]
    state = worker.positions[("live", "sim")]
    old_segmenter = state.segmenter
    # The scale the next frame would get without a switch: measured from the detections, it
    # can settle on frame 2's measurement after frame 2 was segmented.
    reached = old_segmenter._scale._settled  # type: ignore[union-attr]
    assert reached is not None

    pusher.send_use_model(UseModel(segment_model=str(other_model), request_id="r1"))
    (answer,) = _handle(worker, 1)
    other_id = f"learned seg-finetuned {weights_digest(other_model)[:12]}"  # type: ignore[index]
    assert answer == ModelAnswer(
        request_id="r1",
        ok=True,
        segmenter=other_id,
        tracker=answer.tracker,  # type: ignore[attr-defined]
        timestamp=answer.timestamp,  # type: ignore[attr-defined]
    )
    assert answer.tracker.startswith("lstm track-lstm-v4 ")  # type: ignore[attr-defined]
    assert worker.shared_models["segment"] is state.segmenter.model  # type: ignore[attr-defined]

    _send(pusher, frames[3:])
    pusher.send_eos(EndOfStream(run_id="live", positions=("sim",), frames_sent=6))
    handled = _handle(worker, 4)
    assert [r.status for r in handled if isinstance(r, FrameResult)] == ["stored"] * 3
    with Store(tmp_path / "live.db", readonly=True) as store:
        records = store.frame_models("live", "sim")
        tracker_id = records[0][2]
        assert tracker_id.startswith("lstm track-lstm-v4 ")
        assert records == [
            *[(f, SHIPPED_ID, tracker_id) for f in range(3)],
            *[(f, other_id, tracker_id) for f in range(3, 6)],
        ]
        assert store.frame_indices("live", "sim") == list(range(6))
    # the notebook view of the same record
    from livetrack import open_run

    with open_run(tmp_path / "live.db") as result:
        table = result.models
    assert list(table.columns) == ["position", "frame", "segmenter", "tracker"]
    assert table["segmenter"].tolist() == [SHIPPED_ID] * 3 + [other_id] * 3
    assert table["frame"].tolist() == list(range(6))
    with Store(tmp_path / "live.db", readonly=True) as store:
        diameters = [
            d for (d,) in store.conn.execute("SELECT diameter_px FROM scale ORDER BY frame")
        ]
    assert len(diameters) == 6
    assert state.segmenter is not old_segmenter  # rebuilt for the new model, from the store
    assert diameters[3] == reached  # the new model segments at the scale reached


def test_a_model_that_cannot_load_is_refused_and_the_worker_keeps_its_own(
    tmp_path, zmq_context, closing
):
    worker = _worker(tmp_path / "bad.db", zmq_context, closing)
    pusher = closing(FramePusher(worker.puller.endpoint, hwm=1000, context=zmq_context))
    frames = list(SimulatorSource(SIM.model_copy(update={"n_frames": 2})).frames())
    _send(pusher, frames[:1])
    _handle(worker, 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "weights.pt").write_bytes(b"not a model")
    # a missing folder, broken weights, and paths that make Path.expanduser raise
    # (no such user, a NUL byte): all refusals from the wire, never a crash of the worker
    for folder in (str(tmp_path / "no-such-model"), str(broken), "~nosuchuser-lt/m", "~a\x00b"):
        pusher.send_use_model(UseModel(segment_model=folder, request_id="x"))
        (answer,) = _handle(worker, 1)
        assert isinstance(answer, ModelAnswer)
        assert (answer.ok, answer.segmenter) == (False, SHIPPED_ID)
        assert folder in answer.message
    _send(pusher, frames[1:])
    _handle(worker, 1)
    with Store(tmp_path / "bad.db", readonly=True) as store:
        assert [s for _, s, _ in store.frame_models("live", "sim")] == [SHIPPED_ID] * 2


def _serve(worker: Worker, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            worker.poll_once(timeout_s=0.1)

    thread = threading.Thread(target=loop, name="test-worker")
    thread.start()
    return thread


def test_the_command_switches_a_running_worker_and_says_so(
    tmp_path, zmq_context, closing, other_model, capsys
):
    """``livetrack use-model`` finds the worker's frames endpoint in its heartbeat, sends
    the request and waits for the answer: exit 0 naming the new model, exit 1 with the
    worker's reason for a model it refuses."""
    worker = _worker(tmp_path / "cmd.db", zmq_context, closing)
    stop = threading.Event()
    thread = _serve(worker, stop)
    events = worker.publisher.endpoint  # type: ignore[union-attr]
    try:
        assert main(["use-model", str(other_model), "--events", events, "--timeout", "30"]) == 0
        out = capsys.readouterr().out
        assert "learned seg-finetuned" in out
        code = main(["use-model", str(tmp_path / "nothing"), "--events", events])
        assert code == 1
        err = capsys.readouterr().err
        assert "kept learned seg-finetuned" in err
        assert "nothing" in err
    finally:
        stop.set()
        thread.join()
    assert worker._segment_model_dir == other_model


def test_the_command_without_a_worker_fails_with_one_line(capsys) -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as sock:  # a port nobody publishes on
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        sock.close()
        code = main(["use-model", "m", "--events", f"tcp://127.0.0.1:{port}", "--timeout", "1"])
    assert code == 1
    assert "no worker heard" in capsys.readouterr().err


def test_the_heartbeat_announces_where_frames_go(tmp_path, zmq_context, closing) -> None:
    worker = _worker(tmp_path / "hb.db", zmq_context, closing)
    status = worker.status("idle")
    assert isinstance(status, WorkerStatus)
    assert status.frames_endpoint == worker.puller.endpoint
    assert status.frames_endpoint.startswith("tcp://127.0.0.1:")


def test_a_model_refitted_into_the_same_folder_is_recorded_by_its_new_weights(
    tmp_path, zmq_context, closing, other_model
):
    """Fine-tune again into the same folder and switch to it again: the answer and the
    frame record name the weights loaded now, not the ones first seen there."""
    import shutil

    from livetrack.segment.model import load_model, save_model

    folder = tmp_path / "seg-mine"
    shutil.copytree(other_model, folder)
    worker = _worker(tmp_path / "refit.db", zmq_context, closing)
    pusher = closing(FramePusher(worker.puller.endpoint, hwm=1000, context=zmq_context))
    frames = list(SimulatorSource(SIM.model_copy(update={"n_frames": 2})).frames())
    _send(pusher, frames[:1])
    pusher.send_use_model(UseModel(segment_model=str(folder), request_id="1"))
    _frame, first = _handle(worker, 2)
    model = load_model(folder)
    with torch.no_grad():
        next(iter(model.parameters())).mul_(1.01)
    save_model(model, folder, {"provenance": "refit"})
    pusher.send_use_model(UseModel(segment_model=str(folder), request_id="2"))
    (second,) = _handle(worker, 1)
    new_id = f"learned seg-mine {weights_digest(folder)[:12]}"  # type: ignore[index]
    assert first.segmenter != new_id  # type: ignore[attr-defined]
    assert second.segmenter == new_id  # type: ignore[attr-defined]
    _send(pusher, frames[1:])
    _handle(worker, 1)
    with Store(tmp_path / "refit.db", readonly=True) as store:
        assert store.frame_models("live", "sim")[-1][1] == new_id
        # a run the worker opens from now on records the model it will segment with
    assert worker.settings.segment.model_dir == folder


def test_a_wildcard_frames_endpoint_is_reached_on_the_events_host() -> None:
    from livetrack.cli.live import _reachable

    assert _reachable("tcp://0.0.0.0:5557", "tcp://10.0.0.7:5558") == "tcp://10.0.0.7:5557"
    assert _reachable("tcp://*:5557", "tcp://scope-pc:5558") == "tcp://scope-pc:5557"
    assert _reachable("tcp://127.0.0.1:40123", "tcp://127.0.0.1:5558") == "tcp://127.0.0.1:40123"
    assert _reachable("", "tcp://127.0.0.1:5558") == ""


# ---------------------------------------------------------------- the tracking model

TRACK_SIM = SimulationConfig(
    seed=11, n_frames=12, height=128, width=128, n_cells=9, nucleus_diameter_px=14
)
SWITCH_AFTER = 4
"""Frames 0..4 tracked with the shipped (v4) model, 5.. with the other one."""


@pytest.fixture(scope="module")
def gt_movie() -> list:  # type: ignore[type-arg]
    return list(SimulatorSource(TRACK_SIM).frames())


def _send_labelled(pusher: FramePusher, frames: list, run: str = "live") -> None:  # type: ignore[type-arg]
    for image, meta in frames:
        header = header_for(
            run, image, meta, source="t", total_frames=len(frames), labels=meta.labels
        )
        pusher.send_frame(header, image, meta.labels)


def _track_worker(db: Path, ctx: zmq.Context, closing) -> Worker:  # type: ignore[type-arg]
    """The shipped settings (lstm tracker); frames carry their true labels."""
    return _worker(db, ctx, closing)


def _lineage(db: Path) -> tuple[object, ...]:
    with Store(db, readonly=True) as store:
        frames = store.frame_indices("live", "sim")
        rows = []
        for f in frames:
            det, track_ids = store.frame_detections("live", "sim", f)
            rows.append((f, det.labels.tolist(), track_ids.tolist()))
        return (
            frames,
            sorted(map(repr, store.tracks("live", "sim"))),
            rows,
            store.frame_models("live", "sim"),
        )


def _other_tracker(tmp_path: Path) -> Path:
    """A second real tracking model: the shipped v3, copied (its own folder)."""
    import shutil

    from livetrack.models import SHIPPED_TRACK_MODEL

    folder = tmp_path / "track-mine"
    shutil.copytree(SHIPPED_TRACK_MODEL.parent / "track-lstm-v3", folder)
    return folder


def test_a_live_worker_switches_its_tracker_between_frames_and_open_tracks_go_on(
    tmp_path, zmq_context, closing, gt_movie
):
    """After the switch every live position has a tracker on the new network, rebuilt
    from the store: the open tracks where they stood, the frames before the switch without
    the old model's embeddings (positions kept); the frames after it are recorded with the
    new model, and no track is cut at the switch."""
    folder = _other_tracker(tmp_path)
    db = tmp_path / "switch.db"
    worker = _track_worker(db, zmq_context, closing)
    pusher = closing(FramePusher(worker.puller.endpoint, hwm=1000, context=zmq_context))
    _send_labelled(pusher, gt_movie[: SWITCH_AFTER + 1])
    _handle(worker, SWITCH_AFTER + 1)
    old_tracker = worker.positions[("live", "sim")].tracker
    open_before = set(old_tracker.open_tracks.ids.tolist())  # type: ignore[union-attr]

    pusher.send_use_model(UseModel(track_model=str(folder), request_id="t1"))
    (answer,) = _handle(worker, 1)
    new_id = f"lstm track-mine {weights_digest(folder)[:12]}"  # type: ignore[index]
    assert (answer.ok, answer.tracker) == (True, new_id)  # type: ignore[attr-defined]
    assert answer.segmenter == "given labels" or answer.segmenter.startswith("learned")  # type: ignore[attr-defined]
    tracker = worker.positions[("live", "sim")].tracker
    assert tracker is not old_tracker
    assert tracker.scorer.model is worker.shared_models["track"][0]  # type: ignore[union-attr]
    assert set(tracker.open_tracks.ids.tolist()) == open_before  # type: ignore[union-attr]
    rings = tracker.scorer._rings  # type: ignore[union-attr]
    assert len(rings.slot) == len(open_before)
    assert (rings.frame[list(rings.slot.values())] == SWITCH_AFTER).any(axis=1).all()
    assert not rings.emb.any()  # the old model's embeddings are not the new one's

    _send_labelled(pusher, gt_movie[SWITCH_AFTER + 1 :])
    _handle(worker, len(gt_movie) - SWITCH_AFTER - 1)
    assert rings.emb.any()  # written by the new model since
    pusher.send_eos(EndOfStream(run_id="live", positions=("sim",), frames_sent=len(gt_movie)))
    _handle(worker, 1)
    with Store(db, readonly=True) as store:
        trackers = [t for _, _, t in store.frame_models("live", "sim")]
        assert trackers[SWITCH_AFTER + 1 :] == [new_id] * (len(gt_movie) - SWITCH_AFTER - 1)
        assert trackers[0].startswith("lstm track-lstm-v4 ")
        assert set(trackers[: SWITCH_AFTER + 1]) == {trackers[0]}
        # tracks open at the switch continue past it: none ends at the switch frame
        # unless its cell really left (the true lineage has no end there)
        ended_at_switch = [
            t
            for t in store.tracks("live", "sim")
            if t.end_frame == SWITCH_AFTER and t.track_id in open_before
        ]
        assert not ended_at_switch
        (run,) = store.runs()
    (switch,) = run["config"]["switches"]
    assert switch["track_model"] == str(folder)
    assert switch["tracker"] == new_id
    assert switch["after_frames"] == {"sim": SWITCH_AFTER}
    assert run["config"]["track"]["model_dir"] == str(folder)
    from livetrack import open_run

    with open_run(db) as result:  # the notebook view of the same record
        assert result.config["switches"] == [switch]
        assert result.position("sim").config["models"] == run["config"]["models"]


def test_a_restarted_worker_goes_on_with_the_switched_tracker_exactly(
    tmp_path, zmq_context, closing, gt_movie
):
    """Switch after frame 4, lose the worker after frame 7, restart it with the ORIGINAL
    settings: it follows the run's recorded switch (no option needed) and the lineage and
    per-frame model record equal an uninterrupted run's, frame for frame."""
    folder = _other_tracker(tmp_path)
    crash_after = 7

    straight = _track_worker(tmp_path / "straight.db", zmq_context, closing)
    pusher = closing(FramePusher(straight.puller.endpoint, hwm=1000, context=zmq_context))
    _send_labelled(pusher, gt_movie[: SWITCH_AFTER + 1])
    pusher.send_use_model(UseModel(track_model=str(folder)))
    _send_labelled(pusher, gt_movie[SWITCH_AFTER + 1 :])
    pusher.send_eos(EndOfStream(run_id="live", positions=("sim",), frames_sent=len(gt_movie)))
    _handle(straight, len(gt_movie) + 2)

    first = _track_worker(tmp_path / "crash.db", zmq_context, closing)
    pusher = closing(FramePusher(first.puller.endpoint, hwm=1000, context=zmq_context))
    _send_labelled(pusher, gt_movie[: SWITCH_AFTER + 1])
    pusher.send_use_model(UseModel(track_model=str(folder)))
    _send_labelled(pusher, gt_movie[SWITCH_AFTER + 1 : crash_after + 1])
    _handle(first, crash_after + 2)
    first.store.close()  # the worker is gone; its run was never ended

    second = _track_worker(tmp_path / "crash.db", zmq_context, closing)
    assert second._track_model_dir is None  # started with the shipped model, as the first
    pusher = closing(FramePusher(second.puller.endpoint, hwm=1000, context=zmq_context))
    _send_labelled(pusher, gt_movie[crash_after + 1 :])
    pusher.send_eos(EndOfStream(run_id="live", positions=("sim",), frames_sent=len(gt_movie)))
    results = _handle(second, len(gt_movie) - crash_after)
    assert [r.status for r in results if isinstance(r, FrameResult)] == ["stored"] * (
        len(gt_movie) - crash_after - 1
    )
    assert second._track_model_dir == folder
    assert _lineage(tmp_path / "crash.db") == _lineage(tmp_path / "straight.db")


def test_a_run_switched_to_a_model_that_is_gone_is_not_resumed_without_it(
    tmp_path, zmq_context, closing, gt_movie
):
    """The folder the run was switched to was deleted before the restart: the worker
    refuses the run's frames with a reason that says so (nothing is tracked with another
    model behind the user's back), and keeps what was stored."""
    import shutil

    folder = _other_tracker(tmp_path)
    first = _track_worker(tmp_path / "gone.db", zmq_context, closing)
    pusher = closing(FramePusher(first.puller.endpoint, hwm=1000, context=zmq_context))
    _send_labelled(pusher, gt_movie[:2])
    pusher.send_use_model(UseModel(track_model=str(folder)))
    _handle(first, 3)
    first.store.close()
    shutil.rmtree(folder)

    second = _track_worker(tmp_path / "gone.db", zmq_context, closing)
    pusher = closing(FramePusher(second.puller.endpoint, hwm=1000, context=zmq_context))
    _send_labelled(pusher, gt_movie[2:3])
    (result,) = _handle(second, 1)
    assert result.status == "rejected"  # type: ignore[attr-defined]
    assert "was switched to" in result.message  # type: ignore[attr-defined]
    assert str(folder) in result.message  # type: ignore[attr-defined]
    with Store(tmp_path / "gone.db", readonly=True) as store:
        assert store.frame_indices("live", "sim") == [0, 1]


def test_the_command_switches_the_tracker_and_needs_a_model(tmp_path, zmq_context, closing, capsys):
    folder = _other_tracker(tmp_path)
    worker = _worker(tmp_path / "cmdt.db", zmq_context, closing)
    stop = threading.Event()
    thread = _serve(worker, stop)
    events = worker.publisher.endpoint  # type: ignore[union-attr]
    try:
        code = main(
            ["use-model", "--track-model", str(folder), "--events", events, "--timeout", "30"]
        )
        assert code == 0
        assert "tracks with lstm track-mine" in capsys.readouterr().out
        assert main(["use-model", "--events", events]) == 1
        assert "MODEL_DIR, a --track-model DIR or both" in capsys.readouterr().err
    finally:
        stop.set()
        thread.join()
    assert worker._track_model_dir == folder
    assert worker.settings.track.model_dir == str(folder)


def _switch_recorded(db: Path, run_id: str, folder: Path) -> None:
    """What a live ``use-model --track-model`` leaves in the store of a run that then
    stopped: its config names the tracker and lists the switch."""
    from livetrack.worker import run_config

    with Store(db) as store:
        stored = store.run_config(run_id)
        assert stored is not None
        settings = Settings().model_validate({k: stored[k] for k in ("segment", "track")})
        switched = settings.model_copy(
            update={"track": settings.track.model_copy(update={"model_dir": str(folder)})}
        )
        sections = {k: run_config(switched)[k] for k in ("segment", "track", "models")}
        record = {"timestamp": 0.0, "after_frames": {"sim": 5}, "track_model": str(folder)}
        store.record_model_switch(sections, {run_id: record})


CLI_SIM = ["--seed", "5", "--size", "128", "128", "--cells", "8", "--diameter", "16"]


def test_the_same_command_resumes_a_switched_run_with_the_switched_tracker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``livetrack run`` checks a resume against the run's settings before it starts the
    source: a run switched to another tracker while it ran is resumed by its original
    command, on the switched tracker; when that model is gone, the command exits 1 saying
    so and stores nothing."""
    import shutil

    folder = _other_tracker(tmp_path)
    db = tmp_path / "cli.db"
    common = [*CLI_SIM, "--db", str(db), "--no-tui", "--events", "tcp://127.0.0.1:0"]
    assert main(["run", "--frames", "6", *common, "--run-id", "r1"]) == 0
    _switch_recorded(db, "r1", folder)
    capsys.readouterr()

    assert main(["run", "--frames", "9", *common, "--run-id", "r1"]) == 0
    assert "resuming with them" in capsys.readouterr().err
    with Store(db, readonly=True) as store:
        trackers = [t for _, _, t in store.frame_models("r1", "sim")]
    new_id = f"lstm track-mine {weights_digest(folder)[:12]}"  # type: ignore[index]
    assert trackers[6:] == [new_id] * 3
    assert trackers[0].startswith("lstm track-lstm-v4 ")

    shutil.rmtree(folder)
    assert main(["run", "--frames", "12", *common, "--run-id", "r1"]) == 1
    err = capsys.readouterr().err
    assert "was switched to the tracking model" in err
    assert str(folder) in err
    with Store(db, readonly=True) as store:
        assert store.frame_indices("r1", "sim") == list(range(9))


def test_a_run_begun_after_a_switch_resumes_with_the_switched_models(
    tmp_path, zmq_context, closing, gt_movie
):
    """The switch came before the run's first frame: the run records it when it begins,
    so a worker restarted with the original settings goes on with the switched tracker."""
    folder = _other_tracker(tmp_path)
    db = tmp_path / "later.db"
    first = _track_worker(db, zmq_context, closing)
    pusher = closing(FramePusher(first.puller.endpoint, hwm=1000, context=zmq_context))
    pusher.send_use_model(UseModel(track_model=str(folder)))
    _send_labelled(pusher, gt_movie[:3])
    _handle(first, 4)
    first.store.close()

    second = _track_worker(db, zmq_context, closing)
    pusher = closing(FramePusher(second.puller.endpoint, hwm=1000, context=zmq_context))
    _send_labelled(pusher, gt_movie[3:5])
    results = _handle(second, 2)
    assert [r.status for r in results] == ["stored"] * 2  # type: ignore[attr-defined]
    with Store(db, readonly=True) as store:
        trackers = {t for _, _, t in store.frame_models("live", "sim")}
        (run,) = store.runs()
    assert trackers == {f"lstm track-mine {weights_digest(folder)[:12]}"}  # type: ignore[index]
    assert run["config"]["switches"][0]["after_frames"] == {}
