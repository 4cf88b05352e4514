"""The worker loop: receive → segment → track → store → publish, one frame at a time.

It holds no business logic of its own: segmentation, tracking and storage live behind
their seams. What it owns is the per-(run, position) state, ordering rules (duplicates
are idempotent, gaps are tolerated), error isolation (a bad frame is rejected and the
run goes on) and the heartbeat.

Memory: a position's tracker lives in memory while the position is among the
``max_live_trackers`` most recently active ones; the least recently active is dropped and,
when its next frame comes, rebuilt from the store exactly as a restarted worker resumes
(``Tracker.restore`` from ``Store.resume_state``: the last committed frames of the
tracker's window and the tracks open in it).

Acknowledgements: after a frame's transaction committed (or when a re-sent frame turns
out to be stored already) the worker publishes ``FrameCommitted``; after an
end-of-stream too. A frame naming a ``previous_frame`` the worker has neither stored nor
rejected is refused without being handled: it overtook frames lost while the worker was
away, and the acknowledging driver (``transport.AckedPusher``) re-sends them in order.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from livetrack.config import Settings
from livetrack.errors import (
    BadFrame,
    BadMessage,
    LivetrackError,
    ResumeMismatch,
    RunInUse,
    SchemaMismatch,
    StoreError,
    StoreLost,
)
from livetrack.finite import describe_non_finite, finite_frame
from livetrack.given_labels import GivenLabels, given_label_image
from livetrack.messages import (
    EndOfStream,
    FrameCommitted,
    FrameHeader,
    FrameRejected,
    ModelAnswer,
    PositionStatus,
    TrackEvent,
    UseModel,
    WorkerStatus,
)
from livetrack.percentile import one_frame
from livetrack.segment.base import Segmenter
from livetrack.segment.factory import make_segmenter
from livetrack.store import (
    CHANGED_DEFAULTS,
    IMPLIED_SETTINGS,
    RESUME_SECTIONS,
    ResumeState,
    StoreWriter,
    resume_mismatch,
    stored_equivalent,
)
from livetrack.timings import stage_medians
from livetrack.track.base import Tracker, TrackStep
from livetrack.track.factory import make_tracker
from livetrack.track.merges import split_segmentation
from livetrack.transport import EventPublisher, FramePuller, InvalidFrame, ReceivedFrame
from livetrack.types import Segmentation

log = logging.getLogger("livetrack.worker")

STAGES = ("receive", "segment", "track", "store")

WorkerState = Literal["idle", "running", "finished", "stopping"]


class WorkerStopped(LivetrackError):
    """The worker gave up (e.g. the store kept failing); the message says why. What was
    committed before stays, and the run is resumable."""


def _weights_digest(folder: Path) -> str:
    from livetrack.models import weights_digest

    digest = weights_digest(folder)
    if digest is None:
        raise OSError(f"cannot read {folder / 'weights.pt'}")
    return digest


class _Refused(Exception):
    """A model switch that cannot happen; the message says why (one line)."""


@dataclass
class _Prepared:
    """A model loaded and checked for a switch, with every live position's new part built
    (nothing in use changed yet)."""

    folder: Path
    config: Any
    """The ``SegmentConfig`` / ``TrackConfig`` naming the model."""
    shared: dict[str, Any]
    made: dict[tuple[str, str], Any]
    model_id: str


@dataclass
class PositionState:
    """Live state of one position of one run."""

    segmenter: Segmenter
    tracker: Tracker | None
    """None while dropped from memory (see ``WorkerConfig.max_live_trackers``)."""
    shape: tuple[int, int]
    last_frame: int | None
    n_cells: int = 0
    active_tracks: int = 0
    divisions: int = 0
    updated: float = 0.0


@dataclass(frozen=True)
class FrameResult:
    """What happened to one received frame (for progress displays and tests)."""

    run_id: str
    position: str
    frame_index: int
    status: str
    """'stored', 'duplicate' or 'rejected'."""
    n_cells: int = 0
    n_events: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    total_frames: int | None = None
    message: str = ""


def run_config(settings: Settings) -> dict[str, Any]:
    """What a run stores about how it was made: the settings, plus the sha256 of the model
    weights the learned parts load (``models``). Resuming checks the parts that decide the
    lineage against it (``store.RESUME_SECTIONS``)."""
    from livetrack.models import SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL, weights_digest

    config = settings.model_dump(mode="json")
    models: dict[str, str | None] = {}
    if settings.segment.method == "learned":
        models["segment"] = weights_digest(settings.segment.model_dir or SHIPPED_SEGMENT_MODEL)
    if settings.track.method == "lstm":
        model_dir = settings.track.model_dir
        models["track"] = weights_digest(Path(model_dir) if model_dir else SHIPPED_TRACK_MODEL)
    config["models"] = models
    return config


_PART_NAMES = {"segment_model": "segmentation", "track_model": "tracking"}


def implied_settings(settings: Settings, stored: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Settings added after ``stored``'s run began (``store.IMPLIED_SETTINGS``), or whose
    default changed since (``store.CHANGED_DEFAULTS``, stored with the old default), that
    ``settings`` leaves at their default: the value the run ran with, by (section, key)."""
    stored = stored_equivalent(stored)
    out: dict[tuple[str, str], Any] = {}
    for (section, key), value in IMPLIED_SETTINGS.items():
        part = stored.get(section)
        if not isinstance(part, dict) or key in part:
            continue
        current = getattr(settings, section)
        field = type(current).model_fields[key]
        if getattr(current, key) == field.default and value != field.default:
            out[(section, key)] = value
    # Defaults that changed: a run stored with the old default keeps it (CHANGED_DEFAULTS).
    for (section, key), old_default in CHANGED_DEFAULTS.items():
        part = stored.get(section)
        if not isinstance(part, dict) or part.get(key) != old_default:
            continue
        current = getattr(settings, section)
        field = type(current).model_fields[key]
        if getattr(current, key) == field.default and old_default != field.default:
            out[(section, key)] = old_default
    return out


