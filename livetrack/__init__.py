"""livetrack: live cell tracking on a stream of microscope frames.

The package never configures logging itself; it logs to the ``livetrack`` logger and
only ``livetrack.cli`` attaches handlers.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logger = logging.getLogger("livetrack")

__all__ = ["__version__", "logger"]
