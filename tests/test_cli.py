"""The command line end to end: simulate → run → export → evaluate, replay, errors."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livetrack.cli import build_parser, main
from livetrack.store import Store
from tests.conftest import SIM_PLUS, needs_data

SIM_ARGS = [
    "--frames",
    "14",
    "--seed",
    "5",
    "--size",
    "128",
    "128",
    "--cells",
    "8",
    "--diameter",
    "16",
]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def gt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run_cli(capsys, "simulate", tmp_path / "gt", *SIM_ARGS)
    assert code == 0, out
    return tmp_path / "gt"


def test_simulate_writes_ctc_layout(gt: Path) -> None:
    assert len(sorted((gt / "01").glob("t*.tif"))) == 14
    assert len(sorted((gt / "01_GT" / "TRA").glob("man_track*.tif"))) == 14
    assert (gt / "01_GT" / "TRA" / "man_track.txt").read_text().strip()
    assert tifffile.imread(gt / "01" / "t000.tif").dtype.name == "uint16"


def test_run_export_evaluate_scores_against_simulated_gt(
    tmp_path: Path, gt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "run.db"
    code, out, err = run_cli(
        capsys, "run", *SIM_ARGS, "--db", db, "--no-tui", "--events", "tcp://127.0.0.1:0"
    )
    assert code == 0, err
    assert "14 frames stored" in out
    with Store(db, readonly=True) as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        assert store.frame_indices(run_id, "sim") == list(range(14))
        assert store.counts(run_id)["detections"] > 14 * 4
    code, out, err = run_cli(capsys, "export", db, "--ctc", tmp_path / "res")
    assert code == 0, err
    assert len(list((tmp_path / "res").glob("mask*.tif"))) == 14
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "res", gt / "01_GT", "--json")
    assert code == 0, err
    scores = json.loads(out)
    # segmentation (the default, learned) of clean simulated nuclei: well above chance
    assert 0.5 < scores["DET"] <= 1.0
    assert 0.5 < scores["TRA"] <= 1.0
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "res", gt / "01_GT")
    assert "TRA" in out
    assert "DET" in out


def test_track_only_run_on_gt_masks_is_near_perfect(
    tmp_path: Path, gt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "t.db"
    code, _, err = run_cli(
        capsys, "run", *SIM_ARGS, "--db", db, "--track-only", "--events", "tcp://127.0.0.1:0"
    )
    assert code == 0, err
    assert run_cli(capsys, "export", db, "--ctc", tmp_path / "res")[0] == 0
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "res", gt / "01_GT", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["DET"] == pytest.approx(1.0)
    assert scores["TRA"] > 0.95


@pytest.mark.parametrize("tracker", ["lstm", "lap"])
def test_track_only_run_with_either_tracker(
    tmp_path: Path, gt: Path, capsys: pytest.CaptureFixture[str], tracker: str
) -> None:
    db = tmp_path / "t.db"
    code, _, err = run_cli(
        capsys,
        "run",
        *SIM_ARGS,
        "--db",
        db,
        "--track-only",
        "--tracker",
        tracker,
        "--events",
        "tcp://127.0.0.1:0",
    )
    assert code == 0, err
    assert run_cli(capsys, "export", db, "--ctc", tmp_path / "res")[0] == 0
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "res", gt / "01_GT", "--json")
    assert code == 0, err
    assert json.loads(out)["TRA"] > 0.95
    with Store(db, readonly=True) as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        (position,) = store.positions(run_id)
        history = store.history(run_id, position, 3)
        has_embeddings = [h.embeddings is not None for h in history]
        assert has_embeddings == [tracker == "lstm"] * 3  # what a restart needs, stored


def test_replay_with_masks_tracks_the_given_labels(
    tmp_path: Path, gt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "r.db"
    code, out, err = run_cli(
        capsys,
        "replay",
        gt / "01",
        "--masks",
        gt / "01_GT" / "TRA",
        "--db",
        db,
        "--no-tui",
        "--events",
        "tcp://127.0.0.1:0",
    )
    assert code == 0, err
    assert "14 frames stored" in out
    with Store(db, readonly=True) as store:
        run_id = store.latest_run_id()
        assert run_id == "replay-gt_01-masks"
        pos = store.positions(run_id)
        assert pos == ["gt_01"]
        first = store.runs()[0]
        assert "replay" in first["source"]


def test_same_command_after_a_finished_run_starts_a_new_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "twice.db"
    args = [
        "run",
        "--frames",
        "3",
        "--size",
        "64",
        "64",
        "--cells",
        "3",
        "--diameter",
        "12",
        "--db",
        db,
        "--events",
        "tcp://127.0.0.1:0",
    ]
    assert run_cli(capsys, *args)[0] == 0
    assert run_cli(capsys, *args)[0] == 0
    with Store(db, readonly=True) as store:
        ids = sorted(r["run_id"] for r in store.runs())
    assert ids == ["sim-s0-64x64-c3-f3", "sim-s0-64x64-c3-f3-2"]


def test_replay_skips_a_corrupt_frame_and_keeps_going(
    tmp_path: Path, gt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq = tmp_path / "seq" / "01"
    shutil.copytree(gt / "01", seq)
    (seq / "t005.tif").write_bytes(b"this is not a tiff")
    # A well-formed TIFF whose compressed pixels are garbage: the decoder (imagecodecs)
    # fails, not the TIFF parser.
    image = tifffile.imread(seq / "t007.tif")
    tifffile.imwrite(seq / "t007.tif", image, compression="zlib")
    with tifffile.TiffFile(seq / "t007.tif") as tif:
        offset, count = tif.pages.first.dataoffsets[0], tif.pages.first.databytecounts[0]
    with open(seq / "t007.tif", "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * count)
    db = tmp_path / "c.db"
    code, out, err = run_cli(capsys, "replay", seq, "--db", db, "--events", "tcp://127.0.0.1:0")
    assert code == 0, err
    assert "12 frames stored" in out
    assert "2 frame(s) could not be read and were skipped: 5, 7" in out
    assert "t005.tif" in err
    assert "cannot read t007.tif" in err
    with Store(db, readonly=True) as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        stored = store.frame_indices(run_id, "seq_01")
        assert 5 not in stored
        assert 7 not in stored
        assert 8 in stored


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "/no/such/folder"], "is not a folder"),
        (["export", "/no/such.db", "--ctc", "/tmp/x"], "no/such.db"),
        (["evaluate", "/no/res", "/no/gt"], "/no/"),
    ],
)
def test_errors_are_one_clear_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pixel-size", "-1"], "argument --pixel-size: must be a positive number, got -1"),
        (["--fps", "0"], "argument --fps: must be a positive number, got 0"),
        (["--pixel-size", "nan"], "argument --pixel-size: must be a positive number, got nan"),
        (["--nucleus-diameter", "abc"], "argument --nucleus-diameter: 'abc' is not a number"),
        (["--nucleus-diameter", "1"], "argument --nucleus-diameter: must be more than 2 (pixels)"),
    ],
)
def test_out_of_range_numbers_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(SystemExit) as exc:
        main(["replay", str(tmp_path), "--db", str(db), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not db.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["run", "--frames", "3", "--size", "0", "64"],
            "error: --size H: Input should be greater than or equal to 16 (got 0)",
        ),
        (
            ["run", "--frames", "3", "--cells", "-1"],
            "error: --cells: Input should be greater than or equal to 0 (got -1)",
        ),
    ],
)
def test_settings_out_of_range_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *argv, "--db", tmp_path / "x.db", "--no-tui")
    assert code == 1
    assert message in err
    assert "Traceback" not in err
    assert "errors.pydantic.dev" not in err


def test_bad_config_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[track]\nno_such_field = 3\n")
    code, _, err = run_cli(
        capsys, "run", "--frames", "2", "--config", cfg, "--db", tmp_path / "x.db"
    )
    assert code == 1
    assert "no_such_field" in err


def test_bench_reports_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        "bench",
        "--frames",
        "4",
        "--size",
        "96",
        "96",
        "--cells",
        "5",
        "--diameter",
        "14",
        "--transport-frames",
        "3",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert set(report["stage_ms_median"]) == {"receive", "segment", "track", "store"}
    assert all(v >= 0 for v in report["stage_ms_median"].values())
    assert report["transport_2048_uint16"]["livetrack_fps"] > 0
    assert report["peak_rss_mb"] > 0


def test_console_script_runs_as_a_separate_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "livetrack.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("livetrack ")


@needs_data
@pytest.mark.data
def test_tracking_only_replay_of_sim_plus_scores_high(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq = SIM_PLUS / "01"
    db = tmp_path / "simplus.db"
    code, _, err = run_cli(
        capsys,
        "replay",
        seq,
        "--masks",
        SIM_PLUS / "01_GT" / "TRA",
        "--db",
        db,
        "--events",
        "tcp://127.0.0.1:0",
    )
    assert code == 0, err
    assert run_cli(capsys, "export", db, "--ctc", tmp_path / "res")[0] == 0
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "res", SIM_PLUS / "01_GT", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["TRA"] > 0.95
    assert scores["division_f1"] > 0.5


def test_resuming_a_run_with_other_settings_is_refused_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One lineage comes from one pipeline: a run begun with the classical segmenter is
    not continued by the learned one (which would silently mix two segmentations)."""
    db = tmp_path / "run.db"
    common = [*SIM_ARGS, "--db", db, "--no-tui", "--events", "tcp://127.0.0.1:0"]
    code, _, err = run_cli(
        capsys, "run", *common, "--run-id", "r1", "--segmenter", "classical", "--tracker", "lap"
    )
    assert code == 0, err
    with Store(db, readonly=True) as store:
        before = (store.runs(), store.frame_indices("r1", "sim"))
    code, _, err = run_cli(capsys, "run", *common, "--run-id", "r1", "--tracker", "lap")
    assert code == 1
    assert "run 'r1' cannot be resumed with different settings" in err
    assert "segment.method: begun with 'classical', now 'learned'" in err
    with Store(db, readonly=True) as store:
        assert (store.runs(), store.frame_indices("r1", "sim")) == before


