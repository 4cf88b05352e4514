"""Commands on stored results: export, plot, evaluate, benchmark, baseline, bench."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from livetrack.cli.args import Subcommands, command, positive, sim_args
from livetrack.cli.common import settings_of, setup_logging, sim_config
from livetrack.errors import LivetrackError

log = logging.getLogger("livetrack")


def add_parsers(sub: Subcommands) -> None:
    p = command(
        sub,
        "export",
        "export a run's lineages: CTC folder, GEFF, detections table, napari arrays",
        "Write one or more of: --ctc (Cell Tracking Challenge result folder), "
        "--geff (tracking graph + segmentation, read by traccuracy, napari-geff, ultrack, "
        "motile), --table (one row per detection with track, parent, fate, area, perimeter, "
        "eccentricity; mean_intensity is empty: the store keeps masks, not images), --napari "
        "(.npz: tracks, graph, labels for napari's Tracks and Labels layers). The table "
        "covers every position unless --position is given; the others need one position.",
    )
    p.add_argument("db", type=Path, help="the SQLite database of the run")
    p.add_argument(
        "--ctc",
        type=Path,
        default=None,
        metavar="OUT_DIR",
        help="CTC result folder to write (maskNNN.tif + res_track.txt)",
    )
    p.add_argument(
        "--geff", type=Path, default=None, metavar="OUT.zarr", help="GEFF graph to write"
    )
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        metavar="OUT.csv|OUT.parquet",
        help="table of detections to write (.parquet needs pyarrow)",
    )
    p.add_argument(
        "--napari", type=Path, default=None, metavar="OUT.npz", help="napari layer data to write"
    )
    p.add_argument(
        "--for-correction",
        type=Path,
        default=None,
        metavar="OUT_DIR",
        help="frames to correct and fine-tune on, in the CTC training layout: OUT_DIR/01 "
        "(raw frames, from --images), 01_GT/SEG (the run's masks: correct them, e.g. in "
        "napari) and 01_GT/TRA (tracks and lineage); then: livetrack finetune ... --ctc "
        "OUT_DIR/01",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="MOVIE",
        help="(--for-correction) the run's raw frames: a folder of one TIFF per frame, a "
        "(T, Y, X) TIFF stack or .npy (the database keeps masks, not images)",
    )
    p.add_argument(
        "--frames",
        default=None,
        metavar="FIRST-LAST",
        help="(--for-correction) the frames to export, inclusive (default: all)",
    )
    p.add_argument("--run-id", default=None, help="run to export (default: the latest run)")
    p.add_argument(
        "--position", default=None, help="position to export (default: the only position)"
    )
    p.add_argument(
        "--n-frames",
        type=int,
        default=None,
        help="write this many masks (missing frames as empty masks)",
    )
    p.set_defaults(func=cmd_export)
    _plot_command(sub)

    p = command(sub, "evaluate", "score a CTC result folder against ground truth")
    p.add_argument("res_dir", type=Path, help="folder with maskNNN.tif + res_track.txt")
    p.add_argument("gt_dir", type=Path, help="the NN_GT folder (TRA/, optional SEG/)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--tolerance", type=int, default=1, help="division frame tolerance")
    p.set_defaults(func=cmd_evaluate)

    # benchmark: the held-out evaluation suite
    p = command(
        sub,
        "benchmark",
        "run a suite of held-out movies through named pipelines; one table of scores",
    )
    p.add_argument(
        "suite",
        help="a shipped suite name (heldout) or a suite TOML file; see livetrack/suites/",
    )
    p.add_argument(
        "--ctc",
        type=Path,
        action="append",
        default=[],
        metavar="SEQ[:FIRST-LAST]",
        help="also score this CTC sequence folder (its NN_GT beside it), or only its frames "
        "FIRST-LAST; repeatable. Marked as training data when a model the run uses (the "
        "shipped ones, or those its settings name) was trained on it (on any of its frames)",
    )
    p.add_argument(
        "--pipelines",
        nargs="+",
        metavar="NAME",
        default=None,
        help="pipelines to run (default: default learned+lap classical+lap gt+default gt+lap;"
        " also learned+lstm classical+lstm gt+lstm gt+laptrack)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmark"),
        help="folder for benchmark.md, benchmark.json, the movies and each result "
        "(default: ./benchmark)",
    )
    p.add_argument("--config", type=Path, default=None, help="settings file (TOML or JSON)")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a default falls below its baseline on a held-out sequence",
    )
    p.set_defaults(func=cmd_benchmark)

    # baseline: third-party trackers on label masks, written for `livetrack evaluate`
    p = command(sub, "baseline", "track label masks with a third-party tracker (CTC)")
    baseline_sub = p.add_subparsers(
        dest="baseline", required=True, metavar="TRACKER", help="the third-party tracker"
    )
    p = command(
        baseline_sub,
        "laptrack",
        "laptrack (pip install -e '.[compare]') on a folder of label masks",
    )
    p.add_argument("mask_dir", type=Path, help="label masks, e.g. NN_GT/TRA (man_trackNNN.tif)")
    p.add_argument("out_dir", type=Path, help="CTC result folder to write (maskNNN.tif + txt)")
    p.add_argument(
        "--diameter",
        type=positive,
        default=None,
        metavar="PX",
        help="nucleus diameter in pixels (default: median equivalent diameter of the objects)",
    )
    p.set_defaults(func=cmd_baseline_laptrack)

    p = command(sub, "bench", "per-stage timings and memory of a simulated run")
    sim_args(p, frames_default=30)
    g = p.add_argument_group("benchmark")
    g.add_argument(
        "--transport-frames",
        type=int,
        default=100,
        help="frames for the 2048² ZeroMQ throughput comparison (0 = skip)",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument(
        "--soak",
        action="store_true",
        help="long run: RSS and per-frame latency early vs late (use with --frames 10000)",
    )
    g.add_argument(
        "--track-only",
        action="store_true",
        help="(--soak) track the simulator's masks instead of segmenting",
    )
    g.add_argument(
        "--segmenter",
        choices=("classical", "learned"),
        default="learned",
        help="segmentation method to measure (default: learned, the pipeline's default)",
    )
    g.add_argument(
        "--tracking",
        action="store_true",
        help="trackers alone: median ms/frame at --track-cells cells (lstm and lap on the "
        "same frames) and RSS after 100 vs 5,000 frames",
    )
    g.add_argument(
        "--track-cells",
        type=int,
        nargs="+",
        default=[100, 1000, 5000],
        metavar="N",
        help="(--tracking) cells per frame to time",
    )
    g.add_argument(
        "--positions",
        type=int,
        default=None,
        metavar="N",
        help="many positions: one worker gets the first frame of N stage positions; peak "
        "RSS, start-up time and how many copies of each model it loaded",
    )
    p.set_defaults(func=cmd_bench)


def _plot_command(sub: Subcommands) -> None:
    """``livetrack plot lineage|summary|overlay DB --out FILE`` (pictures: livetrack.plot)."""
    p = command(
        sub,
        "plot",
        "pictures of a stored run: lineage tree, cells and divisions over time, overlay movie",
        "Draw a stored run (needs matplotlib: pip install 'livetrack[plot]'): the lineage "
        "tree of a track, the cells and divisions of every position over time, or a movie "
        "of the outlines and track ids of one position.",
    )
    kinds = p.add_subparsers(
        dest="picture", required=True, metavar="PICTURE", help="the picture to draw"
    )
    what = {
        "lineage": "a track and its descendants on a time axis: divisions as branches, "
        "each track's id and fate (.png, .svg or .pdf)",
        "summary": "cells per frame and cumulative divisions, one line per position "
        "(.png, .svg or .pdf)",
        "overlay": "outlines and track ids over the frames of one position (.gif or .mp4). "
        "The database keeps masks, not images: --images gives the raw frames (the CTC "
        "folder or TIFF stack the run was made from); without it the outlines are drawn "
        "on black",
    }
    for name, summary in what.items():
        q = command(kinds, name, summary)
        q.add_argument("db", type=Path, help="the SQLite database of the run")
        suffixes = "FILE.gif|FILE.mp4" if name == "overlay" else "FILE.png|FILE.svg"
        q.add_argument("--out", type=Path, required=True, metavar=suffixes, help="file to write")
        q.add_argument(
            "--run-id", "--run", default=None, help="run to draw (default: the latest run)"
        )
        q.add_argument(
            "--position",
            default=None,
            help="position to draw (default: every position)"
            if name == "summary"
            else "position to draw (default: the only position)",
        )
        if name == "lineage":
            q.add_argument("--track", type=int, required=True, metavar="N", help="track id")
        if name == "overlay":
            q.add_argument(
                "--images",
                type=Path,
                default=None,
                metavar="MOVIE",
                help="the raw frames: a folder of one TIFF per frame (CTC tNNN.tif), a "
                "(T, Y, X) TIFF stack or .npy (default: outlines on black)",
            )
            q.add_argument("--fps", type=positive, default=5.0, help="frames per second")
        q.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from livetrack.plot import plot_stored

    setup_logging(args)
    print(
        plot_stored(
            args.db,
            args.picture,
            args.out,
            run=args.run_id,
            position=args.position,
            track=getattr(args, "track", None),
            images=getattr(args, "images", None),
            fps=getattr(args, "fps", 5.0),
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from livetrack.evaluate.export import export_run
    from livetrack.store import Store

    setup_logging(args)
    if not any((args.ctc, args.geff, args.table, args.napari, args.for_correction)):
        raise LivetrackError(
            "nothing to export: give --ctc, --geff, --table, --napari and/or --for-correction"
        )
    if args.for_correction is not None:
        _export_for_correction(args)
    if args.ctc is not None:
        with Store(args.db, readonly=True) as store:
            run_id, position, n = export_run(
                store, args.run_id, args.position, args.ctc, n_frames=args.n_frames or None
            )
        print(f"exported run {run_id} position {position}: {n} frames → {args.ctc}")
    return _export_formats(args)


def _frame_range(text: str | None) -> tuple[int, int | None]:
    if text is None:
        return 0, None
    m = re.fullmatch(r"(\d+)-(\d+)", text.strip())
    if not m or int(m.group(1)) > int(m.group(2)):
        raise LivetrackError(f"--frames must be FIRST-LAST (e.g. 0-9), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _export_for_correction(args: argparse.Namespace) -> None:
    from livetrack.api import as_movie
    from livetrack.evaluate.export import export_for_correction
    from livetrack.store import Store

    if args.images is None:
        raise LivetrackError(
            "--for-correction needs --images MOVIE: the database keeps masks, not the raw "
            "frames the corrections are drawn on"
        )
    first, last = _frame_range(args.frames)
    movie = as_movie(args.images, "--images")

    def read(f: int) -> Any:
        try:
            return movie[f]
        except IndexError:
            raise LivetrackError(f"--images has no frame {f}; the run has it") from None

    with Store(args.db, readonly=True) as store:
        run_id, position, n = export_for_correction(
            store, args.run_id, args.position, args.for_correction, read, first=first, last=last
        )
    out = args.for_correction
    print(
        f"exported run {run_id} position {position}: {n} frames for correction → {out}\n"
        f"  correct {out / '01_GT' / 'SEG'} (labels) over {out / '01'} (images), delete the "
        f"SEG files of frames you leave uncorrected, then:\n"
        f"  livetrack finetune segment MODEL_DIR --ctc {out / '01'}"
    )


def _export_formats(args: argparse.Namespace) -> int:
    """--geff / --table / --napari (the library does the work: livetrack.api)."""
    from livetrack.api import export_stored

    for line in export_stored(
        args.db, args.run_id, args.position, geff=args.geff, table=args.table, napari=args.napari
    ):
        print(line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from livetrack.evaluate import evaluate_ctc, format_table

    setup_logging(args)
    result = evaluate_ctc(args.res_dir, args.gt_dir, frame_tolerance=args.tolerance)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_table(result, title=f"{args.res_dir} vs {args.gt_dir}"))
    return 0


def cmd_baseline_laptrack(args: argparse.Namespace) -> int:
    """Read label masks the way ``replay --masks`` does, track them with laptrack, write
    a CTC result with the masks' zero padding."""
    from livetrack.drivers.replay import read_label_masks
    from livetrack.evaluate.baselines import (
        count_divisions,
        track_with_laptrack,
        write_ctc_result,
    )

    setup_logging(args)
    started = time.perf_counter()
    masks, digits = read_label_masks(args.mask_dir)
    tracked = time.perf_counter()
    result, rows = track_with_laptrack(masks, diameter_px=args.diameter)
    track_s = time.perf_counter() - tracked
    write_ctc_result(args.out_dir, result, rows, digits=digits)
    print(
        f"laptrack: {len(masks)} frames, {len(rows)} tracks, {count_divisions(rows)} divisions "
        f"in {time.perf_counter() - started:.1f} s (tracking {track_s:.1f} s) → {args.out_dir}"
    )
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from livetrack.benchmark import DEFAULT_PIPELINES, load_suite, rule_violations, run_benchmark
    from livetrack.drivers.replay import open_movie

    setup_logging(args)
    suite = load_suite(args.suite)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    rows = run_benchmark(
        suite,
        out_dir=args.out,
        open_source=lambda images, masks: open_movie(images, masks_dir=masks),
        ctc_dirs=args.ctc,
        pipelines=tuple(args.pipelines or DEFAULT_PIPELINES),
        settings=settings_of(args),
        on_progress=progress,
    )
    print((args.out / "benchmark.md").read_text(), end="")
    print(f"→ {args.out / 'benchmark.md'}, {args.out / 'benchmark.json'} ({len(rows)} rows)")
    return 1 if args.check and rule_violations(rows) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from livetrack.bench import run_bench
    from livetrack.drivers.simulator import SimulatorSource

    setup_logging(args)
    if args.positions is not None:
        from livetrack.bench import run_positions_bench
        from livetrack.config import load_settings

        if args.positions < 1:
            raise LivetrackError(f"--positions must be at least 1, got {args.positions}")
        pb = run_positions_bench(
            sim_config(args),
            SimulatorSource,
            n_positions=args.positions,
            settings=load_settings(segment={"method": args.segmenter}),
        )
        print(json.dumps(pb) if args.json else "\n".join(f"{k}: {v}" for k, v in pb.items()))
        return 0
    if args.tracking:
        from livetrack.bench import format_track_bench, run_track_bench

        tb = run_track_bench(cells=tuple(args.track_cells))
        print(json.dumps(tb) if args.json else format_track_bench(tb))
        return 0
    if args.soak:
        from livetrack.bench import format_soak, run_soak

        soak = run_soak(sim_config(args), SimulatorSource, track_only=args.track_only)
        print(json.dumps(soak) if args.json else format_soak(soak))
        return 0
    from livetrack.config import load_settings

    settings = load_settings(segment={"method": args.segmenter})
    report = run_bench(
        sim_config(args),
        SimulatorSource,
        transport_frames=args.transport_frames,
        settings=settings,
    )
    print(json.dumps(report) if args.json else report_text(report))
    return 0


def report_text(report: dict[str, Any]) -> str:
    from livetrack.bench import format_report

    return format_report(report)
