"""The collector loop: find files, read what changed, commit every line before anything else.

Work follows change, not the number of files: a step looks at the paths inotify named, a slice
of the stat pass (every file within ``STAT_PERIOD``, or ``STAT_RATE`` files a second when there
are many), the files still busy from the last step, rotated files being finished and partial
lines coming due. What those files gave is committed in one transaction. Descriptors are a
budget (collector/descriptors.py).
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Sequence
from functools import partial

import structlog

from collector.committing import Committer
from collector.descriptors import EXHAUSTED, OpenFiles, file_cap
from collector.discovery import FileSource
from collector.files import FileTable
from collector.processing import Redactor
from collector.tailer import Read, Tailer
from collector.watcher import Watcher
from ila_core.clock import Clock
from ila_core.counters import Counts
from ila_core.health import HealthBoard
from queue_store.store import QueueStore

log = structlog.get_logger("collector")

DRAIN_GRACE = 30.0  # seconds a rotated-away file must stay quiet before it is let go
TURN_BYTES = 1 << 20  # bytes read from one file per step: one busy file can't starve others
STEP_BYTES = 16 << 20  # bytes read in one step over all files (then committed)
STAT_PERIOD = 30.0  # with inotify: every file is still stat()ed this often (missed events)
STAT_RATE = 200.0  # ... but at most this many files a second (10,000 files: every 50 s)
RESCAN_PERIOD = 30.0  # with inotify: globs matched again this often (new files come by event)
CLOSE_INACTIVE = 60.0  # seconds without new data before a file's descriptor is let go
COALESCE_S = 0.05  # after a step, events are gathered this long: one step for a burst


class _Stopping(Exception):
    """Raised inside the loop when a blocked commit is interrupted by shutdown."""


class Collector:
    """Tails the configured files into the store. Runs in its own thread."""

    def __init__(
        self,
        store: QueueStore,
        sources: Sequence[FileSource],
        *,
        batch_size: int,
        max_line_bytes: int,
        partial_line_timeout: float,
        start_position: str,
        poll_interval: float,
        clock: Clock,
        first_start: bool,
        use_inotify: bool = True,
        rotate_grace: float = DRAIN_GRACE,
        health: HealthBoard | None = None,
        max_open_files: int | None = None,
        close_inactive: float = CLOSE_INACTIVE,
        redactor: Redactor | None = None,
        counts: Counts | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.partial_line_timeout = partial_line_timeout
        self.poll_interval = poll_interval
        self.close_inactive = close_inactive
        # Long enough for discovery to see a rotated name the globs still match.
        self.rotate_grace = max(rotate_grace, 2 * poll_interval)
        self.wake = threading.Event()
        self.watcher = Watcher(self.wake) if use_inotify else None
        self.open = OpenFiles[Tailer](
            file_cap(max_open_files), close=Tailer.close, closable=self._closable
        )
        self.files = FileTable(
            store, sources, open_files=self.open, clock=clock, batch_size=batch_size,
            max_line_bytes=max_line_bytes, start_position=start_position,
            first_start=first_start, redactor=redactor,
        )  # fmt: skip
        self.counts = counts or Counts()
        self.committer = Committer(store, clock, "files", health, counts=self.counts)
        self._ring: deque[str] = deque()  # the stat pass, round-robin
        self._busy: set[str] = set()  # had more than a turn's worth: looked at again next step
        self._partial: set[str] = set()  # hold a partial line: looked at until it is emitted
        self._next_rescan = 0.0
        self._last_step = clock.monotonic()
        self._fd_exhausted = False
        self._next_let_go = 0.0
        self._reconfig: tuple[tuple[FileSource, ...], Redactor] | None = None

    @property
    def active(self) -> dict[str, Tailer]:
        return self.files.active

    @property
    def draining(self) -> list[Tailer]:
        return self.files.draining

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        """Until the clock's stop event: read, commit, wait for inotify or the next look."""
        try:
            self.start_up()
            while not self.clock.stopped:
                if not self.step():
                    self.wake.wait(self._idle_timeout())
                    self.wake.clear()
                    self.clock.wait(COALESCE_S)
        except _Stopping:
            pass
        finally:
            self.close()

    def stop(self) -> None:
        self.wake.set()

    def start_up(self) -> None:
        """Open every configured file at its saved or initial position; adopt rotated ones."""
        self._rescan(self.clock.monotonic(), at_startup=True)
        self.files.adopt_orphans()
        self._busy.update(self.files.active)  # everything is read once at start-up

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.files.close_all()

    def reconfigure(self, sources: Sequence[FileSource], redactor: Redactor) -> None:
        """A reload: from the next step on, these sources and this redaction (applied in the
        collector's own thread: nothing here is shared with a step in progress)."""
        self._reconfig = (tuple(sources), redactor)
        self.wake.set()

    def lags(self) -> dict[str, int]:
        """Bytes not read yet, by source (for the metrics)."""
        lag: dict[str, int] = {}
        for t in list(self.active.values()):
            try:
                size = os.stat(t.path).st_size
            except OSError:
                continue
            lag[t.source] = lag.get(t.source, 0) + max(0, size - t.committed)
        return lag

    def file_counts(self) -> dict[str, int]:
        """Tracked files, descriptors open, files waiting for a descriptor, rotated ones."""
        waiting = sum(1 for p in self._busy if p in self.active and not self.active[p].is_open)
        return {
            "tracked": len(self.active) + len(self.draining),
            "open": len(self.open),
            "waiting": waiting,
            "draining": len(self.draining),
            "cap": self.open.cap,
        }

    # -- one pass -------------------------------------------------------------------------

    def step(self) -> bool:
        """Look at what may have changed, read it, commit it; True when more is waiting."""
        now = self.clock.monotonic()
        changed, folder_changed = self.watcher.take() if self.watcher else (set(), False)
        if self._reconfig is not None:
            sources, redactor = self._reconfig
            self._reconfig = None
            new = self.files.reconfigure(sources, redactor)
            self._busy.update(self.active)
            self.files.discover(at_startup=False, first_seen=new)
            folder_changed = False
        if now >= self._next_rescan or folder_changed:
            self._rescan(now, at_startup=False)
        else:
            for path in changed:
                if path not in self.active:
                    self.files.found(path)  # a new file by event: no rescan of the folder
        todo = self._todo(now, changed)
        self._last_step = now
        reads: list[tuple[Tailer, Read]] = []
        budget = STEP_BYTES
        for t in todo:
            if budget <= 0:
                self._busy.add(t.path)
                continue
            got = self._look(t, now, min(TURN_BYTES, budget))
            if got is not None:
                reads.append((t, got))
                budget -= got.n_bytes
        self._commit(reads)
        self._let_go(now)
        return bool(self._busy)

    def _todo(self, now: float, changed: set[str]) -> list[Tailer]:
        """The files to look at now, each once: named by an event, busy from the last step,
        due in the stat pass, or holding a partial line; then the rotated ones."""
        paths = dict.fromkeys(p for p in changed if p in self.active)
        paths.update(dict.fromkeys(self._busy))
        self._busy = set()
        paths.update(dict.fromkeys(self._stat_slice(now)))
        paths.update(dict.fromkeys(self._partial))
        todo = [self.active[p] for p in paths if p in self.active]
        return todo + list(self.draining)

    def _stat_slice(self, now: float) -> list[str]:
        """The next files of the round-robin stat pass, so each is looked at every period."""
        if not self._ring:
            self._ring.extend(self.active)
        inotify = self.watcher is not None and self.watcher.complete
        # The safety net has a CPU budget: with inotify it only catches missed events, and
        # a stat costs ~8 µs of Python, so 10,000 files every 30 s would be ~0.3 % of a core.
        period = max(STAT_PERIOD, self.poll_interval, len(self.active) / STAT_RATE)
        if not inotify or period <= 0:
            n = len(self._ring)  # no events to rely on: every file at every step
        else:
            n = math.ceil(len(self.active) * max(0.0, now - self._last_step) / period)
        return [self._ring.popleft() for _ in range(min(n, len(self._ring)))]

    def _look(self, t: Tailer, now: float, turn: int) -> Read | None:
        """Rotation, truncation, new data or a partial line that came due: what to commit."""
        if t in self.draining:
            read = self._read(t, now, turn)
            if (
                read is None
                and now - t.last_data_at >= self.rotate_grace
                and (now - (t.draining_since or now) >= self.rotate_grace)
            ):
                self._release(t)
            return read
        there, st = self.files.still_there(t, now)
        if not there:
            return None  # rotated or deleted: now draining, or gone (see files.py)
        if st is not None:
            if t.unchanged(st):
                return None  # the stat pass's usual answer: one stat, nothing else
            t.looked(st)
        if not t.is_open and not self._reopen(t):
            return None
        self.files.check_truncated(t, self._commit_one)
        read = self._read(t, now, turn)
        if read is not None:
            return read
        if t.due(now, self.partial_line_timeout):
            read = t.flush_due(now, self.clock.wall(), self.partial_line_timeout)
            if not t.holding:
                self._partial.discard(t.path)
            return read
        return None

    def _read(self, t: Tailer, now: float, turn: int) -> Read | None:
        try:
            read = t.read(self.clock.wall(), now, turn)
        except OSError as exc:
            self.files.report(t.path, f"read failed: {exc.strerror}")
            return None
        self.open.used(t)
        if t.holding:
            self._partial.add(t.path)
        else:
            self._partial.discard(t.path)
        if read.n_bytes == 0:
            return None
        if read.n_bytes >= turn:
            self._busy.add(t.path)  # more to read: its next turn comes next step
        return read

    def _reopen(self, t: Tailer) -> bool:
        """A descriptor for a closed file that changed, within the budget."""
        if not self.open.admit(keep=t):
            self._busy.add(t.path)  # every descriptor is finishing a rotated file: wait
            return False
        try:
            fd = os.open(t.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                self._exhausted(t)
                return False
            return False  # gone meanwhile: the next look sees it
        if not t.reopen(fd):
            self.files.rotated_while_closed(t)
            return False
        self.open.opened(t)
        return True

    def _exhausted(self, t: Tailer) -> None:
        """The system refused a descriptor: fewer files open, never a blind agent."""
        if not self._fd_exhausted:
            log.error("too_many_open_files", open=len(self.open), note="closing quiet files")
            self._fd_exhausted = True
        self.open.shrink(len(self.open) - 8)
        self._busy.add(t.path)

    # -- committing -----------------------------------------------------------------------

    def _commit(self, reads: list[tuple[Tailer, Read]]) -> None:
        """Everything the step read, in one transaction; under policy ``block`` when it does
        not fit, file by file and chunk by chunk, as acks make room."""
        if not reads:
            return
        total = sum(r.line_bytes for _, r in reads)
        if len(reads) > 1 and self.store.fits(total):
            batch = [(r.chunks, r.checkpoint) for _, r in reads]
            filtered = sum(r.filtered for _, r in reads)
            if not self.committer.commit(partial(self.store.commit_many, batch, filtered=filtered)):
                raise _Stopping
            for t, r in reads:
                t.mark_committed(r)
                self._count(r)
            return
        for t, r in reads:
            self._commit_one(t, r)

    def _commit_one(self, t: Tailer, read: Read) -> None:
        parts = [read] if self.store.fits(read.line_bytes) else read.split()
        for part in parts:
            write = partial(self.store.commit, part.chunks, part.checkpoint, filtered=part.filtered)
            if not self.committer.commit(write):
                raise _Stopping
            t.mark_committed(part)
            self._count(part)

    def _count(self, read: Read) -> None:
        for chunk in read.chunks:
            self.counts.add("committed", len(chunk.lines), chunk.source)

    # -- letting go -----------------------------------------------------------------------

    def _closable(self, t: Tailer) -> bool:
        """A rotated file is never closed before it is finished; others may be (they are
        found again by path)."""
        return t not in self.draining and not t.holding

    def _let_go(self, now: float) -> None:
        """Quiet files give their descriptor back (looked for a tenth of ``close_inactive``
        apart: a pass walks every open file)."""
        if now < self._next_let_go:
            return
        self._next_let_go = now + self.close_inactive / 10
        for t in self.open:
            if now - t.last_data_at >= self.close_inactive and self._closable(t):
                t.close()
                self.open.closed(t)

    def _release(self, t: Tailer) -> None:
        self._commit_one(t, t.flush(self.clock.wall()))
        self.files.release(t)

    def _rescan(self, now: float, *, at_startup: bool) -> None:
        if self.watcher is not None:
            self.watcher.refresh(self.files.watch_dirs())
        self.files.discover(at_startup=at_startup)
        for source in self.files.take_new_sources():  # each has its count, 0 at first
            self.counts.add("committed", 0, source)
        inotify = self.watcher is not None and self.watcher.complete
        self._next_rescan = now + (max(RESCAN_PERIOD, self.poll_interval) if inotify
                                   else self.poll_interval)  # fmt: skip

    def _idle_timeout(self) -> float:
        now = self.clock.monotonic()
        timeout = min(self.poll_interval, 1.0, max(0.0, self._next_rescan - now))
        for path in self._partial:
            t = self.active.get(path)
            if t is not None and t.holding:
                wait = t.assembler.spec.max_wait if t.assembler and t.assembler.holding else 1e9
                if t.splitter.pending_bytes:
                    wait = min(wait, self.partial_line_timeout)
                timeout = min(timeout, t.last_data_at + wait - now)
        if self.draining:
            timeout = min(timeout, self.rotate_grace)
        return max(0.01, timeout)
