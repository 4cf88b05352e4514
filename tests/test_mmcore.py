"""pymmcore-plus driver (--source mmcore): a useq MDASequence run by pymmcore-plus' MDA
engine on the real DemoCamera (mm-test-adapters, device interface 75), into the real worker
and SQLite store. Each source owns its own CMMCorePlus, so no session fixture is needed."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livetrack.cli import main
from livetrack.config import Settings, load_settings
from livetrack.errors import ConfigError, SourceError
from livetrack.runner import run_pipeline
from livetrack.source import FrameSource
from livetrack.store import Store

useq = pytest.importorskip("useq")

from livetrack.drivers.useq_plan import load_sequence, plan_shape, to_acquisition_plan  # noqa: E402

BEADS = (("Camera", "Mode", "Fluorescent Beads"),)
TWO_POSITIONS = [{"name": "A1", "x": 0.0, "y": 0.0}, {"name": "B2", "x": 500.0, "y": 250.0}]

needs_mmcore = pytest.mark.micromanager


@pytest.fixture
def mmcore() -> Any:
    """The driver module; skips cleanly without pymmcore-plus or mm-test-adapters."""
    pytest.importorskip("mm_test_adapters")
    import livetrack.drivers.mmcore

    try:  # imported through the driver, which undoes pymmcore-plus' import-time logging
        livetrack.drivers.mmcore._import_core()
    except ConfigError as err:
        pytest.skip(str(err))
    return livetrack.drivers.mmcore


def _light(receive_hwm: int = 4) -> Settings:
    """The classical segmenter and LAP tracker: the driver is under test, not the models."""
    return load_settings(
        segment={"method": "classical"},
        track={"method": "lap"},
        worker={"receive_hwm": receive_hwm},
    )


def _seq(**fields: Any) -> Any:
    return useq.MDASequence(**fields)


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


# ------------------------------------------------------------ the plan alone
def test_load_sequence_yaml_json_and_errors(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "stage_positions:\n  - {name: A1, x: 0, y: 0}\n  - {name: B2, x: 500, y: 250}\n"
        "time_plan: {interval: 0, loops: 3}\nchannels: [DAPI, FITC]\n"
        "z_plan: {range: 2, step: 1}\n"
    )
    seq = load_sequence(plan)
    shape = plan_shape(seq, "FITC")
    assert [f[2] for f in shape.fields] == ["A1", "B2"]
    assert (shape.time_points, shape.z_planes, shape.total_frames) == (3, 3, 6)
    assert shape.segment_channel == "FITC"
    as_json = tmp_path / "plan.json"
    as_json.write_text(json.dumps({"time_plan": {"interval": 1, "loops": 4}}))
    assert plan_shape(load_sequence(as_json)).total_frames == 4

    bad = tmp_path / "bad.yaml"
    bad.write_text("time_plan: {interval: 0, loops: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_sequence(bad)
    bad.write_text("time_plan: {interval: 0, loops: -3}\n")
    with pytest.raises(ConfigError, match="loops"):
        load_sequence(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_sequence(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"\.yaml"):
        load_sequence(tmp_path / "plan.txt")


def test_plan_shape_refuses_what_it_cannot_stream() -> None:
    with pytest.raises(ConfigError, match=r"'GFP' is not in the MDA plan.*DAPI, FITC"):
        plan_shape(_seq(channels=["DAPI", "FITC"]), "GFP")
    with pytest.raises(ConfigError, match="no channels"):
        plan_shape(_seq(time_plan={"interval": 0, "loops": 2}), "DAPI")
    with pytest.raises(ConfigError, match="unique"):
        plan_shape(_seq(stage_positions=[{"name": "A", "x": 0, "y": 0}, {"name": "A", "x": 1}]))
    sub = {"name": "A", "x": 0, "y": 0, "sequence": {"z_plan": {"range": 2, "step": 1}}}
    with pytest.raises(ConfigError, match="sub-sequence"):
        plan_shape(_seq(stage_positions=[sub]))
    # A channel taken every 2nd time point, a grid: counted as the engine will run them.
    shape = plan_shape(
        _seq(
            time_plan={"interval": 0, "loops": 5},
            channels=[{"config": "DAPI"}, {"config": "FITC", "acquire_every": 2}],
            grid_plan={"rows": 1, "columns": 2},
        ),
        "FITC",
    )
    assert [f[2] for f in shape.fields] == ["Pos0-g0", "Pos0-g1"]
    assert shape.time_points == 3
    assert shape.total_frames == 6


def test_cli_refuses_mda_without_mmcore_and_mmcore_without_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("time_plan: {interval: 0, loops: 2}\n")
    db = tmp_path / "x.db"
    assert main(["run", "--mda", str(plan), "--db", str(db), "--no-tui"]) == 1
    assert "--source mmcore" in capsys.readouterr().err
    assert main(["run", "--source", "mmcore", "--db", str(db), "--no-tui"]) == 1
    assert "needs --mda" in capsys.readouterr().err
    assert not db.exists()


def test_pycromanager_cli_takes_the_same_useq_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--source micromanager --mda PLAN` acquires the plan through pycromanager (the
    DemoCamera), instead of ignoring it."""
    plan = tmp_path / "p.yaml"
    plan.write_text("time_plan: {interval: 0, loops: 2}\n")
    db = tmp_path / "x.db"
    mm = ["run", "--source", "micromanager", "--mda", str(plan), "--db", str(db), "--no-tui",
          "--events", "tcp://127.0.0.1:0"]  # fmt: skip
    assert main(mm) == 0, capsys.readouterr().err
    with Store(db, readonly=True) as store:
        (run,) = store.runs()
        (position,) = store.positions(run["run_id"])
        assert store.frame_indices(run["run_id"], position) == [0, 1]