def test_a_run_begun_before_a_setting_existed_resumes_with_the_value_it_ran_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stored by a version without the division cues' weights (its config lacks
    them) goes on with the default command: the run says which value it resumes with."""
    import sqlite3

    db = tmp_path / "run.db"
    common = ["--seed", "5", "--db", db, "--no-tui", "--events", "tcp://127.0.0.1:0"]
    fast = ["--run-id", "r1", "--segmenter", "classical"]
    code, _, err = run_cli(capsys, "run", "--frames", "2", *common, *fast)
    assert code == 0, err
    with sqlite3.connect(db) as conn:  # as an older version stored it
        conn.execute(
            "UPDATE runs SET config = json_remove(config, '$.track.division_geometry_weight',"
            " '$.track.division_geometry_weight_given')"
        )
    code, _, err = run_cli(capsys, "run", "--frames", "4", *common, *fast)
    assert code == 0, err
    assert "begun before the setting track.division_geometry_weight_given existed" in err
    assert "resuming with the value it ran with, 0.5" in err
    with Store(db, readonly=True) as store:
        assert store.frame_indices("r1", "sim") == [0, 1, 2, 3]
    with sqlite3.connect(db) as conn:  # begun when segment.rescale_every defaulted to 10
        conn.execute("UPDATE runs SET config = json_set(config, '$.segment.rescale_every', 10)")
    code, _, err = run_cli(capsys, "run", "--frames", "5", *common, *fast)
    assert code == 0, err
    assert "begun with the earlier default of segment.rescale_every" in err
    assert "resuming with the value it ran with, 10" in err


def test_run_records_which_model_weights_it_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from livetrack.models import SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL

    db = tmp_path / "run.db"
    code, _, err = run_cli(
        capsys, "run", *SIM_ARGS, "--frames", "2", "--db", db, "--no-tui",
        "--events", "tcp://127.0.0.1:0",
    )  # fmt: skip
    assert code == 0, err
    with Store(db, readonly=True) as store:
        (run,) = store.runs()
    models = run["config"]["models"]
    for kind, folder in (("segment", SHIPPED_SEGMENT_MODEL), ("track", SHIPPED_TRACK_MODEL)):
        assert models[kind] == hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()


# ------------------------------------------------------- what a new user hits first
def _all_parsers(
    parser: argparse.ArgumentParser, name: str = "livetrack"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _all_parsers(sub, f"{name} {sub_name}")
    return found


def _rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of one option as ``--help`` prints it (defaults expanded)."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def test_every_option_has_help_and_shows_its_default() -> None:
    missing_help, missing_default = [], []
    for name, parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                missing_help += [f"{label} {c.dest}" for c in action._choices_actions if not c.help]
                if not action.help:
                    missing_help.append(label)
                continue
            if not (action.help or "").strip():
                missing_help.append(label)
            default = action.default
            # Nothing to show for "no value" defaults (identity: 0 is a default to show).
            shows_default = any(default is v for v in (None, False, argparse.SUPPRESS))
            shows_default = shows_default or default == []
            if action.option_strings and not shows_default:
                shows_default = "default" in _rendered_help(parser, action)
            if not shows_default:
                missing_default.append(f"{label} (default {default!r})")
    assert missing_help == []
    assert missing_default == []


def test_help_shows_defaults_and_the_source_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "--source micromanager" in top  # the microscope is visible from the top
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 50)" in text  # --frames
    assert "LIVETRACK_STORE__PATH, else livetrack.db)" in text  # --db
    for group in ("frame source:", "simulated movie (--source simulator):"):
        assert group in text
    assert "Micro-Manager (--source micromanager):" in text
    assert "segmentation and tracking:" in text
    # the two diameters say which is which
    assert "simulated nuclei in pixels: shapes the movie, not the segmenter" in text


def test_frames_0_names_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--frames", "0", "--no-tui", "--db", tmp_path / "x.db")
    assert code == 1
    assert "--frames 0" in err
    assert "n_frames" not in err
    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "sim"), "--frames", "0"])
    err = capsys.readouterr().err
    assert "argument --frames: must be 1 or more, got 0" in err


def test_unknown_livetrack_variable_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVETRACK_TRAK__MAX_GAP", "3")
    db = tmp_path / "x.db"
    code, _, err = run_cli(capsys, "run", "--frames", "2", "--no-tui", "--db", db)
    assert code == 1
    assert "LIVETRACK_TRAK__MAX_GAP: no settings section 'trak' (did you mean 'track'?)" in err
    assert not db.exists()


def test_replay_of_a_stack_without_axes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    movie = tmp_path / "stack.tif"
    with tifffile.TiffWriter(movie) as w:  # 3 time points × 2 channels, no metadata
        for i in range(6):
            w.write(np.full((32, 32), i, np.uint16), contiguous=False, metadata=None)
    db = tmp_path / "x.db"
    code, out, err = run_cli(capsys, "replay", movie, "--no-tui", "--db", db)
    assert code == 1
    assert "6 planes with no axis metadata" in err
    assert "--axes" in err
    assert "frames stored" not in out


def test_replay_with_no_readable_frame_exits_1_without_resume_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated TIFF: every page unreadable. Was: 50 ERROR lines, 'complete, 0 frames
    sent', exit 0."""
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.ones((20, 64, 64), np.uint16), metadata={"axes": "TYX"})
    movie = tmp_path / "truncated.tif"
    movie.write_bytes(full.read_bytes()[:1000])  # the IFDs survive, the pixels do not
    code, out, err = run_cli(
        capsys,
        "replay",
        movie,
        "--no-tui",
        "--db",
        tmp_path / "x.db",
        "--events",
        "tcp://127.0.0.1:0",
    )
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("livetrack replay: error: movie ")
    assert "none of its 20 frame(s) could be read" in last
    assert "resume" not in out
    assert "frames stored" not in out


def test_run_that_stores_nothing_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every frame rejected by the worker (NaN pixels): nothing stored is a failure."""
    seq = tmp_path / "nan" / "01"
    seq.mkdir(parents=True)
    for t in range(3):
        tifffile.imwrite(seq / f"t{t:03d}.tif", np.full((32, 32), np.nan, np.float32))
    code, out, err = run_cli(
        capsys,
        "replay",
        seq,
        "--no-tui",
        "--db",
        tmp_path / "x.db",
        "--events",
        "tcp://127.0.0.1:0",
    )
    assert code == 1
    assert "stored no frames (3 sent, 3 rejected by the worker" in err.strip().splitlines()[-1]
    assert "resume" not in out


def test_bench_positions_reports_one_model_copy_for_many_positions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["-q", "bench", "--positions", "4", "--size", "64", "64", "--cells", "3",
            "--diameter", "14", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["positions"] == 4
    assert (report["segmenter"], report["tracker"]) == ("learned", "lstm")
    assert report["segmenter_model_copies"] == 1
    assert report["tracker_model_copies"] == 1
    assert report["peak_rss_mb"] > 0
