"""Imports: a bundle's entries enter the buffer all together or not at all; the first agent's
buffer is adopted at start-up.

Entries are staged (state ``importing``, owner = the importing process) in short transactions,
so a running agent keeps committing meanwhile; the whole import becomes ready in one. An
``event_uid`` imported before is skipped, so importing the same bundle twice sends nothing
twice. An import that dies half-way is removed whole at the next open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from queue_store.codec import ItemRow, entries_row, insert_items
from queue_store.records import event_uid
from queue_store.schema import IMPORTING, READY, TABLE

STAGE_ENTRIES = 5000  # entries per short transaction of an import
LEGACY_ITEM_LINES = 500

Entries = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Staged:
    """What one stage added, and what it skipped as imported before."""

    added: int = 0
    skipped: int = 0

    def __add__(self, other: Staged) -> Staged:
        return Staged(self.added + other.added, self.skipped + other.skipped)


def stages(entries: Iterable[Mapping[str, Any]], per_item: int) -> Iterator[list[Entries]]:
    """Entries grouped into items of ``per_item``, and items into stages of about
    STAGE_ENTRIES entries; a stage only holds whole items."""
    stage: list[Entries] = []
    item: list[Mapping[str, Any]] = []
    staged = 0
    for e in entries:
        item.append(e)
        if len(item) >= per_item:
            stage.append(item)
            staged += len(item)
            item = []
            if staged >= STAGE_ENTRIES:
                yield stage
                stage, staged = [], 0
    if item:
        stage.append(item)
    if stage:
        yield stage


def stage(db: sqlite3.Connection, items: list[Entries], owner: int, now: float) -> Staged:
    """One short transaction's work: new uids recorded, their entries staged as items."""
    fresh: set[str] = set()
    for item in items:
        for e in item:
            cur = db.execute(
                "INSERT OR IGNORE INTO imported_uids (event_uid, pending) VALUES (?, ?)",
                (e["event_uid"], owner),
            )
            if cur.rowcount:
                fresh.add(e["event_uid"])
    rows: list[ItemRow] = []
    skipped = 0
    for item in items:
        keep = [e for e in item if e["event_uid"] in fresh]
        fresh.difference_update(e["event_uid"] for e in keep)  # a uid twice in one bundle
        skipped += len(item) - len(keep)
        if keep:
            rows.append(replace(entries_row(keep, status=IMPORTING), owner=owner))
    insert_items(db, rows, now)
    return Staged(sum(r.n_lines for r in rows), skipped)


def promote(db: sqlite3.Connection, owner: int) -> None:
    """The whole import is in: its items become ready, its uids final."""
    db.execute(
        f"UPDATE {TABLE} SET status = ?, owner = NULL WHERE status = ? AND owner = ?",
        (READY, IMPORTING, owner),
    )
    db.execute("UPDATE imported_uids SET pending = NULL WHERE pending = ?", (owner,))


def drop_staged(db: sqlite3.Connection, owner: int | None) -> None:
    """Everything an import staged goes (``None``: of an importer that left no pid)."""
    cond = "owner IS ?" if owner is None else "owner = ?"
    db.execute(f"DELETE FROM {TABLE} WHERE status = ? AND {cond}", (IMPORTING, owner))
    cond = "pending IS NOT NULL" if owner is None else "pending = ?"
    db.execute(f"DELETE FROM imported_uids WHERE {cond}", () if owner is None else (owner,))


def importers(db: sqlite3.Connection) -> set[int | None]:
    """Processes with an import staged (finished or not)."""
    owners = {r[0] for r in db.execute(f"SELECT DISTINCT owner FROM {TABLE} WHERE status = ?",
                                       (IMPORTING,))}  # fmt: skip
    owners |= {
        r[0]
        for r in db.execute("SELECT DISTINCT pending FROM imported_uids WHERE pending IS NOT NULL")
    }
    return owners


def adopt_legacy(db: sqlite3.Connection, buffer_path: str, now: float) -> int:
    """The first agent's ``log_buffer`` rows become ready items (in the caller's transaction);
    returns how many lines moved."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='log_buffer'"
    ).fetchone()
    if not exists:
        return 0
    rows = db.execute("SELECT id, log_text, source, timestamp FROM log_buffer ORDER BY id")
    entries = [
        {"log_text": text, "source": src, "timestamp": ts,
         "event_uid": event_uid(f"legacy:{buffer_path}", rid)}
        for rid, text, src, ts in rows
    ]  # fmt: skip
    items = [
        entries_row(entries[i : i + LEGACY_ITEM_LINES])
        for i in range(0, len(entries), LEGACY_ITEM_LINES)
    ]
    insert_items(db, items, now)
    db.execute("DELETE FROM log_buffer")
    return len(entries)
