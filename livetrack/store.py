"""The SQLite store: one transaction per frame, a versioned schema, every column documented.

Why SQLite in WAL mode: the worker is the only writer, while the TUI and the export read
the same file at the same time. In WAL mode readers never block the writer and see every
committed frame; a crash leaves the database at the last committed frame, which is exactly
where a restarted worker resumes (re-sent frames are ignored, see ``Store.write_frame``).

``PRAGMA synchronous=NORMAL`` is safe with WAL: a commit only appends to the WAL file and
the WAL is fsynced at checkpoints, so an application crash loses nothing and the database
is never corrupted. Only an OS crash or power cut can lose the last few commits — and those
frames are simply re-sent and re-processed on restart. In exchange a commit costs no fsync,
which matters at one commit per frame.

The schema is defined once, as data (``TABLES``). From it come both ``SCHEMA_DOC`` and the
``CREATE TABLE`` statements, which carry every column's description as an SQL comment, so
``sqlite3 livetrack.db .schema`` is self-explanatory. ``PRAGMA user_version`` holds the
schema version and ``PRAGMA application_id`` marks the file as a livetrack database.

Versioning: a fresh file is created directly at ``SCHEMA_VERSION`` from ``TABLES``. A file
with an older version is upgraded by ``MIGRATIONS[v]`` (version v → v+1, in one
transaction). So when the schema changes: edit ``TABLES``, bump ``SCHEMA_VERSION`` and add
the migration that turns an old file into the new shape (e.g. ``ALTER TABLE``). A newer or
unknown version raises ``SchemaMismatch``.

Refinements of the brief, and why:
- ``positions`` stores ``height``/``width`` as two integer columns instead of one
  ``frame_shape`` JSON value, so they can be queried and checked.
- Tables are ``STRICT`` (SQLite rejects a wrongly typed value instead of storing it) and
  the small-row keyed tables are ``WITHOUT ROWID`` (rows are stored in primary-key order,
  so there is no second b-tree for the key: fewer bytes per detection).
- ``detections.track_id`` is a foreign key into ``tracks`` and ``tracks.parent_id`` into
  ``tracks``: a tracker that forgets a ``TrackStart`` makes the frame fail loudly instead
  of leaving orphaned rows.
- A label image is stored in the smallest of uint8/uint16/int32 that holds its largest
  label (column ``dtype``); this halves what zlib must compress for < 65,536 objects.
- A learned tracker's per-detection embeddings (``TrackStep.embeddings``) are one float16
  BLOB per frame in their own table, rows in label order (the order ``history`` returns
  detections in), written in the frame's transaction; frames without have no row.
- Transactions are ``BEGIN IMMEDIATE`` (not sqlite-utils' deferred ``atomic()``): the write
  lock is taken first, so a second writer waits for the busy timeout instead of failing at
  once when its read snapshot turns stale.
- A run being written is leased (table ``leases``): ``begin_run`` records the writer's
  pid, host, start and heartbeat, and a second process that tries to write the same run
  gets ``RunInUse`` naming the holder, while a holder that died (its pid gone on this
  host, or its heartbeat stale from another host) does not block a resume. Every frame
  commit checks that the lease is still this writer's, so two processes never interleave
  frames of one run.
- A writer opens an existing file read-only first, to tell a foreign file apart before
  anything is written to it (switching it to WAL would already change it), and then
  checks that it can write at all, so a read-only database fails at start-up instead of
  at the first frame.
- A writer remembers the identity (device, inode) of the database, its ``-wal`` and its
  ``-shm``; when one is deleted or replaced while open, committing would only fill an
  unlinked file, so every write raises ``StoreLost`` instead (before and after the commit,
  so nothing committed to a lost file is acknowledged).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, cast

import numpy as np
import sqlite_utils
from numpy.typing import NDArray

from livetrack import __version__
from livetrack.config import StoreConfig
from livetrack.errors import ResumeMismatch, RunInUse, SchemaMismatch, StoreError, StoreLost
from livetrack.track.base import (
    LEGACY_EVENT_KINDS,
    Fate,
    FrameHistory,
    TrackEnd,
    TrackRecord,
    TrackStep,
)
from livetrack.types import Detections, LabelImage, ScaleState

logger = logging.getLogger("livetrack.store")

SCHEMA_VERSION = 7
"""Version of the schema in ``TABLES``; stored in ``PRAGMA user_version``.
1: the first release. 2: adds the ``embeddings`` table (learned trackers). 3: adds the
``scale`` table (the nucleus diameter of each frame, so a resume is identical). 4: event
kinds in biologists' words: 'birth' → 'new_track', 'death' → 'lost', and 'left' (left the
field). 5: adds the ``leases`` table (one writer per run). 6: adds the indexes of the
resume question (open tracks, divisions), so a resume stays fast in a long movie. 7: adds
the ``frame_models`` table (which models produced each frame)."""

APPLICATION_ID = 0x4C545243  # "LTRC"
"""``PRAGMA application_id`` of a livetrack database (tells it apart from other SQLite files)."""

RunStatus = Literal["running", "finished", "aborted"]


# --------------------------------------------------------------------------- configuration


# --------------------------------------------------------------------------- schema as data


@dataclass(frozen=True)
class Column:
    """One column: its name, its SQL declaration and what it means."""

    name: str
    decl: str
    doc: str


@dataclass(frozen=True)
class Table:
    """One table of the schema; ``constraints`` follow the columns in ``CREATE TABLE``."""

    name: str
    doc: str
    columns: tuple[Column, ...]
    constraints: tuple[str, ...] = ()
    without_rowid: bool = False
    indexes: tuple[tuple[str, str], ...] = ()
    """(index name, comma-separated columns)."""


_POS_FK = "FOREIGN KEY (run_id, position) REFERENCES positions (run_id, position)"
_FRAME_FK = (
    "FOREIGN KEY (run_id, position, frame) REFERENCES frames (run_id, position, frame) "
    "ON DELETE CASCADE"
)
_RUN = Column("run_id", "TEXT NOT NULL", "run identifier (see runs.run_id)")
_POS = Column("position", "TEXT NOT NULL", "stage position / field of view name")
_FRAME = Column("frame", "INTEGER NOT NULL", "time-point index within the position, from 0")

EMBEDDING_DTYPE = np.dtype("<f2")
"""How ``TrackStep.embeddings`` are stored: float16 halves the bytes of float32 and keeps
~3 significant digits, plenty for neighbourhood embeddings (read back as float32)."""

EMBEDDINGS_TABLE = Table(
    "embeddings",
    "per-detection vectors a learned tracker keeps with each frame, to restore it after a restart",
    (
        _RUN,
        _POS,
        _FRAME,
        Column(
            "n",
            "INTEGER NOT NULL CHECK (n >= 0)",
            "rows: one per detection of the frame, in increasing label order",
        ),
        Column("dim", "INTEGER NOT NULL CHECK (dim >= 0)", "columns: length of each vector"),
        Column("dtype", "TEXT NOT NULL", "NumPy dtype of the values, e.g. '<f2' (float16)"),
        Column(
            "data",
            "BLOB NOT NULL",
            "raw C-order n x dim values; row i is the detection with the i-th smallest label",
        ),
    ),
    ("PRIMARY KEY (run_id, position, frame)", _FRAME_FK),
)
"""Added in schema version 2 (``MIGRATIONS[1]`` creates it). Changing it later needs a new
migration, and ``MIGRATIONS[1]`` must then keep creating the version-2 shape."""

SCALE_TABLE = Table(
    "scale",
    "the nucleus scale the segmenter used for each frame; a resumed run rebuilds it from here",
    (
        _RUN,
        _POS,
        _FRAME,
        Column(
            "diameter_px",
            "REAL NOT NULL CHECK (diameter_px > 0)",
            "nucleus diameter (pixels) the frame was segmented with",
        ),
        Column(
            "estimate_px",
            "REAL CHECK (estimate_px > 0)",
            "diameter measured on this frame's image; NULL when the frame used a configured "
            "or already settled diameter",
        ),
    ),
    ("PRIMARY KEY (run_id, position, frame)", _FRAME_FK),
    without_rowid=True,
)
"""Added in schema version 3 (``MIGRATIONS[2]`` creates it). Frames segmented without a
scale (given labels, frames with no nuclei) have no row."""

FRAME_MODELS_TABLE = Table(
    "frame_models",
    "which segmenter and tracker produced each frame (a live worker can switch models)",
    (
        _RUN,
        _POS,
        _FRAME,
        Column(
            "segmenter",
            "TEXT NOT NULL",
            "what segmented the frame: 'learned <model folder> <sha256 of its weights, 12 "
            "hex>', 'classical', or 'given labels' (tracking only)",
        ),
        Column(
            "tracker",
            "TEXT NOT NULL",
            "what tracked it: 'lstm <model folder> <sha256, 12 hex>' or 'lap'",
        ),
    ),
    ("PRIMARY KEY (run_id, position, frame)", _FRAME_FK),
    without_rowid=True,
)
"""Added in schema version 7 (``MIGRATIONS[6]`` creates it). Frames written before have no
row; their run's ``config`` says which models the run was started with."""

_TRACKS_OPEN_INDEX = ("tracks_open", "run_id, position, fate, end_frame")
"""Added in schema version 6: a resume asks for a position's tracks still open in the
history window (and counts the stale ones) without reading its finished tracks."""
_EVENTS_KIND_INDEX = ("events_kind", "run_id, position, kind")
"""Added in schema version 6: a resume counts a position's divisions without reading its
other events."""

