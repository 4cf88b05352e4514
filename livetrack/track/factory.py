"""Build the configured tracker; the worker, the CLI and the tests all go through here."""

from __future__ import annotations

import logging
from typing import Any

from livetrack.errors import ConfigError
from livetrack.track.base import Tracker
from livetrack.track.config import TrackConfig
from livetrack.track.lap import LapTracker

log = logging.getLogger("livetrack.track")


def make_tracker(
    config: TrackConfig, frame_shape: tuple[int, int], *, shared: dict[str, Any] | None = None
) -> Tracker:
    """A fresh tracker for one position whose frames are ``frame_shape`` (rows, cols) px.

    ``shared``: a dict the caller keeps (the worker: one per process); the learned
    tracker's network is loaded into it once and every later tracker uses that copy, so
    a 96-well plate holds one network, not 96."""
    if len(frame_shape) != 2 or min(frame_shape) <= 0:
        raise ConfigError(f"frame_shape must be two positive sizes, got {frame_shape}")
    if config.method == "lap":
        return LapTracker(config, frame_shape)
    if config.method == "lstm":
        try:
            from livetrack.track.lstm import LstmTracker  # torch only when asked for
        except ImportError as exc:
            log.warning("the lstm tracker needs torch (%s); falling back to the lap tracker", exc)
            return LapTracker(config, frame_shape)
        if shared is None:
            return LstmTracker(config, frame_shape)
        model, meta = shared.get("track", (None, None))
        tracker = LstmTracker(config, frame_shape, model, meta=meta)
        shared["track"] = (tracker.model, tracker.meta)
        return tracker
    raise ConfigError(f"unknown tracking method {config.method!r}")
