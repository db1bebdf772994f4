"""A syslog receiver: UDP, TCP and TLS listeners whose messages are committed to the buffer.

RFC 3164 and RFC 5424 messages (``collector.syslog_format``) over UDP (RFC 5426: one message
per datagram) or over TCP/TLS with RFC 6587 framing, newline or octet-counted, detected per
message (``collector.syslog_framing``). One thread per listener runs a ``selectors`` loop over
non-blocking sockets; each loop pass gathers the messages of every ready socket and commits them
in one transaction (one fsync per pass, not per message). Its parts: ``syslog_tcp`` (accepting
and reading connections; ``syslog_conn``: one connection), ``syslog_entries`` (message →
entry, ``event_uid``), ``syslog_drops`` (what was lost, by reason), ``syslog_sockets``.

Invariants (each has a test in tests/test_syslog_source.py):
- What was read from a TCP/TLS connection is committed before more is read from it: a pass
  reads each ready connection once (at most ``READ_BYTES``, 64 KiB) and ends with the commit.
- While the buffer is full (policy ``block``) no connection is read, so the kernel's receive
  window closes and TCP back-pressure reaches the sender. UDP cannot push back: datagrams that
  arrive meanwhile are read and dropped, and counted, as are datagrams over
  ``max_message_bytes`` and, on Linux, the kernel's receive-buffer drops (``/proc/net/udp``).
  ``dropped()`` is the sum; nothing is dropped without being counted.
- Every message gets its ``event_uid`` before its first commit attempt and keeps it (it is
  stored in the entry): sha256 of the listener, a random epoch drawn at each start, and a
  counter. A restart draws a new epoch, so a uid never repeats one of an earlier run, also when
  the buffer (and any saved counter) is lost.
- Bounded whatever peers send: at most ``max_connections`` connections (one more is accepted
  and reset at once, with a log line), each holding at most ``max_message_bytes + 1`` buffered
  bytes; a pass reads at most ``PASS_BYTES``; a connection silent for ``idle_timeout`` (or a TLS
  handshake unfinished after ``HANDSHAKE_TIMEOUT_S``) is closed; log lines about peers are
  rate-limited per event.
- Hostile input closes its connection with a log line, never the agent: a framing error (a
  frame or an octet count over the limit, a connection closed mid-frame), a binary message with
  no ``<PRI>`` (not a syslog sender), a failed TLS handshake. A message that merely does not
  parse is kept, raw.
- ``stop()`` wakes the thread through a socket pair; ``run()`` returns once the clock (or
  ``stop``) says so, with every socket closed.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import ssl
import threading
from datetime import datetime, timezone
from typing import Any

import structlog

from collector.committing import Committer
from collector.processing import Processing
from collector.spec import ReaderContext
from collector.syslog_conn import Connection
from collector.syslog_drops import DropCounter
from collector.syslog_entries import EntryMaker, Pass, UidMinter
from collector.syslog_sockets import bind, describe, peer_of, tls_context
from collector.syslog_source import SyslogSource
from collector.syslog_tcp import TcpConnections
from ila_core.clock import Clock, rfc3339_ms
from ila_core.errors import BufferFull
from ila_core.health import HealthBoard
from ila_core.throttle import Throttle

log = structlog.get_logger("collector")

PASS_BYTES = 4 * 1024 * 1024  # read per loop pass, at most: bounds what one commit holds
UDP_PER_PASS = 2048  # datagrams read per pass, at most (others wait in the kernel's buffer)
UDP_BUFSIZE = 65536  # an IPv4/IPv6 UDP payload is at most 65,507 bytes
HOUSEKEEPING_S = 1.0  # idle scan and counters, at most this often
ROOM_RETRY_S = 0.1  # buffer full: try the held batch again this often (acks make room)
KERNEL_DROPS_S = 2.0
BIND_RETRY_MIN_S, BIND_RETRY_MAX_S = 1.0, 30.0

_WAKE, _LISTENER, _UDP = "wake", "listener", "udp"


class SyslogReader:
    """One listener's thread: accept, read, frame, parse, commit; see the module's invariants."""

    def __init__(self, ctx: ReaderContext, spec: SyslogSource) -> None:
        self.spec = spec
        self.store = ctx.store
        self.clock: Clock = ctx.clock
        self.batch_size = ctx.batch_size
        self.health: HealthBoard = ctx.health
        self.name = spec.label()  # the thread's name
        self.source = spec.name
        self.key = spec.label()  # cursor row and uid namespace: one per listener
        self.committer = Committer(
            ctx.store, ctx.clock, self.name, ctx.health,
            Processing(spec.filters, ctx.redactor), ctx.counts,
        )  # fmt: skip
        self.uids = UidMinter(self.key)
        self.entries = EntryMaker(self.source, self.uids)
        self.drops = DropCounter(self.committer.counts, self.name, self.source, spec.listen)
        self.throttle = Throttle(self.clock.monotonic)
        self.tcp = (
            None if spec.scheme == "udp"
            else TcpConnections(spec, self.entries, self.drops, self.throttle)
        )  # fmt: skip
        self.received = 0  # messages committed
        self._stop = threading.Event()
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sock: socket.socket | None = None  # the listening (TCP) or receiving (UDP) socket
        self._held: list[dict[str, Any]] | None = None  # read, waiting for room in the buffer
        self._blocked_at = 0.0
        self._next_room_try = 0.0
        self._next_housekeeping = 0.0
        self._next_kernel_drops = 0.0
        self._bind_problem: str | None = None
        self.address: tuple[str, int] | None = None  # bound (host, port), once listening

    # -- what the agent reads ------------------------------------------------------------------

    def dropped(self) -> int:
        """Messages lost at this input, every reason (``ila_agent_input_dropped_total``)."""
        return self.drops.total()

    def drops_by_reason(self) -> dict[str, int]:
        """The non-zero drop counts by reason (``syslog_drops.DROP_REASONS`` and ``kernel``)."""
        return self.drops.by_reason()

    @property
    def connections(self) -> int:
        return 0 if self.tcp is None else len(self.tcp)

    @property
    def refused(self) -> int:
        """Connections reset at once because ``max_connections`` were open."""
        return 0 if self.tcp is None else self.tcp.refused

    # -- the thread ----------------------------------------------------------------------------

    def run(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        try:
            if self._listen():
                while not self._stopping():
                    self._step()
                self._finish()
        finally:
            self._close_all()

    def stop(self) -> None:
        """Wake the thread, which closes every socket and returns (once the clock is stopped).
        Before ``run`` or after it, there is nothing open to close."""
        self._stop.set()
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.send(b"x")

    def _stopping(self) -> bool:
        return self.clock.stopped or self._stop.is_set()

    # -- listening -----------------------------------------------------------------------------

    def _listen(self) -> bool:
        """Bind, retrying (with the reason in the log and the health board) until it works;
        False when stopped first. A port in use at boot or an address not yet configured
        must not need a restart of the agent."""
        delay = BIND_RETRY_MIN_S
        spec = self.spec
        while not self._stopping():
            try:
                tls = tls_context(spec) if spec.scheme == "tls" else None
                self._sock = bind(spec)
            except (OSError, ssl.SSLError) as exc:
                problem = f"cannot listen on {spec.listen}: {describe(exc)}"
                if isinstance(exc, PermissionError) and spec.port < 1024:
                    problem += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
                if problem != self._bind_problem:
                    log.error("syslog_listen_failed", source=self.source, problem=problem,
                              retry_in_s=delay)  # fmt: skip
                    self._bind_problem = problem
                self.health.set(self.name, problem)
                if self.clock.wait(delay):
                    return False
                delay = min(BIND_RETRY_MAX_S, delay * 2)
                continue
            bound = self._sock.getsockname()
            self.address = (str(bound[0]), int(bound[1]))
            assert self._sel is not None
            tag = _UDP if self.tcp is None else _LISTENER
            self._sel.register(self._sock, selectors.EVENT_READ, tag)
            if self.tcp is not None:
                self.tcp.attach(self._sel, self._sock, tag, tls)
            self.health.set(self.name, None)
            self._bind_problem = None
            log.info(
                "syslog_listening", source=self.source, listen=spec.listen,
                address=f"{self.address[0]}:{self.address[1]}",
                tls_client_certificates=spec.tls_client_ca_file is not None,
            )  # fmt: skip
            return True
        return False

    # -- one pass ------------------------------------------------------------------------------

    def _step(self) -> None:
        """Select, read what is ready (once per connection), commit it all in one transaction."""
        assert self._sel is not None
        tcp = self.tcp
        more = [] if tcp is None else tcp.more()
        timeout = 0.0 if more else (ROOM_RETRY_S if self._held is not None else HOUSEKEEPING_S)
        events = self._sel.select(timeout)
        if len(events) > 1:
            random.shuffle(events)  # no connection always first when PASS_BYTES cuts a pass
        now = self.clock.monotonic()
        wall = self.clock.wall()
        batch = Pass(rfc3339_ms(wall), datetime.fromtimestamp(wall, timezone.utc))
        seen: set[Connection] = set()
        for key, _ in events:
            what = key.data
            if what is _WAKE:
                assert self._wake_r is not None
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            elif what is _UDP:
                self._read_udp(batch)
            elif tcp is None:
                continue
            elif what is _LISTENER:
                tcp.accept(now)
            elif isinstance(what, Connection) and batch.n_bytes < PASS_BYTES:
                seen.add(what)
                tcp.serve(what, batch, now)
        for conn in more:  # (only a TCP/TLS listener has some)
            if conn not in seen and tcp is not None and conn in tcp and batch.n_bytes < PASS_BYTES:
                tcp.serve(conn, batch, now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_S
            self._housekeeping(now, batch)
        if self._held is not None:
            if now >= self._next_room_try or self.store.fits(_text_bytes(self._held)):
                self._commit(self._held)
        elif batch.entries:
            self._commit(batch.entries)

    def _finish(self) -> None:
        """Stopping: what is still held (the buffer was full) gets one last try, else it is
        lost, counted and said."""
        if self._held:
            self._commit(self._held)
        if self._held:
            self.drops.count("stopped", len(self._held))
            log.warning("syslog_lost_at_stop", source=self.source, messages=len(self._held),
                        reason="buffer full (policy block) until the agent stopped")  # fmt: skip
            self._held = None
        if self.spec.scheme == "udp":
            self.drops.read_kernel(self._sock)
        self.drops.log(force=True)

    # -- committing ----------------------------------------------------------------------------

    def _commit(self, entries: list[dict[str, Any]]) -> None:
        """Commit ``entries`` and this run's uid cursor; a full buffer (policy block) does not
        block the thread: the entries are held, no connection is read, and they are tried
        again every ROOM_RETRY_S (each try lets the store forget acked history)."""
        cursor = self.uids.cursor
        full: list[str] = []
        # include/exclude and redaction, from the raw entries each try (held ones stay raw)
        kept, filtered = self.committer.processing.records(entries)

        def write() -> None:
            full.clear()
            try:
                self.store.commit_records(
                    kept, key=self.key, source=self.source, cursor=cursor,
                    per_item=self.batch_size, filtered=filtered,
                )  # fmt: skip
            except BufferFull as exc:
                full.append(str(exc))  # handled here: the thread must keep serving UDP

        if not self.committer.commit(write):  # stopped while the buffer could not be written
            self.drops.count("stopped", len(entries))
            self._held = None
            return
        now = self.clock.monotonic()
        if full:
            if self._held is None:
                self._pause(entries, full[0], now)
            self._next_room_try = now + ROOM_RETRY_S
            return
        self.received += len(entries)
        if kept:
            self.committer.counts.add("committed", len(kept), self.source)
        if self._held is not None:
            self._resume(now)

    def _pause(self, entries: list[dict[str, Any]], reason: str, now: float) -> None:
        self._held = entries
        self._blocked_at = now
        if self.tcp is not None:
            self.tcp.pause()
        log.warning(
            "buffer_full_blocking", source=self.source, reason=reason,
            note="messages kept; connections not read (TCP back-pressure); UDP datagrams "
            "dropped and counted",
        )  # fmt: skip
        self.health.set(f"buffer:{self.name}", f"buffer full (policy block): {reason}")

    def _resume(self, now: float) -> None:
        self._held = None
        if self.tcp is not None:
            self.tcp.resume(now)
        log.info("buffer_room_again", source=self.source, paused_s=round(now - self._blocked_at, 1))
        self.health.set(f"buffer:{self.name}", None)

    # -- UDP -----------------------------------------------------------------------------------

    def _read_udp(self, batch: Pass) -> None:
        sock = self._sock
        assert sock is not None
        limit = self.spec.max_message_bytes
        bufsize = min(limit + 1, UDP_BUFSIZE)
        for _ in range(UDP_PER_PASS):
            try:
                data, addr = sock.recvfrom(bufsize)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.throttle.warning("syslog_receive_failed", source=self.source,
                                      error=describe(exc))  # fmt: skip
                return
            if self._held is not None:
                self.drops.count("buffer_full")
                continue
            if len(data) > limit:  # bufsize is limit + 1: a longer one was cut to it
                self.drops.count("too_large")
                peer, _ = peer_of(addr)
                self.throttle.warning(
                    "syslog_message_too_large", source=self.source, peer=peer,
                    max_message_bytes=limit, note="datagram dropped",
                )  # fmt: skip
                continue
            # RFC 5426 has no framing, but many senders end a datagram with LF (or NUL).
            data = data.rstrip(b"\n\x00")
            if data.endswith(b"\r"):
                data = data[:-1]
            if not data:
                continue
            peer, ip = peer_of(addr)
            self.entries.add(batch, data, peer, ip)
            if batch.n_bytes >= PASS_BYTES:
                return

    def _close_all(self) -> None:
        if self.tcp is not None:
            self.tcp.close_all()
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._sel is not None:
            self._sel.close()
        self._sock = self._wake_w = self._wake_r = None

    # -- housekeeping --------------------------------------------------------------------------

    def _housekeeping(self, now: float, batch: Pass) -> None:
        if self.tcp is not None:
            self.tcp.housekeeping(now, batch)
        if self.spec.scheme == "udp" and now >= self._next_kernel_drops:
            self._next_kernel_drops = now + KERNEL_DROPS_S
            self.drops.read_kernel(self._sock)
        self.drops.maybe_log(now)
        self.throttle.flush()


def _text_bytes(entries: list[dict[str, Any]]) -> int:
    return sum(len(e["log_text"]) for e in entries)
