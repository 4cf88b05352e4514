"""The transport's own benchmark: livetrack's framing against a bare pyzmq loop, in one
process, so their ratio says what the protocol costs (``livetrack bench``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq
from numpy.typing import NDArray

from livetrack.messages import FrameHeader
from livetrack.transport.codec import ReceivedFrame, bytes_view
from livetrack.transport.sockets import FramePuller, FramePusher, bind_random_port, make_socket


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
            pull = make_socket(ctx, zmq.PULL, linger_ms=0, hwm=4)
            endpoint = bind_random_port(pull)
            push = make_socket(ctx, zmq.PUSH, linger_ms=1000, hwm=4)
            push.connect(endpoint)
            buf = bytes_view(np.ascontiguousarray(image))

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
