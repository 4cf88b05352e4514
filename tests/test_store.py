"""Tests of livetrack.store on real SQLite files in tmp_path."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

from livetrack.errors import ResumeMismatch, RunInUse, SchemaMismatch, StoreError, StoreLost
from livetrack.store import (
    EMBEDDINGS_TABLE,
    EVENTS_TABLE,
    FRAME_MODELS_TABLE,
    LEASES_TABLE,
    MIGRATIONS,
    SCALE_TABLE,
    SCHEMA_DOC,
    SCHEMA_VERSION,
    TABLES,
    Column,
    Store,
    StoreConfig,
    StoreWriter,
    Table,
    decode_embeddings,
    decode_mask,
    encode_embeddings,
    encode_mask,
    migrate,
    render_ddl,
    resume_mismatch,
)
from livetrack.track.base import LineageEvent, TrackEnd, TrackRecord, TrackStart, TrackStep
from livetrack.types import Detections

RUN = "run-1"
POS = "Pos0"


# --------------------------------------------------------------------------- helpers


def blobs_mask(labels: list[int], shape: tuple[int, int] = (64, 96)) -> np.ndarray:
    """A label image with one 5x5 square per label, laid out left to right, top to bottom."""
    mask = np.zeros(shape, np.int32)
    per_row = shape[1] // 8
    for i, lab in enumerate(labels):
        y, x = 2 + 8 * (i // per_row), 2 + 8 * (i % per_row)
        mask[y : y + 5, x : x + 5] = lab
    return mask


def frame_data(labels: list[int]) -> tuple[np.ndarray, Detections]:
    mask = blobs_mask(labels)
    return mask, Detections.from_labels(mask)


def step_for(frame: int, dets: Detections, track_of: dict[int, int], **kw: Any) -> TrackStep:
    """TrackStep linking each detection (by label) to ``track_of[label]``."""
    ids = np.array([track_of[int(lab)] for lab in dets.labels], np.int64)
    return TrackStep(frame=frame, track_ids=ids, **kw)


def write_lineage(store: Store, run: str = RUN, pos: str = POS) -> None:
    """Four frames: tracks 1, 2 born at 0; track 1 divides into 3, 4 at frame 2; track 2 is
    lost after frame 2; track 5 is born at 3."""
    m, d = frame_data([1, 2])
    store.write_frame(
        run, pos, 0, timestamp=100.0, mask=m, detections=d,
        step=step_for(0, d, {1: 1, 2: 2}, started=[TrackStart(1, 0), TrackStart(2, 0)],
                      events=[LineageEvent("new_track", 0, 1, y=4.0, x=4.0),
                              LineageEvent("new_track", 0, 2)]),
        timings={"segment": 12.5, "track": 1.5}, pixel_size_um=0.65,
    )  # fmt: skip
    m, d = frame_data([1, 2])
    store.write_frame(
        run, pos, 1, timestamp=101.0, mask=m, detections=d, step=step_for(1, d, {1: 1, 2: 2})
    )
    m, d = frame_data([7, 8, 2])
    store.write_frame(
        run, pos, 2, timestamp=102.0, mask=m, detections=d,
        step=step_for(2, d, {7: 3, 8: 4, 2: 2},
                      started=[TrackStart(3, 2, parent_id=1), TrackStart(4, 2, parent_id=1)],
                      ended=[TrackEnd(1, 1, "divided")],
                      events=[LineageEvent("division", 2, 1, daughters=(3, 4), y=5.0, x=6.0,
                                           confidence=0.8)]),
    )  # fmt: skip
    m, d = frame_data([7, 8, 300])
    store.write_frame(
        run, pos, 3, timestamp=103.0, mask=m, detections=d,
        step=step_for(3, d, {7: 3, 8: 4, 300: 5}, started=[TrackStart(5, 3)],
                      ended=[TrackEnd(2, 2, "lost")],
                      events=[LineageEvent("new_track", 3, 5), LineageEvent("lost", 3, 2)]),
    )  # fmt: skip


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, through a separate plain connection."""
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: conn.execute(f"SELECT * FROM {n} ORDER BY 1, 2, 3").fetchall() for n in names}
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "livetrack.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        s.begin_run(RUN, source="test", config={"tracker": "lap", "max_gap": 2})
        yield s


def assert_same_detections(a: Detections, b: Detections) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.areas, b.areas)
    np.testing.assert_array_equal(a.bboxes, b.bboxes)
    assert a.labels.dtype == np.int32
    assert a.bboxes.dtype == np.int32
    assert a.areas.dtype == np.int64


# --------------------------------------------------------------------------- round trip


def test_write_close_reopen_reads_back_identical(db_path: Path) -> None:
    with Store(db_path) as s:
        assert s.begin_run(RUN, source="sim", config={"a": 1}) is True
        write_lineage(s)
        s.end_run(RUN)
    for readonly in (True, False):
        with Store(db_path, readonly=readonly) as s:
            for frame, labels in enumerate([[1, 2], [1, 2], [7, 8, 2], [7, 8, 300]]):
                mask, dets = frame_data(labels)
                got = s.load_mask(RUN, POS, frame)
                assert got.dtype == np.int32
                np.testing.assert_array_equal(got, mask)
                got_dets, ids = s.frame_detections(RUN, POS, frame)
                assert_same_detections(got_dets, dets)
                assert ids.dtype == np.int64
            _, ids = s.frame_detections(RUN, POS, 3)
            assert ids.tolist() == [3, 4, 5]  # labels 7, 8, 300 in label order
            assert s.tracks(RUN, POS) == [
                TrackRecord(1, None, 0, 1, "divided"),
                TrackRecord(2, None, 0, 2, "lost"),
                TrackRecord(3, 1, 2, 3, "active"),
                TrackRecord(4, 1, 2, 3, "active"),
                TrackRecord(5, None, 3, 3, "active"),
            ]
            events = s.events(RUN, POS)
            assert [(e["kind"], e["frame"], e["track_id"]) for e in events] == [
                ("new_track", 0, 1),
                ("new_track", 0, 2),
                ("division", 2, 1),
                ("new_track", 3, 5),
                ("lost", 3, 2),
            ]
            division = events[2]
            assert division["daughters"] == [3, 4]
            assert (division["y"], division["x"], division["confidence"]) == (5.0, 6.0, 0.8)
            assert math.isnan(events[1]["y"])
            assert s.positions(RUN) == [POS]
            assert s.frame_indices(RUN, POS) == [0, 1, 2, 3]
            [run] = s.runs()
            assert run["config"] == {"a": 1}
            assert run["status"] == "finished"
            assert run["schema_version"] == SCHEMA_VERSION
            assert run["finished"] >= run["created"]
            assert s.counts(RUN) == {
                "positions": 1,
                "frames": 4,
                "detections": 10,
                "tracks": 5,
                "events": 5,
                "new tracks": 3,
                "divisions": 1,
                "lost": 1,
                "left the field": 0,
            }


