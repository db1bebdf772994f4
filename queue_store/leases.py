"""Leases: choosing items to send, taking them, and settling them (ack, release).

An item is leased (``unack``) by one process at a time, with ``owner`` = its pid and
``leased_from`` = the state it was taken from; settling moves it to acked (the ack, which
leaves both as they were: only leased items are asked who owns them), back to where it came
from (release), or to exported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from queue_store.schema import ACKED, EXPORTED, READY, TABLE, UNACK

ENTRY_OVERHEAD_BYTES = 200  # {"log_text":…,"source":…,"timestamp":…,"hostname":…,"event_uid":…}
RELEASE_PAGE = 500  # ids per UPDATE: SQLite's variable limit is far, but keep statements small


@dataclass(frozen=True)
class Selection:
    """Which items a lease may take: by state, up to an id, committed since, from a source."""

    statuses: tuple[int, ...] = (READY,)
    upto_id: int | None = None
    after_id: int | None = None
    since: float | None = None
    source: str | None = None

    def where(self) -> tuple[str, tuple[Any, ...]]:
        marks = ",".join("?" * len(self.statuses))
        # One status: "status = ?" lets SQLite walk the index in _id order with no sort.
        parts = [f"status IN ({marks})" if len(self.statuses) > 1 else "status = ?"]
        params: list[Any] = list(self.statuses)
        bounds = (
            (self.upto_id, "_id <= ?"),
            (self.after_id, "_id > ?"),
            (self.since, "timestamp >= ?"),
            (self.source, "(source = ? OR source IS NULL)"),
        )
        for value, clause in bounds:
            if value is not None:
                parts.append(clause)
                params.append(value)
        return " AND ".join(parts), tuple(params)


@dataclass(frozen=True)
class Head:
    """The oldest selected items, as a lease would take them."""

    ids: tuple[int, ...]
    oldest: float | None  # commit time of the oldest of them
    full: bool  # the lease cannot grow: max_lines reached, or the next item does not fit


def choose(
    db: sqlite3.Connection, sel: Selection, max_lines: int, max_bytes: int | None = None
) -> Head:
    """The oldest selected items, up to ``max_lines`` lines and about ``max_bytes`` of request
    body (the first item always), on the index alone (no blobs)."""
    where, params = sel.where()
    cursor = db.execute(
        f"SELECT _id, n_lines, n_bytes, timestamp FROM {TABLE} WHERE {where} ORDER BY _id LIMIT ?",
        (*params, max_lines + 1),  # one item past a full lease: is more waiting behind it?
    )
    ids: list[int] = []
    lines = size = 0
    oldest: float | None = None
    full = False
    for rid, n, nb, ts in cursor:
        size += body_estimate(n, nb)
        # An item that does not fit makes the batch as full as it gets: waiting for
        # batch_interval would only delay it (and the lines behind it).
        if ids and (lines + n > max_lines or (max_bytes is not None and size > max_bytes)):
            full = True
            break
        if not ids:
            oldest = ts
        ids.append(rid)
        lines += n
        if lines >= max_lines or (
            max_bytes is not None and size + ENTRY_OVERHEAD_BYTES > max_bytes
        ):  # no item, however small, would fit any more
            full = True
            break
    cursor.close()
    return Head(tuple(ids), oldest, full)


def body_estimate(n_lines: int, n_bytes: int) -> int:
    """About how many bytes of request body ``n_lines`` lines of ``n_bytes`` make: their
    text, a little escaping, and each entry's keys, source, timestamp and event_uid."""
    return n_bytes + n_bytes // 16 + n_lines * ENTRY_OVERHEAD_BYTES


def blobs(db: sqlite3.Connection, ids: Sequence[int]) -> dict[int, bytes]:
    marks = ",".join("?" * len(ids))
    return dict(db.execute(f"SELECT _id, data FROM {TABLE} WHERE _id IN ({marks})", ids))


def take(
    db: sqlite3.Connection, ids: Sequence[int], sel: Selection, owner: int, now: float
) -> list[int]:
    """Lease what is still in a selected state; the ids won. Another process (the agent, a
    replay, an export) may choose the same items at the same moment: only one wins each.

    ``acked_at`` gets the lease time when it has none: then the ack changes no column's size,
    and SQLite rewrites the row in place instead of copying its data blob (a 60 KB item:
    ~0.9 ms less per ack). Only acked and exported items are aged by ``acked_at``; one leased
    again (a replay) keeps its own, so a release does not restart its retention.
    """
    marks = ",".join("?" * len(sel.statuses))
    won: list[int] = []
    for i in ids:
        cur = db.execute(
            f"UPDATE {TABLE} SET leased_from = status, status = ?, owner = ?,"
            " acked_at = COALESCE(acked_at, ?)"
            f" WHERE _id = ? AND status IN ({marks})",
            (UNACK, owner, now, i, *sel.statuses),
        )
        if cur.rowcount == 1:
            won.append(i)
    return won


def ack_items(db: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
    """The ack: delivered items become acked history (kept for the retention window).

    ``owner`` and ``leased_from`` stay as the lease left them (only leased items are asked
    who owns them): the row keeps its size and is rewritten in place (see ``take``).
    """
    db.executemany(
        f"UPDATE {TABLE} SET status = ?, acked_at = ? WHERE _id = ?",
        [(ACKED, now, i) for i in ids],
    )


def set_status(db: sqlite3.Connection, ids: Sequence[int], status: int, now: float) -> None:
    """Settle items for good: acked, exported or dead (no longer leased by anyone)."""
    db.executemany(
        f"UPDATE {TABLE} SET status = ?, acked_at = ?, owner = NULL, leased_from = NULL"
        " WHERE _id = ?",
        [(status, now, i) for i in ids],
    )


def mark_exported(db: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
    set_status(db, ids, EXPORTED, now)


def unlease_where(db: sqlite3.Connection, cond: str, params: tuple[Any, ...]) -> None:
    """Leased items matching ``cond`` go back to the state they were leased from."""
    db.execute(
        f"UPDATE {TABLE} SET status = COALESCE(leased_from, ?), owner = NULL,"
        f" leased_from = NULL WHERE status = ? AND {cond}",
        (READY, UNACK, *params),
    )


def release(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), RELEASE_PAGE):
        part = tuple(ids[start : start + RELEASE_PAGE])
        unlease_where(db, f"_id IN ({','.join('?' * len(part))})", part)


def lease_owners(db: sqlite3.Connection) -> list[int | None]:
    return [r[0] for r in db.execute(f"SELECT DISTINCT owner FROM {TABLE} WHERE status = ?",
                                     (UNACK,))]  # fmt: skip


def count(db: sqlite3.Connection, sel: Selection) -> int:
    """Lines in the selected items."""
    where, params = sel.where()
    row = db.execute(f"SELECT COALESCE(SUM(n_lines), 0) FROM {TABLE} WHERE {where}", params)
    return int(row.fetchone()[0])


def max_id(db: sqlite3.Connection) -> int:
    return int(db.execute(f"SELECT COALESCE(MAX(_id), 0) FROM {TABLE}").fetchone()[0])