EVENTS_TABLE = Table(
    "events",
    "lineage events as published live; id only grows, so readers poll with id > last seen",
    (
        Column("id", "INTEGER PRIMARY KEY AUTOINCREMENT", "increasing event number"),
        _RUN,
        _POS,
        _FRAME,
        Column(
            "kind",
            "TEXT NOT NULL CHECK (kind IN ('new_track', 'division', 'lost', 'left'))",
            "'new_track' (appeared, not from a division), 'division' (a mother divided into "
            "two daughters), 'lost' (ended inside the field), 'left' (left the field)",
        ),
        Column("track_id", "INTEGER NOT NULL", "mother (division), new or ended track"),
        Column(
            "daughters",
            "TEXT NOT NULL CHECK (json_valid(daughters))",
            "JSON list of the two daughter track ids (division), else []",
        ),
        Column("y", "REAL", "where it happened, row in pixels; NULL if unknown"),
        Column("x", "REAL", "where it happened, column in pixels; NULL if unknown"),
        Column("confidence", "REAL NOT NULL", "tracker confidence in [0, 1]"),
        Column("created", "REAL NOT NULL", "when it was stored (unix seconds)"),
    ),
    (_POS_FK,),
    indexes=(("events_frame", "run_id, position, frame"), _EVENTS_KIND_INDEX),
)
"""As of schema version 4 (``MIGRATIONS[3]`` rebuilds the version-3 table into it; versions
1–3 share the older shape). Changing it later needs a new migration, and ``MIGRATIONS[3]``
must then keep creating this shape."""

LEASES_TABLE = Table(
    "leases",
    "which process is writing a run now; a second writer of the same run is refused",
    (
        Column("run_id", "TEXT PRIMARY KEY NOT NULL", "run being written (see runs.run_id)"),
        Column("token", "TEXT NOT NULL", "random id of the writing connection (one per Store)"),
        Column("pid", "INTEGER NOT NULL", "process id of the writer, on host"),
        Column("host", "TEXT NOT NULL", "host name of the writer's machine"),
        Column(
            "process_start",
            "REAL",
            "when the writer's process started (unix seconds; NULL if unknown): tells a "
            "reused pid apart",
        ),
        Column("started", "REAL NOT NULL", "when the writer took the lease (unix seconds)"),
        Column(
            "heartbeat",
            "REAL NOT NULL",
            "last time the writer showed it was alive (unix seconds): every frame, and when idle",
        ),
    ),
    ("FOREIGN KEY (run_id) REFERENCES runs (run_id)",),
)
"""Added in schema version 5 (``MIGRATIONS[4]`` creates it). A row exists while a process
writes the run; ``end_run`` and ``Store.close`` delete it, a crash leaves it behind (and the
dead pid or stale heartbeat then lets the next writer take it over)."""

TABLES: tuple[Table, ...] = (
    Table(
        "runs",
        "one row per acquisition run; a restarted worker resumes the same run_id",
        (
            Column("run_id", "TEXT PRIMARY KEY NOT NULL", "identifier chosen by the sender"),
            Column("created", "REAL NOT NULL", "when the run was first begun (unix seconds)"),
            Column("source", "TEXT NOT NULL", "where frames come from (driver name, file, URL)"),
            Column(
                "config",
                "TEXT NOT NULL CHECK (json_valid(config))",
                "JSON of the worker configuration the run was begun with",
            ),
            Column(
                "status",
                "TEXT NOT NULL CHECK (status IN ('running', 'finished', 'aborted'))",
                "'running' while frames are written, then 'finished' or 'aborted'",
            ),
            Column("livetrack_version", "TEXT NOT NULL", "livetrack version that began the run"),
            Column("schema_version", "INTEGER NOT NULL", "store schema version at begin"),
            Column("finished", "REAL", "when the run ended (unix seconds); NULL while running"),
        ),
    ),
    Table(
        "positions",
        "one row per (run, position) with a summary of its committed frames",
        (
            _RUN,
            _POS,
            Column("height", "INTEGER NOT NULL", "frame height in pixels"),
            Column("width", "INTEGER NOT NULL", "frame width in pixels"),
            Column("pixel_size_um", "REAL", "pixel size in micrometres; NULL when unknown"),
            Column("first_frame", "INTEGER NOT NULL", "smallest committed frame index"),
            Column("last_frame", "INTEGER NOT NULL", "largest committed frame index"),
            Column("n_frames", "INTEGER NOT NULL", "number of committed frames"),
        ),
        (
            "PRIMARY KEY (run_id, position)",
            "FOREIGN KEY (run_id) REFERENCES runs (run_id)",
        ),
        without_rowid=True,
    ),
    Table(
        "frames",
        "one row per committed frame; its presence means the whole frame is stored",
        (
            _RUN,
            _POS,
            _FRAME,
            Column("timestamp", "REAL NOT NULL", "acquisition time (unix seconds)"),
            Column("received", "REAL NOT NULL", "when the worker committed it (unix seconds)"),
            Column("n_detections", "INTEGER NOT NULL", "number of rows in detections"),
            Column("channel", "TEXT NOT NULL", "channel that was segmented"),
            Column(
                "timings",
                "TEXT NOT NULL CHECK (json_valid(timings))",
                "JSON object: milliseconds spent per pipeline stage",
            ),
        ),
        ("PRIMARY KEY (run_id, position, frame)", _POS_FK),
        without_rowid=True,
    ),
    Table(
        "masks",
        "label image of each frame, compressed; apart from frames so frames stays small",
        (
            _RUN,
            _POS,
            _FRAME,
            Column("codec", "TEXT NOT NULL", "compression of data: 'zlib'"),
            Column("dtype", "TEXT NOT NULL", "NumPy dtype of the raw pixels, e.g. '<u2'"),
            Column("height", "INTEGER NOT NULL", "rows of the label image"),
            Column("width", "INTEGER NOT NULL", "columns of the label image"),
            Column("data", "BLOB NOT NULL", "compressed C-order pixels; 0 = background"),
        ),
        ("PRIMARY KEY (run_id, position, frame)", _FRAME_FK),
    ),
    Table(
        "detections",
        "one row per segmented object per frame, with the track it was linked to",
        (
            _RUN,
            _POS,
            _FRAME,
            Column("label", "INTEGER NOT NULL", "value of the object in the frame's mask"),
            Column("track_id", "INTEGER NOT NULL", "track the object belongs to"),
            Column("y", "REAL NOT NULL", "centroid row in pixels"),
            Column("x", "REAL NOT NULL", "centroid column in pixels"),
            Column("area", "INTEGER NOT NULL", "pixel count"),
            Column("bbox_y0", "INTEGER NOT NULL", "bounding box first row"),
            Column("bbox_x0", "INTEGER NOT NULL", "bounding box first column"),
            Column("bbox_y1", "INTEGER NOT NULL", "bounding box end row (exclusive)"),
            Column("bbox_x1", "INTEGER NOT NULL", "bounding box end column (exclusive)"),
        ),
        (
            "PRIMARY KEY (run_id, position, frame, label)",
            _FRAME_FK,
            "FOREIGN KEY (run_id, position, track_id) "
            "REFERENCES tracks (run_id, position, track_id)",
        ),
        without_rowid=True,
        indexes=(("detections_track", "run_id, position, track_id"),),
    ),
    Table(
        "tracks",
        "one row per track (a cell from its first frame or its mother's division to its "
        "division, loss or leaving the field)",
        (
            _RUN,
            _POS,
            Column("track_id", "INTEGER NOT NULL", "track id, unique within the position"),
            Column(
                "parent_id",
                "INTEGER",
                "mother track for one of the two daughters of a division, else NULL",
            ),
            Column("start_frame", "INTEGER NOT NULL", "first frame with a detection"),
            Column("end_frame", "INTEGER NOT NULL", "last frame with a detection so far"),
            Column(
                "fate",
                "TEXT NOT NULL CHECK (fate IN ('active', 'divided', 'lost', 'left', 'died'))",
                "'active' while open or at end of stream; else how the track ended: "
                "'divided' (into two daughters), 'lost' (inside the field), 'left' (the "
                "field); 'died' is reserved for a tracker that detects death (none does)",
            ),
        ),
        (
            "PRIMARY KEY (run_id, position, track_id)",
            _POS_FK,
            "FOREIGN KEY (run_id, position, parent_id) "
            "REFERENCES tracks (run_id, position, track_id)",
        ),
        without_rowid=True,
        indexes=(_TRACKS_OPEN_INDEX,),
    ),
    EVENTS_TABLE,
    EMBEDDINGS_TABLE,
    SCALE_TABLE,
    LEASES_TABLE,
    FRAME_MODELS_TABLE,
)

SCHEMA_DOC: dict[str, dict[str, str]] = {t.name: {c.name: c.doc for c in t.columns} for t in TABLES}
"""table → column → description, for every column of every table."""


def render_ddl(table: Table) -> list[str]:
    """``CREATE TABLE`` (with one ``--`` comment per column) and ``CREATE INDEX`` statements."""
    items = [f"{c.name} {c.decl}" for c in table.columns] + list(table.constraints)
    docs = [c.doc for c in table.columns] + [""] * len(table.constraints)
    lines = []
    for i, (item, doc) in enumerate(zip(items, docs, strict=True)):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"    {item}{comma}" + (f"  -- {doc}" if doc else ""))
    options = "STRICT, WITHOUT ROWID" if table.without_rowid else "STRICT"
    create = f"CREATE TABLE {table.name} (  -- {table.doc}\n" + "\n".join(lines) + f"\n) {options}"
    indexes = [f"CREATE INDEX {name} ON {table.name} ({cols})" for name, cols in table.indexes]
    return [create, *indexes]


def _create_schema(conn: sqlite3.Connection) -> None:
    """Create the current schema in an empty database (inside the caller's transaction)."""
    for table in TABLES:
        for statement in render_ddl(table):
            conn.execute(statement)


Migration = Callable[[sqlite3.Connection], None]
"""Turns a database at version v into version v+1 (inside the caller's transaction)."""


def _add_embeddings_table(conn: sqlite3.Connection) -> None:
    """Version 1 → 2: the ``embeddings`` table. Old frames simply have none (history gives
    ``embeddings=None`` for them); every version-1 table and row is kept as it is."""
    for statement in render_ddl(EMBEDDINGS_TABLE):
        conn.execute(statement)