@pytest.mark.parametrize(("top", "dtype"), [(200, "|u1"), (60_000, "<u2"), (1_000_000, "<i4")])
def test_mask_codec_keeps_large_labels(top: int, dtype: str) -> None:
    mask = blobs_mask([1, top // 2, top])
    got_dtype, blob = encode_mask(mask, level=1)
    assert got_dtype == dtype
    back = decode_mask("zlib", got_dtype, mask.shape[0], mask.shape[1], blob)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, mask)


def test_frame_row_and_position_summary(store: Store, db_path: Path) -> None:
    write_lineage(store)
    rows = dump(db_path)
    frame0 = rows["frames"][0]
    assert frame0[:3] == (RUN, POS, 0)
    assert frame0[5] == 2  # n_detections
    assert '"segment": 12.5' in frame0[7]  # timings JSON
    # run_id, position, height, width, pixel_size_um, first_frame, last_frame, n_frames
    assert rows["positions"] == [(RUN, POS, 64, 96, 0.65, 0, 3, 4)]


def test_begin_run_resume_and_end_run(db_path: Path) -> None:
    with Store(db_path) as s:
        assert s.latest_run_id() is None
        assert s.begin_run("a", source="sim", config={"x": 1}) is True
        s.end_run("a", "aborted")
        assert s.runs()[0]["status"] == "aborted"
        assert s.begin_run("a", source="other", config={"x": 2}) is False
        [run] = s.runs()
        assert (run["status"], run["finished"], run["config"]) == ("running", None, {"x": 1})
        assert s.begin_run("b", source="sim", config={}) is True
        assert s.latest_run_id() == "b"
        with pytest.raises(StoreError, match="no such run"):
            s.end_run("nope")
        with pytest.raises(StoreError, match="JSON"):
            s.begin_run("c", source="sim", config={"bad": object()})


# --------------------------------------------------------------------------- idempotence


def test_rewrite_of_committed_frame_returns_false_and_changes_nothing(
    store: Store, db_path: Path
) -> None:
    write_lineage(store)
    before = dump(db_path)
    mask, dets = frame_data([9])
    again = store.write_frame(
        RUN, POS, 2, timestamp=999.0, mask=mask, detections=dets,
        step=step_for(2, dets, {9: 9}, started=[TrackStart(9, 2)],
                      events=[LineageEvent("birth", 2, 9)]),
    )  # fmt: skip
    assert again is False
    assert dump(db_path) == before


# --------------------------------------------------------------------------- atomicity


def assert_frame_absent(store: Store, db_path: Path, before: dict[str, Any], frame: int) -> None:
    assert dump(db_path) == before
    assert frame not in store.frame_indices(RUN, POS)
    with pytest.raises(StoreError, match="no mask"):
        store.load_mask(RUN, POS, frame)


def test_duplicate_label_rolls_back_the_whole_frame(store: Store, db_path: Path) -> None:
    write_lineage(store)
    before = dump(db_path)
    mask, dets = frame_data([7, 8])
    twice = dets.subset(np.array([0, 1, 1]))  # label 8 twice: PK violation on the 3rd row
    step = TrackStep(
        4,
        np.array([3, 4, 6], np.int64),
        started=[TrackStart(6, 4)],
        ended=[TrackEnd(5, 3, "lost")],
        events=[LineageEvent("birth", 4, 6)],
    )
    with pytest.raises(StoreError, match=r"while inserting detections.*duplicate"):
        store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=twice, step=step)
    assert_frame_absent(store, db_path, before, 4)


def test_unstarted_track_id_rolls_back_the_whole_frame(store: Store, db_path: Path) -> None:
    write_lineage(store)
    before = dump(db_path)
    mask, dets = frame_data([7, 8])
    step = TrackStep(4, np.array([3, 42], np.int64), events=[LineageEvent("birth", 4, 42)])
    with pytest.raises(StoreError, match=r"detections.*never in step\.started"):
        store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=dets, step=step)
    assert_frame_absent(store, db_path, before, 4)


def test_ending_unknown_track_rolls_back_the_whole_frame(store: Store, db_path: Path) -> None:
    write_lineage(store)
    before = dump(db_path)
    mask, dets = frame_data([7, 8])
    step = TrackStep(4, np.array([3, 4], np.int64), ended=[TrackEnd(77, 3, "lost")])
    with pytest.raises(StoreError, match=r"unknown track\(s\) \[77\]"):
        store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=dets, step=step)
    assert_frame_absent(store, db_path, before, 4)
    # the store is still usable after a failed frame
    ok = step_for(4, dets, {7: 3, 8: 4})
    assert store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=dets, step=ok)
    assert store.last_frame(RUN, POS) == 4


def test_inconsistent_inputs_are_rejected_before_writing(store: Store, db_path: Path) -> None:
    mask, dets = frame_data([1, 2])
    with pytest.raises(StoreError, match="2 detections but 1 track ids"):
        store.write_frame(
            RUN, POS, 0, timestamp=0.0, mask=mask, detections=dets,
            step=TrackStep(0, np.array([1], np.int64), started=[TrackStart(1, 0)]),
        )  # fmt: skip
    with pytest.raises(StoreError, match="step is for frame 5"):
        store.write_frame(
            RUN, POS, 0, timestamp=0.0, mask=mask, detections=dets,
            step=step_for(5, dets, {1: 1, 2: 2}),
        )  # fmt: skip
    with pytest.raises(StoreError, match="never begun"):
        store.write_frame(
            "other-run", POS, 0, timestamp=0.0, mask=mask, detections=dets,
            step=step_for(0, dets, {1: 1, 2: 2}, started=[TrackStart(1, 0), TrackStart(2, 0)]),
        )  # fmt: skip
    assert store.frame_indices(RUN, POS) == []
    assert dump(db_path)["tracks"] == []


# --------------------------------------------------------------------------- schema


def test_every_column_of_every_table_is_documented(store: Store, db_path: Path) -> None:
    tables = set(store.db.table_names()) - {"sqlite_sequence"}
    assert tables == set(SCHEMA_DOC)
    for table in tables:
        columns = {c.name for c in store.db[table].columns}
        assert columns == set(SCHEMA_DOC[table]), table
        sql = store.conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()[0]
        for column, doc in SCHEMA_DOC[table].items():
            assert len(doc) > 10, (table, column)
            assert f"-- {doc}" in sql, (table, column)  # readable in `sqlite3 db .schema`


def test_pragmas_wal_foreign_keys_timeout(db_path: Path) -> None:
    with Store(db_path, config=StoreConfig(busy_timeout_s=2.5)) as s:
        assert s.db.journal_mode == "wal"
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with Store(db_path, readonly=True) as r:
        assert r.db.journal_mode == "wal"  # persistent in the file


def _set_user_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_version_raises_schema_mismatch(db_path: Path, readonly: bool) -> None:
    Store(db_path).close()
    _set_user_version(db_path, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaMismatch, match="newer"):
        Store(db_path, readonly=readonly)


