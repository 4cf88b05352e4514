"""Fault injection with real processes, real sockets and real database files.

A ``livetrack worker`` process is killed with SIGKILL at random moments while a
``livetrack sim --acks`` driver streams to it, and restarted with the same command; the
lineage in the database must equal an uninterrupted run's. Also: SIGKILL in the middle
of frame commits (integrity), a locked and a full database, SIGTERM shutdown, and a
sender far faster than the worker (memory stays bounded on both sides).
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
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

from livetrack.cli import main
from livetrack.config import SegmentConfig, Settings
from livetrack.store import Store, StoreConfig
from livetrack.worker import WorkerStopped

REPO = Path(__file__).resolve().parents[1]
LIVETRACK = [sys.executable, "-m", "livetrack.cli"]
SIM_ARGS = ["--size", "160", "160", "--cells", "10", "--diameter", "16", "--track-only"]
DEFAULT_PIPELINE_ARGS = ["--size", "160", "160", "--cells", "10", "--diameter", "16"]
"""The same movie segmented and tracked by the defaults (learned segmenter with an estimated
diameter, default tracker) instead of tracked on its ground-truth labels."""


# ----------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)


def worker_cmd(db: Path, frames: str, events: str) -> list[str]:
    return [
        *LIVETRACK,
        "worker",
        "--db",
        str(db),
        "--frames-endpoint",
        frames,
        "--events",
        events,
        "--exit-on-eos",
    ]


def sim_cmd(
    frames: str,
    events: str,
    *,
    seed: int,
    n_frames: int,
    run_id: str,
    sim_args: list[str] = SIM_ARGS,
) -> list[str]:
    return [
        *LIVETRACK,
        "sim",
        *sim_args,
        "--seed",
        str(seed),
        "--frames",
        str(n_frames),
        "--interval",
        "0.05",
        "--connect",
        frames,
        "--acks",
        events,
        "--resend-after",
        "1",
        "--run-id",
        run_id,
    ]


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Until ``text`` appears in ``log`` after what was there at call time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        return proc.wait(timeout=10)


def lineage(db: Path, run_id: str) -> dict[str, Any]:
    """Everything a lineage consists of: tracks (parents, fates), per-frame track ids,
    events and the run status."""
    with Store(db, readonly=True) as store:
        pos = "sim"
        frames = {
            f: tuple(map(tuple, (d.labels.tolist(), t.tolist())))
            for f in store.frame_indices(run_id, pos)
            for d, t in [store.frame_detections(run_id, pos, f)]
        }
        events = [
            (e["frame"], e["kind"], e["track_id"], tuple(e["daughters"]))
            for e in store.events(run_id, pos)
        ]
        status = {r["run_id"]: r["status"] for r in store.runs()}[run_id]
        return {
            "tracks": store.tracks(run_id, pos),
            "frames": frames,
            "events": events,
            "status": status,
        }


def check_integrity(db: Path) -> None:
    """PRAGMA integrity_check is ok and every committed frame is complete."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        incomplete = conn.execute(
            "SELECT f.frame FROM frames f LEFT JOIN masks m USING (run_id, position, frame)"
            " WHERE m.frame IS NULL OR f.n_detections != (SELECT count(*) FROM detections d"
            " WHERE d.run_id = f.run_id AND d.position = f.position AND d.frame = f.frame)"
        ).fetchall()
        assert incomplete == []
    finally:
        conn.close()


def reference_lineage(
    tmp: Path, *, seed: int, n_frames: int, run_id: str, sim_args: list[str] = SIM_ARGS
) -> dict[str, Any]:
    db = tmp / "reference.db"
    args = ["-q", "run", *sim_args, "--seed", str(seed), "--frames", str(n_frames)]
    code = main(
        [*args, "--db", str(db), "--run-id", run_id, "--no-tui", "--events", "tcp://127.0.0.1:0"]
    )
    assert code == 0
    return lineage(db, run_id)


