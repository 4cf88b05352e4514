"""Typed errors. Library code raises these; only ``livetrack.cli`` turns them into
messages and exit codes."""

from __future__ import annotations

from typing import Any


class LivetrackError(Exception):
    """Base class of every error livetrack raises on purpose."""


class BadFrame(LivetrackError):
    """A frame (header or pixel buffer) failed validation; the frame is rejected."""


class BadMessage(LivetrackError):
    """A message on the wire is not a valid livetrack message."""


class SchemaMismatch(LivetrackError):
    """A message or a database was written with an incompatible schema version."""


class StoreError(LivetrackError):
    """The SQLite store could not be read or written."""


class ResumeMismatch(LivetrackError):
    """An unfinished run would be resumed with other settings or other model weights than
    it was begun with (one lineage must come from one pipeline); the message names them."""


class StoreLost(StoreError):
    """The database file was deleted or replaced while it was open for writing: what is
    committed from now on would go to a file nobody can open again, so writing stops."""


class RunInUse(StoreError):
    """Another live process is writing the run (it holds the run's lease in the store)."""

    def __init__(self, message: str, *, run_id: str, pid: int, host: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.pid = pid
        self.host = host


class SourceError(LivetrackError):
    """A frame source (driver, movie, microscope) failed or was given bad input."""


class SourceUnavailable(SourceError):
    """The source could not start: a Micro-Manager install, configuration or Studio that
    is missing or unreachable, or a channel, group or stage the hardware does not have.
    Nothing was acquired; running the same command again will fail the same way."""


class HardwareTimeout(SourceError):
    """A wait on the hardware (an image, a device) took longer than its timeout."""


class NoFramesRead(SourceError):
    """A recording ended without a single readable frame (every frame was skipped)."""


class ConfigError(LivetrackError):
    """A configuration file or option is invalid."""


class EvaluationError(LivetrackError):
    """Results or ground truth could not be evaluated (missing files, bad layout)."""


class LineageError(LivetrackError):
    """A tracker produced a lineage that cannot be: a mother with one daughter (or three),
    a daughter whose mother did not divide. Always a tracker bug, never bad input."""


class DeliveryError(LivetrackError):
    """A message could not be handed to the worker: the send gave up waiting for it."""


class SendTimeout(DeliveryError):
    """The receiver did not accept a frame within the configured time."""


class SendAborted(DeliveryError):
    """A send waiting for the worker was abandoned because the stop event was set (the
    user stopped the run: not a failure, the caller ends the stream as aborted)."""


class EndpointInUse(LivetrackError):
    """A socket could not bind because the address is already taken (another worker?)."""


def validation_message(err: Any) -> str:
    """A pydantic ``ValidationError`` as one line, ``field: message (got value)`` per
    problem, instead of pydantic's multi-line text with documentation links."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "value"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg} (got {e.get('input')!r})")
    return "; ".join(parts)


class MissingExtra(LivetrackError):
    """A feature needs an optional dependency that is not installed; the message names
    the extra to install (``pip install 'livetrack[plot]'``)."""
