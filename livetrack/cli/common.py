"""What the commands that run a pipeline share: logging, settings, progress, running a
source and reporting its summary."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from livetrack.errors import LivetrackError

if TYPE_CHECKING:
    from rich.console import Console

    from livetrack.config import Settings
    from livetrack.runner import RunSummary
    from livetrack.simulators.nuclei import SimulationConfig
    from livetrack.source import FrameSource
    from livetrack.tui.app import DashboardApp
    from livetrack.worker import FrameResult

log = logging.getLogger("livetrack")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not at setup)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(args: argparse.Namespace, console: Console | None = None) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("livetrack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def sim_config(args: argparse.Namespace) -> SimulationConfig:
    from livetrack.simulators.nuclei import SimulationConfig

    presets: dict[str, Callable[[], SimulationConfig]] = {
        "default": SimulationConfig,
        "sim-plus": SimulationConfig.like_sim_plus,
        "gowt1": SimulationConfig.like_gowt1,
    }
    base = presets[args.preset]()
    update: dict[str, Any] = {"seed": args.seed, "n_frames": args.frames}
    if args.cells is not None:
        update["n_cells"] = args.cells
    if args.size is not None:
        update["height"], update["width"] = args.size
    if args.diameter is not None:
        update["nucleus_diameter_px"] = args.diameter
    return SimulationConfig(**{**base.model_dump(), **update})


def sim_run_id(cfg: SimulationConfig) -> str:
    return f"sim-s{cfg.seed}-{cfg.height}x{cfg.width}-c{cfg.n_cells}-f{cfg.n_frames}"


def settings_of(args: argparse.Namespace) -> Settings:
    from livetrack.config import load_settings

    segment: dict[str, Any] = {
        "nucleus_diameter_px": getattr(args, "nucleus_diameter", None),
        "method": getattr(args, "segmenter", None),
        "model_dir": getattr(args, "segment_model", None),
    }
    worker: dict[str, Any] = {}
    if getattr(args, "events", None):
        worker["events_endpoint"] = args.events
    if getattr(args, "frames_endpoint", None):
        worker["frames_endpoint"] = args.frames_endpoint
    if getattr(args, "allow_remote", False):
        worker["allow_remote"] = True
    if getattr(args, "exit_on_eos", False):
        worker["exit_on_eos"] = True
    store = {"path": args.db} if getattr(args, "db", None) is not None else {}
    track_model = getattr(args, "track_model", None)
    track = {
        "method": getattr(args, "tracker", None),
        "model_dir": str(track_model) if track_model is not None else None,
    }
    return load_settings(
        getattr(args, "config", None), segment=segment, worker=worker, store=store, track=track
    )


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM: finish the current frame, close cleanly, exit 0. The previous
    handlers come back afterwards (the CLI is also called in-process by tests)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        log.warning("stopping after the current frame (again to force)")
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Progress:
    """Frame progress on stderr: a rich bar on a terminal, a log line every few seconds
    otherwise (CI logs, nohup)."""

    def __init__(self, total: int | None, label: str) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.total = total
        self.label = label
        self.done = 0
        self.cells = 0
        self.events = 0
        self.rejected = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, result: FrameResult) -> None:
        if result.status == "stored":
            self.done += 1
            self.cells = result.n_cells
            self.events += result.n_events
        elif result.status == "rejected":
            self.rejected += 1
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        info = f"{rate:5.1f} fr/s · {self.cells} cells · {self.events} events"
        if self.rejected:
            info += f" · [red]{self.rejected} rejected[/red]"
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, info=info)
        elif time.monotonic() - self._last_line > 5 or self.done == self.total:
            self._last_line = time.monotonic()
            total = f"/{self.total}" if self.total else ""
            print(f"{self.label}: frame {self.done}{total} · {info}", file=sys.stderr, flush=True)


def print_summary(summary: RunSummary, source: FrameSource | None = None) -> None:
    c = summary.counts
    print(
        f"run {summary.run_id}: {summary.frames_stored} frames stored"
        f" ({summary.frames_rejected} rejected, {summary.frames_duplicate} already stored)"
        f" in {summary.seconds:.1f} s → {summary.db_path}"
    )
    if c:
        print("  " + ", ".join(f"{k}: {v}" for k, v in c.items()))
    if summary.stage_ms:
        print(
            "  median ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.stage_ms.items())
        )
    from livetrack.source import Skipping

    skipped: list[tuple[Any, ...]] = list(source.skipped) if isinstance(source, Skipping) else []
    if skipped:
        # CTC replay records (frame, why), movies (position, frame, why).
        where = [str(s[0]) if len(s) == 2 else f"{s[0]}/{s[1]}" for s in skipped]
        shown = ", ".join(where[:10]) + (f" (+{len(where) - 10} more)" if len(where) > 10 else "")
        print(f"  {len(skipped)} frame(s) could not be read and were skipped: {shown} (see log)")


def print_resume_hint(summary: RunSummary) -> None:
    """The hint depends on what the store says, not on how far the driver got: a driver
    that handed every frame to the socket before Ctrl-C still leaves an unfinished run."""
    if summary.resumable:
        print(
            f"stopped early: run {summary.run_id} is unfinished"
            f" ({summary.frames_stored} frames stored this time);"
            " run the same command again to resume it"
        )


def run_source(
    args: argparse.Namespace, source: FrameSource, description: str, base_run_id: str
) -> int:
    from livetrack.runner import choose_run_id, run_pipeline
    from livetrack.store import CHANGED_DEFAULTS, Store
    from livetrack.worker import implied_settings, resume_settings, run_config

    settings = settings_of(args)
    db = settings.store.path
    with Store(db, config=settings.store) as store:
        run_id = args.run_id or choose_run_id(store, base_run_id)
        store.check_run_free(run_id)  # before the source starts (a microscope, say)
        stored = store.run_config(run_id)
        if stored is not None:  # resuming: with the models it was switched to, if any
            resumed = resume_settings(run_id, settings, stored)
            implied = implied_settings(settings, stored)
            for (section, key), value in implied.items():  # said before the logging is set up
                began = (
                    f"with the earlier default of {section}.{key}"
                    if (section, key) in CHANGED_DEFAULTS
                    else f"before the setting {section}.{key} existed"
                )
                print(
                    f"run {run_id} was begun {began}; resuming with the value it ran with, "
                    f"{value!r}",
                    file=sys.stderr,
                )
            if resume_settings(run_id, settings, stored, implied=False) != settings:
                print(
                    f"run {run_id} was switched to other models while it ran; resuming with them",
                    file=sys.stderr,
                )
            settings = resumed
        store.check_resume(run_id, run_config(settings))
    if not args.no_tui and sys.stdout.isatty() and sys.stderr.isatty():
        return run_with_tui(args, source, description, run_id, settings)
    stop = threading.Event()
    progress = Progress(source.total_frames, run_id)
    setup_logging(args, progress.console if progress.interactive else None)
    with stop_on_signals(stop), progress:
        summary = run_pipeline(
            source,
            settings,
            description=description,
            run_id=run_id,
            db_path=db,
            stop=stop,
            on_frame=progress.update,
            on_ready=lambda ep: log.info("publishing events on %s", ep),
        )
    raise_if_nothing_stored(summary)
    print_summary(summary, source)
    print_resume_hint(summary)
    raise_if_source_failed(summary)
    return 0


def source_failure(summary: RunSummary) -> LivetrackError | None:
    """The error that ended the source's stream, if one did (typed, from the driver)."""
    pump = summary.pump
    if pump is None or pump.reason != "error":
        return None
    return pump.error or LivetrackError(pump.message or "the frame source failed")


