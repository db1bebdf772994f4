"""The byte budget: what the buffer holds, and what may go when a commit needs room.

Acked and exported history goes first (newest kept); then the policy decides: ``block`` (the
writer waits) or ``drop_oldest`` (the oldest ready items go, every line counted).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import structlog

from ila_core.errors import BufferFull
from queue_store.schema import ACKED, EXPORTED, READY, TABLE, UNACK
from queue_store.stats import bump_meta

POLICIES = ("drop_oldest", "block")

log = structlog.get_logger("queue_store")


@dataclass(frozen=True)
class Dropped:
    """What ``drop_oldest`` removed to make room."""

    lines: int
    items: int
    bytes: int


def total_bytes(db: sqlite3.Connection) -> int:
    return int(db.execute(f"SELECT COALESCE(SUM(n_bytes),0) FROM {TABLE}").fetchone()[0])


def pending_bytes(db: sqlite3.Connection) -> int:
    """Bytes that must be kept: everything but acked and exported history."""
    return int(
        db.execute(
            f"SELECT COALESCE(SUM(n_bytes),0) FROM {TABLE} WHERE status NOT IN (?, ?)",
            (ACKED, EXPORTED),
        ).fetchone()[0]
    )


def movable_bytes(db: sqlite3.Connection) -> int:
    """Bytes of entries that are ready or in flight: what acks will free."""
    return int(
        db.execute(
            f"SELECT COALESCE(SUM(n_bytes),0) FROM {TABLE} WHERE status IN (?, ?)",
            (READY, UNACK),
        ).fetchone()[0]
    )


def forget_history(db: sqlite3.Connection, keep_bytes: int) -> None:
    """Acked and exported items beyond the newest ``keep_bytes`` go (oldest first)."""
    rows = db.execute(
        f"SELECT _id, n_bytes FROM {TABLE} WHERE status IN (?, ?) ORDER BY _id DESC",
        (ACKED, EXPORTED),
    ).fetchall()
    kept = 0
    doomed = []
    for rid, nb in rows:
        kept += nb
        if kept > keep_bytes:
            doomed.append((rid,))
    db.executemany(f"DELETE FROM {TABLE} WHERE _id = ?", doomed)


def drop_oldest(db: sqlite3.Connection, free: int) -> Dropped:
    """Delete the oldest ready items until ``free`` bytes are gone (or none is left ready:
    leased items stay, and the buffer goes over budget rather than lose more)."""
    lines = items = freed = 0
    while freed < free:
        row = db.execute(
            f"SELECT _id, n_lines, n_bytes FROM {TABLE} WHERE status = ? ORDER BY _id LIMIT 1",
            (READY,),
        ).fetchone()
        if row is None:
            break
        db.execute(f"DELETE FROM {TABLE} WHERE _id = ?", (row[0],))
        lines += row[1]
        items += 1
        freed += row[2]
    return Dropped(lines, items, freed)


def make_room(db: sqlite3.Connection, *, need: int, max_bytes: int, policy: str) -> int:
    """Room for ``need`` more bytes (in the caller's transaction): acked history goes first,
    then the policy applies. Returns the bytes held afterwards; raises BufferFull (block)."""
    keep = max(0, max_bytes - need - pending_bytes(db))
    forget_history(db, keep_bytes=keep)
    total = total_bytes(db)
    if total + need <= max_bytes:
        return total
    if policy == "block":
        if movable_bytes(db) == 0:
            # Nothing an ack could free: waiting would wait forever. A commit larger than the
            # whole free budget goes in alone, over the budget.
            log.warning("buffer_over_budget", bytes=need, budget=max_bytes)
            return total
        raise BufferFull(f"buffer at {total} of {max_bytes} bytes")
    dropped = drop_oldest(db, total + need - max_bytes)
    if dropped.lines:
        bump_meta(db, "dropped", dropped.lines)
        log.warning("buffer_full_dropped", lines=dropped.lines, budget=max_bytes)
    return total - dropped.bytes
