"""Per-stage latency summaries: one definition of "median ms per stage" for the worker's
status, the in-process run's summary and the dashboard (a leaf: imports nothing of
livetrack, so each of them can use it without depending on the others)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping


def stage_medians(timings: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The median milliseconds of each stage over ``timings`` (one mapping per frame,
    stage → ms), stages in the order they first appear. A stage that some frames lack is
    the median over the frames that have it; no frames, no stages."""
    per_stage: dict[str, list[float]] = {}
    for frame in timings:
        for stage, ms in frame.items():
            per_stage.setdefault(str(stage), []).append(float(ms))
    return {stage: statistics.median(values) for stage, values in per_stage.items()}
