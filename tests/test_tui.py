"""The dashboard, driven by Textual's pilot against a real worker fed by the simulator
(real sockets, a real SQLite file), plus layout snapshots at 80x24 and 160x48.

Snapshots: ``tests/snapshots/tui_<W>x<H>.json`` holds the region of every panel and the
screen text below the header with digits replaced by ``9`` (times and ids vary in value,
not in width; the clock is pinned so ages are fixed). Regenerate after an intended layout
change with ``LIVETRACK_UPDATE_SNAPSHOTS=1 pytest tests/test_tui.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livetrack.drivers.simulator import SimulatorSource
from livetrack.simulators.nuclei import SimulationConfig
from rich.console import Console
from textual.keys import format_key

from livetrack.config import Settings
from livetrack.messages import PositionStatus, TrackEvent, WorkerStatus
from livetrack.runner import run_pipeline
from livetrack.store import Store
from livetrack.track.base import LineageEvent, TrackEnd, TrackRecord, TrackStart, TrackStep
from livetrack.transport import EventPublisher
from livetrack.tui import DashboardApp, make_app
from livetrack.tui.data import build_lineage
from livetrack.tui.widgets import HelpScreen, sparkline
from livetrack.types import Detections

SNAPSHOTS = Path(__file__).parent / "snapshots"
PANELS = ("header", "positions", "sparks", "feed", "lineage")


def sim_config() -> SimulationConfig:
    """Small and quick, with divisions from the first frames on."""
    return SimulationConfig(
        height=160,
        width=160,
        n_cells=10,
        nucleus_diameter_px=16,
        cell_cycle_frames=12,
        n_frames=24,
    )


def fast_settings() -> Settings:
    """Frequent status messages; the distance-only tracker, so the run behind the layout
    snapshots is exactly the same on any CPU (no floating-point model in the loop)."""
    s = Settings()
    return s.model_copy(
        update={
            "worker": s.worker.model_copy(update={"status_interval_s": 0.2}),
            "track": s.track.model_copy(update={"method": "lap"}),
        }
    )


@pytest.fixture(scope="module")
def finished_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tracking-only run of the simulator (deterministic)."""
    db = tmp_path_factory.mktemp("tui") / "finished.db"
    run_pipeline(
        SimulatorSource(sim_config(), with_labels=True),
        fast_settings(),
        description="simulator (test)",
        run_id="sim-test",
        db_path=db,
        events_endpoint="tcp://127.0.0.1:0",
    )
    return db


