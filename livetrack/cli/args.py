"""Argument types, help formatting and the option groups several commands share."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each command module adds its parsers to it."""

log = logging.getLogger("livetrack")


def number_at_least(lower: float, *, strict: bool, says: str) -> Callable[[str], float]:
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


positive = number_at_least(0.0, strict=True, says="a positive number")
"""Pixel size, frame rate, exposure, re-send delay, timeouts."""
non_negative = number_at_least(0.0, strict=False, says="0 or more")
"""Intervals."""
diameter = number_at_least(2.0, strict=True, says="more than 2 (pixels)")
"""Nucleus diameters (the segmenter and the simulator both need > 2 px)."""


def int_at_least(lower: int) -> Callable[[str], int]:
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


def port(value: str) -> int:
    n = int_at_least(1)(value)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1..65535, got {value}")
    return n


log = logging.getLogger("livetrack")


# ----------------------------------------------------------------- arguments
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
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


class TopHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top-level help: defaults, and the first-steps epilog laid out as written."""


def command(
    sub: Subcommands, name: str, summary: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` starts with what it does and shows defaults."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description or summary, formatter_class=HelpFormatter
    )
    return parser


def ctc_arg(p: argparse.ArgumentParser, masks: str) -> None:
    """The repeatable ``--ctc SEQ[:FIRST-LAST]`` training-data option."""
    p.add_argument(
        "--ctc",
        action="append",
        default=[],
        metavar="SEQ[:FIRST-LAST]",
        help=f"a CTC sequence folder with {masks}, optionally a frame range (repeat)",
    )


def sim_args(
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
            type=int_at_least(1),
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
        type=diameter,
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


def pipeline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation and tracking")
    g.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="settings file (TOML or JSON)"
    )
    g.add_argument(
        "--nucleus-diameter",
        type=diameter,
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


def source_args(p: argparse.ArgumentParser) -> None:
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
        type=int_at_least(0),
        default=50,
        metavar="N",
        help="time points: frames to simulate, or to acquire with Micro-Manager "
        "(there, 0 = until Ctrl-C)",
    )
    g.add_argument(
        "--interval",
        type=non_negative,
        default=0.0,
        metavar="S",
        help="seconds between time points (0 = as fast as the worker goes)",
    )


def mm_args(p: argparse.ArgumentParser) -> None:
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
        "--mm-port", type=port, default=4827, metavar="PORT", help="Studio server port (--mm-java)"
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
        type=positive,
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
        type=int_at_least(1),
        default=8,
        metavar="N",
        help="frames buffered before --overflow applies",
    )
    g.add_argument(
        "--hardware-timeout",
        type=positive,
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


def mmcore_args(p: argparse.ArgumentParser) -> None:
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
        type=positive,
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


def delivery_args(p: argparse.ArgumentParser) -> None:
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
        type=positive,
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