def resume_settings(
    run_id: str, settings: Settings, stored: dict[str, Any], *, implied: bool = True
) -> Settings:
    """The settings to resume ``run_id`` with: ``settings`` with the models the run was
    switched to while it ran (``livetrack use-model``; its stored ``switches``, the latest
    per part), so that a restart with the run's original command goes on as the run did,
    and (``implied``) with the value it ran with for each setting added since it began and
    left at its default here (``implied_settings``).
    ResumeMismatch when a switched model's folder holds no readable weights any more."""
    from livetrack.models import weights_digest

    want: dict[str, str] = {}
    for switch in stored.get("switches") or []:
        if isinstance(switch, dict):
            for part in ("segment_model", "track_model"):
                if isinstance(switch.get(part), str):
                    want[part] = switch[part]
    for part, folder in want.items():
        if weights_digest(Path(folder)) is None:
            raise ResumeMismatch(
                f"run {run_id!r} was switched to the {_PART_NAMES[part]} model "
                f"{folder} while it ran, and {Path(folder) / 'weights.pt'} cannot be read "
                "now: put the model folder back (or start a new run)"
            )
    update: dict[str, Any] = {}
    if implied:
        fill: dict[str, dict[str, Any]] = {}
        for (section, key), value in implied_settings(settings, stored).items():
            fill.setdefault(section, {})[key] = value
        for section, values in fill.items():
            update[section] = getattr(settings, section).model_copy(update=values)
    if "segment_model" in want:
        update["segment"] = update.get("segment", settings.segment).model_copy(
            update={"method": "learned", "model_dir": Path(want["segment_model"])}
        )
    if "track_model" in want:
        update["track"] = update.get("track", settings.track).model_copy(
            update={"method": "lstm", "model_dir": want["track_model"]}
        )
    return settings.model_copy(update=update) if update else settings