def test_foreign_sqlite_file_raises_schema_mismatch(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with pytest.raises(SchemaMismatch, match="not a livetrack database"):
        Store(db_path)


def test_older_schema_is_migrated_in_order(db_path: Path) -> None:
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    v = SCHEMA_VERSION

    def add_note(c: sqlite3.Connection) -> None:
        c.execute("ALTER TABLE runs ADD COLUMN note TEXT")

    def add_other(c: sqlite3.Connection) -> None:
        c.execute("ALTER TABLE runs ADD COLUMN other TEXT")

    # a gap in the chain: nothing changes
    with pytest.raises(SchemaMismatch, match=f"no migration from store schema version {v + 1}"):
        migrate(conn, target=v + 2, migrations={v: add_note})
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "note" not in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]

    had = migrate(conn, target=v + 2, migrations={v: add_note, v + 1: add_other})
    assert had == SCHEMA_VERSION
    assert conn.execute("PRAGMA user_version").fetchone()[0] == v + 2
    assert {"note", "other"} <= {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    conn.close()


def _schema_sql(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        conn.close()


V6_INDEXES = ("tracks_open", "events_kind")
"""Indexes schema version 6 added (the resume question)."""


def _before_v6(table: Table) -> Table:
    """``table`` as versions before 6 created it: without the version-6 indexes."""
    return dataclasses.replace(
        table, indexes=tuple(i for i in table.indexes if i[0] not in V6_INDEXES)
    )


V2_EVENTS_TABLE = dataclasses.replace(
    _before_v6(EVENTS_TABLE),
    columns=tuple(
        Column(
            "kind",
            "TEXT NOT NULL CHECK (kind IN ('birth', 'division', 'death'))",
            "'birth', 'division' or 'death'",
        )
        if c.name == "kind"
        else c
        for c in EVENTS_TABLE.columns
    ),
)
"""The events table of schema versions 1 to 3 (changed in version 4)."""

_TO_V2_KIND = "CASE kind WHEN 'new_track' THEN 'birth' WHEN 'lost' THEN 'death' ELSE kind END"


def _create_v2_schema(conn: sqlite3.Connection) -> None:
    """The schema of version 2: today's tables but ``scale`` (version 3) and ``leases``
    (version 5), with the old events table (changed in version 4)."""
    for table in TABLES:
        if table in (SCALE_TABLE, LEASES_TABLE, FRAME_MODELS_TABLE):
            continue
        for statement in render_ddl(
            V2_EVENTS_TABLE if table is EVENTS_TABLE else _before_v6(table)
        ):
            conn.execute(statement)


ADDED_AFTER_V1 = (EMBEDDINGS_TABLE, SCALE_TABLE, LEASES_TABLE, FRAME_MODELS_TABLE)
"""Tables versions 2, 3 and 5 added; the others are as release 1 made them (events with its
old kinds, changed in version 4)."""


def _create_v1_schema(conn: sqlite3.Connection) -> None:
    """The schema of release 1: every table of today's but those added later."""
    for table in TABLES:
        if table not in ADDED_AFTER_V1:
            for statement in render_ddl(
                V2_EVENTS_TABLE if table is EVENTS_TABLE else _before_v6(table)
            ):
                conn.execute(statement)


def _copy_into_old(conn: sqlite3.Connection, table: str) -> None:
    """Copy ``src.table`` into an old file's table, events in the version-2 words."""
    if table == "events":
        names = [c.name for c in EVENTS_TABLE.columns]
        select = ", ".join(_TO_V2_KIND if n == "kind" else n for n in names)
        conn.execute(f"INSERT INTO events SELECT {select} FROM src.events")
    else:
        conn.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")


def test_version_1_file_is_upgraded_in_place_and_keeps_its_data(tmp_path: Path) -> None:
    # A version-1 file: the release-1 schema created through the real migrate() with
    # target=1, then filled by the store's write path (unchanged for the version-1 tables).
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old, isolation_level=None)
    assert migrate(conn, target=1, migrations={}, create=_create_v1_schema) == 0
    conn.close()
    assert "embeddings" not in _schema_sql(old)
    with pytest.raises(SchemaMismatch, match="open it once read-write"):
        Store(old, readonly=True)
    filled = tmp_path / "filled.db"
    with Store(filled) as s:
        s.begin_run(RUN, source="sim", config={})
        write_lineage(s)
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("ATTACH ? AS src", (str(filled),))
    conn.execute("PRAGMA foreign_keys = OFF")  # copy tables in any order
    for table in TABLES:
        if table not in ADDED_AFTER_V1:
            _copy_into_old(conn, table.name)
    conn.execute("DETACH src")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    before = dump(old)
    assert len(before["detections"]) == 10
    assert [row[4] for row in before["events"]] == ["birth", "birth", "division", "birth", "death"]

    with Store(old) as s:  # the current Store migrates it in place
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert s.frame_indices(RUN, POS) == [0, 1, 2, 3]
        assert [h.embeddings for h in s.history(RUN, POS, 10)] == [None] * 4
    after = dump(old)
    assert after.pop("embeddings") == []
    assert after.pop("leases") == []  # the writer released its lease on close
    assert after.pop("scale") == []
    assert after.pop("frame_models") == []
    # every row of every version-1 table kept as it was, events in today's words
    new_kind = {"birth": "new_track", "death": "lost", "division": "division"}
    assert after.pop("events") == [
        (*row[:4], new_kind[row[4]], *row[5:]) for row in before.pop("events")
    ]
    assert after == before

    with Store(old) as s:  # and embeddings can now be written and read back
        mask, dets = frame_data([7, 8, 300])
        emb = np.arange(6, dtype=np.float32).reshape(3, 2)
        assert s.write_frame(
            RUN, POS, 4, timestamp=104.0, mask=mask, detections=dets,
            step=step_for(4, dets, {7: 3, 8: 4, 300: 5}, embeddings=emb),
        )  # fmt: skip
        *_, third, last = s.history(RUN, POS, 3)
        assert (third.frame, third.embeddings) == (3, None)
        assert last.frame == 4
        assert last.embeddings is not None
        np.testing.assert_array_equal(last.embeddings, emb)
    assert len(dump(old)["embeddings"]) == 1
    # same tables, columns, docs and indexes as a file created at the current version
    Store(tmp_path / "fresh.db").close()
    assert _schema_sql(old) == _schema_sql(tmp_path / "fresh.db")
    with Store(old, readonly=True) as r:
        assert len(r.history(RUN, POS, 1)) == 1


def test_failed_migration_leaves_the_version_1_file_as_it_was(tmp_path: Path) -> None:
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old, isolation_level=None)
    migrate(conn, target=1, migrations={}, create=_create_v1_schema)

    def half_then_fail(c: sqlite3.Connection) -> None:
        MIGRATIONS[1](c)
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, migrations={1: half_then_fail})
    conn.close()
    assert "embeddings" not in _schema_sql(old)
    with Store(old) as s:  # and a later open still upgrades it
        assert "embeddings" in s.db.table_names()


def test_version_2_events_open_in_todays_words(tmp_path: Path) -> None:
    # A version-2 file as a version-2 tracker wrote it: 'birth'/'death' events, a
    # one-daughter "division" (track 5 → 6 at frame 4), and the last event deleted, so the
    # AUTOINCREMENT counter is above the largest id.
    old = tmp_path / "v2.db"
    conn = sqlite3.connect(old, isolation_level=None)
    assert migrate(conn, target=2, migrations={}, create=_create_v2_schema) == 0
    conn.close()
    filled = tmp_path / "filled.db"
    with Store(filled) as s:
        s.begin_run(RUN, source="sim", config={})
        write_lineage(s)
        m, d = frame_data([7, 8, 301])
        s.write_frame(
            RUN, POS, 4, timestamp=104.0, mask=m, detections=d,
            step=step_for(4, d, {7: 3, 8: 4, 301: 6}, started=[TrackStart(6, 4, parent_id=5)],
                          ended=[TrackEnd(5, 3, "divided")],
                          events=[LineageEvent("division", 4, 5, daughters=(6,)),
                                  LineageEvent("new_track", 4, 6)]),
        )  # fmt: skip
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("ATTACH ? AS src", (str(filled),))
    conn.execute("PRAGMA foreign_keys = OFF")
    for table in TABLES:
        if table not in (SCALE_TABLE, LEASES_TABLE, FRAME_MODELS_TABLE):  # added later
            _copy_into_old(conn, table.name)
    conn.execute("DETACH src")
    conn.execute("DELETE FROM events WHERE id = 7")
    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', 7)")
    conn.close()
    with pytest.raises(SchemaMismatch, match="open it once read-write"):
        Store(old, readonly=True)

    with Store(old) as s:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        events = s.events(RUN, POS)
        assert [(e["id"], e["kind"], e["track_id"]) for e in events] == [
            (1, "new_track", 1),
            (2, "new_track", 2),
            (3, "division", 1),
            (4, "new_track", 5),
            (5, "lost", 2),
            (6, "division", 5),
        ]
        # the old one-daughter "division" is kept, but is no division for any reader
        assert [e["track_id"] for e in s.events(RUN, POS, kinds=["division"])] == [1]
        counts = s.counts(RUN)
        assert (counts["divisions"], counts["new tracks"], counts["lost"]) == (1, 3, 1)
        assert [p["divisions"] for p in s.position_summaries(RUN)] == [1]
        # new events continue after the old counter: a reader polling id > 7 misses none
        m, d = frame_data([7, 8, 301])
        s.write_frame(
            RUN, POS, 5, timestamp=105.0, mask=m, detections=d,
            step=step_for(5, d, {7: 3, 8: 4, 301: 6}, events=[LineageEvent("left", 5, 9)]),
        )  # fmt: skip
        assert [(e["id"], e["kind"]) for e in s.events(after_id=7)] == [(8, "left")]
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):
            s.conn.execute(  # old words are read, never written
                "INSERT INTO events (run_id, position, frame, kind, track_id, daughters,"
                " confidence, created) VALUES (?, ?, 5, 'birth', 1, ?, 1.0, 0.0)",
                (RUN, POS, json.dumps([])),
            )
    Store(tmp_path / "fresh.db").close()
    assert _schema_sql(old) == _schema_sql(tmp_path / "fresh.db")


def test_readonly_open_of_old_schema_asks_for_migration(db_path: Path) -> None:
    Store(db_path).close()
    _set_user_version(db_path, SCHEMA_VERSION - 1)
    with pytest.raises(SchemaMismatch, match="open it once read-write"):
        Store(db_path, readonly=True)


# --------------------------------------------------------------------------- embeddings


