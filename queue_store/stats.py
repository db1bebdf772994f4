"""The buffer's figures and counters (``meta``): what status, heartbeat and metrics show."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from queue_store.schema import ACKED, DEAD, EXPORTED, READY, TABLE, UNACK


@dataclass(frozen=True)
class BufferStats:
    """The buffer's figures, for heartbeat and status."""

    pending: int
    pending_bytes: int
    oldest_pending_age_s: float | None
    dead_letter: int
    dropped: int
    filtered: int
    acked_kept: int
    exported: int
    last_send_ok_at: str | None
    last_error: str | None
    quarantined: str | None

    def heartbeat_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "dead_letter": self.dead_letter,
            "dropped": self.dropped,
            "filtered": self.filtered,
            "last_error": self.last_error,
        }


def read_stats(db: sqlite3.Connection, now: float) -> BufferStats:
    """The buffer's figures from any connection (the agent's, or a read-only one)."""
    # Items at rest are summed from the covering index (status, …, n_lines, n_bytes,
    # timestamp) without reading their rows: a heartbeat over 24 h of acked history stays
    # cheap. Items in flight (few) count in the state they were leased from.
    at_rest = db.execute(
        f"SELECT status, COALESCE(SUM(n_lines),0), COALESCE(SUM(n_bytes),0), MIN(timestamp)"
        f" FROM {TABLE} WHERE status != ? GROUP BY status",
        (UNACK,),
    ).fetchall()
    in_flight = db.execute(
        f"SELECT COALESCE(leased_from, ?), COALESCE(SUM(n_lines),0), COALESCE(SUM(n_bytes),0),"
        f" MIN(timestamp) FROM {TABLE} WHERE status = ? GROUP BY 1",
        (READY, UNACK),
    ).fetchall()
    by_state: dict[int, tuple[int, int, float | None]] = {}
    for state, n, nb, oldest in [*at_rest, *in_flight]:
        had_n, had_nb, had_oldest = by_state.get(int(state), (0, 0, None))
        firsts = [t for t in (had_oldest, oldest) if t is not None]
        by_state[int(state)] = (had_n + int(n), had_nb + int(nb), min(firsts, default=None))
    pending = [by_state[s] for s in (0, READY) if s in by_state]
    oldest_ts = [o for _, _, o in pending if o is not None]
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    return BufferStats(
        pending=sum(n for n, _, _ in pending),
        pending_bytes=sum(nb for _, nb, _ in pending),
        oldest_pending_age_s=round(max(0.0, now - min(oldest_ts)), 3) if oldest_ts else None,
        dead_letter=by_state.get(DEAD, (0, 0, None))[0],
        dropped=int(meta.get("dropped") or 0),
        filtered=int(meta.get("filtered") or 0),
        acked_kept=by_state.get(ACKED, (0, 0, None))[0],
        exported=by_state.get(EXPORTED, (0, 0, None))[0],
        last_send_ok_at=meta.get("last_send_ok_at"),
        last_error=meta.get("last_error"),
        quarantined=meta.get("quarantined"),
    )


def bump_meta(db: sqlite3.Connection, key: str, by: int) -> None:
    """Add to a counter (``dropped``)."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
        " value = CAST(CAST(value AS INTEGER) + ? AS TEXT)",
        (key, str(by), by),
    )


def set_meta(db: sqlite3.Connection, key: str, value: str | None) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]
