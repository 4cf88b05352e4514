"""Commands that acquire or replay frames and track them: run, replay, worker, sim, keys,
tui. The composition root: the only part of livetrack that imports the drivers."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from livetrack.cli.args import (
    Subcommands,
    command,
    delivery_args,
    mm_args,
    mmcore_args,
    non_negative,
    pipeline_args,
    positive,
    sim_args,
    source_args,
)
from livetrack.cli.common import (
    run_source,
    settings_of,
    setup_logging,
    sim_config,
    sim_run_id,
    stop_on_signals,
    tui_logging,
)
from livetrack.errors import ConfigError, LivetrackError

if TYPE_CHECKING:
    from livetrack.drivers.micromanager import AcquisitionPlan
    from livetrack.messages import Published
    from livetrack.pump import PumpResult
    from livetrack.transport import AckedPusher, CurveServer, EventSubscriber, FramePusher
    from livetrack.worker import FrameResult

log = logging.getLogger("livetrack")


def add_parsers(sub: Subcommands) -> None:
    p = command(
        sub,
        "run",
        "track live: a simulated movie (default) or a Micro-Manager microscope "
        "(--source micromanager) → worker → SQLite, in one process",
        "Acquire frames and track them as they arrive: from the simulator (default) or "
        "from Micro-Manager (--source micromanager: the DemoCamera, your install with "
        "--mm-app-path, or a running Studio with --mm-java). Segmentation, tracking and "
        "the SQLite store run in the same process.",
    )
    source_args(p)
    g = sim_args(p, title="simulated movie (--source simulator)", frames=False)
    g.add_argument(
        "--track-only",
        action="store_true",
        help="send the simulator's ground-truth masks and only track them",
    )
    mm_args(p)
    mmcore_args(p)
    pipeline_args(p)
    p.set_defaults(func=cmd_run)

    p = command(
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
        type=positive,
        default=None,
        dest="pixel_size",
        metavar="UM",
        help="µm per pixel (default: from the TIFF tags or the OME-Zarr scale)",
    )
    g.add_argument(
        "--fps",
        type=positive,
        default=None,
        help="time points per second (default: as fast as possible)",
    )
    g.add_argument(
        "--position", default=None, help="position name (default: from the folder or file)"
    )
    pipeline_args(p)
    p.set_defaults(func=cmd_replay)

    p = command(sub, "worker", "run the worker alone (frames in, SQLite + events out)")
    pipeline_args(p)
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

    p = command(sub, "sim", "stream the simulator to a running worker")
    sim_args(p)
    g = p.add_argument_group("streaming")
    g.add_argument(
        "--connect",
        default="tcp://127.0.0.1:5557",
        metavar="ENDPOINT",
        help="the worker's frames endpoint",
    )
    g.add_argument(
        "--interval", type=non_negative, default=0.0, metavar="S", help="seconds between frames"
    )
    g.add_argument("--run-id", default=None, help="run id (default: from the seed and size)")
    g.add_argument("--track-only", action="store_true", help="send ground-truth masks too")
    delivery_args(p)
    p.set_defaults(func=cmd_sim)

    p = command(
        sub,
        "use-model",
        "switch a running worker (run, replay or worker) to another segmentation and/or "
        "tracking model, between two frames",
        "Ask a running worker to segment (MODEL_DIR) and/or track (--track-model) with other "
        "models from its next frame on — ones fine-tuned on this run's corrected frames "
        "(livetrack finetune), say. The worker loads and checks the models first and keeps "
        "its own when it cannot; this command waits for its answer and exits 1 on a refusal "
        "or no answer. Open tracks go on across the switch. The database records which "
        "models produced each frame (table frame_models), and the runs open at the switch "
        "record it: a worker restarted on such a run goes on with the switched models.",
    )
    p.add_argument(
        "model_dir",
        type=Path,
        nargs="?",
        default=None,
        metavar="MODEL_DIR",
        help="segmentation model folder (config.json + weights.pt) as the worker's machine sees it",
    )
    p.add_argument(
        "--track-model",
        type=Path,
        default=None,
        metavar="DIR",
        help="tracking (lstm) model folder, as the worker's machine sees it (livetrack "
        "finetune track writes one)",
    )
    g = p.add_argument_group("the worker")
    g.add_argument(
        "--connect",
        default=None,
        metavar="ENDPOINT",
        help="the worker's frames endpoint, where the request travels between its frames "
        "(default: the one the worker announces on its events endpoint)",
    )
    g.add_argument(
        "--events",
        default="tcp://127.0.0.1:5558",
        metavar="ENDPOINT",
        help="the worker's events endpoint (where its answer comes)",
    )
    g.add_argument(
        "--timeout",
        type=positive,
        default=60.0,
        metavar="S",
        help="seconds to wait for the worker and its answer (loading a model takes a moment)",
    )
    g.add_argument(
        "--curve-secret", type=Path, default=None, metavar="FILE", help="this client's secret key"
    )
    g.add_argument(
        "--curve-server", type=Path, default=None, metavar="FILE", help="the worker's public key"
    )
    p.set_defaults(func=cmd_use_model)

    p = command(sub, "keys", "create a CURVE keypair for remote endpoints")
    p.add_argument("out_dir", type=Path, help="folder to write the key files into")
    p.add_argument("--name", default="livetrack", help="file names: NAME.public, NAME.secret")
    p.set_defaults(func=cmd_keys)


def add_tui_parser(sub: Subcommands) -> None:
    p = command(sub, "tui", "the monitoring dashboard for a running worker and/or a DB")
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


def cmd_tui(args: argparse.Namespace) -> int:
    from livetrack.tui import make_app

    endpoint = None if args.connect.lower() == "none" else args.connect
    app = make_app(db_path=args.db, endpoint=endpoint, run_id=args.run_id)
    tui_logging(args, app)
    app.run()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from livetrack.drivers.simulator import SimulatorSource

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
    cfg = sim_config(args)
    source = SimulatorSource(cfg, interval_s=args.interval, with_labels=args.track_only)
    return run_source(args, source, source.describe(), sim_run_id(cfg))


def _run_micromanager(args: argparse.Namespace) -> int:
    from livetrack.drivers.micromanager import (
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
        from livetrack.drivers.useq_plan import load_sequence, to_acquisition_plan

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


def _acquire_micromanager(args: argparse.Namespace, plan: AcquisitionPlan | None) -> int:
    from livetrack.drivers.micromanager import MicroManagerSource

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
        code = run_source(args, source, source.describe(), "mm-java" if args.mm_java else "mm")
    except LivetrackError:
        if source.delivered:
            print(f"  micromanager: {source.summary()}")
        raise
    print(f"  micromanager: {source.summary()}")
    return code


def _run_mmcore(args: argparse.Namespace) -> int:
    """--source mmcore: a useq plan on pymmcore-plus. The config is loaded and the plan
    checked against it before the run starts, so a bad channel or position fails here."""
    from livetrack.drivers.micromanager import parse_property
    from livetrack.drivers.mmcore import DEMO_CONFIG, MMCoreSource
    from livetrack.drivers.useq_plan import load_sequence

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
        code = run_source(args, source, source.describe(), f"mmcore-{args.mda.stem}")
    finally:
        source.close()
    print(f"  mmcore: {source.summary()}")
    if source.error is not None:
        print(f"livetrack run: error: {source.error}", file=sys.stderr)
        return 1
    return code


def cmd_replay(args: argparse.Namespace) -> int:
    from livetrack.drivers.replay import CTCReplaySource, open_movie

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
    return run_source(args, source, source.describe(), base)


def cmd_worker(args: argparse.Namespace) -> int:
    from livetrack.runner import open_publisher
    from livetrack.store import Store
    from livetrack.transport import FramePuller
    from livetrack.worker import Worker

    setup_logging(args)
    settings = settings_of(args)
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

    def report(result: FrameResult) -> None:
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
        with stop_on_signals(stop):
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
    from livetrack.drivers.simulator import SimulatorSource
    from livetrack.pump import pump
    from livetrack.transport import AckedPusher

    setup_logging(args)
    cfg = sim_config(args)
    source = SimulatorSource(cfg, interval_s=args.interval, with_labels=args.track_only)
    stop = threading.Event()
    pusher = _driver_pusher(args, stop)
    run_id = args.run_id or sim_run_id(cfg)
    log.info("streaming %s to %s as run %s", source.describe(), args.connect, run_id)
    try:
        with stop_on_signals(stop):
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


def _delivery_summary(
    result: PumpResult, pusher: FramePusher | AckedPusher, flushed: bool | None
) -> tuple[str, bool]:
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


def _curve_server(args: argparse.Namespace) -> CurveServer | None:
    from livetrack.transport import curve_server

    if (args.curve_secret is None) != (args.curve_clients is None):
        raise LivetrackError("CURVE needs both --curve-secret and --curve-clients")
    if args.curve_secret is None:
        return None
    return curve_server(args.curve_secret, args.curve_clients)


def _driver_pusher(args: argparse.Namespace, stop: threading.Event) -> FramePusher | AckedPusher:
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


def cmd_use_model(args: argparse.Namespace) -> int:
    import time
    import uuid

    from livetrack.messages import ModelAnswer, UseModel, WorkerStatus
    from livetrack.transport import EventSubscriber, FramePusher, curve_client

    setup_logging(args)
    if (args.curve_secret is None) != (args.curve_server is None):
        raise LivetrackError("CURVE needs both --curve-secret and --curve-server")
    curve = None
    if args.curve_secret is not None:
        curve = curve_client(args.curve_secret, args.curve_server)
    remote = curve is not None
    if args.model_dir is None and args.track_model is None:
        raise LivetrackError("name a segmentation MODEL_DIR, a --track-model DIR or both")

    def named(folder: Path | None) -> str | None:
        if folder is None:
            return None
        folder = folder.expanduser()
        if folder.exists():  # on this machine: name it absolutely, the worker's cwd may differ
            folder = folder.absolute()
        return str(folder)

    request = UseModel(
        segment_model=named(args.model_dir),
        track_model=named(args.track_model),
        request_id=uuid.uuid4().hex[:12],
    )
    deadline = time.monotonic() + args.timeout
    events = EventSubscriber(
        args.events, topics=("model", "status"), curve=curve, allow_remote=remote
    )
    pusher: FramePusher | None = None
    try:
        # A subscription receives only once connected: wait for the worker's heartbeat
        # first (it also says where the worker takes frames), so that its answer cannot
        # be published before we listen.
        status = _next_event(events, deadline)
        while not isinstance(status, WorkerStatus):
            if time.monotonic() >= deadline:
                raise LivetrackError(
                    f"no worker heard on {args.events} within {args.timeout:g} s "
                    "(is livetrack run/replay/worker running there?)"
                )
            status = _next_event(events, deadline)
        endpoint = args.connect or _reachable(status.frames_endpoint, args.events)
        if not endpoint:
            raise LivetrackError("the worker does not announce its frames endpoint: give --connect")
        pusher = FramePusher(
            endpoint, curve=curve, allow_remote=remote, send_timeout_s=args.timeout
        )
        pusher.send_use_model(request)
        while True:
            msg = _next_event(events, deadline)
            if isinstance(msg, ModelAnswer) and msg.request_id == request.request_id:
                break
            if time.monotonic() >= deadline:
                raise LivetrackError(
                    f"the worker did not answer within {args.timeout:g} s; it may still "
                    "switch (its log and the frame_models table will say)"
                )
    finally:
        if pusher is not None:
            pusher.close(linger_s=1.0)
        events.close()
    if not msg.ok:
        kept = f"{msg.segmenter} and {msg.tracker}" if msg.tracker else msg.segmenter
        raise LivetrackError(f"the worker kept {kept}: {msg.message}")
    tracking = f" and tracks with {msg.tracker}" if msg.tracker else ""
    print(f"the worker segments with {msg.segmenter}{tracking} from its next frame on")
    return 0


def _reachable(announced: str, events: str) -> str:
    """The frames endpoint a worker announced, with a wildcard host (it bound every
    interface: ``0.0.0.0``, ``*``, ``::``) replaced by the host its events were heard on."""
    scheme, sep, rest = announced.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or host not in ("0.0.0.0", "*", "[::]", "::"):
        return announced
    events_host = events.partition("://")[2].rpartition(":")[0]
    return f"{scheme}://{events_host}:{port}" if events_host else announced


def _next_event(events: EventSubscriber, deadline: float) -> Published | None:
    import time

    from livetrack.errors import BadMessage

    try:
        return events.recv(timeout_s=max(0.0, min(0.5, deadline - time.monotonic())))
    except BadMessage:
        return None  # another program's message on the channel: not ours


def cmd_keys(args: argparse.Namespace) -> int:
    from livetrack.transport import write_keypair

    setup_logging(args)
    public, secret = write_keypair(args.out_dir, args.name)
    print(f"wrote {public} (give it to the other side) and {secret} (keep it private; mode 0600)")
    return 0
