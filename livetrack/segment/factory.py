"""Builds the configured segmenter (one per position: segmenters keep per-position scale)."""

from __future__ import annotations

from livetrack.errors import ConfigError
from livetrack.segment.base import Segmenter
from livetrack.segment.classical import ClassicalSegmenter
from livetrack.segment.config import SegmentConfig


def make_segmenter(config: SegmentConfig | None = None) -> Segmenter:
    config = config or SegmentConfig()
    if config.method == "classical":
        return ClassicalSegmenter(config)
    raise ConfigError(f"unknown segmentation method {config.method!r}")
