"""``livetrack benchmark``: suites, provenance of each row, the rule for defaults, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from livetrack.benchmark import (
    SUITES_DIR,
    Row,
    load_suite,
    provenance,
    rule_violations,
    settings_models,
    simulation_config,
)
from livetrack.cli import main
from livetrack.config import Settings
from livetrack.errors import ConfigError
from tests.conftest import SIM_PLUS, needs_data

TINY = """
name = "tiny"
frames = 6
[[movies]]
name = "small"
seed = 1
[movies.settings]
height = 96
width = 96
n_cells = 6
nucleus_diameter_px = 16
cell_cycle_frames = 5
"""


def test_shipped_suites_load_and_every_movie_is_a_valid_simulation() -> None:
    suites = sorted(SUITES_DIR.glob("*.toml"))
    assert suites, "no suite is shipped"
    for path in suites:
        suite = load_suite(path.stem)
        assert suite.movies
        seeds = [m.seed for m in suite.movies]
        assert len(set(seeds)) == len(seeds), "two movies share a seed"
        for movie in suite.movies:
            assert simulation_config(movie).seed == movie.seed


def test_a_misspelt_setting_is_an_error_not_a_default(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("n_cells", "n_cels"))
    suite = load_suite(bad)
    with pytest.raises(ConfigError, match="n_cels"):
        simulation_config(suite.movies[0])
    bad.write_text(TINY.replace("seed = 1", "sead = 1"))
    with pytest.raises(ConfigError, match="sead"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="no benchmark suite 'nope'"):
        load_suite("nope")


def test_a_sequence_a_shipped_model_trained_on_is_marked(tmp_path: Path) -> None:
    # Recognised by dataset/sequence, wherever the data lies on this machine.
    seq = tmp_path / "elsewhere" / "Fluo-N2DH-SIM+" / "01"
    seq.mkdir(parents=True)
    assert "trained on frames 0-39" in provenance(seq)
    other = tmp_path / "Fluo-N2DH-HeLa" / "01"
    other.mkdir(parents=True)
    assert provenance(other) == "held-out"


def _sequence(root: Path, name: str, lineage: str) -> Path:
    seq = root / name / "01"
    (root / name / "01_GT" / "TRA").mkdir(parents=True)
    seq.mkdir(parents=True)
    (root / name / "01_GT" / "TRA" / "man_track.txt").write_text(lineage)
    return seq


def test_a_trained_on_sequence_is_recognised_under_any_name_by_its_lineage(
    tmp_path: Path,
) -> None:
    """A copy renamed, moved or with altered images keeps its annotated lineage; the model
    records its sha256 (``with_lineage_digests``) and the benchmark matches it."""
    from livetrack.evaluate.ctcfiles import lineage_digest, with_lineage_digests

    trained = _sequence(tmp_path / "data", "MyCells", "1 0 9 0\n2 3 9 1\n")
    model = tmp_path / "my-model"
    model.mkdir()
    items = with_lineage_digests([{"path": str(trained), "first": 0, "last": 4}])
    assert items[0]["lineage_sha256"] == lineage_digest(trained)
    (model / "config.json").write_text(json.dumps({"train": {"ctc": items}}))
    copy = _sequence(tmp_path / "copies", "binned-2x2", "1 0 9 0\n2 3 9 1\n")
    assert provenance(copy, [model]) == "my-model trained on frames 0-4"
    other = _sequence(tmp_path / "copies", "other", "1 0 9 0\n")
    assert provenance(other, [model]) == "held-out"
    assert lineage_digest(tmp_path / "nowhere" / "01") is None


def test_only_the_models_a_run_uses_count_so_a_left_out_sequence_is_held_out(
    tmp_path: Path,
) -> None:
    """Leave-one-out: a segmenter trained without GOWT1 replaces the shipped one (which saw
    GOWT1 frames 0-24); the shipped tracker never saw GOWT1, so GOWT1 is held out for that
    run, while SIM+ (seen by the shipped tracker) is not, and a sequence the replacement
    segmenter saw is marked with its name."""
    from livetrack.config import SegmentConfig

    gowt1 = tmp_path / "Fluo-N2DH-GOWT1" / "01"
    sim = tmp_path / "Fluo-N2DH-SIM+" / "01"
    for seq in (gowt1, sim):
        seq.mkdir(parents=True)
    assert "seg-unet-v2 trained on frames 0-24" in provenance(gowt1)
    loo = tmp_path / "seg-no-gowt1"
    loo.mkdir()
    seen = [{"path": str(tmp_path / "X" / "01"), "first": 0, "last": 9}]
    (loo / "config.json").write_text(json.dumps({"train": {"ctc": seen}}))
    models = settings_models(Settings(segment=SegmentConfig(model_dir=loo)))
    assert provenance(gowt1, models) == "held-out"
    assert provenance(sim, models) == "track-lstm-v4 trained on frames 0-39"
    assert provenance(tmp_path / "X" / "01", models) == "seg-no-gowt1 trained on frames 0-9"
    # The shipped defaults when nothing is named.
    assert settings_models(Settings()) == settings_models(None)


def test_a_fine_tuned_model_carries_what_its_base_learned_from(tmp_path: Path) -> None:
    """Fine-tuned from the shipped segmenter (which saw SIM+ frames 0-39): SIM+ is not held
    out for a run with the fine-tuned model — the base found by its recorded path, or by
    its weights' sha256 when that path is gone (another machine)."""
    from livetrack.models import SHIPPED_SEGMENT_MODEL, weights_digest

    sim = tmp_path / "Fluo-N2DH-SIM+" / "01"
    sim.mkdir(parents=True)
    tuned = tmp_path / "seg-tuned"
    tuned.mkdir()

    def write(base_path: str) -> None:
        base = {"path": base_path, "weights_sha256": weights_digest(SHIPPED_SEGMENT_MODEL)}
        data = [{"path": str(tmp_path / "Mine" / "01"), "first": 0, "last": 9}]
        (tuned / "config.json").write_text(
            json.dumps({"finetune": {"base_model": base, "data": data}})
        )

    write(str(SHIPPED_SEGMENT_MODEL))
    got = provenance(sim, [tuned])
    assert got == "seg-unet-v2 trained on frames 0-39", got
    write(str(tmp_path / "gone" / "seg-unet-v2"))
    assert provenance(sim, [tuned]) == "seg-unet-v2 trained on frames 0-39"
    # A base folder that now holds other weights is not the base: found by digest instead.
    other = tmp_path / "retrained"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"train": {"ctc": []}}))
    (other / "weights.pt").write_bytes(b"other weights")
    write(str(other))
    assert provenance(sim, [tuned]) == "seg-unet-v2 trained on frames 0-39"
    assert provenance(tmp_path / "Mine" / "01", [tuned]) == "seg-tuned trained on frames 0-9"