def screen_text(app: DashboardApp) -> str:
    """The screen as plain text, as a terminal would show it."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
    )
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    return console.export_text()


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the time limit")
        await pilot.pause(0.05)


def store_divisions(db: Path, run_id: str) -> dict[str, dict[str, Any]]:
    with Store(db, readonly=True) as store:
        return {
            f"{run_id}/{e['position']}/{e['frame']}/{e['track_id']}": e
            for e in store.events(run_id, kinds=["division"])
        }


def store_tracks(db: Path, run_id: str, position: str) -> dict[int, TrackRecord]:
    with Store(db, readonly=True) as store:
        return {t.track_id: t for t in store.tracks(run_id, position)}


class ColonyWriter:
    """Writes frames of one position through the real Store, as a worker would: one
    detection per open track (label = track id); a division ends the oldest open track
    and starts two daughters. ``acquired(frame)`` is the frame's acquisition time."""

    def __init__(self, store: Store, run_id: str, position: str, acquired: Callable[[int], float]):
        self.store, self.run_id, self.position, self.acquired = store, run_id, position, acquired
        self.open: list[int] = []
        self.next_id = 1

    def write(self, frame: int, *, divide: bool = False) -> None:
        started: list[TrackStart] = []
        ended: list[TrackEnd] = []
        events: list[LineageEvent] = []
        if not self.open:
            started.append(TrackStart(self.next_id, frame))
            self.open.append(self.next_id)
            self.next_id += 1
        if divide:
            mother = self.open.pop(0)
            daughters = (self.next_id, self.next_id + 1)
            self.next_id += 2
            started += [TrackStart(d, frame, parent_id=mother) for d in daughters]
            ended.append(TrackEnd(mother, frame - 1, "divided"))
            events.append(LineageEvent("division", frame, mother, daughters, confidence=0.9))
            self.open += daughters
        mask = np.zeros((64, 64), np.int32)
        for i, track in enumerate(self.open):
            y, x = 2 + 8 * (i // 7), 2 + 8 * (i % 7)
            mask[y : y + 5, x : x + 5] = track
        dets = Detections.from_labels(mask)
        step = TrackStep(
            frame, np.asarray(dets.labels, np.int64), started=started, ended=ended, events=events
        )
        self.store.write_frame(
            self.run_id, self.position, frame, timestamp=self.acquired(frame), mask=mask,
            detections=dets, step=step, timings={"segment": 5.0},
        )  # fmt: skip


def running_status(run_id: str, *, frames: int, worker: str, lag_s: float = 0.5,
                   state: str = "running", positions: tuple[PositionStatus, ...] = ()
                   ) -> WorkerStatus:  # fmt: skip
    return WorkerStatus(
        run_id=run_id, state=state, frames_processed=frames, frames_rejected=0,  # type: ignore[arg-type]
        fps=2.0, stage_ms={"segment": 5.0}, lag_s=lag_s, device="cpu",
        positions=positions, timestamp=time.time(), worker_id=worker,
    )  # fmt: skip


async def publish_until(
    pilot: Any, pub: EventPublisher, msg: Any, condition: Callable[[], bool]
) -> None:
    """Publish ``msg`` (again: a subscriber that just connected misses the first ones)
    until ``condition`` holds."""

    def sent_and_seen() -> bool:
        pub.publish(msg)
        return condition()

    await wait_for(pilot, sent_and_seen)


def header_line(app: DashboardApp) -> str:
    return screen_text(app).splitlines()[0]


# --------------------------------------------------------------------------- live run


def test_live_division_appears_in_feed_and_lineage_matches_store(tmp_path: Path) -> None:
    db = tmp_path / "live.db"  # does not exist yet: the worker creates it
    stop = threading.Event()
    done = threading.Event()

    def start_pipeline(app: DashboardApp) -> None:
        def run() -> None:
            try:
                summary = run_pipeline(
                    SimulatorSource(sim_config(), interval_s=0.08, with_labels=True),
                    fast_settings(),
                    description="simulator (live test)",
                    run_id="live",
                    db_path=db,
                    stop=stop,
                    on_ready=app.attach_endpoint,
                    events_endpoint="tcp://127.0.0.1:0",
                )
                app.pipeline_finished(f"{summary.frames_stored} frames stored")
            finally:
                done.set()

        threading.Thread(target=run, daemon=True).start()

    async def drive() -> None:
        app = make_app(db_path=db, run_id="live", poll_interval_s=0.2, stop=stop,
                       on_start=start_pipeline)  # fmt: skip
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: any(d.origin == "live" for d in app.divisions.values()))
            await wait_for(pilot, done.is_set)
            expected = store_divisions(db, "live")
            assert expected, "the simulator should divide within 24 frames"
            await wait_for(pilot, lambda: set(app.divisions) == set(expected))
            await wait_for(pilot, lambda: app.finished_text is not None)
            feed = app.query_one("#feed")
            assert feed.row_count == len(expected)  # type: ignore[attr-defined]

            await pilot.press("d", "enter")  # newest division → its lineage
            newest = app.visible_divisions()[0]
            await wait_for(pilot, lambda: app.lineage_shown is not None)
            lineage = app.lineage_shown
            assert (lineage.position, lineage.track_id) == (newest.position, newest.mother)
            tracks = store_tracks(db, "live", newest.position)
            daughters = [c.track.track_id for c in lineage.subtree.children]
            assert sorted(daughters) == sorted(newest.daughters)
            assert all(tracks[d].parent_id == newest.mother for d in daughters)
            assert tracks[newest.mother].fate == "divided"
            ancestors = [a.track_id for a in lineage.ancestors]
            parent = tracks[newest.mother].parent_id
            assert ancestors[-1:] == ([] if parent is None else [parent])
            text = screen_text(app)
            assert "run finished" in text
            assert f"track {newest.mother}" in text
            for d in newest.daughters:
                assert f"track {d} " in text
            await pilot.press("q")
        assert stop.is_set()  # quitting stops a pipeline started by the CLI

    asyncio.run(drive())


