"""The last send error, shared by the batch and heartbeat threads and kept in the buffer."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ila_core.clock import rfc3339_ms


class SendHealth:
    """Records the current error (for status and heartbeat) only when it changes."""

    def __init__(self, save: Callable[[str | None], None], wall: Callable[[], float]) -> None:
        self._save = save
        self._wall = wall
        self._lock = threading.Lock()
        self.error: str | None = None
        self._stale = True  # an error saved by an earlier run is cleared by our first success

    def failed(self, reason: str) -> bool:
        """Record ``reason``; True when it is new (worth a log line)."""
        with self._lock:
            if reason == self.error:
                return False
            self.error = reason
            self._stale = False
        self._save(f"{rfc3339_ms(self._wall())} {reason}")
        return True

    def ok(self) -> str | None:
        """Clear the error; returns the one that ended, if any."""
        with self._lock:
            ended, self.error = self.error, None
            stale, self._stale = self._stale, False
        if ended is not None or stale:
            self._save(None)
        return ended
