"""The ``livetrack`` command line. The only place that configures logging and turns
library errors into messages and exit codes (0 ok, 1 livetrack error, 2 usage)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from livetrack import __version__
from livetrack.errors import ConfigError, LivetrackError


def _number_at_least(lower: float, *, strict: bool, says: str) -> Callable[[str], float]:
    """argparse type: a finite number ``> lower`` (strict) or ``>= lower``."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        ok = x > lower if strict else x >= lower  # NaN fails both
        if not ok or x == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {says}, got {value}")
        return x

    return parse


_positive = _number_at_least(0.0, strict=True, says="a positive number")
"""Pixel size, frame rate, exposure, re-send delay, timeouts."""
_non_negative = _number_at_least(0.0, strict=False, says="0 or more")
"""Intervals."""
_diameter = _number_at_least(2.0, strict=True, says="more than 2 (pixels)")
"""Nucleus diameters (the segmenter and the simulator both need > 2 px)."""


def _int_at_least(lower: int) -> Callable[[str], int]:
    """argparse type: a whole number ``>= lower``."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if n < lower:
            raise argparse.ArgumentTypeError(f"must be {lower} or more, got {value}")
        return n

    return parse


def _port(value: str) -> int:
    n = _int_at_least(1)(value)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1..65535, got {value}")
    return n


log = logging.getLogger("livetrack")


# ----------------------------------------------------------------- arguments
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, "(default: X)", unless it has none worth
    showing (None, off, empty) or its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
        ):
            return text
        if isinstance(default, list | tuple):
            shown = " ".join(str(v) for v in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _TopHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top-level help: defaults, and the first-steps epilog laid out as written."""