def _add_leases_table(conn: sqlite3.Connection) -> None:
    """Version 4 → 5: the ``leases`` table, empty (no run of an older file is held)."""
    for statement in render_ddl(LEASES_TABLE):
        conn.execute(statement)


def _add_scale_table(conn: sqlite3.Connection) -> None:
    """Version 2 → 3: the ``scale`` table. Frames of older runs have no row; resuming such
    a run estimates the diameter again, as before."""
    for statement in render_ddl(SCALE_TABLE):
        conn.execute(statement)


def _events_in_words(conn: sqlite3.Connection) -> None:
    """Version 3 → 4: event kinds in biologists' words. SQLite cannot change a CHECK
    constraint, so the events table is rebuilt: rows keep their id, 'birth' becomes
    'new_track' and 'death' becomes 'lost' (an older 'death' was only written for tracks
    that ended inside the field). The AUTOINCREMENT counter is carried over, so readers
    polling with ``id > last seen`` miss nothing and see nothing twice. An older
    'division' with one daughter stays as it was (readers do not count it as a division)."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    conn.execute("ALTER TABLE events RENAME TO events_v2")
    conn.execute("DROP INDEX IF EXISTS events_frame")
    for statement in render_ddl(EVENTS_TABLE):
        conn.execute(statement)
    names = [c.name for c in EVENTS_TABLE.columns]
    select = ", ".join(_KIND_IN_WORDS if n == "kind" else n for n in names)
    conn.execute(
        f"INSERT INTO events ({', '.join(names)}) SELECT {select} FROM events_v2 ORDER BY id"
    )
    conn.execute("DROP TABLE events_v2")
    if seq is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'events'")
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (seq[0],))


_KIND_IN_WORDS = "CASE kind WHEN 'birth' THEN 'new_track' WHEN 'death' THEN 'lost' ELSE kind END"


def _add_resume_indexes(conn: sqlite3.Connection) -> None:
    """Version 5 → 6: the indexes of the resume question (``tracks_open``, ``events_kind``).
    A file upgraded from version 3 or older already has ``events_kind``: ``MIGRATIONS[3]``
    rebuilds the events table in today's shape, indexes included."""
    for table, (name, columns) in (("tracks", _TRACKS_OPEN_INDEX), ("events", _EVENTS_KIND_INDEX)):
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})")


def _add_frame_models_table(conn: sqlite3.Connection) -> None:
    """Version 6 → 7: the ``frame_models`` table, empty (older frames have no record)."""
    for statement in render_ddl(FRAME_MODELS_TABLE):
        conn.execute(statement)


MIGRATIONS: dict[int, Migration] = {
    1: _add_embeddings_table,
    2: _add_scale_table,
    3: _events_in_words,
    4: _add_leases_table,
    5: _add_resume_indexes,
    6: _add_frame_models_table,
}
"""from-version → migration."""


def migrate(
    conn: sqlite3.Connection,
    *,
    target: int = SCHEMA_VERSION,
    migrations: dict[int, Migration] | None = None,
    create: Callable[[sqlite3.Connection], None] = _create_schema,
) -> int:
    """Bring the database on ``conn`` to version ``target``; return the version it had.

    An empty file gets the current schema directly. A file from another program, or with a
    version newer than ``target``, or with a gap in the migrations raises SchemaMismatch.
    Runs in one ``BEGIN IMMEDIATE`` transaction, so a failed migration changes nothing.
    """
    steps = MIGRATIONS if migrations is None else migrations
    version = _check_version(conn, target)
    if version == target:
        return version  # the common case: no write lock, no write
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_version(conn, target)  # again, under the lock
        if version == 0:
            create(conn)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        else:
            for v in range(version, target):
                if v not in steps:
                    raise SchemaMismatch(f"no migration from store schema version {v} to {v + 1}")
                logger.info("migrating store schema from version %d to %d", v, v + 1)
                steps[v](conn)
        conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return version


def _check_version(conn: sqlite3.Connection, target: int) -> int:
    """Return the file's schema version (0 = empty file) or raise SchemaMismatch."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    n_tables = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchone()[0]
    if version == 0 and app_id == 0 and n_tables == 0:
        return 0
    if app_id != APPLICATION_ID:
        raise SchemaMismatch(
            f"not a livetrack database (application_id {app_id:#x}, {n_tables} tables)"
        )
    if version > target:
        raise SchemaMismatch(
            f"store schema version {version} is newer than this livetrack supports "
            f"({target}); upgrade livetrack"
        )
    return version


# --------------------------------------------------------------------------- error handling


def _explain(exc: sqlite3.Error) -> str:
    """A sentence that tells a user what to do about a common SQLite failure."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "the database is locked by another writer for longer than the busy timeout"
    if "readonly" in text or "read-only" in text:
        return "the database is read-only (file permissions, or opened with readonly=True)"
    if "disk is full" in text or "full" in text:
        return "the disk is full"
    if "not a database" in text:
        return "the file is not an SQLite database"
    if "unable to open" in text:
        return "the file cannot be opened (missing directory, permissions, or absent file)"
    if "foreign key" in text:
        return (
            "a row refers to a missing one (a detection's track id that was never in "
            "step.started, a parent track that does not exist, or an unknown run/position)"
        )
    if "unique" in text:
        return "a duplicate key (e.g. the same label twice in one frame)"
    return "SQLite refused the operation"


@contextlib.contextmanager
def _sqlite_errors(what: str) -> Iterator[None]:
    """Re-raise any sqlite3 error as StoreError naming ``what`` was being done."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: {_explain(exc)} ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- mask codec


def _mask_dtype(mask: NDArray[np.integer]) -> np.dtype[Any]:
    """Smallest little-endian dtype that holds every label of ``mask``."""
    top = int(mask.max()) if mask.size else 0
    if int(mask.min(initial=0)) < 0:
        raise StoreError(f"label image has negative labels (min {int(mask.min())})")
    if top < 2**8:
        return np.dtype("<u1")
    if top < 2**16:
        return np.dtype("<u2")
    return np.dtype("<i4")


def encode_mask(mask: NDArray[np.integer], level: int) -> tuple[str, bytes]:
    """(dtype string, zlib-compressed bytes) of a 2-D label image."""
    if mask.ndim != 2:
        raise StoreError(f"label image must be 2-D, got shape {mask.shape}")
    dtype = _mask_dtype(mask)
    raw = np.ascontiguousarray(mask, dtype=dtype)
    return dtype.str, zlib.compress(raw.data, level)


def decode_mask(codec: str, dtype: str, height: int, width: int, data: bytes) -> LabelImage:
    """Inverse of ``encode_mask``; always returns int32 (``LabelImage``)."""
    if codec != "zlib":
        raise StoreError(f"unknown mask codec {codec!r}")
    raw = np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype))
    if raw.size != height * width:
        raise StoreError(f"mask blob has {raw.size} pixels, expected {height}x{width}")
    return raw.reshape(height, width).astype(np.int32)


# --------------------------------------------------------------------------- embedding codec


def encode_embeddings(embeddings: NDArray[np.floating], labels: NDArray[np.integer]) -> bytes:
    """Raw ``EMBEDDING_DTYPE`` bytes of ``embeddings`` (row i = detection with ``labels[i]``),
    rows reordered to increasing label, the order ``Store.history`` gives detections in."""
    order = np.argsort(np.asarray(labels), kind="stable")
    rows = np.ascontiguousarray(np.asarray(embeddings)[order], dtype=EMBEDDING_DTYPE)
    return rows.tobytes()


def decode_embeddings(n: int, dim: int, dtype: str, data: bytes) -> NDArray[np.float32]:
    """Inverse of ``encode_embeddings`` (rows in label order); always float32, (n, dim)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise StoreError(f"embeddings have an unknown dtype {dtype!r}") from exc
    if dt.kind != "f" or len(data) != n * dim * dt.itemsize:
        raise StoreError(
            f"embeddings blob has {len(data)} bytes, expected {n}x{dim} values of {dtype!r}"
        )
    return np.frombuffer(data, dtype=dt).reshape(n, dim).astype(np.float32)


# --------------------------------------------------------------------------- the store

_DET_COLUMNS = "label, track_id, y, x, area, bbox_y0, bbox_x0, bbox_y1, bbox_x1"


def _detections_from_rows(rows: Sequence[Sequence[Any]]) -> tuple[Detections, NDArray[np.int64]]:
    """Rows of ``_DET_COLUMNS`` → (Detections, track ids), in row order."""
    if not rows:
        return Detections.empty(), np.zeros(0, np.int64)
    a = np.array(rows, dtype=np.float64)
    dets = Detections(
        labels=a[:, 0].astype(np.int32),
        centroids=np.ascontiguousarray(a[:, 2:4]),
        areas=a[:, 4].astype(np.int64),
        bboxes=a[:, 5:9].astype(np.int32),
    )
    return dets, a[:, 1].astype(np.int64)


_TRACK_COLUMNS = "track_id, parent_id, start_frame, end_frame, fate"


def _track_record(row: Sequence[Any]) -> TrackRecord:
    """A ``tracks`` row (``_TRACK_COLUMNS``) as a TrackRecord."""
    t, p, s, e, f = row
    return TrackRecord(int(t), None if p is None else int(p), int(s), int(e), cast(Fate, f))


