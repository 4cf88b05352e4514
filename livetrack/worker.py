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
from dataclasses import dataclass, field
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
from livetrack.segment.base import Segmenter
from livetrack.segment.factory import make_segmenter
from livetrack.store import ResumeState, StoreWriter
from livetrack.timings import stage_medians
from livetrack.track.base import Tracker, TrackStep
from livetrack.track.factory import make_tracker
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
        step = tracker.step(h.frame_index, seg.detections, image=rf.image, mask=seg.mask)
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
            scale_window=self.settings.segment.auto_diameter_frames,
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
        is_new = self.store.begin_run(
            h.run_id, source=h.source or "stream", config=run_config(self.settings)
        )
        self.open_runs.add(h.run_id)
        self.finished_runs.discard(h.run_id)
        self._current_run = h.run_id
        log.info("%s run %s (%s)", "started" if is_new else "resuming", h.run_id, h.source)

    def _restore(
        self, key: tuple[str, str], state: PositionState, tracker: Tracker, resume: ResumeState
    ) -> None:
        run_id, position = key
        tracker.restore(resume.history, resume.tracks)
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
            "position %s of run %s: resuming after frame %s (%d open tracks restored)",
            position,
            run_id,
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
        model_dir = self.settings.track.model_dir
        return self._model_id("lstm", Path(model_dir) if model_dir else None)

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
        """Switch every position to another learned segmentation model, between frames.

        The request comes from the wire: the model is loaded and checked, and every
        position's new segmenter made with its nucleus scale (restored from the store, as
        after a restart), before anything changes. When any of that fails (no such folder,
        bad weights, no torch, a path that cannot be read), the worker keeps its model and
        says why; nothing raises. Runs the worker opens afterwards record the new model in
        their settings; runs already open keep the settings they were started with (and so
        resume with their original model), while ``frame_models`` says, frame by frame,
        which model segmented."""
        kept = (
            self._model_id("learned", self._segment_model_dir)
            if self.running_segmenter == "learned"
            else self.running_segmenter
        )
        folder_text = request.segment_model
        shared: dict[str, Any] = {}
        try:
            folder = Path(folder_text).expanduser()
            config = self.settings.segment.model_copy(
                update={"method": "learned", "model_dir": folder}
            )
            made: dict[tuple[str, str], Segmenter] = {}
            for key, state in self.positions.items():
                segmenter = make_segmenter(config, shared=shared)
                if segmenter.name != "learned":
                    return self._answer(
                        request,
                        False,
                        kept,
                        f"{folder_text}: the learned segmenter cannot run here (torch)",
                    )
                if state.last_frame is not None:
                    segmenter.restore_scale(
                        self.store.scale_state(
                            key[0], key[1], self.settings.segment.auto_diameter_frames
                        )
                    )
                made[key] = segmenter
            if not made:  # no position yet: still load and check the model now
                probe = make_segmenter(config, shared=shared)
                if probe.name != "learned":
                    return self._answer(
                        request,
                        False,
                        kept,
                        f"{folder_text}: the learned segmenter cannot run here (torch)",
                    )
            digest = _weights_digest(folder)
        except Exception as err:  # untrusted input: any failure is a refusal, not a crash
            return self._answer(request, False, kept, f"{folder_text}: {err}")
        for key, segmenter in made.items():
            self.positions[key].segmenter = segmenter
        self._make_segmenter = lambda: make_segmenter(config, shared=shared)
        self.shared_models["segment"] = shared["segment"]
        self.settings = self.settings.model_copy(update={"segment": config})
        self._segment_model_dir = folder
        self.running_segmenter = "learned"
        now = f"learned {folder.name} {digest[:12]}"
        self._model_ids[f"learned {folder}"] = now  # the weights as loaded now
        log.info("segmenting with %s from the next frame on (was %s)", now, kept)
        return self._answer(request, True, now)

    def _answer(
        self, request: UseModel, ok: bool, segmenter: str, message: str = ""
    ) -> ModelAnswer:
        if not ok:
            log.error("model switch refused, still segmenting with %s: %s", segmenter, message)
        answer = ModelAnswer(
            request_id=request.request_id,
            ok=ok,
            segmenter=segmenter,
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
