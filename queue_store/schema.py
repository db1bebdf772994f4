"""The buffer file's tables and item states, and the one place persist-queue is opened.

Item states are persist-queue's (ready → unack (leased) → acked; ack_failed is this agent's
dead-letter state) plus two of ours: exported (written to a bundle) and importing (staged by an
import that has not finished).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass

from persistqueue import SQLiteAckQueue
from persistqueue.serializers import json as json_serializer
from persistqueue.sqlackqueue import AckStatus

from ila_core.errors import BufferWriteError, QueueCorrupt

READY = int(AckStatus.ready)
UNACK = int(AckStatus.unack)
ACKED = int(AckStatus.acked)
DEAD = int(AckStatus.ack_failed)
EXPORTED = 7  # written to a bundle; kept for the retention window, never sent by the forwarder
IMPORTING = 8  # staged by an import in progress; becomes ready when the whole bundle is in
STATES = {"pending": (0, READY), "dead": (DEAD,), "acked": (ACKED,), "exported": (EXPORTED,)}
STATE_NAMES = {s: name for name, group in STATES.items() for s in group}
# An item in flight counts in the state it was leased from.
EFFECTIVE_STATE = (
    f"(CASE WHEN status = {UNACK} THEN COALESCE(leased_from, {READY}) ELSE status END)"
)
QUEUE_NAME = "lines"
TABLE = f"ack_queue_{QUEUE_NAME}"
BUSY_TIMEOUT_S = 30.0

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT PRIMARY KEY, path TEXT NOT NULL, source TEXT NOT NULL,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, fp_len INTEGER NOT NULL, fp TEXT NOT NULL,
    generation INTEGER NOT NULL, offset INTEGER NOT NULL, updated_at FLOAT NOT NULL,
    epoch TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
-- Read positions of record sources (journald cursor, Windows Event Log bookmark).
CREATE TABLE IF NOT EXISTS cursors (
    key TEXT PRIMARY KEY, source TEXT NOT NULL, cursor TEXT NOT NULL, updated_at FLOAT NOT NULL
);
CREATE TABLE IF NOT EXISTS imported_uids (event_uid TEXT PRIMARY KEY, pending INTEGER);
DROP INDEX IF EXISTS idx_{TABLE}_status;
DROP INDEX IF EXISTS idx_{TABLE}_pick;
-- Covering: choosing a batch walks this index in id order and never reads the data blobs
-- (a column stored after a large blob is read from the blob's overflow pages).
CREATE INDEX IF NOT EXISTS idx_{TABLE}_choose ON {TABLE} (status, _id, n_lines, n_bytes, timestamp);
"""


class _ChunkQueue(SQLiteAckQueue):
    """SQLiteAckQueue with per-item line/byte counts, so depth is one SUM, not a scan."""

    _SQL_CREATE = (
        "CREATE TABLE IF NOT EXISTS {table_name} ("
        "{key_column} INTEGER PRIMARY KEY AUTOINCREMENT, "
        "data BLOB, timestamp FLOAT, status INTEGER, "
        "n_lines INTEGER NOT NULL DEFAULT 1, n_bytes INTEGER NOT NULL DEFAULT 0, "
        "source TEXT, acked_at FLOAT, owner INTEGER, leased_from INTEGER)"
    )


@dataclass(frozen=True)
class QueueFile:
    """An open queue: the connection every read and write goes through."""

    db: sqlite3.Connection
    queue: SQLiteAckQueue

    def close(self) -> None:
        self.queue.close()


def open_queue(path: str) -> QueueFile:
    """Open (or create) the queue file with persist-queue: JSON serializer, WAL, no pickle.

    persist-queue creates the table, the WAL connection and the lock. Its public API takes one
    item per transaction; committing a chunk of lines and its read position in one transaction
    needs the connection it writes with. That is its private ``_putter``: this is the only
    place it is touched (pinned by tests/test_store.py::TestQueueFile).
    """
    folder, name = os.path.split(path)
    try:
        q = _ChunkQueue(
            folder or ".",
            name=QUEUE_NAME,
            multithreading=True,
            auto_commit=True,
            serializer=json_serializer,
            db_file_name=name,
            auto_resume=False,
            timeout=BUSY_TIMEOUT_S,
        )
    except sqlite3.OperationalError as exc:  # disk full, read-only, I/O error
        raise BufferWriteError(f"{path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise QueueCorrupt(f"{path}: {exc}") from exc
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    db: sqlite3.Connection = q._putter  # type: ignore[assignment]
    return QueueFile(db, q)


def migrate(db: sqlite3.Connection) -> None:
    """Bring a buffer written by an older agent up to date (inside a transaction)."""
    cols = {r[1] for r in db.execute(f"PRAGMA table_info({TABLE})")}
    for col in ("owner", "leased_from"):  # a buffer made before leases had owners
        if col not in cols:
            db.execute(f"ALTER TABLE {TABLE} ADD COLUMN {col} INTEGER")
    db.executescript(_SCHEMA)
    cp_cols = {r[1] for r in db.execute("PRAGMA table_info(checkpoints)")}
    if "epoch" not in cp_cols:
        db.execute("ALTER TABLE checkpoints ADD COLUMN epoch TEXT NOT NULL DEFAULT ''")
    # persist-queue's "inited" state is never written here; keep "ready" the only one.
    db.execute(f"UPDATE {TABLE} SET status = ? WHERE status = 0", (READY,))


def has_queue(db: sqlite3.Connection) -> bool:
    """True when the file holds an agent's buffer (not one being created right now)."""
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        return True  # let the real query report what is wrong
    return {TABLE, "checkpoints", "meta"} <= names
