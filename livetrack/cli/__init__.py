"""The ``livetrack`` command line. The only place that configures logging and turns
library errors into messages and exit codes (0 ok, 1 livetrack error, 2 usage).

One module per group of commands, each with its parsers and its handlers: ``live`` (run,
replay, worker, sim, keys, tui), ``training`` (simulate, train, finetune), ``results``
(export, plot, evaluate, benchmark, baseline, bench); ``args`` and ``common`` hold what they
share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from livetrack import __version__
from livetrack.cli import live, results, training
from livetrack.cli.args import TopHelpFormatter
from livetrack.errors import LivetrackError

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
        formatter_class=TopHelpFormatter,
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
    live.add_parsers(sub)
    training.add_parsers(sub)
    results.add_parsers(sub)
    live.add_tui_parser(sub)
    return parser


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