def run_with_kills(
    tmp: Path, *, seed: int, n_frames: int, n_kills: int, sim_args: list[str] = SIM_ARGS
) -> int:
    """Stream ``n_frames`` while SIGKILLing the worker ``n_kills`` times at random
    moments (restarting it each time with the same command); returns the kills done.
    The lineage must equal an uninterrupted run's."""
    rng = random.Random(seed)
    db, run_id = tmp / f"killed-{seed}.db", f"faults-{seed}"
    frames_ep, events_ep = endpoints()
    wlog, dlog = tmp / f"worker-{seed}.log", tmp / f"driver-{seed}.log"
    worker = spawn(worker_cmd(db, frames_ep, events_ep), wlog)
    driver = spawn(
        sim_cmd(frames_ep, events_ep, seed=seed, n_frames=n_frames, run_id=run_id,
                sim_args=sim_args),
        dlog,
    )  # fmt: skip
    kills = 0
    try:
        while kills < n_kills and driver.poll() is None:
            wlog.write_text("")
            if not wait_for_line(wlog, "worker ready", worker, timeout_s=30):
                break  # it finished the run (exit on end-of-stream) before we struck
            time.sleep(rng.uniform(0.0, 0.3))
            if driver.poll() is not None:
                break
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
            if db.exists():
                check_integrity(db)
            worker = spawn(worker_cmd(db, frames_ep, events_ep), wlog)
        assert stop_process(driver, timeout_s=120) == 0, dlog.read_text()[-3000:]
        stop_process(worker)
    finally:
        for proc in (driver, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    check_integrity(db)
    got = lineage(db, run_id)
    want = reference_lineage(tmp, seed=seed, n_frames=n_frames, run_id=run_id, sim_args=sim_args)
    assert got["status"] == want["status"] == "finished"
    assert sorted(got["frames"]) == list(range(n_frames))
    assert got["frames"] == want["frames"]
    assert got["tracks"] == want["tracks"]
    assert got["events"] == want["events"]
    (tmp / "reference.db").unlink()
    return kills


# ----------------------------------------------------------- crash-resume
def test_kill_9_worker_three_times_lineage_equals_uninterrupted_run(tmp_path: Path) -> None:
    assert run_with_kills(tmp_path, seed=3, n_frames=40, n_kills=3) == 3


def test_kill_9_worker_with_the_default_pipeline_lineage_equals_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """Segmented by the learned model with an estimated diameter and tracked by the
    default tracker, not only tracked on given labels: what a resumed worker decides
    (scale, model state) must be what the uninterrupted worker decided."""
    kills = run_with_kills(tmp_path, seed=6, n_frames=30, n_kills=2, sim_args=DEFAULT_PIPELINE_ARGS)
    assert kills == 2


@pytest.mark.slow
def test_kill_9_worker_twenty_times_lineage_equals_uninterrupted_run(tmp_path: Path) -> None:
    total, seed = 0, 11
    while total < 20:
        total += run_with_kills(tmp_path, seed=seed, n_frames=40, n_kills=20 - total)
        seed += 1
    assert total == 20


# ------------------------------------------------- acknowledgements, in-process
def _stream(frames: int, seed: int = 3) -> list[tuple[np.ndarray, Any]]:
    from livetrack.drivers.simulator import SimulatorSource
    from livetrack.simulators.nuclei import SimulationConfig

    cfg = SimulationConfig(
        seed=seed, n_frames=frames, height=96, width=96, n_cells=5, nucleus_diameter_px=14
    )
    return list(SimulatorSource(cfg, with_labels=True).frames())


class _WorkerThread:
    """An in-process worker on fixed endpoints, served by a thread until stopped."""

    def __init__(self, db: Path, frames_ep: str, events_ep: str) -> None:
        from livetrack.transport import EventPublisher, FramePuller
        from livetrack.worker import Worker

        self.store = Store(db)
        self.puller = FramePuller(frames_ep)
        self.publisher = EventPublisher(events_ep)
        self.worker = Worker(Settings(), self.store, self.puller, self.publisher)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,))
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.puller.close()
        self.publisher.close()
        self.store.close()


def _acked_pusher(frames_ep: str, events_ep: str, **kw: Any) -> Any:
    from livetrack.transport import AckedPusher, EventSubscriber, FramePusher

    pusher = FramePusher(frames_ep, linger_s=0, send_timeout_s=30)
    acks = EventSubscriber(events_ep, topics=("committed", "status", "rejected"))
    return AckedPusher(pusher, acks, **kw)


def test_driver_resends_to_a_restarted_worker_by_worker_id(tmp_path: Path) -> None:
    """No silence timeout (resend_after_s huge): the new worker_id alone triggers the
    re-send of what the first worker never committed."""
    from livetrack.pump import header_for

    frames_ep, events_ep = endpoints()
    first = _WorkerThread(tmp_path / "a.db", frames_ep, events_ep)
    sender = _acked_pusher(frames_ep, events_ep, max_unacked=64, resend_after_s=1e6)
    stream = _stream(12)
    try:
        for image, meta in stream[:6]:
            sender.send_frame(
                header_for("r", image, meta, source="t", total_frames=12, labels=meta.labels),
                image,
                meta.labels,
            )
        deadline = time.monotonic() + 20
        while sender.acknowledged < 6 and time.monotonic() < deadline:
            sender._service(0.1)
        assert sender.acknowledged == 6
        first.stop.set()  # the worker stops reading: frames now sent are lost with it
        first.thread.join()
        for image, meta in stream[6:]:
            sender.send_frame(
                header_for("r", image, meta, source="t", total_frames=12, labels=meta.labels),
                image,
                meta.labels,
            )
        time.sleep(0.2)
        sender._service(0)
        first.close()
        assert sender.unacked == 6
        second = _WorkerThread(tmp_path / "a.db", frames_ep, events_ep)
        try:
            from livetrack.messages import EndOfStream

            assert sender.send_eos(EndOfStream(run_id="r", positions=("sim",), frames_sent=12))
            assert sender.worker_id == second.worker.worker_id
            assert sender.resent > 0  # frames swallowed by the first worker went again
        finally:
            second.close()
    finally:
        sender.close()
    with Store(tmp_path / "a.db", readonly=True) as store:
        assert store.frame_indices("r", "sim") == list(range(12))
        assert store.runs()[0]["status"] == "finished"


