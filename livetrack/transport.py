"""ZeroMQ transport — the only module that imports zmq.

Frames travel PUSH → PULL as two-part messages ``[header JSON, raw pixel buffer]``,
sent zero-copy and validated once on receipt. When the worker falls behind, the
sender's high-water mark fills and ``send_frame`` blocks (backpressure); nothing is
dropped silently. Events and status travel PUB → SUB as ``[topic, JSON]``; a slow
subscriber may miss status ticks, never stored data (that lives in SQLite).

Nothing received is ever unpickled: headers are JSON parsed by pydantic, pixels are
interpreted with ``numpy.frombuffer`` after the header's shape/dtype were checked
against the buffer size.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray
from pydantic import ValidationError

from livetrack.errors import BadFrame, BadMessage, ConfigError, EndpointInUse, SchemaMismatch
from livetrack.messages import (
    DRIVER_ADAPTER,
    PUBLISHED_ADAPTER,
    SCHEMA_VERSION,
    EndOfStream,
    FrameHeader,
    FrameRejected,
    TrackEvent,
    WorkerStatus,
)

log = logging.getLogger("livetrack.transport")

DEFAULT_FRAMES_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_EVENTS_ENDPOINT = "tcp://127.0.0.1:5558"
MAX_HEADER_BYTES = 64 * 1024


class SendTimeout(Exception):
    """The receiver did not accept a frame within the configured time."""


class SendAborted(Exception):
    """A send waiting for the worker was abandoned because the stop event was set."""


def check_endpoint(endpoint: str, *, allow_remote: bool = False) -> str:
    """Refuse to bind/connect beyond loopback unless the user asked for it explicitly.

    ``ipc://`` and ``inproc://`` are always local. A ``tcp://`` host must be a loopback
    address or ``localhost`` unless ``allow_remote`` is set.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise ConfigError(f"endpoint {endpoint!r} must start with tcp://, ipc:// or inproc://")
    host_port = endpoint[len("tcp://") :]
    host, sep, port = host_port.rpartition(":")
    if not sep or not (port == "*" or port.isdigit()):
        raise ConfigError(f"endpoint {endpoint!r} needs a port, e.g. tcp://127.0.0.1:5557")
    host = host.strip("[]")
    if host == "localhost" or allow_remote:
        return endpoint
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"endpoint {endpoint!r} is not on the loopback interface; livetrack only listens on "
            "127.0.0.1 unless you pass --allow-remote (and then protect the link yourself)"
        )
    return endpoint


def _socket(ctx: zmq.Context[Any], kind: int, *, linger_ms: int, hwm: int) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def bind_random_port(sock: zmq.Socket[Any], host: str = "127.0.0.1") -> str:
    port = sock.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{host}:{port}"


def _bind(sock: zmq.Socket[Any], endpoint: str) -> str:
    """Bind to ``endpoint`` (port 0 = any free port) and return the actual endpoint."""
    try:
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            return bind_random_port(sock, endpoint[len("tcp://") :].rsplit(":", 1)[0])
        sock.bind(endpoint)
    except zmq.ZMQError as err:
        sock.close(linger=0)
        if err.errno == zmq.EADDRINUSE:
            raise EndpointInUse(
                f"{endpoint} is already in use (is another worker running?)"
            ) from None
        raise ConfigError(f"cannot bind {endpoint}: {err}") from None
    return endpoint


