"""livetrack: live cell tracking on a stream of microscope frames.

The package never configures logging itself; it logs to the ``livetrack`` logger and
only ``livetrack.cli`` attaches handlers.

From Python (see ``livetrack.api``)::

    import livetrack
    result = livetrack.track(images)          # (T, Y, X) array or path, in-process
    result.tracks.head()                      # pandas DataFrame, one row per detection
    stored = livetrack.open_run("run.db")     # a run the worker stored
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logger = logging.getLogger("livetrack")

__all__ = ["TrackingResult", "__version__", "logger", "open_run", "track"]


def __getattr__(name: str) -> Any:
    """Load the Python API on first use, so ``import livetrack`` stays light.

    ``livetrack.track`` is the ``livetrack.track`` subpackage (trackers), made callable:
    calling it is ``livetrack.api.track``."""
    if name == "track":
        return importlib.import_module("livetrack.track")
    if name in ("open_run", "TrackingResult"):
        return getattr(importlib.import_module("livetrack.api"), name)
    raise AttributeError(f"module 'livetrack' has no attribute {name!r}")