def test_acknowledging_driver_does_not_resend_a_frame_rejected_for_its_content(
    tmp_path: Path,
) -> None:
    """A label image with negative labels is bad input: the worker rejects it for good
    (``FrameRejected.final``), and the acknowledging driver must stop re-sending it and
    finish the stream — it used to re-send it forever and never deliver the end-of-stream."""
    from livetrack.messages import EndOfStream
    from livetrack.pump import header_for

    frames_ep, events_ep = endpoints()
    worker = _WorkerThread(tmp_path / "rej.db", frames_ep, events_ep)
    sender = _acked_pusher(frames_ep, events_ep, max_unacked=8, resend_after_s=0.5)
    try:
        for image, meta in _stream(6):
            labels = meta.labels
            if meta.frame_index in (2, 5):  # the last one: no later frame's ack covers it
                labels = labels.copy()
                labels[0, 0] = -1
            sender.send_frame(
                header_for("r", image, meta, source="t", total_frames=6, labels=labels),
                image,
                labels,
            )
        assert sender.send_eos(EndOfStream(run_id="r", positions=("sim",), frames_sent=6))
        assert sender.unconfirmed() == []
        assert [r.split(":")[0] for r in sender.rejected] == ["sim/2", "sim/5"]
        assert sender.frames_confirmed == 4
    finally:
        sender.close()
        worker.close()
    with Store(tmp_path / "rej.db", readonly=True) as store:
        assert store.frame_indices("r", "sim") == [0, 1, 3, 4]
        assert store.runs()[0]["status"] == "finished"


def test_frame_whose_predecessor_never_arrived_is_refused_until_resent(tmp_path: Path) -> None:
    from livetrack.pump import header_for
    from livetrack.transport import FramePuller, FramePusher
    from livetrack.worker import Worker

    store = Store(tmp_path / "p.db")
    puller = FramePuller("tcp://127.0.0.1:0", hwm=100)
    pusher = FramePusher(puller.endpoint, hwm=100, linger_s=0)
    worker = Worker(Settings(), store, puller)
    stream = _stream(4)

    def send(i: int, previous: int | None) -> str:
        image, meta = stream[i]
        h = header_for("r", image, meta, source="t", total_frames=4, labels=meta.labels)
        pusher.send_frame(h.model_copy(update={"previous_frame": previous}), image, meta.labels)
        result = worker.poll_once(timeout_s=10)
        assert result is not None
        assert not isinstance(result, tuple)
        return str(getattr(result, "status", ""))

    try:
        assert send(0, None) == "stored"
        assert send(2, 1) == "rejected"  # frame 1 was lost on the way
        assert store.frame_indices("r", "sim") == [0]
        assert send(1, 0) == "stored"
        assert send(2, 1) == "stored"
        assert send(1, 0) == "duplicate"
    finally:
        pusher.close()
        puller.close()
        store.close()


def test_lossy_mode_drops_new_frames_counted_when_no_worker_acknowledges() -> None:
    from livetrack.pump import header_for

    frames_ep, events_ep = endpoints()
    sender = _acked_pusher(
        frames_ep, events_ep, max_unacked=3, overflow="drop", drop_wait_s=0.1, resend_after_s=0.5
    )
    try:
        delivered = [
            sender.send_frame(
                header_for("r", im, m, source="t", total_frames=6, labels=m.labels), im, m.labels
            )
            for im, m in _stream(6)
        ]
    finally:
        sender.close()
    assert delivered == [True] * 3 + [False] * 3
    assert sender.dropped == 3
    assert sender.unacked == 3


