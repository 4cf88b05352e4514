"""The wire models: frozen, strict, discriminated by ``kind``, bounded."""

from __future__ import annotations

import json

import pydantic
import pytest

from livetrack.messages import (
    DRIVER_ADAPTER,
    MAX_FRAMES,
    MAX_PIXELS,
    PUBLISHED_ADAPTER,
    SCHEMA_VERSION,
    EndOfStream,
    FrameCommitted,
    FrameHeader,
    FrameRejected,
    PositionStatus,
    TrackEvent,
    WorkerStatus,
)


def header(**kw: object) -> FrameHeader:
    base: dict[str, object] = {
        "run_id": "r",
        "position": "A1",
        "frame_index": 3,
        "timestamp": 1.7e9,
        "shape": (4, 6),
        "dtype": "uint16",
    }
    base.update(kw)
    return FrameHeader(**base)  # type: ignore[arg-type]


def status() -> WorkerStatus:
    return WorkerStatus(
        run_id="r",
        state="running",
        frames_processed=10,
        frames_rejected=1,
        fps=2.5,
        stage_ms={"segment": 12.0, "track": 1.5},
        lag_s=0.3,
        device="cpu",
        positions=(PositionStatus(position="A1", last_frame=9, n_cells=4, active_tracks=4,
                                  divisions=1, updated=1.7e9),),
        timestamp=1.7e9,
        worker_id="abc",
    )  # fmt: skip


DRIVER_MESSAGES = [
    header(labels_dtype="int32", pixel_size_um=0.65, total_frames=10, previous_frame=2),
    EndOfStream(run_id="r", positions=("A1", "B2"), frames_sent=7, reason="error", message="x"),
]
PUBLISHED_MESSAGES = [
    TrackEvent(run_id="r", position="A1", frame=4, event="division", track_id=1,
               daughters=(2, 3), y=1.5, x=2.5, confidence=0.75, timestamp=1.7e9),
    status(),
    FrameRejected(run_id="r", position="A1", frame_index=4, reason="bad", timestamp=1.0,
                  final=True),
    FrameCommitted(run_id="r", position="A1", frame_index=4, status="stored", worker_id="w",
                   timestamp=1.0),
]  # fmt: skip


@pytest.mark.parametrize("msg", DRIVER_MESSAGES, ids=lambda m: m.kind)
def test_driver_messages_round_trip_through_json_by_their_kind(msg) -> None:
    back = DRIVER_ADAPTER.validate_json(msg.model_dump_json())
    assert type(back) is type(msg)
    assert back == msg


@pytest.mark.parametrize("msg", PUBLISHED_MESSAGES, ids=lambda m: m.kind)
def test_published_messages_round_trip_through_json_by_their_kind(msg) -> None:
    back = PUBLISHED_ADAPTER.validate_json(msg.model_dump_json())
    assert type(back) is type(msg)
    assert back == msg


def test_kinds_are_distinct_and_every_message_carries_the_schema_version() -> None:
    kinds = [m.kind for m in DRIVER_MESSAGES + PUBLISHED_MESSAGES]
    assert kinds == ["frame", "eos", "event", "status", "rejected", "committed"]
    for m in DRIVER_MESSAGES + PUBLISHED_MESSAGES:
        assert json.loads(m.model_dump_json())["schema_version"] == SCHEMA_VERSION


def test_the_discriminator_decides_the_model() -> None:
    """An end-of-stream's fields under kind 'frame' are not an end-of-stream, and a kind
    from the other channel is refused on this one."""
    eos = json.loads(EndOfStream(run_id="r").model_dump_json())
    assert isinstance(DRIVER_ADAPTER.validate_python(eos), EndOfStream)
    with pytest.raises(pydantic.ValidationError, match="shape"):
        DRIVER_ADAPTER.validate_python({**eos, "kind": "frame"})
    with pytest.raises(pydantic.ValidationError, match="does not match any of the expected tags"):
        DRIVER_ADAPTER.validate_python({**eos, "kind": "status"})
    with pytest.raises(pydantic.ValidationError):
        PUBLISHED_ADAPTER.validate_python(eos)


def test_messages_are_frozen_and_refuse_unknown_fields() -> None:
    h = header()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        h.frame_index = 4  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="extra"):
        FrameHeader(**{**h.model_dump(), "pickle": "x"})


def test_schema_version_must_be_a_json_integer() -> None:
    raw = json.loads(header().model_dump_json())
    for bad in ("1", 1.0, True):
        with pytest.raises(pydantic.ValidationError, match="schema_version"):
            DRIVER_ADAPTER.validate_python({**raw, "schema_version": bad})


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("frame_index", -1, "greater than or equal"),
        ("frame_index", MAX_FRAMES, "less than"),
        ("previous_frame", MAX_FRAMES, "less than"),
        ("total_frames", MAX_FRAMES + 1, "less than or equal"),
        ("shape", (0, 5), "empty or larger"),
        ("shape", (MAX_PIXELS, 2), "empty or larger"),
        ("dtype", "complex64", "unsupported pixel dtype"),
        ("dtype", "object", "unsupported pixel dtype"),
        ("labels_dtype", "float32", "unsupported label dtype"),
        ("timestamp", float("nan"), "finite"),
        ("pixel_size_um", 0.0, "positive"),
        ("pixel_size_um", float("inf"), "positive"),
        ("run_id", "", "at least 1"),
        ("position", "p" * 201, "at most 200"),
    ],
)
def test_frame_header_bounds(field: str, value: object, words: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=words):
        header(**{field: value})


def test_header_sizes_follow_shape_and_dtypes() -> None:
    h = header(shape=(4, 6), dtype="float32", labels_dtype="uint16")
    assert (h.nbytes, h.labels_nbytes) == (4 * 6 * 4, 4 * 6 * 2)
    assert header().labels_nbytes == 0


def test_division_needs_two_daughters_and_old_event_words_are_read() -> None:
    with pytest.raises(pydantic.ValidationError, match="two daughters"):
        TrackEvent(run_id="r", position="p", frame=1, event="division", track_id=1,
                   daughters=(2,), timestamp=1.0)  # fmt: skip
    old = TrackEvent(run_id="r", position="p", frame=1, event="birth", track_id=1, timestamp=1.0)  # type: ignore[arg-type]
    assert old.event == "new_track"
    assert TrackEvent.model_validate({**old.model_dump(), "event": "death"}).event == "lost"


def test_end_of_stream_counters_are_bounded_and_reasons_closed() -> None:
    with pytest.raises(pydantic.ValidationError, match="greater than or equal"):
        EndOfStream(run_id="r", frames_sent=-1)
    with pytest.raises(pydantic.ValidationError, match="less than or equal"):
        EndOfStream(run_id="r", frames_dropped=2**53 + 1)
    with pytest.raises(pydantic.ValidationError, match="reason"):
        EndOfStream(run_id="r", reason="crashed")  # type: ignore[arg-type]
