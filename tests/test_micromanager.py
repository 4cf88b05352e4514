"""Micro-Manager driver: argument handling everywhere; live acquisition from the real
DemoCamera (pycromanager + mm-test-adapters, marked ``micromanager``) into a real worker
and SQLite store. One headless core per process, so the core is a session fixture."""

from __future__ import annotations

import itertools
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livetrack.drivers.micromanager import (
    DEMO_CONFIG,
    AcquisitionPlan,
    FrameQueue,
    MicroManagerSource,
    StagePosition,
    demo_adapter_path,
    ensure_headless,
    parse_position,
    parse_property,
)

from livetrack.config import Settings
from livetrack.errors import ConfigError, HardwareTimeout, SourceError, SourceUnavailable
from livetrack.runner import run_pipeline
from livetrack.source import FrameMeta, FrameSource
from livetrack.store import Store
from livetrack.worker import FrameResult

BEADS = (("Camera", "Mode", "Fluorescent Beads"),)
TWO_POSITIONS = (StagePosition("A1", 0.0, 0.0), StagePosition("B2", 500.0, 250.0))
ANY_PORT = "tcp://127.0.0.1:0"
"""Events endpoint for pipelines here: 5558 may be taken by a worker already running."""


@pytest.fixture(scope="session")
def demo_core() -> Any:
    """The process's headless core on the DemoCamera config (started once, never stopped:
    pycromanager hangs on a second start)."""
    pytest.importorskip("pycromanager")
    pytest.importorskip("mm_test_adapters")
    ensure_headless(demo_adapter_path(), DEMO_CONFIG)
    from pycromanager import Core

    return Core()


def _meta(i: int) -> tuple[np.ndarray, FrameMeta]:
    return np.zeros((2, 2), np.uint8), FrameMeta(position="p", frame_index=i, timestamp=0.0)