def raise_if_nothing_stored(summary: RunSummary) -> None:
    """A run that could not start, or ended without storing a frame, is a failure: its
    error alone, no summary of nothing and no resume hint (the same command would fail
    the same way). A run stopped by the user is not a failure."""
    if summary.frames_stored or summary.frames_duplicate:
        return
    failure = source_failure(summary)
    if failure is not None:
        raise failure
    if summary.pump is not None and summary.pump.reason == "complete":
        raise LivetrackError(
            f"run {summary.run_id} stored no frames ({summary.pump.frames_sent} sent, "
            f"{summary.frames_rejected} rejected by the worker; see the log)"
        )


def raise_if_source_failed(summary: RunSummary) -> None:
    """After the summary of what was stored: a source that failed mid-run still makes
    the command fail."""
    failure = source_failure(summary)
    if failure is not None:
        raise failure


def tui_logging(args: argparse.Namespace, app: DashboardApp) -> None:
    """While Textual owns the terminal, log records go to the dashboard (warnings become
    notifications) instead of stderr."""
    from livetrack.tui import TuiLogHandler

    setup_logging(args)
    logging.getLogger("livetrack").handlers[:] = [TuiLogHandler(app)]


def run_with_tui(
    args: argparse.Namespace,
    source: FrameSource,
    description: str,
    run_id: str,
    settings: Settings,
) -> int:
    """The dashboard owns the main thread; the pipeline runs beside it. Quitting the
    dashboard stops the pipeline; a pipeline that ends leaves the dashboard open."""
    from livetrack.runner import run_pipeline
    from livetrack.tui import make_app

    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def pipeline(app: DashboardApp) -> None:
        try:
            summary = run_pipeline(
                source,
                settings,
                description=description,
                run_id=run_id,
                db_path=settings.store.path,
                stop=stop,
                on_ready=app.attach_endpoint,
            )
        except Exception as err:  # shown in the dashboard, re-raised after it closes
            outcome["error"] = err
            app.pipeline_finished(f"run {run_id} failed: {err}", error=True)
            return
        outcome["summary"] = summary
        failure = source_failure(summary)
        if failure is not None:
            app.pipeline_finished(f"run {run_id} failed: {failure}; q quits", error=True)
            return
        app.pipeline_finished(
            f"run {run_id} finished: {summary.frames_stored} frames stored; q quits"
        )

    def start(app: DashboardApp) -> None:
        thread = threading.Thread(target=pipeline, args=(app,), name="livetrack-pipeline")
        outcome["thread"] = thread
        thread.start()

    app = make_app(db_path=settings.store.path, run_id=run_id, stop=stop, on_start=start)
    tui_logging(args, app)
    try:
        app.run()
    finally:
        stop.set()
        if "thread" in outcome:
            outcome["thread"].join()
        setup_logging(args)
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome.get("summary")
    if summary is not None:
        raise_if_nothing_stored(summary)
        print_summary(summary, source)
        print_resume_hint(summary)
        raise_if_source_failed(summary)
    return 0
