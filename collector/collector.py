"""The collector loop: discover files, read them, commit every line before anything else."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Sequence
from fnmatch import fnmatch

import structlog

from collector.committing import Committer
from collector.discovery import FileSource, discover, has_magic, watch_dirs
from collector.identity import identify, matches
from collector.tailer import Read, Tailer
from collector.watcher import Watcher
from ila_core.clock import Clock
from queue_store.records import Checkpoint
from queue_store.store import QueueStore

log = structlog.get_logger("collector")

DRAIN_GRACE = 30.0  # seconds a rotated-away file must stay quiet before it is let go
STEP_BYTES = 8 << 20  # bytes read from one file per step, so one busy file can't starve others


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
    ) -> None:
        self.store = store
        self.sources = tuple(sources)
        self.batch_size = batch_size
        self.max_line_bytes = max_line_bytes
        self.partial_line_timeout = partial_line_timeout
        self.start_position = start_position
        self.poll_interval = poll_interval
        self.clock = clock
        self.first_start = first_start
        # Long enough for discovery to see a rotated name the globs still match.
        self.rotate_grace = max(rotate_grace, 2 * poll_interval)
        self.active: dict[str, Tailer] = {}
        self.draining: list[Tailer] = []
        self.wake = threading.Event()
        self.watcher = Watcher(self.wake) if use_inotify else None
        self._problems: dict[str, str] = {}  # path → problem already reported
        self._next_discovery = 0.0
        self.committer = Committer(store, clock, "files")

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        """Until the clock's stop event: read, commit, wait for inotify or the poll timer."""
        try:
            self.start_up()
            while not self.clock.stopped:
                if not self.step():
                    self.wake.wait(self._idle_timeout())
                    self.wake.clear()
        except _Stopping:
            pass
        finally:
            self.close()

    def stop(self) -> None:
        self.wake.set()

    def start_up(self) -> None:
        """Open every configured file at its saved or initial position; adopt rotated ones."""
        self._discover(self.clock.monotonic(), at_startup=True)
        held = {(os.fstat(t.fd).st_dev, os.fstat(t.fd).st_ino): t.key for t in self.active.values()}
        for cp in self.store.checkpoints():
            inode = (cp.file_id.dev, cp.file_id.ino)
            if inode not in held:
                self._adopt_orphan(cp)
            elif held[inode] != cp.key:
                # An older content generation of a file we read now (rewritten while we
                # were stopped): nothing of it can be read any more.
                self.store.forget_checkpoint(cp.key)
        self.first_start = False

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for t in [*self.active.values(), *self.draining]:
            t.close()
        self.active.clear()
        self.draining.clear()

    # -- one pass -------------------------------------------------------------------------

    def step(self) -> bool:
        """One pass over every file; True when any bytes were read."""
        now = self.clock.monotonic()
        if now >= self._next_discovery:
            self._discover(now, at_startup=False)
            self._next_discovery = now + self.poll_interval
        busy = False
        for t in list(self.active.values()):
            # Before reading: a file truncated and refilled past our offset must not be read
            # from the old offset as if nothing happened.
            self._check_truncated(t)
            if self._pump(t):
                busy = True
            else:
                self._check_file(t, now)
                self._check_partial(t, now)
        for t in list(self.draining):
            if self._pump(t):
                busy = True
            elif (
                now - t.last_data_at >= self.rotate_grace
                and now - (t.draining_since or now) >= self.rotate_grace
            ):
                self._release(t)
        return busy

    def _idle_timeout(self) -> float:
        timeout = self.poll_interval
        now = self.clock.monotonic()
        for t in self.active.values():
            if t.splitter.pending_bytes:
                timeout = min(timeout, t.last_data_at + self.partial_line_timeout - now)
        if self.draining:
            timeout = min(timeout, self.rotate_grace)
        return max(0.01, timeout)

    def _pump(self, t: Tailer) -> bool:
        """Read and commit until end of file (or STEP_BYTES); True when bytes were read."""
        total = 0
        wall = self.clock.wall()
        while total < STEP_BYTES:
            try:
                read = t.read(wall, self.clock.monotonic())
            except OSError as exc:
                self._report(t.path, f"read failed: {exc.strerror}")
                return False
            if read.n_bytes == 0:
                break
            self._commit(t, read)
            total += read.n_bytes
        return total > 0

    def _commit(self, t: Tailer, read: Read) -> None:
        """The durable boundary; waits here (not reading on) while the buffer cannot take it."""
        if not self.committer.commit(lambda: self.store.commit(read.chunks, read.checkpoint)):
            raise _Stopping
        t.mark_committed(read)

    # -- rotation, truncation, timeouts ---------------------------------------------------

    def _check_file(self, t: Tailer, now: float) -> None:
        """At end of file: has the path been rotated, deleted or truncated?"""
        try:
            st = os.stat(t.path)
        except FileNotFoundError:
            self._retire(t, now, "deleted_or_renamed")
            return
        except OSError:
            return
        fst = os.fstat(t.fd)
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            self._retire(t, now, "rotated")
            self._open(t.path, t.source, at_startup=False)
            return
        self._check_truncated(t)

    def _check_truncated(self, t: Tailer) -> None:
        """Copytruncate: read the file again from 0, as a new content generation."""
        try:
            truncated = t.was_truncated()
        except OSError:
            return
        if truncated:
            old_key = t.key
            self._commit(t, t.flush(self.clock.wall()))
            t.restart_generation()
            if old_key is not None:
                self.store.forget_checkpoint(old_key)
            log.info("file_truncated", path=t.path, generation=t.generation)

    def _check_partial(self, t: Tailer, now: float) -> None:
        if t.splitter.pending_bytes and now - t.last_data_at >= self.partial_line_timeout:
            self._commit(t, t.flush(self.clock.wall()))

    def _retire(self, t: Tailer, now: float, why: str) -> None:
        """The path no longer names this file: read it to its end, then let it go."""
        self.active.pop(t.path, None)
        t.draining_since = now
        self.draining.append(t)
        log.info("file_rotated", path=t.path, reason=why)

    def _release(self, t: Tailer) -> None:
        self._commit(t, t.flush(self.clock.wall()))
        if t.key is not None:
            self.store.forget_checkpoint(t.key)
        t.close()
        self.draining.remove(t)
        log.info("file_released", path=t.path, position=t.committed)

    # -- finding and opening files --------------------------------------------------------

    def _discover(self, now: float, *, at_startup: bool) -> None:
        if self.watcher is not None:
            self.watcher.refresh(watch_dirs(self.sources))
        found = discover(self.sources)
        for src in self.sources:
            if src.pattern in found:
                continue
            if has_magic(src.pattern):
                if not any(name == (src.name or path) and fnmatch(path, src.pattern)
                           for path, name in found.items()):  # fmt: skip
                    self._report(src.pattern, "no file matches yet: waiting", level="info")
            elif os.path.exists(src.pattern):
                self._report(src.pattern, "not a regular file (a directory?): not read")
            else:
                self._report(src.pattern, "missing: waiting for it to appear", level="info")
        for path, name in found.items():
            if path not in self.active:
                self._open(path, name, at_startup=at_startup)

    def _open(self, path: str, source: str, *, at_startup: bool) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return  # gone between discovery and open: the next pass sees it
        except OSError as exc:
            self._report(path, f"unreadable: {exc.strerror}")
            return
        st = os.fstat(fd)
        for t in self.active.values():
            tst = os.fstat(t.fd)
            if (tst.st_dev, tst.st_ino) == (st.st_dev, st.st_ino):
                # Already read under another name (renamed, or a hard link): never twice.
                os.close(fd)
                return
        for t in self.draining:
            tst = os.fstat(t.fd)
            if (tst.st_dev, tst.st_ino) == (st.st_dev, st.st_ino):
                # A rotated file that the globs still match: keep reading it where it is.
                os.close(fd)
                self.draining.remove(t)
                t.path, t.draining_since = path, None
                self.active[path] = t
                return
        self._problems.pop(path, None)
        offset, generation, file_id = 0, 0, None
        epoch = secrets.token_hex(4)  # a file never seen before: fresh uids, even on a reused inode
        saved = self._saved_position(path, fd)
        if saved is not None:
            offset, generation, file_id = saved.offset, saved.generation, saved.file_id
            epoch = saved.epoch
            if st.st_size < offset:  # truncated while we were away
                self.store.forget_checkpoint(saved.key)
                offset, generation, file_id = 0, generation + 1, None
        elif at_startup and self.first_start and self.start_position == "end" and st.st_size:
            offset, file_id = st.st_size, identify(fd)
        t = Tailer(
            path,
            source,
            fd,
            offset=offset,
            file_id=file_id,
            generation=generation,
            epoch=epoch,
            max_line_bytes=self.max_line_bytes,
            batch_size=self.batch_size,
            now=self.clock.monotonic(),
        )
        if file_id is not None and saved is None:
            self.store.save_checkpoint(Checkpoint(file_id, generation, offset, path, source, epoch))
        self.active[path] = t
        log.info("file_opened", path=path, source=source, position=offset)

    def _saved_position(self, path: str, fd: int) -> Checkpoint | None:
        """The saved checkpoint of this very file (same inode and first line), if any."""
        st = os.fstat(fd)
        for cp in self.store.checkpoints():
            if (cp.file_id.dev, cp.file_id.ino) == (st.st_dev, st.st_ino) and matches(
                fd, cp.file_id
            ):
                return cp
        return None

    def _adopt_orphan(self, cp: Checkpoint) -> None:
        """A saved file no path names any more (rotated while we were down): finish it."""
        folder = os.path.dirname(cp.path) or "."
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        for name in names:
            candidate = os.path.join(folder, name)
            try:
                st = os.stat(candidate)
                if (st.st_dev, st.st_ino) != (cp.file_id.dev, cp.file_id.ino):
                    continue
                fd = os.open(candidate, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue
            if not matches(fd, cp.file_id) or os.fstat(fd).st_size < cp.offset:
                os.close(fd)
                continue
            t = Tailer(
                candidate,
                cp.source,
                fd,
                offset=cp.offset,
                file_id=cp.file_id,
                generation=cp.generation,
                epoch=cp.epoch,
                max_line_bytes=self.max_line_bytes,
                batch_size=self.batch_size,
                now=self.clock.monotonic(),
            )
            t.draining_since = self.clock.monotonic()
            self.draining.append(t)
            log.info("file_resumed_rotated", path=candidate, was=cp.path, position=cp.offset)
            return
        self.store.forget_checkpoint(cp.key)
        log.warning("file_lost_while_stopped", path=cp.path, position=cp.offset)

    def _report(self, path: str, problem: str, level: str = "error") -> None:
        """Say each problem with a path once; the others go on."""
        if self._problems.get(path) == problem:
            return
        self._problems[path] = problem
        getattr(log, level)("source_problem", path=path, problem=problem)
