"""Shared fakes for the unit tests: fake time, a scripted HTTP adapter, a real store on disk.

Imported only by tests. Nothing here opens a socket or sleeps.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from forwarder.registrar import AgentInfo, Registrar
from ila_agent.version import __version__
from ila_core.clock import Clock
from queue_store.batch import Batch
from queue_store.records import Checkpoint, Chunk, Entry, FileId, event_uid
from queue_store.store import QueueStore

# -- time ---------------------------------------------------------------------------------


class StepClock:
    """A bare monotonic clock (``RetryPolicy``'s ``clock``) that moves ``step`` seconds each
    time it is read; set ``now`` to put it anywhere."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


class FakeClock(Clock):
    """A Clock whose time moves only when told: ``advance`` or ``wait`` (which never sleeps).

    ``monotonic`` starts at ``start`` and ``wall`` at ``wall_start``; both move together.
    """

    def __init__(
        self,
        start: float = 1000.0,
        wall_start: float = 1_800_000_000.0,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(stop)
        self._now = start
        self._wall = wall_start
        self.waits: list[float] = []  # every wait() asked for, in order

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall

    def set_wall(self, epoch: float) -> None:
        """Re-anchor the wall clock so that ``wall()`` is ``epoch`` now (monotonic unchanged)."""
        self._wall = epoch

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("fake time only moves forward")
        self._now += seconds
        self._wall += seconds

    def wait(self, seconds: float) -> bool:
        """Advance fake time by ``seconds`` unless stopped; True when the stop event is set."""
        self.waits.append(seconds)
        if self.stop_event.is_set():
            return True
        self.advance(max(0.0, seconds))
        return self.stop_event.is_set()


class NoWaitEvent(threading.Event):
    """A threading.Event whose ``wait`` never blocks: it answers ``is_set()`` at once.

    ``Forwarder.step`` waits on ``registrar.registered`` in real time (up to 0.2 s) while
    unregistered; a Registrar built by ``make_registrar`` carries this event instead, so the
    tests never sleep. Each timeout asked for is recorded in ``waited``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waited: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout)
        return self.is_set()


AGENT_INFO = AgentInfo(
    agent_id="9b0e7c1d-agent",
    hostname="web-01",
    os_type="Linux",
    os_version="6.1.0",
    agent_version=__version__,
    sources=("/var/log/auth.log",),
)


def make_registrar(info: AgentInfo = AGENT_INFO, *, registered: bool = False) -> Registrar:
    """A real Registrar whose events never block; ``registered`` skips the first register.

    Marking it registered does what a 2xx answer to register does (``needed`` cleared,
    ``registered`` set), for tests about batches rather than about registration.
    """
    registrar = Registrar(info)
    registrar.registered = NoWaitEvent()
    if registered:
        registrar.needed.clear()
        registrar.registered.set()
    return registrar


# -- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request the adapter was given, decoded for assertions."""

    method: str
    url: str
    headers: dict[str, str]
    body: Any  # the decoded JSON object (None when there was no body)
    raw: bytes
    at: float | None  # fake monotonic time when it was sent (None without a clock)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def uids(self) -> list[str]:
        """The event_uids of an ingest-batch body, in order."""
        return [e["event_uid"] for e in self.body["logs"]]

    @property
    def texts(self) -> list[str]:
        """The log_text values of an ingest-batch body, in order."""
        return [e["log_text"] for e in self.body["logs"]]


ScriptedReply = int | tuple[int, dict[str, str]] | BaseException
Answer = ScriptedReply | Callable[[RecordedRequest], ScriptedReply]


class ScriptedAdapter(BaseAdapter):
    """A requests transport adapter that answers from a script and records every request.

    Each script item is a status, ``(status, headers)``, an exception instance to raise
    (``requests.exceptions.ConnectionError``, ``ReadTimeout``, ``SSLError``…), or a callable
    taking the RecordedRequest and returning one of those. When the script is used up,
    ``fallback`` (same forms) answers; without one, an unexpected request fails the test.
    """

    def __init__(
        self,
        script: Iterable[Answer] = (),
        *,
        fallback: Answer | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.script: list[Answer] = list(script)
        self.fallback = fallback
        self.clock = clock
        self.requests: list[RecordedRequest] = []
        self.closed = False

    def queue(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests sent to ``path`` (e.g. ``/api/agent/ingest-batch``)."""
        return [r for r in self.requests if r.path == path]

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        recorded = _record(request, None if self.clock is None else self.clock.monotonic())
        self.requests.append(recorded)
        if self.script:
            answer = self.script.pop(0)
        elif self.fallback is not None:
            answer = self.fallback
        else:
            raise AssertionError(f"unexpected request to {recorded.url}: the script is used up")
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(recorded)
        if isinstance(answer, BaseException):
            raise answer
        status, headers = (answer, {}) if isinstance(answer, int) else answer
        resp = requests.Response()
        resp.status_code = status
        resp.reason = "scripted"
        resp.headers = CaseInsensitiveDict(headers)
        resp._content = b'{"status":"scripted"}'
        resp.encoding = "utf-8"
        resp.url = request.url or ""
        resp.request = request
        resp.connection = self  # type: ignore[assignment]
        return resp

    def close(self) -> None:
        self.closed = True


def _record(request: requests.PreparedRequest, at: float | None) -> RecordedRequest:
    raw = request.body or b""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    data = gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
    return RecordedRequest(
        method=request.method or "",
        url=request.url or "",
        headers=dict(request.headers),
        body=json.loads(data) if data else None,
        raw=bytes(raw),
        at=at,
    )


# -- the buffer ---------------------------------------------------------------------------


@dataclass
class LogFeed:
    """Commits lines of one fake file generation to a store, the way the collector does."""

    store: QueueStore
    path: str = "/var/log/auth.log"
    source: str = "/var/log/auth.log"
    file_id: FileId = field(default_factory=lambda: FileId(64769, 1234, 42, "f" * 24))
    generation: int = 0
    read_at: float = 1_800_000_000.0
    offset: int = 0
    uids: list[str] = field(default_factory=list)  # every committed line's event_uid, in order
    texts: list[str] = field(default_factory=list)  # every committed line, in order

    @property
    def file_key(self) -> str:
        return self.file_id.key(self.generation)

    def commit(self, lines: Sequence[str]) -> list[str]:
        """Commit ``lines`` as one chunk with the checkpoint after them; their event_uids."""
        offsets: list[int] = []
        n_bytes = 0
        for line in lines:
            offsets.append(self.offset)
            size = len(line.encode("utf-8")) + 1  # the "\n" consumed with it
            self.offset += size
            n_bytes += size
        chunk = Chunk(
            source=self.source,
            path=self.path,
            file_key=self.file_key,
            read_at=self.read_at,
            lines=list(lines),
            offsets=offsets,
            n_bytes=n_bytes,
        )
        cp = Checkpoint(self.file_id, self.generation, self.offset, self.path, self.source)
        self.store.commit([chunk], cp)
        uids = [event_uid(self.file_key, off) for off in offsets]
        self.uids.extend(uids)
        self.texts.extend(lines)
        return uids


OpenBuffer = Callable[..., QueueStore]  # the ``open_buffer`` fixture (tests/conftest.py)


def make_store(
    tmp_path: Path, *chunks: Sequence[str], name: str = "buffer.db", **kwargs: Any
) -> tuple[QueueStore, LogFeed]:
    """A real QueueStore in ``tmp_path`` with each of ``chunks`` committed as one chunk."""
    store = QueueStore(str(tmp_path / name), **kwargs)
    feed = LogFeed(store)
    for lines in chunks:
        feed.commit(lines)
    return store, feed


def lines(n: int, prefix: str = "line") -> list[str]:
    """``n`` distinct log lines."""
    return [f"Nov 27 10:00:{i:02d} web-01 sshd[812]: {prefix} {i}" for i in range(n)]


# -- batches ------------------------------------------------------------------------------


def drain(store: QueueStore, max_lines: int = 1000) -> list[Entry]:
    """Lease everything ready and ack it with the Batch verbs, as the forwarder does after a
    2xx; returns the entries in commit order."""
    out: list[Entry] = []
    while (lease := store.lease(max_lines)) is not None:
        out.extend(lease.entries)
        Batch(lease, lease.entries).ack()
    return out


class RecordingFinisher:
    """Stands in for the store behind a Lease: records each ``ack`` call."""

    def __init__(self) -> None:
        self.finished: list[Any] = []

    def ack(self, lease: Any) -> None:
        self.finished.append(lease)


def entries(n: int) -> list[Entry]:
    """``n`` distinct entries of queue item 1."""
    return [
        Entry(1, f"text {i}", "/var/log/auth.log", "2026-11-27T10:00:00.000Z", f"uid-{i}")
        for i in range(n)
    ]
