"""The four sockets: frames PUSH (driver) → PULL (worker), events PUB (worker) → SUB
(dashboards, acknowledging drivers).

When the worker falls behind, the sender's high-water mark fills and ``send_frame`` blocks
(backpressure); nothing is dropped silently. A slow subscriber may miss status ticks, never
stored data (that lives in SQLite).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray

from livetrack.config import DEFAULT_EVENTS_ENDPOINT, DEFAULT_FRAMES_ENDPOINT
from livetrack.errors import ConfigError, EndpointInUse, SendAborted, SendTimeout
from livetrack.messages import (
    EndOfStream,
    FrameHeader,
    Published,
    UseModel,
)
from livetrack.transport.codec import (
    MAX_HEADER_BYTES,
    ReceivedFrame,
    decode_driver_message,
    decode_event,
    encode_frame,
)
from livetrack.transport.endpoints import (
    check_endpoint,
    check_server_endpoint,
)
from livetrack.transport.keys import (
    CurveClient,
    CurveServer,
    curve_as_client,
    curve_as_server,
    stop_auth,
)

log = logging.getLogger("livetrack.transport")

CURVE_SILENCE_S = 5.0
"""After this long without the worker ever taking a message, a sender says so (with
CURVE: the worker may not accept this client's key, which ZeroMQ does not report)."""

EOS_WAIT_S = 3.0
"""How long a stopped sender still waits for room to queue its end-of-stream (a worker
that is busy with a frame makes room within a frame's time; one that stopped never does,
and an in-process run must not hang on it)."""


def server_socket(
    ctx: zmq.Context[Any],
    kind: int,
    endpoint: str,
    *,
    hwm: int,
    allow_remote: bool,
    curve: CurveServer | None,
) -> zmq.Socket[Any]:
    """A not-yet-bound socket for the worker side: endpoint checked (loopback, or remote
    only with CURVE), linger 0, high-water marks set, CURVE server keys when given."""
    check_server_endpoint(endpoint, allow_remote, curve)
    sock = make_socket(ctx, kind, linger_ms=0, hwm=hwm)
    if curve is not None:
        curve_as_server(sock, ctx, curve)
    return sock


def make_socket(ctx: zmq.Context[Any], kind: int, *, linger_ms: int, hwm: int) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def bind_random_port(sock: zmq.Socket[Any], host: str = "127.0.0.1") -> str:
    port = sock.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{host}:{port}"


# How long a bind keeps trying a port that is still in use. ZeroMQ releases a closed
# socket's listening port a moment later, in its I/O thread, so a worker restarted at
# once on the same endpoint (by a supervisor, or in the same process) can find it taken
# for a few milliseconds; a port another live program holds is still refused, after this.
BIND_RETRY_S = 2.0


def bind_endpoint(sock: zmq.Socket[Any], endpoint: str) -> str:
    """Bind to ``endpoint`` (port 0 = any free port) and return the actual endpoint."""
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        try:
            if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
                return bind_random_port(sock, endpoint[len("tcp://") :].rsplit(":", 1)[0])
            sock.bind(endpoint)
            return endpoint
        except zmq.ZMQError as err:
            if err.errno == zmq.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            sock.close(linger=0)
            if err.errno == zmq.EADDRINUSE:
                raise EndpointInUse(
                    f"{endpoint} is already in use (is another worker running?)"
                ) from None
            raise ConfigError(f"cannot bind {endpoint}: {err}") from None


class FramePusher:
    """Driver side of the frame channel (PUSH). Connects by default; the worker binds."""

    def __init__(
        self,
        endpoint: str = DEFAULT_FRAMES_ENDPOINT,
        *,
        bind: bool = False,
        hwm: int = 4,
        linger_s: float = 30.0,
        send_timeout_s: float | None = None,
        allow_remote: bool = False,
        context: zmq.Context[Any] | None = None,
        stop: threading.Event | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        check_endpoint(endpoint, allow_remote=allow_remote)
        self.stop = stop
        """When set while a send waits for the worker, the send raises SendAborted."""
        # A context of its own (unless given one), terminated by close(): terminating is
        # the only way to wait until ZeroMQ's I/O thread has written every queued message,
        # and ZeroMQ reads the zero-copy pixel buffers until then. A process that exits
        # with messages still queued loses them, and Python frees the buffers under the
        # I/O thread's feet (segfaults, "Bad address (src/tcp.cpp)").
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self.linger_s = linger_s
        """How long close() waits by default for queued messages to reach the worker."""
        # Linger > 0 so frames queued before close (incl. end-of-stream) still reach the worker.
        self._sock = make_socket(self._ctx, zmq.PUSH, linger_ms=int(linger_s * 1000), hwm=hwm)
        # Queue only to a live worker: with no worker connected, sending blocks (and the
        # driver can tell the user) instead of filling a queue nobody will read.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._curve = curve
        self._silence_reported = False
        if curve is not None:
            curve_as_client(self._sock, curve)
        self.endpoint = endpoint
        if bind:
            self.endpoint = bind_endpoint(self._sock, endpoint)
        else:
            self._sock.connect(endpoint)
        self.send_timeout_s = send_timeout_s
        self.blocked_s = 0.0
        """Total seconds spent waiting for the worker (backpressure), for progress display."""
        self.answered = False
        """Whether the worker ever took a message (its connection, CURVE handshake, works)."""
        self.frames_handed = 0
        """Frames handed to ZeroMQ (queued for the worker; not a confirmation)."""
        self.eos_handed = False
        """Whether the end-of-stream was handed to ZeroMQ."""
        self.flushed: bool | None = None
        """After close(): True when every queued message left for the worker's connection
        within the linger time, False when some were still queued and were discarded,
        None when unknown (a shared context, or closed with no linger)."""

    def _wait_writable(self, *, stoppable: bool = True, limit_s: float | None = None) -> None:
        start = time.monotonic()
        next_warning = 10.0
        limit = self.send_timeout_s if limit_s is None else limit_s
        while not self._sock.poll(100, zmq.POLLOUT):
            waited = time.monotonic() - start
            if stoppable and self.stop is not None and self.stop.is_set():
                self.blocked_s += waited
                raise SendAborted(f"stopped while waiting for the worker on {self.endpoint}")
            if limit is not None and waited >= limit:
                self.blocked_s += waited
                raise SendTimeout(
                    f"no worker accepted a message on {self.endpoint} for {waited:.0f} s"
                )
            self.report_silence(waited)
            if waited >= next_warning and self.answered:
                log.warning(
                    "worker on %s has not accepted frames for %.0f s (backpressure); waiting",
                    self.endpoint,
                    waited,
                )
                next_warning *= 2
        self.answered = True
        self.blocked_s += time.monotonic() - start

    def report_silence(self, waited: float) -> None:
        """Once the worker has never taken a message for CURVE_SILENCE_S, say why that
        may be: with CURVE, a worker that does not list this client's key refuses the
        handshake and ZeroMQ waits without a word."""
        if self.answered or self._silence_reported or waited < CURVE_SILENCE_S:
            return
        self._silence_reported = True
        if self._curve is not None:
            log.error(
                "no answer from the worker on %s after %.0f s: it is not running, or it does "
                "not accept this client's CURVE key (public key %s must be in the worker's "
                "--curve-clients) or its server key is not the one given; still trying",
                self.endpoint,
                waited,
                self._curve.public_key.decode(),
            )
        else:
            log.warning(
                "no answer from the worker on %s after %.0f s: is it running (and without "
                "CURVE keys, or does it need this client's)? still trying",
                self.endpoint,
                waited,
            )

    def send_frame(
        self,
        header: FrameHeader,
        image: NDArray[np.generic],
        labels: NDArray[np.integer] | None = None,
    ) -> None:
        """Send one frame (and its label image in tracking-only mode); blocks while the
        worker's queue is full (backpressure)."""
        parts = encode_frame(header, image, labels)
        self._wait_writable()
        self._sock.send_multipart(parts, copy=False)
        self.frames_handed += 1

    def try_send(self, parts: list[bytes | memoryview], timeout_ms: int = 0) -> bool:
        """Send an encoded message if the worker takes it within ``timeout_ms``."""
        if not self._sock.poll(timeout_ms, zmq.POLLOUT):
            return False
        self._sock.send_multipart(parts, copy=False)
        self.answered = True
        return True

    def send_eos(self, eos: EndOfStream) -> None:
        """Queue the end-of-stream. A stopped stream's end-of-stream (reason 'aborted')
        still waits up to ``EOS_WAIT_S`` for room, so the worker learns why it ended."""
        stopped = self.stop is not None and self.stop.is_set()
        limit = EOS_WAIT_S if stopped and self.send_timeout_s is None else None
        self._wait_writable(stoppable=not stopped, limit_s=limit)
        self._sock.send(eos.model_dump_json().encode())
        self.eos_handed = True

    def send_use_model(self, request: UseModel) -> None:
        """Queue a request to switch the worker's segmentation model (one part, like the
        end-of-stream); it is handled between two frames."""
        self._wait_writable()
        self._sock.send(request.model_dump_json().encode())

    def close(self, linger_s: float | None = None) -> bool | None:
        """Close, waiting up to ``linger_s`` (default: the constructor's) until every
        queued frame and the end-of-stream left for the worker — pass 0 when the worker
        is known to be gone. Returns (and keeps in ``flushed``) whether they did; a
        plain sender never learns whether the worker *stored* them (AckedPusher does)."""
        linger = self.linger_s if linger_s is None else linger_s
        if self._sock.closed:
            return self.flushed
        self._sock.close(linger=int(linger * 1000))
        if not self._own_context:
            return None
        start = time.monotonic()
        self._ctx.term()  # returns once the queue is written out, or after the linger time
        waited = time.monotonic() - start
        if linger > 0:
            self.flushed = waited < linger
            if not self.flushed:
                log.warning(
                    "the worker on %s did not take the last queued messages within %.0f s; "
                    "they were discarded (frames handed: %d, end-of-stream %s)",
                    self.endpoint,
                    linger,
                    self.frames_handed,
                    "handed" if self.eos_handed else "not sent",
                )
        return self.flushed


class FramePuller:
    """Worker side of the frame channel (PULL). Binds by default."""

    def __init__(
        self,
        endpoint: str = DEFAULT_FRAMES_ENDPOINT,
        *,
        bind: bool = True,
        hwm: int = 4,
        allow_remote: bool = False,
        context: zmq.Context[Any] | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = server_socket(
            self._ctx, zmq.PULL, endpoint, hwm=hwm, allow_remote=allow_remote, curve=curve
        )
        self._curve = curve
        self.last_receive_ms = 0.0
        """Time to take the last message off the socket and validate it (not the wait)."""
        # A peer sending a giant single part (not a livetrack driver) must not exhaust memory.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 16384 * 16384 * 8 + MAX_HEADER_BYTES)
        self.endpoint = endpoint
        if bind:
            self.endpoint = bind_endpoint(self._sock, endpoint)
        else:
            self._sock.connect(endpoint)

    def recv(self, timeout_s: float | None = None) -> ReceivedFrame | EndOfStream | UseModel | None:
        """Wait for the next message. Returns None on timeout.

        Raises BadMessage / BadFrame / SchemaMismatch for anything invalid — the message
        is consumed either way, so the caller can log it and carry on.
        """
        timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        start = time.perf_counter()
        parts = self._sock.recv_multipart(copy=False)
        try:
            return decode_driver_message([p.buffer for p in parts])
        finally:
            self.last_receive_ms = (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self._sock.close()
        if self._curve is not None:
            stop_auth(self._ctx)


class EventPublisher:
    """Worker side of the event channel (PUB, binds). Topic = message kind."""

    def __init__(
        self,
        endpoint: str = DEFAULT_EVENTS_ENDPOINT,
        *,
        hwm: int = 10000,
        allow_remote: bool = False,
        context: zmq.Context[Any] | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = server_socket(
            self._ctx, zmq.PUB, endpoint, hwm=hwm, allow_remote=allow_remote, curve=curve
        )
        self._curve = curve
        self.endpoint = endpoint
        self.endpoint = bind_endpoint(self._sock, endpoint)

    def publish(self, msg: Published) -> None:
        # PUB never blocks: when a subscriber's queue is full it misses messages, by design.
        self._sock.send_multipart([msg.kind.encode(), msg.model_dump_json().encode()])

    def close(self, linger_s: float = 0.0) -> None:
        """Close; ``linger_s`` > 0 lets the last messages (e.g. the end-of-stream
        acknowledgement of a worker about to exit) leave first."""
        self._sock.close(linger=int(linger_s * 1000))
        if self._curve is not None:
            stop_auth(self._ctx)


class EventSubscriber:
    """Consumer side of the event channel (SUB, connects). Reconnects by itself (ZeroMQ)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_EVENTS_ENDPOINT,
        *,
        topics: tuple[str, ...] = ("",),
        allow_remote: bool = False,
        context: zmq.Context[Any] | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        check_endpoint(endpoint, allow_remote=allow_remote)
        self._ctx = context or zmq.Context.instance()
        self._sock = make_socket(self._ctx, zmq.SUB, linger_ms=0, hwm=10000)
        if curve is not None:
            curve_as_client(self._sock, curve)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self.endpoint = endpoint

    def recv(self, timeout_s: float | None = None) -> Published | None:
        """Next published message, or None on timeout. Raises BadMessage if invalid."""
        timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return decode_event(self._sock.recv_multipart())

    def wait(self, timeout_s: float, *, or_room_on: FramePusher | None = None) -> None:
        """Wait up to ``timeout_s`` until a message is here to ``recv`` or, when
        ``or_room_on`` is given, until that sender's queue has room: one wait for both, so
        an acknowledging sender wakes for whichever comes first."""
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        if or_room_on is not None:
            poller.register(or_room_on._sock, zmq.POLLOUT)
        poller.poll(int(timeout_s * 1000))

    def close(self) -> None:
        self._sock.close()
