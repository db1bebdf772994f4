"""The on-disk queue: persist-queue's SQLiteAckQueue (JSON serializer), one item per chunk.

Durable boundary: ``commit`` writes a chunk's items and the file's read position in one
SQLite transaction, so after a crash the position never points past, nor before, what the
queue holds. Item states are persist-queue's: ready → unack (leased) → acked, or ack_failed,
which this agent uses as the dead-letter state.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from persistqueue import SQLiteAckQueue
from persistqueue.serializers import json as json_serializer
from persistqueue.sqlackqueue import AckStatus

from collector.identity import FileId
from ila_agent.errors import BufferFull, BufferLocked, QueueCorrupt
from queue_store.batch import Lease
from queue_store.records import Checkpoint, Chunk, Entry, event_uid

log = structlog.get_logger("queue_store")

READY = int(AckStatus.ready)
UNACK = int(AckStatus.unack)
ACKED = int(AckStatus.acked)
DEAD = int(AckStatus.ack_failed)
EXPORTED = 7  # written to a bundle; kept for the retention window, never sent by the forwarder
LOCKED_RETRIES = 20  # × SQLite's 30 s busy wait: ten minutes before a commit gives up
STAGE_ENTRIES = 5000  # entries per short transaction of an import
IMPORTING = 8  # staged by an import in progress; becomes ready when the whole bundle is in
STATES = {"pending": (0, READY), "dead": (DEAD,), "acked": (ACKED,), "exported": (EXPORTED,)}
# An item in flight counts in the state it was leased from.
EFFECTIVE_STATE = (
    f"(CASE WHEN status = {UNACK} THEN COALESCE(leased_from, {READY}) ELSE status END)"
)
QUEUE_NAME = "lines"
TABLE = f"ack_queue_{QUEUE_NAME}"
INSERT_ITEM = (
    f"INSERT INTO {TABLE} (data, timestamp, status, n_lines, n_bytes, source)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
POLICIES = ("drop_oldest", "block")


class _ChunkQueue(SQLiteAckQueue):
    """SQLiteAckQueue with per-item line/byte counts, so depth is one SUM, not a scan."""

    _SQL_CREATE = (
        "CREATE TABLE IF NOT EXISTS {table_name} ("
        "{key_column} INTEGER PRIMARY KEY AUTOINCREMENT, "
        "data BLOB, timestamp FLOAT, status INTEGER, "
        "n_lines INTEGER NOT NULL DEFAULT 1, n_bytes INTEGER NOT NULL DEFAULT 0, "
        "source TEXT, acked_at FLOAT, owner INTEGER, leased_from INTEGER)"
    )


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
-- Covering: choosing a batch walks this index in id order and never reads the data blobs.
CREATE INDEX IF NOT EXISTS idx_{TABLE}_pick ON {TABLE} (status, _id, n_lines, timestamp);
"""


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
        if self.upto_id is not None:
            parts.append("_id <= ?")
            params.append(self.upto_id)
        if self.after_id is not None:
            parts.append("_id > ?")
            params.append(self.after_id)
        if self.since is not None:
            parts.append("timestamp >= ?")
            params.append(self.since)
        if self.source is not None:
            parts.append("(source = ? OR source IS NULL)")
            params.append(self.source)
        return " AND ".join(parts), tuple(params)


@dataclass(frozen=True)
class BufferStats:
    """The buffer's figures, for heartbeat and status."""

    pending: int
    pending_bytes: int
    oldest_pending_age_s: float | None
    dead_letter: int
    dropped: int
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
            "last_error": self.last_error,
        }