@dataclass(frozen=True)
class ReceivedFrame:
    """A validated frame. ``image`` (and ``labels``) are read-only views on the buffers."""

    header: FrameHeader
    image: NDArray[np.generic]
    received: float
    labels: NDArray[np.integer] | None = None
    """Given label image (tracking-only mode), else None."""


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
    ) -> None:
        check_endpoint(endpoint, allow_remote=allow_remote)
        self.stop = stop
        """When set while a send waits for the worker, the send raises SendAborted."""
        self._ctx = context or zmq.Context.instance()
        # Linger > 0 so frames queued before close (incl. end-of-stream) still reach the worker.
        self._sock = _socket(self._ctx, zmq.PUSH, linger_ms=int(linger_s * 1000), hwm=hwm)
        # Queue only to a live worker: with no worker connected, sending blocks (and the
        # driver can tell the user) instead of filling a queue nobody will read.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self.endpoint = endpoint
        if bind:
            self.endpoint = _bind(self._sock, endpoint)
        else:
            self._sock.connect(endpoint)
        self.send_timeout_s = send_timeout_s
        self.blocked_s = 0.0
        """Total seconds spent waiting for the worker (backpressure), for progress display."""

    def _wait_writable(self) -> None:
        start = time.monotonic()
        next_warning = 10.0
        while not self._sock.poll(100, zmq.POLLOUT):
            waited = time.monotonic() - start
            if self.stop is not None and self.stop.is_set():
                self.blocked_s += waited
                raise SendAborted(f"stopped while waiting for the worker on {self.endpoint}")
            if self.send_timeout_s is not None and waited >= self.send_timeout_s:
                self.blocked_s += waited
                raise SendTimeout(
                    f"no worker accepted a frame on {self.endpoint} for {waited:.0f} s"
                )
            if waited >= next_warning:
                log.warning(
                    "worker on %s has not accepted frames for %.0f s (backpressure); waiting",
                    self.endpoint,
                    waited,
                )
                next_warning *= 2
        self.blocked_s += time.monotonic() - start

    def send_frame(
        self,
        header: FrameHeader,
        image: NDArray[np.generic],
        labels: NDArray[np.integer] | None = None,
    ) -> None:
        """Send one frame (and its label image in tracking-only mode); blocks while the
        worker's queue is full (backpressure)."""
        where = f"frame {header.position}/{header.frame_index}"
        arr = _little_endian(image)
        if arr.shape != header.shape or arr.dtype.name != header.dtype:
            raise BadFrame(
                f"{where}: header says {header.shape} {header.dtype}, "
                f"array is {arr.shape} {arr.dtype.name}"
            )
        parts: list[bytes | memoryview] = [header.model_dump_json().encode(), _bytes_view(arr)]
        if (labels is None) != (header.labels_dtype is None):
            raise BadFrame(
                f"{where}: labels given without labels_dtype in the header, or vice versa"
            )
        if labels is not None:
            lab = _little_endian(labels)
            if lab.shape != header.shape or lab.dtype.name != header.labels_dtype:
                raise BadFrame(
                    f"{where}: header says labels {header.shape} {header.labels_dtype}, "
                    f"array is {lab.shape} {lab.dtype.name}"
                )
            parts.append(_bytes_view(lab))
        self._wait_writable()
        self._sock.send_multipart(parts, copy=False)

    def send_eos(self, eos: EndOfStream) -> None:
        self._wait_writable()
        self._sock.send(eos.model_dump_json().encode())

    def close(self, linger_s: float | None = None) -> None:
        """Close; queued frames are delivered for up to ``linger_s`` (default: the
        constructor's) — pass 0 when the worker is known to be gone."""
        if linger_s is None:
            self._sock.close()
        else:
            self._sock.close(linger=int(linger_s * 1000))


def _little_endian(a: NDArray[Any]) -> NDArray[Any]:
    arr = np.ascontiguousarray(a)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def _bytes_view(a: NDArray[Any]) -> memoryview:
    return a.reshape(-1).view(np.uint8).data


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
    ) -> None:
        check_endpoint(endpoint, allow_remote=allow_remote)
        self._ctx = context or zmq.Context.instance()
        self._sock = _socket(self._ctx, zmq.PULL, linger_ms=0, hwm=hwm)
        self.last_receive_ms = 0.0
        """Time to take the last message off the socket and validate it (not the wait)."""
        # A peer sending a giant single part (not a livetrack driver) must not exhaust memory.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 16384 * 16384 * 8 + MAX_HEADER_BYTES)
        self.endpoint = endpoint
        if bind:
            self.endpoint = _bind(self._sock, endpoint)
        else:
            self._sock.connect(endpoint)

    def recv(self, timeout_s: float | None = None) -> ReceivedFrame | EndOfStream | None:
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


