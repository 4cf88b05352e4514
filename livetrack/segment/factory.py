"""Builds the configured segmenter (one per position: segmenters keep per-position scale)."""

from __future__ import annotations

import logging
from typing import Any

from livetrack.config import SegmentConfig
from livetrack.errors import ConfigError
from livetrack.segment.base import Segmenter
from livetrack.segment.classical import ClassicalSegmenter

log = logging.getLogger("livetrack.segment.factory")


def make_segmenter(
    config: SegmentConfig | None = None, *, shared: dict[str, Any] | None = None
) -> Segmenter:
    """The configured segmenter. 'learned' needs torch; without it the classical
    segmenter is used (logged), so a worker without torch still runs.

    ``shared``: a dict the caller keeps (the worker: one per process); the learned model
    is loaded into it once and shared by the segmenters of every position (each keeps
    its own nucleus scale)."""
    config = config or SegmentConfig()
    if config.method == "classical":
        return ClassicalSegmenter(config)
    if config.method == "learned":
        try:
            from livetrack.segment.learned import LearnedSegmenter
        except (ImportError, OSError) as exc:  # no torch, or its libraries fail to load
            log.warning("learned segmenter unavailable (%s); using the classical one", exc)
            return ClassicalSegmenter(config)
        if shared is None:
            return LearnedSegmenter(config)
        segmenter = LearnedSegmenter(config, model=shared.get("segment"))
        shared["segment"] = segmenter.model
        return segmenter
    raise ConfigError(f"unknown segmentation method {config.method!r}")
