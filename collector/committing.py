"""Committing what a source read, whatever it takes: the durable boundary never loses a read.

Under policy ``block`` a full buffer makes the source wait here (it does not read on); a write
that fails (disk full, I/O error) is retried with the same lines, which stay in memory until
they are committed. Either wait is said once in the log, and once more when it ends.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from ila_core.clock import Clock
from ila_core.errors import BufferFull, BufferWriteError
from queue_store.store import QueueStore

log = structlog.get_logger("collector")

RETRY_WRITE_S = 1.0
ROOM_WAIT_S = 1.0


class Committer:
    """Runs a source's commits; ``commit`` returns False only when stopped before it could."""

    def __init__(self, store: QueueStore, clock: Clock, source: str) -> None:
        self.store = store
        self.clock = clock
        self.source = source
        self.waiting: str | None = None  # why the last commit had to wait (for status)

    def commit(self, write: Callable[[], None]) -> bool:
        while True:
            try:
                write()
            except BufferFull as exc:
                self._wait("buffer_full_blocking", str(exc))
                if self.clock.stopped:
                    return False
                self.store.wait_for_room(ROOM_WAIT_S)
                continue
            except BufferWriteError as exc:
                # These lines are read but not committed: keep them and try again rather
                # than read on (or die and lose them).
                self._wait("buffer_write_failed", str(exc))
                if self.clock.wait(RETRY_WRITE_S):
                    return False
                continue
            if self.waiting is not None:
                log.info("buffer_room_again", source=self.source)
                self.waiting = None
            return True

    def _wait(self, event: str, reason: str) -> None:
        if self.waiting != event:
            level = log.warning if event == "buffer_full_blocking" else log.error
            level(event, source=self.source, reason=reason, note="lines kept, retrying")
            self.waiting = event
