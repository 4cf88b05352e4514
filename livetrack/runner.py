"""Wire a FrameSource, a worker and a store together in one process over real sockets.

``livetrack run`` / ``replay`` / ``bench`` and the end-to-end tests all go through
``run_pipeline``: the worker runs in the calling thread, the driver in a background
thread, and frames cross a real ZeroMQ PUSH/PULL pair on 127.0.0.1 — the same path a
separate driver process would use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livetrack.config import Settings
from livetrack.errors import EndpointInUse
from livetrack.pump import PumpResult, pump
from livetrack.source import FrameSource
from livetrack.store import Store
from livetrack.timings import stage_medians
from livetrack.transport import CurveServer, EventPublisher, FramePuller, FramePusher
from livetrack.worker import FrameResult, Worker

log = logging.getLogger("livetrack.runner")


@dataclass
class RunSummary:
    run_id: str
    db_path: Path
    frames_stored: int
    frames_rejected: int
    frames_duplicate: int
    seconds: float
    stage_ms: dict[str, float]
    counts: dict[str, int]
    events_endpoint: str
    pump: PumpResult | None
    timings: list[dict[str, float]] = field(default_factory=list)
    """Per-frame stage timings (ms), in arrival order."""
    run_status: str | None = None
    """The run's status in the store when the pipeline returned: 'finished', 'aborted'
    (stopped before its end-of-stream was processed: the same command resumes it) or None
    when nothing of it was stored."""

    @property
    def resumable(self) -> bool:
        """The run stopped unfinished with something stored: running it again resumes it."""
        return self.run_status == "aborted"


def choose_run_id(store: Store, base: str) -> str:
    """Resume ``base`` if it exists unfinished; if it finished, start ``base-2``, ``-3``…
    (A run another live process is writing is not resumed: ``Store.check_run_free``.)"""
    runs = {r["run_id"]: r for r in store.runs()}
    candidate, n = base, 1
    while candidate in runs and runs[candidate]["status"] == "finished":
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def open_publisher(
    endpoint: str, *, allow_remote: bool, curve: CurveServer | None = None
) -> EventPublisher:
    """Bind the event publisher. A taken port is refused (EndpointInUse naming it), not
    replaced by another: a dashboard or driver told to connect there would watch nothing.
    Port 0 asks for any free port (the one chosen is logged and returned)."""
    try:
        return EventPublisher(endpoint, allow_remote=allow_remote, curve=curve)
    except EndpointInUse as err:
        raise EndpointInUse(
            f"cannot publish events: {err}. Stop the other process, or choose another "
            "endpoint with --events (tcp://127.0.0.1:0 for any free port; dashboards "
            "then need `livetrack tui --connect` with the endpoint logged)"
        ) from None


def run_pipeline(
    source: FrameSource,
    settings: Settings,
    *,
    description: str,
    run_id: str,
    db_path: Path,
    stop: threading.Event | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
    on_ready: Callable[[str], None] | None = None,
    events_endpoint: str | None = None,
) -> RunSummary:
    """Stream ``source`` through a worker into ``db_path``; returns when the stream ends
    or ``stop`` is set. Timings of every frame are kept for benchmarks."""
    stop = stop or threading.Event()
    timings: list[dict[str, float]] = []

    def record(result: FrameResult) -> None:
        if result.status == "stored":
            timings.append(result.timings_ms)
        if on_frame is not None:
            on_frame(result)

    try:  # first: a taken port or a bad database is refused before anything starts
        publisher = open_publisher(
            events_endpoint or settings.worker.events_endpoint,
            allow_remote=settings.worker.allow_remote,
        )
    except BaseException:
        source.close()  # the driver that would close it never starts
        raise
    try:
        store = Store(db_path, config=settings.store)
    except BaseException:
        publisher.close()
        source.close()
        raise
    puller = FramePuller("tcp://127.0.0.1:0", hwm=settings.worker.receive_hwm)
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"exit_on_eos": True})}
    )
    worker = Worker(settings, store, puller, publisher, on_frame=record)
    pusher = FramePusher(puller.endpoint, hwm=settings.worker.receive_hwm, stop=stop)
    pump_result: list[PumpResult] = []
    pump_error: list[BaseException] = []

    def drive() -> None:
        try:
            pump_result.append(pump(source, pusher, run_id, description=description, stop=stop))
        except BaseException as err:  # reported by the caller's thread below
            pump_error.append(err)
            stop.set()

    if on_ready is not None:
        on_ready(publisher.endpoint)
    started = time.perf_counter()
    driver = threading.Thread(target=drive, name="livetrack-driver", daemon=True)
    driver.start()
    try:
        worker.run(stop)
        # Stopped by the user before the driver's end-of-stream arrived: keep what is
        # stored and mark the run resumable.
        worker.abort_open_runs()
    finally:
        stop.set()
        driver.join(timeout=10)
        pusher.close(linger_s=0)
        puller.close()
        publisher.close()
        counts = store.counts(run_id) if store.has_run(run_id) else {}
        status = next((r["status"] for r in store.runs() if r["run_id"] == run_id), None)
        store.close()
    if pump_error:
        raise pump_error[0]
    return RunSummary(
        run_id=run_id,
        db_path=Path(db_path),
        frames_stored=worker.frames_processed,
        frames_rejected=worker.frames_rejected,
        frames_duplicate=worker.frames_duplicate,
        seconds=time.perf_counter() - started,
        stage_ms=stage_medians(timings),
        counts=counts,
        events_endpoint=publisher.endpoint,
        pump=pump_result[0] if pump_result else None,
        timings=timings,
        run_status=status,
    )


def describe_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