def test_an_unknown_base_counts_as_every_shipped_model_and_a_loop_ends(tmp_path: Path) -> None:
    """A fine-tuned model whose base is neither at its recorded path nor a shipped model
    (by weights) may have learned from anything a shipped model did; a config that names
    itself as its base does not loop."""
    sim = tmp_path / "Fluo-N2DH-SIM+" / "01"
    sim.mkdir(parents=True)
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    lost = {"path": str(tmp_path / "nowhere"), "weights_sha256": "0" * 64}
    (tuned / "config.json").write_text(json.dumps({"finetune": {"base_model": lost}}))
    got = provenance(sim, [tuned])
    assert "seg-unet-v1 trained on frames 0-39" in got
    assert "track-lstm-v3 trained on frames 0-39" in got
    looped = {"path": str(tuned), "weights_sha256": None}
    data = [{"path": str(sim), "first": 0, "last": 3}]
    (tuned / "config.json").write_text(
        json.dumps({"finetune": {"base_model": looped, "data": data}})
    )
    assert provenance(sim, [tuned]) == "tuned trained on frames 0-3"


@needs_data
def test_a_renamed_copy_of_the_shipped_models_training_sequence_is_not_held_out(
    tmp_path: Path,
) -> None:
    """The shipped models' configs carry the lineage digests of their CTC training data."""
    lineage = (SIM_PLUS / "01_GT" / "TRA" / "man_track.txt").read_text()
    copy = _sequence(tmp_path, "SIM-binned", lineage)
    assert "trained on frames 0-39" in provenance(copy)


