"""``livetrack bench``: per-stage timings, memory and transport throughput.

Speed is measured here, never asserted in tests. Every comparison (livetrack transport
vs bare pyzmq) runs in the same process, right after each other, so ratios hold on a
shared, noisy machine even when absolute numbers move.
"""

from __future__ import annotations

import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livetrack.config import Settings
from livetrack.runner import run_pipeline
from livetrack.transport import bench_throughput
from livetrack.worker import FrameResult


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


SimulatorFactory = Callable[..., Any]
"""Makes the simulator's frame source from a ``SimulationConfig`` (``with_labels=`` for
tracking only); the CLI hands in ``livetrack.drivers.simulator.SimulatorSource`` — nothing below the
CLI imports drivers."""


def run_bench(
    sim_config: Any,
    simulator: SimulatorFactory,
    *,
    transport_frames: int = 100,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Simulate a run of the given size through the real pipeline, then compare the
    transport with a bare pyzmq loop on 2048×2048 uint16 frames."""
    settings = settings or Settings()

    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "frames": sim_config.n_frames,
        "size": [sim_config.height, sim_config.width],
        "cells": sim_config.n_cells,
        "seed": sim_config.seed,
        "segmenter": settings.segment.method,
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = simulator(sim_config)
        summary = run_pipeline(
            source,
            settings,
            description=source.describe(),
            run_id="bench",
            db_path=Path(tmp) / "bench.db",
            events_endpoint="tcp://127.0.0.1:0",
        )
        db_bytes = sum(p.stat().st_size for p in Path(tmp).glob("bench.db*"))
    timings = summary.timings[1:] or summary.timings  # first frame includes warm-up
    report["stage_ms_median"] = {
        k: statistics.median(t[k] for t in timings if k in t)
        for k in ("receive", "segment", "track", "store")
    }
    report["stage_ms_p95"] = {
        k: float(np.percentile([t[k] for t in timings if k in t], 95))
        for k in ("receive", "segment", "track", "store")
    }
    report["pipeline_fps"] = summary.frames_stored / summary.seconds
    report["cells_per_frame"] = summary.counts.get("detections", 0) / max(summary.frames_stored, 1)
    report["counts"] = summary.counts
    report["db_bytes_per_frame"] = db_bytes / max(summary.frames_stored, 1)
    report["peak_rss_mb"] = _peak_rss_mb()
    if transport_frames > 0:
        image = np.random.default_rng(0).integers(0, 4096, (2048, 2048), dtype=np.uint16)
        bare = bench_throughput(image, transport_frames, livetrack_protocol=False)
        ours = bench_throughput(image, transport_frames, livetrack_protocol=True)
        bare2 = bench_throughput(image, transport_frames, livetrack_protocol=False)
        report["transport_2048_uint16"] = {
            "frames": transport_frames,
            "bare_pyzmq_fps": [bare, bare2],
            "livetrack_fps": ours,
            "ratio_vs_bare_mean": ours / ((bare + bare2) / 2),
            "livetrack_MB_s": ours * image.nbytes / 1e6,
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"livetrack bench — {report['frames']} frames {report['size'][0]}×{report['size'][1]}, "
        f"{report['cells']} initial cells (seed {report['seed']}), "
        f"{report['segmenter']} segmenter, "
        f"{report['cells_per_frame']:.0f} detections/frame on average",
        "",
        f"{'stage':<10}{'median ms':>12}{'p95 ms':>10}",
    ]
    for k, v in report["stage_ms_median"].items():
        lines.append(f"{k:<10}{v:>12.1f}{report['stage_ms_p95'][k]:>10.1f}")
    lines += [
        "",
        f"pipeline: {report['pipeline_fps']:.2f} frames/s end to end (simulator included)",
        f"peak RSS: {report['peak_rss_mb']:.0f} MB; database: "
        f"{report['db_bytes_per_frame'] / 1024:.0f} KiB/frame",
    ]
    t = report.get("transport_2048_uint16")
    if t:
        bare = ", ".join(f"{x:.0f}" for x in t["bare_pyzmq_fps"])
        lines += [
            "",
            f"ZeroMQ 2048×2048 uint16, {t['frames']} frames: livetrack {t['livetrack_fps']:.0f} "
            f"fr/s ({t['livetrack_MB_s']:.0f} MB/s) vs bare pyzmq {bare} fr/s → ratio "
            f"{t['ratio_vs_bare_mean']:.2f}",
        ]
    return "\n".join(lines)


def _rss_mb() -> float:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _peak_rss_mb()


def run_soak(
    sim_config: Any, simulator: SimulatorFactory, *, track_only: bool = False, window: int = 100
) -> dict[str, Any]:
    """A long simulated run through the real pipeline (sockets, worker, SQLite): RSS and
    per-frame latency early (frames ``window``..2×``window``) against late (the last
    ``window`` frames). Flat numbers mean nothing grows with the length of the movie."""

    n = sim_config.n_frames
    if n < 4 * window:
        raise ValueError(f"a soak needs at least {4 * window} frames, got {n}")
    latency: list[float] = []
    wall: list[float] = []
    rss: list[float] = []
    cells: list[float] = []
    stages: list[dict[str, float]] = []
    last = [time.perf_counter()]

    def sample(result: FrameResult) -> None:
        if result.status != "stored":
            return
        now = time.perf_counter()
        wall.append((now - last[0]) * 1000)
        last[0] = now
        latency.append(sum(result.timings_ms.values()))
        rss.append(_rss_mb())
        cells.append(float(result.n_cells))
        stages.append(result.timings_ms)

    with tempfile.TemporaryDirectory() as tmp:
        source = simulator(sim_config, with_labels=track_only)
        summary = run_pipeline(
            source,
            Settings(),
            description=source.describe(),
            run_id="soak",
            db_path=Path(tmp) / "soak.db",
            on_frame=sample,
            events_endpoint="tcp://127.0.0.1:0",
        )
        db_bytes = sum(p.stat().st_size for p in Path(tmp).glob("soak.db*"))
    early, late = slice(window, 2 * window), slice(len(latency) - window, len(latency))

    def med(xs: list[float], part: slice) -> float:
        return statistics.median(xs[part])

    per_cell = [1000 * t / max(c, 1) for t, c in zip(latency, cells, strict=True)]

    return {
        "frames": n,
        "frames_stored": summary.frames_stored,
        "size": [sim_config.height, sim_config.width],
        "cells": sim_config.n_cells,
        "mode": "track-only (simulator masks)" if track_only else "classical segmentation",
        "seconds": summary.seconds,
        "cells_per_frame": summary.counts.get("detections", 0) / max(summary.frames_stored, 1),
        "early_frames": [window, 2 * window],
        "late_frames": [len(latency) - window, len(latency)],
        "rss_mb": {"early": rss[window - 1], "late": rss[-1], "max": max(rss)},
        "worker_ms_median": {"early": med(latency, early), "late": med(latency, late)},
        "wall_ms_median": {"early": med(wall, early), "late": med(wall, late)},
        "cells_median": {"early": med(cells, early), "late": med(cells, late)},
        "stage_ms_median": {
            k: {"early": med(v, early), "late": med(v, late)}
            for k in ("receive", "segment", "track", "store")
            for v in [[t.get(k, 0.0) for t in stages]]
        },
        "worker_us_per_cell_median": {"early": med(per_cell, early), "late": med(per_cell, late)},
        "db_bytes_per_frame": db_bytes / max(summary.frames_stored, 1),
    }


def format_soak(r: dict[str, Any]) -> str:
    def change(d: dict[str, float]) -> str:
        return f"{d['early']:.1f} → {d['late']:.1f} ({(d['late'] / d['early'] - 1) * 100:+.1f}%)"

    return "\n".join(
        [
            f"livetrack soak — {r['frames_stored']}/{r['frames']} frames "
            f"{r['size'][0]}×{r['size'][1]}, {r['cells']} initial cells, {r['mode']}, "
            f"{r['seconds']:.0f} s",
            f"frames {r['early_frames'][0]}–{r['early_frames'][1]} vs "
            f"{r['late_frames'][0]}–{r['late_frames'][1]}:",
            f"  RSS MB:                        {change(r['rss_mb'])}; max {r['rss_mb']['max']:.1f}",
            f"  worker ms/frame (median):      {change(r['worker_ms_median'])}",
            f"  wall ms between commits (med): {change(r['wall_ms_median'])}",
            f"  cells per frame (median):      {change(r['cells_median'])}",
            f"  worker µs per cell (median):   {change(r['worker_us_per_cell_median'])}",
            *(
                f"    {k + ' ms':<28} {change(v) if v['early'] > 0 else '—'}"
                for k, v in r["stage_ms_median"].items()
            ),
            f"  database: {r['db_bytes_per_frame'] / 1024:.1f} KiB/frame",
        ]
    )


# ---------------------------------------------------------------------- tracking alone


class _Crowd:
    """Synthetic frames of ``n`` nuclei (discs with a random-walk motion, reflected at the
    border) at a fixed density: image + label image + detections, for timing trackers."""

    def __init__(self, n: int, seed: int, diameter: float = 14.0, density: float = 0.25) -> None:
        self.rng = np.random.default_rng(seed)
        side = int(np.ceil(np.sqrt(n * np.pi * diameter**2 / 4 / density)))
        self.shape = (side, side)
        self.n, self.d = n, diameter
        self.pos = self.rng.uniform(diameter, side - diameter, (n, 2))
        r = diameter / 2
        yy, xx = np.mgrid[-int(r) : int(r) + 1, -int(r) : int(r) + 1]
        inside = yy**2 + xx**2 <= r * r
        self.offsets = np.stack([yy[inside], xx[inside]], axis=1)
        self.bright = self.rng.uniform(100, 300, n)

    def frame(self) -> tuple[Any, Any, Any]:
        from livetrack.types import Detections

        side = self.shape[0]
        self.pos += self.rng.normal(0, 0.1 * self.d, self.pos.shape)
        self.pos = np.abs(self.pos)
        self.pos = side - 1 - np.abs(side - 1 - self.pos)
        centres = np.rint(self.pos).astype(np.int64)
        pix = centres[:, None, :] + self.offsets[None, :, :]
        pix = np.clip(pix, 0, side - 1)
        mask = np.zeros(self.shape, np.int32)
        labels = np.arange(1, self.n + 1, dtype=np.int32)
        mask[pix[..., 0], pix[..., 1]] = labels[:, None]  # later cells win overlaps
        image = np.where(mask > 0, self.bright[np.maximum(mask, 1) - 1], 20.0)
        image = (image + self.rng.normal(0, 5, self.shape)).astype(np.float32)
        return image, mask, Detections.from_labels(mask)


def run_track_bench(
    methods: tuple[str, ...] = ("lstm", "lap"),
    cells: tuple[int, ...] = (100, 1000, 5000),
    frames: int = 30,
    memory_frames: tuple[int, int] = (100, 5000),
    memory_cells: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Median ``Tracker.step`` time per frame (image → embeddings → assignment, i.e. all the
    tracker does; segmentation excluded) at each cell count, for each method on the same
    frames; and, first, per method, RSS before and after ``memory_frames[0]`` and
    ``memory_frames[1]`` frames of one long movie (flat = nothing grows with its length)."""
    from livetrack.config import TrackConfig
    from livetrack.track.factory import make_tracker

    out: dict[str, Any] = {"cells": list(cells), "frames": frames, "timing_ms": {}, "memory": {}}
    # Memory first, while the process is small (RSS never shrinks back).
    for method in methods:
        crowd = _Crowd(memory_cells, seed + 1)
        tracker = make_tracker(TrackConfig(method=method), crowd.shape)
        rss: dict[int, float] = {0: round(_rss_mb(), 1)}
        for t in range(max(memory_frames)):
            image, mask, det = crowd.frame()
            tracker.step(t, det, image, mask)
            if t + 1 in memory_frames:
                rss[t + 1] = round(_rss_mb(), 1)
        out["memory"][method] = {"cells": memory_cells, "rss_mb": rss}
    for n in cells:
        crowd = _Crowd(n, seed)
        movie = [crowd.frame() for _ in range(frames)]
        for method in methods:
            tracker = make_tracker(TrackConfig(method=method), crowd.shape)
            times = []
            for t, (image, mask, det) in enumerate(movie):
                t0 = time.perf_counter()
                tracker.step(t, det, image, mask)
                times.append((time.perf_counter() - t0) * 1000)
            out["timing_ms"].setdefault(method, []).append(round(statistics.median(times[2:]), 2))
    return out


def format_track_bench(r: dict[str, Any]) -> str:
    lines = [
        f"tracking only, median ms per frame over {r['frames']} frames "
        "(features + model + assignment; segmentation excluded)",
        "  cells      " + "".join(f"{n:>10}" for n in r["cells"]),
    ]
    for method, times in r["timing_ms"].items():
        lines.append(f"  {method:<10} " + "".join(f"{t:>10.1f}" for t in times))
    for method, mem in r["memory"].items():
        pairs = ", ".join(f"after {k} frames {v:.0f} MB" for k, v in mem["rss_mb"].items())
        lines.append(f"  RSS {method} ({mem['cells']} cells/frame): {pairs}")
    return "\n".join(lines)


def run_positions_bench(
    sim_config: Any,
    simulator: SimulatorFactory,
    *,
    n_positions: int,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One worker (real sockets and store) gets the first simulated frame of
    ``n_positions`` stage positions, as a multi-well plate's first time point: the time
    until all are stored, the process's peak RSS and how many distinct copies of each
    learned model the positions hold (1 when the worker shares them). Run it once per N
    in a fresh process: peak RSS is per process."""
    import dataclasses

    from livetrack.pump import header_for
    from livetrack.store import Store
    from livetrack.transport import FramePuller, FramePusher
    from livetrack.worker import Worker

    settings = settings or Settings()
    image, meta = next(iter(simulator(sim_config.model_copy(update={"n_frames": 1})).frames()))
    with tempfile.TemporaryDirectory() as tmp:
        puller = FramePuller("tcp://127.0.0.1:0", hwm=max(1000, 2 * n_positions))
        store = Store(Path(tmp) / "positions.db")
        worker = Worker(settings, store, puller)
        pusher = FramePusher(puller.endpoint, hwm=max(1000, 2 * n_positions), linger_s=0)
        try:
            started = time.perf_counter()
            for i in range(n_positions):
                m = dataclasses.replace(meta, position=f"P{i:03d}")
                header = header_for("bench", image, m, source="bench", total_frames=1)
                pusher.send_frame(header, image)
            stored = 0
            while stored < n_positions:
                result = worker.poll_once(timeout_s=30)
                if result is None:
                    raise RuntimeError(f"only {stored} of {n_positions} frames arrived")
                if isinstance(result, FrameResult) and result.status == "stored":
                    stored += 1
            seconds = time.perf_counter() - started
            states = list(worker.positions.values())
            segment_models = {id(getattr(s.segmenter, "model", None)) for s in states}
            track_models = {id(getattr(s.tracker, "model", None)) for s in states}
        finally:
            pusher.close(linger_s=0)
            puller.close()
            store.close()
    return {
        "positions": n_positions,
        "frame": [sim_config.height, sim_config.width],
        "segmenter": worker.running_segmenter,
        "tracker": worker.running_tracker,
        "first_frames_s": round(seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb()),
        "segmenter_model_copies": len(segment_models),
        "tracker_model_copies": len(track_models),
    }
