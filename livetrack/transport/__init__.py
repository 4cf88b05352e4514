"""ZeroMQ transport — the only package that imports zmq.

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

The package, along its seams: ``endpoints`` (the default endpoints and the loopback
policy), ``keys`` (CURVE key files and the worker's client check), ``codec`` (the wire
format as pure functions), ``sockets`` (the four socket kinds), ``delivery``
(``AckedPusher``) and ``throughput`` (the transport benchmark). Import from the package:
its names are the public ones.
"""

from __future__ import annotations

from livetrack.config import DEFAULT_EVENTS_ENDPOINT, DEFAULT_FRAMES_ENDPOINT
from livetrack.errors import SendAborted, SendTimeout
from livetrack.transport.codec import (
    MAX_HEADER_BYTES,
    InvalidFrame,
    ReceivedFrame,
    decode_driver_message,
    decode_event,
    encode_frame,
)
from livetrack.transport.delivery import AckedPusher, Overflow
from livetrack.transport.endpoints import (
    check_endpoint,
)
from livetrack.transport.keys import (
    CurveClient,
    CurveServer,
    curve_client,
    curve_server,
    read_key,
    read_secret_key,
    write_keypair,
)
from livetrack.transport.sockets import (
    EventPublisher,
    EventSubscriber,
    FramePuller,
    FramePusher,
    bind_random_port,
)
from livetrack.transport.throughput import bench_throughput

__all__ = [
    "DEFAULT_EVENTS_ENDPOINT",
    "DEFAULT_FRAMES_ENDPOINT",
    "MAX_HEADER_BYTES",
    "AckedPusher",
    "CurveClient",
    "CurveServer",
    "EventPublisher",
    "EventSubscriber",
    "FramePuller",
    "FramePusher",
    "InvalidFrame",
    "Overflow",
    "ReceivedFrame",
    "SendAborted",
    "SendTimeout",
    "bench_throughput",
    "bind_random_port",
    "check_endpoint",
    "curve_client",
    "curve_server",
    "decode_driver_message",
    "decode_event",
    "encode_frame",
    "read_key",
    "read_secret_key",
    "write_keypair",
]