def test_embeddings_round_trip_in_label_order(store: Store, db_path: Path) -> None:
    write_lineage(store)
    mask, sorted_dets = frame_data([2, 7, 300, 8])
    assert sorted_dets.labels.tolist() == [2, 7, 8, 300]
    dets = sorted_dets.subset(np.array([3, 0, 2, 1]))  # given to the store unsorted
    assert dets.labels.tolist() == [300, 2, 8, 7]
    rng = np.random.default_rng(0)
    emb = rng.normal(scale=3.0, size=(4, 16)).astype(np.float32)
    emb[:, 0] = dets.labels  # row i is labelled by its detection's label
    step = step_for(4, dets, {7: 3, 8: 4, 300: 5, 2: 6}, started=[TrackStart(6, 4)],
                    embeddings=emb)  # fmt: skip
    assert store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=dets, step=step)
    # a re-sent frame with other embeddings changes nothing
    other = step_for(4, dets, {7: 3, 8: 4, 300: 5, 2: 6}, embeddings=emb + 1)
    assert not store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=dets, step=other)
    [(n, dim, dtype, blob)] = (
        sqlite3.connect(db_path).execute("SELECT n, dim, dtype, data FROM embeddings").fetchall()
    )
    assert (n, dim, dtype, len(blob)) == (4, 16, "<f2", 4 * 16 * 2)  # float16 on disk

    for s in (store, Store(db_path, readonly=True)):
        *older, h = s.history(RUN, POS, 3)
        assert [o.embeddings for o in older] == [None, None]  # frames written without
        assert h.frame == 4
        assert h.detections.labels.tolist() == [2, 7, 8, 300]
        assert h.track_ids.tolist() == [6, 3, 4, 5]
        assert h.embeddings is not None
        assert h.embeddings.dtype == np.float32
        assert h.embeddings.shape == (4, 16)
        assert h.embeddings[:, 0].tolist() == [2, 7, 8, 300]  # follows the detections
        expected = emb[np.argsort(dets.labels)]
        np.testing.assert_allclose(h.embeddings, expected, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(h.embeddings, expected.astype(np.float16))
        if s is not store:
            s.close()


def test_empty_frame_with_embeddings_gives_empty_rows_not_none(store: Store) -> None:
    empty = np.zeros((16, 16), np.int32)
    store.write_frame(
        RUN, POS, 0, timestamp=0.0, mask=empty, detections=Detections.empty(),
        step=TrackStep(0, np.zeros(0, np.int64), embeddings=np.zeros((0, 8), np.float32)),
    )  # fmt: skip
    store.write_frame(
        RUN, POS, 1, timestamp=1.0, mask=empty, detections=Detections.empty(),
        step=TrackStep(1, np.zeros(0, np.int64)),
    )  # fmt: skip
    first, second = store.history(RUN, POS, 2)
    assert first.embeddings is not None
    assert first.embeddings.shape == (0, 8)
    assert second.embeddings is None


@pytest.mark.parametrize(
    ("embeddings", "match"),
    [
        (np.zeros((2, 4), np.float32), "3 detections but step.embeddings has 2 rows"),
        (np.zeros((4, 4), np.float32), "3 detections but step.embeddings has 4 rows"),
        (np.zeros(3, np.float32), r"must be 2-D \(N, D\), got \(3,\)"),
        (np.zeros((3, 2, 2), np.float32), "must be 2-D"),
        (np.array([[0.0], [np.nan], [1.0]], np.float32), "NaN or infinite"),
        (np.array([[0.0], [np.inf], [1.0]], np.float32), "NaN or infinite"),
        (np.array([[0.0], [1e6], [1.0]], np.float32), "beyond ±65504.*float16"),
        (np.ones((3, 2), np.complex64), "real numbers"),
    ],
)
def test_bad_embeddings_are_rejected_and_nothing_is_stored(
    store: Store, db_path: Path, embeddings: np.ndarray, match: str
) -> None:
    write_lineage(store)
    before = dump(db_path)
    mask, dets = frame_data([7, 8, 9])
    step = step_for(4, dets, {7: 3, 8: 4, 9: 6}, started=[TrackStart(6, 4)],
                    embeddings=embeddings)  # fmt: skip
    with pytest.raises(StoreError, match=f"frame 4: .*{match}"):
        store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=dets, step=step)
    assert_frame_absent(store, db_path, before, 4)
    assert dump(db_path)["embeddings"] == []


def test_failed_frame_rolls_back_its_embeddings(store: Store, db_path: Path) -> None:
    write_lineage(store)
    before = dump(db_path)
    mask, dets = frame_data([7, 8])
    step = TrackStep(4, np.array([3, 4], np.int64), ended=[TrackEnd(77, 3, "lost")],
                     embeddings=np.ones((2, 3), np.float32))  # fmt: skip
    with pytest.raises(StoreError, match="unknown track"):
        store.write_frame(RUN, POS, 4, timestamp=1.0, mask=mask, detections=dets, step=step)
    assert_frame_absent(store, db_path, before, 4)


def test_deleting_a_frame_deletes_its_embeddings(store: Store, db_path: Path) -> None:
    """No code deletes frames today; the foreign key makes sure any that will also drops
    the frame's embeddings (as it does its mask and detections)."""
    mask, dets = frame_data([1, 2])
    store.write_frame(
        RUN, POS, 0, timestamp=0.0, mask=mask, detections=dets,
        step=step_for(0, dets, {1: 1, 2: 2}, started=[TrackStart(1, 0), TrackStart(2, 0)],
                      embeddings=np.ones((2, 3), np.float32)),
    )  # fmt: skip
    assert len(dump(db_path)["embeddings"]) == 1
    store.conn.execute("DELETE FROM frames WHERE run_id = ? AND frame = 0", (RUN,))
    store.conn.commit()
    rows = dump(db_path)
    assert rows["embeddings"] == rows["masks"] == rows["detections"] == []


def test_corrupt_embeddings_blob_gives_store_error() -> None:
    blob = encode_embeddings(np.ones((2, 3), np.float32), np.array([5, 1]))
    np.testing.assert_array_equal(decode_embeddings(2, 3, "<f2", blob), np.ones((2, 3)))
    with pytest.raises(StoreError, match="expected 3x3"):
        decode_embeddings(3, 3, "<f2", blob)
    with pytest.raises(StoreError, match="unknown dtype"):
        decode_embeddings(2, 3, "nonsense", blob)


# --------------------------------------------------------------------------- concurrency


def test_readonly_reader_sees_commits_while_writer_is_open(db_path: Path) -> None:
    with Store(db_path) as writer:
        writer.begin_run(RUN, source="sim", config={})
        mask, dets = frame_data([1, 2])
        writer.write_frame(
            RUN, POS, 0, timestamp=0.0, mask=mask, detections=dets,
            step=step_for(0, dets, {1: 1, 2: 2}, started=[TrackStart(1, 0), TrackStart(2, 0)]),
        )  # fmt: skip
        with Store(db_path, readonly=True) as reader:
            assert reader.last_frame(RUN, POS) == 0
            writer.write_frame(
                RUN, POS, 1, timestamp=1.0, mask=mask, detections=dets,
                step=step_for(1, dets, {1: 1, 2: 2}),
            )  # fmt: skip
            assert reader.frame_indices(RUN, POS) == [0, 1]
            np.testing.assert_array_equal(reader.load_mask(RUN, POS, 1), mask)
            with pytest.raises(StoreError, match="read-only"):
                reader.begin_run("x", source="sim", config={})
            with pytest.raises(StoreError, match="read-only"):
                reader.write_track_ends(RUN, POS, [TrackEnd(1, 1, "lost")])
            # the writer is not blocked by an open reader
            writer.write_track_ends(RUN, POS, [TrackEnd(1, 1, "active"), TrackEnd(2, 1, "lost")])
            assert [t.fate for t in reader.tracks(RUN, POS)] == ["active", "lost"]


@pytest.fixture
def impatient_store(db_path: Path) -> Iterator[Store]:
    with Store(db_path, config=StoreConfig(busy_timeout_s=0.05)) as s:
        yield s


def test_locked_write_fails_fast_with_short_timeout(impatient_store: Store, db_path: Path) -> None:
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="busy timeout"):
            impatient_store.begin_run("x", source="sim", config={})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert impatient_store.begin_run("x", source="sim", config={}) is True


# --------------------------------------------------------------------------- queries


def test_history_returns_last_frames_oldest_first(store: Store) -> None:
    write_lineage(store)
    hist = store.history(RUN, POS, 2)
    assert [h.frame for h in hist] == [2, 3]
    written = [[7, 8, 2], [7, 8, 300]]  # as laid out by write_lineage
    for h, labels, ids in zip(hist, written, [[2, 3, 4], [3, 4, 5]], strict=True):
        assert h.detections.labels.tolist() == sorted(labels)
        assert h.track_ids.tolist() == ids
        _, dets = frame_data(labels)
        assert_same_detections(h.detections, dets)
    assert [h.frame for h in store.history(RUN, POS, 100)] == [0, 1, 2, 3]
    assert store.history(RUN, POS, 0) == []
    assert store.history(RUN, "elsewhere", 3) == []


