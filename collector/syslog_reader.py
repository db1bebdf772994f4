"""A syslog receiver: UDP, TCP and TLS listeners whose messages are committed to the buffer.

RFC 3164 and RFC 5424 messages (``collector.syslog_format``) over UDP (RFC 5426: one message
per datagram) or over TCP/TLS with RFC 6587 framing, newline or octet-counted, detected per
message (``collector.syslog_framing``). One thread per listener runs a ``selectors`` loop over
non-blocking sockets; each loop pass gathers the messages of every ready socket and commits them
in one transaction (one fsync per pass, not per message).

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

import base64
import contextlib
import errno
import hashlib
import os
import random
import selectors
import socket
import ssl
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import structlog

from collector.committing import Committer
from collector.processing import Processing
from collector.spec import ReaderContext
from collector.syslog_format import parse
from collector.syslog_framing import FrameDecoder, FramingError
from collector.syslog_sockets import (
    kernel_udp_drops,
    peer_of,
    raise_fd_limit,
    reset,
    tls_context,
)
from collector.syslog_source import SyslogSource
from ila_core.clock import Clock, rfc3339_ms
from ila_core.errors import BufferFull
from ila_core.health import HealthBoard
from ila_core.throttle import Throttle

log = structlog.get_logger("collector")

READ_BYTES = 64 * 1024  # one read from a connection, at most, before its messages are committed
PASS_BYTES = 4 * 1024 * 1024  # read per loop pass, at most: bounds what one commit holds
UDP_PER_PASS = 2048  # datagrams read per pass, at most (others wait in the kernel's buffer)
UDP_BUFSIZE = 65536  # an IPv4/IPv6 UDP payload is at most 65,507 bytes
UDP_RCVBUF = 8 * 1024 * 1024  # asked of the kernel, which caps it at net.core.rmem_max
ACCEPT_PER_PASS = 256
ACCEPT_PAUSE_S = 1.0  # after EMFILE/ENFILE: stop accepting for a moment instead of spinning
HANDSHAKE_TIMEOUT_S = 10.0
HOUSEKEEPING_S = 1.0  # idle scan and counters, at most this often
ROOM_RETRY_S = 0.1  # buffer full: try the held batch again this often (acks make room)
KERNEL_DROPS_S = 2.0
DROP_LOG_S = 10.0
BIND_RETRY_MIN_S, BIND_RETRY_MAX_S = 1.0, 30.0

# Why a message was lost here: over max_message_bytes; a UDP datagram that came while the
# buffer was full; a TCP frame cut short (closed mid-frame, reset, idle); the rest of a read
# from a peer that sent binary data without <PRI>; read but not committed when the agent
# stopped (the buffer was full until then). Plus "kernel": the OS's UDP receive-buffer drops.
DROP_REASONS = ("too_large", "buffer_full", "incomplete", "not_syslog", "stopped")


class UidMinter:
    """``event_uid``s: sha256(listener key, random epoch, counter), 32 hex digits."""

    def __init__(self, key: str) -> None:
        # A fresh random epoch per start: no state to keep, and nothing to collide with when
        # the buffer (with any saved counter) is lost or quarantined.
        self.epoch = os.urandom(16).hex()
        self.count = 0
        self._base = hashlib.sha256(f"{key}\0{self.epoch}\0".encode())

    def next(self) -> str:
        self.count += 1
        h = self._base.copy()
        h.update(self.count.to_bytes(8, "big"))
        return h.hexdigest()[:32]

    @property
    def cursor(self) -> str:
        """Saved with each commit: which run committed how many (for diagnosis only)."""
        return f"{self.epoch}:{self.count}"


class _Conn:
    """One accepted TCP/TLS connection and its framing state."""

    __slots__ = (
        "decoder", "handshaking", "ip", "last_active", "more", "opened", "peer", "registered",
        "sock", "tls", "want_write",
    )  # fmt: skip

    def __init__(
        self, sock: socket.socket, addr: Any, max_message_bytes: int, now: float, tls: bool
    ) -> None:
        self.sock = sock
        self.peer, self.ip = peer_of(addr)
        self.decoder = FrameDecoder(max_message_bytes)
        self.tls = tls
        self.handshaking = tls
        self.want_write = False  # a TLS handshake waits for the socket to be writable
        self.registered = False
        self.more = False  # TLS bytes decrypted but not read yet: select will not say so
        self.opened = now
        self.last_active = now


class _Pass:
    """What one loop pass read: the entries to commit together."""

    __slots__ = ("entries", "n_bytes")

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.n_bytes = 0


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
        self.throttle = Throttle(self.clock.monotonic)
        # Every reason is there from the start: the dict never changes size, so another
        # thread may read it while this one counts.
        self._drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._kernel_drops = 0  # the kernel's count for our UDP socket (Linux)
        self._logged_drops = 0
        self.refused = 0  # connections over max_connections
        self.received = 0  # messages committed
        self._stop = threading.Event()
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sock: socket.socket | None = None  # the listening (TCP) or receiving (UDP) socket
        self._tls: ssl.SSLContext | None = None
        self._conns: set[_Conn] = set()
        self._held: list[dict[str, Any]] | None = None  # read, waiting for room in the buffer
        self._blocked_at = 0.0
        self._next_room_try = 0.0
        self._accept_paused_until: float | None = None
        self._next_housekeeping = 0.0
        self._next_kernel_drops = 0.0
        self._drop_logged_at = -DROP_LOG_S  # the first drops are said at once, then ≤ 1 per 10 s
        self._bind_problem: str | None = None
        self.address: tuple[str, int] | None = None  # bound (host, port), once listening

    # -- what the agent reads ------------------------------------------------------------------

    def dropped(self) -> int:
        """Messages lost at this input, every reason (``ila_agent_input_dropped_total``)."""
        return sum(list(self._drops.values())) + self._kernel_drops

    def drops_by_reason(self) -> dict[str, int]:
        """The non-zero counts of DROP_REASONS and ``kernel``."""
        out = {reason: n for reason, n in list(self._drops.items()) if n}
        if self._kernel_drops:
            out["kernel"] = self._kernel_drops
        return out

    @property
    def connections(self) -> int:
        return len(self._conns)

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
        while not self._stopping():
            try:
                self._bind()
            except (OSError, ssl.SSLError) as exc:
                problem = f"cannot listen on {self.spec.listen}: {_reason(exc)}"
                if isinstance(exc, PermissionError) and self.spec.port < 1024:
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
            self.health.set(self.name, None)
            self._bind_problem = None
            log.info(
                "syslog_listening", source=self.source, listen=self.spec.listen,
                address=f"{self.address[0]}:{self.address[1]}" if self.address else None,
                tls_client_certificates=self.spec.tls_client_ca_file is not None,
            )  # fmt: skip
            return True
        return False

    def _bind(self) -> None:
        spec = self.spec
        kind = socket.SOCK_DGRAM if spec.scheme == "udp" else socket.SOCK_STREAM
        family, _, _, _, addr = socket.getaddrinfo(
            spec.host, spec.port, type=kind, flags=socket.AI_PASSIVE
        )[0]
        if spec.scheme == "tls":
            self._tls = tls_context(spec)
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                # A restart must not wait out TIME_WAIT. (Not for UDP: there it would let a
                # second process share the port and take some of the datagrams.)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            sock.bind(addr)
            if kind == socket.SOCK_STREAM:
                sock.listen(socket.SOMAXCONN)
                raise_fd_limit(spec.max_connections)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        bound = sock.getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        assert self._sel is not None
        self._sel.register(sock, selectors.EVENT_READ, _UDP if kind == socket.SOCK_DGRAM else
                           _LISTENER)  # fmt: skip

    # -- one pass ------------------------------------------------------------------------------

    def _step(self) -> None:
        """Select, read what is ready (once per connection), commit it all in one transaction."""
        assert self._sel is not None
        more = [c for c in self._conns if c.more and c.registered]
        timeout = 0.0 if more else (ROOM_RETRY_S if self._held is not None else HOUSEKEEPING_S)
        events = self._sel.select(timeout)
        if len(events) > 1:
            random.shuffle(events)  # no connection always first when PASS_BYTES cuts a pass
        now = self.clock.monotonic()
        wall = self.clock.wall()
        batch = _Pass()
        stamp, now_dt = rfc3339_ms(wall), datetime.fromtimestamp(wall, timezone.utc)
        seen: set[_Conn] = set()
        for key, _ in events:
            what = key.data
            if what is _WAKE:
                assert self._wake_r is not None
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            elif what is _LISTENER:
                self._accept(now)
            elif what is _UDP:
                self._read_udp(batch, stamp, now_dt)
            elif isinstance(what, _Conn) and batch.n_bytes < PASS_BYTES:
                seen.add(what)
                self._serve(what, batch, stamp, now_dt, now)
        for conn in more:
            if conn not in seen and conn in self._conns and batch.n_bytes < PASS_BYTES:
                self._serve(conn, batch, stamp, now_dt, now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_S
            self._housekeeping(now, batch, stamp, now_dt)
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
            self._count("stopped", len(self._held))
            log.warning("syslog_lost_at_stop", source=self.source, messages=len(self._held),
                        reason="buffer full (policy block) until the agent stopped")  # fmt: skip
            self._held = None
        if self.spec.scheme == "udp":
            self._read_kernel_drops()
        self._log_drops(force=True)

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
            self._count("stopped", len(entries))
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
        for conn in self._conns:
            self._unregister(conn)
        log.warning(
            "buffer_full_blocking", source=self.source, reason=reason,
            note="messages kept; connections not read (TCP back-pressure); UDP datagrams "
            "dropped and counted",
        )  # fmt: skip
        self.health.set(f"buffer:{self.name}", f"buffer full (policy block): {reason}")

    def _resume(self, now: float) -> None:
        self._held = None
        for conn in self._conns:
            conn.last_active = max(conn.last_active, now)  # paused is not idle
            self._register(conn)
        log.info("buffer_room_again", source=self.source, paused_s=round(now - self._blocked_at, 1))
        self.health.set(f"buffer:{self.name}", None)

    # -- UDP -----------------------------------------------------------------------------------

    def _read_udp(self, batch: _Pass, stamp: str, now_dt: datetime) -> None:
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
                                      error=_reason(exc))  # fmt: skip
                return
            if self._held is not None:
                self._count("buffer_full")
                continue
            if len(data) > limit:  # bufsize is limit + 1: a longer one was cut to it
                self._count("too_large")
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
            self._add(batch, data, peer, ip, stamp, now_dt)
            if batch.n_bytes >= PASS_BYTES:
                return

    # -- TCP and TLS ---------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(ACCEPT_PER_PASS):
            try:
                client, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # EMFILE/ENFILE/ENOBUFS: the listener stays readable, so stop asking for a
                # moment rather than spin.
                self.throttle.warning("syslog_accept_failed", source=self.source,
                                      error=_reason(exc), pause_s=ACCEPT_PAUSE_S)  # fmt: skip
                self._pause_accepting(now)
                return
            if len(self._conns) >= self.spec.max_connections:
                self.refused += 1
                peer, _ = peer_of(addr)
                self.throttle.warning(
                    "syslog_connection_refused", source=self.source, peer=peer,
                    reason=f"max_connections ({self.spec.max_connections}) reached",
                    refused_total=self.refused,
                )  # fmt: skip
                reset(client)
                continue
            self._open_conn(client, addr, now)

    def _open_conn(self, client: socket.socket, addr: Any, now: float) -> None:
        try:
            client.setblocking(False)
            if self._tls is not None:
                client = self._tls.wrap_socket(
                    client, server_side=True, do_handshake_on_connect=False
                )
        except (OSError, ValueError) as exc:
            client.close()
            self.throttle.warning("syslog_connection_failed", source=self.source,
                                  error=_reason(exc))  # fmt: skip
            return
        conn = _Conn(client, addr, self.spec.max_message_bytes, now, self._tls is not None)
        self._conns.add(conn)
        if self._held is None:
            self._register(conn)
        log.debug("syslog_connection_opened", source=self.source, peer=conn.peer)

    def _serve(self, conn: _Conn, batch: _Pass, stamp: str, now_dt: datetime, now: float) -> None:
        """A ready connection; a bug in serving one peer closes that peer, not the agent."""
        try:
            if conn.handshaking:
                self._handshake(conn, now)
            else:
                self._read_conn(conn, batch, stamp, now_dt, now)
        except Exception as exc:
            self.throttle.warning("syslog_connection_error", source=self.source, peer=conn.peer,
                                  error=repr(exc)[:300])  # fmt: skip
            self._close(conn)

    def _handshake(self, conn: _Conn, now: float) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write(conn, False)
            return
        except ssl.SSLWantWriteError:
            self._want_write(conn, True)
            return
        except (ssl.SSLError, OSError) as exc:
            self.throttle.warning("syslog_tls_handshake_failed", source=self.source,
                                  peer=conn.peer, reason=_reason(exc))  # fmt: skip
            self._close(conn)
            return
        conn.handshaking = False
        conn.last_active = now
        self._want_write(conn, False)
        conn.more = True  # the client's first records may already be decrypted and waiting
        log.debug("syslog_tls_established", source=self.source, peer=conn.peer,
                  version=sock.version())  # fmt: skip

    def _read_conn(
        self, conn: _Conn, batch: _Pass, stamp: str, now_dt: datetime, now: float
    ) -> None:
        """One read of at most READ_BYTES (for TLS, as many records as fit in it)."""
        chunks: list[bytes] = []
        total = 0
        eof = False
        failed: str | None = None
        sock = conn.sock
        conn.more = False
        while total < READ_BYTES:
            try:
                data = sock.recv(READ_BYTES - total)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self._want_write(conn, False)
                break
            except ssl.SSLWantWriteError:  # TLS must write before it can read on (rare)
                self._want_write(conn, True)
                break
            except (ssl.SSLError, OSError) as exc:
                failed = f"connection failed: {_reason(exc)}"
                break
            self._want_write(conn, False)
            if not data:
                eof = True
                break
            chunks.append(data)
            total += len(data)
            if not isinstance(sock, ssl.SSLSocket) or sock.pending() == 0:
                break
        if failed is not None:
            # Reset, or a TLS failure: what was read is kept, an unfinished frame is not a
            # message (the sender could not have known it was received).
            self._take(conn, chunks, batch, stamp, now_dt, now, final=False)
            self._drop_partial(conn, failed)
            self._close(conn)
            return
        if isinstance(sock, ssl.SSLSocket) and not eof and total >= READ_BYTES:
            conn.more = sock.pending() > 0
        self._take(conn, chunks, batch, stamp, now_dt, now, final=eof)

    def _take(
        self,
        conn: _Conn,
        chunks: list[bytes],
        batch: _Pass,
        stamp: str,
        now_dt: datetime,
        now: float,
        *,
        final: bool,
    ) -> None:
        """Frame what was read; at EOF, the last newline-framed message without its LF too."""
        messages: list[bytes] = []
        failed: str | None = None
        if chunks:
            conn.last_active = now
            try:
                messages = conn.decoder.feed(b"".join(chunks) if len(chunks) > 1 else chunks[0])
            except FramingError as exc:
                failed = str(exc)
            if failed is None and conn.decoder.error is not None:
                failed = str(conn.decoder.error)  # messages before it are kept; then close
        if final and failed is None and conn in self._conns:
            try:
                messages += conn.decoder.flush()
            except FramingError as exc:
                failed = str(exc)
        for i, msg in enumerate(messages):
            if self._add(batch, msg, conn.peer, conn.ip, stamp, now_dt):
                self._count("not_syslog", len(messages) - i - 1)
                self.throttle.warning(
                    "syslog_not_syslog", source=self.source, peer=conn.peer,
                    reason="binary data without <PRI>: message kept raw, connection closed",
                    messages_discarded=len(messages) - i - 1,
                )  # fmt: skip
                self._close(conn)
                return
        if failed is not None:
            self._framing_error(conn, failed)
        elif final:
            log.debug("syslog_connection_closed", source=self.source, peer=conn.peer)
            self._close(conn)

    def _framing_error(self, conn: _Conn, problem: str) -> None:
        if "exceeds max_message_bytes" in problem:
            self._count("too_large")
        elif "mid-frame" in problem:
            self._count("incomplete")
        self.throttle.warning("syslog_framing_error", source=self.source, peer=conn.peer,
                              problem=problem, note="connection closed")  # fmt: skip
        self._close(conn)

    def _drop_partial(self, conn: _Conn, why: str) -> None:
        """Closing a connection that holds part of a frame: that message is lost; say so."""
        held = conn.decoder.buffered_bytes
        if held and not conn.handshaking:
            self._count("incomplete")
            self.throttle.warning("syslog_partial_message_dropped", source=self.source,
                                  peer=conn.peer, bytes=held, why=why)  # fmt: skip

    # -- messages → entries --------------------------------------------------------------------

    def _add(
        self, batch: _Pass, msg: bytes, peer: str, ip: str, stamp: str, now_dt: datetime
    ) -> bool:
        """The entry of one message, into the pass; True when it is binary with no ``<PRI>``
        (not a syslog sender: the caller closes a TCP connection)."""
        fields = parse(msg, now=now_dt)
        entry: dict[str, Any]
        try:
            text = msg.decode("utf-8")
            binary = False
        except UnicodeDecodeError:
            text = msg.decode("utf-8", errors="replace")
            binary = True
        entry = {
            "log_text": text,
            "source": self.source,
            "timestamp": stamp,
            # The entry's host is the one the message is about: the sender's HOSTNAME (a relay
            # keeps the original host's), else the address it came from.
            "hostname": (fields.hostname if fields is not None and fields.hostname else ip),
            "event_uid": self.uids.next(),
            "peer": peer,
        }
        if fields is not None:
            entry["syslog"] = fields.to_json()
        if binary:
            entry["raw_b64"] = base64.b64encode(msg).decode("ascii")
        batch.entries.append(entry)
        batch.n_bytes += len(msg)
        return fields is None and (binary or b"\0" in msg)

    # -- connection bookkeeping ----------------------------------------------------------------

    def _register(self, conn: _Conn) -> None:
        if not conn.registered:
            assert self._sel is not None
            events = selectors.EVENT_WRITE if conn.want_write else selectors.EVENT_READ
            self._sel.register(conn.sock, events, conn)
            conn.registered = True

    def _unregister(self, conn: _Conn) -> None:
        if conn.registered:
            assert self._sel is not None
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(conn.sock)
            conn.registered = False

    def _want_write(self, conn: _Conn, want: bool) -> None:
        if conn.want_write != want:
            conn.want_write = want
            if conn.registered:
                assert self._sel is not None
                events = selectors.EVENT_WRITE if want else selectors.EVENT_READ
                self._sel.modify(conn.sock, events, conn)

    def _close(self, conn: _Conn) -> None:
        if conn not in self._conns:
            return
        self._unregister(conn)
        self._conns.discard(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _pause_accepting(self, now: float) -> None:
        if self._accept_paused_until is None and self._sock is not None:
            assert self._sel is not None
            self._sel.unregister(self._sock)
        self._accept_paused_until = now + ACCEPT_PAUSE_S

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._sel is not None:
            self._sel.close()
        self._sock = self._wake_w = self._wake_r = None

    # -- housekeeping --------------------------------------------------------------------------

    def _housekeeping(self, now: float, batch: _Pass, stamp: str, now_dt: datetime) -> None:
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            if self._sock is not None and self._sel is not None:
                self._sel.register(self._sock, selectors.EVENT_READ, _LISTENER)
        if self._held is None:  # while paused, nobody is read: silence is ours, not theirs
            self._close_idle(now, batch, stamp, now_dt)
        if self.spec.scheme == "udp" and now >= self._next_kernel_drops:
            self._next_kernel_drops = now + KERNEL_DROPS_S
            self._read_kernel_drops()
        if now - self._drop_logged_at >= DROP_LOG_S and self.dropped() != self._logged_drops:
            self._drop_logged_at = now
            self._log_drops()
        self.throttle.flush()

    def _close_idle(self, now: float, batch: _Pass, stamp: str, now_dt: datetime) -> None:
        idle_after = self.spec.idle_timeout
        for conn in list(self._conns):
            if conn.handshaking and now - conn.opened >= HANDSHAKE_TIMEOUT_S:
                self.throttle.warning("syslog_tls_handshake_timeout", source=self.source,
                                      peer=conn.peer, timeout_s=HANDSHAKE_TIMEOUT_S)  # fmt: skip
                self._close(conn)
            elif now - conn.last_active >= idle_after:
                self.throttle.warning(
                    "syslog_connection_idle_closed", source=self.source, peer=conn.peer,
                    idle_timeout_s=idle_after, buffered_bytes=conn.decoder.buffered_bytes,
                )  # fmt: skip
                # As at EOF: a last line without its LF is a message; a counted frame still
                # short of its count is not (a lying count ends here).
                self._take(conn, [], batch, stamp, now_dt, now, final=True)

    def _read_kernel_drops(self) -> None:
        sock = self._sock
        if sock is None or not sys.platform.startswith("linux"):
            return
        found = kernel_udp_drops(os.fstat(sock.fileno()).st_ino, sock.family)
        if found is not None and found > self._kernel_drops:
            self.committer.counts.add("input_dropped", found - self._kernel_drops, self.name)
            self._kernel_drops = found

    def _count(self, reason: str, n: int = 1) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + n
        self.committer.counts.add("input_dropped", n, self.name)  # the metric, by listener

    def _log_drops(self, *, force: bool = False) -> None:
        """Drops are said at most every DROP_LOG_S seconds, with the running totals."""
        total = self.dropped()
        if total != self._logged_drops or (force and total):
            log.warning(
                "syslog_input_dropped", source=self.source, listen=self.spec.listen,
                new=total - self._logged_drops, total=total, by_reason=self.drops_by_reason(),
            )  # fmt: skip
            self._logged_drops = total


# -- helpers ----------------------------------------------------------------------------------


def _text_bytes(entries: list[dict[str, Any]]) -> int:
    return sum(len(e["log_text"]) for e in entries)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
