"""Committing what a source read, whatever it takes: the durable boundary never loses a read.

Under policy ``block`` a full buffer makes the source wait here (it does not read on); a write
that fails (disk full, I/O error) is retried with the same lines, which stay in memory until
they are committed. Either wait is said once in the log, and once more when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import structlog

from collector.processing import Processing
from ila_core.clock import Clock
from ila_core.counters import Counts
from ila_core.errors import BufferFull, BufferWriteError
from ila_core.health import HealthBoard, describe_write_failure
from queue_store.store import QueueStore

log = structlog.get_logger("collector")

RETRY_WRITE_S = 1.0
ROOM_WAIT_S = 1.0


class Committer:
    """Runs a source's commits; ``commit`` returns False only when stopped before it could."""

    def __init__(
        self,
        store: QueueStore,
        clock: Clock,
        source: str,
        health: HealthBoard | None = None,
        processing: Processing | None = None,
        counts: Counts | None = None,
    ) -> None:
        self.store = store
        self.processing = processing or Processing()
        self.counts = counts or Counts()
        self.clock = clock
        self.source = source
        self.health = health or HealthBoard()
        self.waiting: str | None = None  # the event of the wait in progress, if any

    def commit_records(
        self, entries: list[dict[str, Any]], *, key: str, cursor: str, per_item: int
    ) -> bool:
        """Records (journald, event log, syslog) and their cursor, after the source's
        include/exclude and the redaction; False only when stopped before it could."""
        kept, filtered = self.processing.records(entries)
        done = self.commit(
            partial(self.store.commit_records, kept, key=key, source=self.source,
                    cursor=cursor, per_item=per_item, filtered=filtered)
        )  # fmt: skip
        if done and kept:
            self.counts.add("committed", len(kept), self.source)
        return done

    def commit(self, write: Callable[[], None]) -> bool:
        while True:
            try:
                write()
            except BufferFull as exc:
                self._wait("buffer_full_blocking", str(exc), f"buffer full (policy block): {exc}")
                if self.clock.stopped:
                    return False
                self.store.wait_for_room(ROOM_WAIT_S)
                continue
            except BufferWriteError as exc:
                # These lines are read but not committed: keep them and try again rather
                # than read on (or die and lose them).
                self._wait("buffer_write_failed", str(exc), describe_write_failure(str(exc)))
                if self.clock.wait(RETRY_WRITE_S):
                    return False
                continue
            if self.waiting is not None:
                log.info("buffer_room_again", source=self.source)
                self.waiting = None
                self.health.set(self._part, None)
            return True

    @property
    def _part(self) -> str:
        return f"buffer:{self.source}"

    def _wait(self, event: str, reason: str, problem: str) -> None:
        self.health.set(self._part, problem)
        if self.waiting != event:
            level = log.warning if event == "buffer_full_blocking" else log.error
            level(event, source=self.source, reason=reason, note="lines kept, retrying")
            self.waiting = event