def test_history_with_empty_frames_and_gaps(store: Store) -> None:
    empty = np.zeros((16, 16), np.int32)
    for frame in (0, 2, 5):
        store.write_frame(
            RUN, POS, frame, timestamp=float(frame), mask=empty,
            detections=Detections.empty(), step=TrackStep(frame, np.zeros(0, np.int64)),
        )  # fmt: skip
    hist = store.history(RUN, POS, 2)
    assert [h.frame for h in hist] == [2, 5]
    assert all(len(h.detections) == 0 and h.track_ids.shape == (0,) for h in hist)


def test_last_frame(store: Store) -> None:
    assert store.last_frame(RUN, POS) is None
    mask, dets = frame_data([1])
    started = [TrackStart(1, 3)]
    store.write_frame(
        RUN, POS, 3, timestamp=0.0, mask=mask, detections=dets,
        step=step_for(3, dets, {1: 1}, started=started),
    )  # fmt: skip
    store.write_frame(
        RUN, POS, 1, timestamp=0.0, mask=mask, detections=dets,
        step=step_for(1, dets, {1: 2}, started=[TrackStart(2, 1)]),
    )  # fmt: skip
    assert store.last_frame(RUN, POS) == 3  # out-of-order arrival does not move it back
    assert store.last_frame(RUN, "Pos1") is None
    assert store.tracks(RUN, POS)[0].end_frame == 3


def test_events_filtering(store: Store) -> None:
    write_lineage(store)
    store.begin_run("run-2", source="sim", config={})
    write_lineage(store, run="run-2", pos="B2")
    assert len(store.events()) == 10
    assert {e["run_id"] for e in store.events("run-2")} == {"run-2"}
    assert store.events(RUN, "B2") == []
    divisions = store.events(kinds=["division"])
    assert [(e["run_id"], e["daughters"]) for e in divisions] == [(RUN, [3, 4]), ("run-2", [3, 4])]
    new_lost = store.events(RUN, POS, kinds=["new_track", "lost"])
    assert [e["kind"] for e in new_lost] == ["new_track", "new_track", "new_track", "lost"]
    # the names a version-2 store used still select the same events
    assert store.events(RUN, POS, kinds=["birth", "death"]) == new_lost
    first_two = store.events(limit=2)
    assert [e["id"] for e in first_two] == [1, 2]
    rest = store.events(after_id=first_two[-1]["id"])
    assert [e["id"] for e in rest] == list(range(3, 11))
    assert store.events(after_id=10) == []


# --------------------------------------------------------------------------- errors


def test_missing_directory_gives_clear_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "no" / "such" / "dir" / "x.db")


def test_readonly_open_of_missing_file_gives_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        Store(tmp_path / "absent.db", readonly=True)
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_file_gives_store_error(db_path: Path) -> None:
    Store(db_path).close()
    db_path.chmod(0o444)
    try:
        with pytest.raises(StoreError, match="read-only"), Store(db_path) as s:
            s.begin_run(RUN, source="sim", config={})
    finally:
        db_path.chmod(0o644)


def test_store_implements_the_writer_protocol(store: Store) -> None:
    writer: StoreWriter = store  # checked by mypy
    assert writer.last_frame(RUN, POS) is None


def test_store_config_is_frozen_and_strict() -> None:
    cfg = StoreConfig()
    assert cfg.zlib_level == 1
    with pytest.raises(pydantic.ValidationError):
        StoreConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        StoreConfig(zlib_level=12)
    with pytest.raises(pydantic.ValidationError):
        cfg.zlib_level = 3  # type: ignore[misc]
    assert StoreConfig.model_fields["busy_timeout_s"].description


# --------------------------------------------------------------------------- dashboard queries


def test_dashboard_queries_summarise_positions_cells_and_recent_frames(store: Store) -> None:
    write_lineage(store)
    write_lineage(store, pos="Pos1")
    summaries = store.position_summaries(RUN)
    assert [s["position"] for s in summaries] == [POS, "Pos1"]
    s = summaries[0]
    # last frame 3 holds 3 detections; tracks 3, 4, 5 are active, 1 divided, 2 lost.
    assert (s["last_frame"], s["n_frames"], s["n_cells"]) == (3, 4, 3)
    assert (s["active_tracks"], s["divisions"]) == (3, 1)
    assert s["updated"] > 0
    assert store.position_summaries("no-such-run") == []

    assert store.cells_per_frame(RUN, POS) == [(0, 2), (1, 2), (2, 3), (3, 3)]
    assert store.cells_per_frame(RUN, POS, last_n=2) == [(2, 3), (3, 3)]
    assert store.cells_per_frame(RUN, "nowhere") == []

    recent = store.recent_frames(RUN, limit=3)
    assert len(recent) == 3
    assert [r["received"] for r in recent] == sorted(r["received"] for r in recent)
    assert recent[-1]["position"] == "Pos1"  # written last
    first = store.recent_frames(RUN, limit=100)[0]
    assert first["timings"] == {"segment": 12.5, "track": 1.5}


def test_divisions_carry_their_frames_acquisition_time(store: Store) -> None:
    """The dashboard shows a division at its acquisition time, not its (lagging) commit."""
    write_lineage(store)
    write_lineage(store, pos="Pos1")
    rows = store.divisions_acquired(RUN)
    assert [(r["position"], r["frame"], r["track_id"]) for r in rows] == [
        (POS, 2, 1),
        ("Pos1", 2, 1),
    ]
    assert [r["acquired"] for r in rows] == [102.0, 102.0]  # frame 2's timestamp
    assert all(r["created"] > 1e9 for r in rows)  # committed now
    assert rows[0]["daughters"] == [3, 4]
    assert store.divisions_acquired(RUN, after_id=rows[0]["id"]) == rows[1:]
    assert store.divisions_acquired(RUN, limit=1) == rows[:1]
    assert store.divisions_acquired("no-such-run") == []


# --------------------------------------------------------------------------- opening safely


def _file_state(path: Path) -> tuple[bytes, list[str]]:
    """The bytes of a file and which SQLite side files sit beside it."""
    return path.read_bytes(), sorted(
        p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-")
    )


def test_foreign_sqlite_file_is_refused_without_being_touched(tmp_path: Path) -> None:
    """A writer refuses another program's SQLite file before changing anything in it
    (it used to switch the file to WAL first)."""
    foreign = tmp_path / "notes.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.commit()
    conn.close()
    before = _file_state(foreign)
    with pytest.raises(SchemaMismatch, match="not a livetrack database"):
        Store(foreign)
    assert _file_state(foreign) == before
    conn = sqlite3.connect(foreign)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store(text)
    assert text.read_text() == "not a database at all\n" * 100


def make_unwritable(path: Path) -> Iterator[None]:
    """Make a file unwritable even for root (immutable attribute) or by mode (others)."""
    import shutil
    import subprocess

    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("root without chattr cannot make a file unwritable")
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i not supported here: {done.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)


def test_unwritable_database_is_refused_when_opened_not_at_the_first_frame(
    db_path: Path,
) -> None:
    with Store(db_path) as s:
        s.begin_run(RUN, source="sim", config={})
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{db_path}{suffix}").exists()
    with contextlib.contextmanager(make_unwritable)(db_path):
        with pytest.raises(StoreError, match="can be written: the database is read-only"):
            Store(db_path)
        with Store(db_path, readonly=True) as r:  # reading it is still fine
            assert r.has_run(RUN)


# --------------------------------------------------------------------------- lost files


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_database_deleted_or_replaced_while_open_stops_every_write(
    tmp_path: Path, how: str
) -> None:
    """Writing on into unlinked files would 'commit' frames that vanish with the process:
    the next write (and the check before acknowledging) raises StoreLost instead."""
    db = tmp_path / "gone.db"
    store = Store(db)
    try:
        store.begin_run(RUN, source="sim", config={})
        m, d = frame_data([1])
        store.write_frame(
            RUN, POS, 0, timestamp=1.0, mask=m, detections=d,
            step=step_for(0, d, {1: 1}, started=[TrackStart(1, 0)]),
        )  # fmt: skip
        store.check_intact()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink()
        if how == "replaced":
            Store(db).close()  # another, empty database now has the name
        with pytest.raises(StoreLost, match=f"gone.db was {how}"):
            store.check_intact()
        with pytest.raises(StoreLost, match=f"writing frame 1 .*gone.db was {how}"):
            store.write_frame(
                RUN, POS, 1, timestamp=2.0, mask=m, detections=d, step=step_for(1, d, {1: 1})
            )
        with pytest.raises(StoreLost):
            store.end_run(RUN)
    finally:
        store.close()  # logs that the lease could not be released; does not raise


