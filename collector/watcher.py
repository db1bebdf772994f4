"""inotify (watchdog) events say which paths changed; a periodic stat pass is the safety net.

The collector is woken by an event and then looks only at the paths events named, not at
every file it tracks: with 10,000 quiet files, nothing happens per file until one changes.
Our own opens and closes (IN_OPEN, IN_CLOSE_NOWRITE) are not changes: they are not asked
of the kernel (``EVENTS`` is the inotify mask), so closing 10,000 quiet files wakes nothing.
"""

from __future__ import annotations

import os
import threading

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = structlog.get_logger("collector")

CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed"})
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirCreatedEvent, DirModifiedEvent, DirMovedEvent, DirDeletedEvent,
]  # fmt: skip


class _Collect(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGES:
            return
        paths = [event.src_path]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(dest)
        self.watcher.changed([os.fsdecode(p) for p in paths], directory=event.is_directory)


class Watcher:
    """Watches folders; missing ones are retried by ``refresh`` at each discovery pass."""

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self._observer = Observer()
        self._observer.daemon = True
        self._watched: set[str] = set()
        self._started = False
        self._failed: set[str] = set()
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._rescan = False

    @property
    def complete(self) -> bool:
        """Every folder asked for is watched (else the stat pass is all there is for some)."""
        return not self._failed

    def changed(self, paths: list[str], *, directory: bool) -> None:
        with self._lock:
            self._paths.update(paths)
            self._rescan = self._rescan or directory  # a new folder a glob may reach into
        self.wake.set()

    def take(self) -> tuple[set[str], bool]:
        """The paths changed since the last call, and whether a folder changed."""
        with self._lock:
            paths, self._paths = self._paths, set()
            rescan, self._rescan = self._rescan, False
        return paths, rescan

    def refresh(self, dirs: set[str]) -> None:
        for d in sorted(dirs - self._watched):
            if not os.path.isdir(d):
                continue
            try:
                self._observer.schedule(_Collect(self), d, recursive=False, event_filter=EVENTS)
                self._watched.add(d)
                self._failed.discard(d)
            except OSError as exc:
                # inotify watch limit or permissions: the stat pass still covers it.
                if d not in self._failed:
                    log.warning("watch_failed", dir=d, error=str(exc))
                    self._failed.add(d)
        if not self._started and self._watched:
            self._observer.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=2)
