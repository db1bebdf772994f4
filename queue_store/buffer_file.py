"""The buffer file itself: who owns it, opening it (quarantine, migration), transactions
and their durability, putting it back if it is deleted under us, and closing it.

``QueueStore`` (store.py) is the door built on it: every operation on the queue.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator

import structlog

from ila_core.clock import Clock, rfc3339_ms
from ila_core.errors import BufferWriteError
from queue_store import leases, ownership, staging, stats
from queue_store.schema import migrate, open_queue

log = structlog.get_logger("queue_store")


class BufferFile:
    """One process's open buffer file: the connection, its lock, its ownership."""

    def __init__(
        self,
        path: str,
        *,
        lock: bool = True,
        clock: Clock | None = None,
    ) -> None:
        """Open the buffer. ``lock=False`` is for CLI tools working beside a running agent:
        no ownership lock, no quarantine (a corrupt file raises QueueCorrupt instead)."""
        self.path = os.path.abspath(path)
        self.clock = clock or Clock()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.owner = lock
        self._lock_fd = ownership.take_lock(self.path) if lock else None
        # Held while this process may lease: how other processes tell it is alive.
        self._owner_fd = ownership.try_lock(ownership.owner_lock(self.path, os.getpid()))
        self.quarantined_to: str | None = None
        # Ours, not persist-queue's: its own put/get are never called, and the file under
        # the lock may be reopened (``check_file``).
        self._tx = threading.Lock()
        self._room = threading.Condition()
        self._closed = False
        self.commit_event = threading.Event()  # set at every commit: wakes the forwarder
        try:
            self._check_integrity()
            with self._tx:
                self._open_file()
            self._resume_orphans()
            if self.quarantined_to:
                with self._write() as db:
                    stats.set_meta(db, "quarantined", f"{self.quarantined_to} at {self._now_iso()}")
        except BaseException:
            if hasattr(self, "_file"):
                self._file.close()
            self._release_locks()
            raise

    # -- opening -------------------------------------------------------------------------

    def _check_integrity(self) -> None:
        """A corrupt file is moved aside (the agent) or refused (a tool)."""
        self.quarantined_to = ownership.check_integrity(
            self.path, may_quarantine=self.owner, now=self.clock.wall()
        )

    def _open_file(self) -> None:
        """Open the queue file (the lock held) and bring its schema up to date."""
        self._file = open_queue(self.path)
        self._db = self._file.db
        self._durable = False
        with self._transaction(durable=True) as db:
            migrate(db)
        self._identity = ownership.file_identity(self.path)

    def check_file(self) -> str | None:
        """Is the file on disk still the one this store writes? Someone may have deleted or
        replaced the buffer or its WAL while the agent runs: then everything committed since
        would live only in a deleted file. If so, the open database is copied back to the
        path and reopened (nothing committed is lost), and what happened is returned."""
        with self._tx:
            if self._closed:
                return None
            problem = ownership.tampering(self._identity, ownership.file_identity(self.path))
            if problem is None:
                return None
            log.error("buffer_file_tampered", path=self.path, problem=problem, note="restoring")
            try:
                # Closing checkpoints into the old file and removes the WAL names it made.
                ownership.restore(self._db, self.path, before_replace=self._file.close)
            except (sqlite3.Error, OSError) as exc:
                raise BufferWriteError(f"{self.path}: {problem}; restoring failed: {exc}") from exc
            self._open_file()
            log.warning("buffer_file_restored", path=self.path)
            return problem

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

    def _durability(self, durable: bool) -> None:
        """fsync at commit (FULL) for what must survive a power cut, or not (NORMAL).

        In WAL mode a NORMAL transaction may be lost by a power cut (never corrupted), and the
        next FULL commit syncs every frame before it. Lines and positions are always FULL;
        leases, acks, releases and counters are NORMAL: losing one means an entry is sent
        again (event_uid de-duplicates it), never that a line is lost.
        """
        if durable != self._durable:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction (the lock held by the caller); a write that fails (disk full, I/O
        error, read-only file) becomes BufferWriteError."""
        try:
            self._durability(durable)
            with self._db:
                yield self._db
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from exc

    @contextlib.contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """The transaction lock and one transaction."""
        with self._tx, self._transaction(durable=durable) as db:
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
                raise self._write_error(exc) from exc

    def _write_error(self, exc: sqlite3.Error) -> BufferWriteError:
        return BufferWriteError(f"{self.path}: {ownership.explain_failure(self.path, exc)}")

    def _now_iso(self) -> str:
        return rfc3339_ms(self.clock.wall())

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