def test_reconnects_when_the_worker_restarts(tmp_path: Path) -> None:
    first = EventPublisher("tcp://127.0.0.1:0")
    endpoint = first.endpoint

    def status(run_id: str) -> WorkerStatus:
        return WorkerStatus(
            run_id=run_id, state="running", frames_processed=3, frames_rejected=0, fps=1.0,
            stage_ms={"segment": 5.0}, lag_s=0.1, device="cpu", timestamp=time.time(),
        )  # fmt: skip

    async def drive() -> None:
        nonlocal first
        app = make_app(endpoint=endpoint)
        async with app.run_test(size=(80, 24)) as pilot:

            def seen(run_id: str, pub: EventPublisher) -> bool:
                pub.publish(status(run_id))
                return app.live_status is not None and app.live_status.run_id == run_id

            await wait_for(pilot, lambda: seen("before", first))
            first.close()  # the worker goes away …
            second = EventPublisher(endpoint)  # … and comes back on the same endpoint
            try:
                await wait_for(pilot, lambda: seen("after", second))
            finally:
                second.close()
            assert "live ●" in screen_text(app)

    try:
        asyncio.run(drive())
    finally:
        first.close()


def test_missing_db_and_silent_endpoint_show_messages_not_tracebacks(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "absent.db"
    pub = EventPublisher("tcp://127.0.0.1:0")
    silent = pub.endpoint
    pub.close()  # nobody publishes there any more

    async def drive(endpoint: str, expect: str) -> None:
        app = make_app(db_path=missing, endpoint=endpoint, poll_interval_s=0.1)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_for(pilot, lambda: "db" in app.problems)
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "no such file yet" in text
            assert expect in text
            assert "Traceback" not in text

    asyncio.run(drive(silent, f"waiting for a worker on {silent}"))
    asyncio.run(drive("carrier-pigeon://loft", "cannot subscribe to carrier-pigeon://loft"))


# --------------------------------------------------------------------------- keys


def test_keys_filter_pause_and_position(finished_db: Path) -> None:
    async def drive() -> None:
        app = make_app(db_path=finished_db, poll_interval_s=0.1)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: len(app.divisions) > 2)
            all_rows = app.visible_divisions()
            track = all_rows[-1].daughters[0]
            await pilot.press("slash", *str(track), "enter")
            rows = app.visible_divisions()
            assert rows
            assert all(d.mother == track or track in d.daughters for d in rows)
            assert app.query_one("#feed").row_count == len(rows)  # type: ignore[attr-defined]
            await pilot.press("a")
            assert len(app.visible_divisions()) == len(all_rows)

            await pilot.press("p")
            assert app.paused
            assert "paused" in screen_text(app)
            await pilot.press("p")
            assert not app.paused

            app.query_one("#positions").focus()
            await pilot.press("enter")
            assert app.selected_position == "sim"
            assert all(d.position == "sim" for d in app.visible_divisions())

    asyncio.run(drive())


# --------------------------------------------------------------------------- help


def help_box_text(app: DashboardApp, box: Any) -> list[str]:
    """The visible lines inside the help box's border, as the terminal shows them."""
    r = box.content_region
    lines = screen_text(app).splitlines()
    return [line[r.x : r.right] for line in lines[r.y : r.bottom]]


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 48)])
def test_help_screen_shows_every_key_and_what_the_panels_mean(size: tuple[int, int]) -> None:
    async def drive() -> None:
        app = make_app()
        async with app.run_test(size=size) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            box = app.screen.query_one("#help-box")
            await pilot.pause()
            region = box.region
            # Sized to the terminal: most of a small one, never past its edges.
            assert region.width >= min(72, size[0] - 8), region
            assert region.height >= min(20, size[1] - 4), region
            assert region.right <= size[0]
            assert region.bottom <= size[1]
            # Read it all as the user does: page down until the end (80x24 scrolls).
            seen: dict[int, str] = {}
            for _ in range(20):
                top = round(box.scroll_y)
                for i, line in enumerate(help_box_text(app, box)):
                    seen[top + i] = line
                if box.scroll_y >= box.max_scroll_y:
                    break
                await pilot.press("pagedown")
                await pilot.pause()
            text = " ".join(" ".join(seen[i] for i in sorted(seen)).split())
            assert len(seen) >= 20
            # Every key the app binds is listed …
            for binding in DashboardApp.BINDINGS:
                for key in binding.key.split(","):  # type: ignore[union-attr]
                    assert f" {format_key(key)} " in f" {text} ", key
            # … with what it does …
            for words in ("p / space pause / resume", "q quit", "d jump to the newest division",
                          "l open the lineage", "/ filter the feed", "a all positions",
                          "esc close the filter", "? show / hide this help"):  # fmt: skip
                assert words in text, words
            # … and what the panels and their words mean.
            for words in ("lag: seconds from a frame's acquisition to its commit",
                          "fr/s: frames committed per second", "a stale position",
                          "confidence (conf", "acquisition order", "Cells over time",
                          "Lineage:", "mother track → daughter tracks"):  # fmt: skip
                assert words in text, words
            await pilot.press("question_mark")
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("question_mark", "escape")
            assert not isinstance(app.screen, HelpScreen)

    asyncio.run(drive())


