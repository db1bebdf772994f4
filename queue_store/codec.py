"""Queue items: how entries are wrapped into a row, the one INSERT, and decoding them back.

Two item forms, both JSON (never pickle, so a tampered buffer cannot run code):
- a collector chunk: ``{"v", "src", "path", "fid", "ts", "lines", "offs", "x"?}`` — the lines of
  one file generation with their byte offsets (event_uids are derived, not stored);
- explicit entries: ``{"v": 1, "entries": [<protocol logs[] objects>]}`` — records from
  journald or the event log, dead letters, imported bundles, the first agent's buffer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from persistqueue.serializers import json as json_serializer

from ila_core.clock import rfc3339_ms
from queue_store.records import Chunk, Entry, event_uids
from queue_store.schema import READY, TABLE

ITEM_VERSION = 1
_new_entry = tuple.__new__
INSERT_ITEM = (
    f"INSERT INTO {TABLE} (data, timestamp, status, n_lines, n_bytes, source, owner)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class ItemRow:
    """One queue row to insert: the encoded item and its counts."""

    data: bytes
    n_lines: int
    n_bytes: int
    source: str | None
    status: int = READY
    owner: int | None = None


def encode(item: Mapping[str, Any]) -> bytes:
    """persist-queue's JSON serializer: an item stays readable by persist-queue itself."""
    return json_serializer.dumps(item)


def chunk_row(chunk: Chunk) -> ItemRow:
    """A collector chunk as one row."""
    return ItemRow(encode(chunk.to_item()), len(chunk.lines), chunk.n_bytes, chunk.source)


def entries_row(entries: Sequence[Mapping[str, Any]], *, status: int = READY) -> ItemRow:
    """Explicit protocol entries as one row (records, dead letters, imports)."""
    n_bytes = sum(len(str(e.get("log_text", "")).encode("utf-8", "replace")) for e in entries)
    data = encode({"v": ITEM_VERSION, "entries": list(entries)})
    source = entries[0].get("source") if entries else None
    return ItemRow(data, len(entries), n_bytes, source, status)


def insert_items(db: sqlite3.Connection, rows: Iterable[ItemRow], now: float) -> None:
    """The one INSERT of items (inside the caller's transaction)."""
    db.executemany(
        INSERT_ITEM,
        [(r.data, now, r.status, r.n_lines, r.n_bytes, r.source, r.owner) for r in rows],
    )


def decode_item(item_id: int, data: bytes | str) -> Iterator[Entry]:
    """Entries of one queue item (a collector chunk, or explicit protocol entries)."""
    item = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    if "entries" in item:
        for d in item["entries"]:
            yield Entry.from_wire(item_id, d)
        return
    src = item["src"]
    ts = rfc3339_ms(float(item["ts"]))
    texts, offs = item["lines"], item["offs"]
    if len(texts) != len(offs):
        raise ValueError(f"item {item_id}: {len(texts)} lines but {len(offs)} offsets")
    uids = event_uids(item["fid"], offs, _chunk_format(item_id, item.get("v", 1), offs))
    extras = item.get("x")
    if not extras:
        # tuple.__new__ skips NamedTuple's generated __new__ (a Python frame per entry, 7 %
        # of the send path's CPU); the seven fields are given in their declared order.
        for text, uid in zip(texts, uids):  # noqa: B905 - lengths checked above
            yield _new_entry(Entry, (item_id, text, src, ts, uid, None, None))
        return
    for i, (text, uid) in enumerate(zip(texts, uids)):  # noqa: B905 - lengths checked above
        yield Entry(item_id, text, src, ts, uid, None, extras.get(str(i)))


def _chunk_format(item_id: int, version: object, offs: Sequence[Any]) -> int:
    """The item's format, when its offsets fit it; else ValueError (a tampered item must not
    decode to uids that collide, or that are not hex)."""
    if type(version) is not int or version not in (1, 2):
        raise ValueError(f"item {item_id}: unknown format {version!r}")
    if version == 2 and offs and not _byte_positions(offs):
        raise ValueError(f"item {item_id}: an offset is not a byte position")
    return version


_MAX_OFFSET = 1 << 63


def _byte_positions(offs: Sequence[Any]) -> bool:
    """Every offset an int (not a bool) in [0, 2**63): checks at C speed, not a loop."""
    return set(map(type, offs)) <= {int} and min(offs) >= 0 and max(offs) < _MAX_OFFSET


# What a damaged or tampered item raises when decoded: it is set aside, never executed.
# (OverflowError: a number such as 1e999 in a field read as a float or an int.)
UNDECODABLE = (
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    UnicodeDecodeError,
    OverflowError,
)
