"""Stream a live Micro-Manager acquisition (through pycromanager) as a FrameSource.

Two ways to reach the microscope, behind one class:

- ``backend="python"``: a headless Micro-Manager core in this process (pymmcore, through
  ``pycromanager.start_headless(..., python_backend=True)``) loading a hardware
  configuration file from a Micro-Manager install folder. Needs no Java. With the
  ``mm-test-adapters`` package the install folder is the package's adapter folder and the
  config ``MMConfig_demo.cfg`` gives Micro-Manager's simulated DemoCamera.
- ``backend="java"``: attach to a running Micro-Manager Studio (Tools › Options ›
  "Run server on port 4827") and acquire with its Java acquisition engine.

The acquisition is a time-lapse over one or more XY positions, one or more channels and
either the current focus, one z-plane, or a max projection over several z-planes. Each
2-D frame goes to the worker with its position name, time-point index, acquisition time,
channel name and the core's pixel size.

Backpressure (why the queue and the policy exist): ``pump`` blocks while the worker is
busy, and the acquisition engine calls our image callback on its own thread. Frames pass
from that callback to ``frames()`` through a *bounded* queue of ``queue_size`` frames, and
the next time point is submitted to the engine only after every image of the current one
has reached that queue — so the engine never holds more than one time point of images.
When the queue is full, ``policy`` decides:

- ``"block"`` (default): the callback waits, so the camera waits. No frame is lost; the
  time-lapse drifts late (logged, with the total time spent waiting).
- ``"drop-oldest"`` / ``"drop-newest"``: the acquisition keeps its timing; the oldest
  queued frame or the incoming one is discarded. Every discarded frame is logged and
  recorded in ``dropped`` and in ``summary()``; the worker sees a gap in that position's
  frame indices and tracks across it.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from livetrack.errors import ConfigError, HardwareTimeout, SourceError, SourceUnavailable
from livetrack.source import FrameMeta

log = logging.getLogger("livetrack.drivers.micromanager")

Backend = Literal["python", "java"]
Policy = Literal["block", "drop-oldest", "drop-newest"]
POLICIES: tuple[Policy, ...] = ("block", "drop-oldest", "drop-newest")
JAVA_PORT = 4827
"""Micro-Manager Studio's default ZeroMQ server port."""
DEMO_CONFIG = "MMConfig_demo.cfg"
HARDWARE_TIMEOUT_S = 30.0
"""Default bound on every wait on the hardware: the next image (beyond the exposure and
the time-lapse interval), and the core's wait for a busy device."""

_Frame = tuple[np.ndarray, FrameMeta]


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class StagePosition:
    """One field of view. ``x_um``/``y_um`` None: image wherever the stage is."""

    name: str
    x_um: float | None = None
    y_um: float | None = None
    z_um: float | None = None


@dataclass(frozen=True)
class AcquisitionPlan:
    """What to acquire. Empty ``positions`` means the Studio position list (Java) or the
    current stage position as ``Pos0``. ``z_um``: empty = leave focus alone, one value =
    that plane, several = max projection over them (the worker tracks 2-D frames)."""

    n_frames: int | None = None
    """Time points; None = until stopped."""
    interval_s: float = 0.0
    """Minimum time between time points (0 = as fast as possible)."""
    positions: tuple[StagePosition, ...] = ()
    channel_group: str | None = None
    channels: tuple[str, ...] = ()
    exposure_ms: float | None = None
    z_um: tuple[float, ...] = ()
    properties: tuple[tuple[str, str, str], ...] = ()
    """(device, property, value) set on the core before acquiring, e.g.
    ("Camera", "Mode", "Fluorescent Beads") on the DemoCamera."""

    def __post_init__(self) -> None:
        if self.n_frames is not None and self.n_frames < 1:
            raise ConfigError(f"n_frames must be ≥ 1 (or None for open-ended), got {self.n_frames}")
        if self.interval_s < 0:
            raise ConfigError(f"interval_s must be ≥ 0, got {self.interval_s}")
        if self.channels and not self.channel_group:
            raise ConfigError("channels need a channel_group (the Micro-Manager config group)")
        names = [p.name for p in self.positions]
        if len(set(names)) != len(names):
            raise ConfigError(f"position names must be unique, got {names}")
        if len(set(self.channels)) != len(self.channels):
            raise ConfigError(f"channels must be unique, got {list(self.channels)}")