# --------------------------------------------------------------------------- what the
# header and the feed say when the worker lags, restarts or ends


def test_divisions_are_in_acquisition_order_while_the_worker_lags(tmp_path: Path) -> None:
    """Divisions read from the store were committed ten minutes after acquisition (the
    worker lags); one just published live is not in the store yet. Newest acquisition
    first, whichever source, and the time shown is the acquisition time."""
    db = tmp_path / "lagging.db"
    t0 = time.time() - 600.0

    def acquired(frame: int) -> float:
        return t0 + 10.0 * frame

    with Store(db) as store:
        store.begin_run("lag", source="test", config={})
        pos0 = ColonyWriter(store, "lag", "Pos0", acquired)
        pos1 = ColonyWriter(store, "lag", "Pos1", acquired)
        for f in range(7):
            pos0.write(f, divide=f in (2, 5))
            pos1.write(f, divide=f == 5)
    live = TrackEvent(run_id="lag", position="Pos1", frame=8, event="division", track_id=3,
                      daughters=(6, 7), confidence=0.8, timestamp=acquired(8))  # fmt: skip
    pub = EventPublisher("tcp://127.0.0.1:0")

    async def drive() -> None:
        app = make_app(db_path=db, endpoint=pub.endpoint, poll_interval_s=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: len(app.divisions) == 3)  # the store's
            await publish_until(pilot, pub, live, lambda: len(app.divisions) == 4)
            await pilot.pause()
            feed = app.query_one("#feed")
            rows = [feed.get_row_at(i) for i in range(feed.row_count)]  # type: ignore[attr-defined]
            assert [(r[1], r[2]) for r in rows] == [
                ("Pos1", "8"), ("Pos1", "5"), ("Pos0", "5"), ("Pos0", "2"),
            ]  # fmt: skip
            shown = [r[0] for r in rows]
            expected = [
                time.strftime("%H:%M:%S", time.localtime(acquired(f))) for f in (8, 5, 5, 2)
            ]
            assert shown == expected

    try:
        asyncio.run(drive())
    finally:
        pub.close()


