"""Commands that make training data and models: simulate, train, finetune."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from livetrack.cli.args import Subcommands, command, ctc_arg, sim_args
from livetrack.cli.common import setup_logging, sim_config
from livetrack.errors import LivetrackError

log = logging.getLogger("livetrack")


def add_parsers(sub: Subcommands) -> None:
    p = command(sub, "simulate", "write a simulated movie with ground truth (CTC layout)")
    p.add_argument(
        "out_dir", type=Path, help="folder to write NN/ (frames) and NN_GT/ (ground truth) into"
    )
    p.add_argument("--sequence", default="01", help="sequence name (folder NN)")
    sim_args(p)
    p.set_defaults(func=cmd_simulate)

    p = command(sub, "train", "train a learned model")
    train_sub = p.add_subparsers(
        dest="model", required=True, metavar="MODEL", help="the model to train"
    )
    p = command(train_sub, "segment", "the learned nucleus segmenter (seeded)")
    p.add_argument("out_dir", type=Path, help="model folder to write (config.json, weights.pt)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed = same model)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    p.add_argument("--sim-movies", type=int, default=160, help="random simulated movies")
    p.add_argument(
        "--recipe",
        choices=("v1", "v2", "v3", "v4", "v5", "v6"),
        default="v1",
        help="simulated-data recipe (v1: seg-unet-v1's; v2: seg-unet-v2's — crowded late "
        "frames, frames right after divisions, nucleoli, haze, mitotic shapes; v3: v2 plus "
        "dense colonies of small rods; v4: v2 plus faint cells in other focal planes that "
        "are background; v5: v2 plus mothers in anaphase, two lobes that are still one object; "
        "v6: v4 with the out-of-focus cells told by blur, not faintness; see docs/training.md)",
    )
    ctc_arg(p, "NN_GT/SEG masks")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=cmd_train_segment)

    p = command(train_sub, "track", "the learned (LSTM) tracker (seeded)")
    p.add_argument("out_dir", type=Path, help="model folder to write (config.json, weights.pt)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed = same model)")
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps")
    p.add_argument("--sim-movies", type=int, default=120, help="random simulated training movies")
    p.add_argument("--val-movies", type=int, default=8, help="simulated validation movies")
    ctc_arg(p, "full NN_GT/TRA masks")
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
        help="training recipe (v3: track-lstm-v3's; v4: the shipped track-lstm-v4's — "
        "shapes up to 3:1, nucleoli, haze and appearance dropout so an unfamiliar look "
        "falls back on geometry; see docs/training.md)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=cmd_train_track)

    p = command(
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
        q = command(tune_sub, name, what)
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


def cmd_simulate(args: argparse.Namespace) -> int:
    from livetrack.simulators.nuclei import write_ctc

    setup_logging(args)
    cfg = sim_config(args)
    seq = write_ctc(cfg, args.out_dir, sequence=args.sequence)
    print(f"wrote {cfg.n_frames} frames with ground truth to {seq} and {seq}_GT")
    return 0


def cmd_train_segment(args: argparse.Namespace) -> int:
    from livetrack.training.segment import CtcSource, TrainConfig, train

    setup_logging(args)
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

    setup_logging(args)
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

    setup_logging(args)
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
