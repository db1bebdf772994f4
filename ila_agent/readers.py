"""The record sources' threads (journald, Windows channels, syslog listeners), started and
stopped one by one: at start-up, at shutdown, and when a reload adds or removes a source."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from collector.spec import ReaderContext, RecordReader
from ila_core.clock import Clock

log = structlog.get_logger("agent")

Spawn = Callable[[str, Callable[[], None]], threading.Thread]


@dataclasses.dataclass
class _Running:
    spec: Any
    reader: RecordReader
    stop: threading.Event
    thread: threading.Thread


class RecordReaders:
    """One thread per record source; each has its own stop, so one can go alone."""

    def __init__(self, ctx: ReaderContext, spawn: Spawn) -> None:
        self.ctx = ctx
        self.spawn = spawn
        self.running: list[_Running] = []

    def apply(self, specs: Sequence[Any]) -> None:
        """Run exactly these specs: stop the ones gone (or changed), start the new ones."""
        wanted = list(specs)
        for r in list(self.running):
            if r.spec not in wanted:
                self._stop(r)
                log.info("source_stopped", source=r.spec.label())
        have = [r.spec for r in self.running]
        for spec in wanted:
            if spec not in have:
                self._start(spec)

    def _start(self, spec: Any) -> None:
        stop = threading.Event()
        # Its own clock: stopped with the agent (``stop_all``) or on its own (a reload).
        ctx = dataclasses.replace(self.ctx, clock=_ChildClock(self.ctx.clock, stop))
        reader = spec.reader(ctx)
        if reader is None:
            return
        thread = self.spawn(reader.name, reader.run)
        self.running.append(_Running(spec, reader, stop, thread))

    def _stop(self, r: _Running, wait: float = 3.0) -> None:
        r.stop.set()
        r.reader.stop()
        r.thread.join(wait)
        self.running.remove(r)

    def stop_all(self) -> None:
        for r in list(self.running):
            r.stop.set()
            r.reader.stop()


class _ChildClock(Clock):
    """The agent's clock, with a stop of its own as well."""

    def __init__(self, parent: Clock, stop: threading.Event) -> None:
        super().__init__(stop)
        self.parent = parent

    def wait(self, seconds: float) -> bool:
        deadline = self.monotonic() + max(0.0, seconds)
        while not self.stopped:
            left = deadline - self.monotonic()
            if left <= 0:
                return False
            self.stop_event.wait(min(left, 0.5))  # also look at the parent's stop
        return True

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set() or self.parent.stopped
