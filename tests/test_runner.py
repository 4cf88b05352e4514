"""run_pipeline(): driver and worker in one process over real loopback sockets into a
real SQLite file; run ids; the events port."""

from __future__ import annotations

from pathlib import Path

import pytest
from livetrack.drivers.simulator import SimulatorSource
from livetrack.simulators.nuclei import SimulationConfig

from livetrack.config import Settings
from livetrack.errors import EndpointInUse
from livetrack.runner import choose_run_id, open_publisher, run_pipeline
from livetrack.store import Store
from livetrack.timings import stage_medians
from livetrack.transport import EventPublisher

SIM = SimulationConfig(
    seed=5, n_frames=6, height=96, width=96, n_cells=5, nucleus_diameter_px=14,
    cell_cycle_frames=8,
)  # fmt: skip


def lap_settings() -> Settings:
    return Settings().model_copy(
        update={"track": Settings().track.model_copy(update={"method": "lap"})}
    )


class Watched(SimulatorSource):
    """The simulator, remembering whether it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_a_run_stores_every_frame_and_summarises_it(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    source = Watched(SIM, with_labels=True)
    summary = run_pipeline(
        source,
        lap_settings(),
        description="sim",
        run_id="r1",
        db_path=db,
        events_endpoint="tcp://127.0.0.1:0",
    )
    assert source.closed
    assert (summary.frames_stored, summary.frames_rejected, summary.frames_duplicate) == (6, 0, 0)
    assert summary.run_status == "finished"
    assert not summary.resumable
    assert summary.pump is not None
    assert (summary.pump.reason, summary.pump.frames_sent) == ("complete", 6)
    assert summary.counts["frames"] == 6
    assert summary.counts["positions"] == 1
    assert len(summary.timings) == 6
    assert list(summary.stage_ms) == ["receive", "segment", "track", "store"]
    assert summary.stage_ms == stage_medians(summary.timings)
    assert not summary.events_endpoint.endswith(":0")  # the port really bound
    with Store(db, readonly=True) as store:
        assert store.frame_indices("r1", "sim") == list(range(6))
        assert store.runs()[0]["status"] == "finished"


def test_run_ids_resume_unfinished_runs_and_number_finished_ones(tmp_path: Path) -> None:
    with Store(tmp_path / "ids.db") as store:
        assert choose_run_id(store, "movie") == "movie"
        store.begin_run("movie", source="t", config={})
        assert choose_run_id(store, "movie") == "movie"  # unfinished: resumed
        store.end_run("movie", "finished")
        assert choose_run_id(store, "movie") == "movie-2"
        store.begin_run("movie-2", source="t", config={})
        store.end_run("movie-2", "aborted")
        assert choose_run_id(store, "movie") == "movie-2"  # aborted: resumable
        store.end_run("movie-2", "finished")
        assert choose_run_id(store, "movie") == "movie-3"


def test_a_taken_events_port_is_refused_and_the_source_closed(
    tmp_path: Path, zmq_context, closing, monkeypatch: pytest.MonkeyPatch
) -> None:
    import livetrack.transport.sockets as sockets

    monkeypatch.setattr(sockets, "BIND_RETRY_S", 0.2)
    holder = closing(EventPublisher("tcp://127.0.0.1:0", context=zmq_context))
    with pytest.raises(EndpointInUse, match="--events"):
        open_publisher(holder.endpoint, allow_remote=False)
    source = Watched(SIM, with_labels=True)
    with pytest.raises(EndpointInUse, match=f"{holder.endpoint} is already in use"):
        run_pipeline(
            source,
            lap_settings(),
            description="sim",
            run_id="r2",
            db_path=tmp_path / "never.db",
            events_endpoint=holder.endpoint,
        )
    assert source.closed  # the driver never started, so the runner closed it
    assert not (tmp_path / "never.db").exists()  # nothing opened before the port


def test_a_stop_before_the_end_leaves_a_resumable_run(tmp_path: Path) -> None:
    """Stopped once two frames are stored: the run is 'aborted' (resumable), what was
    stored stays, and running again with the same id finishes it with every frame."""
    import threading

    db = tmp_path / "stop.db"
    stop = threading.Event()

    def on_frame(result) -> None:  # type: ignore[no-untyped-def]
        if result.status == "stored" and result.frame_index == 1:
            stop.set()

    first = run_pipeline(
        SimulatorSource(SIM, with_labels=True), lap_settings(), description="sim",
        run_id="r3", db_path=db, stop=stop, on_frame=on_frame,
        events_endpoint="tcp://127.0.0.1:0",
    )  # fmt: skip
    assert first.run_status == "aborted"
    assert first.resumable
    assert first.frames_stored == 2  # the worker checks the stop between frames
    second = run_pipeline(
        SimulatorSource(SIM, with_labels=True), lap_settings(), description="sim",
        run_id="r3", db_path=db, events_endpoint="tcp://127.0.0.1:0",
    )  # fmt: skip
    assert second.run_status == "finished"
    assert (second.frames_stored, second.frames_duplicate) == (4, 2)  # 0, 1 were stored
    with Store(db, readonly=True) as store:
        assert store.frame_indices("r3", "sim") == list(range(6))
