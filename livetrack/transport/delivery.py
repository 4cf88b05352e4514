"""Acknowledged delivery: surviving a worker crash without losing a frame.

Frames sent into a dead worker's socket are lost inside ZeroMQ, so a driver that must not
lose frames subscribes to the worker's event channel and keeps every frame in a bounded
buffer until the worker acknowledges it with a ``FrameCommitted`` (published only after the
frame's SQLite commit, so acknowledged = durable). When it sees a new ``worker_id`` (the
worker restarted) or no acknowledgement arrives for ``resend_after_s``, it re-sends
everything unacknowledged, in order; the worker ignores frames it already stored. Each
frame names the ``previous_frame`` sent for its position, and the worker refuses a frame
whose predecessor never reached it, so a frame that reaches a restarted worker before the
re-sends is not tracked across a false gap. When the buffer is full the driver pauses
(default) or, only with ``overflow="drop"``, drops the new frame, counted and logged.

Built on the sockets' public methods only (``try_send``, ``recv``, ``wait``): this module
does not import ZeroMQ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from livetrack.errors import BadMessage, ConfigError, SendAborted, SendTimeout
from livetrack.messages import EndOfStream, FrameCommitted, FrameHeader, FrameRejected, WorkerStatus
from livetrack.transport.codec import encode_frame
from livetrack.transport.sockets import EventSubscriber, FramePusher

log = logging.getLogger("livetrack.transport")


Overflow = Literal["pause", "drop"]


@dataclass
class _Pending:
    """A message kept until the worker acknowledges it."""

    run_id: str
    position: str
    index: int
    parts: list[bytes | memoryview] = field(repr=False)
    eos: bool = False
    sent: bool = False


class AckedPusher:
    """Acknowledged delivery: a FramePusher plus a subscription to the worker's events.

    Every frame stays in a buffer of at most ``max_unacked`` frames until the worker
    publishes a ``FrameCommitted`` for it (after its SQLite commit). Frames that were
    sent but are not acknowledged are re-sent, in order, when a new ``worker_id``
    appears (the worker restarted) or nothing was acknowledged for ``resend_after_s``.
    With the buffer full the driver pauses (``overflow="pause"``, the default: nothing is
    lost, acquisition waits) or, with ``overflow="drop"``, waits ``drop_wait_s`` and then
    drops the new frame — counted in ``dropped`` and logged, never silently.

    Memory is bounded by ``max_unacked`` frames here plus the sockets' high-water marks.
    The frames' arrays are referenced, not copied: a source must not reuse the memory of
    a frame it yielded (none of livetrack's drivers do).
    """

    def __init__(
        self,
        pusher: FramePusher,
        acks: EventSubscriber,
        *,
        max_unacked: int = 16,
        overflow: Overflow = "pause",
        resend_after_s: float = 5.0,
        drop_wait_s: float = 1.0,
    ) -> None:
        if max_unacked < 1:
            raise ConfigError(f"max_unacked must be at least 1, got {max_unacked}")
        self.pusher = pusher
        self.acks = acks
        self.max_unacked = max_unacked
        self.overflow: Overflow = overflow
        self.resend_after_s = resend_after_s
        self.drop_wait_s = drop_wait_s
        self.endpoint = pusher.endpoint
        self.dropped = 0
        """Frames dropped because the buffer was full (lossy mode only)."""
        self.resent = 0
        """Frames sent again after a worker restart or a silence."""
        self.acknowledged = 0
        """Messages (frames and end-of-streams) the worker acknowledged."""
        self.frames_confirmed = 0
        """Frames the worker acknowledged as committed (stored now or earlier)."""
        self.peak_unacked = 0
        self.rejected: list[str] = []
        """``position/index: reason`` of each frame the worker refused for its content
        (``FrameRejected.final``): not re-sent, reported by the sender's summary."""
        self._buffer: list[_Pending] = []
        self._last_sent: dict[tuple[str, str], int] = {}
        self._worker_id: str | None = None
        self._restarted = False
        self._last_progress = time.monotonic()
        self._eos_acked: set[str] = set()
        self._greeted = False

    @property
    def unacked(self) -> int:
        """Messages kept for a possible re-send."""
        return len(self._buffer)

    @property
    def worker_id(self) -> str | None:
        """The id of the worker process last heard from."""
        return self._worker_id

    # -------------------------------------------------------------- sending
    def send_frame(
        self,
        header: FrameHeader,
        image: NDArray[np.generic],
        labels: NDArray[np.integer] | None = None,
    ) -> bool:
        """Queue a frame for acknowledged delivery; False if dropped (lossy mode only)."""
        key = (header.run_id, header.position)
        header = header.model_copy(update={"previous_frame": self._last_sent.get(key)})
        parts = encode_frame(header, image, labels)
        if not self._greeted:
            # Acks published before our subscription is live are lost (a PUB/SUB "slow
            # joiner"); the worker's heartbeat tells us the subscription works.
            self._wait(lambda: self._worker_id is not None, timeout_s=self.resend_after_s)
            self._greeted = True
        if not self._wait(lambda: len(self._buffer) < self.max_unacked, lossy=True):
            self.dropped += 1
            log.warning(
                "dropped frame %s/%d: %d frames are waiting for the worker (lossy mode, "
                "%d dropped so far)",
                header.position,
                header.frame_index,
                len(self._buffer),
                self.dropped,
            )
            return False
        self._keep(_Pending(header.run_id, header.position, header.frame_index, parts))
        self._last_sent[key] = header.frame_index
        self._service(0)
        return True

    def send_eos(self, eos: EndOfStream, timeout_s: float | None = 30.0) -> bool:
        """Deliver the end-of-stream once every frame is acknowledged, and wait for its
        own acknowledgement (re-sending as needed). A stopped or failed stream's
        end-of-stream is sent once, without waiting. False if not acknowledged in time."""
        message: list[bytes | memoryview] = [eos.model_dump_json().encode()]
        if eos.reason != "complete":
            return self.pusher.try_send(message, timeout_ms=1000)
        self._wait(lambda: all(p.eos for p in self._buffer))
        self._keep(_Pending(eos.run_id, "", -1, message, eos=True))
        delivered = self._wait(lambda: eos.run_id in self._eos_acked, timeout_s=timeout_s)
        if not delivered:
            log.warning(
                "the worker did not acknowledge the end of run %s within %.0f s; the run "
                "stays resumable",
                eos.run_id,
                timeout_s or 0.0,
            )
        return delivered

    def unconfirmed(self) -> list[str]:
        """What the worker has not acknowledged (yet): ``position/index`` of each frame,
        and ``end-of-stream RUN`` — empty when everything sent is confirmed."""
        return [
            f"end-of-stream {p.run_id}" if p.eos else f"{p.position}/{p.index}"
            for p in self._buffer
        ]

    def close(self, linger_s: float | None = None) -> bool | None:
        """Close both sockets; ``linger_s`` as FramePusher.close (default: its own)."""
        try:
            return self.pusher.close(linger_s)
        finally:
            self.acks.close()

    # ------------------------------------------------------------- internals
    def _keep(self, pending: _Pending) -> None:
        if not self._buffer:
            self._last_progress = time.monotonic()
        self._buffer.append(pending)
        self.peak_unacked = max(self.peak_unacked, len(self._buffer))

    def _wait(
        self, done: Callable[[], bool], *, lossy: bool = False, timeout_s: float | None = None
    ) -> bool:
        """Serve acknowledgements and re-sends until ``done()``; False when lossy mode
        gives up on the frame or ``timeout_s`` passes. Raises SendAborted when the stop
        event is set, SendTimeout after the pusher's ``send_timeout_s``."""
        start = time.monotonic()
        next_warning = 10.0
        while not done():
            self._service(0.1)
            waited = time.monotonic() - start
            stop = self.pusher.stop
            if stop is not None and stop.is_set():
                raise SendAborted(f"stopped while waiting for the worker on {self.endpoint}")
            limit = self.pusher.send_timeout_s
            if limit is not None and waited >= limit:
                raise SendTimeout(
                    f"the worker on {self.endpoint} acknowledged nothing for {waited:.0f} s"
                )
            if lossy and self.overflow == "drop" and waited >= self.drop_wait_s:
                return False
            self.pusher.report_silence(waited)
            if timeout_s is not None and waited >= timeout_s:
                return False
            if waited >= next_warning:
                log.warning(
                    "%d frames wait for the worker on %s to acknowledge them (%.0f s); "
                    "acquisition paused",
                    len(self._buffer),
                    self.endpoint,
                    waited,
                )
                next_warning *= 2
        self.pusher.blocked_s += time.monotonic() - start
        return True

    def _service(self, timeout_s: float) -> None:
        """Take acknowledgements off the event socket, re-send if needed, push out what
        the worker will take; wait up to ``timeout_s`` for either socket."""
        self._drain_acks()
        self._maybe_resend()
        self._push_unsent()
        if timeout_s <= 0:
            return
        unsent = any(not p.sent for p in self._buffer)
        self.acks.wait(timeout_s, or_room_on=self.pusher if unsent else None)
        self._drain_acks()
        self._maybe_resend()
        self._push_unsent()

    def _push_unsent(self) -> None:
        for p in self._buffer:
            if p.sent:
                continue
            if not self.pusher.try_send(p.parts):
                return
            p.sent = True

    def _drain_acks(self) -> None:
        while True:
            try:
                msg = self.acks.recv(timeout_s=0)
            except BadMessage as err:
                log.warning("ignored an invalid message on the event channel: %s", err)
                continue
            if msg is None:
                return
            if isinstance(msg, FrameCommitted | WorkerStatus) and msg.worker_id:
                self._note_worker(msg.worker_id)
            if isinstance(msg, FrameCommitted):
                self._on_ack(msg)
            elif isinstance(msg, FrameRejected) and msg.final:
                self._on_final_rejection(msg)

    def _note_worker(self, worker_id: str) -> None:
        if self._worker_id is not None and worker_id != self._worker_id:
            log.warning(
                "the worker restarted; re-sending %d unacknowledged messages", len(self._buffer)
            )
            self._restarted = True
        self._worker_id = worker_id

    def _on_ack(self, ack: FrameCommitted) -> None:
        before = len(self._buffer)
        if ack.status == "end-of-stream":
            self._eos_acked.add(ack.run_id)
            self._buffer = [p for p in self._buffer if not (p.eos and p.run_id == ack.run_id)]
        elif ack.frame_index is not None:
            self._buffer = [
                p
                for p in self._buffer
                if p.eos
                or p.run_id != ack.run_id
                or p.position != ack.position
                or p.index > ack.frame_index
            ]
        self.acknowledged += before - len(self._buffer)
        if ack.status != "end-of-stream":
            self.frames_confirmed += before - len(self._buffer)
        self._last_progress = time.monotonic()

    def _on_final_rejection(self, rej: FrameRejected) -> None:
        """The worker refused a frame for its content: re-sending it would be refused
        again, forever; drop it from the buffer and remember it for the summary."""
        gone = [
            p
            for p in self._buffer
            if not p.eos
            and (p.run_id, p.position, p.index) == (rej.run_id, rej.position, rej.frame_index)
        ]
        if not gone:
            return
        self._buffer = [p for p in self._buffer if p not in gone]
        self.rejected.append(f"{rej.position}/{rej.frame_index}: {rej.reason}")
        log.warning(
            "the worker rejected frame %s/%s (%s); not re-sending it", rej.position,
            rej.frame_index, rej.reason,
        )  # fmt: skip
        self._last_progress = time.monotonic()

    def _maybe_resend(self) -> None:
        silent = time.monotonic() - self._last_progress > self.resend_after_s
        sent = [p for p in self._buffer if p.sent]
        if sent and (self._restarted or silent):
            if not self._restarted:
                log.warning(
                    "no acknowledgement from the worker for %.0f s; re-sending %d messages",
                    self.resend_after_s,
                    len(sent),
                )
            for p in sent:
                p.sent = False
            self.resent += len(sent)
            self._last_progress = time.monotonic()
        self._restarted = False