class Worker:
    """Processes frames from a FramePuller until stopped (or end-of-stream)."""

    def __init__(
        self,
        settings: Settings,
        store: StoreWriter,
        puller: FramePuller,
        publisher: EventPublisher | None = None,
        *,
        on_frame: Callable[[FrameResult], None] | None = None,
        segmenter_factory: Callable[[], Segmenter] | None = None,
        tracker_factory: Callable[[tuple[int, int]], Tracker] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.puller = puller
        self.publisher = publisher
        self.on_frame = on_frame
        self.shared_models: dict[str, Any] = {}
        """The learned models, loaded once per worker and shared by every position."""
        self._make_segmenter = segmenter_factory or (
            lambda: make_segmenter(settings.segment, shared=self.shared_models)
        )
        self._model_ids: dict[str, str] = {}
        """Cache: the id of the learned segmenter / tracker model in use (its folder and the
        start of its weights' sha256), recorded with every frame."""
        self._segment_model_dir: Path | None = settings.segment.model_dir
        """The learned segmenter's model folder in use (None: the shipped one); changed by
        a ``UseModel`` request."""
        self._track_model_dir: Path | None = (
            Path(settings.track.model_dir) if settings.track.model_dir else None
        )
        """The learned tracker's model folder in use (None: the shipped one); changed by a
        ``UseModel`` request."""
        self._switched: dict[str, str | None] = {}
        """The models this worker was switched to since it started (``UseModel``), as a
        run's ``switches`` record holds them: a run begun afterwards records them too."""
        self._refused_resume: dict[str, str] = {}
        """Runs whose resume was refused because their switched models cannot be loaded
        (not retried on every frame; restart the worker once the folder is back)."""
        self._make_tracker = tracker_factory or (
            lambda shape: make_tracker(settings.track, shape, shared=self.shared_models)
        )
        self.positions: dict[tuple[str, str], PositionState] = {}
        self.open_runs: set[str] = set()
        self.finished_runs: set[str] = set()
        self.frames_processed = 0
        self.frames_rejected = 0
        self.frames_duplicate = 0
        self._store_failures = 0
        self._recent: deque[dict[str, float]] = deque(maxlen=50)
        self._commit_times: deque[float] = deque(maxlen=50)
        self._last_status = 0.0
        self._current_run: str | None = None
        self._last_lag_s = 0.0
        self.worker_id = uuid.uuid4().hex[:12]
        """Random id of this worker process, in acknowledgements and heartbeats: a driver
        that sees a new one knows the worker restarted."""
        self.running_segmenter: str = settings.segment.method
        """What really segments: the name of the last segmenter made (a fallback, e.g.
        classical when torch cannot load, shows as such); the configured method before."""
        self.running_tracker: str = settings.track.method
        """What really tracks (as ``running_segmenter``)."""
        self._rejected_upto: dict[tuple[str, str], int] = {}
        """Per (run, position): the highest frame index rejected for its content (handled,
        so the frame after it may follow)."""
        self._live: OrderedDict[tuple[str, str], None] = OrderedDict()
        """Positions whose tracker is in memory, least recently active first."""
        self.trackers_dropped = 0
        """Trackers dropped from memory to stay within ``max_live_trackers``."""
        self._renumbered: set[tuple[str, str]] = set()
        self._non_finite: set[tuple[str, str]] = set()
        self._last_heartbeat = time.monotonic()

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set, or until every run ended when ``exit_on_eos``."""
        stop = stop or threading.Event()
        log.info("worker listening for frames on %s", self.puller.endpoint)
        while not stop.is_set():
            self.poll_once(timeout_s=0.2)
            if self.settings.worker.exit_on_eos and self.finished_runs and not self.open_runs:
                break
        self._publish_status("stopping" if stop.is_set() else "finished", force=True)

    def poll_once(self, timeout_s: float = 0.2) -> FrameResult | EndOfStream | ModelAnswer | None:
        """Receive and handle at most one message. Never raises for bad input."""
        try:
            msg = self.puller.recv(timeout_s=timeout_s)
        except InvalidFrame as err:
            return self._reject(err.header, str(err), handled=True)
        except (BadMessage, BadFrame, SchemaMismatch) as err:
            return self._reject(None, str(err))
        if msg is None:
            self._renew_leases()
            self._publish_status("running" if self.open_runs else "idle")
            return None
        if isinstance(msg, EndOfStream):
            self.end_of_stream(msg)
            return msg
        if isinstance(msg, UseModel):
            return self.use_model(msg)
        result = self.handle_frame(msg, receive_ms=self.puller.last_receive_ms)
        self._publish_status("running")
        return result

    # ------------------------------------------------------------- one frame
    def handle_frame(self, rf: ReceivedFrame, receive_ms: float = 0.0) -> FrameResult:
        h = rf.header
        try:
            state = self._position_state(h)
        except (BadFrame, ResumeMismatch) as err:
            return self._reject(h, str(err), handled=True)
        if state.last_frame is not None and h.frame_index <= state.last_frame:
            if self.store.has_frame(h.run_id, h.position, h.frame_index):
                self.store.check_intact(f"acknowledging frame {h.position}/{h.frame_index}")
                self.frames_duplicate += 1
                log.info("frame %s/%d already stored; ignoring re-send", h.position, h.frame_index)
                self._acknowledge(h, "duplicate")
                return self._emit(FrameResult(h.run_id, h.position, h.frame_index, "duplicate"))
            return self._reject(
                h,
                f"frame {h.position}/{h.frame_index} arrived after frame {state.last_frame}; "
                "frames must arrive in order",
                handled=True,
            )
        if not self._predecessor_handled(h, state):
            return self._reject(
                h,
                f"frame {h.position}/{h.frame_index} follows frame {h.previous_frame}, which "
                "never arrived (lost while the worker was away?); waiting for the driver to "
                "re-send it",
            )
        if state.last_frame is not None and h.frame_index > state.last_frame + 1:
            log.warning(
                "position %s: frames %d..%d never arrived; tracking across the gap",
                h.position,
                state.last_frame + 1,
                h.frame_index - 1,
            )
        segmenter = state.segmenter
        if rf.labels is not None:
            try:
                labels, renumbered = given_label_image(rf.labels)
            except BadFrame as err:
                return self._reject(h, f"frame {h.position}/{h.frame_index}: {err}", handled=True)
            if renumbered and (h.run_id, h.position) not in self._renumbered:
                self._renumbered.add((h.run_id, h.position))
                log.warning(
                    "position %s: label values beyond the pixel count (up to %d) are "
                    "renumbered 1..N in increasing order",
                    h.position,
                    int(np.max(rf.labels)),
                )
            segmenter = GivenLabels(labels)
        tracker = self._live_tracker(h, state)
        timings = {"receive": receive_ms}
        image, n_bad = finite_frame(rf.image)
        if n_bad:
            rf = replace(rf, image=image)
            if (h.run_id, h.position) not in self._non_finite:
                self._non_finite.add((h.run_id, h.position))
                log.warning(
                    "position %s frame %d: %s (said once per position)",
                    h.position,
                    h.frame_index,
                    describe_non_finite(n_bad, image.size),
                )
        # The frame's histogram is counted once for the segmenter and the tracker.
        with one_frame(rf.image):
            return self._segment_track_store(h, rf, state, segmenter, tracker, timings)

    def _segment_track_store(
        self,
        h: FrameHeader,
        rf: ReceivedFrame,
        state: PositionState,
        segmenter: Segmenter,
        tracker: Tracker,
        timings: dict[str, float],
    ) -> FrameResult:
        try:
            t = time.perf_counter()
            seg = segmenter.predict(rf.image, h.pixel_size_um)
            timings["segment"] = (time.perf_counter() - t) * 1000
        except BadFrame as err:  # livetrack's typed bad input: this frame is refused
            return self._reject(
                h, f"frame {h.position}/{h.frame_index}: segmentation failed: {err}", handled=True
            )
        except LivetrackError:
            raise
        except Exception as err:
            # Not bad input but a segmenter bug: rejecting would drop every later frame as
            # "bad" and hide it. Stop instead; what is committed stays, the run resumes.
            log.error("segmenting frame %s/%d failed", h.position, h.frame_index, exc_info=True)
            raise WorkerStopped(
                f"frame {h.position}/{h.frame_index}: the segmenter failed "
                f"({type(err).__name__}: {err}); this is a bug, not bad input. Frames stored "
                "so far are kept and the run is resumable"
            ) from err
        t = time.perf_counter()
        if rf.labels is None:
            seg = split_segmentation(seg, tracker, h.frame_index)
        step = tracker.step(
            h.frame_index,
            seg.detections,
            image=rf.image,
            mask=seg.mask,
            labels_given=rf.labels is not None,
        )
        timings["track"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        try:
            self.store.write_frame(
                h.run_id,
                h.position,
                h.frame_index,
                timestamp=h.timestamp,
                mask=seg.mask,
                detections=seg.detections,
                step=step,
                timings=timings,
                channel=h.channel,
                pixel_size_um=h.pixel_size_um,
                diameter_px=seg.info.get("diameter_px"),
                diameter_estimate_px=seg.info.get("diameter_estimate"),
                models=(self._segmenter_id(segmenter), self._tracker_id(tracker)),
            )
        except (StoreLost, RunInUse):
            raise  # the database is gone, or another process writes the run: stop now
        except StoreError as err:
            # The tracker already advanced past a frame the store does not hold: drop the
            # position's state so the next frame re-synchronises from what was committed.
            self.positions.pop((h.run_id, h.position), None)
            self._live.pop((h.run_id, h.position), None)
            self._store_failures += 1
            if self._store_failures >= self.settings.worker.max_store_failures:
                raise WorkerStopped(
                    f"{self._store_failures} consecutive frames could not be stored; last "
                    f"error: {err}"
                ) from err
            return self._reject(h, f"frame {h.position}/{h.frame_index} not stored: {err}")
        self._store_failures = 0
        timings["store"] = (time.perf_counter() - t) * 1000
        self._acknowledge(h, "stored")
        self._after_commit(h, state, seg, step, timings)
        return self._emit(
            FrameResult(
                h.run_id,
                h.position,
                h.frame_index,
                "stored",
                n_cells=len(seg.detections),
                n_events=len(step.events),
                timings_ms=timings,
                total_frames=h.total_frames,
            )
        )

    def _after_commit(
        self,
        h: FrameHeader,
        state: PositionState,
        seg: Segmentation,
        step: TrackStep,
        timings: dict[str, float],
    ) -> None:
        now = time.time()
        state.last_frame = h.frame_index
        state.n_cells = len(seg.detections)
        ended = {e.track_id for e in step.ended}
        state.active_tracks = len(set(step.track_ids.tolist()) - ended)
        self.frames_processed += 1
        self._recent.append(timings)
        self._commit_times.append(time.monotonic())
        self._last_lag_s = max(0.0, now - h.timestamp)
        for ev in step.events:
            if ev.kind == "division":
                state.divisions += 1
            if self.publisher is not None:
                self.publisher.publish(
                    TrackEvent(
                        run_id=h.run_id,
                        position=h.position,
                        frame=ev.frame,
                        event=ev.kind,
                        track_id=ev.track_id,
                        daughters=ev.daughters,
                        y=None if np.isnan(ev.y) else ev.y,
                        x=None if np.isnan(ev.x) else ev.x,
                        confidence=ev.confidence,
                        timestamp=h.timestamp,
                    )
                )
        state.updated = now

    def _predecessor_handled(self, h: FrameHeader, state: PositionState) -> bool:
        """Whether the frame the driver sent before this one was stored or rejected here
        (always true for drivers that do not name it)."""
        if h.previous_frame is None:
            return True
        handled = max(
            -1 if state.last_frame is None else state.last_frame,
            self._rejected_upto.get((h.run_id, h.position), -1),
        )
        return h.previous_frame <= handled

    def _acknowledge(
        self,
        h: FrameHeader | EndOfStream,
        status: Literal["stored", "duplicate", "end-of-stream"],
    ) -> None:
        """Publish a FrameCommitted; called only once the frame is durable."""
        if self.publisher is None:
            return
        frame = h if isinstance(h, FrameHeader) else None
        self.publisher.publish(
            FrameCommitted(
                run_id=h.run_id,
                position=None if frame is None else frame.position,
                frame_index=None if frame is None else frame.frame_index,
                status=status,
                worker_id=self.worker_id,
                timestamp=time.time(),
            )
        )

    def _position_state(self, h: FrameHeader) -> PositionState:
        key = (h.run_id, h.position)
        state = self.positions.get(key)
        if state is not None:
            if state.shape != h.shape:
                raise BadFrame(
                    f"frame {h.position}/{h.frame_index} is {h.shape}, earlier frames of this "
                    f"position were {state.shape}"
                )
            return state
        if h.run_id not in self.open_runs:
            self._open_run(h)
        return self._start_position(key, h.shape)

    def _start_position(self, key: tuple[str, str], shape: tuple[int, int]) -> PositionState:
        """A position this worker process has not handled yet: its segmenter and tracker,
        both resumed from the store when it holds frames of the position (one question,
        ``Store.resume_state``)."""
        segmenter = self._make_segmenter()
        self.running_segmenter = segmenter.name
        tracker = self._make_tracker(shape)
        self.running_tracker = tracker.name
        resume = self._resume_state(key, tracker)
        state = PositionState(segmenter, tracker, shape, last_frame=resume.last_frame)
        if resume.last_frame is not None:  # resumed: the scale and the tracks where they stood
            segmenter.restore_scale(resume.scale)
            self._restore(key, state, tracker, resume)
        self.positions[key] = state
        self._live_tracker(key, state)
        return state

    def _resume_state(self, key: tuple[str, str], tracker: Tracker) -> ResumeState:
        return self.store.resume_state(
            key[0],
            key[1],
            tracker.history_window,
            scale_window=self.settings.segment.auto_diameter_frames + 1,  # see ScaleState
        )

    def _live_tracker(self, h: FrameHeader | tuple[str, str], state: PositionState) -> Tracker:
        """The position's tracker, rebuilt from the store if it is not in memory; marks the
        position as the most recently active and drops the least recently active trackers
        beyond ``max_live_trackers``."""
        key = (h.run_id, h.position) if isinstance(h, FrameHeader) else h
        tracker = state.tracker
        if tracker is None:
            tracker = state.tracker = self._make_tracker(state.shape)
            self.running_tracker = tracker.name
            if state.last_frame is not None:
                self._restore(key, state, tracker, self._resume_state(key, tracker))
        self._live[key] = None
        self._live.move_to_end(key)
        while len(self._live) > self.settings.worker.max_live_trackers:
            old, _ = self._live.popitem(last=False)
            dropped = self.positions.get(old)
            if dropped is not None and dropped.tracker is not None:
                dropped.tracker = None
                self.trackers_dropped += 1
                log.debug("position %s of run %s: tracker dropped from memory", old[1], old[0])
        return tracker

    def _open_run(self, h: FrameHeader) -> None:
        stored = self.store.run_config(h.run_id)
        if stored is not None:  # resuming: first the models the run was switched to, if any
            self._follow_switches(h.run_id, stored)
        is_new = self.store.begin_run(
            h.run_id, source=h.source or "stream", config=run_config(self.settings)
        )
        if is_new and self._switched:  # begun on switched models: a restart must know
            self.store.record_model_switch(
                {}, {h.run_id: {"timestamp": time.time(), "after_frames": {}, **self._switched}}
            )
        self.open_runs.add(h.run_id)
        self.finished_runs.discard(h.run_id)
        self._current_run = h.run_id
        log.info("%s run %s (%s)", "started" if is_new else "resuming", h.run_id, h.source)

    def _restore(
        self,
        key: tuple[str, str],
        state: PositionState,
        tracker: Tracker,
        resume: ResumeState,
        *,
        tracker_id: str | None = None,
        why: str = "resuming",
    ) -> None:
        """Rebuild ``tracker`` from the store. Embeddings of frames that another tracking
        model made (before a ``UseModel`` switch; table ``frame_models``) mean nothing to
        this one: they are left out, so those frames count by position and motion only —
        the same whether the switch happened in this process or before a restart, so a
        resumed run goes on exactly as an uninterrupted one."""
        run_id, position = key
        history = resume.history
        if history and any(h.embeddings is not None for h in history):
            current = tracker_id or self._tracker_id(tracker)
            made_by = {
                f: t
                for f, _, t in self.store.frame_models(run_id, position, since=history[0].frame)
            }
            history = [
                replace(h, embeddings=None)
                if h.embeddings is not None and made_by.get(h.frame, current) != current
                else h
                for h in history
            ]
        tracker.restore(history, resume.tracks)
        state.divisions = resume.divisions
        if resume.stale_open_tracks:
            log.warning(
                "position %s of run %s: %d open tracks have no detection in the last %d "
                "frames; they are not continued",
                position,
                run_id,
                resume.stale_open_tracks,
                tracker.history_window,
            )
        log.info(
            "position %s of run %s: %s after frame %s (%d open tracks restored)",
            position,
            run_id,
            why,
            state.last_frame,
            len(resume.open_tracks),
        )

    # ------------------------------------------------------------ stream end
    def end_of_stream(self, eos: EndOfStream) -> None:
        """Close the run's open tracks and mark it finished (or aborted).

        Positions this worker process never saw a frame of (it restarted after their last
        frame) are restored from the store first, so their tracks are closed too; closing
        already-closed tracks again changes nothing (a re-sent end-of-stream is harmless).
        """
        if eos.reason == "complete" and self.store.has_run(eos.run_id):
            self._restore_unseen_positions(eos.run_id)
        for (run_id, position), state in list(self.positions.items()):
            if run_id != eos.run_id:
                continue
            if eos.reason == "complete" and state.last_frame is not None:
                tracker = self._live_tracker((run_id, position), state)
                self.store.write_track_ends(run_id, position, tracker.finish(state.last_frame))
            del self.positions[(run_id, position)]
            self._live.pop((run_id, position), None)
        if eos.run_id in self.open_runs or self.store.has_run(eos.run_id):
            self.store.end_run(eos.run_id, "finished" if eos.reason == "complete" else "aborted")
        self.open_runs.discard(eos.run_id)
        self.finished_runs.add(eos.run_id)
        self._acknowledge(eos, "end-of-stream")
        log.info(
            "end of stream for run %s (%s, %d frames sent)%s",
            eos.run_id,
            eos.reason,
            eos.frames_sent,
            f": {eos.message}" if eos.message else "",
        )

    def _restore_unseen_positions(self, run_id: str) -> None:
        for position in self.store.positions(run_id):
            key = (run_id, position)
            if key in self.positions:
                continue
            info = self.store.position_info(run_id, position)  # listed: it has frames
            self.positions[key] = PositionState(  # its tracker is restored by _live_tracker
                segmenter=self._make_segmenter(),
                tracker=None,
                shape=(int(info["height"]), int(info["width"])),
                last_frame=int(info["last_frame"]),
            )

    def abort_open_runs(self) -> None:
        """On shutdown without end-of-stream: mark open runs 'aborted' (resumable). A store
        that cannot be written any more (deleted, full) is logged, not raised: shutdown
        goes on, and the run's status stays 'running', which resumes just the same."""
        for run_id in list(self.open_runs):
            try:
                self.store.end_run(run_id, "aborted")
            except StoreError as err:
                log.error("could not mark run %s aborted: %s", run_id, err)
        self.open_runs.clear()

    def _renew_leases(self) -> None:
        """While idle, renew the leases of the runs being written (see ``Store.heartbeat``),
        and notice a deleted database before the next frame arrives."""
        now = time.monotonic()
        if now - self._last_heartbeat < self.store.config.lease_timeout_s / 4:
            return
        self._last_heartbeat = now
        try:
            self.store.heartbeat()
        except StoreLost:
            raise
        except StoreError as err:  # e.g. locked for a while: the next frame tries again
            log.warning("could not renew the run lease: %s", err)

    # ------------------------------------------------------------- reporting
    def _emit(self, result: FrameResult) -> FrameResult:
        if self.on_frame is not None:
            self.on_frame(result)
        return result

    def _reject(self, h: FrameHeader | None, reason: str, *, handled: bool = False) -> FrameResult:
        """Count, log and publish a rejection. ``handled``: the frame itself is bad (it
        will not get better by re-sending), so the frame after it may follow."""
        self.frames_rejected += 1
        if handled and h is not None:
            key = (h.run_id, h.position)
            self._rejected_upto[key] = max(self._rejected_upto.get(key, -1), h.frame_index)
        log.error("rejected: %s", reason)
        if self.publisher is not None:
            self.publisher.publish(
                FrameRejected(
                    run_id=h.run_id if h else None,
                    position=h.position if h else None,
                    frame_index=h.frame_index if h else None,
                    reason=reason,
                    timestamp=time.time(),
                    final=handled and h is not None,
                )
            )
        return self._emit(
            FrameResult(
                h.run_id if h else "",
                h.position if h else "",
                h.frame_index if h else -1,
                "rejected",
                message=reason,
            )
        )

    def stage_medians(self) -> dict[str, float]:
        """Median ms per stage over the most recent committed frames (for the status)."""
        return stage_medians(self._recent)

    # ------------------------------------------------------------ models
    def _segmenter_id(self, segmenter: Segmenter) -> str:
        """What the frame's record says segmented it: 'learned <folder> <sha256[:12]>',
        'classical', 'given labels'."""
        if isinstance(segmenter, GivenLabels):
            return "given labels"
        if segmenter.name != "learned":
            return segmenter.name
        return self._model_id("learned", self._segment_model_dir)

    def _tracker_id(self, tracker: Tracker) -> str:
        if tracker.name != "lstm":
            return tracker.name
        return self._model_id("lstm", self._track_model_dir)

    def _model_id(self, kind: str, model_dir: Path | None) -> str:
        from livetrack.models import SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL, weights_digest

        shipped = SHIPPED_SEGMENT_MODEL if kind == "learned" else SHIPPED_TRACK_MODEL
        folder = Path(model_dir) if model_dir is not None else shipped
        key = f"{kind} {folder}"
        if key not in self._model_ids:
            digest = weights_digest(folder) or "unreadable"
            self._model_ids[key] = f"{kind} {folder.name} {digest[:12]}"
        return self._model_ids[key]

    def use_model(self, request: UseModel) -> ModelAnswer:
        """Switch every position to other learned models, between frames: a segmentation
        model (``segment_model``), a tracking model (``track_model``) or both.

        The request comes from the wire: each model is loaded and checked, every position's
        new segmenter made with its nucleus scale and every live position's new tracker
        rebuilt from the store (its open tracks where they stand, as after a restart),
        before anything changes. When any of that fails (no such folder, bad weights, no
        torch, a path that cannot be read) the worker keeps its models and says why;
        nothing raises but a lost store. The switch is recorded in the stored config of
        every open run (``Store.record_model_switch``), so a worker restarted on one of them
        goes on with the switched models; runs opened later record them in their settings;
        ``frame_models`` says, frame by frame, which models produced it.

        A new tracking model cannot read the old one's embeddings: for the next
        ``window`` frames its open tracks are followed on position and motion only for the
        frames before the switch (the blank tracks it was trained with)."""
        kept_segmenter, kept_tracker = self._running_ids()
        try:
            seg = track = None
            if request.segment_model is not None:
                seg = self._prepare_segmenter(request.segment_model)
            if request.track_model is not None:
                track = self._prepare_tracker(request.track_model)
            settings = self.settings.model_copy(
                update={
                    **({"segment": seg.config} if seg else {}),
                    **({"track": track.config} if track else {}),
                }
            )
            self._record_switch(settings, seg, track)
        except (StoreLost, RunInUse):
            raise  # the database is gone, or another process took the run: stop
        except Exception as err:  # untrusted input: any failure is a refusal, not a crash
            return self._answer(request, False, kept_segmenter, kept_tracker, str(err))
        self.settings = settings
        if seg is not None:
            for key, segmenter in seg.made.items():
                self.positions[key].segmenter = segmenter
            seg_config, seg_shared = seg.config, seg.shared
            self._make_segmenter = lambda: make_segmenter(seg_config, shared=seg_shared)
            self.shared_models["segment"] = seg.shared["segment"]
            self._segment_model_dir = seg.folder
            self.running_segmenter = "learned"
            self._model_ids[f"learned {seg.folder}"] = seg.model_id  # the weights as loaded
        if track is not None:
            for key, tracker in track.made.items():
                self.positions[key].tracker = tracker
            track_config, track_shared = track.config, track.shared
            self._make_tracker = lambda shape: make_tracker(
                track_config, shape, shared=track_shared
            )
            self.shared_models["track"] = track.shared["track"]
            self._track_model_dir = track.folder
            self.running_tracker = "lstm"
            self._model_ids[f"lstm {track.folder}"] = track.model_id
        if seg is not None:
            self._switched.update(segment_model=str(seg.folder), segmenter=seg.model_id)
        if track is not None:
            self._switched.update(track_model=str(track.folder), tracker=track.model_id)
        segmenter, tracker = self._running_ids()
        log.info(
            "from the next frame on: segmenting with %s (was %s), tracking with %s (was %s)",
            segmenter,
            kept_segmenter,
            tracker,
            kept_tracker,
        )
        return self._answer(request, True, segmenter, tracker)

    def _running_ids(self) -> tuple[str, str]:
        segmenter = (
            self._model_id("learned", self._segment_model_dir)
            if self.running_segmenter == "learned"
            else self.running_segmenter
        )
        tracker = (
            self._model_id("lstm", self._track_model_dir)
            if self.running_tracker == "lstm"
            else self.running_tracker
        )
        return segmenter, tracker

    def _prepare_segmenter(self, folder_text: str) -> _Prepared:
        try:
            return self._load_segmenter(folder_text)
        except (_Refused, StoreLost, RunInUse):
            raise
        except Exception as err:  # from the wire: any failure is a refusal naming the folder
            raise _Refused(f"{folder_text}: {err}") from err

    def _prepare_tracker(self, folder_text: str) -> _Prepared:
        try:
            return self._load_tracker(folder_text)
        except (_Refused, StoreLost, RunInUse):
            raise
        except Exception as err:
            raise _Refused(f"{folder_text}: {err}") from err

    def _load_segmenter(self, folder_text: str) -> _Prepared:
        folder = Path(folder_text).expanduser().absolute()  # recorded: cwd-independent
        config = self.settings.segment.model_copy(update={"method": "learned", "model_dir": folder})
        shared: dict[str, Any] = {}
        probe = make_segmenter(config, shared=shared)  # loads and checks the network once
        if probe.name != "learned":
            raise _Refused(f"{folder_text}: the learned segmenter cannot run here (torch)")
        made: dict[tuple[str, str], Any] = {}
        for key, state in self.positions.items():
            segmenter = make_segmenter(config, shared=shared)
            if state.last_frame is not None:
                segmenter.restore_scale(
                    self.store.scale_state(
                        key[0], key[1], self.settings.segment.auto_diameter_frames + 1
                    )
                )
            made[key] = segmenter
        digest = _weights_digest(folder)
        return _Prepared(folder, config, shared, made, f"learned {folder.name} {digest[:12]}")

    def _load_tracker(self, folder_text: str) -> _Prepared:
        folder = Path(folder_text).expanduser().absolute()
        config = self.settings.track.model_copy(
            update={"method": "lstm", "model_dir": str(folder)}  # TrackConfig keeps a str
        )
        shared: dict[str, Any] = {}
        probe = make_tracker(config, (8, 8), shared=shared)  # loads and checks the network
        if probe.name != "lstm":
            raise _Refused(f"{folder_text}: the lstm tracker cannot run here (torch)")
        digest = _weights_digest(folder)
        model_id = f"lstm {folder.name} {digest[:12]}"
        made: dict[tuple[str, str], Any] = {}
        for key, state in self.positions.items():
            if state.tracker is None:
                continue  # out of memory: rebuilt from the store when its next frame comes
            tracker = make_tracker(config, state.shape, shared=shared)
            if state.last_frame is not None:
                resume = self._resume_state(key, tracker)
                probe_state = replace(state)  # _restore sets counters: not on the live state
                self._restore(
                    key, probe_state, tracker, resume, tracker_id=model_id, why="new tracker"
                )
            made[key] = tracker
        return _Prepared(folder, config, shared, made, model_id)

    def _record_switch(
        self, settings: Settings, seg: _Prepared | None, track: _Prepared | None
    ) -> None:
        """Write the switch into the stored config of every open run (one transaction)."""
        if not self.open_runs:
            return
        sections = {k: v for k, v in run_config(settings).items() if k in RESUME_SECTIONS}
        now = time.time()
        switches = {
            run_id: {
                "timestamp": now,
                "after_frames": {
                    pos: state.last_frame
                    for (run, pos), state in sorted(self.positions.items())
                    if run == run_id
                },
                "segment_model": None if seg is None else str(seg.folder),
                "segmenter": None if seg is None else seg.model_id,
                "track_model": None if track is None else str(track.folder),
                "tracker": None if track is None else track.model_id,
            }
            for run_id in sorted(self.open_runs)
        }
        self.store.record_model_switch(sections, switches)

    def _follow_switches(self, run_id: str, stored: dict[str, Any]) -> None:
        """A run being resumed that was switched to other models while it ran (its stored
        ``switches``) goes on with them. The resume is checked first (settings, lease), so
        nothing changes for a run that will be refused anyway; then the worker switches —
        all its positions, as any ``UseModel`` — or refuses the run (ResumeMismatch) when
        the models cannot be loaded any more."""
        if run_id in self._refused_resume:
            raise ResumeMismatch(self._refused_resume[run_id])
        try:
            wanted = resume_settings(run_id, self.settings, stored, implied=False)
            segment = (
                str(wanted.segment.model_dir)
                if wanted.segment != self.settings.segment and wanted.segment.model_dir
                else None
            )
            track = wanted.track.model_dir if wanted.track != self.settings.track else None
            if segment is None and track is None:
                return
            resume_mismatch(run_id, stored, run_config(wanted))  # would begin_run accept it?
            self.store.check_run_free(run_id)
            log.info("run %s was switched to other models while it ran; resuming with them", run_id)
            answer = self.use_model(
                UseModel(segment_model=segment, track_model=track, request_id="resume")
            )
            if not answer.ok:
                named = " and ".join(m for m in (segment, track) if m)
                raise ResumeMismatch(
                    f"run {run_id!r} was switched to {named} while it ran, and this worker "
                    f"cannot load it now ({answer.message}): put the model folder back and "
                    "restart the worker, or start a new run"
                )
        except ResumeMismatch as err:
            self._refused_resume[run_id] = str(err)
            raise

    def _answer(
        self, request: UseModel, ok: bool, segmenter: str, tracker: str, message: str = ""
    ) -> ModelAnswer:
        if not ok:
            log.error(
                "model switch refused, still segmenting with %s and tracking with %s: %s",
                segmenter,
                tracker,
                message,
            )
        answer = ModelAnswer(
            request_id=request.request_id,
            ok=ok,
            segmenter=segmenter,
            tracker=tracker,
            message=message,
            timestamp=time.time(),
        )
        if self.publisher is not None:
            self.publisher.publish(answer)
        return answer

    def fps(self) -> float:
        if len(self._commit_times) < 2:
            return 0.0
        span = self._commit_times[-1] - self._commit_times[0]
        return (len(self._commit_times) - 1) / span if span > 0 else 0.0

    def status(self, state: WorkerState) -> WorkerStatus:
        return WorkerStatus(
            run_id=self._current_run,
            state=state,
            frames_processed=self.frames_processed,
            frames_rejected=self.frames_rejected,
            fps=self.fps(),
            stage_ms=self.stage_medians(),
            lag_s=self._last_lag_s,
            device=_device_of(self.positions),
            positions=tuple(
                PositionStatus(
                    position=pos,
                    last_frame=s.last_frame if s.last_frame is not None else -1,
                    n_cells=s.n_cells,
                    active_tracks=s.active_tracks,
                    divisions=s.divisions,
                    updated=s.updated,
                )
                for (_, pos), s in sorted(self.positions.items())
            ),
            segmenter=self.running_segmenter,
            tracker=self.running_tracker,
            db_path=str(self.store.path),
            timestamp=time.time(),
            worker_id=self.worker_id,
            frames_endpoint=self.puller.endpoint,
        )

    def _publish_status(self, state: WorkerState, force: bool = False) -> None:
        if self.publisher is None:
            return
        now = time.monotonic()
        if not force and now - self._last_status < self.settings.worker.status_interval_s:
            return
        self._last_status = now
        self.publisher.publish(self.status(state))


@runtime_checkable
class OnDevice(Protocol):
    """A segmenter that runs its model on a device (``cuda:0``, ``cpu``) says which: an
    optional capability beside the ``Segmenter`` protocol, asked with isinstance()."""

    @property
    def device(self) -> object: ...


def _device_of(positions: dict[Any, PositionState]) -> str:
    for s in positions.values():
        if isinstance(s.segmenter, OnDevice) and s.segmenter.device is not None:
            return str(s.segmenter.device)
    return "cpu"
