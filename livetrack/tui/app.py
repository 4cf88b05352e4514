"""The Textual monitoring dashboard: run header, per-position health, a live division feed,
cells-over-time sparklines and the lineage of a selected division.

Threads: the UI thread only draws. One worker thread drains the event socket and posts a
merged ``LiveUpdate`` a few times per second at most; another polls SQLite and answers
lineage requests, posting ``DbUpdate`` / ``LineageReady``. Both survive a missing source:
they post a ``SourceProblem`` (shown in the header, never a traceback) and keep trying,
so a worker that starts later, restarts, or a database that appears later is picked up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets.data_table import RowDoesNotExist
from textual.worker import get_current_worker

from livetrack.errors import LivetrackError
from livetrack.messages import FrameRejected, WorkerStatus
from livetrack.tui.data import (
    DbPoller,
    DbSnapshot,
    Division,
    LiveBatch,
    LiveListener,
    PositionRow,
    RunStats,
    build_lineage,
    position_rows_from_status,
    stats_from_status,
)
from livetrack.tui.widgets import (
    NAVIGATION_KEYS,
    HelpScreen,
    LineageTree,
    Sparklines,
    key_names,
)

log = logging.getLogger("livetrack.tui")

FEED_ROWS = 500
"""Divisions shown in the feed (newest first); older ones stay in the store."""
LIVE_WINDOW_S = 0.25
"""The socket is drained in windows this long: at most four feed updates per second."""
SILENT_AFTER_S = 5.0
"""No message for this long (the worker sends status every second) = worker not there."""


# --------------------------------------------------------------------------- messages


class LiveUpdate(Message):
    def __init__(self, batch: LiveBatch) -> None:
        super().__init__()
        self.batch = batch


class DbUpdate(Message):
    def __init__(self, snapshot: DbSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class SourceProblem(Message):
    """A source is missing or broken; ``text`` is for the user. Empty text = recovered."""

    def __init__(self, source: Literal["live", "db"], text: str) -> None:
        super().__init__()
        self.source = source
        self.text = text


class LineageReady(Message):
    def __init__(self, lineage: Any) -> None:
        super().__init__()
        self.lineage = lineage


class AttachEndpoint(Message):
    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint


class PipelineDone(Message):
    def __init__(self, text: str, error: bool) -> None:
        super().__init__()
        self.text = text
        self.error = error


class LogLine(Message):
    def __init__(self, text: str, level: int) -> None:
        super().__init__()
        self.text = text
        self.level = level


@dataclass(frozen=True)
class LineageRequest:
    run_id: str
    position: str
    track_id: int


# --------------------------------------------------------------------------- the app


KEY_BINDINGS: tuple[Binding, ...] = (
    Binding("question_mark", "help", "keys", tooltip="show / hide this help"),
    Binding("q", "quit", "quit", tooltip="quit (stops a run started by `livetrack run`)"),
    Binding("ctrl+c", "quit", "quit", show=False, priority=True, tooltip="quit, as q"),
    Binding(
        "p,space",
        "toggle_pause",
        "pause",
        tooltip="pause / resume the divisions feed (new divisions are counted meanwhile)",
    ),
    Binding("d", "jump_division", "newest div", tooltip="jump to the newest division"),
    Binding("l", "lineage", "lineage", tooltip="open the lineage of the highlighted division"),
    Binding(
        "slash",
        "filter",
        "filter",
        tooltip="filter the feed by position name or track id (enter applies, esc cancels)",
    ),
    Binding("a", "all_positions", "all", tooltip="all positions again: clear the filter"),
    Binding(
        "escape",
        "escape",
        "back",
        show=False,
        tooltip="close the filter box, else clear the position selection and filter",
    ),
)
"""The app's keys. The tooltip is what the help screen (and the footer, on hover) says a
key does, so the help lists every binding there is."""


class DashboardApp(App[None]):
    """Build it with ``make_app``; the CLI and the tests both do."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "livetrack"
    BINDINGS: ClassVar[list[BindingType]] = list(KEY_BINDINGS)

    def __init__(
        self,
        *,
        db_path: Path | None,
        endpoint: str | None,
        run_id: str | None,
        poll_interval_s: float,
        stale_after_s: float,
        stop: threading.Event | None,
        on_start: Callable[[DashboardApp], None] | None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__()
        self.db_path = db_path
        self.endpoint = endpoint
        self.pinned_run = run_id
        self.poll_interval_s = poll_interval_s
        self.stale_after_s = stale_after_s
        self.stop_event = stop
        self._on_start = on_start
        self.clock = clock
        self.run_id: str | None = run_id
        self.divisions: dict[str, Division] = {}
        self.positions: dict[str, PositionRow] = {}
        self.cells: dict[str, list[int]] = {}
        self.stats: RunStats | None = None
        self.live_status: WorkerStatus | None = None
        self.live_last_rx: float | None = None
        self.db_snapshot: DbSnapshot | None = None
        self.problems: dict[str, str] = {}
        self.rejected: list[FrameRejected] = []
        self.paused = False
        self.unseen = 0
        self.filter_text = ""
        self.selected_position: str | None = None
        self.finished_text: str | None = None
        self.finished_error = False
        self.lineage_shown: Any = None
        self._feed_dirty = True
        self._db_requests: queue.Queue[LineageRequest] = queue.Queue()
        self._db_worker_running = False
        self._follow_run: str | None = None
        # Widgets are kept as attributes, not looked up: App.query_one searches the
        # *current* screen, which is the help screen while it is open.
        self.header_panel = Static(id="header")
        self.positions_table: DataTable[Any] = DataTable(
            id="positions", cursor_type="row", zebra_stripes=True
        )
        self.sparks = Sparklines(id="sparks")
        self.feed: DataTable[Any] = DataTable(id="feed", cursor_type="row")
        self.lineage_tree = LineageTree(id="lineage")
        self.filter_box = Input(
            placeholder="filter: position name or track id (enter, esc)", id="filter"
        )

    # ---------------------------------------------------------------- layout
    def compose(self) -> ComposeResult:
        yield self.header_panel
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield self.positions_table
                yield self.sparks
            with Vertical(id="right"):
                yield self.feed
                yield self.lineage_tree
        yield self.filter_box
        yield Footer()

    def on_mount(self) -> None:
        positions = self.positions_table
        positions.add_columns("pos", "frame", "cells", "tracks", "div", "age")
        positions.border_title = "Positions"
        feed = self.feed
        feed.add_columns("time", "pos", "f", "division", "conf")
        self.sparks.border_title = "Cells over time"
        self.lineage_tree.border_title = "Lineage"
        self._update_feed_title()
        if self.db_path is not None:
            self._start_db(self.db_path)
        if self.endpoint is not None:
            self._listen(self.endpoint)
        if self.db_path is None and self.endpoint is None:
            self.problems["db"] = "nothing to show: give --db PATH and/or --connect ENDPOINT"
        self.set_interval(1.0, self._tick)
        self._render_header()
        feed.focus()
        if self._on_start is not None:
            self._on_start(self)

    # ------------------------------------------------------- thread-safe API
    def attach_endpoint(self, endpoint: str) -> None:
        """Subscribe to a worker's events (callable from any thread)."""
        self.post_message(AttachEndpoint(endpoint))

    def pipeline_finished(self, text: str, *, error: bool = False) -> None:
        """The in-process run ended (callable from any thread): keep showing, say so."""
        self.post_message(PipelineDone(text, error))

    def log_line(self, text: str, level: int) -> None:
        self.post_message(LogLine(text, level))

    # ---------------------------------------------------------------- workers
    @work(thread=True, exclusive=True, group="live")
    def _listen(self, endpoint: str) -> None:
        """Drain the event socket in short windows; one posted message per window."""
        worker = get_current_worker()
        try:
            listener = LiveListener(endpoint)
        except LivetrackError as err:
            self.post_message(SourceProblem("live", f"cannot subscribe to {endpoint}: {err}"))
            return
        try:
            while not worker.is_cancelled:
                batch = listener.drain(LIVE_WINDOW_S)
                if batch is not None:
                    self.post_message(LiveUpdate(batch))
        finally:
            listener.close()

    def _start_db(self, path: Path) -> None:
        if self._db_worker_running:
            return
        self._db_worker_running = True
        self.db_path = path
        self._poll_db(path)

    @work(thread=True, exclusive=True, group="db")
    def _poll_db(self, path: Path) -> None:
        """Poll the store every ``poll_interval_s``; answer lineage requests in between."""
        worker = get_current_worker()
        poller = DbPoller(path, self.pinned_run)
        next_poll = 0.0
        try:
            while not worker.is_cancelled:
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self.poll_interval_s
                    poller.follow_run = self._follow_run
                    self._poll_once(poller)
                try:
                    request = self._db_requests.get(timeout=min(0.2, self.poll_interval_s))
                except queue.Empty:
                    continue
                self._answer_lineage(poller, request)
        finally:
            poller.close()

    def _poll_once(self, poller: DbPoller) -> None:
        try:
            snapshot = poller.poll()
        except LivetrackError as err:
            self.post_message(SourceProblem("db", _db_problem_text(poller.path, err)))
            return
        self.post_message(SourceProblem("db", ""))
        self.post_message(DbUpdate(snapshot))

    def _answer_lineage(self, poller: DbPoller, request: LineageRequest) -> None:
        try:
            tracks = poller.tracks(request.run_id, request.position)
        except LivetrackError as err:
            self.post_message(SourceProblem("db", _db_problem_text(poller.path, err)))
            return
        lineage = build_lineage(
            tracks, request.track_id, run_id=request.run_id, position=request.position
        )
        self.post_message(LineageReady(lineage))

    # --------------------------------------------------------------- handlers
    def on_attach_endpoint(self, message: AttachEndpoint) -> None:
        self.endpoint = message.endpoint
        self.problems.pop("live", None)
        self._listen(message.endpoint)
        self._render_header()

    def on_live_update(self, message: LiveUpdate) -> None:
        batch = message.batch
        self.live_last_rx = batch.received
        self.problems.pop("live", None)
        if batch.status is not None:
            self._apply_status(batch.status)
        for d in batch.divisions:
            self._add_division(d)
        if batch.rejected:
            self.rejected.extend(batch.rejected)
            last = batch.rejected[-1]
            # markup=False: texts from the wire (a reason naming a path, say) are shown as
            # written, never parsed as Textual markup or actions.
            self.notify(
                f"frame rejected: {last.reason}", severity="warning", timeout=6, markup=False
            )
        for answer in batch.models:
            if answer.ok:
                tracker = f", tracking with {answer.tracker}" if answer.tracker else ""
                self.notify(
                    f"segmenting with {answer.segmenter}{tracker} from the next frame",
                    timeout=8,
                    markup=False,
                )
            else:
                self.notify(
                    f"model switch refused, still {answer.segmenter}: {answer.message}",
                    severity="error",
                    timeout=10,
                    markup=False,
                )
        self._refresh_views()

    def _apply_status(self, status: WorkerStatus) -> None:
        self.live_status = status
        if self.pinned_run is None and status.run_id is not None:
            if status.run_id != self.run_id:
                self._switch_run(status.run_id)
            self._follow_run = status.run_id
        if status.run_id == self.run_id or self.run_id is None:
            for row in position_rows_from_status(status):
                old = self.positions.get(row.position)
                if old is None or row.last_frame >= old.last_frame:
                    interval = old.interval_s if old is not None else None
                    self.positions[row.position] = _with_interval(row, interval)
            if status.frames_processed or self.stats is None:
                self.stats = stats_from_status(status)
        if self.db_path is None and status.db_path and Path(status.db_path).is_file():
            self._start_db(Path(status.db_path))

    def _switch_run(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.divisions.clear()
        self.positions.clear()
        self.cells.clear()
        self.stats = None
        self._feed_dirty = True

    def on_db_update(self, message: DbUpdate) -> None:
        snap = message.snapshot
        self.db_snapshot = snap
        if snap.run_id is None:
            self._refresh_views()
            return
        if snap.run_id != self.run_id:
            if self.run_id is not None and self._follow_run == self.run_id:
                return  # the live worker's run is not in the file yet
            self._switch_run(snap.run_id)
        for row in snap.positions:
            old = self.positions.get(row.position)
            if old is None or row.last_frame >= old.last_frame:
                self.positions[row.position] = row
            else:
                self.positions[row.position] = _with_interval(old, row.interval_s)
        self.cells = snap.cells
        for d in snap.new_divisions:
            self._add_division(d)
        if self.live_status is None or self._live_silent():
            self.stats = snap.stats
        self._refresh_views()

    def on_source_problem(self, message: SourceProblem) -> None:
        if message.text:
            self.problems[message.source] = message.text
        else:
            self.problems.pop(message.source, None)
        self._render_header()

    def on_lineage_ready(self, message: LineageReady) -> None:
        self.lineage_shown = message.lineage
        tree = self.lineage_tree
        tree.show(message.lineage)
        tree.border_title = f"Lineage · {message.lineage.position} track {message.lineage.track_id}"

    def on_pipeline_done(self, message: PipelineDone) -> None:
        self.finished_text = message.text
        self.finished_error = message.error
        self.notify(
            message.text, severity="error" if message.error else "information", markup=False
        )
        self._render_header()

    def on_log_line(self, message: LogLine) -> None:
        if message.level >= logging.WARNING:
            error = message.level >= logging.ERROR
            self.notify(
                message.text, severity="error" if error else "warning", timeout=8, markup=False
            )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "feed":
            self._open_lineage(str(event.row_key.value))
        elif event.data_table.id == "positions":
            self.selected_position = str(event.row_key.value)
            self._feed_dirty = True
            self._refresh_views()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        self._hide_filter()
        self._feed_dirty = True
        self._refresh_views()

    # ---------------------------------------------------------------- actions
    def action_help(self) -> None:
        self.push_screen(HelpScreen(help_keys()))

    async def action_quit(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        self.exit()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.unseen = 0
            self._feed_dirty = True
            self._refresh_views()
        self._update_feed_title()

    def action_jump_division(self) -> None:
        feed = self.feed
        if self.paused:
            self.action_toggle_pause()
        feed.focus()
        if feed.row_count:
            feed.move_cursor(row=0)

    def action_lineage(self) -> None:
        feed = self.feed
        if not feed.row_count:
            self.notify("no division to open yet", timeout=3)
            return
        row_key, _ = feed.coordinate_to_cell_key(feed.cursor_coordinate)
        self._open_lineage(str(row_key.value))

    def action_filter(self) -> None:
        box = self.filter_box
        box.value = self.filter_text
        box.add_class("visible")
        box.focus()

    def action_all_positions(self) -> None:
        self.selected_position = None
        self.filter_text = ""
        self._feed_dirty = True
        self._refresh_views()

    def action_escape(self) -> None:
        if self.filter_box.has_class("visible"):
            self._hide_filter()
        elif self.filter_text or self.selected_position:
            self.action_all_positions()

    def _hide_filter(self) -> None:
        self.filter_box.remove_class("visible")
        self.feed.focus()

    # --------------------------------------------------------------- lineage
    def _open_lineage(self, key: str) -> None:
        division = self.divisions.get(key)
        if division is None:
            return
        tree = self.lineage_tree
        if not self._db_worker_running:
            tree.show_message("the lineage is read from the database: give --db PATH")
            return
        tree.show_message(f"loading track {division.mother} …")
        self._db_requests.put(LineageRequest(division.run_id, division.position, division.mother))

    # ---------------------------------------------------------------- drawing
    def _add_division(self, d: Division) -> None:
        if self.run_id is not None and d.run_id != self.run_id:
            return
        if d.key in self.divisions:
            return
        self.divisions[d.key] = d
        self._feed_dirty = True
        if self.paused:
            self.unseen += 1

    def _tick(self) -> None:
        """Once a second: ages and liveness change with the clock alone."""
        self._render_positions()
        self._render_header()

    def _refresh_views(self) -> None:
        self._render_header()
        self._render_positions()
        self.sparks.show(self.cells, self.selected_position)
        if self._feed_dirty and not self.paused:
            self._render_feed()
        self._update_feed_title()

    def visible_divisions(self) -> list[Division]:
        """The feed's rows: newest first in acquisition order (``Division.order``), position
        selection and filter applied."""
        rows = [d for d in self.divisions.values() if _matches(d, self.selected_position)]
        if self.filter_text:
            rows = [d for d in rows if _matches_filter(d, self.filter_text)]
        rows.sort(key=lambda d: d.order, reverse=True)
        return rows[:FEED_ROWS]

    def _render_feed(self) -> None:
        feed = self.feed
        current = None
        # A cursor on the newest row follows the newest division; a cursor the user moved
        # down stays on the division it was on while new ones arrive above it.
        if feed.row_count and feed.cursor_row > 0:
            current = feed.coordinate_to_cell_key(feed.cursor_coordinate).row_key.value
        feed.clear()
        for d in self.visible_divisions():
            feed.add_row(
                time.strftime("%H:%M:%S", time.localtime(d.when)),
                d.position,
                str(d.frame),
                f"{d.mother}→{' '.join(str(x) for x in d.daughters)}",
                f"{d.confidence:.2f}",
                key=d.key,
            )
        if current is not None and current in self.divisions:
            with contextlib.suppress(RowDoesNotExist):
                feed.move_cursor(row=feed.get_row_index(current))
        self._feed_dirty = False

    def _update_feed_title(self) -> None:
        feed = self.feed
        title = "Divisions, newest first"
        if self.selected_position:
            title += f" · {self.selected_position}"
        if self.filter_text:
            title += f" · filter “{self.filter_text}”"
        feed.border_title = title
        feed.border_subtitle = f"⏸ paused · {self.unseen} new" if self.paused else ""

    def _render_positions(self) -> None:
        table = self.positions_table
        current = None
        if table.row_count:
            current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        now = self.clock()
        for pos, row in sorted(self.positions.items()):
            age = max(now - row.updated, 0.0) if row.updated else None
            stale = self._is_stale(row, age)
            style = "bold red" if stale else ("bold" if pos == self.selected_position else "")
            table.add_row(
                Text(pos, style=style),
                str(row.last_frame),
                str(row.n_cells),
                str(row.active_tracks),
                str(row.divisions),
                Text(_age(age) + (" !" if stale else ""), style="red" if stale else ""),
                key=pos,
            )
        if current is not None and current in self.positions:
            with contextlib.suppress(RowDoesNotExist):
                table.move_cursor(row=table.get_row_index(current))
        n_stale = sum(
            self._is_stale(r, now - r.updated if r.updated else None)
            for r in self.positions.values()
        )
        table.border_subtitle = f"{n_stale} stale" if n_stale else ""

    def _is_stale(self, row: PositionRow, age: float | None) -> bool:
        """No new frame for much longer than usual, while the run is still going."""
        if age is None or self._run_over():
            return False
        usual = row.interval_s or 0.0
        return age > max(self.stale_after_s, 5.0 * usual)

    def _run_state(self) -> str:
        """The shown run's state in one word: 'running', 'finished', 'aborted', 'ended' (its
        worker went idle or stopped and no database says how the run ended), 'idle' (a
        worker with no run yet) or '' (nothing known). The store is the record of the run;
        a worker's status speaks for it only while it arrives and is about this run."""
        if self.finished_text is not None:
            return "aborted" if self.finished_error else "finished"
        snap = self.db_snapshot
        stored = ""
        if snap is not None and snap.run_id is not None and snap.run_id == self.run_id:
            stored = snap.run_status
        if stored in ("finished", "aborted"):
            return stored
        live = self.live_status
        if live is not None and not self._live_silent() and live.run_id == self.run_id:
            if live.state == "running" or live.run_id is None:
                return live.state
            return "ended"  # idle, finished or stopping: no open run any more
        return stored

    def _run_over(self) -> bool:
        """The shown run has ended: no new frames are expected (nothing is stale, a quiet
        socket is not a worker problem, a lag is history)."""
        return self._run_state() in ("finished", "aborted", "ended")

    def _frames_stored(self) -> int | None:
        """Frames of the shown run: what the store holds whenever it is read, so a
        restarted worker (whose own count starts again) does not reset it; else the live
        worker's count."""
        snap = self.db_snapshot
        if snap is not None and snap.run_id == self.run_id and snap.stats is not None:
            return snap.stats.frames
        return None if self.stats is None else self.stats.frames

    def _lag_s(self) -> float | None:
        """The lag, only while the run is live: running, and its worker heard from (or no
        socket to hear from: the store's figure of the last commit)."""
        if self.stats is None or self._run_state() != "running":
            return None
        if self.endpoint is not None and self._live_silent():
            return None
        return self.stats.lag_s

    def _live_silent(self) -> bool:
        return self.live_last_rx is None or self.clock() - self.live_last_rx > SILENT_AFTER_S

    def _render_header(self) -> None:
        self.header_panel.update(self.header_text())

    def header_text(self) -> Text:
        """Three lines: run and throughput, latency and source, connections and problems."""
        snap = self.db_snapshot
        stats = self.stats
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("livetrack ", style="bold")
        line.append(f"run {self.run_id or '—'} ", style="bold cyan")
        line.append_text(self._state_text())
        line.append(f"  {len(self.positions)} pos")
        frames = self._frames_stored()
        if frames is not None:
            line.append(f"  {frames} frames")
        if stats is not None:
            line.append(f"  {stats.fps:.1f} fr/s")
        line.append(f"  {len(self.divisions)} div")
        lag = self._lag_s()
        if lag is not None:
            line.append(f"  lag {lag:.1f} s")
        line.append("\n")
        if stats is not None and stats.stage_ms:
            line.append(
                "ms " + " ".join(f"{k} {v:.0f}" for k, v in stats.stage_ms.items()), style="dim"
            )
        device = stats.device if stats is not None and stats.device else ""
        if self.live_status is not None:
            device = self.live_status.device
            seg = self.live_status.segmenter
            line.append(f"  {device} · {seg}/{self.live_status.tracker}", style="dim")
        if snap is not None and snap.source:
            line.append(f"  source: {snap.source}", style="dim")
        line.append("\n")
        line.append_text(self._connection_text())
        return line

    def _state_text(self) -> Text:
        state = self._run_state()
        if state in ("finished", "aborted", "ended"):
            hint = " — q quits" if self.finished_text is not None else ""
            style = "bold red" if state == "aborted" else "bold yellow"
            return Text(f"■ run {state}{hint}", style=style)
        if state:
            return Text(f"● {state}", style="bold green")
        return Text("○ waiting", style="dim")

    def _connection_text(self) -> Text:
        out = Text()
        if self.endpoint is None:
            out.append("live: off", style="dim")
        elif "live" in self.problems:
            out.append(f"live ✗ {self.problems['live']}", style="bold red")
        elif self.live_last_rx is None:
            out.append(f"live ○ waiting for a worker on {self.endpoint}", style="yellow")
        elif self._live_silent() and self._run_over():
            out.append(f"live ■ run ended; still listening on {self.endpoint}", style="dim")
        elif self._live_silent():
            silent = self.clock() - self.live_last_rx
            out.append(
                f"live ○ nothing from {self.endpoint} for {silent:.0f} s (worker stopped?"
                " reconnecting)",
                style="yellow",
            )
        else:
            out.append(f"live ● {self.endpoint}", style="green")
        out.append("   ")
        if "db" in self.problems:
            out.append(f"db ✗ {self.problems['db']}", style="bold red")
        elif self.db_path is not None:
            out.append(f"db ● {self.db_path}", style="green")
        else:
            out.append("db: off (lineages need --db)", style="dim")
        if self.rejected:
            out.append(f"   {len(self.rejected)} frames rejected", style="bold red")
        return out


# --------------------------------------------------------------------------- helpers


def help_keys() -> list[tuple[str, str]]:
    """(keys, what they do) for the help screen: every binding of the app, then the keys
    Textual's widgets handle."""
    own = [(key_names(b.key), b.tooltip or b.description) for b in KEY_BINDINGS]
    return own + list(NAVIGATION_KEYS)


def _with_interval(row: PositionRow, interval: float | None) -> PositionRow:
    if interval is None or row.interval_s is not None:
        return row
    return PositionRow(
        row.position,
        row.last_frame,
        row.n_cells,
        row.active_tracks,
        row.divisions,
        row.updated,
        interval,
    )


def _matches(d: Division, position: str | None) -> bool:
    return position is None or d.position == position


def _matches_filter(d: Division, text: str) -> bool:
    """A number matches the mother or a daughter track id; other text a position name."""
    if text.isdigit():
        n = int(text)
        return d.mother == n or n in d.daughters
    return text.lower() in d.position.lower()


def _age(age: float | None) -> str:
    if age is None:
        return "—"
    if age < 60:
        return f"{age:.0f}s"
    if age < 3600:
        return f"{age / 60:.0f}m"
    return f"{age / 3600:.1f}h"


def _db_problem_text(path: Path, err: LivetrackError) -> str:
    if not path.exists():
        return f"no such file yet (waiting for a worker to create it): {path}"
    return str(err)


class TuiLogHandler(logging.Handler):
    """Sends log records to the dashboard (warnings become notifications) instead of
    writing to the terminal Textual owns."""

    def __init__(self, app: DashboardApp) -> None:
        super().__init__(level=logging.WARNING)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        # RuntimeError: the app is not running (yet/anymore), so there is nowhere to show it.
        with contextlib.suppress(RuntimeError):
            self.app.log_line(self.format(record), record.levelno)


def make_app(
    *,
    db_path: Path | str | None = None,
    endpoint: str | None = None,
    run_id: str | None = None,
    poll_interval_s: float = 1.0,
    stale_after_s: float = 30.0,
    stop: threading.Event | None = None,
    on_start: Callable[[DashboardApp], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> DashboardApp:
    """The dashboard, as the CLI and the tests build it.

    ``db_path``: database to read (may not exist yet); ``endpoint``: worker events to
    subscribe to (may not be up yet; ``attach_endpoint`` adds one later); ``run_id``: pin
    a run (default: follow the live worker, else the newest run in the file). ``stop`` is
    set when the user quits; ``on_start(app)`` runs once the app is mounted (the CLI starts
    its pipeline thread there). A position is stale after ``stale_after_s`` without a frame,
    or five of its usual frame intervals if those are longer.
    """
    return DashboardApp(
        db_path=None if db_path is None else Path(db_path),
        endpoint=endpoint,
        run_id=run_id,
        poll_interval_s=poll_interval_s,
        stale_after_s=stale_after_s,
        stop=stop,
        on_start=on_start,
        clock=clock,
    )