def test_frame_count_comes_from_the_store_across_a_worker_restart(tmp_path: Path) -> None:
    """A worker stores 10 frames and restarts; the new one stores 10 more and counts only
    its own. The header counts what is stored: 20."""
    db = tmp_path / "restart.db"
    store = Store(db)
    store.begin_run("r", source="test", config={})
    colony = ColonyWriter(store, "r", "Pos0", lambda f: time.time())
    for f in range(10):
        colony.write(f)
    first = EventPublisher("tcp://127.0.0.1:0")
    endpoint = first.endpoint

    async def drive() -> None:
        nonlocal first
        app = make_app(db_path=db, endpoint=endpoint, poll_interval_s=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            before = running_status("r", frames=10, worker="first")
            await publish_until(pilot, first, before, lambda: "10 frames" in header_line(app))
            first.close()  # the worker goes away …
            store.begin_run("r", source="test", config={})  # … a new one resumes the run
            for f in range(10, 20):
                colony.write(f)
            second = EventPublisher(endpoint)
            try:
                after = running_status("r", frames=10, worker="second")
                await publish_until(
                    pilot, second, after,
                    lambda: app.live_status is not None
                    and app.live_status.worker_id == "second"
                    and getattr(app.positions.get("Pos0"), "last_frame", -1) == 19,
                )  # fmt: skip
                await pilot.pause()
                header = header_line(app)
                assert "20 frames" in header, header
            finally:
                second.close()

    try:
        asyncio.run(drive())
    finally:
        first.close()
        store.close()


@pytest.mark.parametrize("ending", ["finished", "aborted"])
def test_lag_is_shown_only_while_the_run_is_live(tmp_path: Path, ending: str) -> None:
    """A worker 22.6 s behind the microscope: the header shows the lag while the run goes;
    once the run ended the worker stays up (idle, its last lag in its status) and the
    header says how the run ended instead of a stale lag."""
    db = tmp_path / "ending.db"
    store = Store(db)
    store.begin_run("e", source="test", config={})
    colony = ColonyWriter(store, "e", "Pos0", lambda f: time.time() - 22.6)
    for f in range(3):
        colony.write(f)
    pub = EventPublisher("tcp://127.0.0.1:0")

    async def drive() -> None:
        app = make_app(db_path=db, endpoint=pub.endpoint, poll_interval_s=0.1)
        async with app.run_test(size=(120, 40)) as pilot:
            going = running_status("e", frames=3, worker="w", lag_s=22.6)
            await publish_until(pilot, pub, going, lambda: "lag 22.6 s" in header_line(app))
            assert "● running" in header_line(app)
            store.end_run("e", ending)  # type: ignore[arg-type]
            idle = running_status("e", frames=3, worker="w", lag_s=22.6, state="idle")
            await publish_until(
                pilot, pub, idle,
                lambda: app.live_status is not None and app.live_status.state == "idle"
                and app.db_snapshot is not None and app.db_snapshot.run_status == ending,
            )  # fmt: skip
            await pilot.pause()
            header = header_line(app)
            assert f"■ run {ending}" in header, header
            assert "lag" not in header, header

    try:
        asyncio.run(drive())
    finally:
        pub.close()
        store.close()


def test_lag_goes_when_the_worker_reports_the_run_over_without_a_database() -> None:
    pub = EventPublisher("tcp://127.0.0.1:0")

    async def drive() -> None:
        app = make_app(endpoint=pub.endpoint)
        async with app.run_test(size=(120, 40)) as pilot:
            going = running_status("solo", frames=5, worker="w", lag_s=3.5)
            await publish_until(pilot, pub, going, lambda: "lag 3.5 s" in header_line(app))
            done = running_status("solo", frames=5, worker="w", lag_s=3.5, state="finished")
            await publish_until(
                pilot, pub, done,
                lambda: app.live_status is not None and app.live_status.state == "finished",
            )  # fmt: skip
            await pilot.pause()
            header = header_line(app)
            assert "■ run ended" in header, header
            assert "lag" not in header, header

    try:
        asyncio.run(drive())
    finally:
        pub.close()


# --------------------------------------------------------------------------- snapshots


def layout_snapshot(app: DashboardApp) -> dict[str, Any]:
    regions = {}
    for name in PANELS:
        r = app.query_one(f"#{name}").region
        regions[name] = [r.x, r.y, r.width, r.height]
    lines = screen_text(app).splitlines()
    body = [re.sub(r"\d", "9", line.rstrip()) for line in lines[3:-1]]
    return {"regions": regions, "body": body}


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_layout_snapshot(finished_db: Path, size: tuple[int, int]) -> None:
    with Store(finished_db, readonly=True) as store:
        last_commit = max(r["received"] for r in store.recent_frames("sim-test", 5))

    async def drive() -> dict[str, Any]:
        app = make_app(db_path=finished_db, poll_interval_s=0.1, clock=lambda: last_commit + 7)
        async with app.run_test(size=size) as pilot:
            expected = store_divisions(finished_db, "sim-test")
            await wait_for(pilot, lambda: len(app.divisions) == len(expected))
            await pilot.press("d", "enter")
            await wait_for(pilot, lambda: app.lineage_shown is not None)
            await pilot.pause(0.1)
            text = screen_text(app)
            lines = text.splitlines()
            assert len(lines) == size[1]
            assert all(len(line) <= size[0] for line in lines)
            for title in ("Positions", "Divisions, newest first", "Lineage", "Cells over time"):
                assert title in text
            assert "run sim-test" in lines[0]
            assert "? keys" in lines[-1]
            assert "7s" in text  # the age of the last frame, from the pinned clock
            _assert_panels_tile_the_screen(app, size)
            return layout_snapshot(app)

    got = asyncio.run(drive())
    path = SNAPSHOTS / f"tui_{size[0]}x{size[1]}.json"
    if os.environ.get("LIVETRACK_UPDATE_SNAPSHOTS"):
        # Writing the reference is never a pass: the run that writes it fails, so a CI
        # with the variable set cannot go green by comparing a snapshot with itself.
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
        pytest.fail(f"wrote {path}; check its diff, then run the test again without the variable")
    assert path.exists(), f"no snapshot {path}; run with LIVETRACK_UPDATE_SNAPSHOTS=1"
    assert got == json.loads(path.read_text())


def _assert_panels_tile_the_screen(app: DashboardApp, size: tuple[int, int]) -> None:
    """Every panel is on screen, none overlaps another, the feed shows several rows."""
    regions = {name: app.query_one(f"#{name}").region for name in PANELS}
    for name, r in regions.items():
        assert min(r.x, r.y) >= 0, name
        assert r.right <= size[0], name
        assert r.bottom <= size[1], name
        assert r.width >= 20, name
        assert r.height >= 3, name
    names = list(regions)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not regions[a].overlaps(regions[b]), (a, b)
    assert regions["feed"].height >= 6  # border + header + at least 3 divisions


# --------------------------------------------------------------------------- pure parts


def test_build_lineage_walks_up_and_down() -> None:
    tracks = [
        TrackRecord(1, None, 0, 4, "divided"),
        TrackRecord(2, 1, 5, 9, "divided"),
        TrackRecord(3, 1, 5, 20, "active"),
        TrackRecord(4, 2, 10, 20, "active"),
        TrackRecord(5, 2, 10, 12, "lost"),
        TrackRecord(6, None, 0, 20, "active"),
    ]
    lin = build_lineage(tracks, 2, run_id="r", position="p")
    assert [a.track_id for a in lin.ancestors] == [1]
    assert lin.subtree is not None
    assert lin.subtree.track.track_id == 2
    assert [c.track.track_id for c in lin.subtree.children] == [4, 5]
    assert build_lineage(tracks, 99).subtree is None
    # Bad data with a parent cycle must terminate.
    cyclic = [TrackRecord(1, 2, 0, 1, "divided"), TrackRecord(2, 1, 2, 3, "divided")]
    lin = build_lineage(cyclic, 1)
    assert [a.track_id for a in lin.ancestors] == [2]
    assert lin.subtree is not None
    assert [c.track.track_id for c in lin.subtree.children] == [2]
    assert lin.subtree.children[0].children == ()


def test_sparkline_scales_between_min_and_max() -> None:
    assert sparkline([], 10) == ""
    assert sparkline([1, 2, 3], 0) == ""
    assert sparkline([0, 7], 10) == "▁█"
    assert sparkline([5, 5, 5], 10) == "▄▄▄"
    assert sparkline(list(range(100)), 4) == "▁▃▆█"


def test_model_switch_answers_show_as_notifications(tmp_path: Path) -> None:
    """A worker's answer to ``livetrack use-model`` reaches the dashboard: the new model
    on success, the reason on a refusal, as the app's notifications (toasts)."""
    from livetrack.messages import ModelAnswer

    pub = EventPublisher("tcp://127.0.0.1:0")
    ok = ModelAnswer(request_id="a", ok=True, segmenter="learned seg-ft 0123456789ab",
                     timestamp=time.time())  # fmt: skip
    refused = ModelAnswer(request_id="b", ok=False, segmenter="learned seg-unet-v1 2fc1",
                          message="[/] [Errno 2] no such folder [@click=quit]",
                          timestamp=time.time())  # fmt: skip

    async def drive() -> None:
        app = make_app(db_path=tmp_path / "none.db", endpoint=pub.endpoint)
        async with app.run_test(size=(160, 48)) as pilot:

            def notes() -> list[tuple[str, str]]:
                return [(n.severity, n.message) for n in app._notifications]

            await publish_until(
                pilot, pub, ok, lambda: any("seg-ft 0123456789ab" in m for _, m in notes())
            )
            await publish_until(
                pilot, pub, refused, lambda: any("refused" in m for _, m in notes())
            )
            # shown as written: text from the wire is not Textual markup (it would not parse)
            assert (
                "error",
                "model switch refused, still learned seg-unet-v1 2fc1: "
                "[/] [Errno 2] no such folder [@click=quit]",
            ) in notes()
            assert all(s == "information" for s, m in notes() if "seg-ft" in m)
            assert all(n.markup is False for n in app._notifications)  # never parsed as markup

    try:
        asyncio.run(drive())
    finally:
        pub.close()
