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

import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from ila_core.clock import Clock, rfc3339_ms
from ila_core.errors import BufferWriteError
from queue_store import budget, leases, positions, staging, stats
from queue_store.batch import Lease
from queue_store.buffer_file import BufferFile
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
from queue_store.schema import ACKED, DEAD, EXPORTED, TABLE
from queue_store.stats import BufferStats

log = structlog.get_logger("queue_store")

LOCKED_RETRIES = 20  # × SQLite's 30 s busy wait: ten minutes before a commit gives up
CLEANUP_PASS_MAX_S = 3600.0  # cleanup reads the acked history at least this often


class QueueStore(BufferFile):
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
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.acked_retention_s = acked_retention_s
        super().__init__(path, lock=lock, clock=clock)
        with self._read() as db:
            self._total_bytes = budget.total_bytes(db)
        self._acked_since = -math.inf  # every acked item is at least this recent (cleanup)
        self._last_pass_at = -math.inf  # wall time of cleanup's last pass over the history

    # -- the durable boundary -------------------------------------------------------------

    def commit(
        self, chunks: Sequence[Chunk], checkpoint: Checkpoint | None, *, filtered: int = 0
    ) -> None:
        """Commit lines and the position after them in one transaction (durable);
        ``filtered``: entries include/exclude dropped on the way, counted in the same."""
        self.commit_many([(chunks, checkpoint)], filtered=filtered)

    def commit_many(
        self, reads: Sequence[tuple[Sequence[Chunk], Checkpoint | None]], *, filtered: int = 0
    ) -> None:
        """What several files gave, each with the position after it, in one transaction:
        one fsync for a step over many files rather than one per file."""
        checkpoints = [cp for _, cp in reads if cp is not None]
        rows = [chunk_row(c) for chunks, _ in reads for c in chunks]
        if not rows and not checkpoints:
            return
        now = self.clock.wall()

        def save_positions(db: sqlite3.Connection) -> None:
            for cp in checkpoints:
                positions.save_checkpoint(db, cp, now)
            if filtered:
                stats.bump_meta(db, "filtered", filtered)

        self._commit_rows(rows, save_positions, now)

    def commit_records(
        self,
        entries: Sequence[dict[str, Any]],
        *,
        key: str,
        source: str,
        cursor: str,
        per_item: int,
        filtered: int = 0,
    ) -> None:
        """Commit records (journald, event log, syslog) and the cursor after them in one
        transaction; ``filtered``: records include/exclude dropped, counted in the same."""
        now = self.clock.wall()
        rows = [entries_row(entries[i : i + per_item]) for i in range(0, len(entries), per_item)]

        def save_cursor(db: sqlite3.Connection) -> None:
            positions.save_cursor(db, key, source, cursor, now)
            if filtered:
                stats.bump_meta(db, "filtered", filtered)

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
                    self._durability(True)
                    with self._db:
                        insert_items(self._db, rows, now)
                        save_position(self._db)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == LOCKED_RETRIES:
                        raise self._write_error(exc) from exc
                    log.warning("buffer_busy", attempt=attempt + 1, error=str(exc))
            self._total_bytes += new_bytes
        if rows:
            self.commit_event.set()

    def _make_room(self, need: int) -> None:
        """Under the budget (the transaction lock held): see budget.make_room."""
        try:
            with self._db:
                self._total_bytes = budget.make_room(
                    self._db, need=need, max_bytes=self.max_bytes, policy=self.full_policy
                )
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from exc

    def fits(self, n_bytes: int) -> bool:
        """Whether ``n_bytes`` more go in as they are (policy ``block``: within the budget)."""
        return self.full_policy != "block" or self._total_bytes + n_bytes <= self.max_bytes

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

    def lease(
        self, max_lines: int, selection: Selection | None = None, *, max_bytes: int | None = None
    ) -> Lease | None:
        """Mark the oldest selected items (up to ``max_lines`` lines, and about ``max_bytes``
        of request body) in flight, decoded."""
        several, _ = self.lease_several(max_lines, 1, selection, max_bytes=max_bytes)
        return several[0] if several else None

    def lease_several(
        self,
        max_lines: int,
        n: int,
        selection: Selection | None = None,
        *,
        max_bytes: int | None = None,
        committed_by: float = math.inf,
    ) -> tuple[list[Lease], leases.Head]:
        """Up to ``n`` leases (at least one is looked for) in one transaction, each taken when
        its items make a full batch or the oldest was committed by ``committed_by`` (wall
        time); with the last head looked at (one look at the index both decides and takes).
        A backlog then costs one commit and one wait for the lock per ``n`` batches: under
        load, the GIL makes each a long one."""
        sel = selection or Selection()
        taken: list[tuple[list[int], dict[int, bytes]]] = []
        with self._write() as db:
            for _ in range(max(1, n)):
                head = leases.choose(db, sel, max_lines, max_bytes)
                if not head.ids or not (head.full or (head.oldest or 0.0) <= committed_by):
                    break
                data = leases.blobs(db, head.ids)
                taken.append((leases.take(db, head.ids, sel, os.getpid(), self.clock.wall()), data))
                if not head.full:
                    break  # it took all there was
        out: list[Lease] = []
        try:
            for won, data in taken:
                lease = self._decoded(won, data)
                if lease is not None:
                    out.append(lease)
        except BaseException:
            # The caller gets none of them: give every item taken here back (not only the
            # one that failed), or they would wait until the agent restarts.
            ids = [rid for won, _ in taken for rid in won]
            try:
                self.release_ids(ids)
            except BufferWriteError as exc:
                # The decoding error goes on up; these items wait for the next start.
                log.error("lease_release_failed", items=len(ids), error=str(exc))
            raise
        return out, head

    def _decoded(self, won: list[int], data: dict[int, bytes]) -> Lease | None:
        """The lease of the items won, decoded; one that does not decode is a dead letter."""
        entries: list[Entry] = []
        bad: list[int] = []
        for rid in won:  # only what we won: another process's entries are never ours to send
            try:
                entries.extend(list(decode_item(rid, data[rid])))  # all of an item, or none
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
                with self._write(durable=True) as db:
                    done += staging.stage(db, items, me, self.clock.wall())
        except BaseException:
            with self._write() as db:
                staging.drop_staged(db, me)
            raise
        with self._write(durable=True) as db:
            staging.promote(db, me)
            self._total_bytes = budget.total_bytes(db)
        self.commit_event.set()
        return done.added, done.skipped

    def migrate_legacy(self) -> int:
        """Lines the first agent left in its ``log_buffer`` table become queue items."""
        with self._write(durable=True) as db:
            moved = staging.adopt_legacy(db, self.path, self.clock.wall())
            self._total_bytes = budget.total_bytes(db)
        return moved

    # -- housekeeping and counters --------------------------------------------------------

    def cleanup(self) -> None:
        """Forget acked items older than the retention window; re-sync the byte count.

        ``acked_at`` has no index (it would cost every ack a write), so a pass reads every
        acked row: it runs when the oldest acked item may have expired, which it knows from
        the last pass (items acked since have a later ``acked_at``), and at least every
        ``CLEANUP_PASS_MAX_S`` or when the wall clock went back (items released from a lease
        keep their old ``acked_at``; a clock stepped back makes new ones look older). The
        byte count is re-synced at every call (an index-only sum)."""
        now = self.clock.wall()
        cutoff = now - self.acked_retention_s
        due = (
            cutoff > self._acked_since
            or now < self._last_pass_at
            or now - self._last_pass_at >= CLEANUP_PASS_MAX_S
        )
        with self._write() as db:
            if due:
                db.execute(
                    f"DELETE FROM {TABLE} WHERE status IN (?, ?) AND acked_at < ?",
                    (ACKED, EXPORTED, cutoff),
                )
                (oldest,) = db.execute(
                    f"SELECT MIN(acked_at) FROM {TABLE} WHERE status IN (?, ?)",
                    (ACKED, EXPORTED),
                ).fetchone()
            self._total_bytes = budget.total_bytes(db)
        if due:
            self._acked_since = now if oldest is None else min(float(oldest), now)
            self._last_pass_at = now

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