def _wait_for(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    """Poll (no timing assertion: the deadline only turns a hang into a failure)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------- no Micro-Manager needed
def test_parse_position_and_property() -> None:
    assert parse_position("1.5,-2", 3) == StagePosition("Pos3", 1.5, -2.0)
    assert parse_position("well A1=10,20,5", 0) == StagePosition("well A1", 10.0, 20.0, 5.0)
    assert parse_property("Camera:Mode=Fluorescent Beads") == (
        "Camera",
        "Mode",
        "Fluorescent Beads",
    )
    with pytest.raises(ConfigError):
        parse_position("10", 0)
    with pytest.raises(ConfigError):
        parse_position("a,b", 0)
    with pytest.raises(ConfigError):
        parse_property("Camera=Mode")


def test_plan_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="channel_group"):
        AcquisitionPlan(channels=("DAPI",))
    with pytest.raises(ConfigError, match="unique"):
        AcquisitionPlan(positions=(StagePosition("A", 0, 0), StagePosition("A", 1, 1)))
    with pytest.raises(ConfigError):
        AcquisitionPlan(n_frames=0)
    with pytest.raises(ConfigError):
        AcquisitionPlan(interval_s=-1)
    with pytest.raises(ConfigError, match="policy"):
        MicroManagerSource(AcquisitionPlan(), policy="drop-all")  # type: ignore[arg-type]


def test_source_counts_streams_per_position_and_channel() -> None:
    plan = AcquisitionPlan(
        n_frames=7, positions=TWO_POSITIONS, channel_group="Channel", channels=("DAPI", "FITC")
    )
    src = MicroManagerSource(plan)
    assert isinstance(src, FrameSource)
    assert src.n_positions == 4
    assert src.total_frames == 28
    assert MicroManagerSource(AcquisitionPlan(n_frames=None)).total_frames is None


def test_frame_queue_policies() -> None:
    never = lambda: False  # noqa: E731
    q = FrameQueue(2, "drop-oldest")
    assert q.put(_meta(0), never) is None
    assert q.put(_meta(1), never) is None
    dropped = q.put(_meta(2), never)
    assert dropped is not None
    assert dropped[1].frame_index == 0
    assert [q.get(0)[1].frame_index for _ in range(2)] == [1, 2]  # type: ignore[index]
    assert q.get(0) is None

    q = FrameQueue(1, "drop-newest")
    q.put(_meta(0), never)
    dropped = q.put(_meta(1), never)
    assert dropped is not None
    assert dropped[1].frame_index == 1
    assert q.get(0)[1].frame_index == 0  # type: ignore[index]


def test_frame_queue_block_waits_for_room() -> None:
    q = FrameQueue(1, "block")
    q.put(_meta(0), lambda: False)
    done = threading.Event()

    def producer() -> None:
        q.put(_meta(1), lambda: False)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.2)  # still blocked: the queue is full
    assert q.get(1.0)[1].frame_index == 0  # type: ignore[index]
    t.join(10)
    assert done.is_set()
    assert q.get(1.0)[1].frame_index == 1  # type: ignore[index]
    # A cancelled producer (the source is closing) gives up and gets its frame back.
    q.put(_meta(3), lambda: False)
    back = q.put(_meta(4), lambda: True)
    assert back is not None
    assert back[1].frame_index == 4


def test_java_backend_argument_handling() -> None:
    """What can be checked without a running Micro-Manager Studio."""
    with pytest.raises(ConfigError, match="running Micro-Manager"):
        MicroManagerSource(AcquisitionPlan(), backend="java", config_file="x.cfg")
    with pytest.raises(ConfigError):
        MicroManagerSource(AcquisitionPlan(), backend="java", port=70000)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = MicroManagerSource(AcquisitionPlan(n_frames=1), backend="java", port=port)
    assert f"port {port}" in src.describe()
    with pytest.raises(SourceError, match=f"port {port}"):
        next(iter(src.frames()))


# -------------------------------------------------------------- the real DemoCamera
@pytest.mark.micromanager
def test_two_positions_from_democamera_into_db(demo_core: Any, tmp_path: Path) -> None:
    plan = AcquisitionPlan(
        n_frames=20,
        positions=TWO_POSITIONS,
        channel_group="Channel",
        channels=("DAPI",),
        properties=BEADS,
    )
    src = MicroManagerSource(plan, queue_size=4)
    db = tmp_path / "mm.db"
    summary = run_pipeline(
        src,
        Settings(),
        description=src.describe(),
        run_id="mm",
        db_path=db,
        events_endpoint=ANY_PORT,
    )

    assert summary.frames_stored == 40
    assert summary.pump is not None
    assert summary.pump.reason == "complete"
    core_pixel_size = float(demo_core.get_pixel_size_um())
    assert src.pixel_size_um == pytest.approx(core_pixel_size)
    with Store(db, readonly=True) as store:
        assert store.positions("mm") == ["A1", "B2"]
        for pos in ("A1", "B2"):
            assert store.frame_indices("mm", pos) == list(range(20))
    for pos in ("A1", "B2"):
        rows = _rows(
            db,
            "SELECT timestamp, channel FROM frames WHERE run_id='mm' AND position=? ORDER BY frame",
            pos,
        )
        stamps = [r[0] for r in rows]
        assert all(b > a for a, b in itertools.pairwise(stamps))
        assert {r[1] for r in rows} == {"DAPI"}
        (size, h, w) = _rows(
            db,
            "SELECT pixel_size_um, height, width FROM positions WHERE run_id='mm' AND position=?",
            pos,
        )[0]
        assert size == pytest.approx(core_pixel_size)
        assert (h, w) == (demo_core.get_image_height(), demo_core.get_image_width())
    n_detections = _rows(db, "SELECT COUNT(*) FROM detections WHERE run_id='mm'")[0][0]
    assert n_detections > 0  # fluorescent beads were segmented


@pytest.mark.micromanager
def test_slow_worker_loses_no_frame(demo_core: Any, tmp_path: Path) -> None:
    """Policy block: a worker slower than the camera pauses the acquisition; every frame
    arrives, in order."""
    plan = AcquisitionPlan(n_frames=12, positions=TWO_POSITIONS, properties=BEADS)
    src = MicroManagerSource(plan, queue_size=1, policy="block")
    arrived: list[tuple[str, int]] = []

    def slow(result: FrameResult) -> None:
        arrived.append((result.position, result.frame_index))
        time.sleep(0.05)

    db = tmp_path / "slow.db"
    summary = run_pipeline(
        src,
        Settings(),
        description=src.describe(),
        run_id="slow",
        db_path=db,
        on_frame=slow,
        events_endpoint=ANY_PORT,
    )
    expected = [(p.name, t) for t in range(12) for p in TWO_POSITIONS]
    assert arrived == expected
    assert summary.frames_stored == 24
    assert src.dropped == []
    with Store(db, readonly=True) as store:
        assert store.frame_indices("slow", "A1") == list(range(12))
        assert store.frame_indices("slow", "B2") == list(range(12))


@pytest.mark.micromanager
def test_block_policy_pauses_the_camera(demo_core: Any) -> None:
    """Hold the consumer: the acquisition must stall on the full queue (not drop, not
    buffer without bound), then deliver everything once the consumer resumes."""
    src = MicroManagerSource(AcquisitionPlan(n_frames=10, properties=BEADS), queue_size=2)
    frames = src.frames()
    got = [next(frames)[1].frame_index]
    _wait_for(lambda: src.stalled, "the acquisition to pause on the full queue")
    assert src.queued == 2
    got += [meta.frame_index for _, meta in frames]
    assert got == list(range(10))
    assert src.dropped == []
    assert "paused" in src.summary()


@pytest.mark.micromanager
def test_drop_oldest_policy_records_every_loss(demo_core: Any) -> None:
    src = MicroManagerSource(
        AcquisitionPlan(n_frames=10, properties=BEADS), queue_size=1, policy="drop-oldest"
    )
    frames = src.frames()
    got = [next(frames)[1].frame_index]
    _wait_for(lambda: len(src.dropped) > 0, "a dropped frame")
    got += [meta.frame_index for _, meta in frames]
    dropped = [i for _, i in src.dropped]
    assert sorted(got + dropped) == list(range(10))  # each frame delivered or recorded
    assert got == sorted(got)
    assert got[-1] == 9  # drop-oldest keeps the newest frame
    assert f"{len(dropped)} dropped" in src.summary()


@pytest.mark.micromanager
def test_stop_aborts_open_ended_acquisition(demo_core: Any, tmp_path: Path) -> None:
    src = MicroManagerSource(AcquisitionPlan(n_frames=None, properties=BEADS), queue_size=2)
    stop = threading.Event()

    def stop_after_five(result: FrameResult) -> None:
        if result.frame_index >= 4:
            stop.set()

    summary = run_pipeline(
        src,
        Settings(),
        description=src.describe(),
        run_id="open",
        db_path=tmp_path / "open.db",
        events_endpoint=ANY_PORT,
        stop=stop,
        on_frame=stop_after_five,
    )
    assert summary.frames_stored >= 5
    assert src.finished  # the acquisition engine wound down, nothing left running
    assert summary.pump is not None
    assert summary.pump.reason == "aborted"


@pytest.mark.micromanager
def test_channels_and_z_max_projection(demo_core: Any) -> None:
    plan = AcquisitionPlan(
        n_frames=2,
        channel_group="Channel",
        channels=("DAPI", "FITC"),
        z_um=(0.0, 1.0, 2.0),
        properties=BEADS,
    )
    src = MicroManagerSource(plan)
    got = [(m.position, m.frame_index, m.channel, img.ndim) for img, m in src.frames()]
    assert sorted(got) == sorted((f"Pos0-{c}", t, c, 2) for t in range(2) for c in ("DAPI", "FITC"))
    assert src.total_frames == len(got)


# ------------------------------------------------ start-up failures, bounded waits
def _first_error(src: MicroManagerSource, timeout_s: float = 120.0) -> BaseException | None:
    """Run ``src.frames()`` in a thread and return what it raised. A source that hangs
    (the old behaviour on an impossible plan) fails the test instead of hanging it."""
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            for _ in src.frames():
                pass
            outcome.append(None)
        except BaseException as err:  # returned to the test
            outcome.append(err)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        src.close()
        thread.join(60)
        pytest.fail(f"the source neither delivered nor failed within {timeout_s} s")
    return outcome[0]


def test_missing_install_or_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="does not exist"):
        MicroManagerSource(AcquisitionPlan(), mm_app_path=tmp_path / "no-such-install")
    (tmp_path / "Other.cfg").write_text("")
    with pytest.raises(SourceUnavailable, match=r"nope\.cfg not found.*configs there: Other"):
        MicroManagerSource(AcquisitionPlan(), mm_app_path=tmp_path, config_file="nope.cfg")


@pytest.mark.micromanager
@pytest.mark.parametrize(
    ("group", "channels", "message"),
    [
        ("Channel", ("GFP",), r"group 'Channel' has no channel 'GFP'.*DAPI"),
        ("Colour", ("DAPI",), r"no config group 'Colour'.*Channel"),
    ],
)
def test_a_channel_the_core_does_not_have_fails_before_acquiring(
    demo_core: Any, group: str, channels: tuple[str, ...], message: str
) -> None:
    """The engine would retry the impossible channel change and wait forever (the old
    behaviour: 'Problem Changing channels' ×6, then no frame ever)."""
    plan = AcquisitionPlan(n_frames=2, channel_group=group, channels=channels, properties=BEADS)
    src = MicroManagerSource(plan)
    err = _first_error(src)
    assert isinstance(err, SourceUnavailable)
    assert err is not None
    assert re.search(message, str(err))
    assert src.delivered == 0


@pytest.mark.micromanager
def test_stage_positions_without_an_xy_stage_fail_before_acquiring(demo_core: Any) -> None:
    stage = demo_core.get_xy_stage_device()
    demo_core.set_xy_stage_device("")
    try:
        err = _first_error(MicroManagerSource(AcquisitionPlan(n_frames=1, positions=TWO_POSITIONS)))
    finally:
        demo_core.set_xy_stage_device(stage)
    assert isinstance(err, SourceUnavailable)
    assert "no XY stage" in str(err)


@pytest.mark.micromanager
def test_hardware_that_stops_answering_ends_the_run_with_a_timeout(demo_core: Any) -> None:
    """A channel preset that exists but that the hardware refuses (a camera mode the
    DemoCamera does not have): the engine gives up on the event and never delivers. The
    watchdog ends the stream with HardwareTimeout; the core stays usable."""
    demo_core.define_config("LivetrackBroken", "Bad", "Camera", "Mode", "No Such Mode")
    try:
        plan = AcquisitionPlan(n_frames=3, channel_group="LivetrackBroken", channels=("Bad",))
        src = MicroManagerSource(plan, hardware_timeout_s=2.0)
        err = _first_error(src)
    finally:
        demo_core.delete_config_group("LivetrackBroken")
    assert isinstance(err, HardwareTimeout)
    assert "hardware timeout 2 s" in str(err)
    assert src.finished  # the acquisition was aborted and wound down
    after = MicroManagerSource(AcquisitionPlan(n_frames=2, properties=BEADS))
    assert [m.frame_index for _, m in after.frames()] == [0, 1]


def _cli(*argv: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    """``livetrack run --source micromanager`` in its own process (one core per process;
    a hang fails the test through the timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "livetrack.cli", "run", "--source", "micromanager", *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _assert_failed_with(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("livetrack run: error: ")
    assert message in last
    assert "resume" not in proc.stdout + proc.stderr
    assert "frames stored" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_cli_start_up_failures_exit_1_with_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cases = [
        (["--mm-app-path", str(tmp_path / "nowhere")], "does not exist"),
        (["--mm-config", "nope.cfg"], "nope.cfg not found"),
        (["--mm-java", "--mm-port", port], f"no Micro-Manager Studio is listening on port {port}"),
    ]
    for argv, message in cases:
        proc = _cli(*argv, "--frames", "2", "--no-tui", "--db", db, timeout_s=120)
        _assert_failed_with(proc, message)


@pytest.mark.micromanager
def test_cli_wrong_channel_exits_1_instead_of_hanging(tmp_path: Path) -> None:
    pytest.importorskip("pycromanager")
    pytest.importorskip("mm_test_adapters")
    proc = _cli("--channel", "GFP", "--frames", "2", "--no-tui", "--db", str(tmp_path / "x.db"))
    _assert_failed_with(proc, "has no channel 'GFP' (--channel); its channels: Cy5, DAPI")