def _none_if_nan(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _connect(path: Path, readonly: bool, timeout_s: float) -> sqlite3.Connection:
    """Open the file; read-only through a ``mode=ro`` URI so nothing can be created."""
    if readonly:
        if not path.is_file():
            raise StoreError(f"cannot open store {path} read-only: no such file")
        target, uri = path.resolve().as_uri() + "?mode=ro", True
    else:
        if not path.parent.is_dir():
            raise StoreError(f"cannot create store {path}: directory {path.parent} does not exist")
        target, uri = str(path), False
    with _sqlite_errors(f"opening store {path}"):
        # check_same_thread=False: the TUI may hand the Store to a worker thread; every
        # public method holds self._lock, so one connection is never used concurrently.
        return sqlite3.connect(target, uri=uri, timeout=timeout_s, check_same_thread=False)


# --------------------------------------------------------------------------- run leases

_HOST = socket.gethostname()
_OPEN_WRITERS: set[str] = set()
"""Tokens of the Stores open for writing in this process: a lease held by this very pid is
alive while its Store is open (a pid alone cannot tell two Stores of one process apart)."""
_OPEN_WRITERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class RunLease:
    """Who writes a run (a row of ``leases``)."""

    run_id: str
    token: str
    pid: int
    host: str
    process_start: float | None
    started: float
    heartbeat: float

    def describe(self, now: float) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (
            f"pid {self.pid} on host {self.host}, writing since {since}, last heartbeat "
            f"{max(now - self.heartbeat, 0.0):.0f} s ago"
        )


def _proc_stat(pid: int) -> tuple[str, float | None] | None:
    """(state letter, start time in unix seconds) of a process from Linux's /proc; None
    where /proc cannot tell (another OS, or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        fields = stat[stat.rindex(")") + 2 :].split()
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _process_start(pid: int) -> float | None:
    info = _proc_stat(pid)
    return None if info is None else info[1]


def _pid_alive(pid: int, process_start: float | None) -> bool:
    """Whether process ``pid`` of this host still runs and is the one that started at
    ``process_start`` (a pid reused by a later process is not the lease holder)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    info = _proc_stat(pid)
    if info is None:
        return True
    state, start = info
    if state in ("Z", "X"):  # killed, not yet reaped
        return False
    return process_start is None or start is None or abs(start - process_start) < 2.0


def _lease_alive(lease: RunLease, now: float, timeout_s: float) -> bool:
    """On this host a lease lives as long as its process; from another host, as long as
    its heartbeat is fresh."""
    if lease.host != _HOST:
        return now - lease.heartbeat < timeout_s
    if lease.pid == os.getpid():
        with _OPEN_WRITERS_LOCK:
            return lease.token in _OPEN_WRITERS
    return _pid_alive(lease.pid, lease.process_start)


def _run_in_use(lease: RunLease, now: float, prefix: str = "") -> RunInUse:
    return RunInUse(
        f"{prefix}run {lease.run_id!r} is being written by another livetrack process "
        f"({lease.describe(now)}); wait for it to finish, or write a separate run with a "
        "different --run-id",
        run_id=lease.run_id,
        pid=lease.pid,
        host=lease.host,
    )


def _read_lease(conn: sqlite3.Connection, run_id: str) -> RunLease | None:
    row = conn.execute(
        "SELECT run_id, token, pid, host, process_start, started, heartbeat FROM leases"
        " WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    r, t, pid, host, ps, started, hb = row
    return RunLease(str(r), str(t), int(pid), str(host), ps, float(started), float(hb))


# --------------------------------------------------------------------------- file identity

_DB_FILES = ("", "-wal", "-shm")
"""The database file and the two files SQLite keeps beside it in WAL mode."""

FileId = tuple[int, int] | None
"""(device, inode) of a file; None when it does not exist."""


def _file_id(path: str) -> FileId:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _probe_existing(path: Path, timeout_s: float) -> None:
    """Check a file that already holds data read-only, before a writer changes anything in
    it (even switching it to WAL): SchemaMismatch for a foreign or newer file."""
    try:
        if path.stat().st_size == 0:
            return
    except OSError:
        return  # absent: the writer creates it
    conn = _connect(path, True, timeout_s)
    try:
        with _sqlite_errors(f"reading the schema of {path}"):
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            _check_version(conn, SCHEMA_VERSION)
    finally:
        conn.close()


@dataclass(frozen=True)
class ResumeState:
    """Everything a worker needs to continue one position after its last committed frame,
    read in one snapshot (``Store.resume_state``). Bounded by the tracker's history
    window: it grows with the tracks open now, never with the length of the movie."""

    last_frame: int | None
    """The largest committed frame index; None when the position has nothing stored."""
    shape: tuple[int, int] | None
    """(height, width) of the position's frames (table ``positions``); None as above."""
    scale: ScaleState
    """Where the nucleus scale stood (see ``Store.scale_state``)."""
    history: list[FrameHistory]
    """The last ``window`` committed frames, oldest first (see ``Store.history``)."""
    open_tracks: list[TrackRecord]
    """Tracks still active whose last detection lies inside the window, by id."""
    newest_track: TrackRecord | None
    """The track with the largest id, open or not: a new track's id follows it."""
    divisions: int
    """Divisions of the position so far (an SQL count, no event row is loaded)."""
    stale_open_tracks: int
    """Tracks still marked active whose last detection is older than the window. A tracker
    closes a lost track within its window, so this is 0 unless the store was written
    otherwise; such tracks cannot be continued."""

    @property
    def tracks(self) -> list[TrackRecord]:
        """The track records ``Tracker.restore`` takes: the open tracks and, when it is not
        one of them, the newest (the tracker continues numbering after the largest id)."""
        newest = self.newest_track
        if newest is None or any(t.track_id == newest.track_id for t in self.open_tracks):
            return list(self.open_tracks)
        return [*self.open_tracks, newest]


class StoreWriter(Protocol):
    """What the worker needs from a store (the seam; ``Store`` implements it)."""

    path: Path
    config: StoreConfig

    def begin_run(self, run_id: str, *, source: str, config: dict[str, Any]) -> bool: ...

    def end_run(self, run_id: str, status: Literal["finished", "aborted"] = "finished") -> None: ...

    def write_frame(
        self,
        run_id: str,
        position: str,
        frame: int,
        *,
        timestamp: float,
        mask: LabelImage,
        detections: Detections,
        step: TrackStep,
        timings: dict[str, float] | None = None,
        channel: str = "default",
        pixel_size_um: float | None = None,
        diameter_px: float | None = None,
        diameter_estimate_px: float | None = None,
        models: tuple[str, str] | None = None,
    ) -> bool: ...

    def write_track_ends(self, run_id: str, position: str, ends: list[TrackEnd]) -> None: ...

    def heartbeat(self) -> None: ...

    def check_intact(self, what: str = ...) -> None: ...

    def has_run(self, run_id: str) -> bool: ...

    def run_config(self, run_id: str) -> dict[str, Any] | None: ...

    def check_run_free(self, run_id: str) -> None: ...

    def record_model_switch(
        self, sections: dict[str, Any], switches: dict[str, dict[str, Any]]
    ) -> None: ...

    def frame_models(
        self, run_id: str, position: str, since: int | None = None
    ) -> list[tuple[int, str, str]]: ...

    def has_frame(self, run_id: str, position: str, frame: int) -> bool: ...

    def positions(self, run_id: str) -> list[str]: ...

    def position_info(self, run_id: str, position: str) -> dict[str, Any]: ...

    def scale_state(self, run_id: str, position: str, window: int) -> ScaleState: ...

    def resume_state(
        self, run_id: str, position: str, window: int, *, scale_window: int = ...
    ) -> ResumeState: ...


class Store:
    """The livetrack database: the worker writes frames, readers query lineages.

    One Store = one connection. Open readers with ``readonly=True``; they see every frame
    committed before each query while the writer keeps going (WAL). ``path`` is the file
    opened; ``config.path`` is only the default a caller (the CLI) reads it from.
    All public methods hold a lock, so a Store may be handed to another thread.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        config: StoreConfig | None = None,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.config = config or StoreConfig(path=self.path)
        self._lock = threading.RLock()
        self._token = uuid.uuid4().hex
        """Identifies this writer in ``leases``."""
        self._leased: set[str] = set()
        """Runs this writer took the lease of."""
        self._files: dict[str, FileId] = {}
        if not readonly:
            _probe_existing(self.path, self.config.busy_timeout_s)
        conn = _connect(self.path, readonly, self.config.busy_timeout_s)
        try:
            self.db = sqlite_utils.Database(conn, execute_plugins=False)
            self._configure()
            self._check_or_migrate()
            if not readonly:
                self._check_writable()
                base = str(self.path.resolve())
                self._files = {base + suffix: _file_id(base + suffix) for suffix in _DB_FILES}
        except BaseException:
            conn.close()
            raise
        if not readonly:
            with _OPEN_WRITERS_LOCK:
                _OPEN_WRITERS.add(self._token)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def _configure(self) -> None:
        """Pragmas: WAL (writer only; it is persistent in the file), foreign keys, timeout."""
        with _sqlite_errors(f"configuring store {self.path}"):
            self.conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_s * 1000)}")
            self.conn.execute("PRAGMA foreign_keys = ON")
            if self.readonly:
                self.conn.execute("PRAGMA query_only = ON")
            else:
                self.db.enable_wal()
                self.conn.execute("PRAGMA synchronous = NORMAL")

    def _check_or_migrate(self) -> None:
        with _sqlite_errors(f"reading the schema of {self.path}"):
            if self.readonly:
                version = _check_version(self.conn, SCHEMA_VERSION)
                if version < SCHEMA_VERSION:
                    raise SchemaMismatch(
                        f"store {self.path} has schema version {version}, this livetrack "
                        f"needs {SCHEMA_VERSION}; open it once read-write to migrate it"
                    )
            else:
                migrate(self.conn)

    def _check_writable(self) -> None:
        """Rewrite one value inside a rolled-back transaction: a read-only file (or a file
        opened read-only because its permissions or filesystem forbid writing) fails here,
        at start-up, not at the first frame."""
        with _sqlite_errors(f"checking that store {self.path} can be written"):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
                self.conn.execute(f"PRAGMA user_version = {version}")
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")

    def check_intact(self, what: str = "checking the database") -> None:
        """StoreLost if this writer's database files were deleted or replaced (every write
        checks it; call it before telling anyone that something is stored without a write,
        e.g. acknowledging a re-sent frame)."""
        if not self.readonly:
            with self._lock:
                self._check_files(what)

    def _check_files(self, what: str, *, committed: bool = False) -> None:
        """StoreLost if the database, its WAL or its shared-memory file was deleted or
        replaced since this writer opened them (SQLite would go on writing to the unlinked
        files, and everything would vanish when the process ends)."""
        for name, known in self._files.items():
            now = _file_id(name)
            if known is None:
                self._files[name] = now  # created after we opened the database
                continue
            if now != known:
                how = "deleted" if now is None else "replaced by another file"
                lost = "; the last commit went to the lost file" if committed else ""
                raise StoreLost(
                    f"{what}: {name} was {how} while this process was writing the "
                    f"database{lost}; stopped writing so that nothing more is acknowledged "
                    f"and lost. Restore the files or start again with a new database"
                )

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release this writer's run leases and close the connection (the last one to
        close checkpoints and removes the WAL)."""
        with self._lock:
            if not self.readonly:
                with _OPEN_WRITERS_LOCK:
                    _OPEN_WRITERS.discard(self._token)
                if self._leased:
                    self._release_leases()
            self.conn.close()

    def _release_leases(self) -> None:
        """Delete this writer's leases; a database that can no longer be written (lost,
        full, locked) keeps them, and the dead pid frees them for the next writer."""
        try:
            with self._write("releasing run leases") as conn:
                conn.execute("DELETE FROM leases WHERE token = ?", (self._token,))
            self._leased.clear()
        except StoreError as exc:
            logger.warning("could not release the lease of run(s) %s: %s", self._leased, exc)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT); rolled back on any error."""
        if self.readonly:
            raise StoreError(f"{what}: the store {self.path} was opened read-only")
        with self._lock, _sqlite_errors(what):
            self._check_files(what)
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self._check_files(what, committed=True)

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        """A read snapshot: queries inside see one consistent state of the file (inside
        ``snapshot()``, the snapshot's state)."""
        with self._lock, _sqlite_errors(what):
            if self.conn.in_transaction:  # within snapshot(): its transaction
                yield self.conn
                return
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Store]:
        """Every read inside sees the same committed state, while a worker keeps writing
        (one WAL read transaction; keep it short, it holds back checkpoints)."""
        with self._lock, _sqlite_errors("reading a snapshot"):
            self.conn.execute("BEGIN")
            try:
                yield self
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    # ---------------------------------------------------------------- runs

    def check_resume(self, run_id: str, config: dict[str, Any]) -> None:
        """Raise ResumeMismatch if ``run_id`` exists and was begun with other processing
        settings or model weights than ``config`` (see ``resume_mismatch``)."""
        with self._read("reading a run's settings"):
            row = self.conn.execute(
                "SELECT config FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        if row is not None:
            resume_mismatch(run_id, json.loads(row[0]), config)

    def begin_run(self, run_id: str, *, source: str, config: dict[str, Any]) -> bool:
        """Register a run; True if new. An existing run is resumed: its row is kept as it
        was and its status set back to 'running' — only if ``config`` agrees with the
        stored one on what decides the lineage (else ResumeMismatch, nothing changed)."""
        try:
            config_json = json.dumps(config, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run {run_id!r}: config is not JSON-serialisable: {exc}") from exc
        with self._write(f"beginning run {run_id!r}") as conn:
            row = conn.execute("SELECT config FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None:
                resume_mismatch(run_id, json.loads(row[0]), config)
                self._take_lease(conn, run_id)
                conn.execute(
                    "UPDATE runs SET status = 'running', finished = NULL WHERE run_id = ?",
                    (run_id,),
                )
                return False
            conn.execute(
                "INSERT INTO runs (run_id, created, source, config, status, livetrack_version,"
                " schema_version, finished) VALUES (?, ?, ?, ?, 'running', ?, ?, NULL)",
                (run_id, time.time(), source, config_json, __version__, SCHEMA_VERSION),
            )
            self._take_lease(conn, run_id)
            return True

    def _take_lease(self, conn: sqlite3.Connection, run_id: str) -> None:
        """Become the run's writer (inside begin_run's transaction); RunInUse if a live
        process holds it."""
        now = time.time()
        lease = _read_lease(conn, run_id)
        started = now
        if lease is not None and lease.token == self._token:
            started = lease.started
        elif lease is not None:
            if _lease_alive(lease, now, self.config.lease_timeout_s):
                raise _run_in_use(lease, now)
            logger.warning(
                "run %s was last written by %s, which is gone; taking it over",
                run_id,
                lease.describe(now),
            )
        conn.execute(
            "INSERT OR REPLACE INTO leases (run_id, token, pid, host, process_start, started,"
            " heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, self._token, os.getpid(), _HOST, _process_start(os.getpid()), started, now),
        )
        self._leased.add(run_id)

    def _hold(self, conn: sqlite3.Connection, run_id: str, what: str) -> None:
        """Inside a write: the run's lease must still be this writer's (else another
        process took the run over, and writing on would interleave two lineages); renew
        its heartbeat."""
        lease = _read_lease(conn, run_id)
        if lease is None and run_id not in self._leased:
            self._take_lease(conn, run_id)  # a run begun before leases existed
            return
        if lease is None or lease.token != self._token:
            now = time.time()
            if lease is None:
                raise StoreError(
                    f"{what}: the lease of run {run_id!r} was removed by another process; "
                    "stopped writing to it"
                )
            raise _run_in_use(lease, now, prefix=f"{what}: this process lost its lease: ")
        conn.execute("UPDATE leases SET heartbeat = ? WHERE run_id = ?", (time.time(), run_id))

    def heartbeat(self) -> None:
        """Show that the runs this writer holds are still written (an idle worker calls
        it every quarter of ``lease_timeout_s``)."""
        if self.readonly or not self._leased:
            return
        with self._write("renewing run leases") as conn:
            conn.execute(
                "UPDATE leases SET heartbeat = ? WHERE token = ?", (time.time(), self._token)
            )

    def run_holder(self, run_id: str) -> RunLease | None:
        """The live process (other than this writer) that holds ``run_id``, or None."""
        with self._read("looking up the writer of a run") as conn:
            lease = _read_lease(conn, run_id)
        if lease is None or lease.token == self._token:
            return None
        return lease if _lease_alive(lease, time.time(), self.config.lease_timeout_s) else None

    def check_run_free(self, run_id: str) -> None:
        """RunInUse (naming the holder) if another live process writes ``run_id``."""
        lease = self.run_holder(run_id)
        if lease is not None:
            raise _run_in_use(lease, time.time())

    def end_run(self, run_id: str, status: Literal["finished", "aborted"] = "finished") -> None:
        """Mark a run finished or aborted (it may still be resumed later)."""
        with self._write(f"ending run {run_id!r}") as conn:
            lease = _read_lease(conn, run_id)
            now = time.time()
            if (
                lease is not None
                and lease.token != self._token
                and _lease_alive(lease, now, self.config.lease_timeout_s)
            ):
                raise _run_in_use(lease, now, prefix=f"ending run {run_id!r}: ")
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished = ? WHERE run_id = ?",
                (status, now, run_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"ending run {run_id!r}: no such run")
            conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
        self._leased.discard(run_id)

    # ---------------------------------------------------------------- frames

    def write_frame(
        self,
        run_id: str,
        position: str,
        frame: int,
        *,
        timestamp: float,
        mask: LabelImage,
        detections: Detections,
        step: TrackStep,
        timings: dict[str, float] | None = None,
        channel: str = "default",
        pixel_size_um: float | None = None,
        diameter_px: float | None = None,
        diameter_estimate_px: float | None = None,
        models: tuple[str, str] | None = None,
    ) -> bool:
        """Commit everything about one frame in ONE transaction; False if already stored.

        ``diameter_px`` / ``diameter_estimate_px``: the nucleus scale the segmenter used
        and the scale measurement it made on this frame (from the image or from the
        detections; table ``scale``), when it has one.
        ``models``: (segmenter, tracker) that produced the frame (table ``frame_models``).

        A frame that is already committed is left untouched (a re-sent frame after a restart
        is harmless). Any failure rolls the whole frame back and raises StoreError.
        """
        _validate_frame(frame, mask, detections, step)
        mask_dtype, blob = encode_mask(mask, self.config.zlib_level)
        emb: tuple[int, int, bytes] | None = None
        if step.embeddings is not None:
            n, dim = np.shape(step.embeddings)
            emb = (int(n), int(dim), encode_embeddings(step.embeddings, detections.labels))
        key = (run_id, position, frame)
        what = f"writing frame {frame} of run {run_id!r} position {position!r}"
        with self._write(what) as conn:
            if self._frame_exists(conn, key, what):
                return False
            self._hold(conn, run_id, what)
            stage = "positions"
            try:
                self._upsert_position(conn, key, mask.shape, pixel_size_um)
                stage = "frames"
                conn.execute(
                    "INSERT INTO frames (run_id, position, frame, timestamp, received,"
                    " n_detections, channel, timings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, timestamp, time.time(), len(detections), channel,
                     json.dumps(timings or {})),
                )  # fmt: skip
                stage = "masks"
                conn.execute(
                    "INSERT INTO masks (run_id, position, frame, codec, dtype, height, width,"
                    " data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key, self.config.mask_codec, mask_dtype, *mask.shape, blob),
                )
                stage = "tracks (step.started)"
                _insert_started(conn, key, step)
                stage = "detections"
                _insert_detections(conn, key, detections, step.track_ids)
                stage = "tracks (end_frame)"
                conn.execute(
                    "UPDATE tracks SET end_frame = ?3 WHERE run_id = ?1 AND position = ?2"
                    " AND end_frame < ?3 AND track_id IN (SELECT track_id FROM detections"
                    " WHERE run_id = ?1 AND position = ?2 AND frame = ?3)",
                    key,
                )
                stage = "tracks (step.ended)"
                _apply_ends(conn, run_id, position, step.ended)
                stage = "events"
                _insert_events(conn, run_id, position, step)
                if diameter_px is not None:
                    stage = "scale"
                    conn.execute(
                        "INSERT INTO scale (run_id, position, frame, diameter_px, estimate_px)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            *key,
                            float(diameter_px),
                            None if diameter_estimate_px is None else float(diameter_estimate_px),
                        ),
                    )
                if models is not None:
                    stage = "frame_models"
                    conn.execute(
                        "INSERT INTO frame_models (run_id, position, frame, segmenter, tracker)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (*key, *models),
                    )
                if emb is not None:
                    stage = "embeddings"
                    conn.execute(
                        "INSERT INTO embeddings (run_id, position, frame, n, dim, dtype, data)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (*key, emb[0], emb[1], EMBEDDING_DTYPE.str, emb[2]),
                    )
            except sqlite3.Error as exc:
                raise StoreError(
                    f"{what}, while inserting {stage}: {_explain(exc)} "
                    f"({type(exc).__name__}: {exc}); nothing of this frame was stored"
                ) from exc
            return True

    def _frame_exists(self, conn: sqlite3.Connection, key: tuple[str, str, int], what: str) -> bool:
        if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", key[:1]).fetchone() is None:
            raise StoreError(f"{what}: run {key[0]!r} was never begun (call begin_run first)")
        return (
            conn.execute(
                "SELECT 1 FROM frames WHERE run_id = ? AND position = ? AND frame = ?", key
            ).fetchone()
            is not None
        )

    @staticmethod
    def _upsert_position(
        conn: sqlite3.Connection,
        key: tuple[str, str, int],
        shape: tuple[int, ...],
        pixel_size_um: float | None,
    ) -> None:
        conn.execute(
            "INSERT INTO positions (run_id, position, height, width, pixel_size_um, first_frame,"
            " last_frame, n_frames) VALUES (?1, ?2, ?4, ?5, ?6, ?3, ?3, 1)"
            " ON CONFLICT (run_id, position) DO UPDATE SET"
            " first_frame = min(first_frame, excluded.first_frame),"
            " last_frame = max(last_frame, excluded.last_frame),"
            " n_frames = n_frames + 1,"
            " pixel_size_um = coalesce(excluded.pixel_size_um, pixel_size_um)",
            (*key, int(shape[0]), int(shape[1]), pixel_size_um),
        )

    def write_track_ends(self, run_id: str, position: str, ends: list[TrackEnd]) -> None:
        """Close tracks (typically ``Tracker.finish`` at end of stream), in one transaction."""
        what = f"closing {len(ends)} tracks of run {run_id!r} position {position!r}"
        with self._write(what) as conn:
            self._hold(conn, run_id, what)
            _apply_ends(conn, run_id, position, ends)

    # ---------------------------------------------------------------- queries

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, ``config`` decoded."""
        with self._read("listing runs"):
            rows = list(self.db.query("SELECT * FROM runs ORDER BY created DESC, run_id DESC"))
        for row in rows:
            row["config"] = json.loads(row["config"])
        return rows

    def run_config(self, run_id: str) -> dict[str, Any] | None:
        """The run's stored config (decoded), or None for a run never begun here."""
        with self._read("reading a run's config"):
            row = self.conn.execute(
                "SELECT config FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def record_model_switch(
        self, sections: dict[str, Any], switches: dict[str, dict[str, Any]]
    ) -> None:
        """A live worker switched models (``UseModel``): the stored config of each run in
        ``switches`` takes the new ``sections`` (``segment``/``track``/``models``: what a
        resume is checked against) and appends the run's record to its ``switches`` list,
        all runs in one transaction. A worker restarted on such a run goes on with the
        switched models."""
        what = f"recording a model switch for {len(switches)} runs"
        with self._write(what) as conn:
            for run_id, switch in switches.items():
                self._hold(conn, run_id, what)
                row = conn.execute("SELECT config FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if row is None:
                    raise StoreError(f"{what}: no run {run_id!r}")
                config = json.loads(row[0])
                config.update(sections)
                config["switches"] = [*config.get("switches", []), switch]
                conn.execute(
                    "UPDATE runs SET config = ? WHERE run_id = ?",
                    (json.dumps(config, sort_keys=True), run_id),
                )

    def has_run(self, run_id: str) -> bool:
        """Whether ``run_id`` was ever begun in this store."""
        with self._read("looking up a run"):
            row = self.conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row is not None

    def has_frame(self, run_id: str, position: str, frame: int) -> bool:
        """Whether (run, position, frame) is committed (a re-sent frame is then ignored)."""
        with self._read("looking up a frame"):
            row = self.conn.execute(
                "SELECT 1 FROM frames WHERE run_id = ? AND position = ? AND frame = ?",
                (run_id, position, frame),
            ).fetchone()
        return row is not None

    def latest_run_id(self) -> str | None:
        """The most recently begun run, or None in an empty store."""
        with self._read("finding the latest run"):
            row = self.conn.execute(
                "SELECT run_id FROM runs ORDER BY created DESC, run_id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else str(row[0])

    def positions(self, run_id: str) -> list[str]:
        """Positions with at least one committed frame, sorted by name."""
        with self._read("listing positions"):
            rows = self.conn.execute(
                "SELECT position FROM positions WHERE run_id = ? ORDER BY position", (run_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def position_info(self, run_id: str, position: str) -> dict[str, Any]:
        """The ``positions`` row of a position (height, width, pixel_size_um, first_frame,
        last_frame, n_frames); StoreError when the run has no such position."""
        with self._read("reading a position"):
            rows = list(
                self.db.query(
                    "SELECT height, width, pixel_size_um, first_frame, last_frame, n_frames"
                    " FROM positions WHERE run_id = ? AND position = ?",
                    (run_id, position),
                )
            )
        if not rows:
            raise StoreError(f"run {run_id!r} has no position {position!r}")
        return rows[0]

    def frame_indices(self, run_id: str, position: str) -> list[int]:
        """Committed frame indices, ascending."""
        with self._read("listing frames"):
            rows = self.conn.execute(
                "SELECT frame FROM frames WHERE run_id = ? AND position = ? ORDER BY frame",
                (run_id, position),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def last_frame(self, run_id: str, position: str) -> int | None:
        """Largest committed frame index (where a restarted worker resumes), or None."""
        with self._read("finding the last frame"):
            row = self.conn.execute(
                "SELECT max(frame) FROM frames WHERE run_id = ? AND position = ?",
                (run_id, position),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def frame_models(
        self, run_id: str, position: str, since: int | None = None
    ) -> list[tuple[int, str, str]]:
        """``(frame, segmenter, tracker)`` of every frame of the position that has a record
        (frames written by livetrack before schema version 7 have none), oldest first;
        ``since``: only frames from that one on."""
        with self._read("reading which models produced the frames") as conn:
            rows = conn.execute(
                "SELECT frame, segmenter, tracker FROM frame_models WHERE run_id = ?"
                " AND position = ? AND frame >= ? ORDER BY frame",
                (run_id, position, -1 if since is None else since),
            ).fetchall()
        return [(int(f), str(s), str(tr)) for f, s, tr in rows]

    def scale_state(self, run_id: str, position: str, window: int) -> ScaleState:
        """Where the position's nucleus scale stood after its last stored frame (table
        ``scale``): the latest ``window`` measurements (the segmenter's window plus one),
        the frames since the last one, the diameter last used and the smallest used after
        the scale settled (frames after the ``window - 1``-th measurement). Four queries on
        the table's key (the smallest reads one number per stored frame)."""
        where = "run_id = ? AND position = ?"
        with self._read("reading the nucleus scale"):
            tail = self.conn.execute(
                f"SELECT frame, estimate_px FROM scale WHERE {where} AND estimate_px IS NOT NULL"
                " ORDER BY frame DESC LIMIT ?",
                (run_id, position, max(1, window)),
            ).fetchall()
            last = self.conn.execute(
                f"SELECT diameter_px FROM scale WHERE {where} ORDER BY frame DESC LIMIT 1",
                (run_id, position),
            ).fetchone()
            since = self.conn.execute(
                f"SELECT count(*) FROM scale WHERE {where} AND frame > ?",
                (run_id, position, tail[0][0] if tail else -1),
            ).fetchone()
            smallest = self.conn.execute(
                f"SELECT min(diameter_px) FROM scale WHERE {where} AND frame > ("
                f"SELECT frame FROM scale WHERE {where} AND estimate_px IS NOT NULL"
                " ORDER BY frame LIMIT 1 OFFSET ?)",
                (run_id, position, run_id, position, max(window - 2, 0)),
            ).fetchone()
        return ScaleState(
            estimates=tuple(float(r[1]) for r in reversed(tail)),
            frames_since=int(since[0]),
            last_diameter=None if last is None else float(last[0]),
            smallest_diameter=None if smallest[0] is None else float(smallest[0]),
        )

    def load_mask(self, run_id: str, position: str, frame: int) -> LabelImage:
        """The label image of a committed frame (int32); StoreError if it is not stored."""
        with self._read("loading a mask"):
            row = self.conn.execute(
                "SELECT codec, dtype, height, width, data FROM masks"
                " WHERE run_id = ? AND position = ? AND frame = ?",
                (run_id, position, frame),
            ).fetchone()
        if row is None:
            raise StoreError(f"no mask for frame {frame} of run {run_id!r} position {position!r}")
        return decode_mask(*row)

    def frame_detections(
        self, run_id: str, position: str, frame: int
    ) -> tuple[Detections, NDArray[np.int64]]:
        """Detections of a frame (sorted by label) and their track ids."""
        with self._read("loading detections"):
            rows = self.conn.execute(
                f"SELECT {_DET_COLUMNS} FROM detections"
                " WHERE run_id = ? AND position = ? AND frame = ? ORDER BY label",
                (run_id, position, frame),
            ).fetchall()
        return _detections_from_rows(rows)

    def tracks(self, run_id: str, position: str) -> list[TrackRecord]:
        """Every track of a position, by track id."""
        with self._read("loading tracks"):
            rows = self.conn.execute(
                f"SELECT {_TRACK_COLUMNS} FROM tracks"
                " WHERE run_id = ? AND position = ? ORDER BY track_id",
                (run_id, position),
            ).fetchall()
        return [_track_record(r) for r in rows]

    def events(
        self,
        run_id: str | None = None,
        position: str | None = None,
        *,
        kinds: Sequence[str] | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events with ``id > after_id`` in id order, optionally filtered; ``daughters``
        decoded to a list and unknown ``y``/``x`` as NaN. Poll with the last id seen.
        ``kinds`` may use the older (version ≤ 3) names ('birth', 'death'); filtering on 'division'
        leaves out the one-daughter "divisions" an old tracker wrote."""
        where: list[str] = ["id > ?"]
        params: list[Any] = [after_id]
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if position is not None:
            where.append("position = ?")
            params.append(position)
        if kinds is not None:
            wanted = sorted({LEGACY_EVENT_KINDS.get(k, k) for k in kinds})
            where.append(f"kind IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
            if "division" in wanted:  # a one-daughter "division" of an older store is none
                where.append(_IS_DIVISION_OR_OTHER)
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read("loading events"):
            rows = list(self.db.query(sql, params))
        for row in rows:
            row["daughters"] = json.loads(row["daughters"])
            row["y"] = math.nan if row["y"] is None else row["y"]
            row["x"] = math.nan if row["x"] is None else row["x"]
        return rows

    def divisions_acquired(
        self, run_id: str, *, after_id: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Division events with ``id > after_id`` in id order, as ``events`` returns them
        plus ``acquired``: the acquisition time of the frame they were detected in, which a
        dashboard shows (``created`` is the commit time: later by the worker's lag). An
        event whose frame row is missing keeps its commit time rather than being skipped."""
        sql = (
            "SELECT e.*, coalesce(f.timestamp, e.created) AS acquired FROM events e"
            " LEFT JOIN frames f"
            " ON f.run_id = e.run_id AND f.position = e.position AND f.frame = e.frame"
            " WHERE e.run_id = ? AND e.kind = 'division' AND e.id > ? ORDER BY e.id"
        )
        params: list[Any] = [run_id, after_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read("loading divisions"):
            rows = list(self.db.query(sql, params))
        for row in rows:
            row["daughters"] = json.loads(row["daughters"])
        return rows

    def history(self, run_id: str, position: str, n_frames: int) -> list[FrameHistory]:
        """The last ``n_frames`` committed frames, oldest first (to restore a tracker):
        detections in label order, their track ids and, when the tracker stored them, their
        embeddings (same row order; None for a frame without)."""
        if n_frames <= 0:
            return []
        with self._read("loading frame history") as conn:
            frames = [
                int(r[0])
                for r in conn.execute(
                    "SELECT frame FROM frames WHERE run_id = ? AND position = ?"
                    " ORDER BY frame DESC LIMIT ?",
                    (run_id, position, n_frames),
                )
            ][::-1]
            if not frames:
                return []
            rows = conn.execute(
                f"SELECT frame, {_DET_COLUMNS} FROM detections WHERE run_id = ? AND position = ?"
                " AND frame >= ? AND frame <= ? ORDER BY frame, label",
                (run_id, position, frames[0], frames[-1]),
            ).fetchall()
            emb_rows = conn.execute(
                "SELECT frame, n, dim, dtype, data FROM embeddings WHERE run_id = ?"
                " AND position = ? AND frame >= ? AND frame <= ?",
                (run_id, position, frames[0], frames[-1]),
            ).fetchall()
        by_frame: dict[int, list[Any]] = {f: [] for f in frames}
        for row in rows:
            by_frame[int(row[0])].append(row[1:])
        embeddings = {int(r[0]): decode_embeddings(*r[1:]) for r in emb_rows}
        out = []
        for f in frames:
            dets, ids = _detections_from_rows(by_frame[f])
            emb = embeddings.get(f)
            if emb is not None and len(emb) != len(dets):
                raise StoreError(
                    f"frame {f} of run {run_id!r} position {position!r}: {len(dets)} "
                    f"detections but {len(emb)} stored embedding rows"
                )
            out.append(FrameHistory(frame=f, detections=dets, track_ids=ids, embeddings=emb))
        return out

    def resume_state(
        self, run_id: str, position: str, window: int, *, scale_window: int = 1
    ) -> ResumeState:
        """Everything a restarted worker (or a rebuilt tracker) needs for one position, in
        one read snapshot: the last committed frame, the frame shape, the nucleus scale
        (latest ``scale_window`` measurements), the last ``window`` frames of history, the
        tracks open in that window and the newest track, and the number of divisions.
        Bounded by ``window``: finished tracks are counted or skipped in SQL, never
        loaded (only the newest, for its id), and no mask is decoded."""
        key = (run_id, position)
        with self._read("reading the resume state") as conn:
            last = self.last_frame(run_id, position)
            if last is None:
                return ResumeState(None, None, ScaleState(), [], [], None, 0, 0)
            shape_row = conn.execute(
                "SELECT height, width FROM positions WHERE run_id = ? AND position = ?", key
            ).fetchone()
            history = self.history(run_id, position, window)
            since = history[0].frame if history else last + 1
            # INDEXED BY: without statistics SQLite would walk the position's tracks in
            # primary-key order to save the sort; the open ones in the window are few.
            open_rows = conn.execute(
                f"SELECT {_TRACK_COLUMNS} FROM tracks INDEXED BY tracks_open"
                " WHERE run_id = ? AND position = ? AND fate = 'active' AND end_frame >= ?"
                " ORDER BY track_id",
                (*key, since),
            ).fetchall()
            newest = conn.execute(
                f"SELECT {_TRACK_COLUMNS} FROM tracks WHERE run_id = ? AND position = ?"
                " ORDER BY track_id DESC LIMIT 1",
                key,
            ).fetchone()
            stale = conn.execute(
                "SELECT count(*) FROM tracks WHERE run_id = ? AND position = ?"
                " AND fate = 'active' AND end_frame < ?",
                (*key, since),
            ).fetchone()
            divisions = conn.execute(
                "SELECT count(*) FROM events WHERE run_id = ? AND position = ?"
                f" AND kind = 'division' AND {_IS_DIVISION_OR_OTHER}",
                key,
            ).fetchone()
            scale = self.scale_state(run_id, position, scale_window)
        return ResumeState(
            last_frame=last,
            shape=None if shape_row is None else (int(shape_row[0]), int(shape_row[1])),
            scale=scale,
            history=history,
            open_tracks=[_track_record(r) for r in open_rows],
            newest_track=None if newest is None else _track_record(newest),
            divisions=int(divisions[0]),
            stale_open_tracks=int(stale[0]),
        )

    def counts(self, run_id: str) -> dict[str, int]:
        """Totals for summaries, keyed by the words a user reads: positions, frames,
        detections, tracks, events, "new tracks" (appeared, not from a division),
        "divisions" (mothers with two daughters: the number of parents a CTC export has),
        "lost" (tracks that ended inside the field) and "left the field" (tracks that ended
        at its border). Lost and left count track fates, so tracks closed at the end of
        the stream count too."""
        with self._read("counting") as conn:
            one = (run_id,)
            out = {
                "positions": _count(conn, "positions", one),
                "frames": _count(conn, "frames", one),
                "detections": _count(conn, "detections", one),
                "tracks": _count(conn, "tracks", one),
                "events": _count(conn, "events", one),
            }
            new_tracks, divisions = conn.execute(
                "SELECT count(*) FILTER (WHERE kind IN ('new_track', 'birth')),"
                f" count(*) FILTER (WHERE kind = 'division' AND {_IS_DIVISION_OR_OTHER})"
                " FROM events WHERE run_id = ?",
                one,
            ).fetchone()
            fates = dict(
                conn.execute(
                    "SELECT fate, count(*) FROM tracks WHERE run_id = ? GROUP BY fate", one
                ).fetchall()
            )
        out["new tracks"] = int(new_tracks)
        out["divisions"] = int(divisions)
        out["lost"] = int(fates.get("lost", 0))
        out["left the field"] = int(fates.get("left", 0))
        return out

    def position_summaries(self, run_id: str) -> list[dict[str, Any]]:
        """Per-position health for dashboards, sorted by position: ``position``,
        ``last_frame``, ``n_frames``, ``n_cells`` (detections in the last frame),
        ``updated`` (commit time of the last frame), ``active_tracks`` (fate 'active')
        and ``divisions`` (two-daughter divisions so far). One read snapshot, so the numbers
        agree."""
        with self._read("summarising positions") as conn:
            rows = conn.execute(
                "SELECT p.position, p.last_frame, p.n_frames, f.n_detections, f.received,"
                " (SELECT count(*) FROM tracks t WHERE t.run_id = p.run_id"
                "  AND t.position = p.position AND t.fate = 'active'),"
                " (SELECT count(*) FROM events e WHERE e.run_id = p.run_id"
                "  AND e.position = p.position AND e.kind = 'division'"
                f"  AND {_IS_DIVISION_OR_OTHER})"
                " FROM positions p LEFT JOIN frames f ON f.run_id = p.run_id"
                " AND f.position = p.position AND f.frame = p.last_frame"
                " WHERE p.run_id = ? ORDER BY p.position",
                (run_id,),
            ).fetchall()
        keys = ("position", "last_frame", "n_frames", "n_cells", "updated", "active_tracks")
        return [{**dict(zip(keys, row[:6], strict=True)), "divisions": int(row[6])} for row in rows]

    def cells_per_frame(
        self, run_id: str, position: str, last_n: int | None = None
    ) -> list[tuple[int, int]]:
        """``(frame, n_detections)`` of the last ``last_n`` committed frames (all when
        None), oldest first — the cells-over-time series a dashboard draws."""
        sql = "SELECT frame, n_detections FROM frames WHERE run_id = ? AND position = ?"
        params: list[Any] = [run_id, position]
        if last_n is not None:
            sql += " ORDER BY frame DESC LIMIT ?"
            params.append(max(int(last_n), 0))
        else:
            sql += " ORDER BY frame"
        with self._read("loading cell counts"):
            rows = self.conn.execute(sql, params).fetchall()
        out = [(int(f), int(n)) for f, n in rows]
        return out[::-1] if last_n is not None else out

    def recent_frames(self, run_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The ``limit`` most recently committed frames of a run (any position), oldest
        first, with ``position``, ``frame``, ``timestamp``, ``received`` and ``timings``
        (decoded JSON, ms per stage): throughput, latency and lag without a live worker."""
        with self._read("loading recent frames"):
            rows = self.conn.execute(
                "SELECT position, frame, timestamp, received, timings FROM frames"
                " WHERE run_id = ? ORDER BY received DESC LIMIT ?",
                (run_id, max(int(limit), 0)),
            ).fetchall()
        return [
            {
                "position": p,
                "frame": int(f),
                "timestamp": t,
                "received": r,
                "timings": json.loads(j),
            }
            for p, f, t, r, j in reversed(rows)
        ]


# --------------------------------------------------------------------------- write helpers


RESUME_SECTIONS = ("segment", "track", "models")
"""Parts of a run's stored config that must be the same to resume it: segmentation and
tracking settings (thresholds included) and the identity of the model weights. The
worker's endpoints, the store's path and other operational settings may change."""

IMPLIED_SETTINGS: dict[tuple[str, str], Any] = {
    ("track", "division_geometry_weight"): 0.5,
    ("track", "division_geometry_weight_given"): 0.5,
    ("track", "feature_max_diameter_px"): 0.0,
    ("track", "division_geometry_weight_small"): None,
    ("track", "merge_area_ratio"): 0.0,
    ("track", "hold_convex_splits"): 0.0,
    ("track", "drift_correction"): False,
    ("track", "leftover_link_distance"): 0.0,
    ("segment", "scale_source"): "image",
    ("segment", "zoom"): 1.0,
    ("segment", "max_scale_rise"): None,
    ("segment", "border_min_area_fraction"): 0.15,
    ("segment", "large_object_area"): 0.0,
    ("segment", "large_object_prominence"): 0.03,  # inert while large_object_area is 0
    ("segment", "outline_threshold"): None,
    ("segment", "min_mean_probability"): 0.0,
}
"""Settings added after runs were stored: the value a run stored without the key ran with
(the behaviour before the setting existed: the plain mean of the two division cues, on
any masks). A resume compares against it, so a run begun by an older version resumes
when the setting has that value (``worker.resume_settings`` gives it that value when the
setting was left at its default) and is refused, naming it, when it does not."""


CHANGED_DEFAULTS: dict[tuple[str, str], Any] = {
    ("segment", "rescale_every"): 10,
    ("track", "hold_convex_splits"): 0.0,
}
"""Settings whose default changed, with the default before. A run stored with that value
resumes with it when the setting is left at its (new) default (``worker.implied_settings``),
so upgrading livetrack does not stop a run from resuming as it ran."""


def stored_equivalent(stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with settings an older version wrote in another form rewritten as this
    version writes them. The one so far: ``track.division_geometry_weight = None`` (one
    setting meaning "0.5 on livetrack's segmentation, 0.7 on given label images") is now
    two: ``division_geometry_weight`` 0.5 and ``division_geometry_weight_given`` 0.7."""
    track = stored.get("track")
    if not isinstance(track, dict) or track.get("division_geometry_weight", 0.5) is not None:
        return stored
    if "division_geometry_weight_given" in track:
        return stored
    track = {**track, "division_geometry_weight": 0.5, "division_geometry_weight_given": 0.7}
    return {**stored, "track": track}


def resume_mismatch(run_id: str, stored: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise ResumeMismatch naming every setting in ``RESUME_SECTIONS`` where ``new``
    differs from ``stored`` (sections a run stored before they existed are not checked)."""
    stored = stored_equivalent(stored)
    diffs: list[str] = []
    for section in RESUME_SECTIONS:
        old_part, new_part = stored.get(section), new.get(section)
        if not isinstance(old_part, dict) or not isinstance(new_part, dict):
            continue
        for key in sorted(set(old_part) | set(new_part)):
            old = old_part.get(key, IMPLIED_SETTINGS.get((section, key)))
            if old != new_part.get(key):
                diffs.append(f"{section}.{key}: begun with {old!r}, now {new_part.get(key)!r}")
    if diffs:
        shown = "; ".join(diffs[:5]) + (f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else "")
        raise ResumeMismatch(
            f"run {run_id!r} cannot be resumed with different settings ({shown}): use the "
            "settings it was begun with, or start a new run with another --run-id"
        )


_IS_DIVISION_OR_OTHER = "(kind != 'division' OR json_array_length(daughters) = 2)"
"""SQL: the row is not a one-daughter "division" (an older tracker wrote some; a division
has two daughters, so they are not counted or listed as divisions)."""


def _count(conn: sqlite3.Connection, table: str, params: tuple[str]) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", params).fetchone()[0])


def _validate_frame(frame: int, mask: LabelImage, detections: Detections, step: TrackStep) -> None:
    """Catch caller mistakes before opening a transaction, with a message that names them."""
    if step.frame != frame:
        raise StoreError(f"frame {frame}: step is for frame {step.frame}")
    if mask.ndim != 2:
        raise StoreError(f"frame {frame}: mask must be 2-D, got shape {mask.shape}")
    if len(step.track_ids) != len(detections):
        raise StoreError(
            f"frame {frame}: {len(detections)} detections but {len(step.track_ids)} track ids"
        )
    if step.embeddings is not None:
        _validate_embeddings(frame, np.asarray(step.embeddings), len(detections))


def _validate_embeddings(frame: int, emb: NDArray[Any], n_detections: int) -> None:
    """(N, D) real numbers, one row per detection, finite also once stored as float16."""
    if emb.ndim != 2:
        raise StoreError(f"frame {frame}: step.embeddings must be 2-D (N, D), got {emb.shape}")
    if emb.shape[0] != n_detections:
        raise StoreError(
            f"frame {frame}: {n_detections} detections but step.embeddings has {emb.shape[0]} rows"
        )
    if emb.dtype.kind not in "fiu":
        raise StoreError(f"frame {frame}: step.embeddings must be real numbers, got {emb.dtype}")
    if not np.isfinite(emb).all():
        raise StoreError(f"frame {frame}: step.embeddings holds NaN or infinite values")
    limit = float(np.finfo(EMBEDDING_DTYPE).max)
    if emb.size and float(np.abs(emb).max()) > limit:
        raise StoreError(
            f"frame {frame}: step.embeddings holds values beyond ±{limit:g}, which "
            f"{EMBEDDING_DTYPE.name} cannot store"
        )


def _insert_started(conn: sqlite3.Connection, key: tuple[str, str, int], step: TrackStep) -> None:
    run_id, position, _ = key
    conn.executemany(
        "INSERT INTO tracks (run_id, position, track_id, parent_id, start_frame, end_frame,"
        " fate) VALUES (?, ?, ?, ?, ?, ?, 'active')",
        [
            (run_id, position, int(s.track_id),
             None if s.parent_id is None else int(s.parent_id),
             int(s.start_frame), int(s.start_frame))
            for s in step.started
        ],
    )  # fmt: skip


def _insert_detections(
    conn: sqlite3.Connection,
    key: tuple[str, str, int],
    dets: Detections,
    track_ids: NDArray[np.int64],
) -> None:
    """One executemany over plain Python values (NumPy scalars are not SQLite types)."""
    n = len(dets)
    if n == 0:
        return
    rows = zip(
        repeat(key[0], n),
        repeat(key[1], n),
        repeat(key[2], n),
        dets.labels.tolist(),
        np.asarray(track_ids).tolist(),
        dets.centroids[:, 0].tolist(),
        dets.centroids[:, 1].tolist(),
        dets.areas.tolist(),
        *dets.bboxes.T.tolist(),
        strict=True,
    )
    conn.executemany(
        f"INSERT INTO detections (run_id, position, frame, {_DET_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def _apply_ends(
    conn: sqlite3.Connection, run_id: str, position: str, ends: Sequence[TrackEnd]
) -> None:
    """Set end_frame and fate; every ended track must exist (else the tracker lost count)."""
    if not ends:
        return
    cur = conn.executemany(
        "UPDATE tracks SET end_frame = ?, fate = ? WHERE run_id = ? AND position = ?"
        " AND track_id = ?",
        [(int(e.end_frame), e.fate, run_id, position, int(e.track_id)) for e in ends],
    )
    if cur.rowcount != len(ends):
        known = {
            int(r[0])
            for r in conn.execute(
                "SELECT track_id FROM tracks WHERE run_id = ? AND position = ?",
                (run_id, position),
            )
        }
        missing = sorted({int(e.track_id) for e in ends} - known)
        raise StoreError(
            f"run {run_id!r} position {position!r}: cannot end unknown track(s) {missing[:10]}"
        )


def _insert_events(conn: sqlite3.Connection, run_id: str, position: str, step: TrackStep) -> None:
    now = time.time()
    conn.executemany(
        "INSERT INTO events (run_id, position, frame, kind, track_id, daughters, y, x,"
        " confidence, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (run_id, position, int(e.frame), e.kind, int(e.track_id),
             json.dumps([int(d) for d in e.daughters]),
             _none_if_nan(e.y), _none_if_nan(e.x), float(e.confidence), now)
            for e in step.events
        ],
    )  # fmt: skip