def test_only_the_wal_deleted_is_noticed_too(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    with Store(db) as store:
        store.begin_run(RUN, source="sim", config={})
        Path(f"{db}-wal").unlink()
        with pytest.raises(StoreLost, match=r"w\.db-wal was deleted"):
            store.end_run(RUN)


# --------------------------------------------------------------------------- run leases


def test_a_second_writer_of_a_run_is_refused_by_name_until_the_first_closes(
    db_path: Path,
) -> None:
    first = Store(db_path)
    second = Store(db_path)
    try:
        assert first.begin_run(RUN, source="sim", config={})
        with pytest.raises(RunInUse, match=rf"run 'run-1' is being written .*pid {os.getpid()}"):
            second.begin_run(RUN, source="sim", config={})
        with pytest.raises(RunInUse, match="different --run-id"):
            second.check_run_free(RUN)
        with pytest.raises(RunInUse):
            second.end_run(RUN)  # nor can it mark the run finished under the writer
        assert second.begin_run("other", source="sim", config={})  # another run is fine
        holder = second.run_holder(RUN)
        assert holder is not None
        assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
        first.close()  # a clean close releases the lease
        assert second.run_holder(RUN) is None
        assert not second.begin_run(RUN, source="sim", config={})  # resumed
    finally:
        first.close()
        second.close()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _set_lease(path: Path, **values: Any) -> None:
    conn = sqlite3.connect(path)
    sets = ", ".join(f"{k} = ?" for k in values)
    conn.execute(f"UPDATE leases SET {sets}", tuple(values.values()))
    conn.commit()
    conn.close()


def test_a_lease_left_by_a_dead_process_does_not_block_a_resume(db_path: Path) -> None:
    crashed = Store(db_path)
    crashed.begin_run(RUN, source="sim", config={})
    crashed.conn.close()  # the process "dies": no end_run, no release
    _set_lease(db_path, pid=_dead_pid())
    with Store(db_path) as s:
        assert s.run_holder(RUN) is None
        assert not s.begin_run(RUN, source="sim", config={})
        lease = s.conn.execute("SELECT pid FROM leases WHERE run_id = ?", (RUN,)).fetchone()
        assert lease == (os.getpid(),)


def test_a_reused_pid_does_not_keep_a_lease_alive(db_path: Path) -> None:
    """The pid exists (it is ours) but belongs to a process started after the lease."""
    with Store(db_path) as s:
        s.begin_run(RUN, source="sim", config={})
        _set_lease(db_path, token="gone", pid=1, process_start=0.0)
        if os.path.exists("/proc/1/stat"):
            assert s.run_holder(RUN) is None
            assert not s.begin_run(RUN, source="sim", config={})


def test_a_lease_from_another_host_lives_while_its_heartbeat_is_fresh(db_path: Path) -> None:
    import time

    with Store(db_path) as s:
        s.begin_run(RUN, source="sim", config={})
        _set_lease(db_path, token="remote", host="scope-pc", heartbeat=time.time())
        with pytest.raises(RunInUse, match=r"pid .* on host scope-pc"):
            s.begin_run(RUN, source="sim", config={})
        stale = time.time() - s.config.lease_timeout_s - 1
        _set_lease(db_path, heartbeat=stale)
        assert not s.begin_run(RUN, source="sim", config={})  # taken over


def test_a_writer_whose_lease_was_taken_over_stops_writing(db_path: Path) -> None:
    with Store(db_path) as s:
        s.begin_run(RUN, source="sim", config={})
        m, d = frame_data([1])
        _set_lease(db_path, token="someone", host="scope-pc", pid=7)
        with pytest.raises(RunInUse, match="lost its lease: run 'run-1' is being written"):
            s.write_frame(
                RUN, POS, 0, timestamp=1.0, mask=m, detections=d,
                step=step_for(0, d, {1: 1}, started=[TrackStart(1, 0)]),
            )  # fmt: skip
        assert s.frame_indices(RUN, POS) == []


# --------------------------------------------------------------------------- resume_state


def test_resume_state_answers_everything_a_worker_resumes_from(store: Store) -> None:
    """The four-frame lineage: last frame 3, the frame shape from the positions table,
    the window's frames, the tracks open in it (3, 4, 5), the newest track and one
    division — in one question."""
    write_lineage(store)
    r = store.resume_state(RUN, POS, window=2, scale_window=4)
    assert r.last_frame == 3
    assert r.shape == (64, 96)
    assert [h.frame for h in r.history] == [2, 3]
    assert [t.track_id for t in r.open_tracks] == [3, 4, 5]
    assert all(t.fate == "active" for t in r.open_tracks)
    assert r.newest_track == TrackRecord(5, None, 3, 3, "active")
    assert r.divisions == 1
    assert r.stale_open_tracks == 0
    assert [t.track_id for t in r.tracks] == [3, 4, 5]  # the newest is open already


def test_resume_state_of_a_position_without_frames_is_empty(store: Store) -> None:
    r = store.resume_state(RUN, "nowhere", window=5)
    assert (r.last_frame, r.shape, r.history, r.tracks, r.divisions) == (None, None, [], [], 0)


def _chain(store: Store, n_frames: int, run: str) -> None:
    """One cell per frame, each a new track, the previous one lost: after ``n_frames``
    frames, n_frames - 1 finished tracks and one open track (the newest)."""
    store.begin_run(run, source="test", config={})
    for f in range(n_frames):
        m, d = frame_data([1])
        ended = [TrackEnd(f, f - 1, "lost")] if f else []
        store.write_frame(
            run, POS, f, timestamp=float(f), mask=m, detections=d,
            step=step_for(f, d, {1: f + 1}, started=[TrackStart(f + 1, f)], ended=ended),
        )  # fmt: skip


def test_resume_state_does_not_grow_with_the_number_of_finished_tracks(store: Store) -> None:
    """Bounded by the window: a position with 5 or 120 finished tracks gives back the same
    number of history frames and only the open track, yet the newest id (where a resumed
    tracker continues numbering) and the last frame follow the movie."""
    sizes = {}
    for n in (6, 121):
        run = f"chain-{n}"
        _chain(store, n, run)
        assert len(store.tracks(run, POS)) == n  # what the old resume loaded
        r = store.resume_state(run, POS, window=3)
        assert r.last_frame == n - 1
        assert r.newest_track is not None
        assert r.newest_track.track_id == n
        assert [t.track_id for t in r.open_tracks] == [n]
        sizes[n] = (len(r.history), len(r.open_tracks), len(r.tracks))
    assert sizes[6] == sizes[121] == (3, 1, 1)


def test_resume_state_reads_tracks_and_events_through_its_indexes(store: Store) -> None:
    """The open tracks, the stale count and the division count are index searches
    (``tracks_open``, ``events_kind``), not a walk over every track or event of the position:
    the plan SQLite chooses for each statement resume_state runs."""
    _chain(store, 30, "indexed")
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        store.resume_state("indexed", POS, window=3)
    finally:
        store.conn.set_trace_callback(None)
    plans = {}
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT") and (
            "FROM tracks" in sql or "FROM events" in sql
        ):
            rows = store.conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            plans[sql] = " / ".join(str(r[-1]) for r in rows)
    open_q = [p for s, p in plans.items() if "fate = 'active'" in s]
    assert len(open_q) == 2  # the open tracks and the stale count
    assert all(
        "USING COVERING INDEX tracks_open" in p or "USING INDEX tracks_open" in p for p in open_q
    )
    division_q = [p for s, p in plans.items() if "kind = 'division'" in s]
    assert len(division_q) == 1
    assert "events_kind" in division_q[0]


def test_version_5_file_gets_the_resume_indexes_and_keeps_its_data(tmp_path: Path) -> None:
    """A version-5 file (today's tables without the version-6 indexes) is upgraded in place:
    the two indexes appear, every row is kept, and the schema equals a fresh file's."""
    old = tmp_path / "v5.db"
    filled = tmp_path / "filled.db"
    with Store(filled) as s:
        s.begin_run(RUN, source="sim", config={})
        write_lineage(s)

    def create_v5(conn: sqlite3.Connection) -> None:
        for table in TABLES:
            if table is not FRAME_MODELS_TABLE:  # added in version 7
                for statement in render_ddl(_before_v6(table)):
                    conn.execute(statement)

    conn = sqlite3.connect(old, isolation_level=None)
    assert migrate(conn, target=5, migrations={}, create=create_v5) == 0
    conn.execute("ATTACH ? AS src", (str(filled),))
    conn.execute("PRAGMA foreign_keys = OFF")
    for table in TABLES:
        if table not in (LEASES_TABLE, FRAME_MODELS_TABLE):
            conn.execute(f"INSERT INTO {table.name} SELECT * FROM src.{table.name}")
    conn.execute("DETACH src")
    conn.close()
    assert not set(V6_INDEXES) & set(_schema_sql(old))
    before = dump(old)
    with Store(old) as s:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        r = s.resume_state(RUN, POS, window=2)
        assert ([t.track_id for t in r.open_tracks], r.divisions) == ([3, 4, 5], 1)
    after = dump(old)
    assert after.pop("frame_models") == []
    after.pop("leases")
    before.pop("leases")
    assert after == before
    Store(tmp_path / "fresh.db").close()
    assert _schema_sql(old) == _schema_sql(tmp_path / "fresh.db")
    assert set(V6_INDEXES) <= set(_schema_sql(old))


