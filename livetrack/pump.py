"""Push a FrameSource's frames to a worker, then end-of-stream. Shared by every driver.

With a plain ``FramePusher`` a frame is handed to ZeroMQ and forgotten (fine in one
process, where worker and driver live and die together). With an ``AckedPusher`` every
frame is kept until the worker acknowledges its commit, re-sent after a worker restart,
and the end-of-stream goes out only once every frame is acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from livetrack.errors import LivetrackError, SendAborted, SendTimeout
from livetrack.messages import EndOfStream, FrameHeader
from livetrack.source import FrameMeta, FrameSource, PositionCounting, Summarising
from livetrack.transport import AckedPusher, FramePusher

log = logging.getLogger("livetrack.pump")


@dataclass
class PumpResult:
    frames_sent: int
    positions: tuple[str, ...]
    reason: str
    message: str = ""
    frames_dropped: int = 0
    """Frames dropped because the worker could not keep up (explicitly lossy mode only)."""
    error: LivetrackError | None = None
    """The typed error that ended the stream (reason ``error``), for the caller to report
    (the CLI turns it into its message and exit code)."""


def header_for(
    run_id: str,
    image: np.ndarray,
    meta: FrameMeta,
    *,
    source: str,
    total_frames: int | None,
    labels: np.ndarray | None = None,
) -> FrameHeader:
    return FrameHeader(
        run_id=run_id,
        position=meta.position,
        frame_index=meta.frame_index,
        timestamp=meta.timestamp,
        shape=(int(image.shape[0]), int(image.shape[1])),
        dtype=image.dtype.name,
        pixel_size_um=meta.pixel_size_um,
        channel=meta.channel,
        total_frames=total_frames,
        source=source,
        labels_dtype=None if labels is None else labels.dtype.name,
    )


def pump(
    source: FrameSource,
    pusher: FramePusher | AckedPusher,
    run_id: str,
    *,
    description: str,
    stop: threading.Event | None = None,
    on_sent: Callable[[FrameMeta], None] | None = None,
) -> PumpResult:
    """Send every frame of ``source`` then an EndOfStream (also on error or stop, with the
    reason, so the worker can mark the run aborted and keep what it stored)."""
    sent = dropped = 0
    positions: list[str] = []
    reason: Literal["complete", "aborted", "error"] = "complete"
    message = ""
    error: LivetrackError | None = None
    per_position = _frames_per_position(source)
    try:
        for image, meta in source.frames():
            if stop is not None and stop.is_set():
                reason, message = "aborted", "stopped by user"
                break
            labels = meta.labels
            if meta.position not in positions:
                positions.append(meta.position)
            header = header_for(
                run_id,
                image,
                meta,
                source=description,
                total_frames=per_position,
                labels=labels,
            )
            if pusher.send_frame(header, image, labels) is False:
                dropped += 1
                continue
            sent += 1
            if on_sent is not None:
                on_sent(meta)
    except SendAborted:
        reason, message = "aborted", "stopped while the worker was busy"
    except LivetrackError as err:  # SendTimeout included: the worker never took the frame
        reason, message, error = "error", str(err), err
        log.error("driver stopped: %s", err)
    finally:
        source.close()
        if not message:
            # A source may have its own account of the stream (e.g. frames it had to drop
            # under a lossy overflow policy); it travels with the end-of-stream.
            message = source.summary() if isinstance(source, Summarising) else ""
        eos = EndOfStream(
            run_id=run_id,
            positions=tuple(positions),
            frames_sent=sent,
            reason=reason,
            message=message,
            frames_dropped=dropped,
        )
        try:
            pusher.send_eos(eos)
        except (SendAborted, SendTimeout) as err:
            log.warning("end-of-stream not delivered (%s); the run stays resumable", err)
    if dropped:
        log.warning("%d frames were dropped because the worker could not keep up", dropped)
    return PumpResult(sent, tuple(positions), reason, message, frames_dropped=dropped, error=error)


def _frames_per_position(source: FrameSource) -> int | None:
    total = source.total_frames
    n_pos = source.n_positions if isinstance(source, PositionCounting) else 1
    if total is None or not n_pos:
        return None
    return total // n_pos
