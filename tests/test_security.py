"""Security: CURVE keys for remote endpoints, loopback by default, nothing executed from
the wire."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from livetrack.cli import main
from livetrack.errors import ConfigError
from livetrack.messages import FrameHeader
from livetrack.transport import (
    EventPublisher,
    FramePuller,
    FramePusher,
    ReceivedFrame,
    SendTimeout,
    curve_client,
    curve_server,
    read_key,
    write_keypair,
)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("worker", "scope", "intruder"):
        assert main(["-q", "keys", str(tmp_path), "--name", name]) == 0
    return tmp_path


def header(i: int = 0) -> FrameHeader:
    return FrameHeader(
        run_id="r",
        position="p",
        frame_index=i,
        timestamp=time.time(),
        shape=(8, 8),
        dtype="uint16",
    )


def test_keys_are_private_files_and_never_overwritten(keys: Path) -> None:
    for name in ("worker", "scope"):
        for suffix in ("public", "secret"):
            path = keys / f"{name}.{suffix}"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert len(read_key(path)) == 40
        assert zmq.curve_public(read_key(keys / f"{name}.secret")) == read_key(
            keys / f"{name}.public"
        )
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(keys, "worker")


def test_curve_admits_the_known_client_and_refuses_others(
    keys: Path,
    zmq_context: zmq.Context,
    closing,  # type: ignore[type-arg]
) -> None:
    server = curve_server(keys / "worker.secret", [keys / "scope.public"])
    puller = closing(FramePuller("tcp://127.0.0.1:0", context=zmq_context, curve=server))
    image = np.arange(64, dtype=np.uint16).reshape(8, 8)

    # a client with the right keys delivers (encrypted) frames
    good = closing(
        FramePusher(
            puller.endpoint,
            context=zmq_context,
            linger_s=0,
            send_timeout_s=10,
            curve=curve_client(keys / "scope.secret", keys / "worker.public"),
        )
    )
    good.send_frame(header(0), image)
    got = puller.recv(timeout_s=10)
    assert isinstance(got, ReceivedFrame)
    assert np.array_equal(got.image, image)

    # an unknown client key, or no CURVE at all, never gets a connection
    intruder = closing(
        FramePusher(
            puller.endpoint,
            context=zmq_context,
            linger_s=0,
            send_timeout_s=1.5,
            curve=curve_client(keys / "intruder.secret", keys / "worker.public"),
        )
    )
    with pytest.raises(SendTimeout):
        intruder.send_frame(header(1), image)
    plain = closing(
        FramePusher(puller.endpoint, context=zmq_context, linger_s=0, send_timeout_s=1.5)
    )
    with pytest.raises(SendTimeout):
        plain.send_frame(header(2), image)
    assert puller.recv(timeout_s=0.5) is None


def test_remote_bind_requires_curve(keys: Path, zmq_context: zmq.Context) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match="loopback"):
        FramePuller("tcp://0.0.0.0:0", context=zmq_context)
    with pytest.raises(ConfigError, match="CURVE"):
        FramePuller("tcp://0.0.0.0:0", context=zmq_context, allow_remote=True)
    with pytest.raises(ConfigError, match="CURVE"):
        EventPublisher("tcp://0.0.0.0:0", context=zmq_context, allow_remote=True)
    server = curve_server(keys / "worker.secret", [keys])  # a folder of *.public
    assert len(server.allowed_clients) == 3
    puller = FramePuller("tcp://0.0.0.0:0", context=zmq_context, allow_remote=True, curve=server)
    try:
        assert puller.endpoint.startswith("tcp://0.0.0.0:")
    finally:
        puller.close()


def test_worker_cli_refuses_remote_without_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "worker",
            "--db",
            str(tmp_path / "w.db"),
            "--allow-remote",
            "--frames-endpoint",
            "tcp://0.0.0.0:0",
            "--events",
            "tcp://127.0.0.1:0",
        ]
    )
    assert code == 1
    assert "CURVE" in capsys.readouterr().err


def test_bad_key_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.public"
    bad.write_text("not a key\n")
    with pytest.raises(ConfigError, match="40 Z85"):
        read_key(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_key(tmp_path / "missing.public")


def test_no_pickle_anywhere_in_the_package() -> None:
    """Nothing that crosses a socket or a file is unpickled; torch weights only with
    weights_only=True."""
    package = Path(__file__).resolve().parents[1] / "livetrack"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for banned in ("import pickle", "pickle.load", "recv_pyobj", "recv_serialized"):
            assert banned not in text, f"{path}: {banned}"
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_worker_and_driver_processes_talk_over_curve(keys: Path, tmp_path: Path) -> None:
    """Frames (PUSH/PULL) and acknowledgements (PUB/SUB) both go through CURVE."""
    import subprocess
    import sys

    from livetrack.store import Store
    from tests.test_faults import REPO, endpoints

    frames_ep, events_ep = endpoints()
    db = tmp_path / "c.db"
    lt = [sys.executable, "-m", "livetrack.cli"]
    worker = subprocess.Popen(
        [
            *lt,
            "-q",
            "worker",
            "--db",
            str(db),
            "--frames-endpoint",
            frames_ep,
            "--events",
            events_ep,
            "--exit-on-eos",
            "--curve-secret",
            str(keys / "worker.secret"),
            "--curve-clients",
            str(keys / "scope.public"),
        ],
        cwd=REPO,
    )
    try:
        sim = subprocess.run(
            [
                *lt,
                "-q",
                "sim",
                "--frames",
                "6",
                "--size",
                "64",
                "64",
                "--cells",
                "4",
                "--track-only",
                "--run-id",
                "c",
                "--connect",
                frames_ep,
                "--acks",
                events_ep,
                "--curve-secret",
                str(keys / "scope.secret"),
                "--curve-server",
                str(keys / "worker.public"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sim.returncode == 0, sim.stderr[-2000:]
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    with Store(db, readonly=True) as store:
        assert store.frame_indices("c", "sim") == list(range(6))
        assert store.runs()[0]["status"] == "finished"


def test_world_readable_secret_key_is_named_with_the_fix(
    keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = keys / "worker.secret"
    with caplog.at_level("WARNING", logger="livetrack"):
        curve_server(secret, [keys / "scope.public"])
    assert not [r for r in caplog.records if "readable by other users" in r.message]
    secret.chmod(0o644)
    (keys / "scope.secret").chmod(0o640)
    with caplog.at_level("WARNING", logger="livetrack"):
        curve_server(secret, [keys / "scope.public"])
        curve_client(keys / "scope.secret", keys / "worker.public")
    warned = [r.getMessage() for r in caplog.records if "readable by other users" in r.message]
    assert len(warned) == 2
    assert f"chmod 600 {secret}" in warned[0]
    assert f"chmod 600 {keys / 'scope.secret'}" in warned[1]


def test_client_with_an_unlisted_key_is_told_the_worker_does_not_answer(
    keys: Path,
    zmq_context: zmq.Context,  # type: ignore[type-arg]
    closing,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import livetrack.transport.sockets as transport

    monkeypatch.setattr(transport, "CURVE_SILENCE_S", 0.5)
    server = curve_server(keys / "worker.secret", [keys / "scope.public"])
    puller = closing(FramePuller("tcp://127.0.0.1:0", context=zmq_context, curve=server))
    intruder = closing(
        FramePusher(
            puller.endpoint,
            context=zmq_context,
            linger_s=0,
            send_timeout_s=3,
            curve=curve_client(keys / "intruder.secret", keys / "worker.public"),
        )
    )
    with caplog.at_level("WARNING", logger="livetrack"), pytest.raises(SendTimeout):
        intruder.send_frame(header(0), np.zeros((8, 8), np.uint16))
    said = [r.getMessage() for r in caplog.records if r.name == "livetrack.transport"]
    client_side = [m for m in said if "no answer from the worker" in m]
    assert len(client_side) == 1  # once, not every poll
    assert "does not accept this client's CURVE key" in client_side[0]
    assert read_key(keys / "intruder.public").decode() in client_side[0]


class _RunsCode:
    """Unpickling this would create the marker file: what a malicious weights.pt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("stage", ["segment", "track"])
