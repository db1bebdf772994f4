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
from pathlib import Path

from ila_core.errors import BufferLocked


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