def parse_position(text: str, index: int) -> StagePosition:
    """``X,Y`` / ``X,Y,Z`` / ``NAME=X,Y[,Z]`` (µm) → StagePosition; default name PosN."""
    name, _, coords = text.rpartition("=")
    parts = coords.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise ConfigError(f"position {text!r}: expected [NAME=]X,Y[,Z] in µm") from None
    if len(values) not in (2, 3):
        raise ConfigError(f"position {text!r}: expected [NAME=]X,Y[,Z] in µm")
    z = values[2] if len(values) == 3 else None
    return StagePosition(name or f"Pos{index}", values[0], values[1], z)


def parse_property(text: str) -> tuple[str, str, str]:
    """``DEVICE:PROPERTY=VALUE`` → (device, property, value)."""
    head, eq, value = text.partition("=")
    device, colon, prop = head.partition(":")
    if not (eq and colon and device and prop):
        raise ConfigError(f"property {text!r}: expected DEVICE:PROPERTY=VALUE")
    return device, prop, value


# ------------------------------------------------------------ bounded queue
class FrameQueue:
    """A bounded hand-over between the acquisition thread and ``frames()`` that applies
    the overflow policy. Thread-safe; ``put`` returns the discarded frame, if any."""

    def __init__(self, maxsize: int, policy: Policy) -> None:
        if maxsize < 1:
            raise ConfigError(f"queue size must be ≥ 1, got {maxsize}")
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self._items: deque[_Frame] = deque()
        self._cond = threading.Condition()
        self.blocked_s = 0.0
        """Total time producers spent waiting for room (``block`` policy)."""
        self.waiting = False
        """A producer is waiting for room right now."""

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: _Frame, cancelled: Callable[[], bool]) -> _Frame | None:
        """Enqueue ``item``. Returns the frame discarded to make room (drop policies),
        ``item`` itself when ``cancelled()`` turned true while blocked, else None."""
        with self._cond:
            if len(self._items) < self.maxsize:
                self._items.append(item)
                self._cond.notify_all()
                return None
            if self.policy == "drop-newest":
                return item
            if self.policy == "drop-oldest":
                dropped = self._items.popleft()
                self._items.append(item)
                self._cond.notify_all()
                return dropped
            started = time.monotonic()
            self.waiting = True
            try:
                while len(self._items) >= self.maxsize:
                    if cancelled():
                        return item
                    self._cond.wait(0.05)
            finally:
                self.waiting = False
                self.blocked_s += time.monotonic() - started
            self._items.append(item)
            self._cond.notify_all()
            return None

    def get(self, timeout_s: float) -> _Frame | None:
        """The oldest frame, or None when none arrived within ``timeout_s``."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item


# ------------------------------------------------------------ connection
_headless_lock = threading.Lock()
_headless_started: tuple[str, str] | None = None


def demo_adapter_path() -> Path:
    """The DemoCamera adapters of the ``mm-test-adapters`` package (headless default)."""
    try:
        import mm_test_adapters
    except ImportError:
        raise ConfigError(
            "no --mm-app-path given and mm-test-adapters is not installed; "
            'pip install "livetrack[micromanager]" or point to a Micro-Manager install'
        ) from None
    return Path(mm_test_adapters.device_adapter_path())


def config_path(mm_app_path: Path, config_file: str) -> Path:
    """Where the core will look for ``config_file``: as given when absolute, else inside
    the install folder (pycromanager's rule)."""
    path = Path(config_file)
    return path if path.is_absolute() else Path(mm_app_path) / path


def check_install(mm_app_path: Path, config_file: str) -> None:
    """The install folder and its hardware configuration file exist (checked before
    anything starts, so a typo is one clear error instead of a failed run)."""
    if not Path(mm_app_path).is_dir():
        raise SourceUnavailable(
            f"Micro-Manager folder {mm_app_path} does not exist (--mm-app-path: the "
            "folder of a Micro-Manager install, with its device adapters)"
        )
    cfg = config_path(mm_app_path, config_file)
    if not cfg.is_file():
        found = sorted(p.name for p in Path(mm_app_path).glob("*.cfg"))
        there = f"; configs there: {', '.join(found)}" if found else ""
        raise SourceUnavailable(
            f"Micro-Manager config {config_file} not found (looked for {cfg}; a relative "
            f"--mm-config is read from the --mm-app-path folder{there})"
        )


def ensure_headless(mm_app_path: Path, config_file: str) -> None:
    """Start this process's headless Python-backend core once. pycromanager supports one
    per process (a second start after ``stop_headless`` hangs), so it is never stopped
    here; asking for a different install or config later is an error."""
    global _headless_started
    key = (str(mm_app_path), config_file)
    with _headless_lock:
        if _headless_started is not None:
            if _headless_started != key:
                raise SourceError(
                    f"this process already runs a Micro-Manager core from {_headless_started}; "
                    "one headless core per process — start a new process for another config"
                )
            return
        check_install(mm_app_path, config_file)
        from pycromanager import start_headless

        log.info("starting headless Micro-Manager core: %s, config %s", mm_app_path, config_file)
        try:
            start_headless(str(mm_app_path), config_file, python_backend=True)
        except Exception as err:  # pycromanager/pymmcore raise bare Exception/RuntimeError
            raise SourceUnavailable(
                f"cannot start Micro-Manager from {mm_app_path} with {config_file}: {err}"
            ) from err
        _headless_started = key


def check_java_server(port: int, timeout_s: float = 1.0) -> None:
    """Fail fast with a useful message when no Micro-Manager Studio listens on ``port``
    (pyjavaz would otherwise time out with a generic error from a background thread)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            pass
    except OSError as err:
        raise SourceUnavailable(
            f"no Micro-Manager Studio is listening on port {port} ({err.strerror or err}); "
            "start Micro-Manager and enable Tools › Options › 'Run server on port 4827'"
        ) from None


def _strings(values: Any) -> list[str]:
    """A core's list of names as Python strings (a tuple from pymmcore, a StrVector with
    ``size()``/``get(i)`` from the Java core)."""
    if hasattr(values, "size") and hasattr(values, "get"):
        return [str(values.get(i)) for i in range(int(values.size()))]
    return [str(v) for v in values]


# ------------------------------------------------------------------ source
@dataclass
class _Stream:
    """One (position, channel) series as the worker sees it."""

    name: str
    channel: str


@dataclass
class _Stats:
    delivered: int = 0
    dropped: list[tuple[str, int]] = field(default_factory=list)
    discarded_at_stop: int = 0


class MicroManagerSource:
    """A FrameSource running a pycromanager acquisition; see the module docstring for the
    two backends and the overflow policy. The core is connected in ``frames()``, so
    constructing one checks arguments only."""

    def __init__(
        self,
        plan: AcquisitionPlan,
        *,
        backend: Backend = "python",
        mm_app_path: Path | None = None,
        config_file: str | None = None,
        port: int = JAVA_PORT,
        queue_size: int = 8,
        policy: Policy = "block",
        save_dir: Path | None = None,
        connect_timeout_s: float = 2.0,
        hardware_timeout_s: float = HARDWARE_TIMEOUT_S,
    ) -> None:
        if backend not in ("python", "java"):
            raise ConfigError(f"backend must be 'python' or 'java', got {backend!r}")
        if backend == "java" and (mm_app_path is not None or config_file is not None):
            raise ConfigError(
                "the Java backend attaches to a running Micro-Manager, which has its own "
                "install and configuration; do not pass mm_app_path/config_file"
            )
        if not 0 < port < 65536:
            raise ConfigError(f"port must be 1..65535, got {port}")
        if not hardware_timeout_s > 0:
            raise ConfigError(f"hardware timeout must be > 0 s, got {hardware_timeout_s}")
        if backend == "python" and (mm_app_path is not None or config_file is not None):
            check_install(mm_app_path or demo_adapter_path(), config_file or DEMO_CONFIG)
        self.plan = plan
        self.backend = backend
        self.mm_app_path = mm_app_path
        self.config_file = config_file
        self.port = port
        self.save_dir = save_dir
        self.connect_timeout_s = connect_timeout_s
        self.hardware_timeout_s = hardware_timeout_s
        self._queue = FrameQueue(queue_size, policy)
        self._stats = _Stats()
        self._closing = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._acq: Any = None
        self._runner: threading.Thread | None = None
        self._positions: tuple[StagePosition, ...] = plan.positions
        self._pixel_size_um: float | None = None
        self._clock: tuple[float, float] | None = None
        self._z_stack: dict[tuple[str, str], list[np.ndarray]] = {}
        self._pending: dict[int, int] = {}
        self._channel_names: tuple[str, ...] = tuple(plan.channels) or ("default",)
        self._started_at = 0.0
        self._current_t = 0
        """The time point the engine is acquiring (for the hardware watchdog)."""
        self._last_image_at = 0.0
        """monotonic() when the engine last handed over an image."""
        self._exposure_s = 0.0

    # -- FrameSource -----------------------------------------------------------
    @property
    def n_positions(self) -> int:
        """Series the worker tracks separately: positions × channels (≥ 1 each)."""
        return max(len(self._positions), 1) * max(len(self.plan.channels), 1)

    @property
    def total_frames(self) -> int | None:
        if self.plan.n_frames is None:
            return None
        return self.plan.n_frames * self.n_positions

    @property
    def delivered(self) -> int:
        """Frames handed to the consumer so far."""
        return self._stats.delivered

    @property
    def dropped(self) -> list[tuple[str, int]]:
        """(stream, frame index) of every frame discarded by a drop policy."""
        return list(self._stats.dropped)

    @property
    def stalled(self) -> bool:
        """The acquisition is paused right now, waiting for the worker (policy block)."""
        return self._queue.waiting

    @property
    def finished(self) -> bool:
        """The acquisition engine has completed or been aborted and wound down."""
        return self._finished.is_set() and (self._runner is None or not self._runner.is_alive())

    @property
    def queued(self) -> int:
        """Frames acquired and waiting to be sent."""
        return len(self._queue)

    @property
    def pixel_size_um(self) -> float | None:
        """The core's pixel size, known once ``frames()`` connected (None if uncalibrated)."""
        return self._pixel_size_um

    def describe(self) -> str:
        p = self.plan
        app = self.mm_app_path or "mm-test-adapters"
        cfg = self.config_file or DEMO_CONFIG
        where = f"port {self.port}" if self.backend == "java" else f"{app} config {cfg}"
        z = "current z" if not p.z_um else ("z " + ",".join(f"{v:g}" for v in p.z_um))
        if len(p.z_um) > 1:
            z += " max-projected"
        return (
            f"micromanager {self.backend} ({where}) frames={p.n_frames or 'open-ended'} "
            f"interval={p.interval_s:g}s positions={len(self._positions) or 'from MM'} "
            f"channels={','.join(p.channels) or 'current'} {z} policy={self._queue.policy}"
        )

    def summary(self) -> str:
        """One line on what was delivered, dropped or waited for (also logged on close)."""
        s = self._stats
        text = f"{s.delivered} frames delivered, {len(s.dropped)} dropped ({self._queue.policy})"
        if self._queue.blocked_s > 0:
            text += f", acquisition paused {self._queue.blocked_s:.1f} s waiting for the worker"
        if s.discarded_at_stop:
            text += f", {s.discarded_at_stop} discarded at stop"
        return text

    def frames(self) -> Iterator[tuple[np.ndarray, FrameMeta]]:
        core = self._connect()
        self._prepare(core)
        self._start_acquisition()
        try:
            idle_since = time.monotonic()
            while True:
                item = self._queue.get(0.1)
                if item is not None:
                    self._stats.delivered += 1
                    yield item
                    idle_since = time.monotonic()
                    continue
                if self._finished.is_set() and len(self._queue) == 0:
                    break
                if self._closing.is_set():
                    return
                self._check_hardware(idle_since)
            if self._error is not None and not self._closing.is_set():
                raise SourceError(f"Micro-Manager acquisition failed: {self._error}")
        finally:
            self.close()

    def close(self) -> None:
        """Abort a running acquisition and wait for the engine to wind down. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        acq = self._acq
        if acq is not None and not self._finished.is_set():
            log.info("aborting Micro-Manager acquisition")
            acq.abort()
            acq.mark_finished()  # await_completion() hangs after abort() without it
        if self._runner is not None:
            self._runner.join(timeout=30)
            if self._runner.is_alive():
                log.error("Micro-Manager acquisition did not shut down within 30 s")
        log.info("micromanager: %s", self.summary())
        if self._stats.dropped:
            log.warning("dropped frames (stream, index): %s", self._stats.dropped)

    def _check_hardware(self, idle_since: float) -> None:
        """The hardware watchdog: raise when no image arrived for ``hardware_timeout_s``
        beyond what the plan explains (the exposure, and the wait for the next time
        point's start). The acquisition engine itself never gives up: a device that
        stops answering, or a channel change it retries and abandons, would otherwise
        leave the run waiting forever."""
        due = self._started_at + self._current_t * self.plan.interval_s
        waiting_since = max(idle_since, self._last_image_at, due)
        late = time.monotonic() - waiting_since - self._exposure_s
        if late > self.hardware_timeout_s:
            raise HardwareTimeout(
                f"no image from Micro-Manager for {late + self._exposure_s:.0f} s (time point "
                f"{self._current_t}; hardware timeout {self.hardware_timeout_s:g} s, "
                "--hardware-timeout): the camera or a device stopped answering, see the log"
            )

    # -- connection and setup --------------------------------------------------
    def _connect(self) -> Any:
        if self.backend == "java":
            check_java_server(self.port, self.connect_timeout_s)
            from mmpycorex.core import ZMQRemoteMMCoreJ

            try:
                return ZMQRemoteMMCoreJ(port=self.port, timeout=int(self.connect_timeout_s * 1000))
            except Exception as err:  # pyjavaz raises bare Exception
                raise SourceUnavailable(
                    f"cannot attach to Micro-Manager on port {self.port}: {err}"
                ) from err
        app = self.mm_app_path or demo_adapter_path()
        ensure_headless(app, self.config_file or DEMO_CONFIG)
        from pycromanager import Core

        return Core()

    def _prepare(self, core: Any) -> None:
        p = self.plan
        try:
            for device, prop, value in p.properties:
                core.set_property(device, prop, value)
            if p.exposure_ms is not None:
                core.set_exposure(float(p.exposure_ms))
            size = float(core.get_pixel_size_um())
            self._exposure_s = float(core.get_exposure()) / 1000.0
            # The core's own bound on waits for a busy device (default 5 s).
            core.set_timeout_ms(int(self.hardware_timeout_s * 1000))
        except Exception as err:  # the core raises RuntimeError / Java exceptions
            raise SourceUnavailable(f"Micro-Manager rejected the settings: {err}") from err
        self._pixel_size_um = size if size > 0 else None
        if self._pixel_size_um is None:
            log.warning("no pixel size calibrated in Micro-Manager; lengths will be in pixels")
        if not self._positions:
            self._positions = self._studio_positions() or (StagePosition("Pos0"),)
        if len(self._positions) > 1 and any(s.x_um is None for s in self._positions):
            raise ConfigError("with several positions every one needs stage coordinates")
        self._check_against_core(core)
        if p.channels:
            self._channel_names = tuple(p.channels)
        else:
            self._channel_names = (self._current_channel(core),)
        log.info("acquiring %s (pixel size %s µm)", self.describe(), self._pixel_size_um)

    def _check_against_core(self, core: Any) -> None:
        """Refuse a plan the hardware cannot carry out before acquiring: the acquisition
        engine would otherwise retry the impossible channel change and wait forever."""
        p = self.plan
        try:
            if p.channels:
                groups = _strings(core.get_available_config_groups())
                group = p.channel_group or ""
                if group not in groups:
                    raise SourceUnavailable(
                        f"Micro-Manager has no config group {group!r} (--channel-group); "
                        f"its groups: {', '.join(groups) or 'none'}"
                    )
                presets = _strings(core.get_available_configs(group))
                missing = [c for c in p.channels if c not in presets]
                if missing:
                    raise SourceUnavailable(
                        f"config group {group!r} has no channel "
                        f"{', '.join(repr(c) for c in missing)} (--channel); "
                        f"its channels: {', '.join(presets) or 'none'}"
                    )
            uses_xy = any(pos.x_um is not None for pos in self._positions)
            if uses_xy and not str(core.get_xy_stage_device()):
                raise SourceUnavailable(
                    "stage positions given (--positions) but Micro-Manager has no XY "
                    "stage (Core-XYStage is empty)"
                )
            uses_z = p.z_um or any(pos.z_um is not None for pos in self._positions)
            if uses_z and not str(core.get_focus_device()):
                raise SourceUnavailable(
                    "focus positions given (--z or a position's Z) but Micro-Manager has no "
                    "focus device (Core-Focus is empty)"
                )
        except SourceUnavailable:
            raise
        except Exception as err:  # the core raises RuntimeError / Java exceptions
            raise SourceUnavailable(f"cannot check the plan against Micro-Manager: {err}") from err

    def _current_channel(self, core: Any) -> str:
        """The active preset of the core's channel group, else 'default'."""
        try:
            group = core.get_channel_group()
            name = core.get_current_config(group) if group else ""
        except Exception:  # a core without a channel group
            log.debug("no channel group on this core", exc_info=True)
            return "default"
        return str(name) or "default"

    def _studio_positions(self) -> tuple[StagePosition, ...]:
        """The Studio's stage position list (Java backend only; untested without Java)."""
        if self.backend != "java":
            return ()
        from pycromanager import Studio

        try:
            plist = Studio(port=self.port).positions().get_position_list()
            out = []
            for i in range(plist.get_number_of_positions()):
                mp = plist.get_position(i)
                out.append(StagePosition(str(mp.get_label()), mp.get_x(), mp.get_y()))
        except Exception as err:  # Java-side errors come back as bare Exception
            raise SourceError(f"cannot read the Micro-Manager position list: {err}") from err
        return tuple(out)

    # -- acquisition -----------------------------------------------------------
    def _stream_of(self, position: str, channel: str) -> str:
        return f"{position}-{channel}" if len(self.plan.channels) > 1 else position

    def _events(self, t: int) -> list[dict[str, Any]]:
        """All events of time point ``t``: positions × channels × z-planes."""
        p = self.plan
        events: list[dict[str, Any]] = []
        zs: Sequence[float | None] = p.z_um or (None,)
        for pos, ch, (zi, z) in itertools.product(
            self._positions, p.channels or (None,), enumerate(zs)
        ):
            axes: dict[str, Any] = {"time": t, "position": pos.name}
            event: dict[str, Any] = {"axes": axes}
            if p.interval_s > 0:
                event["min_start_time"] = t * p.interval_s
            if pos.x_um is not None:
                event["x"], event["y"] = float(pos.x_um), float(pos.y_um or 0.0)
            if ch is not None:
                axes["channel"] = ch
                event["config_group"] = [p.channel_group, ch]
            if z is not None:
                axes["z"] = zi
                event["z"] = float(z) + (pos.z_um or 0.0)
            events.append(event)
        return events

    def _start_acquisition(self) -> None:
        images_per_t = len(self._events(0))
        self._pending = {0: images_per_t}
        self._started_at = self._last_image_at = time.monotonic()
        kwargs: dict[str, Any] = {"image_process_fn": self._on_image}
        if self.save_dir is not None:
            kwargs.update(directory=str(self.save_dir.parent), name=self.save_dir.name)
        try:
            if self.backend == "java":
                from pycromanager import JavaBackendAcquisition

                self._acq = JavaBackendAcquisition(show_display=False, port=self.port, **kwargs)
            else:
                from pycromanager import Acquisition

                self._acq = Acquisition(**kwargs)
            self._acq.acquire(self._events(0))
        except Exception as err:  # pycromanager raises bare Exception
            raise SourceUnavailable(f"cannot start the Micro-Manager acquisition: {err}") from err
        self._runner = threading.Thread(
            target=self._await, name="livetrack-mm-acquisition", daemon=True
        )
        self._runner.start()

    def _await(self) -> None:
        try:
            self._acq.await_completion()
        except Exception as err:  # re-raised as SourceError by frames()
            log.error("acquisition ended with an error: %s", err)
            self._error = err
        finally:
            self._finished.set()

    def _on_image(self, image: np.ndarray, metadata: dict[str, Any], event_queue: Any) -> Any:
        """pycromanager's image callback (engine thread). The 3-argument form is what
        paces the acquisition: the next time point is queued only after the last image
        of this one was handed over."""
        axes = metadata.get("Axes", {})
        t = int(axes.get("time", 0))
        position = str(axes.get("position", self._positions[0].name))
        channel = str(axes.get("channel", self._channel_names[0]))
        plane = self._project(position, channel, np.asarray(image))
        if plane is not None:
            self._hand_over(plane, metadata, t, position, channel)
        self._last_image_at = time.monotonic()
        self._pending[t] -= 1
        if self._pending[t] == 0 and not self._closing.is_set():
            del self._pending[t]
            if self.plan.n_frames is None or t + 1 < self.plan.n_frames:
                self._current_t = t + 1
                self._pending[t + 1] = len(self._events(t + 1))
                event_queue.put(self._events(t + 1))
            else:
                event_queue.put(None)  # the plan is complete: let the engine finish
        return (image, metadata) if self.save_dir is not None else None

    def _project(self, position: str, channel: str, image: np.ndarray) -> np.ndarray | None:
        """Max projection over the plan's z-planes; the frame once all arrived."""
        if len(self.plan.z_um) <= 1:
            return image
        stack = self._z_stack.setdefault((position, channel), [])
        stack.append(image)
        if len(stack) < len(self.plan.z_um):
            return None
        del self._z_stack[(position, channel)]
        return np.max(np.stack(stack), axis=0)

    def _timestamp(self, metadata: dict[str, Any]) -> float:
        """Wall-clock time from the engine's elapsed-time tag, anchored at the first image."""
        elapsed = metadata.get("ElapsedTime-ms")
        if elapsed is None:
            return time.time()
        if self._clock is None:
            self._clock = (time.time(), float(elapsed))
        wall0, elapsed0 = self._clock
        return wall0 + (float(elapsed) - elapsed0) / 1000.0

    def _hand_over(
        self, plane: np.ndarray, metadata: dict[str, Any], t: int, position: str, channel: str
    ) -> None:
        meta = FrameMeta(
            position=self._stream_of(position, channel),
            frame_index=t,
            timestamp=self._timestamp(metadata),
            pixel_size_um=self._pixel_size_um,
            channel=channel,
        )
        waited = self._queue.blocked_s
        discarded = self._queue.put((plane, meta), self._closing.is_set)
        if self._queue.blocked_s > waited and waited == 0:
            log.warning("worker is slower than the camera: pausing the acquisition (policy block)")
        if discarded is None:
            return
        if self._closing.is_set():
            self._stats.discarded_at_stop += 1
            return
        lost = discarded[1]
        self._stats.dropped.append((lost.position, lost.frame_index))
        log.warning(
            "queue full: dropped %s frame %d (policy %s, %d dropped so far)",
            lost.position,
            lost.frame_index,
            self._queue.policy,
            len(self._stats.dropped),
        )
