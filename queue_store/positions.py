"""Read positions: a file generation's checkpoint, a record source's cursor.

Each is written in the same transaction as the items read before it (the door's ``commit``),
so after a crash a position never points past, nor before, what the queue holds.
"""

from __future__ import annotations

import sqlite3

from queue_store.records import Checkpoint, FileId


def save_checkpoint(db: sqlite3.Connection, cp: Checkpoint, now: float) -> None:
    fid = cp.file_id
    db.execute(
        "INSERT INTO checkpoints (key, path, source, dev, ino, fp_len, fp, generation,"
        " offset, updated_at, epoch) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(key) DO UPDATE SET path=excluded.path, source=excluded.source,"
        " offset=excluded.offset, updated_at=excluded.updated_at",
        (cp.key, cp.path, cp.source, fid.dev, fid.ino, fid.fp_len, fid.fp,
         cp.generation, cp.offset, now, cp.epoch),
    )  # fmt: skip


def forget_checkpoint(db: sqlite3.Connection, key: str) -> None:
    db.execute("DELETE FROM checkpoints WHERE key = ?", (key,))


def load_checkpoints(db: sqlite3.Connection) -> list[Checkpoint]:
    """Every saved position, newest first."""
    rows = db.execute(
        "SELECT path, source, dev, ino, fp_len, fp, generation, offset, epoch"
        " FROM checkpoints ORDER BY updated_at DESC"
    ).fetchall()
    return [Checkpoint(FileId(r[2], r[3], r[4], r[5]), r[6], r[7], r[0], r[1], r[8]) for r in rows]


def save_cursor(db: sqlite3.Connection, key: str, source: str, cursor: str, now: float) -> None:
    db.execute(
        "INSERT OR REPLACE INTO cursors (key, source, cursor, updated_at) VALUES (?, ?, ?, ?)",
        (key, source, cursor, now),
    )


def load_cursor(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT cursor FROM cursors WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])
