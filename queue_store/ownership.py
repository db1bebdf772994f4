"""Who owns a buffer file, who is alive, and what happens to a file that is corrupt.

- One agent process owns a buffer: an exclusive lock on ``<buffer>.lock``.
- Every process that may lease (the agent, a replay, an export) holds ``<buffer>.owner-<pid>
  .lock`` while it runs; a lease whose owner lock is free belongs to a process that is gone.
  Asking the lock rather than the pid works after pid reuse, across PID namespaces and on
  Windows.
- A file that fails SQLite's check is moved aside as ``<file>.corrupt-<UTC time>``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from ila_core.errors import BufferLocked, QueueCorrupt

log = structlog.get_logger("queue_store")


def try_lock(lock_path: str) -> int | None:
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


def take_lock(buffer_path: str) -> int:
    """The buffer's ownership lock: one agent process per buffer, else BufferLocked."""
    lock_path = buffer_path + ".lock"
    fd = try_lock(lock_path)
    if fd is None:
        raise BufferLocked(_locked_message(lock_path, buffer_path))
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def owner_lock(buffer_path: str, pid: int) -> str:
    return f"{buffer_path}.owner-{pid}.lock"


def _locked_message(lock_path: str, buffer_path: str) -> str:
    pid = ""
    with contextlib.suppress(OSError):
        pid = Path(lock_path).read_text().strip()
    owner = f" (pid {pid})" if pid else ""
    return f"another ila-agent process{owner} already owns the buffer {buffer_path}"


def alive(buffer_path: str, pid: int) -> bool:
    """Is the process that leased under ``pid`` still running? Asked of its owner lock, not
    of the pid: a pid reused by another process (after a reboot), or seen from another PID
    namespace, does not hold that lock."""
    path = owner_lock(buffer_path, pid)
    if not os.path.exists(path):
        return False
    fd = try_lock(path)
    if fd is None:
        return True
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return False


def integrity_problem(path: str) -> str | None:
    """None when the file is absent or a healthy database; else what is wrong."""
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


def check_integrity(path: str, *, may_quarantine: bool, now: float) -> str | None:
    """A corrupt file is moved aside (returns where to) or, for a tool, refused."""
    problem = integrity_problem(path)
    if problem is None:
        return None
    if not may_quarantine:
        raise QueueCorrupt(f"{path}: {problem} (the agent quarantines it at start-up)")
    moved_to = quarantine(path, now)
    log.error("buffer_corrupt_quarantined", path=path, moved_to=moved_to, problem=problem)
    return moved_to


def quarantine(path: str, now: float) -> str:
    """Move a corrupt buffer (and its WAL and shared memory) aside; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
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


Identity = tuple[tuple[int, int] | None, tuple[int, int] | None]


def file_identity(path: str) -> Identity:
    """(device, inode) of the buffer file and of its WAL, as they are on disk now."""

    def ident(p: str) -> tuple[int, int] | None:
        try:
            st = os.stat(p)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    return ident(path), ident(path + "-wal")


def tampering(opened: Identity, now: Identity) -> str | None:
    """What happened to the files since they were opened, if anything."""
    if now == opened:
        return None
    what = "buffer file" if now[0] != opened[0] else "write-ahead log"
    return f"the {what} was {'deleted' if None in now else 'replaced'} while running"


def restore(db: sqlite3.Connection, path: str, *, before_replace: Callable[[], None]) -> None:
    """Copy the open database (everything committed, read through its open file) back to
    ``path``; ``before_replace`` closes the old connection first."""
    target_path = f"{path}.restore-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target_path)
    target = sqlite3.connect(target_path)
    try:
        db.backup(target)
    finally:
        target.close()
    before_replace()
    os.replace(target_path, path)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


def explain_failure(path: str, exc: sqlite3.Error) -> str:
    """What failed, with the file's own reason when SQLite says only "disk I/O error"."""
    reason = str(exc)
    if "I/O error" in reason:
        for p in (path, path + "-wal"):
            try:
                os.close(os.open(p, os.O_WRONLY))
            except FileNotFoundError:
                continue
            except OSError as err:
                return f"{reason} ({os.path.basename(p)}: {err.strerror})"
    return reason
