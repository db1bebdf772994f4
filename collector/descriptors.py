"""File descriptors are a budget, not one per file.

The agent raises its soft ``RLIMIT_NOFILE`` to the hard limit at start-up and keeps the files
it holds open under a cap that leaves room for its sockets, its buffer and its log. Beyond the
cap, quiet files are closed (least recently read first) and reopened by path when they change;
a file read to the end of its turn goes to the back of the line, so no file starves.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE; the C runtime's limit is large
    resource = None  # type: ignore[assignment]

RESERVE = 96  # descriptors kept for the buffer (db, WAL, shm, locks), sockets, logs, pipes
MIN_CAP = 16
DEFAULT_CAP_WITHOUT_LIMIT = 4096
EXHAUSTED = (errno.EMFILE, errno.ENFILE)

T = TypeVar("T")


def raise_fd_limit() -> tuple[int, int] | None:
    """Soft limit up to the hard one; (soft, hard) as they are then, None if unknown."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def file_cap(configured: int | None = None, reserve: int = RESERVE) -> int:
    """How many log files may be open at once: the configured cap, or what the descriptor
    limit leaves after the reserve."""
    if configured is not None:
        return max(1, configured)
    if resource is None:
        return DEFAULT_CAP_WITHOUT_LIMIT
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_CAP_WITHOUT_LIMIT
    return max(MIN_CAP, soft - reserve)


class OpenFiles(Generic[T]):
    """The files held open, least recently read first; ``admit`` makes room under the cap by
    closing the oldest that ``closable`` allows."""

    def __init__(self, cap: int, close: Callable[[T], None], closable: Callable[[T], bool]):
        self.cap = cap
        self._close = close
        self._closable = closable
        self._lru: OrderedDict[int, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._lru.values()))

    def opened(self, item: T) -> None:
        self._lru[id(item)] = item

    def used(self, item: T) -> None:
        """Read just now: the last to be closed."""
        if id(item) in self._lru:
            self._lru.move_to_end(id(item))

    def closed(self, item: T) -> None:
        self._lru.pop(id(item), None)

    def admit(self, keep: T | None = None) -> bool:
        """Room for one more open file (closing others if needed); False when every open
        file must stay open (rotated files not yet finished)."""
        while len(self._lru) >= self.cap:
            victim = next(
                (f for f in self._lru.values() if f is not keep and self._closable(f)), None
            )
            if victim is None:
                return False
            self._close(victim)
            self._lru.pop(id(victim), None)
        return True

    def shrink(self, to: int) -> None:
        """The system refused a descriptor (EMFILE/ENFILE): a lower cap, and room now."""
        self.cap = max(1, to)
        self.admit()
