"""Endpoint policy: where livetrack may listen and connect (the default endpoints are in
``livetrack.config``, a leaf).

Sockets stay on loopback unless the user asked for more (``--allow-remote``), and a worker
binds beyond loopback only with CURVE. Pure string checks: this module opens no socket.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from livetrack.errors import ConfigError

if TYPE_CHECKING:
    from livetrack.transport.keys import CurveServer


def check_endpoint(
    endpoint: str, *, allow_remote: bool = False, curve: CurveServer | None = None
) -> str:
    """Refuse to bind/connect beyond loopback unless the user asked for it explicitly.

    ``ipc://`` and ``inproc://`` are always local. A ``tcp://`` host must be a loopback
    address or ``localhost`` unless ``allow_remote`` is set. Binding a server socket
    (``curve`` is then what it was given) beyond loopback also requires CURVE.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise ConfigError(f"endpoint {endpoint!r} must start with tcp://, ipc:// or inproc://")
    host_port = endpoint[len("tcp://") :]
    host, sep, port = host_port.rpartition(":")
    if not sep or not (port == "*" or port.isdigit()):
        raise ConfigError(f"endpoint {endpoint!r} needs a port, e.g. tcp://127.0.0.1:5557")
    host = host.strip("[]")
    if host == "localhost":
        return endpoint
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return endpoint
    if not allow_remote:
        raise ConfigError(
            f"endpoint {endpoint!r} is not on the loopback interface; livetrack only listens on "
            "127.0.0.1 unless you pass --allow-remote with CURVE keys (see livetrack keys)"
        )
    return endpoint


def check_server_endpoint(endpoint: str, allow_remote: bool, curve: CurveServer | None) -> None:
    """A server socket may bind beyond loopback only with --allow-remote AND CURVE."""
    check_endpoint(endpoint, allow_remote=allow_remote)
    if allow_remote and curve is None and not is_local(endpoint):
        raise ConfigError(
            f"refusing to bind {endpoint} beyond loopback without encryption: give the "
            "worker CURVE keys (--curve-secret and --curve-clients; create them with "
            "livetrack keys)"
        )


def is_local(endpoint: str) -> bool:
    try:
        check_endpoint(endpoint, allow_remote=False)
    except ConfigError:
        return False
    return True
