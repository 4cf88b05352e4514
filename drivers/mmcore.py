"""Stream a pymmcore-plus MDA (a useq-schema ``MDASequence``) as a FrameSource.

A ``CMMCorePlus`` in this process loads a Micro-Manager hardware configuration (default: the
DemoCamera demo config of the ``mm-test-adapters`` package) and runs the plan with
pymmcore-plus' own MDA engine: positions, grid tiles, channels, z-stacks and time plan as
written in the plan. Each image arrives through the runner's ``frameReady(img, event,
meta)`` signal on the MDA thread.

What the worker receives: one 2-D series per field of view (position, or position-gGRID
with a grid plan), of ONE channel — the ``segment_channel`` (default: the plan's first
channel). Images of the other channels are acquired as the plan says but not sent to the
worker; they are counted (``summary()``, ``skipped_images``) and, with ``save_to``, written
with every other image by pymmcore-plus' OME writer. A z-stack of the segmented channel is
max-projected into one frame (the worker tracks 2-D frames). ``frame_index`` is the time
index ``t`` of the plan, so a channel acquired every N time points has indices 0, N, 2N…

Backpressure: frames pass from the MDA thread to ``frames()`` through a queue of
``queue_size`` frames. When it is full the MDA is *paused* (``mda.set_paused(True)``, which
takes effect at the next event boundary: the current event's images still arrive, nothing
is dropped) and resumed once the consumer has drained it to half. Pausing, unlike blocking
the MDA thread, keeps the runner responsive to ``cancel()`` and shifts the plan's later
time points by the time spent paused (pymmcore-plus adds it to ``min_start_time``).
Hardware-sequenced bursts cannot be paused (pymmcore-plus only cancels them), so hardware
sequencing is off unless ``hardware_sequencing=True``; a burst then fills the queue beyond
``queue_size``.

A frame that never comes: when no event starts, no image arrives and the runner is not
waiting for a planned time point for ``frame_timeout_s`` while the MDA is not paused by us,
``frames()`` ends with a SourceError naming the event it was on, and cancels the MDA.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from livetrack.drivers.useq_plan import PlanShape, plan_shape

from livetrack.errors import ConfigError, SourceError
from livetrack.source import FrameMeta

if TYPE_CHECKING:
    import useq

log = logging.getLogger("livetrack.drivers.mmcore")

DEMO_CONFIG = "MMConfig_demo.cfg"
_MISSING = 'pymmcore-plus is not installed; pip install "livetrack[mmcore]" for --source mmcore'

_Frame = tuple[np.ndarray, FrameMeta]


def demo_config_paths() -> tuple[Path, Path]:
    """(adapter folder, demo config) of the ``mm-test-adapters`` package."""
    try:
        import mm_test_adapters
    except ImportError:
        raise ConfigError(
            "no --mm-app-path given and mm-test-adapters is not installed; "
            'pip install "livetrack[mmcore]" or point to a Micro-Manager install'
        ) from None
    folder = Path(mm_test_adapters.device_adapter_path())
    return folder, folder / DEMO_CONFIG


class _Forward(logging.Handler):
    """Hands pymmcore-plus' records to livetrack's logger (and so to whatever the CLI
    configured: stderr, the progress console or the dashboard)."""

    def emit(self, record: logging.LogRecord) -> None:
        log.handle(record)


def _import_core() -> Any:
    """``CMMCorePlus``, with pymmcore-plus' import-time logging set straight: it sets the
    root logger to DEBUG and prints its own coloured lines to stderr; we keep its log file,
    restore the root level and route its console output through livetrack's logger."""
    root = logging.getLogger()
    level = root.level
    try:
        from pymmcore_plus import CMMCorePlus
    except ImportError:
        raise ConfigError(_MISSING) from None
    finally:
        root.setLevel(level)
    pmm = logging.getLogger("pymmcore-plus")
    for handler in list(pmm.handlers):
        if type(handler) is logging.StreamHandler:
            pmm.removeHandler(handler)
            forward = _Forward(handler.level)
            pmm.addHandler(forward)
    pmm.propagate = False
    return CMMCorePlus


