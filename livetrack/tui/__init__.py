"""The Textual monitoring dashboard (``livetrack tui``; also shown by ``livetrack run``)."""

from livetrack.tui.app import DashboardApp, TuiLogHandler, make_app

__all__ = ["DashboardApp", "TuiLogHandler", "make_app"]
