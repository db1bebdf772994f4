"""inotify (watchdog) events wake the collector; a periodic stat pass is the safety net."""

from __future__ import annotations

import os
import threading

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = structlog.get_logger("collector")


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake.set()


class Watcher:
    """Watches folders; missing ones are retried by ``refresh`` at each discovery pass."""

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self._observer = Observer()
        self._observer.daemon = True
        self._watched: set[str] = set()
        self._started = False
        self._failed: set[str] = set()

    def refresh(self, dirs: set[str]) -> None:
        for d in sorted(dirs - self._watched):
            if not os.path.isdir(d):
                continue
            try:
                self._observer.schedule(_Wake(self.wake), d, recursive=False)
                self._watched.add(d)
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