class QueueStore:
    """The buffer file: items, read positions and counters, owned by one process."""

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 1 << 30,
        full_policy: str = "drop_oldest",
        acked_retention_s: float = 0.0,
        lock: bool = True,
    ) -> None:
        """Open the buffer. ``lock=False`` is for CLI tools working beside a running agent:
        no ownership lock, no quarantine (a corrupt file raises QueueCorrupt instead)."""
        if full_policy not in POLICIES:
            raise ValueError(f"full_policy must be one of {POLICIES}")
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.acked_retention_s = acked_retention_s
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.owner = lock
        self._lock_fd = _take_lock(self.path + ".lock") if lock else None
        # Held while this process may lease: how other processes tell it is alive.
        self._owner_fd = _try_lock(_owner_lock(self.path, os.getpid()))
        self.quarantined_to: str | None = None
        try:
            self._q = self._open_checked()
        except BaseException:
            self._release_lock()
            raise
        self._db: sqlite3.Connection = self._q._putter  # type: ignore[assignment]
        self._tx = self._q.tran_lock
        self._room = threading.Condition()
        self._closed = False
        self.commit_event = self._q.put_event  # set at every commit: wakes the forwarder
        with self._tx, self._db:
            cols = {r[1] for r in self._db.execute(f"PRAGMA table_info({TABLE})")}
            for col in ("owner", "leased_from"):  # a buffer made before leases had owners
                if col not in cols:
                    self._db.execute(f"ALTER TABLE {TABLE} ADD COLUMN {col} INTEGER")
            self._db.executescript(_SCHEMA)
            cp_cols = {r[1] for r in self._db.execute("PRAGMA table_info(checkpoints)")}
            if "epoch" not in cp_cols:
                self._db.execute(
                    "ALTER TABLE checkpoints ADD COLUMN epoch TEXT NOT NULL DEFAULT ''"
                )
            # persist-queue's "inited" state is never written here; keep "ready" the only one.
            self._db.execute(f"UPDATE {TABLE} SET status = ? WHERE status = 0", (READY,))
        self._resume_orphans()
        if self.quarantined_to:
            self.set_meta("quarantined", f"{self.quarantined_to} at {_now_iso()}")
        self._total_bytes = self._sum_bytes()

    # -- opening -------------------------------------------------------------------------

    def _open_checked(self) -> _ChunkQueue:
        """Open the queue; a corrupt file is moved aside and replaced by a fresh one."""
        folder, name = os.path.split(self.path)
        os.makedirs(folder or ".", exist_ok=True)
        problem = _integrity_problem(self.path)
        if problem is not None and not self.owner:
            raise QueueCorrupt(f"{self.path}: {problem} (the agent quarantines it at start-up)")
        if problem is not None:
            self.quarantined_to = _quarantine(self.path)
            log.error(
                "buffer_corrupt_quarantined",
                path=self.path,
                moved_to=self.quarantined_to,
                problem=problem,
            )
        try:
            q = _ChunkQueue(
                folder or ".",
                name=QUEUE_NAME,
                multithreading=True,
                auto_commit=True,
                serializer=json_serializer,
                db_file_name=name,
                auto_resume=False,
                timeout=30.0,
            )
        except sqlite3.DatabaseError as exc:
            raise QueueCorrupt(f"{self.path}: {exc}") from exc
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        return q

    def _resume_orphans(self) -> None:
        """Items leased by a process that is gone (a crash) go back to where they were."""
        me = os.getpid()
        with self._tx:
            owners = [
                r[0]
                for r in self._db.execute(
                    f"SELECT DISTINCT owner FROM {TABLE} WHERE status = ?", (UNACK,)
                )
            ]
            # At open this store has leased nothing: a lease under our own pid is a previous
            # process's whose pid we reuse (a container's pid 1, a reboot).
            gone = [o for o in owners if o is None or o == me or not _alive(self.path, o)]
            importers = [
                r[0]
                for r in self._db.execute(
                    f"SELECT DISTINCT owner FROM {TABLE} WHERE status = ?", (IMPORTING,)
                )
            ]
            importers += [
                r[0]
                for r in self._db.execute(
                    "SELECT DISTINCT pending FROM imported_uids WHERE pending IS NOT NULL"
                )
            ]
            with self._db:
                for o in gone:
                    self._unlease_where("owner IS ?", (o,))
                for o in set(importers):
                    if o is None or o == me or not _alive(self.path, o):
                        self._drop_staged(o)  # an import that died half-way: none of it

    def _unlease_where(self, cond: str, params: tuple[Any, ...]) -> None:
        # Back to the state it was leased from (ready, dead, acked or exported).
        self._db.execute(
            f"UPDATE {TABLE} SET status = COALESCE(leased_from, ?), owner = NULL,"
            f" leased_from = NULL WHERE status = ? AND {cond}",
            (READY, UNACK, *params),
        )

    # -- the durable boundary -------------------------------------------------------------

    def commit(self, chunks: Sequence[Chunk], checkpoint: Checkpoint | None) -> None:
        """Commit lines and the position after them in one transaction (durable)."""
        if not chunks and checkpoint is None:
            return
        dumps = json_serializer.dumps
        now = time.time()
        rows = [(dumps(c.to_item()), now, READY, len(c.lines), c.n_bytes, c.source) for c in chunks]

        def save_position() -> None:
            if checkpoint is not None:
                self._save_checkpoint(checkpoint, now)

        self._commit_rows(rows, save_position)

    def _commit_rows(self, rows: list[tuple[Any, ...]], save_position: Callable[[], None]) -> None:
        """The durable boundary of every source: items and the read position after them,
        one transaction, within the byte budget."""
        new_bytes = sum(r[4] for r in rows)
        with self._tx:
            if self._total_bytes + new_bytes > self.max_bytes and new_bytes:
                self._make_room(new_bytes)

            def write() -> None:
                if rows:
                    self._db.executemany(INSERT_ITEM, rows)
                save_position()

            self._write_retrying(write)
            self._total_bytes += new_bytes
        if rows:
            self._q.put_event.set()

    def _write_retrying(self, write: Any) -> None:
        """One transaction; if another process (a tool) holds the write lock past SQLite's
        own 30 s wait, keep waiting rather than stop collecting."""
        for attempt in range(LOCKED_RETRIES + 1):
            try:
                with self._db:
                    write()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == LOCKED_RETRIES:
                    raise
                log.warning("buffer_busy", attempt=attempt + 1, error=str(exc))

    def _make_room(self, need: int) -> None:
        """Under the budget: forget old acked history first, then apply the policy."""
        with self._db:
            self._delete_acked(keep_bytes=max(0, self.max_bytes - need - self._pending_bytes()))
        self._total_bytes = self._sum_bytes()
        if self._total_bytes + need <= self.max_bytes:
            return
        if self.full_policy == "block":
            raise BufferFull(f"buffer at {self._total_bytes} of {self.max_bytes} bytes")
        dropped_lines = 0
        dropped_items = 0
        with self._db:
            while self._total_bytes + need > self.max_bytes:
                row = self._db.execute(
                    f"SELECT _id, n_lines, n_bytes FROM {TABLE} WHERE status = ?"
                    " ORDER BY _id LIMIT 1",
                    (READY,),
                ).fetchone()
                if row is None:
                    break  # everything left is leased: go over budget rather than lose more
                self._db.execute(f"DELETE FROM {TABLE} WHERE _id = ?", (row[0],))
                dropped_lines += row[1]
                dropped_items += 1
                self._total_bytes -= row[2]
            if dropped_lines:
                self._bump_meta("dropped", dropped_lines)
        if dropped_lines:
            self._q.total = max(0, self._q.total - dropped_items)
            log.warning("buffer_full_dropped", lines=dropped_lines, budget=self.max_bytes)

    def commit_records(
        self,
        entries: Sequence[dict[str, Any]],
        *,
        key: str,
        source: str,
        cursor: str,
        per_item: int,
    ) -> None:
        """Commit records (journald, event log) and the cursor after them in one transaction."""
        now = time.time()
        rows = [
            (d, now, READY, n, nb, src)
            for d, n, nb, src, _ in (
                _entries_row(list(entries[i : i + per_item]))
                for i in range(0, len(entries), per_item)
            )
        ]

        def save_cursor() -> None:
            self._db.execute(
                "INSERT OR REPLACE INTO cursors (key, source, cursor, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (key, source, cursor, now),
            )

        self._commit_rows(rows, save_cursor)

    def commit_records_waiting(
        self,
        entries: Sequence[dict[str, Any]],
        *,
        key: str,
        source: str,
        cursor: str,
        per_item: int,
        stopped: Callable[[], bool],
    ) -> bool:
        """commit_records; under policy ``block``, wait for room until ``stopped()``.
        False when it stopped before the records were committed."""
        while True:
            try:
                self.commit_records(
                    entries, key=key, source=source, cursor=cursor, per_item=per_item
                )
                return True
            except BufferFull:
                if stopped():
                    return False
                self.wait_for_room(1.0)
            except sqlite3.OperationalError as exc:  # disk full, I/O error: keep and retry
                log.error("buffer_write_failed", source=source, error=str(exc), note="retrying")
                if stopped():
                    return False
                time.sleep(1.0)

    def get_cursor(self, key: str) -> str | None:
        with self._tx:
            row = self._db.execute("SELECT cursor FROM cursors WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def wait_for_room(self, timeout: float) -> None:
        """Block (policy ``block``) until an ack may have made room, or ``timeout``."""
        with self._room:
            self._room.wait(timeout)

    # -- positions ------------------------------------------------------------------------

    def _save_checkpoint(self, cp: Checkpoint, now: float) -> None:
        fid = cp.file_id
        self._db.execute(
            "INSERT INTO checkpoints (key, path, source, dev, ino, fp_len, fp, generation,"
            " offset, updated_at, epoch) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET path=excluded.path, source=excluded.source,"
            " offset=excluded.offset, updated_at=excluded.updated_at",
            (cp.key, cp.path, cp.source, fid.dev, fid.ino, fid.fp_len, fid.fp,
             cp.generation, cp.offset, now, cp.epoch),
        )  # fmt: skip

    def save_checkpoint(self, cp: Checkpoint) -> None:
        """Record a position with no new lines (a file seen for the first time)."""
        self.commit((), cp)

    def forget_checkpoint(self, key: str) -> None:
        """A file generation that was read to its end and let go."""
        with self._tx, self._db:
            self._db.execute("DELETE FROM checkpoints WHERE key = ?", (key,))

    def checkpoints(self) -> list[Checkpoint]:
        """Every saved position, newest first."""
        with self._tx:
            rows = self._db.execute(
                "SELECT path, source, dev, ino, fp_len, fp, generation, offset, epoch"
                " FROM checkpoints ORDER BY updated_at DESC"
            ).fetchall()
        return [
            Checkpoint(FileId(r[2], r[3], r[4], r[5]), r[6], r[7], r[0], r[1], r[8]) for r in rows
        ]

    # -- leasing --------------------------------------------------------------------------

    def ready_head(self, max_lines: int) -> tuple[int, float | None]:
        """(lines ready in the first ``max_lines`` worth of items, commit time of the oldest)."""
        total = 0
        oldest: float | None = None
        with self._tx:
            cursor = self._db.execute(
                f"SELECT n_lines, timestamp FROM {TABLE} WHERE status = ? ORDER BY _id LIMIT ?",
                (READY, max_lines),
            )
            for n, ts in cursor:
                if oldest is None:
                    oldest = ts
                if total + n > max_lines and total:
                    break
                total += n
                if total >= max_lines:
                    break
            cursor.close()
        return total, oldest

    def lease(self, max_lines: int, selection: Selection | None = None) -> Lease | None:
        """Mark the oldest selected items (up to ``max_lines`` lines) in flight, decoded."""
        sel = selection or Selection()
        where, params = sel.where()
        me = os.getpid()
        with self._tx:
            # Choose on the index alone (ids and line counts), row by row; then read the
            # blobs of just the chosen items.
            cursor = self._db.execute(
                f"SELECT _id, n_lines FROM {TABLE} WHERE {where} ORDER BY _id LIMIT ?",
                (*params, max_lines),
            )
            ids: list[int] = []
            total = 0
            for rid, n in cursor:
                if total + n > max_lines and ids:
                    break
                ids.append(rid)
                total += n
                if total >= max_lines:
                    break
            cursor.close()
            if not ids:
                return None
            blobs = dict(
                self._db.execute(
                    f"SELECT _id, data FROM {TABLE} WHERE _id IN ({','.join('?' * len(ids))})",
                    ids,
                ).fetchall()
            )
            # Another process (the agent, a replay, an export) may lease at the same moment:
            # an item is ours only if it is still in a selected state when we take it.
            marks = ",".join("?" * len(sel.statuses))
            won: list[int] = []
            with self._db:
                for i in ids:
                    cur = self._db.execute(
                        f"UPDATE {TABLE} SET leased_from = status, status = ?, owner = ?"
                        f" WHERE _id = ? AND status IN ({marks})",
                        (UNACK, me, i, *sel.statuses),
                    )
                    if cur.rowcount == 1:
                        won.append(i)
            ids = won
            if not ids:
                return None
            picked = [(rid, blobs[rid]) for rid in ids]  # only what we won
        entries: list[Entry] = []
        bad: set[int] = set()
        for rid, data in picked:
            try:
                entries.extend(decode_item(rid, data))
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
                # Not ours (tampered or damaged): set aside as a dead letter, never executed.
                log.error("item_undecodable", item=rid, error=str(exc)[:200])
                bad.add(rid)
        if bad:
            self._set_status(sorted(bad), DEAD)
        good = [i for i in ids if i not in bad]
        if not good:
            return None
        return Lease(self, good, entries)

    def finish(self, lease: Lease) -> None:
        """Settle a lease: its items acked, its rejected entries kept as dead letters."""
        now = time.time()
        dumps = json_serializer.dumps
        dead_rows = [
            (dumps({"v": 1, "entries": [e.to_wire("")]}), now, DEAD, 1, _nbytes(e), e.source)
            for e in lease.dead
        ]
        with self._tx:
            if self._closed:
                return  # shutting down: left unacked, resent after restart (at-least-once)
            with self._db:
                self._db.executemany(
                    f"UPDATE {TABLE} SET status = ?, acked_at = ?, owner = NULL,"
                    " leased_from = NULL WHERE _id = ?",
                    [(ACKED, now, i) for i in lease.item_ids],
                )
                if dead_rows:
                    self._db.executemany(INSERT_ITEM, dead_rows)
                if lease.delivered:
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_send_ok_at', ?)",
                        (_now_iso(),),
                    )
        with self._room:
            self._room.notify_all()

    def release(self, lease: Lease) -> None:
        """Leased items back to the state they were leased from (shutdown, given up)."""
        self.release_ids(lease.item_ids)

    def release_ids(self, ids: Sequence[int]) -> None:
        with self._tx:
            if self._closed:
                return
            with self._db:
                for start in range(0, len(ids), 500):
                    part = tuple(ids[start : start + 500])
                    self._unlease_where(f"_id IN ({','.join('?' * len(part))})", part)

    def count(self, selection: Selection) -> int:
        """Lines in the selected items."""
        where, params = selection.where()
        with self._tx:
            row = self._db.execute(
                f"SELECT COALESCE(SUM(n_lines), 0) FROM {TABLE} WHERE {where}", params
            ).fetchone()
        return int(row[0])

    def max_id(self) -> int:
        """The newest item's id: a snapshot bound for replay and export."""
        with self._tx:
            return int(self._db.execute(f"SELECT COALESCE(MAX(_id), 0) FROM {TABLE}").fetchone()[0])

    def mark_exported(self, ids: Sequence[int]) -> None:
        """Items written to a bundle: kept (retention window), never sent by the forwarder."""
        now = time.time()
        with self._tx, self._db:
            self._db.executemany(
                f"UPDATE {TABLE} SET status = ?, acked_at = ?, owner = NULL, leased_from = NULL"
                " WHERE _id = ?",
                [(EXPORTED, now, i) for i in ids],
            )

    def import_entries(self, entries: Iterable[dict[str, Any]], per_item: int) -> tuple[int, int]:
        """Entries from a bundle: all of them or none; an event_uid seen before is skipped.

        Staged in short transactions (a running agent keeps committing meanwhile) and made
        ready in one; if ``entries`` raises (a bad bundle), everything staged is removed.
        """
        me = os.getpid()
        added = skipped = 0
        try:
            item: list[dict[str, Any]] = []
            rows: list[tuple[Any, ...]] = []
            uids: list[tuple[str, int]] = []
            for e in entries:
                uids.append((e["event_uid"], me))
                item.append(e)
                if len(item) >= per_item:
                    rows.append(_entries_row(item))
                    item = []
                    # Stage only whole items: every uid staged has its row in the same stage.
                    if len(uids) >= STAGE_ENTRIES:
                        a, k = self._stage(rows, uids)
                        added, skipped, rows, uids = added + a, skipped + k, [], []
            if item:
                rows.append(_entries_row(item))
            a, k = self._stage(rows, uids)
            added, skipped = added + a, skipped + k
        except BaseException:
            with self._tx, self._db:
                self._drop_staged(me)
            raise
        with self._tx, self._db:
            self._db.execute(
                f"UPDATE {TABLE} SET status = ?, owner = NULL WHERE status = ? AND owner = ?",
                (READY, IMPORTING, me),
            )
            self._db.execute("UPDATE imported_uids SET pending = NULL WHERE pending = ?", (me,))
            self._total_bytes = self._sum_bytes()
        self._q.put_event.set()
        return added, skipped

    def _stage(self, rows: list[tuple[Any, ...]], uids: list[tuple[str, int]]) -> tuple[int, int]:
        """One short transaction: new uids recorded, items whose entries are all new staged."""
        if not uids:
            return 0, 0
        added = skipped = 0
        with self._tx, self._db:
            fresh: set[str] = set()
            for uid, me in uids:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO imported_uids (event_uid, pending) VALUES (?, ?)",
                    (uid, me),
                )
                if cur.rowcount:
                    fresh.add(uid)
            for data, n_lines, n_bytes, source, entries in rows:
                keep = [e for e in entries if e["event_uid"] in fresh]
                fresh.difference_update(e["event_uid"] for e in keep)
                skipped += n_lines - len(keep)
                if not keep:
                    continue
                if len(keep) != n_lines:
                    data, n_lines, n_bytes, source, _ = _entries_row(keep)
                added += n_lines
                self._db.execute(
                    f"INSERT INTO {TABLE} (data, timestamp, status, n_lines, n_bytes, source,"
                    " owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (data, time.time(), IMPORTING, n_lines, n_bytes, source, uids[0][1]),
                )
        return added, skipped

    def _drop_staged(self, pid: int | None) -> None:
        cond = "owner IS ?" if pid is None else "owner = ?"
        self._db.execute(f"DELETE FROM {TABLE} WHERE status = ? AND {cond}", (IMPORTING, pid))
        cond = "pending IS NOT NULL" if pid is None else "pending = ?"
        self._db.execute(f"DELETE FROM imported_uids WHERE {cond}", () if pid is None else (pid,))

    def _set_status(self, ids: Sequence[int], status: int) -> None:
        with self._tx:
            if self._closed:
                return
            with self._db:
                self._db.executemany(
                    f"UPDATE {TABLE} SET status = ?, owner = NULL, leased_from = NULL"
                    " WHERE _id = ?",
                    [(status, i) for i in ids],
                )

    def requeue_dead(self) -> int:
        """Dead letters back to ready (replay --dead-letter); returns the lines moved."""
        with self._tx, self._db:
            n = self._db.execute(
                f"SELECT COALESCE(SUM(n_lines),0) FROM {TABLE} WHERE status = ?", (DEAD,)
            ).fetchone()[0]
            self._db.execute(f"UPDATE {TABLE} SET status = ? WHERE status = ?", (READY, DEAD))
        return int(n)

    def migrate_legacy(self) -> int:
        """Lines the first agent left in its ``log_buffer`` table become queue items."""
        with self._tx:
            exists = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='log_buffer'"
            ).fetchone()
            if not exists:
                return 0
            rows = self._db.execute(
                "SELECT id, log_text, source, timestamp FROM log_buffer ORDER BY id"
            ).fetchall()
            if not rows:
                return 0
            now = time.time()
            dumps = json_serializer.dumps
            items = []
            for start in range(0, len(rows), 500):
                part = rows[start : start + 500]
                entries = [
                    {
                        "log_text": text,
                        "source": src,
                        "timestamp": ts,
                        "event_uid": event_uid(f"legacy:{self.path}", rid),
                    }
                    for rid, text, src, ts in part
                ]
                nbytes = sum(len(e["log_text"]) for e in entries)
                items.append((dumps({"v": 1, "entries": entries}), now, READY, len(part), nbytes))
            with self._db:
                self._db.executemany(
                    f"INSERT INTO {TABLE} (data, timestamp, status, n_lines, n_bytes)"
                    " VALUES (?, ?, ?, ?, ?)",
                    items,
                )
                self._db.execute("DELETE FROM log_buffer")
            self._total_bytes = self._sum_bytes()
        return len(rows)

    # -- housekeeping ---------------------------------------------------------------------

    def cleanup(self) -> None:
        """Forget acked items older than the retention window; re-sync the byte count."""
        with self._tx:
            with self._db:
                self._db.execute(
                    f"DELETE FROM {TABLE} WHERE status IN (?, ?) AND acked_at < ?",
                    (ACKED, EXPORTED, time.time() - self.acked_retention_s),
                )
            self._total_bytes = self._sum_bytes()

    def _delete_acked(self, keep_bytes: int) -> None:
        """History goes first when the budget is tight: acked entries, and exported ones
        (they are on the bundle's media already), oldest first."""
        rows = self._db.execute(
            f"SELECT _id, n_bytes FROM {TABLE} WHERE status IN (?, ?) ORDER BY _id DESC",
            (ACKED, EXPORTED),
        ).fetchall()
        kept = 0
        doomed = []
        for rid, nb in rows:
            kept += nb
            if kept > keep_bytes:
                doomed.append((rid,))
        self._db.executemany(f"DELETE FROM {TABLE} WHERE _id = ?", doomed)

    def _sum_bytes(self) -> int:
        return int(self._db.execute(f"SELECT COALESCE(SUM(n_bytes),0) FROM {TABLE}").fetchone()[0])

    def _pending_bytes(self) -> int:
        return int(
            self._db.execute(
                f"SELECT COALESCE(SUM(n_bytes),0) FROM {TABLE} WHERE status NOT IN (?, ?)",
                (ACKED, EXPORTED),
            ).fetchone()[0]
        )

    # -- counters -------------------------------------------------------------------------

    def _bump_meta(self, key: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
            " value = CAST(CAST(value AS INTEGER) + ? AS TEXT)",
            (key, str(by), by),
        )

    def set_meta(self, key: str, value: str | None) -> None:
        with self._tx:
            if self._closed:
                return
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
                )

    def get_meta(self, key: str) -> str | None:
        with self._tx:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def stats(self) -> BufferStats:
        with self._tx:
            return read_stats(self._db)

    def close(self) -> None:
        """Release the file; closing twice is fine. Later acks become no-ops."""
        with self._tx:
            if self._closed:
                return
            self._closed = True
            # Our leased items go back, so status shows them pending; a replay's stay its own.
            with self._db:
                self._unlease_where("(owner = ? OR owner IS NULL)", (os.getpid(),))
            self._q.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._owner_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(_owner_lock(self.path, os.getpid()))
            os.close(self._owner_fd)
            self._owner_fd = None


