"""The wire format, as pure functions: a frame is ``[header JSON, raw pixels]`` (plus a
label buffer in tracking-only mode), an end-of-stream is ``[header JSON]``, an event is
``[topic, JSON]``.

Nothing received is ever unpickled: headers are JSON parsed by pydantic, pixels are
interpreted with ``numpy.frombuffer`` after the header's shape/dtype were checked against
the buffer size. No sockets here, so the fuzz tests can drive the decoder directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError
from pydantic_core import from_json

from livetrack.errors import BadFrame, BadMessage, SchemaMismatch
from livetrack.messages import (
    DRIVER_ADAPTER,
    PUBLISHED_ADAPTER,
    SCHEMA_VERSION,
    DriverHeader,
    EndOfStream,
    FrameHeader,
    Published,
    UseModel,
)

MAX_HEADER_BYTES = 64 * 1024


class InvalidFrame(BadFrame):
    """A frame whose header is valid but whose content is not (buffer size, NaNs): the
    worker knows which frame it rejected (``header``) and can tell the driver."""

    def __init__(self, message: str, header: FrameHeader) -> None:
        super().__init__(message)
        self.header = header


# ------------------------------------------------------------------------- CURVE


@dataclass(frozen=True)
class ReceivedFrame:
    """A validated frame. ``image`` (and ``labels``) are read-only views on the buffers."""

    header: FrameHeader
    image: NDArray[np.generic]
    received: float
    labels: NDArray[np.integer] | None = None
    """Given label image (tracking-only mode), else None."""


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
    parts: list[bytes | memoryview] = [header.model_dump_json().encode(), bytes_view(arr)]
    if (labels is None) != (header.labels_dtype is None):
        raise BadFrame(f"{where}: labels given without labels_dtype in the header, or vice versa")
    if labels is not None:
        lab = _little_endian(labels)
        if lab.shape != header.shape or lab.dtype.name != header.labels_dtype:
            raise BadFrame(
                f"{where}: header says labels {header.shape} {header.labels_dtype}, "
                f"array is {lab.shape} {lab.dtype.name}"
            )
        parts.append(bytes_view(lab))
    return parts


def _little_endian(a: NDArray[Any]) -> NDArray[Any]:
    arr = np.ascontiguousarray(a)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def bytes_view(a: NDArray[Any]) -> memoryview:
    return a.reshape(-1).view(np.uint8).data


def _parse_header(raw: memoryview | bytes) -> DriverHeader:
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
) -> ReceivedFrame | EndOfStream | UseModel:
    """Validate a received multipart message (pure; used by FramePuller and fuzz tests)."""
    received = time.time()
    if not parts:
        raise BadMessage("empty message")
    msg = _parse_header(parts[0])
    if isinstance(msg, EndOfStream | UseModel):
        if len(parts) != 1:
            what = "end-of-stream" if isinstance(msg, EndOfStream) else "use-model request"
            raise BadMessage(f"{what} must be 1 part, got {len(parts)}")
        return msg
    where = f"frame {msg.position}/{msg.frame_index}"
    expected = 2 if msg.labels_dtype is None else 3
    if len(parts) != expected:
        layout = "[header, pixels]" if expected == 2 else "[header, pixels, labels]"
        raise InvalidFrame(f"{where}: expected {expected} parts {layout}, got {len(parts)}", msg)
    try:
        image = _view(parts[1], msg.dtype, msg.shape, where, "pixel")
        if image.dtype.kind == "f" and image.size and not np.isfinite(image).any():
            # (Some NaN or infinite pixels, e.g. registration's padding, the worker replaces:
            # ``livetrack.finite``. A frame without one finite pixel holds nothing.)
            raise BadFrame(f"{where}: all {image.size} pixels are NaN or infinite")
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


def decode_event(
    parts: list[bytes],
) -> Published:
    """Validate a message from the event channel (``[topic, JSON]``)."""
    if len(parts) != 2:
        raise BadMessage(f"event message must be [topic, json], got {len(parts)} parts")
    try:
        return PUBLISHED_ADAPTER.validate_json(parts[1])
    except ValidationError as err:
        raise BadMessage(f"invalid event: {_summarise(err)}") from None