def test_pymmcore_plus_logging_is_routed_through_livetrack(mmcore: Any) -> None:
    """pymmcore-plus sets the root logger to DEBUG and prints to stderr on import; the
    driver undoes the first and sends its warnings through livetrack's logger (fresh
    interpreter: the import happens once per process)."""
    code = (
        "import logging; from livetrack.drivers.mmcore import _import_core; _import_core(); "
        "pmm = logging.getLogger('pymmcore-plus'); "
        "print(logging.getLogger().level, pmm.propagate, "
        "sorted(type(h).__name__ for h in pmm.handlers))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split(maxsplit=2)
    assert out[:2] == [str(logging.WARNING), "False"]
    assert "StreamHandler" not in out[2]
    assert "_Forward" in out[2]


# ---------------------------------------------------------- the real DemoCamera
@needs_mmcore
def test_two_positions_three_time_points_into_db(mmcore: Any, tmp_path: Path) -> None:
    """The CLI path end to end: YAML plan → pymmcore-plus MDA → worker → SQLite."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "stage_positions:\n  - {name: A1, x: 0, y: 0}\n  - {name: B2, x: 500, y: 250}\n"
        "time_plan: {interval: 0, loops: 3}\nchannels: [DAPI]\n"
    )
    db = tmp_path / "mm.db"
    argv = ["run", "--source", "mmcore", "--mda", str(plan), "--db", str(db), "--no-tui"]
    code = main([*argv, "--run-id", "mda", "--segmenter", "classical", "--tracker", "lap"])
    assert code == 0
    with Store(db, readonly=True) as store:
        assert store.positions("mda") == ["A1", "B2"]
        assert store.frame_indices("mda", "A1") == [0, 1, 2]
        assert store.frame_indices("mda", "B2") == [0, 1, 2]
        assert next(r for r in store.runs() if r["run_id"] == "mda")["status"] == "finished"
    assert {r[0] for r in _rows(db, "SELECT channel FROM frames WHERE run_id='mda'")} == {"DAPI"}
    sizes = _rows(db, "SELECT pixel_size_um, height, width FROM positions WHERE run_id='mda'")
    assert sizes == [(1.0, 512, 512)] * 2  # the demo config's pixel size and camera size
    assert _rows(db, "SELECT COUNT(*) FROM detections WHERE run_id='mda'")[0][0] > 0


@needs_mmcore
def test_segments_one_channel_of_a_multichannel_z_plan(mmcore: Any, tmp_path: Path) -> None:
    seq = _seq(
        stage_positions=TWO_POSITIONS,
        time_plan={"interval": 0, "loops": 2},
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
    )
    src = mmcore.MMCoreSource(seq, segment_channel="FITC", properties=BEADS)
    assert isinstance(src, FrameSource)
    assert (src.total_frames, src.n_positions) == (4, 2)
    db = tmp_path / "ch.db"
    summary = run_pipeline(src, _light(), description=src.describe(), run_id="ch", db_path=db)
    assert summary.frames_stored == 4
    rows = _rows(db, "SELECT position, frame, channel FROM frames ORDER BY position, frame")
    assert rows == [("A1", 0, "FITC"), ("A1", 1, "FITC"), ("B2", 0, "FITC"), ("B2", 1, "FITC")]
    # 2 positions × 2 time points × 3 planes of DAPI acquired but not segmented
    assert src.skipped_images == 12
    assert "12 images of other channels not segmented" in src.summary()


@needs_mmcore
def test_save_keeps_every_channel(mmcore: Any, tmp_path: Path) -> None:
    """--mda-save: the channels the worker does not segment are still recorded."""
    tifffile = pytest.importorskip("tifffile")
    seq = _seq(time_plan={"interval": 0, "loops": 2}, channels=["DAPI", "FITC"])
    out = tmp_path / "all.ome.tiff"
    src = mmcore.MMCoreSource(seq, save_to=out, properties=BEADS)
    sent = [(m.frame_index, m.channel, img.copy()) for img, m in src.frames()]
    assert [(t, c) for t, c, _ in sent] == [(0, "DAPI"), (1, "DAPI")]
    with tifffile.TiffFile(out) as tif:
        saved = tif.series[0].asarray()
        assert tif.series[0].axes == "TCYX"
    assert saved.shape == (2, 2, 512, 512)
    assert np.array_equal(saved[1, 0], sent[1][2])  # the DAPI frame the worker got
    with pytest.raises(SourceError, match="exists"):
        mmcore.MMCoreSource(seq, save_to=out).prepare()


@needs_mmcore
def test_full_queue_pauses_the_mda_and_loses_nothing(mmcore: Any) -> None:
    """Hold the consumer: the MDA must enter its paused state with exactly a full queue
    (no further event started), then deliver every frame in order once drained."""
    seq = _seq(stage_positions=TWO_POSITIONS, time_plan={"interval": 0, "loops": 5})
    src = mmcore.MMCoreSource(seq, queue_size=2, properties=BEADS)
    frames = src.frames()
    got = [next(frames)[1]]
    _wait_for(lambda: src.mda_paused, "the MDA to pause on the full queue")
    assert src.queued == 2
    assert src.events_started == 3  # nothing acquired while paused
    got += [meta for _, meta in frames]
    assert [(m.position, m.frame_index) for m in got] == [
        (p, t) for t in range(5) for p in ("A1", "B2")
    ]
    assert src.pauses >= 1
    assert "MDA paused" in src.summary()
    assert src.error is None
    assert src.finished


@needs_mmcore
def test_pausing_source_through_the_worker_stores_every_frame(mmcore: Any, tmp_path: Path) -> None:
    """Through the real worker with a one-frame queue: the MDA is paused and resumed
    around every frame the driver hands on, and every frame is stored, in order. (That
    the paused state is really entered is shown above with a held consumer; here the
    sockets' buffers sit between worker and driver, so holding the worker proves less.)"""
    seq = _seq(stage_positions=TWO_POSITIONS, time_plan={"interval": 0, "loops": 8})
    src = mmcore.MMCoreSource(seq, queue_size=1, properties=BEADS)
    arrived: list[tuple[str, int]] = []
    db = tmp_path / "slow.db"
    summary = run_pipeline(
        src,
        _light(receive_hwm=1),
        description=src.describe(),
        run_id="slow",
        db_path=db,
        on_frame=lambda r: arrived.append((r.position, r.frame_index)),
    )
    assert summary.frames_stored == 16
    assert arrived == [(p, t) for t in range(8) for p in ("A1", "B2")]
    assert src.pauses >= 1
    with Store(db, readonly=True) as store:
        assert store.frame_indices("slow", "A1") == list(range(8))
        assert store.frame_indices("slow", "B2") == list(range(8))


@needs_mmcore
def test_bad_channel_refused_before_acquiring(
    mmcore: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = mmcore.MMCoreSource(_seq(channels=["DAPI", "GFPX"]), segment_channel="DAPI")
    with pytest.raises(SourceError, match=r"'GFPX'.*valid channels are Cy5, DAPI, FITC"):
        next(iter(src.frames()))
    assert src.events_started == 0
    group = mmcore.MMCoreSource(_seq(channels=[{"config": "DAPI", "group": "Colour"}]))
    with pytest.raises(SourceError, match=r"'Colour'.*groups are .*Channel"):
        group.prepare()

    plan = tmp_path / "bad.yaml"
    plan.write_text("time_plan: {interval: 0, loops: 3}\nchannels: [GFPX]\n")
    db = tmp_path / "bad.db"
    code = main(["run", "--source", "mmcore", "--mda", str(plan), "--db", str(db), "--no-tui"])
    assert code == 1
    err = capsys.readouterr().err
    assert "'GFPX'" in err
    assert "DAPI" in err
    assert not db.exists()  # refused before a run was opened


@needs_mmcore
def test_close_mid_acquisition_cancels_cleanly(mmcore: Any) -> None:
    seq = _seq(time_plan={"interval": 0, "loops": 500})
    src = mmcore.MMCoreSource(seq, queue_size=2, properties=BEADS)
    frames = src.frames()
    got = [next(frames)[1].frame_index for _ in range(3)]
    core = src.core
    assert core.mda.is_running()
    src.close()
    assert src.finished  # the MDA thread ended
    assert not core.mda.is_running()
    assert str(core.mda.status.finish_reason) == "canceled"
    assert src.events_started < 500
    assert list(core.getLoadedDevices()) == ["Core"]  # devices unloaded
    got += [m.frame_index for _, m in frames]  # the generator ends without an error
    assert got == list(range(len(got)))
    assert src.error is None


@needs_mmcore
def test_stop_mid_run_through_the_pipeline(mmcore: Any, tmp_path: Path) -> None:
    seq = _seq(time_plan={"interval": 0, "loops": 500})
    src = mmcore.MMCoreSource(seq, queue_size=2, properties=BEADS)
    stop = threading.Event()

    def stop_after_three(result: Any) -> None:
        if result.frame_index >= 2:
            stop.set()

    summary = run_pipeline(
        src,
        _light(),
        description=src.describe(),
        run_id="stop",
        db_path=tmp_path / "stop.db",
        stop=stop,
        on_frame=stop_after_three,
    )
    assert summary.frames_stored >= 3
    assert summary.pump is not None
    assert summary.pump.reason == "aborted"
    assert src.finished
    assert summary.resumable


@needs_mmcore
def test_a_frame_that_never_comes_ends_the_run(mmcore: Any) -> None:
    """A device that hangs (here: the third event blocks until the MDA is cancelled,
    standing in for a stuck stage) ends frames() with a SourceError after the timeout."""
    seq = _seq(time_plan={"interval": 0, "loops": 10})
    src = mmcore.MMCoreSource(seq, frame_timeout_s=1.0, properties=BEADS)
    src.prepare()
    core = src.core

    def stuck_device(event: Any) -> None:
        if event.index.get("t") == 2:
            _wait_for(lambda: core.mda.status.cancel_requested, "the MDA to be cancelled")

    core.mda.events.eventStarted.connect(stuck_device)
    got: list[int] = []
    with pytest.raises(SourceError, match=r"no image from Micro-Manager.*t=2"):
        got.extend(m.frame_index for _, m in src.frames())
    assert got == [0, 1]
    assert src.error is not None
    assert src.finished  # the cancel reached the runner once the device returned


@needs_mmcore
def test_cli_exits_1_when_the_camera_takes_too_long(
    mmcore: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real slow frame: the FITC exposure (3 s) is longer than --frame-timeout (1 s).
    The run ends with a one-line error and exit 1; the DAPI frame stored before is kept
    and the run stays resumable."""
    plan = tmp_path / "slow.yaml"
    plan.write_text(
        "time_plan: {interval: 0, loops: 3}\n"
        "channels:\n  - {config: DAPI, exposure: 10}\n  - {config: FITC, exposure: 3000}\n"
    )
    db = tmp_path / "t.db"
    argv = ["run", "--source", "mmcore", "--mda", str(plan), "--db", str(db), "--no-tui"]
    argv += ["--run-id", "t", "--frame-timeout", "1", "--segmenter", "classical"]
    assert main([*argv, "--tracker", "lap"]) == 1
    err = capsys.readouterr().err
    assert "error: no image from Micro-Manager" in err
    assert "FITC" in err
    with Store(db, readonly=True) as store:
        assert store.frame_indices("t", "Pos0") == [0]
        assert next(r for r in store.runs() if r["run_id"] == "t")["status"] == "aborted"


# ------------------------------------------- pycromanager takes the same useq plan
def test_useq_plan_for_pycromanager() -> None:
    from livetrack.drivers.micromanager import StagePosition

    plan = to_acquisition_plan(
        _seq(
            stage_positions=[{"name": "A1", "x": 0, "y": 0, "z": 5}, {"x": 10, "y": 20, "z": 6}],
            time_plan={"interval": 2.5, "loops": 4},
            channels=[{"config": "DAPI", "exposure": 20}, {"config": "FITC", "exposure": 20}],
            z_plan={"range": 2, "step": 1},
        ),
        properties=BEADS,
    )
    assert plan.positions == (StagePosition("A1", 0, 0, 5), StagePosition("Pos1", 10, 20, 6))
    assert (plan.n_frames, plan.interval_s) == (4, 2.5)
    assert (plan.channel_group, plan.channels, plan.exposure_ms) == (
        "Channel",
        ("DAPI", "FITC"),
        20,
    )
    assert plan.z_um == (-1.0, 0.0, 1.0)  # relative to each position's z
    assert plan.properties == BEADS
    absolute = to_acquisition_plan(
        _seq(stage_positions=[{"x": 0, "y": 0, "z": 5}], z_plan={"top": 3, "bottom": 1, "step": 1})
    )
    assert absolute.z_um == (1.0, 2.0, 3.0)
    assert absolute.positions[0].z_um is None  # absolute planes: not offset by the position
    duration = to_acquisition_plan(_seq(time_plan={"duration": 9, "loops": 4}))
    assert (duration.n_frames, duration.interval_s) == (4, 3.0)
    assert to_acquisition_plan(_seq(time_plan={"duration": 9, "loops": 1})).n_frames == 1

    refused = {
        "grid plan": _seq(grid_plan={"rows": 2, "columns": 1}),
        "exposure per channel": _seq(
            channels=[{"config": "DAPI", "exposure": 10}, {"config": "FITC", "exposure": 20}]
        ),
        "acquire_every": _seq(channels=[{"config": "DAPI", "acquire_every": 2}]),
        "relative to the current focus": _seq(z_plan={"range": 2, "step": 1}),
        "multi-phase": _seq(
            time_plan={"phases": [{"interval": 1, "loops": 2}, {"interval": 5, "loops": 2}]}
        ),
    }
    for what, seq in refused.items():
        with pytest.raises(ConfigError, match=what):
            to_acquisition_plan(seq)


@needs_mmcore
def test_pycromanager_runs_the_same_plan_file(tmp_path: Path) -> None:
    """The YAML plan of the mmcore test, converted for the pycromanager driver and run on
    its headless DemoCamera core: the same 2 positions × 3 time points are stored."""
    pytest.importorskip("pycromanager")
    pytest.importorskip("mm_test_adapters")
    from livetrack.drivers.micromanager import (
        DEMO_CONFIG,
        MicroManagerSource,
        demo_adapter_path,
        ensure_headless,
    )

    ensure_headless(demo_adapter_path(), DEMO_CONFIG)  # the process's one pycromanager core
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "stage_positions:\n  - {name: A1, x: 0, y: 0}\n  - {name: B2, x: 500, y: 250}\n"
        "time_plan: {interval: 0, loops: 3}\nchannels: [DAPI]\n"
    )
    src = MicroManagerSource(to_acquisition_plan(load_sequence(plan), properties=BEADS))
    db = tmp_path / "pm.db"
    summary = run_pipeline(src, _light(), description=src.describe(), run_id="pm", db_path=db)
    assert summary.frames_stored == 6
    with Store(db, readonly=True) as store:
        assert store.positions("pm") == ["A1", "B2"]
        assert store.frame_indices("pm", "A1") == [0, 1, 2]
        assert store.frame_indices("pm", "B2") == [0, 1, 2]
    assert {r[0] for r in _rows(db, "SELECT channel FROM frames WHERE run_id='pm'")} == {"DAPI"}