def test_resume_state_counts_open_tracks_older_than_the_window(store: Store) -> None:
    """A track still marked open whose last detection is before the window cannot be
    continued: counted (for the worker's warning), not returned; the newest track still
    is, closed or not, for its id."""
    store.begin_run("stale", source="test", config={})
    m, d = frame_data([1, 2])
    store.write_frame(
        "stale", POS, 0, timestamp=0.0, mask=m, detections=d,
        step=step_for(0, d, {1: 1, 2: 2}, started=[TrackStart(1, 0), TrackStart(2, 0)]),
    )  # fmt: skip
    for f in range(1, 5):
        m, d = frame_data([2])
        store.write_frame(
            "stale", POS, f, timestamp=float(f), mask=m, detections=d,
            step=step_for(f, d, {2: 2}),
        )  # fmt: skip
    store.write_track_ends("stale", POS, [TrackEnd(2, 4, "lost")])
    r = store.resume_state("stale", POS, window=2)
    assert r.open_tracks == []
    assert r.stale_open_tracks == 1  # track 1, last seen at frame 0
    assert r.newest_track == TrackRecord(2, None, 0, 4, "lost")
    assert r.tracks == [r.newest_track]


def test_store_meets_the_worker_protocol() -> None:
    """The worker takes a StoreWriter; Store is one (every method the protocol declares)."""
    declared = {
        name
        for name in vars(StoreWriter)
        if not name.startswith("_") and callable(getattr(StoreWriter, name))
    }
    assert {"resume_state", "write_frame", "begin_run", "end_run"} <= declared
    assert all(callable(getattr(Store, name, None)) for name in declared)


def test_a_setting_added_after_a_run_began_is_compared_with_the_value_it_ran_with() -> None:
    """A run stored before the division-cue weights existed ran with the plain mean (0.5)
    on any masks: it resumes at 0.5 and is refused, naming the setting, at any other
    weight. A run stored by the version with one setting (None: 0.5 / 0.7) is the same as
    the two settings' defaults."""
    stored = {"track": {"method": "lstm", "division_cues": "both"}}
    same = {
        "track": {
            **stored["track"],
            "division_geometry_weight": 0.5,
            "division_geometry_weight_given": 0.5,
        }
    }
    resume_mismatch("r1", stored, same)
    other = {"track": {**same["track"], "division_geometry_weight_given": 0.7}}
    begun = r"division_geometry_weight_given: begun with 0\.5, now 0\.7"
    with pytest.raises(ResumeMismatch, match=begun):
        resume_mismatch("r1", stored, other)
    one_setting = {"track": {**stored["track"], "division_geometry_weight": None}}
    resume_mismatch("r1", one_setting, other)  # None meant 0.5 and 0.7
    with pytest.raises(ResumeMismatch, match=r"division_geometry_weight_given: begun with 0\.7"):
        resume_mismatch("r1", one_setting, same)
    # A setting nobody declared keeps the strict comparison: absent is not a value.
    with pytest.raises(ResumeMismatch, match=r"track\.new_thing: begun with None, now 1"):
        resume_mismatch("r1", stored, {"track": {**same["track"], "new_thing": 1}})


def test_a_run_begun_before_a_setting_existed_resumes_with_default_settings(
    tmp_path: Path,
) -> None:
    """Resumed with the default settings (the setting left at its default), a run stored
    without the key takes the value it ran with and passes the check of a real store; set
    to another value by the user, it is refused, naming the setting."""
    from livetrack.config import Settings
    from livetrack.worker import implied_settings, resume_settings, run_config

    old = run_config(Settings())
    for key in ("division_geometry_weight", "division_geometry_weight_given"):
        del old["track"][key]
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        defaults = Settings()
        implied = implied_settings(defaults, old)
        assert implied == {("track", "division_geometry_weight_given"): 0.5}
        resumed = resume_settings("r1", defaults, old)
        assert resumed.track.geometry_weight(labels_given=True) == 0.5
        assert resumed.track.geometry_weight(labels_given=False) == 0.5
        s.check_resume("r1", run_config(resumed))
        with pytest.raises(ResumeMismatch, match="division_geometry_weight_given"):
            s.check_resume("r1", run_config(defaults))
        chosen = Settings.model_validate({"track": {"division_geometry_weight_given": 0.9}})
        assert implied_settings(chosen, old) == {}
        with pytest.raises(ResumeMismatch, match=r"begun with 0\.5, now 0\.9"):
            s.check_resume("r1", run_config(resume_settings("r1", chosen, old)))


def test_a_run_begun_before_drift_correction_and_leftover_links_resumes_as_it_ran(
    tmp_path: Path,
) -> None:
    """track.drift_correction and track.leftover_link_distance came later: a run stored
    without them ran with neither, resumes so with the default command, and is refused
    when either is asked for explicitly."""
    from livetrack.config import Settings
    from livetrack.worker import resume_settings, run_config

    old = run_config(Settings())
    for key in ("drift_correction", "leftover_link_distance"):
        del old["track"][key]
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        resumed = resume_settings("r1", Settings(), old)
        assert resumed.track.drift_correction is False
        assert resumed.track.leftover_link_distance == 0.0
        s.check_resume("r1", run_config(resumed))
        with pytest.raises(ResumeMismatch, match=r"track\.drift_correction: begun with False"):
            s.check_resume("r1", run_config(Settings()))
        chosen = Settings.model_validate({"track": {"leftover_link_distance": 0.3}})
        with pytest.raises(ResumeMismatch, match=r"leftover_link_distance: begun with 0\.0"):
            s.check_resume("r1", run_config(resume_settings("r1", chosen, old)))


def test_a_run_begun_before_the_scale_settings_resumes_as_it_ran(tmp_path: Path) -> None:
    """segment.scale_source, segment.zoom and segment.max_scale_rise came later: a run
    stored without them ran with the image estimate at zoom 1 and no limit on the scale's
    rise, and resumes so with the default command; a new run stores
    the defaults (None: from the learned segmenter's detections; zoom as chosen)."""
    from livetrack.config import SegmentConfig, Settings
    from livetrack.worker import implied_settings, resume_settings, run_config

    old = run_config(Settings())
    assert old["segment"]["scale_source"] is None
    for key in ("scale_source", "zoom", "max_scale_rise"):
        del old["segment"][key]
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        defaults = Settings()
        assert implied_settings(defaults, old) == {
            ("segment", "scale_source"): "image",
            ("segment", "max_scale_rise"): None,
            **(
                {("segment", "zoom"): 1.0}
                if SegmentConfig.model_fields["zoom"].default != 1.0
                else {}
            ),
        }
        resumed = resume_settings("r1", defaults, old)
        assert resumed.segment.scale_source == "image"
        assert resumed.segment.zoom == 1.0
        assert resumed.segment.max_scale_rise is None  # no limit: as it ran
        s.check_resume("r1", run_config(resumed))
        with pytest.raises(ResumeMismatch, match="scale_source"):
            s.check_resume("r1", run_config(defaults))


def test_a_switched_run_begun_before_the_scale_settings_keeps_them(tmp_path: Path) -> None:
    """A run switched to another segmenter while it ran (``livetrack use-model``) and begun
    before segment.scale_source existed resumes with the switched model AND the image
    estimate it ran with (the switch must not drop the implied setting)."""
    from livetrack.config import Settings
    from livetrack.models import SHIPPED_SEGMENT_MODEL
    from livetrack.worker import resume_settings, run_config

    old = run_config(Settings())
    for key in ("scale_source", "zoom"):
        del old["segment"][key]
    old["segment"]["model_dir"] = str(SHIPPED_SEGMENT_MODEL)  # a switch records its model
    old["switches"] = [{"segment_model": str(SHIPPED_SEGMENT_MODEL)}]
    resumed = resume_settings("r1", Settings(), old)
    assert resumed.segment.model_dir == SHIPPED_SEGMENT_MODEL
    assert resumed.segment.scale_source == "image"
    assert resumed.segment.zoom == 1.0
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        s.check_resume("r1", run_config(resumed))


