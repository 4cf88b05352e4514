"""ZeroMQ transport — the only module that imports zmq.

Frames travel PUSH → PULL as two-part messages ``[header JSON, raw pixel buffer]``,
sent zero-copy and validated once on receipt. When the worker falls behind, the
sender's high-water mark fills and ``send_frame`` blocks (backpressure); nothing is
dropped silently. Events and status travel PUB → SUB as ``[topic, JSON]``; a slow
subscriber may miss status ticks, never stored data (that lives in SQLite).

Nothing received is ever unpickled: headers are JSON parsed by pydantic, pixels are
interpreted with ``numpy.frombuffer`` after the header's shape/dtype were checked
against the buffer size.

Surviving a worker crash (``AckedPusher``): frames sent into a dead worker's socket are
lost inside ZeroMQ, so a driver that must not lose frames subscribes to the worker's event
channel and keeps every frame in a bounded buffer until the worker acknowledges it with a
``FrameCommitted`` (published only after the frame's SQLite commit, so acknowledged =
durable). When it sees a new ``worker_id`` (the worker restarted) or no acknowledgement
arrives for ``resend_after_s``, it re-sends everything unacknowledged, in order; the
worker ignores frames it already stored. Each frame names the ``previous_frame`` sent for
its position, and the worker refuses a frame whose predecessor never reached it, so a
frame that reaches a restarted worker before the re-sends is not tracked across a false
gap. When the buffer is full the driver pauses (default) or, only with
``overflow="drop"``, drops the new frame, counted and logged.

Security: sockets bind to loopback unless ``allow_remote`` is set, and a non-loopback
bind also requires ZeroMQ CURVE (``CurveServer``: the worker's secret key and the public
keys of the clients it accepts; ``CurveClient`` for drivers and dashboards). Keys come
from ``livetrack keys`` (``write_keypair``), files readable by their owner only.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq
from numpy.typing import NDArray
from pydantic import ValidationError
from pydantic_core import from_json
from zmq.utils import z85

from livetrack.errors import BadFrame, BadMessage, ConfigError, EndpointInUse, SchemaMismatch
from livetrack.messages import (
    DRIVER_ADAPTER,
    PUBLISHED_ADAPTER,
    SCHEMA_VERSION,
    EndOfStream,
    FrameCommitted,
    FrameHeader,
    FrameRejected,
    TrackEvent,
    WorkerStatus,
)

log = logging.getLogger("livetrack.transport")

DEFAULT_FRAMES_ENDPOINT = "tcp://127.0.0.1:5557"
DEFAULT_EVENTS_ENDPOINT = "tcp://127.0.0.1:5558"
MAX_HEADER_BYTES = 64 * 1024

CURVE_SILENCE_S = 5.0
"""After this long without the worker ever taking a message, a sender says so (with
CURVE: the worker may not accept this client's key, which ZeroMQ does not report)."""

EOS_WAIT_S = 3.0
"""How long a stopped sender still waits for room to queue its end-of-stream (a worker
that is busy with a frame makes room within a frame's time; one that stopped never does,
and an in-process run must not hang on it)."""


class SendTimeout(Exception):
    """The receiver did not accept a frame within the configured time."""


class SendAborted(Exception):
    """A send waiting for the worker was abandoned because the stop event was set."""


class InvalidFrame(BadFrame):
    """A frame whose header is valid but whose content is not (buffer size, NaNs): the
    worker knows which frame it rejected (``header``) and can tell the driver."""

    def __init__(self, message: str, header: FrameHeader) -> None:
        super().__init__(message)
        self.header = header


# ------------------------------------------------------------------------- CURVE


@dataclass(frozen=True)
class CurveServer:
    """CURVE for a binding socket (the worker): its secret key and the public keys of
    the clients allowed in (all Z85 text, 40 characters)."""

    secret_key: bytes
    allowed_clients: frozenset[bytes]

    @property
    def public_key(self) -> bytes:
        return zmq.curve_public(self.secret_key)


@dataclass(frozen=True)
class CurveClient:
    """CURVE for a connecting socket (driver, dashboard): its own secret key and the
    public key of the worker it talks to."""

    secret_key: bytes
    server_key: bytes

    @property
    def public_key(self) -> bytes:
        return zmq.curve_public(self.secret_key)


def _check_z85_key(key: bytes, where: str) -> bytes:
    key = key.strip()
    if len(key) != 40:
        raise ConfigError(f"{where}: a CURVE key is 40 Z85 characters, got {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError):
        raise ConfigError(f"{where}: not a Z85-encoded CURVE key") from None
    return key


def read_key(path: Path) -> bytes:
    """Read a key file written by ``write_keypair`` (``NAME.public`` or ``NAME.secret``)."""
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read key file {path}: {err.strerror}") from None
    return _check_z85_key(text, str(path))


def write_keypair(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Generate a CURVE keypair: ``NAME.public`` and ``NAME.secret`` in ``out_dir``, both
    created with mode 0600 (never overwritten). Give the worker its secret and the
    clients' ``.public`` files; give each client its secret and the worker's ``.public``."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    paths = (out_dir / f"{name}.public", out_dir / f"{name}.secret")
    for path, key in zip(paths, (public, secret), strict=True):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} exists; not overwriting a key") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
    return paths


def read_secret_key(path: Path) -> bytes:
    """Read a secret key file; warn (naming the file and the fix) when users other than
    its owner may read it — anyone who can read it can impersonate this side."""
    key = read_key(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        return key
    if mode & 0o077:
        log.warning(
            "secret key %s is readable by other users (mode %o); anyone who can read it can "
            "impersonate this side: run chmod 600 %s",
            path,
            mode & 0o777,
            path,
        )
    return key


def curve_server(secret_file: Path, client_keys: Iterable[Path]) -> CurveServer:
    """Worker-side CURVE from key files; ``client_keys`` may name files or folders of
    ``*.public`` files."""
    allowed: set[bytes] = set()
    for p in client_keys:
        files = sorted(p.glob("*.public")) if p.is_dir() else [p]
        allowed.update(read_key(f) for f in files)
    if not allowed:
        raise ConfigError("CURVE needs at least one allowed client public key")
    return CurveServer(read_secret_key(secret_file), frozenset(allowed))


def curve_client(secret_file: Path, server_key_file: Path) -> CurveClient:
    return CurveClient(read_secret_key(secret_file), read_key(server_key_file))


class _KeyCheck:
    """ZAP credentials callback: is the client's public key in the allowed set?"""

    def __init__(self) -> None:
        self.allowed: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            log.warning("refused a CURVE client with an unknown public key")
        return ok


_auth_lock = threading.Lock()
_authenticators: dict[int, tuple[Any, _KeyCheck, int]] = {}


def _start_auth(ctx: zmq.Context[Any], curve: CurveServer) -> None:
    """One ZAP authenticator thread per context, shared by its server sockets."""
    from zmq.auth.thread import ThreadAuthenticator

    with _auth_lock:
        auth, check, users = _authenticators.get(id(ctx), (None, _KeyCheck(), 0))
        if auth is None:
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("livetrack.transport.zap"))
            auth.start()
            auth.configure_curve_callback(domain="livetrack", credentials_provider=check)
        check.allowed.update(curve.allowed_clients)
        _authenticators[id(ctx)] = (auth, check, users + 1)


def _stop_auth(ctx: zmq.Context[Any]) -> None:
    with _auth_lock:
        entry = _authenticators.get(id(ctx))
        if entry is None:
            return
        auth, check, users = entry
        if users <= 1:
            auth.stop()
            del _authenticators[id(ctx)]
        else:
            _authenticators[id(ctx)] = (auth, check, users - 1)


def _curve_as_server(sock: zmq.Socket[Any], ctx: zmq.Context[Any], curve: CurveServer) -> None:
    _start_auth(ctx, curve)
    sock.setsockopt(zmq.ZAP_DOMAIN, b"livetrack")
    sock.curve_secretkey = curve.secret_key
    sock.curve_publickey = curve.public_key
    sock.curve_server = True


def _curve_as_client(sock: zmq.Socket[Any], curve: CurveClient) -> None:
    sock.curve_secretkey = curve.secret_key
    sock.curve_publickey = curve.public_key
    sock.curve_serverkey = curve.server_key


def check_endpoint(
    endpoint: str, *, allow_remote: bool = False, curve: CurveServer | None = None
) -> str:
    """Refuse to bind/connect beyond loopback unless the user asked for it explicitly.

    ``ipc://`` and ``inproc://`` are always local. A ``tcp://`` host must be a loopback
    address or ``localhost`` unless ``allow_remote`` is set. Binding a server socket
    (``curve`` is then what it was given) beyond loopback also requires CURVE.
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
    if host == "localhost":
        return endpoint
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return endpoint
    if not allow_remote:
        raise ConfigError(
            f"endpoint {endpoint!r} is not on the loopback interface; livetrack only listens on "
            "127.0.0.1 unless you pass --allow-remote with CURVE keys (see livetrack keys)"
        )
    return endpoint


def _server_socket(
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
    _check_server_endpoint(endpoint, allow_remote, curve)
    sock = _socket(ctx, kind, linger_ms=0, hwm=hwm)
    if curve is not None:
        _curve_as_server(sock, ctx, curve)
    return sock


def _check_server_endpoint(endpoint: str, allow_remote: bool, curve: CurveServer | None) -> None:
    """A server socket may bind beyond loopback only with --allow-remote AND CURVE."""
    check_endpoint(endpoint, allow_remote=allow_remote)
    if allow_remote and curve is None and not _is_local(endpoint):
        raise ConfigError(
            f"refusing to bind {endpoint} beyond loopback without encryption: give the "
            "worker CURVE keys (--curve-secret and --curve-clients; create them with "
            "livetrack keys)"
        )


def _is_local(endpoint: str) -> bool:
    try:
        check_endpoint(endpoint, allow_remote=False)
    except ConfigError:
        return False
    return True


def _socket(ctx: zmq.Context[Any], kind: int, *, linger_ms: int, hwm: int) -> zmq.Socket[Any]:
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


def _bind(sock: zmq.Socket[Any], endpoint: str) -> str:
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
        self._sock = _socket(self._ctx, zmq.PUSH, linger_ms=int(linger_s * 1000), hwm=hwm)
        # Queue only to a live worker: with no worker connected, sending blocks (and the
        # driver can tell the user) instead of filling a queue nobody will read.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._curve = curve
        self._silence_reported = False
        if curve is not None:
            _curve_as_client(self._sock, curve)
        self.endpoint = endpoint
        if bind:
            self.endpoint = _bind(self._sock, endpoint)
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


def encode_frame(
    header: FrameHeader,
    image: NDArray[np.generic],
    labels: NDArray[np.integer] | None = None,
) -> list[bytes | memoryview]:
    """Check a frame against its header and lay it out as message parts (zero-copy)."""
    where = f"frame {header.position}/{header.frame_index}"
    arr = _little_endian(image)
    if arr.shape != header.shape or arr.dtype.name != header.dtype:
        raise BadFrame(
            f"{where}: header says {header.shape} {header.dtype}, "
            f"array is {arr.shape} {arr.dtype.name}"
        )
    parts: list[bytes | memoryview] = [header.model_dump_json().encode(), _bytes_view(arr)]
    if (labels is None) != (header.labels_dtype is None):
        raise BadFrame(f"{where}: labels given without labels_dtype in the header, or vice versa")
    if labels is not None:
        lab = _little_endian(labels)
        if lab.shape != header.shape or lab.dtype.name != header.labels_dtype:
            raise BadFrame(
                f"{where}: header says labels {header.shape} {header.labels_dtype}, "
                f"array is {lab.shape} {lab.dtype.name}"
            )
        parts.append(_bytes_view(lab))
    return parts


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
        curve: CurveServer | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = _server_socket(
            self._ctx, zmq.PULL, endpoint, hwm=hwm, allow_remote=allow_remote, curve=curve
        )
        self._curve = curve
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
        if self._curve is not None:
            _stop_auth(self._ctx)


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
    """The header's schema version, before the full validation (so that a newer
    sender's message is named as such rather than as a list of unknown fields).

    Parsed by pydantic's Rust JSON reader, which stops at a nesting depth of a few
    hundred without recursing in Python (``json.loads`` raised RecursionError on 30,000
    nested ``[``, which killed the worker); headers are already at most
    MAX_HEADER_BYTES long."""
    try:
        obj = from_json(text)
    except ValueError as err:
        raise BadMessage(f"header is not valid JSON: {_clip(str(err))}") from None
    if not isinstance(obj, dict):
        raise BadMessage("header must be a JSON object")
    if "schema_version" not in obj:
        return None
    v = obj["schema_version"]
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadMessage(
            f"schema_version must be a JSON integer, got {_clip(repr(v))}; this worker "
            f"speaks version {SCHEMA_VERSION}"
        )
    return v


def _clip(text: str, limit: int = 200) -> str:
    """Keep log lines about hostile input short."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _summarise(err: ValidationError) -> str:
    return _clip(
        "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in err.errors()
        ),
        500,
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
        raise InvalidFrame(f"{where}: expected {expected} parts {layout}, got {len(parts)}", msg)
    try:
        image = _view(parts[1], msg.dtype, msg.shape, where, "pixel")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            n_bad = int(np.count_nonzero(~np.isfinite(image)))
            raise BadFrame(f"{where}: {n_bad} pixels are NaN or infinite")
        labels = None
        if msg.labels_dtype is not None:
            labels = _view(parts[2], msg.labels_dtype, msg.shape, where, "label")
    except BadFrame as err:
        raise InvalidFrame(str(err), msg) from None
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
        curve: CurveServer | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = _server_socket(
            self._ctx, zmq.PUB, endpoint, hwm=hwm, allow_remote=allow_remote, curve=curve
        )
        self._curve = curve
        self.endpoint = endpoint
        self.endpoint = _bind(self._sock, endpoint)

    def publish(self, msg: TrackEvent | WorkerStatus | FrameRejected | FrameCommitted) -> None:
        # PUB never blocks: when a subscriber's queue is full it misses messages, by design.
        self._sock.send_multipart([msg.kind.encode(), msg.model_dump_json().encode()])

    def close(self, linger_s: float = 0.0) -> None:
        """Close; ``linger_s`` > 0 lets the last messages (e.g. the end-of-stream
        acknowledgement of a worker about to exit) leave first."""
        self._sock.close(linger=int(linger_s * 1000))
        if self._curve is not None:
            _stop_auth(self._ctx)


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
        self._sock = _socket(self._ctx, zmq.SUB, linger_ms=0, hwm=10000)
        if curve is not None:
            _curve_as_client(self._sock, curve)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self.endpoint = endpoint

    def recv(
        self, timeout_s: float | None = None
    ) -> TrackEvent | WorkerStatus | FrameRejected | FrameCommitted | None:
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

    def _wait(self, done: Any, *, lossy: bool = False, timeout_s: float | None = None) -> bool:
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
        poller = zmq.Poller()
        poller.register(self.acks._sock, zmq.POLLIN)
        if any(not p.sent for p in self._buffer):
            poller.register(self.pusher._sock, zmq.POLLOUT)
        poller.poll(int(timeout_s * 1000))
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

            closers: list[Callable[[], object]] = [pusher.close, puller.close]
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
