"""Build the configured tracker; the worker, the CLI and the tests all go through here."""

from __future__ import annotations

import logging
from typing import Any

from livetrack.config import TrackConfig
from livetrack.errors import ConfigError
from livetrack.track.lap import lap_tracker
from livetrack.track.online import OnlineTracker

log = logging.getLogger("livetrack.track")


def make_tracker(
    config: TrackConfig, frame_shape: tuple[int, int], *, shared: dict[str, Any] | None = None
) -> OnlineTracker:
    """A fresh tracker for one position whose frames are ``frame_shape`` (rows, cols) px.

    ``shared``: a dict the caller keeps (the worker: one per process); the learned
    tracker's network is loaded into it once and every later tracker uses that copy, so
    a 96-well plate holds one network, not 96."""
    if len(frame_shape) != 2 or min(frame_shape) <= 0:
        raise ConfigError(f"frame_shape must be two positive sizes, got {frame_shape}")
    if config.method == "lap":
        return lap_tracker(config, frame_shape)
    if config.method == "lstm":
        try:
            from livetrack.track.lstm import LearnedScorer  # torch only when asked for
        except ImportError as exc:
            log.warning("the lstm tracker needs torch (%s); falling back to the lap tracker", exc)
            return lap_tracker(config, frame_shape)
        shared = {} if shared is None else shared
        model, meta = shared.get("track", (None, None))
        scorer = LearnedScorer(config, model, meta=meta)
        shared["track"] = (scorer.model, scorer.meta)
        return OnlineTracker(config, frame_shape, scorer)
    raise ConfigError(f"unknown tracking method {config.method!r}")
