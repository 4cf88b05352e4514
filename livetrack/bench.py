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
from pathlib import Path
from typing import Any

import numpy as np

from livetrack.config import Settings
from livetrack.runner import run_pipeline
from livetrack.transport import bench_throughput


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_bench(sim_config: Any, *, transport_frames: int = 100) -> dict[str, Any]:
    """Simulate a run of the given size through the real pipeline, then compare the
    transport with a bare pyzmq loop on 2048×2048 uint16 frames."""
    from drivers.simulator import SimulatorSource

    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "frames": sim_config.n_frames,
        "size": [sim_config.height, sim_config.width],
        "cells": sim_config.n_cells,
        "seed": sim_config.seed,
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = SimulatorSource(sim_config)
        summary = run_pipeline(
            source,
            Settings(),
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