def decode_item(item_id: int, data: bytes) -> Iterator[Entry]:
    """Entries of one queue item (a collector chunk, or explicit protocol entries)."""
    item = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    if "entries" in item:
        for d in item["entries"]:
            yield Entry.from_wire(item_id, d)
        return
    fid = item["fid"]
    src = item["src"]
    ts = _iso_ms(float(item["ts"]))
    extras = item.get("x") or {}
    for i, (text, off) in enumerate(zip(item["lines"], item["offs"], strict=True)):
        yield Entry(item_id, text, src, ts, event_uid(fid, off), None, extras.get(str(i)))


def read_stats(db: sqlite3.Connection, now: float | None = None) -> BufferStats:
    """The buffer's figures from any connection (the agent's, or status's read-only one)."""
    now = time.time() if now is None else now
    by_state: dict[int, tuple[int, int, float | None]] = {
        int(state): (int(n), int(nb), oldest)
        for state, n, nb, oldest in db.execute(
            f"SELECT {EFFECTIVE_STATE} AS st, COALESCE(SUM(n_lines),0),"
            f" COALESCE(SUM(n_bytes),0), MIN(timestamp) FROM {TABLE} GROUP BY st"
        )
    }
    pending = [by_state[s] for s in (0, READY) if s in by_state]
    oldest_ts = [o for _, _, o in pending if o is not None]
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    return BufferStats(
        pending=sum(n for n, _, _ in pending),
        pending_bytes=sum(nb for _, nb, _ in pending),
        oldest_pending_age_s=round(max(0.0, now - min(oldest_ts)), 3) if oldest_ts else None,
        dead_letter=by_state.get(DEAD, (0, 0, None))[0],
        dropped=int(meta.get("dropped") or 0),
        acked_kept=by_state.get(ACKED, (0, 0, None))[0],
        exported=by_state.get(EXPORTED, (0, 0, None))[0],
        last_send_ok_at=meta.get("last_send_ok_at"),
        last_error=meta.get("last_error"),
        quarantined=meta.get("quarantined"),
    )


