"""A read-only look at a buffer file, beside a running agent: status and inspect.

It never writes and never blocks the agent (a read-only connection; WAL readers do not wait
for writers).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queue_store.codec import UNDECODABLE, decode_item
from queue_store.positions import load_checkpoints
from queue_store.records import Checkpoint, Entry
from queue_store.schema import EFFECTIVE_STATE, STATE_NAMES, TABLE, has_queue
from queue_store.stats import BufferStats, read_stats


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the buffer holds it: its state and the item holding it."""

    state: str
    item: int
    entry: Entry


class BufferView:
    """Read-only; ``exists`` is False when there is no buffer yet (nothing was collected)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._db: sqlite3.Connection | None = None
        if os.path.exists(self.path):
            uri = Path(self.path).as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, timeout=5.0)
            if has_queue(db):
                self._db = db
            else:
                db.close()  # the agent is creating it right now: nothing in it yet

    @property
    def exists(self) -> bool:
        return self._db is not None

    def stats(self, now: float) -> BufferStats | None:
        return None if self._db is None else read_stats(self._db, now)

    def checkpoints(self) -> list[Checkpoint]:
        """Every saved file position, oldest update first."""
        return [] if self._db is None else list(reversed(load_checkpoints(self._db)))

    def entries(
        self, states: Sequence[int], *, since: float | None = None, source: str | None = None
    ) -> Iterator[StoredEntry]:
        """Entries in the given states, in commit order; undecodable items are skipped."""
        if self._db is None:
            return
        marks = ",".join("?" * len(states))
        sql = f"SELECT _id, data, {EFFECTIVE_STATE} AS st FROM {TABLE} WHERE st IN ({marks})"
        params: list[Any] = list(states)
        if since is not None:
            sql += " AND timestamp >= ?"
            params.append(since)
        if source is not None:
            sql += " AND (source = ? OR source IS NULL)"
            params.append(source)
        for rid, data, st in self._db.execute(sql + " ORDER BY _id", params):
            try:
                decoded = list(decode_item(rid, data))
            except UNDECODABLE:
                continue
            state = STATE_NAMES.get(st, str(st))
            for e in decoded:
                if source is None or e.source == source:
                    yield StoredEntry(state, rid, e)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> BufferView:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
