"""A whole-request deadline: a server that trickles its answer cannot hold a sender forever.

``requests``' read timeout bounds each silence, not the answer: headers sent one byte a
second never trip it. Here every request runs inside a ``Watchdog.guard``; the connections it
uses are registered (``GuardedAdapter``), and one watchdog thread shuts their sockets down when
the deadline passes, which ends the blocked read with an error at once.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Guard:
    """One request's deadline and the connections it used."""

    def __init__(self) -> None:
        self.fired = False
        self.done = False
        self._conns: list[Any] = []
        self._lock = threading.Lock()

    def add(self, conn: Any) -> None:
        with self._lock:
            self._conns.append(conn)
            fired = self.fired
        if fired:
            _shut(conn)

    def fire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.fired = True
            conns = list(self._conns)
        for conn in conns:
            _shut(conn)


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            # The plain socket's shutdown, also under TLS: it unblocks the reading thread.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watchdog:
    """One daemon thread for every guard of a process."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Guard]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, seconds: float) -> Iterator[Guard]:
        """Requests made inside are cut off ``seconds`` from now."""
        g = Guard()
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._seq), g))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        previous = getattr(_current, "guard", None)
        _current.guard = g
        try:
            yield g
        finally:
            _current.guard = previous
            with g._lock:
                g.done = True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, g = self._heap[0]
                left = due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
            g.fire()


WATCHDOG = Watchdog()


class _GuardedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        g = getattr(_current, "guard", None)
        if g is not None:
            g.add(self)
        super().request(*args, **kwargs)


class _GuardedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        g = getattr(_current, "guard", None)
        if g is not None:
            g.add(self)
        super().request(*args, **kwargs)


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """``requests``' adapter whose connections register with the current guard."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }
