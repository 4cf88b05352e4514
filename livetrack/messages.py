"""Wire messages: frozen pydantic models with a ``kind`` discriminator.

Acknowledged delivery (so a driver survives a worker crash): a driver that subscribes to
the worker's event channel sets ``FrameHeader.previous_frame`` and keeps every frame until
the worker publishes a ``FrameCommitted`` for it (or for a later frame of the same
position — acks are cumulative per position). The worker publishes ``FrameCommitted`` only
after the frame's SQLite transaction committed, so an acknowledged frame is durable. A
worker refuses a frame whose ``previous_frame`` it has neither stored nor rejected, so
frames lost in a dead worker's socket are re-sent in order instead of being tracked across
a gap. Every worker process has its own ``worker_id`` (in ``FrameCommitted`` and
``WorkerStatus``): a driver that sees a new one knows the worker restarted and re-sends
what is not acknowledged; re-sent frames that were already stored are idempotent.

Every message carries ``schema`` (the wire schema version). A receiver validates a
message once, at the edge (``transport``), and rejects anything that does not parse or
whose major version differs with ``BadMessage`` / ``SchemaMismatch``. JSON only —
nothing that crosses a socket is ever unpickled.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 3
"""Bump on any incompatible change of a message model. 2: ``UseModel``/``ModelAnswer`` and
``WorkerStatus.frames_endpoint`` (a version-1 receiver would refuse them field by field;
this way both sides are told to upgrade). 3: ``UseModel.track_model`` (a segment model
optional), ``ModelAnswer.tracker``."""

MAX_FRAMES = 10_000_000
"""Most time points one position may have; frame indices are ``0 .. MAX_FRAMES - 1``.

Generous on purpose: a frame every 10 ms for more than 27 hours, or one a second for
115 days; no real acquisition comes near it. Without a bound one hostile or corrupt
header (``frame_index`` 2**63 - 1) overflows the tracker's int64 arrays, or makes
``livetrack export --ctc`` write empty masks for quintillions of missing frames."""

MAX_COUNT = 2**53
"""Bound on the other counters on the wire (frames sent in a run over all positions):
the largest integer a JSON reader that uses doubles still reads exactly."""

SUPPORTED_DTYPES: frozenset[str] = frozenset(
    {"uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64"}
)
"""Pixel dtypes a frame may have on the wire (little-endian)."""

LABEL_DTYPES: frozenset[str] = frozenset({"uint8", "uint16", "uint32", "int32"})
"""Integer dtypes a label image may have on the wire."""

MAX_PIXELS = 16384 * 16384
"""Upper bound on H×W of one frame; protects the worker from absurd headers."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: StrictInt = SCHEMA_VERSION
    """Wire schema version of the sender: a JSON integer ("2" or 2.0 is refused)."""


class FrameHeader(_Message):
    """Describes the raw pixel buffer sent in the same multipart message."""

    kind: Literal["frame"] = "frame"
    run_id: str = Field(min_length=1, max_length=200)
    """Identifies one acquisition; a restarted worker resumes the same run_id."""
    position: str = Field(min_length=1, max_length=200)
    """Stage position / field of view / well name. Tracker state is kept per position."""
    frame_index: int = Field(ge=0, lt=MAX_FRAMES)
    """Time-point index within the position, starting at 0 (below MAX_FRAMES)."""
    timestamp: float
    """Acquisition time, seconds since the epoch."""
    shape: tuple[int, int]
    """(height, width) of the 2-D frame in pixels."""
    dtype: str
    """NumPy dtype name of the pixels (little-endian), one of SUPPORTED_DTYPES."""
    pixel_size_um: float | None = None
    """Pixel size in micrometres, when the source knows it."""
    channel: str = Field(default="default", max_length=200)
    """Channel name (e.g. "DAPI"); the worker tracks one channel per position."""
    total_frames: int | None = Field(default=None, ge=0, le=MAX_FRAMES)
    """Frames the source expects to send for this position, if known (for progress/ETA)."""
    source: str = Field(default="", max_length=1000)
    """Human-readable description of the source (driver name and its main settings)."""
    labels_dtype: str | None = None
    """When set, a third message part carries a label image of this integer dtype and the
    frame's shape, and the worker tracks these labels instead of segmenting
    (tracking-only mode, e.g. replaying ground-truth masks)."""
    previous_frame: int | None = Field(default=None, ge=0, lt=MAX_FRAMES)
    """Acknowledged mode only: the index of the frame the driver sent before this one for
    the same position (None for the first). A worker that has not handled that frame
    (stored or rejected it) refuses this one: the frames in between were lost on the way
    (e.g. in a crashed worker's socket) and the driver re-sends them first."""

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in SUPPORTED_DTYPES:
            raise ValueError(
                f"unsupported pixel dtype {v!r}; use one of {sorted(SUPPORTED_DTYPES)}"
            )
        return v

    @field_validator("labels_dtype")
    @classmethod
    def _integer_labels(cls, v: str | None) -> str | None:
        if v is not None and v not in LABEL_DTYPES:
            raise ValueError(f"unsupported label dtype {v!r}; use one of {sorted(LABEL_DTYPES)}")
        return v

    @field_validator("shape")
    @classmethod
    def _sane_shape(cls, v: tuple[int, int]) -> tuple[int, int]:
        h, w = v
        if h < 1 or w < 1 or h * w > MAX_PIXELS:
            raise ValueError(f"frame shape {v} is empty or larger than {MAX_PIXELS} pixels")
        return v

    @field_validator("timestamp")
    @classmethod
    def _finite_time(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("timestamp must be a finite number")
        return v

    @field_validator("pixel_size_um")
    @classmethod
    def _positive_pixel(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"pixel_size_um must be a positive number, got {v}")
        return v

    @property
    def nbytes(self) -> int:
        """Size in bytes the pixel buffer must have."""
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize

    @property
    def labels_nbytes(self) -> int:
        """Size in bytes the label buffer must have (0 when no labels are sent)."""
        if self.labels_dtype is None:
            return 0
        return self.shape[0] * self.shape[1] * np.dtype(self.labels_dtype).itemsize


class EndOfStream(_Message):
    """Sent by a driver after its last frame. ``positions`` lists what it sent."""

    kind: Literal["eos"] = "eos"
    run_id: str = Field(min_length=1, max_length=200)
    positions: tuple[str, ...] = ()
    frames_sent: int = Field(default=0, ge=0, le=MAX_COUNT)
    reason: Literal["complete", "aborted", "error"] = "complete"
    message: str = ""
    frames_dropped: int = Field(default=0, ge=0, le=MAX_COUNT)
    """Frames the driver dropped on purpose (explicitly lossy mode only), also logged."""


class UseModel(_Message):
    """Asks a running worker to segment and/or track with other models from its next frame
    on — models fine-tuned on this run's corrected frames, say (``livetrack use-model``).
    Sent on the frame channel, so it takes effect between two frames. The worker loads and
    checks every named model first: every position then switches (each keeps its nucleus
    scale and its open tracks), or, when one cannot be loaded, the worker keeps the models
    it has. Either way it answers with a ``ModelAnswer`` carrying ``request_id``. The runs
    open at the switch record it, so a run resumed after a restart goes on with the models
    it was switched to (the store also records, per frame, which models produced it)."""

    kind: Literal["use_model"] = "use_model"
    segment_model: str | None = Field(default=None, min_length=1, max_length=4096)
    """Segmentation model folder (config.json + weights.pt) on the worker's machine."""
    track_model: str | None = Field(default=None, min_length=1, max_length=4096)
    """Tracking (LSTM) model folder on the worker's machine."""
    request_id: str = Field(default="", max_length=64)
    """Echoed in the answer, so the requester recognises it."""

    @model_validator(mode="after")
    def _names_a_model(self) -> UseModel:
        if self.segment_model is None and self.track_model is None:
            raise ValueError("a use-model request names a segment_model, a track_model or both")
        return self


DriverMessage = Annotated[FrameHeader | EndOfStream | UseModel, Field(discriminator="kind")]
"""What travels on the frame channel (PUSH → PULL)."""


class TrackEvent(_Message):
    """A lineage event, published live as the worker commits a frame."""

    kind: Literal["event"] = "event"
    run_id: str
    position: str
    frame: int
    event: Literal["new_track", "division", "lost", "left"]
    """'new_track' (appeared, not from a division), 'division' (into two daughters), 'lost'
    (ended inside the field), 'left' (left the field); a sender from before these words
    ('birth', 'death') is read as 'new_track', 'lost'."""
    track_id: int
    """Division: the mother; new track: the track; lost / left: the ended track."""
    daughters: tuple[int, ...] = ()
    y: float | None = None
    x: float | None = None
    confidence: float = 1.0
    timestamp: float
    """Acquisition time of the frame the event was detected in."""

    @field_validator("event", mode="before")
    @classmethod
    def _legacy_words(cls, value: object) -> object:
        if isinstance(value, str):
            return {"birth": "new_track", "death": "lost"}.get(value, value)
        return value

    @model_validator(mode="after")
    def _division_has_daughters(self) -> TrackEvent:
        if self.event == "division" and len(self.daughters) != 2:
            raise ValueError(f"a division event needs two daughters (got {list(self.daughters)})")
        return self


class PositionStatus(BaseModel):
    """Per-position health inside a WorkerStatus."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    position: str
    last_frame: int
    n_cells: int
    active_tracks: int
    divisions: int
    updated: float
    """Wall-clock time of the last committed frame of this position."""


class WorkerStatus(_Message):
    """Periodic heartbeat with throughput, latency and per-position progress."""

    kind: Literal["status"] = "status"
    run_id: str | None
    state: Literal["idle", "running", "finished", "stopping"]
    frames_processed: int
    frames_rejected: int
    fps: float
    """Frames committed per second over the last few seconds."""
    stage_ms: dict[str, float]
    """Median ms per stage (receive, segment, track, store) over recent frames."""
    lag_s: float
    """Seconds from the acquisition timestamp of the last committed frame to its commit:
    grows when the worker falls behind the microscope."""
    device: str
    positions: tuple[PositionStatus, ...] = ()
    segmenter: str = ""
    tracker: str = ""
    db_path: str = ""
    timestamp: float
    worker_id: str = ""
    """Random id of the worker process; a new one means the worker restarted."""
    frames_endpoint: str = ""
    """Where the worker receives frames (and ``UseModel`` requests): ``livetrack run`` and
    ``replay`` bind a free loopback port, announced here."""


class FrameCommitted(_Message):
    """Acknowledgement: the worker has durably dealt with a frame (or an end-of-stream).

    Published on the event channel (topic ``committed``) *after* the frame's transaction
    committed. ``status`` 'stored' = committed now, 'duplicate' = it was already stored
    (a re-send), 'end-of-stream' = the run's end-of-stream was handled (``position`` and
    ``frame_index`` are None). Acks are cumulative per (run, position): the worker handles
    a position's frames in order, so every frame up to ``frame_index`` is done with.
    """

    kind: Literal["committed"] = "committed"
    run_id: str
    position: str | None = None
    frame_index: int | None = None
    status: Literal["stored", "duplicate", "end-of-stream"]
    worker_id: str
    timestamp: float


class FrameRejected(_Message):
    """Published when the worker rejects a frame or message, so a dashboard can show it."""

    kind: Literal["rejected"] = "rejected"
    run_id: str | None = None
    position: str | None = None
    frame_index: int | None = None
    reason: str
    timestamp: float
    final: bool = False
    """The frame itself is bad (its content): sending it again cannot help. An
    acknowledging driver stops re-sending it and reports it as rejected. False for a
    refusal that a re-send cures (a frame whose predecessor never arrived)."""


class ModelAnswer(_Message):
    """The worker's answer to a ``UseModel`` request (topic ``model``)."""

    kind: Literal["model"] = "model"
    request_id: str = ""
    ok: bool
    """True: every position now segments / tracks with the requested models."""
    segmenter: str
    """What segments now: the new model's id when ``ok`` and one was asked for, else the
    one kept."""
    tracker: str = ""
    """What tracks now (as ``segmenter``)."""
    message: str = ""
    """Why the request was refused (``ok`` False), in one line."""
    timestamp: float


DriverHeader = FrameHeader | EndOfStream | UseModel
"""A validated header from the frame channel."""
Published = TrackEvent | WorkerStatus | FrameRejected | FrameCommitted | ModelAnswer
"""A validated message from the event channel."""

PublishedMessage = Annotated[Published, Field(discriminator="kind")]
"""What travels on the event channel (PUB → SUB)."""

DRIVER_ADAPTER: TypeAdapter[DriverHeader] = TypeAdapter(DriverMessage)
PUBLISHED_ADAPTER: TypeAdapter[Published] = TypeAdapter(PublishedMessage)
