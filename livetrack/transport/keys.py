"""CURVE keys: key files (``livetrack keys``), the worker's allowed-clients check (ZAP),
and the socket options that switch a socket to CURVE.

A non-loopback bind requires CURVE (see ``endpoints``); the keys are Z85 text files
readable by their owner only, so a key on disk never needs a second format.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from livetrack.errors import ConfigError

log = logging.getLogger("livetrack.transport")


@dataclass(frozen=True)
class CurveServer:
    """CURVE for a binding socket (the worker): its secret key and the public keys of
    the clients allowed in (all Z85 text, 40 characters)."""

    secret_key: bytes
    allowed_clients: frozenset[bytes]

    @property
    def public_key(self) -> bytes:
        return zmq.curve_public(self.secret_key)


@dataclass(frozen=True)
class CurveClient:
    """CURVE for a connecting socket (driver, dashboard): its own secret key and the
    public key of the worker it talks to."""

    secret_key: bytes
    server_key: bytes

    @property
    def public_key(self) -> bytes:
        return zmq.curve_public(self.secret_key)


def _check_z85_key(key: bytes, where: str) -> bytes:
    key = key.strip()
    if len(key) != 40:
        raise ConfigError(f"{where}: a CURVE key is 40 Z85 characters, got {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError):
        raise ConfigError(f"{where}: not a Z85-encoded CURVE key") from None
    return key


def read_key(path: Path) -> bytes:
    """Read a key file written by ``write_keypair`` (``NAME.public`` or ``NAME.secret``)."""
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read key file {path}: {err.strerror}") from None
    return _check_z85_key(text, str(path))


def write_keypair(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Generate a CURVE keypair: ``NAME.public`` and ``NAME.secret`` in ``out_dir``, both
    created with mode 0600 (never overwritten). Give the worker its secret and the
    clients' ``.public`` files; give each client its secret and the worker's ``.public``."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    out_dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    paths = (out_dir / f"{name}.public", out_dir / f"{name}.secret")
    for path, key in zip(paths, (public, secret), strict=True):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} exists; not overwriting a key") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
    return paths


def read_secret_key(path: Path) -> bytes:
    """Read a secret key file; warn (naming the file and the fix) when users other than
    its owner may read it — anyone who can read it can impersonate this side."""
    key = read_key(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        return key
    if mode & 0o077:
        log.warning(
            "secret key %s is readable by other users (mode %o); anyone who can read it can "
            "impersonate this side: run chmod 600 %s",
            path,
            mode & 0o777,
            path,
        )
    return key


def curve_server(secret_file: Path, client_keys: Iterable[Path]) -> CurveServer:
    """Worker-side CURVE from key files; ``client_keys`` may name files or folders of
    ``*.public`` files."""
    allowed: set[bytes] = set()
    for p in client_keys:
        files = sorted(p.glob("*.public")) if p.is_dir() else [p]
        allowed.update(read_key(f) for f in files)
    if not allowed:
        raise ConfigError("CURVE needs at least one allowed client public key")
    return CurveServer(read_secret_key(secret_file), frozenset(allowed))


def curve_client(secret_file: Path, server_key_file: Path) -> CurveClient:
    return CurveClient(read_secret_key(secret_file), read_key(server_key_file))


class _KeyCheck:
    """ZAP credentials callback: is the client's public key in the allowed set?"""

    def __init__(self) -> None:
        self.allowed: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok:
            log.warning("refused a CURVE client with an unknown public key")
        return ok


_auth_lock = threading.Lock()
_authenticators: dict[int, tuple[Any, _KeyCheck, int]] = {}


def start_auth(ctx: zmq.Context[Any], curve: CurveServer) -> None:
    """One ZAP authenticator thread per context, shared by its server sockets."""
    from zmq.auth.thread import ThreadAuthenticator

    with _auth_lock:
        auth, check, users = _authenticators.get(id(ctx), (None, _KeyCheck(), 0))
        if auth is None:
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("livetrack.transport.zap"))
            auth.start()
            auth.configure_curve_callback(domain="livetrack", credentials_provider=check)
        check.allowed.update(curve.allowed_clients)
        _authenticators[id(ctx)] = (auth, check, users + 1)


def stop_auth(ctx: zmq.Context[Any]) -> None:
    with _auth_lock:
        entry = _authenticators.get(id(ctx))
        if entry is None:
            return
        auth, check, users = entry
        if users <= 1:
            auth.stop()
            del _authenticators[id(ctx)]
        else:
            _authenticators[id(ctx)] = (auth, check, users - 1)


def curve_as_server(sock: zmq.Socket[Any], ctx: zmq.Context[Any], curve: CurveServer) -> None:
    start_auth(ctx, curve)
    sock.setsockopt(zmq.ZAP_DOMAIN, b"livetrack")
    sock.curve_secretkey = curve.secret_key
    sock.curve_publickey = curve.public_key
    sock.curve_server = True


def curve_as_client(sock: zmq.Socket[Any], curve: CurveClient) -> None:
    sock.curve_secretkey = curve.secret_key
    sock.curve_publickey = curve.public_key
    sock.curve_serverkey = curve.server_key
