"""Settings: one pydantic section per stage, defaults in one place, env overrides.

Each stage owns its section's model next to its code (``segment/config.py``,
``track/config.py``, ``store.py``); this module assembles them into ``Settings``, which
reads overrides from a TOML/JSON file and from ``LIVETRACK_<SECTION>__<FIELD>``
environment variables (e.g. ``LIVETRACK_TRACK__MAX_GAP=3``).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from livetrack.errors import ConfigError, validation_message
from livetrack.segment.config import SegmentConfig
from livetrack.store import StoreConfig
from livetrack.track.config import TrackConfig
from livetrack.transport import DEFAULT_EVENTS_ENDPOINT, DEFAULT_FRAMES_ENDPOINT


class WorkerConfig(BaseModel):
    """How the worker talks to drivers and consumers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames_endpoint: str = DEFAULT_FRAMES_ENDPOINT
    """Where the worker binds its PULL socket for frames from drivers."""
    events_endpoint: str = DEFAULT_EVENTS_ENDPOINT
    """Where the worker binds its PUB socket for events and status (dashboard, scripts)."""
    allow_remote: bool = False
    """Allow endpoints on non-loopback interfaces. Off by default: frames and events stay
    on this machine unless the user says otherwise."""
    receive_hwm: int = Field(default=4, ge=1)
    """Frames queued in the worker's receive socket before the sender blocks (backpressure).
    Small on purpose: a frame can be tens of MB."""
    status_interval_s: float = Field(default=1.0, gt=0)
    """Seconds between WorkerStatus heartbeats on the event channel."""
    exit_on_eos: bool = False
    """Stop the worker when every run it has seen has sent end-of-stream."""
    max_store_failures: int = Field(default=5, ge=1)
    """Consecutive failed frame commits (disk full, DB locked) before the worker stops
    instead of rejecting frames one by one."""
    max_live_trackers: int = Field(default=1024, ge=1)
    """Positions whose tracker state stays in memory (the most recently active ones). A
    position beyond is rebuilt from the store at its next frame, exactly as after a
    restart: bounded memory for thousands of positions, at the cost of reading a few
    frames back when more positions than this take turns."""


class Settings(BaseSettings):
    """All of livetrack's settings."""

    model_config = SettingsConfigDict(
        env_prefix="LIVETRACK_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    worker: WorkerConfig = WorkerConfig()
    segment: SegmentConfig = SegmentConfig()
    track: TrackConfig = TrackConfig()
    store: StoreConfig = StoreConfig()


ENV_PREFIX = "LIVETRACK_"
OTHER_ENV_VARS = frozenset({"LIVETRACK_UPDATE_SNAPSHOTS"})
"""``LIVETRACK_`` variables that are not settings (the test suite's snapshot switch)."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``LIVETRACK_`` variable that names no setting. pydantic-settings ignores
    variables it does not recognise, so ``LIVETRACK_TRAK__MAX_GAP=3`` (misspelt section)
    or ``LIVETRACK_TRACK_MAX_GAP=3`` (one underscore) would silently change nothing."""
    environ = os.environ if environ is None else environ
    sections = Settings.model_fields
    for key in sorted(environ):
        if not key.upper().startswith(ENV_PREFIX) or key.upper() in OTHER_ENV_VARS:
            continue
        section, sep, rest = key[len(ENV_PREFIX) :].lower().partition("__")
        if section not in sections:
            raise ConfigError(
                f"environment variable {key}: no settings section {section!r}"
                f"{_did_you_mean(section, sections)}; the form is "
                f"LIVETRACK_<SECTION>__<FIELD> with sections {', '.join(sections)}"
            )
        if not sep:
            continue  # the whole section as JSON, e.g. LIVETRACK_TRACK='{"max_gap": 3}'
        model = sections[section].annotation
        fields = getattr(model, "model_fields", {})
        name = rest.partition("__")[0]
        if name not in fields:
            raise ConfigError(
                f"environment variable {key}: section {section!r} has no setting {name!r}"
                f"{_did_you_mean(name, fields)}"
            )


def _did_you_mean(word: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional TOML/JSON file, env vars and explicit overrides
    (``overrides`` are section dicts, e.g. ``track={"max_gap": 3}``; they win). An
    unknown ``LIVETRACK_`` variable is an error, not ignored."""
    check_environment()
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_config_file(path)
    for section, values in overrides.items():
        merged = dict(data.get(section, {}))
        merged.update({k: v for k, v in values.items() if v is not None})
        data[section] = merged
    try:
        return Settings(**data)
    except ValidationError as err:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid settings{where}: {validation_message(err)}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix[1:] or 'JSON'}: {err}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of sections")
    return data
