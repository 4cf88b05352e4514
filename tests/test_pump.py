"""pump(): a FrameSource's frames over a real loopback PUSH/PULL pair, then the
end-of-stream that says how the stream ended."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from livetrack.errors import SourceError
from livetrack.messages import EndOfStream
from livetrack.pump import header_for, pump
from livetrack.source import FrameMeta, FrameSource, PositionCounting, Summarising
from livetrack.transport import FramePuller, FramePusher, ReceivedFrame


class Plate:
    """Two positions taking turns, ``n`` frames each; optionally fails after ``fail_after``
    frames, or has its own summary."""

    def __init__(self, n: int, *, fail_after: int | None = None, summary: str | None = None):
        self.n = n
        self.fail_after = fail_after
        self._summary = summary
        self.closed = False

    @property
    def total_frames(self) -> int | None:
        return 2 * self.n

    @property
    def n_positions(self) -> int:
        return 2

    def frames(self) -> Iterator[tuple[np.ndarray, FrameMeta]]:
        sent = 0
        for t in range(self.n):
            for pos in ("A1", "B2"):
                if self.fail_after is not None and sent == self.fail_after:
                    raise SourceError("the camera stopped answering")
                img = np.full((4, 5), 10 * t + (pos == "B2"), np.uint16)
                yield img, FrameMeta(position=pos, frame_index=t, timestamp=100.0 + t)
                sent += 1

    def close(self) -> None:
        self.closed = True


class SummarisingPlate(Plate):
    def summary(self) -> str:
        return self._summary or ""


@pytest.fixture
def pair(zmq_context, closing) -> tuple[FramePusher, FramePuller]:  # type: ignore[no-untyped-def]
    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=100, context=zmq_context))
    pusher = closing(FramePusher(puller.endpoint, hwm=100, context=zmq_context, linger_s=0))
    return pusher, puller


def received(puller: FramePuller) -> tuple[list[ReceivedFrame], EndOfStream]:
    frames: list[ReceivedFrame] = []
    while True:
        msg = puller.recv(timeout_s=10)
        assert msg is not None, "nothing arrived within 10 s"
        if isinstance(msg, EndOfStream):
            return frames, msg
        frames.append(msg)


def test_every_frame_then_a_complete_end_of_stream(pair) -> None:  # type: ignore[no-untyped-def]
    pusher, puller = pair
    source = Plate(3)
    assert isinstance(source, FrameSource)
    assert isinstance(source, PositionCounting)
    assert not isinstance(source, Summarising)
    result = pump(source, pusher, "run-a", description="plate")
    frames, eos = received(puller)
    assert [(f.header.position, f.header.frame_index) for f in frames] == [
        ("A1", 0), ("B2", 0), ("A1", 1), ("B2", 1), ("A1", 2), ("B2", 2),
    ]  # fmt: skip
    assert frames[3].image[0, 0] == 11  # B2 at t=1, pixels intact
    # total_frames in each header is per position: 6 frames over 2 positions
    assert {f.header.total_frames for f in frames} == {3}
    assert {f.header.source for f in frames} == {"plate"}
    assert (eos.run_id, eos.reason, eos.frames_sent, eos.positions) == (
        "run-a", "complete", 6, ("A1", "B2"),
    )  # fmt: skip
    assert (result.frames_sent, result.reason, result.error) == (6, "complete", None)
    assert source.closed


def test_a_source_summary_travels_with_the_end_of_stream(pair) -> None:  # type: ignore[no-untyped-def]
    pusher, puller = pair
    source = SummarisingPlate(1, summary="2 frames dropped by the camera queue")
    assert isinstance(source, Summarising)
    pump(source, pusher, "run-s", description="plate")
    _, eos = received(puller)
    assert eos.message == "2 frames dropped by the camera queue"


def test_a_failing_source_ends_the_stream_as_an_error_keeping_what_it_sent(pair) -> None:  # type: ignore[no-untyped-def]
    pusher, puller = pair
    source = SummarisingPlate(3, fail_after=3, summary="not used: the error is the message")
    result = pump(source, pusher, "run-e", description="plate")
    frames, eos = received(puller)
    assert len(frames) == 3
    assert (eos.reason, eos.frames_sent) == ("error", 3)
    assert eos.message == "the camera stopped answering"
    assert result.reason == "error"
    assert isinstance(result.error, SourceError)  # typed, for the CLI to report
    assert source.closed


def test_a_set_stop_event_aborts_before_the_next_frame(pair) -> None:  # type: ignore[no-untyped-def]
    pusher, puller = pair
    stop = threading.Event()
    sent: list[int] = []

    def on_sent(meta: FrameMeta) -> None:
        sent.append(meta.frame_index)
        if len(sent) == 2:
            stop.set()

    result = pump(Plate(5), pusher, "run-x", description="plate", stop=stop, on_sent=on_sent)
    frames, eos = received(puller)
    assert len(frames) == 2
    assert (eos.reason, eos.message, eos.frames_sent) == ("aborted", "stopped by user", 2)
    assert result.reason == "aborted"


def test_a_source_without_positions_gives_whole_totals(pair) -> None:  # type: ignore[no-untyped-def]
    """No ``n_positions``: one position is assumed, so total_frames is the source's."""

    class Single:
        total_frames = 2

        def frames(self) -> Iterator[tuple[np.ndarray, FrameMeta]]:
            for t in range(2):
                yield np.zeros((2, 2), np.uint8), FrameMeta("p", t, 1.0 + t)

        def close(self) -> None:
            pass

    pusher, puller = pair
    assert not isinstance(Single(), PositionCounting)
    pump(Single(), pusher, "run-1", description="single")
    frames, _ = received(puller)
    assert [f.header.total_frames for f in frames] == [2, 2]


def test_header_for_names_labels_only_when_given() -> None:
    img = np.zeros((3, 4), np.float32)
    meta = FrameMeta("p", 7, 5.0, pixel_size_um=0.5, channel="DAPI")
    h = header_for("r", img, meta, source="s", total_frames=None)
    assert (h.shape, h.dtype, h.labels_dtype, h.channel, h.pixel_size_um) == (
        (3, 4), "float32", None, "DAPI", 0.5,
    )  # fmt: skip
    labelled = header_for(
        "r", img, meta, source="s", total_frames=None, labels=np.zeros((3, 4), np.int32)
    )
    assert labelled.labels_dtype == "int32"
