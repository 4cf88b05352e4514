"""End to end: what ``livetrack run`` prints as divisions is what the lineage holds and
what ``livetrack evaluate`` counts on the CTC export — a division has two daughters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from livetrack.cli import main
from livetrack.evaluate.ctcfiles import read_track_file
from livetrack.evaluate.lineage import divisions
from livetrack.messages import TrackEvent
from livetrack.store import Store
from livetrack.track.base import TrackRecord
from livetrack.tui.data import describe_track

# A small simulated movie on which the tracker used to emit "divisions" with one daughter
# (3 of 6 on the code before this test): classical segmentation, the default LSTM tracker.
SIM = ["--frames", "30", "--size", "192", "192", "--cells", "15", "--seed", "1"]
SUMMARY = re.compile(r"new tracks: (\d+), divisions: (\d+), lost: (\d+), left the field: (\d+)")


def test_printed_divisions_are_two_daughter_parents_and_what_evaluate_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "run.db"
    pipeline = ["--segmenter", "classical", "--tracker", "lstm", "--db", str(db), "--no-tui"]
    code = main(["run", *SIM, *pipeline, "--events", "tcp://127.0.0.1:0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    found = SUMMARY.search(out)
    assert found is not None, out
    assert "birth" not in out
    assert "death" not in out
    printed = int(found.group(2))
    assert printed > 0

    with Store(db, readonly=True) as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        kids = store.conn.execute(
            "SELECT parent_id, count(*) FROM tracks WHERE run_id = ? AND parent_id IS NOT NULL"
            " GROUP BY parent_id",
            (run_id,),
        ).fetchall()
        divided = store.conn.execute(
            "SELECT count(*) FROM tracks WHERE run_id = ? AND fate = 'divided'", (run_id,)
        ).fetchone()[0]
        events = store.events(run_id, kinds=["division"])
        all_events = store.events(run_id)
    assert [n for _, n in kids] == [2] * len(kids)  # every parent has exactly two children
    assert printed == len(kids) == divided == len(events)
    assert all(len(e["daughters"]) == 2 for e in all_events if e["kind"] == "division")

    code = main(["export", str(db), "--ctc", str(tmp_path / "res"), "--n-frames", "30"])
    assert code == 0, capsys.readouterr().err
    ctc = read_track_file(tmp_path / "res" / "res_track.txt")
    found_divisions = divisions(ctc)
    assert len(found_divisions) == printed
    assert all(len(d.children) == 2 for d in found_divisions)


def test_event_words_on_the_wire_and_in_the_lineage_view() -> None:
    base = {"run_id": "r", "position": "p", "frame": 3, "track_id": 4, "timestamp": 0.0}
    # a sender from before schema 3 said 'birth' / 'death': read as today's words
    assert TrackEvent(**base, event="birth").event == "new_track"  # type: ignore[arg-type]
    assert TrackEvent(**base, event="death").event == "lost"  # type: ignore[arg-type]
    assert TrackEvent(**base, event="left").event == "left"
    # a division has two daughters, on the wire too
    with pytest.raises(ValueError, match="two daughters"):
        TrackEvent(**base, event="division", daughters=(5,))
    assert TrackEvent(**base, event="division", daughters=(5, 6)).daughters == (5, 6)
    assert describe_track(TrackRecord(7, None, 2, 9, "left")).endswith("left the field")
    assert describe_track(TrackRecord(8, 7, 10, 12, "lost")).endswith("lost")