@pytest.mark.parametrize("content", ["code", "empty", "garbage", "not-a-state-dict"])
def test_bad_weights_file_ends_run_with_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str, content: str
) -> None:
    """A weights.pt that would run code (or is empty, garbage, or not a state dict) used to
    end `run` with torch's UnpicklingError/EOFError traceback."""
    import shutil

    import torch

    from livetrack.segment.learned import SHIPPED_MODEL
    from livetrack.track.lstm import DEFAULT_MODEL as SHIPPED_TRACK_MODEL

    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL if stage == "segment" else SHIPPED_TRACK_MODEL, model)
    weights = model / "weights.pt"
    marker = tmp_path / "pwned"
    if content == "code":
        torch.save({"w": _RunsCode(marker)}, weights)
    elif content == "empty":
        weights.write_bytes(b"")
    elif content == "garbage":
        weights.write_bytes(bytes(range(256)) * 4)
    else:
        torch.save([torch.zeros(2)], weights)
    method = "learned" if stage == "segment" else "lstm"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[{stage}]\nmethod = "{method}"\nmodel_dir = "{model}"\n')
    code = main(
        [
            *("-q", "run", "--no-tui", "--frames", "2", "--size", "64", "64", "--cells", "2"),
            *("--config", str(cfg), "--db", str(tmp_path / "m.db")),
            *("--events", "tcp://127.0.0.1:0"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    what = "segmentation" if stage == "segment" else "tracking"
    assert lines[0].startswith(f"livetrack run: error: cannot load {what} model from {model}: ")
    assert "weights.pt" in lines[0]
    if content == "code":
        assert "weights.pt is not a plain file of tensors; refused to load it" in lines[0]
    assert "weights_only` set to `False`" not in err  # torch's advice, the one not to follow
    assert not marker.exists()
