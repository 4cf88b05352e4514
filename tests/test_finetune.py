"""Learning from the user's cells: export for correction, sparse import, fine-tuning with
provenance, and running with the fine-tuned models (real files, real CLI, tiny budgets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from numpy.typing import NDArray

from livetrack.cli import main
from livetrack.errors import ConfigError
from livetrack.evaluate.ctcfiles import lineage_digest
from livetrack.models import SHIPPED_SEGMENT_MODEL, SHIPPED_TRACK_MODEL, weights_digest
from livetrack.segment.model import load_model
from livetrack.store import Store
from livetrack.track.model import load_tracknet
from livetrack.training.finetune import (
    FinetuneConfig,
    corrected_seg_samples,
    corrected_track_movies,
    finetune_segmenter,
    finetune_tracker,
)
from livetrack.training.segment import CtcSource
from livetrack.training.track import RECIPES, TrackTrainConfig, _drop_appearance

SIM = ["--frames", "8", "--seed", "3", "--size", "128", "128", "--cells", "10"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def movie(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A simulated movie with full ground truth (CTC layout): tmp/gt/01 + 01_GT."""
    code, out, _ = run_cli(capsys, "simulate", tmp_path / "gt", *SIM)
    assert code == 0, out
    return tmp_path / "gt"


@pytest.fixture
def run_db(tmp_path: Path, movie: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    db = tmp_path / "run.db"
    code, _out, err = run_cli(
        capsys, "replay", movie / "01", "--db", db, "--no-tui", "--segmenter", "classical",
        "--tracker", "lap", "--events", "tcp://127.0.0.1:0",
    )  # fmt: skip
    assert code == 0, err
    return db


# ---------------------------------------------------------------------- export → import


def test_export_for_correction_writes_the_ctc_training_layout(
    tmp_path: Path, run_db: Path, movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "corr"
    code, text, err = run_cli(
        capsys, "export", run_db, "--for-correction", out, "--images", movie / "01",
        "--frames", "2-5",
    )  # fmt: skip
    assert code == 0, err
    assert "4 frames for correction" in text
    assert sorted(p.name for p in (out / "01").glob("t*.tif")) == [
        f"t{i:03d}.tif" for i in range(4)
    ]
    assert len(list((out / "01_GT" / "SEG").glob("man_seg*.tif"))) == 4
    assert len(list((out / "01_GT" / "TRA").glob("man_track*.tif"))) == 4
    info = json.loads((out / "livetrack-correction.json").read_text())
    assert info["first_frame"] == 2
    assert info["frames"] == 4
    # Export frame 0 is run frame 2: its image is the movie's t002 and its SEG labels are
    # the stored mask's objects, one label per nucleus.
    assert np.array_equal(
        tifffile.imread(out / "01" / "t000.tif"), tifffile.imread(movie / "01" / "t002.tif")
    )
    with Store(run_db, readonly=True) as store:
        run = store.latest_run_id()
        assert run is not None
        (pos,) = store.positions(run)
        stored = store.load_mask(run, pos, 2)
    seg = tifffile.imread(out / "01_GT" / "SEG" / "man_seg000.tif")
    assert len(np.unique(seg[seg > 0])) == len(np.unique(stored[stored > 0]))
    assert np.array_equal(seg > 0, stored > 0)
    # The lineage file names only labels that are in the TRA masks.
    text_rows = (out / "01_GT" / "TRA" / "man_track.txt").read_text().splitlines()
    labels = {int(line.split()[0]) for line in text_rows if line.strip()}
    in_masks = set()
    for f in (out / "01_GT" / "TRA").glob("man_track*.tif"):
        in_masks |= set(np.unique(tifffile.imread(f)).tolist()) - {0}
    assert labels == in_masks


def test_export_for_correction_errors(
    tmp_path: Path, run_db: Path, movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "export", run_db, "--for-correction", tmp_path / "c")
    assert code == 1
    assert "--images" in err
    code, _, err = run_cli(
        capsys, "export", run_db, "--for-correction", tmp_path / "c", "--images",
        movie / "01", "--frames", "5-2",
    )  # fmt: skip
    assert code == 1
    assert "FIRST-LAST" in err
    code, _, err = run_cli(
        capsys, "export", run_db, "--for-correction", tmp_path / "c", "--images",
        movie / "01", "--frames", "50-60",
    )  # fmt: skip
    assert code == 1
    assert "no stored frame" in err


def test_sparse_frames_and_partial_annotation(tmp_path: Path, movie: Path) -> None:
    seq = tmp_path / "s" / "01"
    shutil.copytree(movie / "01", seq)
    shutil.copytree(movie / "01_GT", seq.parent / "01_GT")
    seg_dir = seq.parent / "01_GT" / "SEG"
    for f in sorted(seg_dir.glob("man_seg*.tif"))[1:]:
        if f.name not in ("man_seg003.tif", "man_seg006.tif"):
            f.unlink()  # only frames 0, 3 and 6 are annotated
    # frame 3: only one nucleus outlined (and no TRA, so nothing says where the others are)
    (seq.parent / "01_GT" / "TRA" / "man_track003.tif").unlink()
    seg3 = tifffile.imread(seg_dir / "man_seg003.tif")
    keep = int(np.unique(seg3[seg3 > 0])[0])
    tifffile.imwrite(seg_dir / "man_seg003.tif", np.where(seg3 == keep, seg3, 0))
    rng = np.random.default_rng(0)
    model = load_model(SHIPPED_SEGMENT_MODEL).config
    cfg = FinetuneConfig(ctc=(CtcSource(seq),), scales=1)
    samples, used = corrected_seg_samples(cfg, model, rng)
    assert used[str(seq)] == [0, 3, 6]  # frames without a SEG file are not "empty" frames
    complete_valid = samples[1].targets[3].mean()
    partial, _ = corrected_seg_samples(
        FinetuneConfig(ctc=(CtcSource(seq),), scales=1, partial=True), model, rng
    )
    valid = partial[1].targets[3]
    fg = partial[1].targets[2]
    # With --partial, only the outlined nucleus and a margin around it count: the rest of
    # the frame (where the other, unannotated nuclei are) is not taught as background.
    assert valid.mean() < 0.5 * complete_valid
    assert valid[fg > 0].min() == 1.0


def test_finetune_segmenter_records_provenance_and_runs(
    tmp_path: Path, movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seg-ft"
    cfg = FinetuneConfig(
        ctc=(CtcSource(movie / "01", 0, 3),), steps=3, replay_movies=1, scales=1,
        command=("livetrack", "finetune", "segment"),
    )  # fmt: skip
    steps: list[int] = []
    info = finetune_segmenter(cfg, out, lambda s, n, loss: steps.append(s))
    assert steps == [1, 2, 3]
    meta = json.loads((out / "config.json").read_text())
    prov = meta["finetune"]
    assert prov["base_model"]["weights_sha256"] == weights_digest(SHIPPED_SEGMENT_MODEL)
    assert prov["data"][0]["frames"] == [0, 1, 2, 3]
    assert prov["data"][0]["lineage_sha256"] == lineage_digest(movie / "01")
    assert prov["settings"]["steps"] == 3
    assert prov["command"][1] == "finetune"
    assert info["frames"] == 4
    base = load_model(SHIPPED_SEGMENT_MODEL).state_dict()
    tuned = load_model(out).state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    # A run selects it by option, and records its weights.
    db = tmp_path / "ft.db"
    code, _, err = run_cli(
        capsys, "replay", movie / "01", "--db", db, "--no-tui", "--segment-model", out,
        "--tracker", "lap", "--events", "tcp://127.0.0.1:0",
    )  # fmt: skip
    assert code == 0, err
    with Store(db, readonly=True) as store:
        config = json.dumps(store.runs()[0]["config"])
    assert str(weights_digest(out)) in config


def test_finetune_tracker_on_consecutive_tra_frames(tmp_path: Path, movie: Path) -> None:
    tra = movie / "01_GT" / "TRA"
    (tra / "man_track004.tif").unlink()  # frames 0-3 and 5-7: two runs
    cfg = FinetuneConfig(ctc=(CtcSource(movie / "01"),), steps=2, replay_movies=0)
    movies, used = corrected_track_movies(cfg, 7, load_tracknet(SHIPPED_TRACK_MODEL)[0].config)
    assert [len(m.frames) for m in movies] == [4, 3]
    assert used[str(movie / "01")] == [0, 1, 2, 3, 5, 6, 7]
    out = tmp_path / "trk-ft"
    finetune_tracker(cfg, out)
    _model, meta = load_tracknet(out)
    _base, base_meta = load_tracknet(SHIPPED_TRACK_MODEL)
    assert meta["thresholds"] == base_meta["thresholds"]
    assert meta["finetune"]["base_model"]["weights_sha256"] == weights_digest(SHIPPED_TRACK_MODEL)
    # The corrected cells' sizes join the range the model knows: the smallest unit among
    # them, or the base's smallest training size when that is smaller.
    units = [f.diameter for m in movies for f in m.frames]
    low, high = meta["train"]["diameters_px"]
    assert low == pytest.approx(min(12.0, min(units)), abs=0.01)
    assert high == pytest.approx(max(70.0, max(units)), abs=0.01)


def test_finetune_bad_input_is_a_clear_error(tmp_path: Path, movie: Path) -> None:
    with pytest.raises(ConfigError, match="no sequence folder"):
        finetune_segmenter(FinetuneConfig(ctc=(CtcSource(tmp_path / "nope"),)), tmp_path / "o")
    (movie / "01_GT" / "TRA" / "man_track.txt").unlink()
    with pytest.raises(ConfigError, match="lineage"):
        finetune_tracker(FinetuneConfig(ctc=(CtcSource(movie / "01"),)), tmp_path / "o")
    shutil.rmtree(movie / "01_GT" / "SEG")
    with pytest.raises(ConfigError, match="SEG"):
        finetune_segmenter(FinetuneConfig(ctc=(CtcSource(movie / "01"),)), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_finetune_cli_refuses_bad_replay(
    tmp_path: Path, movie: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "finetune", "segment", tmp_path / "o", "--ctc", movie / "01", "--replay", "1"
    )
    assert code == 1
    assert "--replay" in err


# ---------------------------------------------------------------------- recipe v4


def test_tracker_recipe_v4_drops_appearance_but_keeps_shape() -> None:
    cfg = TrackTrainConfig.for_recipe("v4")
    assert cfg.appearance_dropout == RECIPES["v4"]["appearance_dropout"] > 0
    assert TrackTrainConfig.for_recipe("v3") == TrackTrainConfig()
    with pytest.raises(ConfigError, match="recipe"):
        TrackTrainConfig.for_recipe("v9")
    rng = np.random.default_rng(0)
    crops = rng.normal(size=(50, 2, 16, 16)).astype(np.float32)
    morph = rng.normal(size=(50, 4)).astype(np.float32)
    full = TrackTrainConfig(appearance_dropout=1.0)
    c, m = _drop_appearance(crops, morph, rng, full)
    assert not c[:, 0].any()
    assert np.array_equal(c[:, 1], crops[:, 1])
    assert not m[:, 3].any()
    assert np.array_equal(m[:, :3], morph[:, :3])
    assert crops[:, 0].any()  # the input is not modified
    per_cell = TrackTrainConfig(crop_dropout=0.5)
    c, _ = _drop_appearance(crops, morph, np.random.default_rng(1), per_cell)
    dropped = ~c[:, 0].reshape(50, -1).any(axis=1)
    assert 5 < dropped.sum() < 45


def test_benchmark_marks_sequences_a_fine_tuned_model_learned_from(tmp_path: Path) -> None:
    from livetrack.benchmark import provenance

    seq = tmp_path / "MyCells" / "01"
    seq.mkdir(parents=True)
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"finetune": {"data": [{"path": str(seq), "first": 15, "last": 24}]}})
    )
    assert provenance(seq) == "held-out"
    assert provenance(seq, [model]) == "my-model trained on frames 15-24"
    assert provenance(tmp_path / "Other" / "01", [model]) == "held-out"


def test_tracker_finetune_reads_a_gap_link_as_the_same_cell(tmp_path: Path) -> None:
    """CTC spells "seen again after a gap" as a parent with one child (livetrack's export
    does): that is the same track, never a division; two children are a division."""
    seq = tmp_path / "c" / "01"
    tra = seq.parent / "01_GT" / "TRA"
    seq.mkdir(parents=True)
    tra.mkdir(parents=True)
    yy, xx = np.mgrid[:64, :64]

    def disc(cy: float, cx: float) -> NDArray[np.bool_]:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= 36

    # cell 1 in frames 0-1, seen again as label 2 in frames 2-3 (gap link 1 -> 2);
    # cell 3 in frames 0-1 divides into 4 and 5 in frames 2-3.
    for t in range(4):
        lab = np.zeros((64, 64), np.uint16)
        lab[disc(15, 15 + t)] = 1 if t < 2 else 2
        if t < 2:
            lab[disc(45, 45)] = 3
        else:
            lab[disc(40, 45)] = 4
            lab[disc(52, 45)] = 5
        tifffile.imwrite(tra / f"man_track{t:03d}.tif", lab)
        tifffile.imwrite(seq / f"t{t:03d}.tif", (lab > 0).astype(np.uint16) * 200 + 10)
    (tra / "man_track.txt").write_text("1 0 1 0\n2 2 3 1\n3 0 1 0\n4 2 3 3\n5 2 3 3\n")
    cfg = FinetuneConfig(ctc=(CtcSource(seq),))
    (movie,) = corrected_track_movies(cfg, 7, load_tracknet(SHIPPED_TRACK_MODEL)[0].config)[0]
    assert movie.parent == {4: 3, 5: 3}
    assert sorted(np.unique(np.concatenate(movie.ids)).tolist()) == [1, 3, 4, 5]
