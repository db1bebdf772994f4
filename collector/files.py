"""The files being read: found by path or glob, told apart by identity, followed through
rotation and truncation, opened and closed within the descriptor budget.

A file a path no longer names (renamed or deleted) is read to its end before it is let go; if
that happened while the file was closed for inactivity, it is found again by its inode in its
folder. Saved positions are looked up by inode (a dict), not by scanning every checkpoint.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence

import structlog

from collector.descriptors import EXHAUSTED, OpenFiles
from collector.discovery import FileSource, Globber, discover, has_magic, matching, watch_dirs
from collector.identity import identify, matches
from collector.processing import Filters, Processing, Redactor
from collector.tailer import Read, Tailer
from ila_core.clock import Clock
from queue_store.records import Checkpoint, FileId
from queue_store.store import QueueStore

log = structlog.get_logger("collector")

O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
Inode = tuple[int, int]


class FileTable:
    """Active files by path, rotated files being finished, and the saved positions."""

    def __init__(
        self,
        store: QueueStore,
        sources: Sequence[FileSource],
        *,
        open_files: OpenFiles[Tailer],
        clock: Clock,
        batch_size: int,
        max_line_bytes: int,
        start_position: str,
        first_start: bool,
        redactor: Redactor | None = None,
    ) -> None:
        self.store = store
        self.redactor = redactor or Redactor()
        self.sources = tuple(sources)
        self.open = open_files
        self.clock = clock
        self.batch_size = batch_size
        self.max_line_bytes = max_line_bytes
        self.start_position = start_position
        self.first_start = first_start
        self.active: dict[str, Tailer] = {}
        self.draining: list[Tailer] = []
        self.by_inode: dict[Inode, Tailer] = {}
        self._saved: dict[Inode, list[Checkpoint]] = {}
        for cp in store.checkpoints():
            self._saved.setdefault((cp.file_id.dev, cp.file_id.ino), []).append(cp)
        self._problems: dict[str, str] = {}  # path → problem already reported
        self.globber = Globber()
        self._all_read = False  # the last discovery opened every file it found
        self._new_sources: set[str] = set()  # sources of files opened since the last take

    # -- finding --------------------------------------------------------------------------

    def watch_dirs(self) -> set[str]:
        return watch_dirs(self.sources)

    def reconfigure(self, sources: Sequence[FileSource], redactor: Redactor) -> set[FileSource]:
        """New sources and redaction (a reload). Files no source names any more, or whose
        source changed, are let go with their position kept (read again from there when a
        source names them again); returns the sources seen for the first time."""
        new = set(sources) - set(self.sources)
        self.sources, self.redactor = tuple(sources), redactor
        for t in list(self.active.values()):
            if matching(self.sources, t.path) != t.spec:
                self._set_aside(t)
        for t in self.active.values():
            t.processing = Processing(t.spec.filters if t.spec else Filters(), redactor)
        return new

    def _set_aside(self, t: Tailer) -> None:
        """Stop reading ``t`` but keep where it stands, for when a source names it again."""
        self.active.pop(t.path, None)
        self._all_read = False
        if t.file_id is not None:
            cp = Checkpoint(t.file_id, t.generation, t.committed, t.path, t.source, t.epoch)
            self._saved.setdefault(t.inode, []).append(cp)
        self._forget(t)
        log.info("file_set_aside", path=t.path, position=t.committed)

    def discover(self, *, at_startup: bool, first_seen: set[FileSource] | None = None) -> None:
        """Match every path and glob again; open the files not read yet. Files of a source
        seen for the first time (``first_seen``, a reload) follow start_position."""
        if not at_startup and first_seen is None and self._settled():
            return  # every folder as it was, every file found is being read: nothing new
        found, all_files = discover(self.sources, known=self.active, globber=self.globber)
        with_files = {id(src) for src in found.values()}
        for src in self.sources:
            if src.pattern in found:
                continue
            if has_magic(src.pattern):
                if id(src) not in with_files:
                    self.report(src.pattern, "no file matches yet: waiting", level="info")
            elif os.path.exists(src.pattern):
                self.report(src.pattern, "not a regular file (a directory?): not read")
            else:
                self.report(src.pattern, "missing: waiting for it to appear", level="info")
        for path, src in found.items():
            if path not in self.active:
                first = at_startup or (first_seen is not None and src in first_seen)
                self.open_path(path, src, at_startup=first, first_seen=first_seen is not None)
        self._all_read = all_files and all(path in self.active for path in found)

    def _settled(self) -> bool:
        """The last discovery opened every file it found, and it would find the same now:
        each source a file being read, or a glob whose folder has not moved."""
        return self._all_read and all(
            src.pattern in self.active
            if not has_magic(src.pattern)
            else self.globber.unchanged(src.pattern)
            for src in self.sources
        )

    def found(self, path: str) -> None:
        """A path an event named: read it if a configured path or glob matches it."""
        src = matching(self.sources, path)
        if src is not None and os.path.isfile(path):
            self.open_path(path, src, at_startup=False)

    def open_path(
        self, path: str, src: FileSource | None, *, at_startup: bool, first_seen: bool = False
    ) -> Tailer | None:
        """Start reading ``path`` at its saved position, its beginning, or (first start, or
        a source a reload adds: ``first_seen``; start_position "end") its end."""
        if not self.open.admit():
            return None  # every descriptor is finishing a rotated file: the next pass
        try:
            fd = os.open(path, O_READ)
        except FileNotFoundError:
            return None  # gone between discovery and open: the next pass sees it
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                self.open.shrink(len(self.open) - 8)
            self.report(path, f"unreadable: {exc.strerror}")
            return None
        st = os.fstat(fd)
        inode = (st.st_dev, st.st_ino)
        known = self.by_inode.get(inode)
        if known is not None:
            os.close(fd)
            if known in self.draining:
                # A rotated file that the globs still match: keep reading it where it is.
                self.draining.remove(known)
                known.path, known.draining_since = path, None
                self.active[path] = known
            return known  # else already read under another name (a hard link): never twice
        self._problems.pop(path, None)
        offset, generation, file_id = 0, 0, None
        epoch = secrets.token_hex(4)  # a file never seen before: fresh uids, even on a reused inode
        saved = self._saved_position(inode, fd)
        if saved is not None:
            offset, generation, file_id = saved.offset, saved.generation, saved.file_id
            epoch = saved.epoch
            if st.st_size < offset:  # truncated while we were away
                self.store.forget_checkpoint(saved.key)
                offset, generation, file_id = 0, generation + 1, None
        elif (
            at_startup
            and (self.first_start or first_seen)
            and self.start_position == "end"
            and st.st_size
        ):
            offset, file_id = st.st_size, identify(fd)
        source = src.source_of(path) if src is not None else path
        t = self._tailer(path, source, src, fd, offset, file_id, generation, epoch)
        if file_id is not None and saved is None:
            self.store.save_checkpoint(Checkpoint(file_id, generation, offset, path, source, epoch))
        self.active[path] = t
        log.info("file_opened", path=path, source=source, position=offset)
        return t

    def _tailer(self, path: str, source: str, src: FileSource | None, fd: int, offset: int,
                file_id: FileId | None, generation: int, epoch: str) -> Tailer:  # fmt: skip
        t = Tailer(
            path, source, fd, offset=offset, file_id=file_id,
            generation=generation, epoch=epoch, max_line_bytes=self.max_line_bytes,
            batch_size=self.batch_size, now=self.clock.monotonic(),
            processing=Processing(src.filters if src else Filters(), self.redactor),
            multiline=src.multiline if src else None,
        )  # fmt: skip
        t.spec = src
        self._new_sources.add(source)
        self.by_inode[t.inode] = t
        self.open.opened(t)
        return t

    def _saved_position(self, inode: Inode, fd: int) -> Checkpoint | None:
        """The saved checkpoint of this very file (same inode and first line), if any."""
        for cp in self._saved.get(inode, []):
            if matches(fd, cp.file_id):
                self._saved[inode].remove(cp)
                return cp
        return None

    def adopt_orphans(self) -> None:
        """At start-up: saved positions of files no path names now (rotated while we were
        down) are finished; positions of older contents of files read now are forgotten."""
        for inode, cps in list(self._saved.items()):
            for cp in list(cps):
                held = self.by_inode.get(inode)
                if held is None and matching(self.sources, cp.path) is None:
                    continue  # a source no longer configured: its position waits for it
                cps.remove(cp)
                if held is None:
                    self._adopt(cp)
                elif held.key != cp.key:
                    # An older content generation of a file we read now (rewritten while
                    # we were stopped): nothing of it can be read any more.
                    self.store.forget_checkpoint(cp.key)
        self.first_start = False

    def _adopt(self, cp: Checkpoint) -> None:
        found = _find_by_inode(os.path.dirname(cp.path) or ".", (cp.file_id.dev, cp.file_id.ino))
        if found is not None:
            path, fd = found
            if matches(fd, cp.file_id) and os.fstat(fd).st_size >= cp.offset:
                src = matching(self.sources, cp.path)
                t = self._tailer(path, cp.source, src, fd, cp.offset, cp.file_id,
                                 cp.generation, cp.epoch)  # fmt: skip
                t.draining_since = self.clock.monotonic()
                self.draining.append(t)
                log.info("file_resumed_rotated", path=path, was=cp.path, position=cp.offset)
                return
            os.close(fd)
        self.store.forget_checkpoint(cp.key)
        log.warning("file_lost_while_stopped", path=cp.path, position=cp.offset)

    def take_new_sources(self) -> set[str]:
        """The sources of the files opened since the last call."""
        new, self._new_sources = self._new_sources, set()
        return new

    # -- following ------------------------------------------------------------------------

    def still_there(self, t: Tailer, now: float) -> tuple[bool, os.stat_result | None]:
        """Does the path still name this file (and its stat, if one was had)? If not,
        finish it and read what is there."""
        try:
            st = os.stat(t.path)
        except FileNotFoundError:
            self._retire(t, now, "deleted_or_renamed")
            return False, None
        except OSError:
            return True, None  # no stat by path (permissions?): the descriptor still reads
        if (st.st_dev, st.st_ino) != t.inode:
            path = t.path  # the retired file may be found again under its new name
            self._retire(t, now, "rotated")
            self.open_path(path, t.spec, at_startup=False)
            return False, None
        return True, st

    def rotated_while_closed(self, t: Tailer) -> None:
        """The path names another file now: finish ours (found by inode), read the new."""
        path = t.path
        self._retire(t, self.clock.monotonic(), "rotated")
        self.open_path(path, t.spec, at_startup=False)

    def _retire(self, t: Tailer, now: float, why: str) -> None:
        """The path no longer names this file: read it to its end, then let it go."""
        self.active.pop(t.path, None)
        # The next discovery looks again: opening the path's new file may fail (no
        # descriptor) in a folder whose listing is cached, and no event may come for it.
        self._all_read = False
        if not t.is_open:
            found = _find_by_inode(os.path.dirname(t.path) or ".", t.inode)
            if found is None:
                self._forget(t)
                log.info("file_gone_while_closed", path=t.path, position=t.committed)
                return
            t.path, t.fd = found
            self.open.opened(t)
        t.draining_since = now
        self.draining.append(t)
        log.info("file_rotated", path=t.path, reason=why)

    def check_truncated(self, t: Tailer, commit: Callable[[Tailer, Read], None]) -> None:
        """Copytruncate: read the file again from 0, as a new content generation."""
        try:
            truncated = t.was_truncated()
        except OSError:
            return
        if truncated:
            old_key = t.key
            commit(t, t.flush(self.clock.wall()))
            t.restart_generation()
            if old_key is not None:
                self.store.forget_checkpoint(old_key)
            log.info("file_truncated", path=t.path, generation=t.generation)

    def release(self, t: Tailer) -> None:
        """A rotated file read to its end and quiet for the grace period."""
        if t.key is not None:
            self.store.forget_checkpoint(t.key)
        self.draining.remove(t)
        self._forget(t)
        log.info("file_released", path=t.path, position=t.committed)

    def _forget(self, t: Tailer) -> None:
        if self.by_inode.get(t.inode) is t:
            del self.by_inode[t.inode]
        t.close()
        self.open.closed(t)

    def close_all(self) -> None:
        for t in [*self.active.values(), *self.draining]:
            t.close()
            self.open.closed(t)
        self.active.clear()
        self.draining.clear()

    def report(self, path: str, problem: str, level: str = "error") -> None:
        """Say each problem with a path once; the others go on."""
        if self._problems.get(path) == problem:
            return
        self._problems[path] = problem
        getattr(log, level)("source_problem", path=path, problem=problem)


def _find_by_inode(folder: str, inode: Inode) -> tuple[str, int] | None:
    """A file of ``folder`` with this inode, opened: (path, fd). Cheap on a large folder:
    the inode comes with the directory entry, only the match is stat()ed."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for entry in entries:
        try:
            if entry.inode() != inode[1] or not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, O_READ)
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == inode:
            return entry.path, fd
        os.close(fd)
    return None