def _command(
    sub: Any, name: str, summary: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` starts with what it does and shows defaults."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description or summary, formatter_class=_HelpFormatter
    )
    return parser


def _ctc_arg(p: argparse.ArgumentParser, masks: str) -> None:
    """The repeatable ``--ctc SEQ[:FIRST-LAST]`` training-data option."""
    p.add_argument(
        "--ctc",
        action="append",
        default=[],
        metavar="SEQ[:FIRST-LAST]",
        help=f"a CTC sequence folder with {masks}, optionally a frame range (repeat)",
    )


def _sim_args(
    p: argparse.ArgumentParser,
    *,
    frames_default: int = 50,
    title: str = "simulated movie",
    frames: bool = True,
) -> argparse._ArgumentGroup:
    g = p.add_argument_group(title)
    if frames:
        g.add_argument(
            "--frames",
            type=_int_at_least(1),
            default=frames_default,
            metavar="N",
            help="number of frames to simulate",
        )
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed = same movie)")
    g.add_argument(
        "--cells", type=int, default=None, help="initial number of nuclei (default: the preset's)"
    )
    g.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="frame size in pixels (default: the preset's)",
    )
    g.add_argument(
        "--diameter",
        type=_diameter,
        default=None,
        metavar="PX",
        help="diameter of the simulated nuclei in pixels: shapes the movie, not the "
        "segmenter (that is --nucleus-diameter) (default: the preset's)",
    )
    g.add_argument(
        "--preset",
        choices=["default", "sim-plus", "gowt1"],
        default="default",
        help="statistics to mimic (see simulators/nuclei.py)",
    )
    return g


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation and tracking")
    g.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="settings file (TOML or JSON)"
    )
    g.add_argument(
        "--nucleus-diameter",
        type=_diameter,
        default=None,
        dest="nucleus_diameter",
        metavar="PX",
        help="expected nucleus diameter in pixels, for the segmenter (default: from the "
        "pixel size, else estimated)",
    )
    g.add_argument(
        "--segmenter",
        choices=("classical", "learned"),
        default=None,
        help="segmentation method (default: from the settings, else learned)",
    )
    g.add_argument(
        "--tracker",
        choices=("lstm", "lap"),
        default=None,
        help="tracking method (default: from the settings, else lstm)",
    )
    g.add_argument(
        "--segment-model",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help="the learned segmenter's model folder, e.g. one written by livetrack finetune "
        "(default: [segment] model_dir, else the shipped model)",
    )
    g.add_argument(
        "--track-model",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help="the lstm tracker's model folder (default: [track] model_dir, else the shipped model)",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--db",
        type=Path,
        default=None,
        help="SQLite database (default: [store] path of --config, LIVETRACK_STORE__PATH, "
        "else livetrack.db)",
    )
    g.add_argument(
        "--run-id", default=None, help="run to write (an unfinished run with this id is resumed)"
    )
    g.add_argument(
        "--events",
        default=None,
        metavar="ENDPOINT",
        help="where to publish events/status (default tcp://127.0.0.1:5558)",
    )
    g.add_argument(
        "--no-tui",
        action="store_true",
        help="plain progress instead of the dashboard (the dashboard is shown by "
        "default when stdout and stderr are a terminal)",
    )


def _source_args(p: argparse.ArgumentParser) -> None:
    """``run``'s choice of frame source, and the time-lapse options both sources share."""
    g = p.add_argument_group(
        "frame source", "Where frames come from: simulated nuclei, or a live microscope."
    )
    g.add_argument(
        "--source",
        choices=["simulator", "micromanager", "mmcore"],
        default="simulator",
        help="simulator: a simulated movie of dividing nuclei; micromanager: a live "
        "acquisition (the DemoCamera unless --mm-app-path or --mm-java)",
    )
    g.add_argument(
        "--frames",
        type=_int_at_least(0),
        default=50,
        metavar="N",
        help="time points: frames to simulate, or to acquire with Micro-Manager "
        "(there, 0 = until Ctrl-C)",
    )
    g.add_argument(
        "--interval",
        type=_non_negative,
        default=0.0,
        metavar="S",
        help="seconds between time points (0 = as fast as the worker goes)",
    )


def _mm_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Micro-Manager (--source micromanager)",
        "A live time-lapse from a headless Micro-Manager core (by default the DemoCamera of "
        "mm-test-adapters) or from a running Micro-Manager Studio (--mm-java).",
    )
    g.add_argument(
        "--mm-app-path",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="Micro-Manager install folder for the headless Python backend (default: the "
        "DemoCamera of the mm-test-adapters package, with its demo config)",
    )
    g.add_argument(
        "--mm-config",
        default=None,
        metavar="FILE",
        help="hardware config file, relative to --mm-app-path unless absolute "
        "(default: MMConfig_demo.cfg)",
    )
    g.add_argument(
        "--mm-java",
        action="store_true",
        help="attach to a running Micro-Manager Studio instead (Tools › Options › "
        "'Run server on port 4827'); uses its hardware, config and position list",
    )
    g.add_argument(
        "--mm-port", type=_port, default=4827, metavar="PORT", help="Studio server port (--mm-java)"
    )
    g.add_argument(
        "--positions",
        nargs="+",
        default=None,
        metavar="[NAME=]X,Y[,Z]",
        help="XY stage positions in µm (default: the Studio position list, else the current "
        "position as Pos0)",
    )
    g.add_argument(
        "--channel-group",
        default="Channel",
        metavar="GROUP",
        help="Micro-Manager config group of --channel",
    )
    g.add_argument(
        "--channel",
        nargs="+",
        default=None,
        metavar="PRESET",
        help="channel preset(s) of --channel-group; several are tracked as separate series "
        "POS-CHANNEL (default: the current channel)",
    )
    g.add_argument(
        "--z",
        type=float,
        nargs="+",
        default=None,
        metavar="UM",
        help="focus position(s) in µm: one = that plane, several = max projection "
        "(default: leave the focus alone)",
    )
    g.add_argument(
        "--exposure",
        type=_positive,
        default=None,
        metavar="MS",
        help="exposure in ms (default: the camera's current exposure)",
    )
    g.add_argument(
        "--mm-property",
        action="append",
        default=[],
        metavar="DEVICE:PROPERTY=VALUE",
        help="set a device property first (repeatable); with the demo config the default "
        "is Camera:Mode=Fluorescent Beads",
    )
    g.add_argument(
        "--overflow",
        choices=["block", "drop-oldest", "drop-newest"],
        default="block",
        help="when the worker lags: pause the camera (block, no frame lost) or drop frames "
        "(counted and logged)",
    )
    g.add_argument(
        "--queue-size",
        type=_int_at_least(1),
        default=8,
        metavar="N",
        help="frames buffered before --overflow applies",
    )
    g.add_argument(
        "--hardware-timeout",
        type=_positive,
        default=30.0,
        metavar="S",
        help="end the run with an error when no image arrives for this long beyond the "
        "exposure and --interval, or a device stays busy this long",
    )
    g.add_argument(
        "--save-dir",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="also save the raw acquisition as an NDTiff dataset here",
    )


def _mmcore_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "pymmcore-plus MDA (--source mmcore --mda PLAN; also uses --mm-app-path, --mm-config, "
        "--mm-property and --queue-size)"
    )
    g.add_argument(
        "--mda",
        type=Path,
        default=None,
        metavar="PLAN",
        help="a useq-schema MDASequence (.yaml/.json): positions, grid, channels, z, time plan",
    )
    g.add_argument(
        "--segment-channel",
        default=None,
        metavar="NAME",
        help="the channel the worker segments and tracks (default: the plan's first); the "
        "other channels are acquired but not tracked",
    )
    g.add_argument(
        "--frame-timeout",
        type=_positive,
        default=60.0,
        metavar="S",
        help="end the run with an error when no image comes for this long (a device hangs)",
    )
    g.add_argument(
        "--mda-save",
        type=Path,
        default=None,
        metavar="PATH",
        help="also save every image of the plan (all channels) with pymmcore-plus' writer "
        "(.ome.zarr or .ome.tiff)",
    )


def _delivery_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "acknowledged delivery (survives worker restarts: frames are kept until the "
        "worker has committed them, and re-sent after a restart)"
    )
    g.add_argument(
        "--acks",
        default=None,
        metavar="ENDPOINT",
        help="the worker's events endpoint to take acknowledgements from, e.g. "
        "tcp://127.0.0.1:5558 (default: fire and forget)",
    )
    g.add_argument(
        "--max-unacked",
        type=int,
        default=16,
        help="frames kept until acknowledged; when full, see --when-full",
    )
    g.add_argument(
        "--when-full",
        choices=["pause", "drop"],
        default="pause",
        help="pause acquisition (default, nothing lost) or drop new frames (counted, logged)",
    )
    g.add_argument(
        "--resend-after",
        type=_positive,
        default=5.0,
        metavar="S",
        help="re-send unacknowledged frames after this long without an acknowledgement",
    )
    g.add_argument(
        "--curve-secret", type=Path, default=None, metavar="FILE", help="this client's secret key"
    )
    g.add_argument(
        "--curve-server", type=Path, default=None, metavar="FILE", help="the worker's public key"
    )


_EPILOG = """\
first steps:
  livetrack run                         track a simulated movie into livetrack.db
  livetrack run --source micromanager   track a live Micro-Manager acquisition
                                        (the simulated DemoCamera unless told otherwise)
  livetrack replay MOVIE                track a recording (CTC, TIFF, NDTiff, OME-Zarr)
  livetrack tui                         watch a running worker or a database
  livetrack COMMAND --help              every option of a command, with its default
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livetrack",
        description="Live cell tracking on a stream of microscope frames: a source\n"
        "(simulator, Micro-Manager or a recording) streams frames to a worker that\n"
        "segments, tracks and stores them in SQLite.",
        epilog=_EPILOG,
        formatter_class=_TopHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"livetrack {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do; livetrack COMMAND --help lists its options",
    )

    p = _command(
        sub,
        "run",
        "track live: a simulated movie (default) or a Micro-Manager microscope "
        "(--source micromanager) → worker → SQLite, in one process",
        "Acquire frames and track them as they arrive: from the simulator (default) or "
        "from Micro-Manager (--source micromanager: the DemoCamera, your install with "
        "--mm-app-path, or a running Studio with --mm-java). Segmentation, tracking and "
        "the SQLite store run in the same process.",
    )
    _source_args(p)
    g = _sim_args(p, title="simulated movie (--source simulator)", frames=False)
    g.add_argument(
        "--track-only",
        action="store_true",
        help="send the simulator's ground-truth masks and only track them",
    )
    _mm_args(p)
    _mmcore_args(p)
    _pipeline_args(p)
    p.set_defaults(func=cmd_run)

    p = _command(
        sub,
        "replay",
        "replay a recording through the worker: CTC folder, (OME-)TIFF stack, NDTiff, OME-Zarr",
    )
    p.add_argument(
        "seq_dir",
        type=Path,
        metavar="MOVIE",
        help="CTC folder (tNNN.tif), multi-page / OME-TIFF / ImageJ file, NDTiff folder, or "
        "OME-Zarr (.ome.zarr, NGFF; needs livetrack[omezarr])",
    )
    g = p.add_argument_group("recording")
    g.add_argument(
        "--axes",
        default=None,
        help="axis order of a TIFF's pages, e.g. TCZYX (default: from its metadata; "
        "required for a stack without axis metadata)",
    )
    g.add_argument(
        "--channel",
        default=None,
        help="channel name or index to track (default: the first)",
    )
    g.add_argument(
        "--z", default=None, help="z-plane index to track, or 'max' (default: max projection)"
    )
    g.add_argument(
        "--realtime",
        action="store_true",
        help="pace frames at their recorded timestamps (OME-TIFF, ImageJ, NDTiff, OME-Zarr)",
    )
    g.add_argument(
        "--masks",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="folder of label masks to track instead of segmenting (CTC folders)",
    )
    g.add_argument(
        "--pixel-size",
        type=_positive,
        default=None,
        dest="pixel_size",
        metavar="UM",
        help="µm per pixel (default: from the TIFF tags or the OME-Zarr scale)",
    )
    g.add_argument(
        "--fps",
        type=_positive,
        default=None,
        help="time points per second (default: as fast as possible)",
    )
    g.add_argument(
        "--position", default=None, help="position name (default: from the folder or file)"
    )
    _pipeline_args(p)
    p.set_defaults(func=cmd_replay)

    p = _command(sub, "worker", "run the worker alone (frames in, SQLite + events out)")
    _pipeline_args(p)
    g = p.add_argument_group("network")
    g.add_argument(
        "--frames-endpoint",
        default=None,
        metavar="ENDPOINT",
        help="PULL endpoint to bind for frames (default tcp://127.0.0.1:5557)",
    )
    g.add_argument("--exit-on-eos", action="store_true", help="stop after the stream ends")
    g.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding beyond 127.0.0.1; needs --curve-secret and --curve-clients",
    )
    g.add_argument(
        "--curve-secret",
        type=Path,
        default=None,
        metavar="FILE",
        help="the worker's CURVE secret key (livetrack keys): encrypt and authenticate",
    )
    g.add_argument(
        "--curve-clients",
        type=Path,
        nargs="+",
        default=None,
        metavar="PATH",
        help="public keys (files or folders of *.public) of the drivers/dashboards allowed in",
    )
    p.set_defaults(func=cmd_worker)

    p = _command(sub, "sim", "stream the simulator to a running worker")
    _sim_args(p)
    g = p.add_argument_group("streaming")
    g.add_argument(
        "--connect",
        default="tcp://127.0.0.1:5557",
        metavar="ENDPOINT",
        help="the worker's frames endpoint",
    )
    g.add_argument(
        "--interval", type=_non_negative, default=0.0, metavar="S", help="seconds between frames"
    )
    g.add_argument("--run-id", default=None, help="run id (default: from the seed and size)")
    g.add_argument("--track-only", action="store_true", help="send ground-truth masks too")
    _delivery_args(p)
    p.set_defaults(func=cmd_sim)

    p = _command(sub, "keys", "create a CURVE keypair for remote endpoints")
    p.add_argument("out_dir", type=Path, help="folder to write the key files into")
    p.add_argument("--name", default="livetrack", help="file names: NAME.public, NAME.secret")
    p.set_defaults(func=cmd_keys)

    p = _command(sub, "simulate", "write a simulated movie with ground truth (CTC layout)")
    p.add_argument(
        "out_dir", type=Path, help="folder to write NN/ (frames) and NN_GT/ (ground truth) into"
    )
    p.add_argument("--sequence", default="01", help="sequence name (folder NN)")
    _sim_args(p)
    p.set_defaults(func=cmd_simulate)

    p = _command(sub, "train", "train a learned model")
    train_sub = p.add_subparsers(
        dest="model", required=True, metavar="MODEL", help="the model to train"
    )
    p = _command(train_sub, "segment", "the learned nucleus segmenter (seeded)")
    p.add_argument("out_dir", type=Path, help="model folder to write (config.json, weights.pt)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed = same model)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    p.add_argument("--sim-movies", type=int, default=160, help="random simulated movies")
    p.add_argument(
        "--recipe",
        choices=("v1", "v2"),
        default="v1",
        help="simulated-data recipe (v1: the shipped model's; v2: crowded late frames, "
        "frames right after divisions, nucleoli, haze, mitotic shapes — no shipped model "
        "uses it yet; see docs/training.md)",
    )
    _ctc_arg(p, "NN_GT/SEG masks")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=cmd_train_segment)

    p = _command(train_sub, "track", "the learned (LSTM) tracker (seeded)")
    p.add_argument("out_dir", type=Path, help="model folder to write (config.json, weights.pt)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed = same model)")
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps")
    p.add_argument("--sim-movies", type=int, default=120, help="random simulated training movies")
    p.add_argument("--val-movies", type=int, default=8, help="simulated validation movies")
    _ctc_arg(p, "full NN_GT/TRA masks")
    p.add_argument(
        "--ctc-fraction",
        type=float,
        default=0.25,
        help="share of training samples drawn from the --ctc sequences",
    )
    p.add_argument(
        "--recipe",
        choices=("v3", "v4"),
        default="v3",
        help="training recipe (v3: the shipped model's; v4: shapes up to 3:1, nucleoli, "
        "haze and appearance dropout so an unfamiliar look falls back on geometry; see "
        "docs/training.md)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=cmd_train_track)

    p = _command(
        sub,
        "finetune",
        "fine-tune a model on your corrected frames (minutes on a CPU)",
        "Start from the shipped weights (or --from MODEL_DIR) and train on a few corrected "
        "frames in the CTC training layout (livetrack export --for-correction writes them), "
        "mixed with simulated data of the base model's recipe so it does not forget. Writes "
        "a model folder whose config.json records its provenance; use it with "
        "--segment-model / --track-model or [segment]/[track] model_dir.",
    )
    tune_sub = p.add_subparsers(
        dest="model", required=True, metavar="MODEL", help="the model to fine-tune"
    )
    for name, what in (
        ("segment", "the segmenter, on corrected NN_GT/SEG masks (sparse frames allowed)"),
        ("track", "the tracker, on corrected NN_GT/TRA masks + man_track.txt"),
    ):
        q = _command(tune_sub, name, what)
        q.add_argument("out_dir", type=Path, help="model folder to write")
        q.add_argument(
            "--ctc",
            action="append",
            default=[],
            required=True,
            metavar="SEQ[:FIRST-LAST]",
            help="a corrected CTC sequence folder (NN, with NN_GT beside it) and optionally "
            "its frames; repeatable",
        )
        q.add_argument(
            "--from",
            dest="base",
            type=Path,
            default=None,
            metavar="MODEL_DIR",
            help="model to start from (default: the shipped one)",
        )
        q.add_argument("--steps", type=int, default=400, help="optimiser steps")
        q.add_argument("--seed", type=int, default=0, help="random seed (same seed = same model)")
        q.add_argument(
            "--replay",
            type=float,
            default=0.5,
            help="share of each batch from simulated data of the base model's recipe "
            "(rehearsal against forgetting; 0 = corrected frames only)",
        )
        if name == "segment":
            q.add_argument(
                "--partial",
                action="store_true",
                help="the corrected frames outline only some nuclei: the rest of the frame "
                "is unknown, not background",
            )
        q.add_argument("--threads", type=int, default=2, help="torch CPU threads")
        q.set_defaults(func=cmd_finetune)

    p = _command(
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

    p = _command(sub, "evaluate", "score a CTC result folder against ground truth")
    p.add_argument("res_dir", type=Path, help="folder with maskNNN.tif + res_track.txt")
    p.add_argument("gt_dir", type=Path, help="the NN_GT folder (TRA/, optional SEG/)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--tolerance", type=int, default=1, help="division frame tolerance")
    p.set_defaults(func=cmd_evaluate)

    # benchmark: the held-out evaluation suite
    p = _command(
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
        metavar="SEQ",
        help="also score this CTC sequence folder (its NN_GT beside it); repeatable. "
        "Marked as training data when a shipped model was trained on it",
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
    p = _command(sub, "baseline", "track label masks with a third-party tracker (CTC)")
    baseline_sub = p.add_subparsers(
        dest="baseline", required=True, metavar="TRACKER", help="the third-party tracker"
    )
    p = _command(
        baseline_sub,
        "laptrack",
        "laptrack (pip install -e '.[compare]') on a folder of label masks",
    )
    p.add_argument("mask_dir", type=Path, help="label masks, e.g. NN_GT/TRA (man_trackNNN.tif)")
    p.add_argument("out_dir", type=Path, help="CTC result folder to write (maskNNN.tif + txt)")
    p.add_argument(
        "--diameter",
        type=_positive,
        default=None,
        metavar="PX",
        help="nucleus diameter in pixels (default: median equivalent diameter of the objects)",
    )
    p.set_defaults(func=cmd_baseline_laptrack)

    p = _command(sub, "bench", "per-stage timings and memory of a simulated run")
    _sim_args(p, frames_default=30)
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

    p = _command(sub, "tui", "the monitoring dashboard for a running worker and/or a DB")
    p.add_argument(
        "--db", type=Path, default=Path("livetrack.db"), help="SQLite database (history)"
    )
    p.add_argument(
        "--connect",
        default="tcp://127.0.0.1:5558",
        metavar="ENDPOINT",
        help="worker events endpoint to subscribe to (live); 'none' for the DB only",
    )
    p.add_argument("--run-id", default=None, help="run to show (default: the live or newest run)")
    p.set_defaults(func=cmd_tui)
    return parser


# ------------------------------------------------------------------- helpers
class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not at setup)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(args: argparse.Namespace, console: Any | None = None) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("livetrack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _sim_config(args: argparse.Namespace) -> Any:
    from simulators.nuclei import SimulationConfig

    presets: dict[str, Callable[[], SimulationConfig]] = {
        "default": SimulationConfig,
        "sim-plus": SimulationConfig.like_sim_plus,
        "gowt1": SimulationConfig.like_gowt1,
    }
    base = presets[args.preset]()
    update: dict[str, Any] = {"seed": args.seed, "n_frames": args.frames}
    if args.cells is not None:
        update["n_cells"] = args.cells
    if args.size is not None:
        update["height"], update["width"] = args.size
    if args.diameter is not None:
        update["nucleus_diameter_px"] = args.diameter
    return SimulationConfig(**{**base.model_dump(), **update})


def _sim_run_id(cfg: Any) -> str:
    return f"sim-s{cfg.seed}-{cfg.height}x{cfg.width}-c{cfg.n_cells}-f{cfg.n_frames}"


def _settings(args: argparse.Namespace) -> Any:
    from livetrack.config import load_settings

    segment: dict[str, Any] = {
        "nucleus_diameter_px": getattr(args, "nucleus_diameter", None),
        "method": getattr(args, "segmenter", None),
        "model_dir": getattr(args, "segment_model", None),
    }
    worker: dict[str, Any] = {}
    if getattr(args, "events", None):
        worker["events_endpoint"] = args.events
    if getattr(args, "frames_endpoint", None):
        worker["frames_endpoint"] = args.frames_endpoint
    if getattr(args, "allow_remote", False):
        worker["allow_remote"] = True
    if getattr(args, "exit_on_eos", False):
        worker["exit_on_eos"] = True
    store = {"path": args.db} if getattr(args, "db", None) is not None else {}
    track_model = getattr(args, "track_model", None)
    track = {
        "method": getattr(args, "tracker", None),
        "model_dir": str(track_model) if track_model is not None else None,
    }
    return load_settings(
        getattr(args, "config", None), segment=segment, worker=worker, store=store, track=track
    )


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM: finish the current frame, close cleanly, exit 0. The previous
    handlers come back afterwards (the CLI is also called in-process by tests)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        log.warning("stopping after the current frame (again to force)")
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Progress:
    """Frame progress on stderr: a rich bar on a terminal, a log line every few seconds
    otherwise (CI logs, nohup)."""

    def __init__(self, total: int | None, label: str) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.total = total
        self.label = label
        self.done = 0
        self.cells = 0
        self.events = 0
        self.rejected = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, result: Any) -> None:
        if result.status == "stored":
            self.done += 1
            self.cells = result.n_cells
            self.events += result.n_events
        elif result.status == "rejected":
            self.rejected += 1
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        info = f"{rate:5.1f} fr/s · {self.cells} cells · {self.events} events"
        if self.rejected:
            info += f" · [red]{self.rejected} rejected[/red]"
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, info=info)
        elif time.monotonic() - self._last_line > 5 or self.done == self.total:
            self._last_line = time.monotonic()
            total = f"/{self.total}" if self.total else ""
            print(f"{self.label}: frame {self.done}{total} · {info}", file=sys.stderr, flush=True)


def _print_summary(summary: Any, source: Any = None) -> None:
    c = summary.counts
    print(
        f"run {summary.run_id}: {summary.frames_stored} frames stored"
        f" ({summary.frames_rejected} rejected, {summary.frames_duplicate} already stored)"
        f" in {summary.seconds:.1f} s → {summary.db_path}"
    )
    if c:
        print("  " + ", ".join(f"{k}: {v}" for k, v in c.items()))
    if summary.stage_ms:
        print(
            "  median ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.stage_ms.items())
        )
    from livetrack.source import Skipping

    skipped = list(source.skipped) if isinstance(source, Skipping) else []
    if skipped:
        # CTC replay records (frame, why), movies (position, frame, why).
        where = [str(s[0]) if len(s) == 2 else f"{s[0]}/{s[1]}" for s in skipped]
        shown = ", ".join(where[:10]) + (f" (+{len(where) - 10} more)" if len(where) > 10 else "")
        print(f"  {len(skipped)} frame(s) could not be read and were skipped: {shown} (see log)")


def _print_resume_hint(summary: Any) -> None:
    """The hint depends on what the store says, not on how far the driver got: a driver
    that handed every frame to the socket before Ctrl-C still leaves an unfinished run."""
    if summary.resumable:
        print(
            f"stopped early: run {summary.run_id} is unfinished"
            f" ({summary.frames_stored} frames stored this time);"
            " run the same command again to resume it"
        )


def _run_source(args: argparse.Namespace, source: Any, description: str, base_run_id: str) -> int:
    from livetrack.runner import choose_run_id, run_pipeline
    from livetrack.store import Store
    from livetrack.worker import run_config

    settings = _settings(args)
    db = settings.store.path
    with Store(db, config=settings.store) as store:
        run_id = args.run_id or choose_run_id(store, base_run_id)
        store.check_run_free(run_id)  # before the source starts (a microscope, say)
        store.check_resume(run_id, run_config(settings))
    if not args.no_tui and sys.stdout.isatty() and sys.stderr.isatty():
        return _run_with_tui(args, source, description, run_id, settings)
    stop = threading.Event()
    progress = _Progress(source.total_frames, run_id)
    _setup_logging(args, progress.console if progress.interactive else None)
    with _stop_on_signals(stop), progress:
        summary = run_pipeline(
            source,
            settings,
            description=description,
            run_id=run_id,
            db_path=db,
            stop=stop,
            on_frame=progress.update,
            on_ready=lambda ep: log.info("publishing events on %s", ep),
        )
    _raise_if_nothing_stored(summary)
    _print_summary(summary, source)
    _print_resume_hint(summary)
    _raise_if_source_failed(summary)
    return 0


def _source_failure(summary: Any) -> LivetrackError | None:
    """The error that ended the source's stream, if one did (typed, from the driver)."""
    pump = summary.pump
    if pump is None or pump.reason != "error":
        return None
    return pump.error or LivetrackError(pump.message or "the frame source failed")


def _raise_if_nothing_stored(summary: Any) -> None:
    """A run that could not start, or ended without storing a frame, is a failure: its
    error alone, no summary of nothing and no resume hint (the same command would fail
    the same way). A run stopped by the user is not a failure."""
    if summary.frames_stored or summary.frames_duplicate:
        return
    failure = _source_failure(summary)
    if failure is not None:
        raise failure
    if summary.pump is not None and summary.pump.reason == "complete":
        raise LivetrackError(
            f"run {summary.run_id} stored no frames ({summary.pump.frames_sent} sent, "
            f"{summary.frames_rejected} rejected by the worker; see the log)"
        )


def _raise_if_source_failed(summary: Any) -> None:
    """After the summary of what was stored: a source that failed mid-run still makes
    the command fail."""
    failure = _source_failure(summary)
    if failure is not None:
        raise failure


def _tui_logging(args: argparse.Namespace, app: Any) -> None:
    """While Textual owns the terminal, log records go to the dashboard (warnings become
    notifications) instead of stderr."""
    from livetrack.tui import TuiLogHandler

    _setup_logging(args)
    logging.getLogger("livetrack").handlers[:] = [TuiLogHandler(app)]


def _run_with_tui(
    args: argparse.Namespace, source: Any, description: str, run_id: str, settings: Any
) -> int:
    """The dashboard owns the main thread; the pipeline runs beside it. Quitting the
    dashboard stops the pipeline; a pipeline that ends leaves the dashboard open."""
    from livetrack.runner import run_pipeline
    from livetrack.tui import make_app

    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def pipeline(app: Any) -> None:
        try:
            summary = run_pipeline(
                source,
                settings,
                description=description,
                run_id=run_id,
                db_path=settings.store.path,
                stop=stop,
                on_ready=app.attach_endpoint,
            )
        except Exception as err:  # shown in the dashboard, re-raised after it closes
            outcome["error"] = err
            app.pipeline_finished(f"run {run_id} failed: {err}", error=True)
            return
        outcome["summary"] = summary
        failure = _source_failure(summary)
        if failure is not None:
            app.pipeline_finished(f"run {run_id} failed: {failure}; q quits", error=True)
            return
        app.pipeline_finished(
            f"run {run_id} finished: {summary.frames_stored} frames stored; q quits"
        )

    def start(app: Any) -> None:
        thread = threading.Thread(target=pipeline, args=(app,), name="livetrack-pipeline")
        outcome["thread"] = thread
        thread.start()

    app = make_app(db_path=settings.store.path, run_id=run_id, stop=stop, on_start=start)
    _tui_logging(args, app)
    try:
        app.run()
    finally:
        stop.set()
        if "thread" in outcome:
            outcome["thread"].join()
        _setup_logging(args)
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome.get("summary")
    if summary is not None:
        _raise_if_nothing_stored(summary)
        _print_summary(summary, source)
        _print_resume_hint(summary)
        _raise_if_source_failed(summary)
    return 0


# ------------------------------------------------------------------ commands
def cmd_tui(args: argparse.Namespace) -> int:
    from livetrack.tui import make_app

    endpoint = None if args.connect.lower() == "none" else args.connect
    app = make_app(db_path=args.db, endpoint=endpoint, run_id=args.run_id)
    _tui_logging(args, app)
    app.run()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from drivers.simulator import SimulatorSource

    if args.source == "mmcore":
        return _run_mmcore(args)
    if args.source == "micromanager":
        return _run_micromanager(args)
    if args.mda is not None:
        raise ConfigError("--mda is a plan for --source mmcore or --source micromanager")
    if args.frames == 0:
        raise ConfigError(
            "--frames 0 (acquire until Ctrl-C) is for --source micromanager; "
            "a simulated movie needs --frames 1 or more"
        )
    cfg = _sim_config(args)
    source = SimulatorSource(cfg, interval_s=args.interval, with_labels=args.track_only)
    return _run_source(args, source, source.describe(), _sim_run_id(cfg))


def _run_micromanager(args: argparse.Namespace) -> int:
    from drivers.micromanager import (
        DEMO_CONFIG,
        AcquisitionPlan,
        parse_position,
        parse_property,
    )

    demo = not args.mm_java and args.mm_app_path is None
    if demo:
        log.info("no --mm-app-path: using the DemoCamera from mm-test-adapters (%s)", DEMO_CONFIG)
    properties = [parse_property(t) for t in args.mm_property]
    if demo and not properties:
        properties = [("Camera", "Mode", "Fluorescent Beads")]
    if args.mda is not None:
        from drivers.useq_plan import load_sequence, to_acquisition_plan

        # The same useq plan as --source mmcore; what pycromanager's plan cannot express
        # is refused by name.
        return _acquire_micromanager(
            args, to_acquisition_plan(load_sequence(args.mda), tuple(properties))
        )
    plan = AcquisitionPlan(
        n_frames=args.frames or None,
        interval_s=args.interval,
        positions=tuple(parse_position(t, i) for i, t in enumerate(args.positions or [])),
        channel_group=args.channel_group if args.channel else None,
        channels=tuple(args.channel or ()),
        exposure_ms=args.exposure,
        z_um=tuple(args.z or ()),
        properties=tuple(properties),
    )
    return _acquire_micromanager(args, plan)


def _acquire_micromanager(args: argparse.Namespace, plan: Any) -> int:
    from drivers.micromanager import MicroManagerSource

    source = MicroManagerSource(
        plan,
        backend="java" if args.mm_java else "python",
        mm_app_path=args.mm_app_path,
        config_file=args.mm_config,
        port=args.mm_port,
        queue_size=args.queue_size,
        policy=args.overflow,
        save_dir=args.save_dir,
        hardware_timeout_s=args.hardware_timeout,
    )
    try:
        code = _run_source(args, source, source.describe(), "mm-java" if args.mm_java else "mm")
    except LivetrackError:
        if source.delivered:
            print(f"  micromanager: {source.summary()}")
        raise
    print(f"  micromanager: {source.summary()}")
    return code


def _run_mmcore(args: argparse.Namespace) -> int:
    """--source mmcore: a useq plan on pymmcore-plus. The config is loaded and the plan
    checked against it before the run starts, so a bad channel or position fails here."""
    from drivers.micromanager import parse_property
    from drivers.mmcore import DEMO_CONFIG, MMCoreSource
    from drivers.useq_plan import load_sequence

    if args.mda is None:
        raise ConfigError("--source mmcore needs --mda PLAN (a useq MDASequence .yaml/.json)")
    if args.overflow != "block":
        raise ConfigError(
            "--source mmcore pauses the MDA while the worker lags (nothing dropped); "
            "--overflow drop-* is for --source micromanager"
        )
    demo = args.mm_app_path is None and args.mm_config is None
    if demo:
        log.info("no --mm-app-path: using the DemoCamera from mm-test-adapters (%s)", DEMO_CONFIG)
    properties = [parse_property(t) for t in args.mm_property]
    if demo and not properties:
        properties = [("Camera", "Mode", "Fluorescent Beads")]
    source = MMCoreSource(
        load_sequence(args.mda),
        mm_app_path=args.mm_app_path,
        config_file=args.mm_config,
        segment_channel=args.segment_channel,
        queue_size=args.queue_size,
        frame_timeout_s=args.frame_timeout,
        properties=tuple(properties),
        save_to=args.mda_save,
    )
    source.prepare()
    try:
        code = _run_source(args, source, source.describe(), f"mmcore-{args.mda.stem}")
    finally:
        source.close()
    print(f"  mmcore: {source.summary()}")
    if source.error is not None:
        print(f"livetrack run: error: {source.error}", file=sys.stderr)
        return 1
    return code


def cmd_replay(args: argparse.Namespace) -> int:
    from drivers.replay import CTCReplaySource, open_movie

    source = open_movie(
        args.seq_dir,
        masks_dir=args.masks,
        axes=args.axes,
        channel=args.channel,
        z=args.z,
        pixel_size_um=args.pixel_size,
        position=args.position,
        fps=args.fps,
        realtime=args.realtime,
    )
    name = (source.position if isinstance(source, CTCReplaySource) else None) or (
        args.seq_dir.name.split(".")[0]
    )
    base = f"replay-{name}" + ("-masks" if args.masks else "")
    return _run_source(args, source, source.describe(), base)


def cmd_worker(args: argparse.Namespace) -> int:
    from livetrack.runner import open_publisher
    from livetrack.store import Store
    from livetrack.transport import FramePuller
    from livetrack.worker import Worker

    _setup_logging(args)
    settings = _settings(args)
    stop = threading.Event()
    w = settings.worker
    curve = _curve_server(args)
    db = settings.store.path
    store = Store(db, config=settings.store)  # first: a bad database stops nothing bound
    try:
        puller = FramePuller(
            w.frames_endpoint, hwm=w.receive_hwm, allow_remote=w.allow_remote, curve=curve
        )
    except LivetrackError:
        store.close()
        raise
    try:
        publisher = open_publisher(w.events_endpoint, allow_remote=w.allow_remote, curve=curve)
    except LivetrackError:
        puller.close()
        store.close()
        raise

    def report(result: Any) -> None:
        if result.status == "stored":
            log.info(
                "%s frame %d: %d cells, %d events (%s)",
                result.position,
                result.frame_index,
                result.n_cells,
                result.n_events,
                ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items()),
            )

    worker = Worker(settings, store, puller, publisher, on_frame=report)
    log.info("worker ready: frames %s, events %s, db %s", puller.endpoint, publisher.endpoint, db)
    try:
        with _stop_on_signals(stop):
            worker.run(stop)
    finally:
        worker.abort_open_runs()
        puller.close()
        publisher.close(linger_s=1.0)  # let the last acknowledgement out
        store.close()
    print(
        f"worker stopped: {worker.frames_processed} frames stored, "
        f"{worker.frames_rejected} rejected"
    )
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from drivers.simulator import SimulatorSource
    from livetrack.pump import pump
    from livetrack.transport import AckedPusher

    _setup_logging(args)
    cfg = _sim_config(args)
    source = SimulatorSource(cfg, interval_s=args.interval, with_labels=args.track_only)
    stop = threading.Event()
    pusher = _driver_pusher(args, stop)
    run_id = args.run_id or _sim_run_id(cfg)
    log.info("streaming %s to %s as run %s", source.describe(), args.connect, run_id)
    try:
        with _stop_on_signals(stop):
            result = pump(source, pusher, run_id, description=source.describe(), stop=stop)
    finally:
        # Waits (up to the linger time) until the queued frames and the end-of-stream
        # left: exiting earlier loses them.
        flushed = pusher.close()
    extra = f", {result.frames_dropped} dropped" if result.frames_dropped else ""
    if isinstance(pusher, AckedPusher):
        extra += f", {pusher.resent} re-sent after worker restarts"
    delivery, delivered = _delivery_summary(result, pusher, flushed)
    print(f"sent {result.frames_sent} frames ({result.reason}{extra}); {delivery}")
    if result.reason == "error" or (result.reason == "complete" and not delivered):
        return 1
    return 0


def _delivery_summary(result: Any, pusher: Any, flushed: bool | None) -> tuple[str, bool]:
    """What the sender knows about delivery: frames the worker confirmed (--acks), or
    only frames handed to the socket (plain); and whether everything is accounted for."""
    from livetrack.transport import AckedPusher

    if isinstance(pusher, AckedPusher):
        missing = pusher.unconfirmed()
        confirmed = f"the worker confirmed {pusher.frames_confirmed} of them"
        if pusher.rejected:
            shown = "; ".join(pusher.rejected[:5]) + (
                f" (+{len(pusher.rejected) - 5} more)" if len(pusher.rejected) > 5 else ""
            )
            confirmed += f", rejected {len(pusher.rejected)} as bad input ({shown})"
        if not missing:
            return f"{confirmed} and the end-of-stream", True
        shown = ", ".join(missing[:20]) + (
            f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""
        )
        return f"{confirmed}; NOT confirmed: {shown}", False
    eos = "the end-of-stream" if pusher.eos_handed else "no end-of-stream"
    if flushed is False:
        return (
            f"{pusher.frames_handed} frames and {eos} handed to the socket, but the last "
            "queued ones never reached the worker (see the warning above)",
            False,
        )
    return (
        f"{pusher.frames_handed} frames and {eos} handed to the worker's connection; "
        "not confirmed by the worker (use --acks for confirmed delivery)",
        pusher.eos_handed,
    )


def _curve_server(args: argparse.Namespace) -> Any:
    from livetrack.transport import curve_server

    if (args.curve_secret is None) != (args.curve_clients is None):
        raise LivetrackError("CURVE needs both --curve-secret and --curve-clients")
    if args.curve_secret is None:
        return None
    return curve_server(args.curve_secret, args.curve_clients)


def _driver_pusher(args: argparse.Namespace, stop: threading.Event) -> Any:
    """A plain FramePusher, or with --acks an AckedPusher that survives worker restarts."""
    from livetrack.transport import AckedPusher, EventSubscriber, FramePusher, curve_client

    if (args.curve_secret is None) != (args.curve_server is None):
        raise LivetrackError("CURVE needs both --curve-secret and --curve-server")
    curve = None
    if args.curve_secret is not None:
        curve = curve_client(args.curve_secret, args.curve_server)
    remote = curve is not None
    pusher = FramePusher(args.connect, stop=stop, curve=curve, allow_remote=remote)
    if args.acks is None:
        return pusher
    acks = EventSubscriber(
        args.acks, topics=("committed", "status", "rejected"), curve=curve, allow_remote=remote
    )
    return AckedPusher(
        pusher,
        acks,
        max_unacked=args.max_unacked,
        overflow=args.when_full,
        resend_after_s=args.resend_after,
    )


def cmd_keys(args: argparse.Namespace) -> int:
    from livetrack.transport import write_keypair

    _setup_logging(args)
    public, secret = write_keypair(args.out_dir, args.name)
    print(f"wrote {public} (give it to the other side) and {secret} (keep it private; mode 0600)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.nuclei import write_ctc

    _setup_logging(args)
    cfg = _sim_config(args)
    seq = write_ctc(cfg, args.out_dir, sequence=args.sequence)
    print(f"wrote {cfg.n_frames} frames with ground truth to {seq} and {seq}_GT")
    return 0


def cmd_train_segment(args: argparse.Namespace) -> int:
    from livetrack.training.segment import CtcSource, TrainConfig, train

    _setup_logging(args)
    cfg = TrainConfig(
        seed=args.seed,
        steps=args.steps,
        sim_movies=args.sim_movies,
        ctc=tuple(CtcSource.parse(c) for c in args.ctc),
        threads=args.threads,
        recipe=args.recipe,
    )
    info = train(cfg, args.out_dir)
    print(f"trained on {info['frames']} frames in {info['wall_s']} s → {args.out_dir}")
    return 0


def cmd_train_track(args: argparse.Namespace) -> int:
    from livetrack.training.segment import CtcSource
    from livetrack.training.track import TrackTrainConfig, train

    _setup_logging(args)
    if not 0.0 <= args.ctc_fraction <= 1.0:
        raise LivetrackError(f"--ctc-fraction must be in [0, 1], got {args.ctc_fraction}")
    cfg = TrackTrainConfig.for_recipe(
        args.recipe,
        seed=args.seed,
        steps=args.steps,
        sim_movies=args.sim_movies,
        val_movies=args.val_movies,
        ctc=tuple(CtcSource.parse(c) for c in args.ctc),
        ctc_fraction=args.ctc_fraction,
        threads=args.threads,
    )
    info = train(cfg, args.out_dir)
    print(
        f"trained on {info['frames']} frames in {info['wall_s']} s; thresholds chosen on the "
        f"validation movies: {info['thresholds']} → {args.out_dir}"
    )
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from livetrack.training.finetune import FinetuneConfig, finetune_segmenter, finetune_tracker
    from livetrack.training.segment import CtcSource

    _setup_logging(args)
    if not 0.0 <= args.replay < 1.0:
        raise LivetrackError(f"--replay must be in [0, 1), got {args.replay}")
    cfg = FinetuneConfig(
        ctc=tuple(CtcSource.parse(c) for c in args.ctc),
        base=args.base,
        seed=args.seed,
        steps=args.steps,
        replay=args.replay,
        partial=getattr(args, "partial", False),
        threads=args.threads,
        command=("livetrack", *sys.argv[1:]),
    )
    run = finetune_segmenter if args.model == "segment" else finetune_tracker
    console = Console(stderr=True)
    with Progress(
        TextColumn(f"[bold]fine-tuning the {args.model} model"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("finetune", total=cfg.steps, loss="–")
        last = [0.0]

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, loss=f"{loss:.4f}")
            if not console.is_terminal and (time.monotonic() - last[0] > 10 or step == total):
                last[0] = time.monotonic()
                print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

        info = run(cfg, args.out_dir, progress)
    used = sum(len(d["frames"]) for d in info["finetune"]["data"])
    print(
        f"fine-tuned the {args.model} model on {used} corrected frames in {info['wall_s']} s "
        f"→ {args.out_dir}"
    )
    return 0


def _plot_command(sub: Any) -> None:
    """``livetrack plot lineage|summary|overlay DB --out FILE`` (pictures: livetrack.plot)."""
    p = _command(
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
        q = _command(kinds, name, summary)
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
            q.add_argument("--fps", type=_positive, default=5.0, help="frames per second")
        q.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from livetrack.plot import plot_stored

    _setup_logging(args)
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

    _setup_logging(args)
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

    _setup_logging(args)
    result = evaluate_ctc(args.res_dir, args.gt_dir, frame_tolerance=args.tolerance)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_table(result, title=f"{args.res_dir} vs {args.gt_dir}"))
    return 0


def cmd_baseline_laptrack(args: argparse.Namespace) -> int:
    """Read label masks the way ``replay --masks`` does, track them with laptrack, write
    a CTC result with the masks' zero padding."""
    import numpy as np

    from drivers.replay import _MASK_RE, _read_2d, index_files
    from livetrack.evaluate.baselines import (
        count_divisions,
        track_with_laptrack,
        write_ctc_result,
    )

    _setup_logging(args)
    started = time.perf_counter()
    files = index_files(args.mask_dir, _MASK_RE)
    if not files:
        raise LivetrackError(f"{args.mask_dir} holds no label masks (e.g. man_track000.tif)")
    if list(files) != list(range(len(files))):
        missing = sorted(set(range(max(files) + 1)) - set(files))
        raise LivetrackError(f"{args.mask_dir}: frames must be 0..N-1; missing {missing[:5]}")
    masks = []
    for path in files.values():
        arr = _read_2d(path)
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise LivetrackError(f"{path.name} is not a label image (fractional values)")
        masks.append(arr.astype(np.int64))
    numbers = (_MASK_RE.match(path.name) for path in files.values())
    digits = max(len(m.group(1)) for m in numbers if m is not None)  # the GT's zero padding
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
    from drivers.replay import open_movie
    from livetrack.benchmark import DEFAULT_PIPELINES, load_suite, rule_violations, run_benchmark

    _setup_logging(args)
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
        settings=_settings(args),
        on_progress=progress,
    )
    print((args.out / "benchmark.md").read_text(), end="")
    print(f"→ {args.out / 'benchmark.md'}, {args.out / 'benchmark.json'} ({len(rows)} rows)")
    return 1 if args.check and rule_violations(rows) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from drivers.simulator import SimulatorSource
    from livetrack.bench import run_bench

    _setup_logging(args)
    if args.positions is not None:
        from livetrack.bench import run_positions_bench
        from livetrack.config import load_settings

        if args.positions < 1:
            raise LivetrackError(f"--positions must be at least 1, got {args.positions}")
        pb = run_positions_bench(
            _sim_config(args),
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

        soak = run_soak(_sim_config(args), SimulatorSource, track_only=args.track_only)
        print(json.dumps(soak) if args.json else format_soak(soak))
        return 0
    from livetrack.config import load_settings

    settings = load_settings(segment={"method": args.segmenter})
    report = run_bench(
        _sim_config(args),
        SimulatorSource,
        transport_frames=args.transport_frames,
        settings=settings,
    )
    print(json.dumps(report) if args.json else report_text(report))
    return 0


def report_text(report: dict[str, Any]) -> str:
    from livetrack.bench import format_report

    return format_report(report)


# ---------------------------------------------------------------------- main
_OPTION_OF_FIELD = {
    ("SimulationConfig", "n_frames"): "--frames",
    ("SimulationConfig", "seed"): "--seed",
    ("SimulationConfig", "n_cells"): "--cells",
    ("SimulationConfig", "height"): "--size H",
    ("SimulationConfig", "width"): "--size W",
    ("SimulationConfig", "nucleus_diameter_px"): "--diameter",
}
"""Model fields a command-line option sets directly: errors name the option, not the
internal field."""


def _invalid_options(err: ValidationError) -> str:
    """A ValidationError as one line, each problem under the option that set the value
    (``--frames: Input should be ≥ 1 (got 0)``), else under its field name."""
    parts = []
    all_options = True
    for e in err.errors():
        loc = tuple(str(x) for x in e.get("loc", ()))
        option = _OPTION_OF_FIELD.get((err.title, loc[0])) if len(loc) == 1 else None
        all_options = all_options and option is not None
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{option or '.'.join(loc) or 'value'}: {msg} (got {e.get('input')!r})")
    return ("" if all_options else "invalid setting: ") + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except LivetrackError as err:
        print(f"livetrack {args.command}: error: {err}", file=sys.stderr)
        return 1
    except ValidationError as err:  # a setting out of range that argparse let through
        print(f"livetrack {args.command}: error: {_invalid_options(err)}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"livetrack {args.command}: error: {err.filename}: not found", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"livetrack {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
