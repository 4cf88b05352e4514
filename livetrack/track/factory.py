"""Build the configured tracker; the worker, the CLI and the tests all go through here."""

from __future__ import annotations

import logging

from livetrack.errors import ConfigError
from livetrack.track.base import Tracker
from livetrack.track.config import TrackConfig
from livetrack.track.lap import LapTracker

log = logging.getLogger("livetrack.track")


def make_tracker(config: TrackConfig, frame_shape: tuple[int, int]) -> Tracker:
    """A fresh tracker for one position whose frames are ``frame_shape`` (rows, cols) px."""
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
        return LstmTracker(config, frame_shape)
    raise ConfigError(f"unknown tracking method {config.method!r}")