# ---------------------------------------------------------------- storage
def committed_frames(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def wait_for_frames(db: Path, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while committed_frames(db) < n:
        assert proc.poll() is None, "process ended early"
        assert time.monotonic() < deadline, f"fewer than {n} frames committed in time"
        time.sleep(0.02)


def run_cmd(db: Path, n_frames: int, interval: float = 0.0) -> list[str]:
    return [
        *LIVETRACK,
        "run",
        "--no-tui",
        *SIM_ARGS,
        "--seed",
        "5",
        "--frames",
        str(n_frames),
        "--interval",
        str(interval),
        "--db",
        str(db),
        "--events",
        "tcp://127.0.0.1:0",
    ]


def test_kill_9_mid_commit_leaves_an_intact_database_and_resumes(tmp_path: Path) -> None:
    """SIGKILL while frames are committed back to back (256² masks, ~10 ms a commit):
    the database passes integrity_check, every stored frame is complete, and the same
    command then finishes the run."""
    rng = random.Random(7)
    db = tmp_path / "k.db"
    cmd = [
        *LIVETRACK,
        "run",
        "--no-tui",
        "--track-only",
        "--size",
        "256",
        "256",
        "--cells",
        "30",
        "--frames",
        "60",
        "--db",
        str(db),
        "--events",
        "tcp://127.0.0.1:0",
    ]
    for _ in range(3):
        proc = spawn(cmd, tmp_path / "run.log")
        before = committed_frames(db)
        wait_for_frames(db, before + 1, proc)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check_integrity(db)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    check_integrity(db)
    with Store(db, readonly=True) as store:
        run = store.runs()[0]
        assert run["status"] == "finished"
        assert store.frame_indices(run["run_id"], "sim") == list(range(60))


def _one_frame_worker(tmp_path: Path, config: StoreConfig, max_failures: int) -> tuple[Any, ...]:
    from livetrack.transport import FramePuller, FramePusher
    from livetrack.worker import Worker

    store = Store(tmp_path / "s.db", config=config)
    puller = FramePuller("tcp://127.0.0.1:0", hwm=100)
    pusher = FramePusher(puller.endpoint, hwm=100, linger_s=0)
    settings = Settings().model_copy(
        update={"worker": Settings().worker.model_copy(update={"max_store_failures": max_failures})}
    )
    return Worker(settings, store, puller), pusher, puller, store


def _send(worker: Any, pusher: Any, frame: tuple[np.ndarray, Any]) -> Any:
    from livetrack.pump import header_for

    image, meta = frame
    h = header_for("r", image, meta, source="t", total_frames=None, labels=meta.labels)
    pusher.send_frame(h, image, meta.labels)
    return worker.poll_once(timeout_s=10)


def test_locked_database_waits_then_stops_with_a_clear_message(tmp_path: Path) -> None:
    stream = _stream(6)
    worker, pusher, puller, store = _one_frame_worker(
        tmp_path, StoreConfig(busy_timeout_s=1.0), max_failures=2
    )
    other = sqlite3.connect(
        tmp_path / "s.db", timeout=0, isolation_level=None, check_same_thread=False
    )
    try:
        assert _send(worker, pusher, stream[0]).status == "stored"
        # a lock shorter than the busy timeout: the commit waits and succeeds
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
        assert _send(worker, pusher, stream[1]).status == "stored"
        # a lock held for good: the frame is rejected naming the lock, then the worker stops
        time.sleep(0.1)
        other.execute("BEGIN IMMEDIATE")
        result = _send(worker, pusher, stream[2])
        assert result.status == "rejected"
        assert "locked" in result.message
        with pytest.raises(WorkerStopped, match="locked"):
            _send(worker, pusher, stream[3])
        other.execute("ROLLBACK")
    finally:
        other.close()
        pusher.close()
        puller.close()
        store.close()
    check_integrity(tmp_path / "s.db")
    with Store(tmp_path / "s.db", readonly=True) as s:
        assert s.frame_indices("r", "sim") == [0, 1]


def test_full_disk_is_reported_and_stops_the_worker_safely(tmp_path: Path) -> None:
    """SQLite's max_page_count makes the file 'full' exactly as a full disk does
    (SQLITE_FULL); earlier frames stay intact."""
    stream = _stream(60)
    worker, pusher, puller, store = _one_frame_worker(tmp_path, StoreConfig(), max_failures=2)
    try:
        assert _send(worker, pusher, stream[0]).status == "stored"
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        results = []
        for frame in stream[1:58]:  # the last pages' free room holds a few frames first
            results.append(_send(worker, pusher, frame))
            if results[-1].status == "rejected":
                break
        assert results[-1].status == "rejected"
        assert "disk is full" in results[-1].message
        stored = [r.frame_index for r in results if r.status == "stored"]
        with pytest.raises(WorkerStopped, match="disk is full"):
            _send(worker, pusher, stream[len(results) + 1])
    finally:
        pusher.close()
        puller.close()
        store.close()
    check_integrity(tmp_path / "s.db")
    with Store(tmp_path / "s.db", readonly=True) as s:
        assert s.frame_indices("r", "sim") == [0, *stored]


# ---------------------------------------------------------------- shutdown
def test_sigterm_worker_flushes_exits_0_and_the_run_resumes(tmp_path: Path) -> None:
    db, run_id = tmp_path / "t.db", "term"
    frames_ep, events_ep = endpoints()
    wlog = tmp_path / "w.log"
    worker = spawn(worker_cmd(db, frames_ep, events_ep), wlog)
    driver = spawn(
        sim_cmd(frames_ep, events_ep, seed=4, n_frames=30, run_id=run_id), tmp_path / "d.log"
    )
    try:
        wait_for_frames(db, 5, worker)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, wlog.read_text()[-2000:]
        assert "worker stopped:" in wlog.read_text()
        check_integrity(db)
        with Store(db, readonly=True) as store:
            assert {r["run_id"]: r["status"] for r in store.runs()}[run_id] == "aborted"
        worker = spawn(worker_cmd(db, frames_ep, events_ep), wlog)  # same command resumes
        assert driver.wait(timeout=60) == 0
        assert worker.wait(timeout=30) == 0
    finally:
        for proc in (driver, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    check_integrity(db)
    assert lineage(db, run_id) == reference_lineage(tmp_path, seed=4, n_frames=30, run_id=run_id)


def test_sigterm_run_exits_0_and_the_same_command_resumes(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    out = tmp_path / "run.log"
    # 100 frames 0.1 s apart: the driver is still sending for seconds after the third
    # frame is stored, so "fewer than all stored" below does not depend on load.
    proc = spawn(run_cmd(db, 100, interval=0.1), out)
    try:
        wait_for_frames(db, 3, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, out.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "run the same command again to resume" in out.read_text()
    check_integrity(db)
    stored = committed_frames(db)
    assert 3 <= stored < 100
    done = subprocess.run(run_cmd(db, 100), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with Store(db, readonly=True) as store:
        runs = store.runs()
        assert len(runs) == 1
        assert runs[0]["status"] == "finished"
        assert store.frame_indices(runs[0]["run_id"], "sim") == list(range(100))


def test_stop_after_the_driver_sent_every_frame_still_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The race behind a missing resume hint: Ctrl-C after the driver had handed every
    frame to the socket (small frames, a slower worker). The run is unfinished, so the
    hint must be printed whatever the driver's own outcome was. Deterministic: the stop
    comes from the worker's third stored frame, once the driver has closed its source."""
    from livetrack.drivers.simulator import SimulatorSource
    from livetrack.simulators.nuclei import SimulationConfig

    from livetrack.cli.common import print_resume_hint
    from livetrack.runner import run_pipeline

    class Watched(SimulatorSource):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.closed = threading.Event()

        def close(self) -> None:
            super().close()
            self.closed.set()

    cfg = SimulationConfig(seed=5, n_frames=30, height=96, width=96, n_cells=5)
    source = Watched(cfg, with_labels=True)
    stop = threading.Event()
    stored: list[int] = []

    def on_frame(result: Any) -> None:
        if result.status == "stored":
            stored.append(1)
            if len(stored) == 3:
                assert source.closed.wait(30), "the driver never finished sending"
                stop.set()

    summary = run_pipeline(
        source,
        Settings(),
        description="sim",
        run_id="race",
        db_path=tmp_path / "race.db",
        stop=stop,
        on_frame=on_frame,
        events_endpoint="tcp://127.0.0.1:0",
    )
    assert summary.pump is not None
    assert summary.pump.reason == "complete"
    assert summary.frames_stored == 3
    assert summary.run_status == "aborted"
    assert summary.resumable
    print_resume_hint(summary)
    assert "run the same command again to resume" in capsys.readouterr().out


def _run_stopped(
    config: Any, settings: Settings, db: Path, run_id: str, stop_after: int | None
) -> None:
    """Simulated frames through an in-process pipeline into ``db``; stopped (the run left
    aborted, resumable) once ``stop_after`` more frames are stored, or run to the end."""
    from livetrack.drivers.simulator import SimulatorSource

    from livetrack.runner import run_pipeline

    stop = threading.Event()
    seen: list[int] = []

    def on_frame(result: Any) -> None:
        if result.status == "stored":
            seen.append(result.frame_index)
            if stop_after is not None and len(seen) == stop_after:
                stop.set()

    run_pipeline(
        SimulatorSource(config),
        settings,
        description="sim",
        run_id=run_id,
        db_path=db,
        stop=stop,
        on_frame=on_frame,
        events_endpoint="tcp://127.0.0.1:0",
    )


def _scale_and_lineage(db: Path, run_id: str) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        scale = conn.execute(
            "SELECT frame, diameter_px, estimate_px FROM scale WHERE run_id = ? ORDER BY frame",
            (run_id,),
        ).fetchall()
    finally:
        conn.close()
    return scale, lineage(db, run_id)


def test_interrupted_default_pipeline_resumes_with_the_same_scale_and_lineage(
    tmp_path: Path,
) -> None:
    """Default settings (learned segmenter, estimated diameter, default tracker): a run
    stopped after frame 1 — before the diameter settled on 3 frames — and resumed must
    segment every frame with the diameter an uninterrupted run used, and end with the
    same lineage. Before the scale was stored, the resumed worker estimated it again on
    later frames."""
    from livetrack.simulators.nuclei import SimulationConfig

    # Nuclei that shrink as the movie goes on: a re-estimate on later frames differs.
    cfg = SimulationConfig(
        seed=8, n_frames=16, height=160, width=160, n_cells=8, nucleus_diameter_px=22
    )
    # Re-measured every 3rd frame once settled (frames 5, 8, 11, 14): the stop after
    # frame 6 falls between two measurements.
    settings = Settings(segment=SegmentConfig(rescale_every=3))

    def run(db: Path, stop_after: int | None) -> None:
        _run_stopped(cfg, settings, db, "scale", stop_after)

    whole, resumed = tmp_path / "whole.db", tmp_path / "resumed.db"
    run(whole, None)
    run(resumed, 2)  # before the scale settled
    assert lineage(resumed, "scale")["status"] == "aborted"
    run(resumed, 5)  # frames 2-6: settled, re-measured on frame 5
    assert lineage(resumed, "scale")["status"] == "aborted"
    run(resumed, None)
    want_scale, want = _scale_and_lineage(whole, "scale")
    got_scale, got = _scale_and_lineage(resumed, "scale")
    assert len(want_scale) == 16
    measured = [f for f, _, e in want_scale if e is not None]
    assert measured == [0, 1, 2, 5, 8, 11, 14]
    assert got_scale == want_scale
    assert got == want


class _SplitFrames(logging.Handler):
    """The frames in which the worker split merged objects, or (``phrase`` "joined again")
    joined objects cut in two (from its debug log)."""

    def __init__(self, phrase: str = "merged objects split") -> None:
        super().__init__(logging.DEBUG)
        self.phrase = phrase
        self.frames: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.phrase in msg:
            self.frames.append(int(msg.split(":")[0].split()[1]))


def _logged_frames(phrase: str, work: Any) -> list[int]:
    """The frames whose debug log line from the tracking stage holds ``phrase`` while
    ``work()`` runs."""
    seen = _SplitFrames(phrase)
    logger = logging.getLogger("livetrack.track")
    level = logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.DEBUG)
    try:
        work()
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    return seen.frames


def test_interrupted_run_that_splits_merges_resumes_with_the_same_splits(
    tmp_path: Path,
) -> None:
    """With ``track.merge_area_ratio`` on, the learned segmenter's merged nuclei are split
    between the open tracks: a run stopped twice and resumed must split the same objects
    in the same frames as an uninterrupted run — above all in the first frame after each
    resume, where the open tracks come from the database — and end with the same lineage
    and the same masks."""
    from livetrack.simulators.nuclei import SimulationConfig

    # Crowded, touching nuclei: the segmenter merges some, and the rule splits them.
    cfg = SimulationConfig(
        seed=1, n_frames=12, height=160, width=160, n_cells=40, nucleus_diameter_px=22,
        max_confluence=0.85, contact_distance=0.8, repulsion=0.2,
    )  # fmt: skip
    settings = Settings()
    settings = settings.model_copy(
        update={"track": settings.track.model_copy(update={"merge_area_ratio": 1.25})}
    )

    def run(db: Path, stop_after: int | None) -> list[int]:
        return _logged_frames(
            "merged objects split", lambda: _run_stopped(cfg, settings, db, "merges", stop_after)
        )

    whole, resumed = tmp_path / "whole.db", tmp_path / "resumed.db"
    want_splits = run(whole, None)
    got_splits = run(resumed, 4)  # frames 0-3
    assert lineage(resumed, "merges")["status"] == "aborted"
    got_splits += run(resumed, 4)  # frames 4-7
    assert lineage(resumed, "merges")["status"] == "aborted"
    got_splits += run(resumed, None)  # frames 8-11
    # The rule did split, and in the first frame after each resume (else nothing is shown).
    assert {4, 8} <= set(want_splits), want_splits
    assert got_splits == want_splits
    got, want = lineage(resumed, "merges"), lineage(whole, "merges")
    assert want["status"] == "finished"
    assert got == want
    with Store(whole, readonly=True) as a, Store(resumed, readonly=True) as b:
        for f in range(12):
            assert np.array_equal(a.load_mask("merges", "sim", f), b.load_mask("merges", "sim", f))


def test_interrupted_run_that_joins_cut_objects_resumes_with_the_same_joins(
    tmp_path: Path,
) -> None:
    """Default settings join an object the learned segmenter cut in two where one track was
    (``track.hold_convex_splits``; here mothers in anaphase): a run stopped just before the
    frame where that happens and resumed must join there too — the open tracks it needs
    come from the database — and end with the same lineage and masks."""
    from livetrack.simulators.nuclei import SimulationConfig

    cfg = SimulationConfig(
        seed=0, n_frames=12, height=160, width=160, n_cells=10, nucleus_diameter_px=34,
        cell_cycle_frames=7, mitosis_frames=3, mitotic_axis_ratio=1.3, anaphase_frames=2,
    )  # fmt: skip
    settings = Settings()

    def run(db: Path, stop_after: int | None) -> list[int]:
        return _logged_frames(
            "joined again", lambda: _run_stopped(cfg, settings, db, "held", stop_after)
        )

    whole, resumed = tmp_path / "whole.db", tmp_path / "resumed.db"
    want = run(whole, None)
    assert want, "no object was joined in this movie (here: one, in frame 4)"
    got = run(resumed, want[0])  # the frames before the first join
    assert lineage(resumed, "held")["status"] == "aborted"
    got += run(resumed, None)  # the rest: the first join comes first
    assert got == want
    assert lineage(resumed, "held") == lineage(whole, "held")
    with Store(whole, readonly=True) as a, Store(resumed, readonly=True) as b:
        for f in range(12):
            assert np.array_equal(a.load_mask("held", "sim", f), b.load_mask("held", "sim", f))


# ------------------------------------------------------------- backpressure
FAST_SENDER = r"""
import sys, time
import numpy as np
from livetrack.messages import EndOfStream, FrameHeader
from livetrack.transport import AckedPusher, EventSubscriber, FramePusher

frames_ep, events_ep, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
yy, xx = np.mgrid[:1024, :1024]
base = ((yy // 64) * 16 + (xx // 64) + 1).astype(np.int32)   # 256 square "nuclei"
base[(yy % 64 < 8) | (xx % 64 < 8)] = 0
sender = AckedPusher(FramePusher(frames_ep, linger_s=0), EventSubscriber(events_ep),
                     max_unacked=8, resend_after_s=30)
for i in range(n):
    labels = base.copy()                                  # a new buffer per frame, like a camera
    image = (labels > 0).astype(np.uint16) * 1000 + np.uint16(i % 7)
    h = FrameHeader(run_id="bp", position="p", frame_index=i, timestamp=time.time(),
                    shape=(1024, 1024), dtype="uint16", labels_dtype="int32", total_frames=n)
    sender.send_frame(h, image, labels)
assert sender.send_eos(EndOfStream(run_id="bp", positions=("p",), frames_sent=n), timeout_s=60)
print(f"peak_unacked={sender.peak_unacked} max_unacked={sender.max_unacked} "
      f"blocked_s={sender.pusher.blocked_s:.1f}", flush=True)
sender.close()
"""


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("n_frames", [60, pytest.param(300, marks=pytest.mark.slow)])
def test_fast_sender_keeps_memory_bounded_on_both_sides(tmp_path: Path, n_frames: int) -> None:
    """1024² frames (2 MB pixels + 4 MB labels each) from a sender that only copies
    buffers, into a worker that labels, tracks and commits them: unbounded queues would
    grow by ~6 MB a frame (360 MB for 60, 1.8 GB for 300); both sides stay flat."""
    db = tmp_path / "bp.db"
    frames_ep, events_ep = endpoints()
    worker = spawn(worker_cmd(db, frames_ep, events_ep), tmp_path / "w.log")
    out = tmp_path / "sender.log"
    sender = spawn([sys.executable, "-c", FAST_SENDER, frames_ep, events_ep, str(n_frames)], out)
    peaks = {"worker": 0.0, "sender": 0.0}
    base: dict[str, float] = {}
    try:
        while sender.poll() is None:
            if not base and committed_frames(db) >= 5:
                base = {"worker": rss_mb(worker.pid), "sender": rss_mb(sender.pid)}
            if base:
                peaks["worker"] = max(peaks["worker"], rss_mb(worker.pid))
                peaks["sender"] = max(peaks["sender"], rss_mb(sender.pid))
            time.sleep(0.05)
        assert sender.returncode == 0, out.read_text()[-2000:]
        assert worker.wait(timeout=30) == 0
    finally:
        for proc in (sender, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert committed_frames(db) == n_frames
    report = dict(kv.split("=") for kv in out.read_text().split() if "=" in kv)
    assert report["peak_unacked"] == report["max_unacked"]  # the sender was held back
    growth = {k: peaks[k] - base[k] for k in peaks}
    assert base, "never sampled"
    print(f"RSS MB at frame 5 {base}, growth after {n_frames} frames {growth}; {report}")
    assert growth["worker"] < 150, (growth, base)
    assert growth["sender"] < 150, (growth, base)


# ------------------------------------------------------------- where and who writes
SMALL_RUN = ["--no-tui", "--size", "64", "64", "--cells", "3", "--diameter", "12"]


def _env(**extra: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_configured_database_path_is_used_by_worker_and_run(tmp_path: Path) -> None:
    """LIVETRACK_STORE__PATH and [store] path used to be ignored: --db always had a value
    (./livetrack.db). An explicit --db still wins."""
    frames_ep, events_ep = endpoints()
    env = _env(LIVETRACK_STORE__PATH="elsewhere.db")
    cmd = worker_cmd(Path("unused"), frames_ep, events_ep)
    i = cmd.index("--db")
    del cmd[i : i + 2]
    with (tmp_path / "w.log").open("ab") as log:
        worker = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        driver = subprocess.run(
            sim_cmd(frames_ep, events_ep, seed=2, n_frames=3, run_id="env"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert driver.returncode == 0, driver.stderr[-2000:]
        assert worker.wait(timeout=60) == 0, (tmp_path / "w.log").read_text()[-2000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert not (tmp_path / "livetrack.db").exists()
    with Store(tmp_path / "elsewhere.db", readonly=True) as store:
        assert store.frame_indices("env", "sim") == [0, 1, 2]

    (tmp_path / "cfg.toml").write_text('[store]\npath = "from-config.db"\n')
    run = [*LIVETRACK, "run", *SMALL_RUN, "--track-only", "--frames", "2"]
    run += ["--events", "tcp://127.0.0.1:0", "--run-id", "cfg", "--config", "cfg.toml"]
    done = subprocess.run(run, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "from-config.db" in done.stdout
    with Store(tmp_path / "from-config.db", readonly=True) as store:
        assert store.frame_indices("cfg", "sim") == [0, 1]
    done = subprocess.run(
        [*run, "--db", "explicit.db"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with Store(tmp_path / "explicit.db", readonly=True) as store:
        assert store.frame_indices("cfg", "sim") == [0, 1]
    assert not (tmp_path / "livetrack.db").exists()


def test_database_deleted_under_a_running_worker_stops_it_with_a_clear_error(
    tmp_path: Path,
) -> None:
    """It used to go on 'committing' and acknowledging into the unlinked file (rc 0,
    nothing left on disk)."""
    db, run_id = tmp_path / "gone.db", "gone"
    frames_ep, events_ep = endpoints()
    wlog = tmp_path / "w.log"
    worker = spawn(worker_cmd(db, frames_ep, events_ep), wlog)
    driver = spawn(
        sim_cmd(frames_ep, events_ep, seed=4, n_frames=40, run_id=run_id), tmp_path / "d.log"
    )
    try:
        wait_for_frames(db, 3, worker)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink()
        assert worker.wait(timeout=60) == 1, wlog.read_text()[-2000:]
    finally:
        for proc in (driver, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = wlog.read_text()
    assert "livetrack worker: error: " in text
    assert "gone.db was deleted while this process was writing the database" in text
    assert "Traceback" not in text
    assert "worker stopped:" not in text  # it did not pretend to finish


def test_unwritable_database_stops_the_worker_at_start_up(tmp_path: Path) -> None:
    from tests.test_store import make_unwritable

    db = tmp_path / "ro.db"
    with Store(db) as s:
        s.begin_run("r", source="sim", config={})
    frames_ep, events_ep = endpoints()
    with contextlib.contextmanager(make_unwritable)(db):
        done = subprocess.run(
            worker_cmd(db, frames_ep, events_ep),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,  # it used to start and wait for frames
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"livetrack worker: error: checking that store {db} can be written: the database is "
        "read-only (file permissions, or opened with readonly=True) (OperationalError: "
        "attempt to write a readonly database)"
    ]


def test_second_run_on_a_run_being_written_is_refused_by_name(tmp_path: Path) -> None:
    """It used to 'resume' the run the first was writing and die with 'cannot end unknown
    track(s)'. The first run is not disturbed.

    The first run streams 2,000 frames 0.1 s apart (200 s), so it is still writing when the
    second has started and been refused, however slow the machine; it is then stopped with
    SIGTERM (a clean stop: exit 0, run resumable) and its frames must be intact."""
    db = tmp_path / "two.db"
    out = tmp_path / "first.log"
    first = spawn(run_cmd(db, 2000, interval=0.1), out)
    try:
        wait_for_frames(db, 2, first)
        second = subprocess.run(
            run_cmd(db, 2000, interval=0.1), cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert first.poll() is None, "the first run ended before the second was checked"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, out.read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1, second.stderr[-2000:]
    assert (
        f"livetrack run: error: run 'sim-s5-160x160-c10-f2000' is being written by another "
        f"livetrack process (pid {first.pid} on host {socket.gethostname()}"
    ) in second.stderr
    assert "wait for it to finish, or write a separate run with a different --run-id" in (
        second.stderr
    )
    check_integrity(db)
    with Store(db, readonly=True) as store:
        (run,) = store.runs()
        assert run["status"] == "aborted"
        stored = store.frame_indices(run["run_id"], "sim")
        assert len(stored) >= 2
        assert stored == list(range(len(stored)))  # nothing lost or skipped
        assert store.conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def test_taken_events_port_is_refused_not_silently_moved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` used to move to a random port, so `livetrack tui --connect` watched nothing."""
    import zmq

    ctx = zmq.Context()
    holder = ctx.socket(zmq.PUB)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    try:
        code = main(
            [
                "run",
                *SMALL_RUN,
                *("--frames", "2", "--db", str(tmp_path / "p.db")),
                *("--events", f"tcp://127.0.0.1:{port}"),
            ]
        )
    finally:
        holder.close(linger=0)
        ctx.term()
    err = capsys.readouterr().err
    assert code == 1
    assert f"tcp://127.0.0.1:{port} is already in use" in err
    assert "choose another endpoint with --events (tcp://127.0.0.1:0 for any free port" in err
    with Store(tmp_path / "p.db", readonly=True) as store:
        assert store.runs() == []  # nothing started