def test_a_run_begun_with_an_earlier_default_resumes_as_it_ran(tmp_path: Path) -> None:
    """segment.rescale_every's default changed (10 → 2): a run stored with 10 resumes with
    10 under the default command (not refused, not silently re-scaled every other frame);
    a run stored with another value is still refused when the command differs."""
    from livetrack.config import SegmentConfig, Settings
    from livetrack.store import CHANGED_DEFAULTS
    from livetrack.worker import implied_settings, resume_settings, run_config

    old_default = CHANGED_DEFAULTS[("segment", "rescale_every")]
    assert SegmentConfig.model_fields["rescale_every"].default != old_default
    old = run_config(Settings())
    old["segment"]["rescale_every"] = old_default
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        defaults = Settings()
        assert implied_settings(defaults, old) == {("segment", "rescale_every"): old_default}
        resumed = resume_settings("r1", defaults, old)
        assert resumed.segment.rescale_every == old_default
        s.check_resume("r1", run_config(resumed))
        with pytest.raises(ResumeMismatch, match="rescale_every"):
            s.check_resume("r1", run_config(defaults))
        other = {**old, "segment": {**old["segment"], "rescale_every": 5}}
        assert implied_settings(defaults, other) == {}
        assert s.begin_run("r2", source="sim", config=other) is True
        with pytest.raises(ResumeMismatch, match=r"begun with 5, now 2"):
            s.check_resume("r2", run_config(resume_settings("r2", defaults, other)))


def test_scale_state_gives_back_what_the_scale_needs(store: Store) -> None:
    """The latest measurements (window), the frames since the last one, the diameter last
    used and the smallest used after the scale settled (frames after the window - 1-th
    measurement: the floor of ``max_scale_rise``), from frames stored with and without a
    measurement."""
    store.begin_run("sc", source="test", config={})
    used = [30.0, 29.0, 24.0, 26.0, 27.0, 27.0]
    measured = [30.5, None, 23.5, None, 28.0, None]
    for f, (d, e) in enumerate(zip(used, measured, strict=True)):
        m, det = frame_data([1])
        store.write_frame(
            "sc", POS, f, timestamp=float(f), mask=m, detections=det,
            step=step_for(f, det, {1: 1}, started=[TrackStart(1, 0)] if f == 0 else []),
            diameter_px=d, diameter_estimate_px=e,
        )  # fmt: skip
    state = store.scale_state("sc", POS, window=3)  # settled after 2 measurements (frame 2)
    assert state.estimates == (30.5, 23.5, 28.0)
    assert state.frames_since == 1
    assert state.last_diameter == 27.0
    assert state.smallest_diameter == 26.0  # frames 3-5; frame 2 (24) was before
    assert store.scale_state("sc", POS, window=2).smallest_diameter == 24.0  # frames 1-5
    assert store.scale_state("sc", POS, window=5).smallest_diameter is None  # never settled
    assert store.scale_state("none", POS, window=2).smallest_diameter is None


def test_a_run_begun_before_the_small_size_rule_resumes_without_it(tmp_path: Path) -> None:
    """track.division_geometry_weight_small came later: a run stored without it ran with
    the shares alone whatever the size (None), and resumes so with the default command;
    checked against the rule (the defaults as they are), it is refused, naming the
    setting."""
    from livetrack.config import Settings
    from livetrack.worker import implied_settings, resume_settings, run_config

    old = run_config(Settings())
    del old["track"]["division_geometry_weight_small"]
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        defaults = Settings()
        assert defaults.track.division_geometry_weight_small == 0.7
        assert implied_settings(defaults, old) == {
            ("track", "division_geometry_weight_small"): None
        }
        resumed = resume_settings("r1", defaults, old)
        assert resumed.track.division_geometry_weight_small is None
        assert resumed.track.geometry_weight(False, smaller_than_trained=True) == 0.5
        s.check_resume("r1", run_config(resumed))
        with pytest.raises(ResumeMismatch, match="division_geometry_weight_small"):
            s.check_resume("r1", run_config(defaults))
        # A new run stores the rule, and resumes with it.
        new = run_config(defaults)
        assert new["track"]["division_geometry_weight_small"] == 0.7
        assert implied_settings(defaults, new) == {}


@pytest.mark.parametrize(
    ("key", "ran_with"),
    [("border_min_area_fraction", 0.15), ("large_object_area", 0.0), ("outline_threshold", None)],
)
def test_a_run_begun_before_a_later_segment_setting_resumes_as_it_ran(
    tmp_path: Path, key: str, ran_with: float | None
) -> None:
    """segment.border_min_area_fraction (objects at the edge dropped like any other: 0.15),
    segment.large_object_area (no second look: 0) and segment.outline_threshold (labels
    upscaled by nearest neighbour: None) came later: a run stored without one
    resumes as it ran with the default command, and is refused, naming the setting, with
    the default itself."""
    from livetrack.config import Settings
    from livetrack.worker import implied_settings, resume_settings, run_config

    old = run_config(Settings())
    del old["segment"][key]
    if key == "large_object_area":  # its dip came with it
        del old["segment"]["large_object_prominence"]
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        defaults = Settings()
        assert getattr(defaults.segment, key) != ran_with
        assert implied_settings(defaults, old) == {("segment", key): ran_with}
        resumed = resume_settings("r1", defaults, old)
        assert getattr(resumed.segment, key) == ran_with
        s.check_resume("r1", run_config(resumed))
        with pytest.raises(ResumeMismatch, match=key):
            s.check_resume("r1", run_config(defaults))


def test_a_run_begun_before_merges_could_be_split_resumes_and_one_that_split_keeps_it(
    tmp_path: Path,
) -> None:
    """track.merge_area_ratio came later, off by default: a run stored without it resumes
    with the default command (it never split); a run begun with splitting on is refused,
    naming the setting, without it."""
    from livetrack.config import Settings
    from livetrack.worker import implied_settings, run_config

    defaults = Settings()
    assert defaults.track.merge_area_ratio == 0.0
    old = run_config(defaults)
    del old["track"]["merge_area_ratio"]
    splitting = defaults.model_copy(
        update={"track": defaults.track.model_copy(update={"merge_area_ratio": 1.25})}
    )
    with Store(tmp_path / "old.db") as s:
        assert s.begin_run("r1", source="sim", config=old) is True
        assert implied_settings(defaults, old) == {}
        s.check_resume("r1", run_config(defaults))
        assert s.begin_run("r2", source="sim", config=run_config(splitting)) is True
        with pytest.raises(ResumeMismatch, match="merge_area_ratio"):
            s.check_resume("r2", run_config(defaults))
        s.check_resume("r2", run_config(splitting))


def test_runs_begun_before_cut_objects_were_joined_resume_without_joining(
    tmp_path: Path,
) -> None:
    """track.hold_convex_splits came later and is on by default: a run stored without it
    (older version) or with 0 (the default for a while) resumes under the default command
    with 0, as it ran; one begun with another value is refused, naming the setting."""
    from livetrack.config import Settings
    from livetrack.worker import implied_settings, resume_settings, run_config

    defaults = Settings()
    assert defaults.track.hold_convex_splits == 0.95
    without = run_config(defaults)
    del without["track"]["hold_convex_splits"]
    with_zero = run_config(defaults)
    with_zero["track"]["hold_convex_splits"] = 0.0
    other = run_config(defaults)
    other["track"]["hold_convex_splits"] = 0.9
    with Store(tmp_path / "old.db") as s:
        for run_id, stored in (("r1", without), ("r2", with_zero)):
            assert s.begin_run(run_id, source="sim", config=stored) is True
            assert implied_settings(defaults, stored) == {("track", "hold_convex_splits"): 0.0}
            resumed = resume_settings(run_id, defaults, stored)
            assert resumed.track.hold_convex_splits == 0.0
            s.check_resume(run_id, run_config(resumed))
        assert s.begin_run("r3", source="sim", config=other) is True
        assert implied_settings(defaults, other) == {}
        with pytest.raises(ResumeMismatch, match="hold_convex_splits"):
            s.check_resume("r3", run_config(defaults))