def _row(seq: str, pipeline: str, f1: float | None, tra: float, training: str = "held-out") -> Row:
    return Row(seq, pipeline, training, 10, {"division_f1": f1, "TRA": tra}, None, 0.0)


def test_rule_for_defaults_flags_only_held_out_rows_below_their_baseline() -> None:
    rows = [
        _row("a", "default", 0.8, 0.99),
        _row("a", "learned+lap", 0.9, 0.98),  # default's division F1 below: broken
        _row("a", "gt+default", 1.0, 1.0),
        _row("a", "gt+lap", 1.0, 1.0),
        _row("b", "default", None, 0.97),
        _row("b", "learned+lap", None, 0.96),  # no divisions on either side: fine
        _row("t", "default", 0.1, 0.5, training="track-lstm-v3 trained"),
        _row("t", "learned+lap", 0.9, 0.9, training="track-lstm-v3 trained"),
    ]
    assert rule_violations(rows) == ["a: default division_f1 0.800 < learned+lap 0.900"]


def test_no_division_called_on_a_sequence_with_divisions_counts_as_f1_zero() -> None:
    """Both miss the two divisions; the default calls none (F1 undefined: no precision),
    the baseline calls two false ones (F1 0): the default is not below it. Had the
    baseline found one, it would be."""

    def row(pipeline: str, f1: float | None, correct: int) -> Row:
        metrics = {"division_f1": f1, "TRA": 0.99, "n_gt_divisions": 2, "correct": correct}
        return Row("g", pipeline, "held-out", 10, metrics, None, 0.0)

    assert rule_violations([row("default", None, 0), row("learned+lap", 0.0, 0)]) == []
    broken = rule_violations([row("default", None, 0), row("learned+lap", 0.5, 1)])
    assert broken == ["g: default division_f1 0.000 < learned+lap 0.500"]


def test_benchmark_command_scores_a_suite_and_a_ctc_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    # A CTC sequence named like one the shipped models were trained on.
    code = main(["simulate", str(tmp_path / "Fluo-N2DH-SIM+"), "--frames", "5", "--seed", "2",
                 "--size", "96", "96", "--cells", "5", "--diameter", "16"])  # fmt: skip
    assert code == 0
    out = tmp_path / "bench"
    code = main([
        "benchmark", str(suite), "--out", str(out), "--pipelines", "classical+lap", "gt+lap",
        "--ctc", str(tmp_path / "Fluo-N2DH-SIM+" / "01"),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "benchmark.json").read_text())
    rows = {(r["sequence"], r["pipeline"]): r for r in report["rows"]}
    assert set(rows) == {
        ("small", "classical+lap"),
        ("small", "gt+lap"),
        ("Fluo-N2DH-SIM+/01", "classical+lap"),
        ("Fluo-N2DH-SIM+/01", "gt+lap"),
    }
    assert rows["small", "gt+lap"]["held_out"] is True
    assert rows["Fluo-N2DH-SIM+/01", "gt+lap"]["held_out"] is False
    # Tracking the ground truth's own masks finds every object.
    assert rows["small", "gt+lap"]["metrics"]["DET"] == pytest.approx(1.0)
    assert rows["small", "gt+lap"]["frames"] == 6
    for r in rows.values():
        assert 0.0 <= r["metrics"]["TRA"] <= 1.0
    assert rows["small", "classical+lap"]["ms_per_frame"] > 0
    table = (out / "benchmark.md").read_text()
    assert "| small | held-out | classical+lap |" in table
    assert "trained on frames 0-39" in table
    assert table in printed


