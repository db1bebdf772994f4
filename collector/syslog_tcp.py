"""The TCP and TLS side of a syslog listener: accepting, reading and framing connections.

``collector.syslog_reader`` runs the loop and commits; this module turns a ready connection
into messages in the loop pass's batch (``Pass``), and closes what misbehaves, with a log line
(rate-limited) and a count of what was lost. The invariants are the reader's.
"""

from __future__ import annotations

import errno
import selectors
import socket
import ssl
from typing import Any

import structlog

from collector.syslog_conn import Connection
from collector.syslog_drops import DropCounter
from collector.syslog_entries import EntryMaker, Pass
from collector.syslog_framing import FramingError
from collector.syslog_sockets import describe, peer_of, reset
from collector.syslog_source import SyslogSource
from ila_core.throttle import Throttle

log = structlog.get_logger("collector")

ACCEPT_PER_PASS = 256
ACCEPT_PAUSE_S = 1.0  # after EMFILE/ENFILE: stop accepting for a moment instead of spinning
HANDSHAKE_TIMEOUT_S = 10.0


class TcpConnections:
    """The connections of one TCP/TLS listener; ``attach`` gives it the listening socket."""

    def __init__(
        self, spec: SyslogSource, entries: EntryMaker, drops: DropCounter, throttle: Throttle
    ) -> None:
        self.spec = spec
        self.source = spec.name
        self.entries = entries
        self.drops = drops
        self.throttle = throttle
        self.refused = 0  # connections over max_connections
        self.paused = False  # the buffer is full: no connection is read
        self._conns: set[Connection] = set()
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._listener_tag: object = None  # the listening socket's data in the selector
        self._tls: ssl.SSLContext | None = None
        self._accept_paused_until: float | None = None

    def attach(
        self,
        sel: selectors.BaseSelector,
        listener: socket.socket,
        tag: object,
        tls: ssl.SSLContext | None,
    ) -> None:
        """Serve the connections of ``listener``, registered in ``sel`` with data ``tag``."""
        self._sel, self._listener, self._listener_tag, self._tls = sel, listener, tag, tls

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, conn: object) -> bool:
        return conn in self._conns

    def more(self) -> list[Connection]:
        """Connections with TLS bytes decrypted and unread: select will not report them."""
        return [c for c in self._conns if c.more and c.registered]

    def pause(self) -> None:
        """Read no connection (the buffer is full): TCP back-pressure reaches the senders."""
        self.paused = True
        for conn in self._conns:
            conn.unregister()

    def resume(self, now: float) -> None:
        self.paused = False
        for conn in self._conns:
            conn.last_active = max(conn.last_active, now)  # paused is not idle
            conn.register()

    def housekeeping(self, now: float, batch: Pass) -> None:
        """Accept again after a pause; close idle connections and stuck TLS handshakes."""
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            if self._listener is not None and self._sel is not None:
                self._sel.register(self._listener, selectors.EVENT_READ, self._listener_tag)
        if not self.paused:  # while paused, nobody is read: silence is ours, not theirs
            self._close_idle(now, batch)

    def close_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn)

    def accept(self, now: float) -> None:
        """Accept what waits, up to ACCEPT_PER_PASS; one over ``max_connections`` is reset."""
        sock = self._listener
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
                                      error=describe(exc), pause_s=ACCEPT_PAUSE_S)  # fmt: skip
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
                                  error=describe(exc))  # fmt: skip
            return
        assert self._sel is not None
        conn = Connection(client, addr, self.spec.max_message_bytes, now, self._sel)
        self._conns.add(conn)
        if not self.paused:
            conn.register()
        log.debug("syslog_connection_opened", source=self.source, peer=conn.peer)

    def serve(self, conn: Connection, batch: Pass, now: float) -> None:
        """A ready connection; a bug in serving one peer closes that peer, not the agent."""
        try:
            if conn.handshaking:
                self._handshake(conn, now)
            else:
                self._read_conn(conn, batch, now)
        except Exception as exc:
            self.throttle.warning("syslog_connection_error", source=self.source, peer=conn.peer,
                                  error=repr(exc)[:300])  # fmt: skip
            self._close(conn)

    def _handshake(self, conn: Connection, now: float) -> None:
        failed = conn.handshake(now)
        if failed is not None:
            self.throttle.warning("syslog_tls_handshake_failed", source=self.source,
                                  peer=conn.peer, reason=failed)  # fmt: skip
            self._close(conn)
        elif not conn.handshaking:
            sock = conn.sock
            version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
            log.debug("syslog_tls_established", source=self.source, peer=conn.peer, version=version)

    def _read_conn(self, conn: Connection, batch: Pass, now: float) -> None:
        read = conn.read()
        if read.failed is not None:
            # Reset, or a TLS failure: what was read is kept, an unfinished frame is not a
            # message (the sender could not have known it was received).
            self._take(conn, read.chunks, batch, now, final=False)
            self._drop_partial(conn, read.failed)
            self._close(conn)
            return
        self._take(conn, read.chunks, batch, now, final=read.eof)

    def _take(
        self, conn: Connection, chunks: list[bytes], batch: Pass, now: float, *, final: bool
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
            if self.entries.add(batch, msg, conn.peer, conn.ip):
                self.drops.count("not_syslog", len(messages) - i - 1)
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

    def _framing_error(self, conn: Connection, problem: str) -> None:
        if "exceeds max_message_bytes" in problem:
            self.drops.count("too_large")
        elif "mid-frame" in problem:
            self.drops.count("incomplete")
        self.throttle.warning("syslog_framing_error", source=self.source, peer=conn.peer,
                              problem=problem, note="connection closed")  # fmt: skip
        self._close(conn)

    def _drop_partial(self, conn: Connection, why: str) -> None:
        """Closing a connection that holds part of a frame: that message is lost; say so."""
        held = conn.decoder.buffered_bytes
        if held and not conn.handshaking:
            self.drops.count("incomplete")
            self.throttle.warning("syslog_partial_message_dropped", source=self.source,
                                  peer=conn.peer, bytes=held, why=why)  # fmt: skip

    def _close(self, conn: Connection) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            conn.close()

    def _pause_accepting(self, now: float) -> None:
        if self._accept_paused_until is None and self._listener is not None:
            assert self._sel is not None
            self._sel.unregister(self._listener)
        self._accept_paused_until = now + ACCEPT_PAUSE_S

    def _close_idle(self, now: float, batch: Pass) -> None:
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
                self._take(conn, [], batch, now, final=True)