def open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection that never blocks the agent (status, inspect)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    uri = Path(os.path.abspath(path)).as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=5.0)


def _integrity_problem(path: str) -> str | None:
    """None when the file is absent or a healthy queue; else what is wrong."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    try:
        con = sqlite3.connect(path, timeout=30.0)
        try:
            result = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if result != [("ok",)]:
        return "; ".join(str(r[0]) for r in result[:5])
    return None


def _quarantine(path: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(target):
        target = f"{path}.corrupt-{stamp}-{n}"
        n += 1
    os.replace(path, target)
    for suffix in ("-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target


def _try_lock(lock_path: str) -> int | None:
    """An exclusive, non-blocking lock on ``lock_path``: the fd, or None if someone holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _take_lock(lock_path: str) -> int:
    """An exclusive lock next to the buffer: one agent process per buffer."""
    fd = _try_lock(lock_path)
    if fd is None:
        raise BufferLocked(_locked_message(lock_path))
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _owner_lock(buffer_path: str, pid: int) -> str:
    return f"{buffer_path}.owner-{pid}.lock"


def _locked_message(lock_path: str) -> str:
    pid = ""
    with contextlib.suppress(OSError):
        pid = Path(lock_path).read_text().strip()
    owner = f" (pid {pid})" if pid else ""
    return f"another ila-agent process{owner} already owns the buffer {lock_path[:-5]}"


def _alive(buffer_path: str, pid: int) -> bool:
    """Is the process that leased under ``pid`` still running? Asked of its owner lock, not
    of the pid: a pid reused by another process (after a reboot), or seen from another PID
    namespace, does not hold that lock."""
    path = _owner_lock(buffer_path, pid)
    if not os.path.exists(path):
        return False
    fd = _try_lock(path)
    if fd is None:
        return True
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return False


def _nbytes(e: Entry) -> int:
    return len(e.log_text.encode("utf-8", "replace"))


def _iso_ms(epoch: float) -> str:
    from ila_agent.clock import rfc3339_ms

    return rfc3339_ms(epoch)


def _now_iso() -> str:
    return _iso_ms(time.time())


def _entries_row(item: list[dict[str, Any]]) -> tuple[Any, ...]:
    """(data, n_lines, n_bytes, source, entries) of an item of explicit entries."""
    nbytes = sum(len(str(e.get("log_text", "")).encode("utf-8", "replace")) for e in item)
    data = json_serializer.dumps({"v": 1, "entries": item})
    return (data, len(item), nbytes, item[0].get("source"), item)
