"""A sender that exits delivers everything it handed over, or says what it does not know.

Real processes and real sockets: the sender runs in a subprocess, so a crash at exit (a
zero-copy buffer freed under ZeroMQ's I/O thread) shows as a non-zero exit status.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from livetrack.messages import EndOfStream
from livetrack.store import Store
from livetrack.transport import FramePuller, ReceivedFrame
from tests.test_faults import LIVETRACK, REPO, endpoints

SIDE = 2048
"""8 MB frames: more than the loopback socket buffers hold, so the sender still has
frames in its own queue when it is done handing them over."""

SENDER = f"""
import sys, time
import numpy as np
from livetrack.messages import EndOfStream, FrameHeader
from livetrack.transport import FramePusher

endpoint, n = sys.argv[1], int(sys.argv[2])
pusher = FramePusher(endpoint, send_timeout_s=120)
for i in range(n):
    header = FrameHeader(run_id="r", position="p", frame_index=i, timestamp=time.time(),
                         shape=({SIDE}, {SIDE}), dtype="uint16")
    # after the send only ZeroMQ (zero-copy) keeps this array alive
    pusher.send_frame(header, np.full(({SIDE}, {SIDE}), i + 1, np.uint16))
pusher.send_eos(EndOfStream(run_id="r", positions=("p",), frames_sent=n))
print("handed", flush=True)
print("flushed", pusher.close(), flush=True)
"""


def test_plain_sender_that_exits_delivers_every_frame_and_the_end_of_stream(
    zmq_context: zmq.Context,  # type: ignore[type-arg]
    closing,
) -> None:
    n, held_back = 6, 3
    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=1, context=zmq_context))
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, puller.endpoint, str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        got: list[ReceivedFrame | EndOfStream] = []
        # Take the first frames as they come, then stop reading until the sender has handed
        # over the rest (its queue of 4 holds 3 frames and the end-of-stream): they are
        # still queued on its side when it closes and exits.
        for _ in range(n - held_back):
            msg = puller.recv(timeout_s=60)
            assert isinstance(msg, ReceivedFrame)
            got.append(msg)
        assert sender.stdout is not None
        assert sender.stdout.readline().strip() == "handed"
        while len(got) < n + 1:
            msg = puller.recv(timeout_s=30)
            assert msg is not None, f"only {len(got)} of {n} frames + end-of-stream arrived"
            got.append(msg)
        out, err = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    assert sender.returncode == 0, err[-2000:]
    assert out.strip() == "flushed True"
    frames = [m for m in got if isinstance(m, ReceivedFrame)]
    assert [f.header.frame_index for f in frames] == list(range(n))
    assert [int(f.image[0, 0]) for f in frames] == [i + 1 for i in range(n)]
    assert all(int(f.image.min()) == int(f.image.max()) for f in frames)
    assert isinstance(got[-1], EndOfStream)
    assert got[-1].frames_sent == n


def _worker(db: Path, frames_ep: str, events_ep: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *LIVETRACK,
            "-q",
            "worker",
            "--db",
            str(db),
            "--segmenter",
            "classical",
            "--tracker",
            "lap",
            "--frames-endpoint",
            frames_ep,
            "--events",
            events_ep,
            "--exit-on-eos",
        ],
        cwd=REPO,
    )


@pytest.mark.slow  # two CLI processes, ~15 s here; the test above covers the cause quickly
def test_plain_livetrack_sim_delivers_every_frame_and_the_end_of_stream(tmp_path: Path) -> None:
    """The issue's command: a worker slower than the simulator, so frames are still
    queued when the sender finishes; it must wait for them, exit 0, and say that the
    frames were handed over but not confirmed."""
    frames_ep, events_ep = endpoints()
    db = tmp_path / "pl.db"
    worker = _worker(db, frames_ep, events_ep)
    try:
        sim = subprocess.run(
            [
                *LIVETRACK,
                "-q",
                "sim",
                "--connect",
                frames_ep,
                "--frames",
                "20",
                "--seed",
                "1",
                "--size",
                "512",
                "512",
                "--cells",
                "60",
                "--run-id",
                "pl",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sim.returncode == 0, sim.stderr[-2000:]
        assert worker.wait(timeout=120) == 0  # --exit-on-eos: it saw the end-of-stream
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "20 frames and the end-of-stream handed" in sim.stdout
    assert "not confirmed by the worker" in sim.stdout
    with Store(db, readonly=True) as store:
        assert store.frame_indices("pl", "sim") == list(range(20))
        assert store.runs()[0]["status"] == "finished"


def test_acknowledged_sender_names_the_frames_the_worker_did_not_confirm(
    zmq_context: zmq.Context,  # type: ignore[type-arg]
    closing,
) -> None:
    """A worker that commits frame 0 and then stalls: the sender gives up after its send
    timeout and says exactly what is not confirmed (frames 1 and 2)."""
    import threading
    import time

    import numpy as np

    from livetrack.messages import FrameCommitted, FrameHeader
    from livetrack.transport import (
        AckedPusher,
        EventPublisher,
        EventSubscriber,
        FramePusher,
        SendTimeout,
    )

    puller = closing(FramePuller("tcp://127.0.0.1:0", hwm=100, context=zmq_context))
    publisher = closing(EventPublisher("tcp://127.0.0.1:0", context=zmq_context))
    sender = AckedPusher(
        FramePusher(puller.endpoint, context=zmq_context, linger_s=0, send_timeout_s=3),
        EventSubscriber(publisher.endpoint, topics=("committed",), context=zmq_context),
        resend_after_s=0.5,
    )
    closing(sender)
    done = threading.Event()

    def commit_frame_0() -> None:  # repeated: a subscriber may join late (PUB/SUB)
        ack = FrameCommitted(
            run_id="r", position="p", frame_index=0, status="stored", worker_id="w", timestamp=0
        )
        while not done.wait(0.05):
            publisher.publish(ack)

    image = np.zeros((4, 4), np.uint16)
    for i in range(3):
        h = FrameHeader(
            run_id="r",
            position="p",
            frame_index=i,
            timestamp=time.time(),
            shape=(4, 4),
            dtype="uint16",
        )
        assert sender.send_frame(h, image)
    thread = threading.Thread(target=commit_frame_0)
    thread.start()
    try:
        with pytest.raises(SendTimeout):
            sender.send_eos(EndOfStream(run_id="r", positions=("p",), frames_sent=3))
    finally:
        done.set()
        thread.join()
    assert sender.frames_confirmed == 1
    assert sender.unconfirmed() == ["p/1", "p/2"]