def test_a_sequence_cut_to_a_frame_range_is_renumbered_and_its_lineage_clipped(
    tmp_path: Path,
) -> None:
    """``trim_sequence``: frames FIRST-LAST renumbered from 0; a track begun before the
    range starts at 0 without its parent; one that divides inside keeps its parent; the
    cut ground truth scores itself perfectly."""
    from livetrack.evaluate import evaluate_ctc
    from livetrack.evaluate.ctcfiles import read_track_file, trim_sequence, validate_tracks

    code = main(["simulate", str(tmp_path / "Cells"), "--frames", "12", "--seed", "3",
                 "--size", "96", "96", "--cells", "10", "--diameter", "16"])  # fmt: skip
    assert code == 0
    seq = tmp_path / "Cells" / "01"
    whole = read_track_file(seq.parent / "01_GT" / "TRA" / "man_track.txt").row()
    cut = trim_sequence(seq, 4, 9, tmp_path / "cut")
    assert sorted(p.name for p in cut.glob("t*.tif")) == [f"t{i:03d}.tif" for i in range(6)]
    assert (cut / "t000.tif").resolve() == (seq / "t004.tif").resolve()
    tra = cut.parent / "01_GT" / "TRA"
    gt_tra = seq.parent / "01_GT" / "TRA"
    assert (tra / "man_track000.tif").resolve() == (gt_tra / "man_track004.tif").resolve()
    assert (tra / "man_track005.tif").resolve() == (gt_tra / "man_track009.tif").resolve()
    assert len(list(tra.glob("man_track*.tif"))) == 6
    rows = read_track_file(tra / "man_track.txt").row()
    validate_tracks(read_track_file(tra / "man_track.txt"), 6, "cut")
    for label, (begin, end, parent) in rows.items():
        b0, e0, p0 = whole[label]
        assert (begin, end) == (max(b0, 4) - 4, min(e0, 9) - 4)
        assert parent == (p0 if b0 >= 4 and p0 and whole[p0][1] >= 4 else 0)
    assert any(p for _, _, p in rows.values()), "no division inside the range to check"
    assert any(b < 4 <= e for b, e, _ in whole.values()), "no track across the cut"
    assert set(rows) == {k for k, (b, e, _) in whole.items() if e >= 4 and b <= 9}
    res = tmp_path / "res"  # the cut ground truth as a result
    res.mkdir()
    for f in tra.glob("man_track*.tif"):
        shutil.copy(f, res / f.name.replace("man_track", "mask"))
    shutil.copy(tra / "man_track.txt", res / "res_track.txt")
    result = evaluate_ctc(res, cut.parent / "01_GT")
    assert result.to_dict()["TRA"] == pytest.approx(1.0)


def test_scored_frames_a_model_did_not_train_on_are_still_not_held_out(tmp_path: Path) -> None:
    """Frames after the shipped models' SIM+ training frames (0-39) are other frames of a
    sequence they learned from: marked so, never "held-out"; overlapping ranges are marked
    as trained on."""
    from livetrack.benchmark import parse_ctc_entry

    seq = tmp_path / "Fluo-N2DH-SIM+" / "01"
    seq.mkdir(parents=True)
    later = provenance(seq, None, (40, 64))
    assert "seg-unet-v2 trained on frames 0-39 (not the frames scored)" in later
    assert later != "held-out"
    assert "(not the frames scored)" not in provenance(seq, None, (30, 64))
    assert parse_ctc_entry(f"{seq}:40-64") == (seq, (40, 64))
    assert parse_ctc_entry(seq) == (seq, None)
    with pytest.raises(ConfigError, match="FIRST-LAST"):
        parse_ctc_entry(f"{seq}:9-3")


def test_benchmark_scores_only_the_frames_named(tmp_path: Path) -> None:
    suite = tmp_path / "none.toml"
    suite.write_text('name = "none"\nframes = 5\n')
    code = main(["simulate", str(tmp_path / "Cells"), "--frames", "10", "--seed", "2",
                 "--size", "96", "96", "--cells", "5", "--diameter", "16"])  # fmt: skip
    assert code == 0
    out = tmp_path / "bench"
    code = main(["benchmark", str(suite), "--out", str(out), "--pipelines", "gt+lap",
                 "--ctc", f"{tmp_path / 'Cells' / '01'}:3-8"])  # fmt: skip
    assert code == 0
    (row,) = json.loads((out / "benchmark.json").read_text())["rows"]
    assert row["sequence"] == "Cells/01:3-8"
    assert row["frames"] == 6
    assert row["held_out"] is True
    assert row["metrics"]["DET"] == pytest.approx(1.0)
    # A range outside the sequence is a clear error, not an empty row.
    assert main(["benchmark", str(suite), "--out", str(out), "--pipelines", "gt+lap",
                 "--ctc", f"{tmp_path / 'Cells' / '01'}:20-30"]) != 0  # fmt: skip
