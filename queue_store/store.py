"""The buffer's one door: every process and thread reads and writes the queue through here.

Durable boundary: ``commit`` writes a chunk's items and the file's read position in one SQLite
transaction, so after a crash the position never points past, nor before, what the queue holds.
Delivered boundary: ``ack`` marks a lease's items acked (and keeps its rejected entries as dead
letters) in one transaction, only once every entry of the lease is settled.

The rooms behind the door, one file each: ``schema`` (tables, states, persist-queue),
``ownership`` (locks, liveness, quarantine), ``codec`` (items), ``budget`` (bytes and
``drop_oldest``), ``positions``, ``leases``, ``staging`` (imports), ``stats``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import structlog

from ila_core.clock import Clock, rfc3339_ms
from ila_core.errors import BufferFull, BufferWriteError, QueueCorrupt
from queue_store import budget, leases, ownership, positions, staging, stats
from queue_store.batch import Lease
from queue_store.codec import (
    UNDECODABLE,
    ItemRow,
    chunk_row,
    decode_item,
    entries_row,
    insert_items,
)
from queue_store.leases import Selection
from queue_store.records import Checkpoint, Chunk, Entry
from queue_store.schema import ACKED, DEAD, EXPORTED, TABLE, migrate, open_queue
from queue_store.stats import BufferStats

log = structlog.get_logger("queue_store")

LOCKED_RETRIES = 20  # × SQLite's 30 s busy wait: ten minutes before a commit gives up


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
        clock: Clock | None = None,
    ) -> None:
        """Open the buffer. ``lock=False`` is for CLI tools working beside a running agent:
        no ownership lock, no quarantine (a corrupt file raises QueueCorrupt instead)."""
        if full_policy not in budget.POLICIES:
            raise ValueError(f"full_policy must be one of {budget.POLICIES}")
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.acked_retention_s = acked_retention_s
        self.clock = clock or Clock()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.owner = lock
        self._lock_fd = ownership.take_lock(self.path) if lock else None
        # Held while this process may lease: how other processes tell it is alive.
        self._owner_fd = ownership.try_lock(ownership.owner_lock(self.path, os.getpid()))
        self.quarantined_to: str | None = None
        try:
            self._check_integrity()
            self._file = open_queue(self.path)
        except BaseException:
            self._release_locks()
            raise
        self._db = self._file.db
        self._tx = self._file.lock
        self._room = threading.Condition()
        self._closed = False
        self.commit_event = threading.Event()  # set at every commit: wakes the forwarder
        with self._tx, self._db:
            migrate(self._db)
        self._resume_orphans()
        if self.quarantined_to:
            self.set_meta("quarantined", f"{self.quarantined_to} at {self._now_iso()}")
        with self._tx:
            self._total_bytes = budget.total_bytes(self._db)

    # -- opening -------------------------------------------------------------------------

    def _check_integrity(self) -> None:
        """A corrupt file is moved aside (the agent) or refused (a tool)."""
        problem = ownership.integrity_problem(self.path)
        if problem is None:
            return
        if not self.owner:
            raise QueueCorrupt(f"{self.path}: {problem} (the agent quarantines it at start-up)")
        self.quarantined_to = ownership.quarantine(self.path, self.clock.wall())
        log.error(
            "buffer_corrupt_quarantined", path=self.path, moved_to=self.quarantined_to,
            problem=problem,
        )  # fmt: skip

    def _resume_orphans(self) -> None:
        """Items leased by a process that is gone (a crash) go back to where they were;
        an import that died half-way is removed whole."""
        me = os.getpid()

        def gone(pid: int | None) -> bool:
            # At open this store has leased nothing: a lease under our own pid is a previous
            # process's whose pid we reuse (a container's pid 1, a reboot).
            return pid is None or pid == me or not ownership.alive(self.path, pid)

        with self._write() as db:
            for pid in leases.lease_owners(db):
                if gone(pid):
                    leases.unlease_where(db, "owner IS ?", (pid,))
            for pid in staging.importers(db):
                if gone(pid):
                    staging.drop_staged(db, pid)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction (the lock held by the caller); a write that fails (disk full, I/O
        error, read-only file) becomes BufferWriteError."""
        try:
            with self._db:
                yield self._db
        except sqlite3.OperationalError as exc:
            raise BufferWriteError(f"{self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The transaction lock and one transaction."""
        with self._tx, self._transaction() as db:
            yield db

    @contextlib.contextmanager
    def _settle(self) -> Iterator[sqlite3.Connection | None]:
        """``_write`` for what becomes a no-op once the store is closed (acks, releases and
        counters arriving during shutdown): it yields None then."""
        with self._tx:
            if self._closed:
                yield None
                return
            with self._transaction() as db:
                yield db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._tx:
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                raise BufferWriteError(f"{self.path}: {exc}") from exc

    def _now_iso(self) -> str:
        return rfc3339_ms(self.clock.wall())

    # -- the durable boundary -------------------------------------------------------------

    def commit(self, chunks: Sequence[Chunk], checkpoint: Checkpoint | None) -> None:
        """Commit lines and the position after them in one transaction (durable)."""
        if not chunks and checkpoint is None:
            return
        now = self.clock.wall()

        def save_position(db: sqlite3.Connection) -> None:
            if checkpoint is not None:
                positions.save_checkpoint(db, checkpoint, now)

        self._commit_rows([chunk_row(c) for c in chunks], save_position, now)

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
        now = self.clock.wall()
        rows = [entries_row(entries[i : i + per_item]) for i in range(0, len(entries), per_item)]

        def save_cursor(db: sqlite3.Connection) -> None:
            positions.save_cursor(db, key, source, cursor, now)

        self._commit_rows(rows, save_cursor, now)

    def _commit_rows(
        self, rows: list[ItemRow], save_position: Callable[[sqlite3.Connection], None], now: float
    ) -> None:
        """The durable boundary of every source: items and the read position after them,
        one transaction, within the byte budget."""
        new_bytes = sum(r.n_bytes for r in rows)
        with self._tx:
            if self._total_bytes + new_bytes > self.max_bytes and new_bytes:
                self._make_room(new_bytes)
            # If another process (a tool) holds the write lock past SQLite's own 30 s wait,
            # keep waiting rather than stop collecting.
            for attempt in range(LOCKED_RETRIES + 1):
                try:
                    with self._db:
                        insert_items(self._db, rows, now)
                        save_position(self._db)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == LOCKED_RETRIES:
                        raise BufferWriteError(f"{self.path}: {exc}") from exc
                    log.warning("buffer_busy", attempt=attempt + 1, error=str(exc))
            self._total_bytes += new_bytes
        if rows:
            self.commit_event.set()

    def _make_room(self, need: int) -> None:
        """Under the budget (the transaction lock held): forget old acked history first,
        then apply the policy."""
        try:
            with self._db:
                keep = max(0, self.max_bytes - need - budget.pending_bytes(self._db))
                budget.forget_history(self._db, keep_bytes=keep)
            self._total_bytes = budget.total_bytes(self._db)
            if self._total_bytes + need <= self.max_bytes:
                return
            if self.full_policy == "block":
                raise BufferFull(f"buffer at {self._total_bytes} of {self.max_bytes} bytes")
            with self._db:
                dropped = budget.drop_oldest(self._db, self._total_bytes + need - self.max_bytes)
                if dropped.lines:
                    stats.bump_meta(self._db, "dropped", dropped.lines)
        except sqlite3.OperationalError as exc:
            raise BufferWriteError(f"{self.path}: {exc}") from exc
        self._total_bytes -= dropped.bytes
        if dropped.lines:
            log.warning("buffer_full_dropped", lines=dropped.lines, budget=self.max_bytes)

    def wait_for_room(self, timeout: float) -> None:
        """Block (policy ``block``) until an ack may have made room, or ``timeout``."""
        with self._room:
            self._room.wait(timeout)

    # -- positions ------------------------------------------------------------------------

    def save_checkpoint(self, cp: Checkpoint) -> None:
        """Record a position with no new lines (a file seen for the first time)."""
        self.commit((), cp)

    def forget_checkpoint(self, key: str) -> None:
        """A file generation that was read to its end and let go."""
        with self._write() as db:
            positions.forget_checkpoint(db, key)

    def checkpoints(self) -> list[Checkpoint]:
        """Every saved position, newest first."""
        with self._read() as db:
            return positions.load_checkpoints(db)

    def get_cursor(self, key: str) -> str | None:
        with self._read() as db:
            return positions.load_cursor(db, key)

    # -- leasing and settling -------------------------------------------------------------

    def ready_head(self, max_lines: int) -> tuple[int, float | None]:
        """(lines ready in the first ``max_lines`` worth of items, commit time of the oldest)."""
        with self._read() as db:
            return leases.ready_head(db, max_lines)

    def lease(self, max_lines: int, selection: Selection | None = None) -> Lease | None:
        """Mark the oldest selected items (up to ``max_lines`` lines) in flight, decoded."""
        sel = selection or Selection()
        with self._write() as db:
            ids = leases.choose(db, sel, max_lines)
            if not ids:
                return None
            data = leases.blobs(db, ids)
            won = leases.take(db, ids, sel, os.getpid())
        entries: list[Entry] = []
        bad: list[int] = []
        for rid in won:  # only what we won: another process's entries are never ours to send
            try:
                entries.extend(decode_item(rid, data[rid]))
            except UNDECODABLE as exc:
                # Not ours (tampered or damaged): set aside as a dead letter, never executed.
                log.error("item_undecodable", item=rid, error=str(exc)[:200])
                bad.append(rid)
        if bad:
            with self._write() as db:
                leases.set_status(db, bad, DEAD, self.clock.wall())
        good = [i for i in won if i not in bad]
        return Lease(self, good, entries) if good else None

    def ack(self, lease: Lease) -> None:
        """The ack: a lease's items acked, its rejected entries kept as dead letters, in one
        transaction. After ``close`` it is a no-op: left unacked, sent again after restart."""
        now = self.clock.wall()
        dead = [entries_row([e.to_wire("")], status=DEAD) for e in lease.dead]
        with self._settle() as db:
            if db is None:
                return
            leases.ack_items(db, lease.item_ids, now)
            insert_items(db, dead, now)
            if lease.delivered:
                stats.set_meta(db, "last_send_ok_at", rfc3339_ms(now))
        with self._room:
            self._room.notify_all()

    def release(self, lease: Lease) -> None:
        """Leased items back to the state they were leased from (shutdown, given up)."""
        self.release_ids(lease.item_ids)

    def release_ids(self, ids: Sequence[int]) -> None:
        with self._settle() as db:
            if db is not None:
                leases.release(db, ids)

    def count(self, selection: Selection) -> int:
        """Lines in the selected items."""
        with self._read() as db:
            return leases.count(db, selection)

    def max_id(self) -> int:
        """The newest item's id: a snapshot bound for replay and export."""
        with self._read() as db:
            return leases.max_id(db)

    def mark_exported(self, ids: Sequence[int]) -> None:
        """Items written to a bundle: kept (retention window), never sent by the forwarder."""
        with self._write() as db:
            leases.mark_exported(db, ids, self.clock.wall())

    # -- imports --------------------------------------------------------------------------

    def import_entries(self, entries: Iterable[dict[str, Any]], per_item: int) -> tuple[int, int]:
        """Entries from a bundle: all of them or none; an event_uid seen before is skipped.
        Returns (added, skipped). If ``entries`` raises (a bad bundle), nothing stays."""
        me = os.getpid()
        done = staging.Staged()
        try:
            for items in staging.stages(entries, per_item):
                with self._write() as db:
                    done += staging.stage(db, items, me, self.clock.wall())
        except BaseException:
            with self._write() as db:
                staging.drop_staged(db, me)
            raise
        with self._write() as db:
            staging.promote(db, me)
            self._total_bytes = budget.total_bytes(db)
        self.commit_event.set()
        return done.added, done.skipped

    def migrate_legacy(self) -> int:
        """Lines the first agent left in its ``log_buffer`` table become queue items."""
        with self._write() as db:
            moved = staging.adopt_legacy(db, self.path, self.clock.wall())
            self._total_bytes = budget.total_bytes(db)
        return moved

    # -- housekeeping and counters --------------------------------------------------------

    def cleanup(self) -> None:
        """Forget acked items older than the retention window; re-sync the byte count."""
        with self._write() as db:
            db.execute(
                f"DELETE FROM {TABLE} WHERE status IN (?, ?) AND acked_at < ?",
                (ACKED, EXPORTED, self.clock.wall() - self.acked_retention_s),
            )
            self._total_bytes = budget.total_bytes(db)

    def set_meta(self, key: str, value: str | None) -> None:
        with self._settle() as db:
            if db is not None:
                stats.set_meta(db, key, value)

    def get_meta(self, key: str) -> str | None:
        with self._read() as db:
            return stats.get_meta(db, key)

    def stats(self) -> BufferStats:
        with self._read() as db:
            return stats.read_stats(db, self.clock.wall())

    def close(self) -> None:
        """Release the file; closing twice is fine. Later acks become no-ops."""
        with self._tx:
            if self._closed:
                return
            self._closed = True
            # Our leased items go back, so status shows them pending; a replay's stay its own.
            with contextlib.suppress(sqlite3.Error), self._db:
                leases.unlease_where(self._db, "(owner = ? OR owner IS NULL)", (os.getpid(),))
            self._file.close()
        self._release_locks()

    def _release_locks(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._owner_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(ownership.owner_lock(self.path, os.getpid()))
            os.close(self._owner_fd)
            self._owner_fd = None