def _names(values: Any) -> str:
    return ", ".join(str(v) for v in values) or "(none)"


@dataclass
class _Stats:
    delivered: int = 0
    skipped_images: int = 0
    """Images of channels other than the segmented one (acquired, not sent)."""
    pauses: int = 0
    paused_s: float = 0.0
    max_queued: int = 0
    missing: list[str] = field(default_factory=list)


class MMCoreSource:
    """A FrameSource running a useq ``MDASequence`` on pymmcore-plus; see the module
    docstring. The core is created and the plan checked against it in ``prepare()``
    (called by ``frames()``), so constructing one checks the plan alone."""

    def __init__(
        self,
        sequence: useq.MDASequence,
        *,
        mm_app_path: Path | None = None,
        config_file: str | Path | None = None,
        segment_channel: str | None = None,
        queue_size: int = 8,
        frame_timeout_s: float = 60.0,
        hardware_sequencing: bool = False,
        properties: tuple[tuple[str, str, str], ...] = (),
        save_to: Path | None = None,
    ) -> None:
        if queue_size < 1:
            raise ConfigError(f"queue size must be ≥ 1, got {queue_size}")
        if frame_timeout_s <= 0:
            raise ConfigError(f"frame timeout must be > 0 s, got {frame_timeout_s}")
        self.sequence = sequence
        self.shape: PlanShape = plan_shape(sequence, segment_channel)
        self.mm_app_path = mm_app_path
        self.config_file = config_file
        self.queue_size = queue_size
        self.frame_timeout_s = frame_timeout_s
        self.hardware_sequencing = hardware_sequencing
        self.properties = properties
        """(device, property, value) set on the core before acquiring, e.g.
        ("Camera", "Mode", "Fluorescent Beads") on the DemoCamera."""
        self.save_to = save_to
        self._failure: SourceError | None = None
        self._core: Any = None
        self._cond = threading.Condition()
        self._queue: deque[_Frame] = deque()
        self._paused = False
        self._paused_at = 0.0
        self._stats = _Stats()
        self._closing = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._runner: threading.Thread | None = None
        self._events_started = 0
        self._current_event = "none yet"
        self._last_activity = time.monotonic()
        self._stacks: dict[tuple[int, int, int], list[np.ndarray]] = {}
        self._clock: tuple[float, float] | None = None
        self._pixel_size_um: float | None = None
        self._field_names = {(p, g): name for p, g, name in self.shape.fields}
        self._channel_name = self.shape.segment_channel or "default"
        """Reported as the frames' channel; with no channels in the plan, the core's
        current preset of its channel group (known after ``prepare()``)."""

    # -- FrameSource -----------------------------------------------------------
    @property
    def n_positions(self) -> int:
        """Series the worker tracks separately: positions × grid tiles."""
        return len(self.shape.fields)

    @property
    def total_frames(self) -> int:
        return self.shape.total_frames

    @property
    def core(self) -> Any:
        """The ``CMMCorePlus`` (None before ``prepare()``)."""
        return self._core

    @property
    def events_started(self) -> int:
        """MDA events the engine has begun (0 until the acquisition starts)."""
        return self._events_started

    @property
    def mda_paused(self) -> bool:
        """The MDA runner is in its paused state right now."""
        return self._core is not None and bool(self._core.mda.is_paused())

    @property
    def queued(self) -> int:
        """Frames acquired and waiting to be sent."""
        with self._cond:
            return len(self._queue)

    @property
    def pauses(self) -> int:
        """How often the MDA was paused because the worker lagged."""
        return self._stats.pauses

    @property
    def skipped_images(self) -> int:
        """Images of the channels that are not segmented."""
        return self._stats.skipped_images

    @property
    def finished(self) -> bool:
        """The MDA thread has ended (completed, cancelled or failed)."""
        return self._finished.is_set() and (self._runner is None or not self._runner.is_alive())

    @property
    def pixel_size_um(self) -> float | None:
        return self._pixel_size_um

    @property
    def error(self) -> SourceError | None:
        """Why ``frames()`` ended early (MDA failure, frame timeout), if it did."""
        return self._failure

    def describe(self) -> str:
        s, seq = self.shape, self.sequence
        cfg = self.config_file or f"mm-test-adapters {DEMO_CONFIG}"
        interval = ""
        step = getattr(seq.time_plan, "interval", None)
        if step is not None and s.time_points > 1:
            interval = f" interval={step.total_seconds():g}s"
        return (
            f"mmcore ({cfg}) fields={len(s.fields)} time points={s.time_points}{interval} "
            f"channels={_names(s.channels) if s.channels else 'current'} "
            f"segment={s.segment_channel or 'current channel'} z={s.z_planes}"
            + (" max-projected" if s.z_planes > 1 else "")
        )

    def summary(self) -> str:
        """One line on what was delivered, skipped, paused for or missing."""
        st = self._stats
        text = f"{st.delivered} frames delivered"
        if st.skipped_images:
            text += f", {st.skipped_images} images of other channels not segmented"
        if st.pauses:
            text += (
                f", MDA paused {st.pauses}× ({st.paused_s:.1f} s) waiting for the worker"
                f" (queue peaked at {st.max_queued})"
            )
        if st.missing:
            text += f", {len(st.missing)} frames never delivered by the camera"
        return text

    def prepare(self) -> None:
        """Create the core, load the configuration and check the plan against it (channel
        groups and presets, stage and focus devices). Idempotent; raises SourceError
        naming what is wrong before anything is acquired."""
        if self._core is not None:
            return
        CMMCorePlus = _import_core()
        if self.save_to is not None and Path(self.save_to).exists():
            raise SourceError(f"{self.save_to} exists; the MDA never overwrites a saved dataset")
        folder, config = self._config_paths()
        core = CMMCorePlus()
        try:
            core.setDeviceAdapterSearchPaths([str(folder)])
            core.loadSystemConfiguration(str(config))
        except Exception as err:  # pymmcore raises RuntimeError / CMMError
            core.unloadAllDevices()
            raise SourceError(f"cannot load Micro-Manager config {config}: {err}") from err
        try:
            self._validate(core)
            self._set_properties(core)
        except SourceError:
            core.unloadAllDevices()
            raise
        size = float(core.getPixelSizeUm())
        self._pixel_size_um = size if size > 0 else None
        if self._pixel_size_um is None:
            log.warning("no pixel size calibrated in Micro-Manager; lengths will be in pixels")
        if not self.shape.channels:
            group = core.getChannelGroup()
            current = core.getCurrentConfig(group) if group else ""
            self._channel_name = str(current) or "default"
        core.mda.engine.use_hardware_sequencing = self.hardware_sequencing
        self._connect(core)
        self._core = core
        log.info("acquiring %s (pixel size %s µm)", self.describe(), self._pixel_size_um)

    def frames(self) -> Iterator[tuple[np.ndarray, FrameMeta]]:
        self.prepare()
        self._start()
        try:
            while True:
                item = self._next()
                if item is None:
                    break
                self._stats.delivered += 1
                yield item
            if self._error is not None and not self._closing.is_set():
                raise SourceError(f"the MDA failed: {self._error}")
            self._check_complete()
        except SourceError as err:
            self._failure = err
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Cancel a running MDA, wait for its thread and unload the devices. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        core = self._core
        if core is None:
            return
        if self._runner is not None and self._runner.is_alive():
            log.info("cancelling the MDA")
            core.mda.cancel()
            self._runner.join(timeout=30)
            if self._runner.is_alive():
                log.error("the MDA did not stop within 30 s (a device is not responding)")
        self._disconnect(core)
        if not (self._runner is not None and self._runner.is_alive()):
            core.unloadAllDevices()
        log.info("mmcore: %s", self.summary())

    # -- setup -----------------------------------------------------------------
    def _config_paths(self) -> tuple[Path, Path]:
        if self.mm_app_path is None:
            folder, demo = demo_config_paths()
            config = Path(self.config_file) if self.config_file else demo
        else:
            folder = Path(self.mm_app_path)
            if not folder.is_dir():
                raise SourceError(f"Micro-Manager folder {folder} does not exist")
            config = Path(self.config_file or DEMO_CONFIG)
        if not config.is_absolute() and not config.exists():
            config = folder / config
        if not config.is_file():
            raise SourceError(f"Micro-Manager config {config} not found")
        return folder, config

    def _validate(self, core: Any) -> None:
        seq = self.sequence
        groups = tuple(core.getAvailableConfigGroups())
        for ch in seq.channels:
            if ch.group not in groups:
                raise SourceError(
                    f"channel group {ch.group!r} (channel {ch.config!r}) is not in the "
                    f"Micro-Manager config; its groups are {_names(groups)}"
                )
            presets = tuple(core.getAvailableConfigs(ch.group))
            if ch.config not in presets:
                raise SourceError(
                    f"channel {ch.config!r} is not a preset of group {ch.group!r}; "
                    f"valid channels are {_names(presets)}"
                )
        xy = core.getXYStageDevice()
        focus = core.getFocusDevice()
        positions = seq.stage_positions
        for i, pos in enumerate(positions):
            name = pos.name or f"Pos{i}"
            if (pos.x is not None or pos.y is not None) and not xy:
                raise SourceError(f"position {name} has x/y but the config has no XY stage")
            if pos.z is not None and not focus:
                raise SourceError(f"position {name} has z but the config has no focus device")
        if len(positions) > 1 and any(p.x is None or p.y is None for p in positions):
            missing = [p.name or f"Pos{i}" for i, p in enumerate(positions) if p.x is None]
            raise SourceError(
                f"with several positions every one needs x and y; missing for {missing}"
            )
        if seq.grid_plan is not None and not xy:
            raise SourceError("the plan has a grid but the config has no XY stage")
        if seq.z_plan is not None and not focus:
            raise SourceError("the plan has a z plan but the config has no focus device")
        if seq.autofocus_plan is not None and not core.getAutoFocusDevice():
            raise SourceError("the plan has an autofocus plan but the config has no autofocus")

    def _set_properties(self, core: Any) -> None:
        for device, prop, value in self.properties:
            try:
                core.setProperty(device, prop, value)
            except Exception as err:  # pymmcore raises RuntimeError for a bad name/value
                raise SourceError(f"Micro-Manager rejected {device}:{prop}={value}: {err}") from err

    # -- the MDA thread --------------------------------------------------------
    def _connect(self, core: Any) -> None:
        events = core.mda.events
        events.frameReady.connect(self._on_frame)
        events.eventStarted.connect(self._on_event)
        events.awaitingEvent.connect(self._on_waiting)

    def _start(self) -> None:
        self._last_activity = time.monotonic()
        self._runner = threading.Thread(target=self._run, name="livetrack-mmcore-mda", daemon=True)
        self._runner.start()

    def _disconnect(self, core: Any) -> None:
        events = core.mda.events
        for signal, slot in (
            (events.frameReady, self._on_frame),
            (events.eventStarted, self._on_event),
            (events.awaitingEvent, self._on_waiting),
        ):
            signal.disconnect(slot, missing_ok=True)

    def _run(self) -> None:
        """The MDA, run here rather than with ``core.run_mda`` so its error is kept and
        re-raised by ``frames()`` as a SourceError instead of dying in a bare thread."""
        try:
            output = str(self.save_to) if self.save_to is not None else None
            self._core.mda.run(self.sequence, output=output)
        except Exception as err:  # any engine/device error ends the run; frames() reports it
            log.error("the MDA ended with an error: %s", err)
            self._error = err
        finally:
            with self._cond:
                self._finished.set()
                self._cond.notify_all()

    def _on_event(self, event: Any) -> None:
        self._events_started += 1
        self._current_event = _event_text(event)
        self._last_activity = time.monotonic()

    def _on_waiting(self, event: Any, remaining_s: float) -> None:
        self._last_activity = time.monotonic()

    def _on_frame(self, image: np.ndarray, event: Any, meta: Any) -> None:
        """frameReady (MDA thread): keep the segmented channel, project z, queue it and
        pause the MDA when the queue is full."""
        self._last_activity = time.monotonic()
        index = event.index
        channel = event.channel.config if event.channel is not None else None
        if (channel is not None and channel != self.shape.segment_channel) or index.get("cam", 0):
            self._stats.skipped_images += 1
            return
        key = (int(index.get("p", 0)), int(index.get("g", 0)), int(index.get("t", 0)))
        plane = self._project(key, np.asarray(image))
        if plane is None:
            return
        p, g, t = key
        size = meta.get("pixel_size_um") if hasattr(meta, "get") else None
        frame = FrameMeta(
            position=self._field_names.get((p, g), f"Pos{p}"),
            frame_index=t,
            timestamp=self._timestamp(meta),
            pixel_size_um=float(size) if size else self._pixel_size_um,
            channel=self._channel_name,
        )
        with self._cond:
            self._queue.append((plane, frame))
            n = len(self._queue)
            self._stats.max_queued = max(self._stats.max_queued, n)
            if n >= self.queue_size and not self._paused and not self._closing.is_set():
                self._paused = True
                self._paused_at = time.monotonic()
                self._stats.pauses += 1
                if self._stats.pauses == 1:
                    log.warning("worker is slower than the camera: pausing the MDA")
                self._core.mda.set_paused(True)
            self._cond.notify_all()

    def _project(self, key: tuple[int, int, int], image: np.ndarray) -> np.ndarray | None:
        """Max projection over the segmented channel's z-planes; the frame once all came."""
        if self.shape.z_planes <= 1:
            return image
        stack = self._stacks.setdefault(key, [])
        stack.append(image)
        if len(stack) < self.shape.z_planes:
            return None
        del self._stacks[key]
        return np.max(np.stack(stack), axis=0)

    def _timestamp(self, meta: Any) -> float:
        """Wall clock from the runner's elapsed time, anchored at the first image."""
        elapsed = meta.get("runner_time_ms") if hasattr(meta, "get") else None
        if elapsed is None:
            return time.time()
        if self._clock is None:
            self._clock = (time.time(), float(elapsed))
        wall0, elapsed0 = self._clock
        return wall0 + (float(elapsed) - elapsed0) / 1000.0

    # -- the consumer ----------------------------------------------------------
    def _next(self) -> _Frame | None:
        """The next frame; None at the end of the MDA or on close. Resumes a paused MDA
        once the queue is down to half, and enforces the frame timeout."""
        with self._cond:
            while True:
                if self._queue:
                    item = self._queue.popleft()
                    if self._paused and len(self._queue) <= self.queue_size // 2:
                        self._resume()
                    return item
                if self._finished.is_set() or self._closing.is_set():
                    return None
                if self._paused:  # cannot stay paused with an empty queue
                    self._resume()
                idle = time.monotonic() - self._last_activity
                if idle > self.frame_timeout_s:
                    raise SourceError(
                        f"no image from Micro-Manager for {idle:.0f} s (timeout "
                        f"{self.frame_timeout_s:g} s) during {self._current_event}; "
                        "a device is not responding — the MDA was cancelled"
                    )
                self._cond.wait(min(0.1, self.frame_timeout_s))

    def _resume(self) -> None:
        self._paused = False
        self._stats.paused_s += time.monotonic() - self._paused_at
        self._last_activity = time.monotonic()
        self._core.mda.set_paused(False)

    def _check_complete(self) -> None:
        """After a completed MDA: every planned frame arrived, or say which did not
        (pymmcore-plus logs a failed snap and goes on)."""
        if self._closing.is_set() or self._stats.delivered >= self.total_frames:
            return
        missing = self.total_frames - self._stats.delivered
        self._stats.missing = [f"{missing} frame(s)"]
        log.warning(
            "the MDA finished with %d of %d frames: %d never came from the camera (see the "
            "pymmcore-plus log)",
            self._stats.delivered,
            self.total_frames,
            missing,
        )


def _event_text(event: Any) -> str:
    """``event t=3 p=1 c=0 (DAPI)`` for error messages."""
    index = ", ".join(f"{k}={v}" for k, v in dict(event.index).items())
    channel = f" {event.channel.config}" if getattr(event, "channel", None) else ""
    return f"event {{{index}}}{channel}"