def _parse_header(raw: memoryview | bytes) -> FrameHeader | EndOfStream:
    if len(raw) > MAX_HEADER_BYTES:
        raise BadMessage(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadMessage(f"header is not UTF-8 JSON: {err}") from None
    version = _peek_version(text)
    if version is not None and version != SCHEMA_VERSION:
        raise SchemaMismatch(
            f"message schema version {version}, this worker speaks {SCHEMA_VERSION}; "
            "upgrade livetrack on both sides"
        )
    try:
        return DRIVER_ADAPTER.validate_json(text)
    except ValidationError as err:
        raise BadMessage(f"invalid header: {_summarise(err)}") from None


def _peek_version(text: str) -> int | None:
    import json

    try:
        obj = json.loads(text)
    except ValueError as err:
        raise BadMessage(f"header is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadMessage("header must be a JSON object")
    v = obj.get("schema_version")
    return v if isinstance(v, int) else None


def _summarise(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in err.errors()
    )


def decode_driver_message(
    parts: list[memoryview] | list[bytes],
) -> ReceivedFrame | EndOfStream:
    """Validate a received multipart message (pure; used by FramePuller and fuzz tests)."""
    received = time.time()
    if not parts:
        raise BadMessage("empty message")
    msg = _parse_header(parts[0])
    if isinstance(msg, EndOfStream):
        if len(parts) != 1:
            raise BadMessage(f"end-of-stream must be 1 part, got {len(parts)}")
        return msg
    where = f"frame {msg.position}/{msg.frame_index}"
    expected = 2 if msg.labels_dtype is None else 3
    if len(parts) != expected:
        layout = "[header, pixels]" if expected == 2 else "[header, pixels, labels]"
        raise BadFrame(f"{where}: expected {expected} parts {layout}, got {len(parts)}")
    image = _view(parts[1], msg.dtype, msg.shape, where, "pixel")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        n_bad = int(np.count_nonzero(~np.isfinite(image)))
        raise BadFrame(f"{where}: {n_bad} pixels are NaN or infinite")
    labels = None
    if msg.labels_dtype is not None:
        labels = _view(parts[2], msg.labels_dtype, msg.shape, where, "label")
    return ReceivedFrame(header=msg, image=image, received=received, labels=labels)


def _view(
    buf: memoryview | bytes, dtype: str, shape: tuple[int, int], where: str, what: str
) -> NDArray[Any]:
    dt = np.dtype(dtype).newbyteorder("<")
    need = shape[0] * shape[1] * dt.itemsize
    if len(buf) != need:
        raise BadFrame(
            f"{where}: {what} buffer has {len(buf)} bytes, header {shape} {dtype} needs {need}"
        )
    arr = np.frombuffer(buf, dtype=dt).reshape(shape)
    arr.flags.writeable = False  # shared with the socket's buffer: nobody edits it in place
    return arr


class EventPublisher:
    """Worker side of the event channel (PUB, binds). Topic = message kind."""

    def __init__(
        self,
        endpoint: str = DEFAULT_EVENTS_ENDPOINT,
        *,
        hwm: int = 10000,
        allow_remote: bool = False,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        check_endpoint(endpoint, allow_remote=allow_remote)
        self._ctx = context or zmq.Context.instance()
        self._sock = _socket(self._ctx, zmq.PUB, linger_ms=0, hwm=hwm)
        self.endpoint = endpoint
        self.endpoint = _bind(self._sock, endpoint)

    def publish(self, msg: TrackEvent | WorkerStatus | FrameRejected) -> None:
        # PUB never blocks: when a subscriber's queue is full it misses messages, by design.
        self._sock.send_multipart([msg.kind.encode(), msg.model_dump_json().encode()])

    def close(self) -> None:
        self._sock.close()


class EventSubscriber:
    """Consumer side of the event channel (SUB, connects). Reconnects by itself (ZeroMQ)."""

    def __init__(
        self,
        endpoint: str = DEFAULT_EVENTS_ENDPOINT,
        *,
        topics: tuple[str, ...] = ("",),
        allow_remote: bool = False,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        check_endpoint(endpoint, allow_remote=allow_remote)
        self._ctx = context or zmq.Context.instance()
        self._sock = _socket(self._ctx, zmq.SUB, linger_ms=0, hwm=10000)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self.endpoint = endpoint

    def recv(
        self, timeout_s: float | None = None
    ) -> TrackEvent | WorkerStatus | FrameRejected | None:
        """Next published message, or None on timeout. Raises BadMessage if invalid."""
        timeout_ms = None if timeout_s is None else int(timeout_s * 1000)
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return None
        parts = self._sock.recv_multipart()
        if len(parts) != 2:
            raise BadMessage(f"event message must be [topic, json], got {len(parts)} parts")
        try:
            return PUBLISHED_ADAPTER.validate_json(parts[1])
        except ValidationError as err:
            raise BadMessage(f"invalid event: {_summarise(err)}") from None

    def close(self) -> None:
        self._sock.close()


def bench_throughput(
    image: NDArray[np.generic], n_frames: int, *, livetrack_protocol: bool
) -> float:
    """Frames/s pushing ``image`` ``n_frames`` times over a loopback PUSH/PULL pair.

    ``livetrack_protocol=False`` is the baseline: a bare pyzmq send/recv loop with the
    same buffer; ``True`` goes through FramePusher/FramePuller (JSON header, validation,
    zero-copy view). Both run here, in one process, so their ratio is meaningful.
    """
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        if livetrack_protocol:
            puller = FramePuller("tcp://127.0.0.1:0", context=ctx)
            pusher = FramePusher(puller.endpoint, context=ctx, linger_s=1)
            header = FrameHeader(
                run_id="bench",
                position="p",
                frame_index=0,
                timestamp=time.time(),
                shape=(int(image.shape[0]), int(image.shape[1])),
                dtype=image.dtype.name,
            )

            def send() -> None:
                for i in range(n_frames):
                    pusher.send_frame(header.model_copy(update={"frame_index": i}), image)

            def recv() -> None:
                got = 0
                while got < n_frames:
                    if isinstance(puller.recv(timeout_s=10), ReceivedFrame):
                        got += 1

            closers = [pusher.close, puller.close]
        else:
            pull = _socket(ctx, zmq.PULL, linger_ms=0, hwm=4)
            endpoint = bind_random_port(pull)
            push = _socket(ctx, zmq.PUSH, linger_ms=1000, hwm=4)
            push.connect(endpoint)
            buf = _bytes_view(np.ascontiguousarray(image))

            def send() -> None:
                for _ in range(n_frames):
                    push.send_multipart([b"{}", buf], copy=False)

            def recv() -> None:
                for _ in range(n_frames):
                    pull.recv_multipart(copy=False)

            closers = [push.close, pull.close]
        sender = threading.Thread(target=send)
        start = time.perf_counter()
        sender.start()
        recv()
        elapsed = time.perf_counter() - start
        sender.join()
        for close in closers:
            close()
        return n_frames / elapsed
    finally:
        ctx.term()
