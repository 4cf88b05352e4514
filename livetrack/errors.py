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


class ConfigError(LivetrackError):
    """A configuration file or option is invalid."""


class EvaluationError(LivetrackError):
    """Results or ground truth could not be evaluated (missing files, bad layout)."""


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
