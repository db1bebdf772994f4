"""One accepted TCP/TLS connection of a syslog listener: its socket, its framing, its selector
registration, its TLS handshake and one bounded read."""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from collector.syslog_framing import FrameDecoder
from collector.syslog_sockets import describe, peer_of

READ_BYTES = 64 * 1024  # one read from a connection, at most, before its messages are committed


@dataclass(frozen=True)
class Read:
    """What one read of a connection gave: the bytes, whether the peer closed, or why it failed."""

    chunks: list[bytes]
    eof: bool
    failed: str | None  # reset, or a TLS failure: the connection is finished


class Connection:
    """One accepted TCP/TLS connection and its framing state.

    While the buffer is full the listener unregisters every connection (``unregister``), so
    that none is read and TCP back-pressure reaches the senders; ``register`` undoes it.
    """

    __slots__ = (
        "decoder", "handshaking", "ip", "last_active", "more", "opened", "peer", "registered",
        "sel", "sock", "wants_write",
    )  # fmt: skip

    def __init__(
        self,
        sock: socket.socket,
        addr: Any,
        max_message_bytes: int,
        now: float,
        sel: selectors.BaseSelector,
    ) -> None:
        self.sock = sock
        self.sel = sel
        self.peer, self.ip = peer_of(addr)
        self.decoder = FrameDecoder(max_message_bytes)
        self.handshaking = isinstance(sock, ssl.SSLSocket)
        self.wants_write = False  # a TLS handshake waits for the socket to be writable
        self.registered = False
        self.more = False  # TLS bytes decrypted but not read yet: select will not say so
        self.opened = now
        self.last_active = now

    # -- the selector ----------------------------------------------------------------------------

    def register(self) -> None:
        if not self.registered:
            events = selectors.EVENT_WRITE if self.wants_write else selectors.EVENT_READ
            self.sel.register(self.sock, events, self)
            self.registered = True

    def unregister(self) -> None:
        if self.registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(self.sock)
            self.registered = False

    def want_write(self, want: bool) -> None:
        if self.wants_write != want:
            self.wants_write = want
            if self.registered:
                events = selectors.EVENT_WRITE if want else selectors.EVENT_READ
                self.sel.modify(self.sock, events, self)

    def close(self) -> None:
        self.unregister()
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- the socket ------------------------------------------------------------------------------

    def handshake(self, now: float) -> str | None:
        """One step of the TLS handshake; the reason when it failed, else None (finished, or
        waiting for the peer: ``handshaking`` says which)."""
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.want_write(False)
            return None
        except ssl.SSLWantWriteError:
            self.want_write(True)
            return None
        except (ssl.SSLError, OSError) as exc:
            return describe(exc)
        self.handshaking = False
        self.last_active = now
        self.want_write(False)
        self.more = True  # the client's first records may already be decrypted and waiting
        return None

    def read(self) -> Read:
        """One read of at most READ_BYTES (for TLS, as many records as fit in it)."""
        chunks: list[bytes] = []
        total = 0
        sock = self.sock
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self.more = False
        while total < READ_BYTES:
            try:
                data = sock.recv(READ_BYTES - total)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self.want_write(False)
                break
            except ssl.SSLWantWriteError:  # TLS must write before it can read on (rare)
                self.want_write(True)
                break
            except (ssl.SSLError, OSError) as exc:
                return Read(chunks, False, f"connection failed: {describe(exc)}")
            self.want_write(False)
            if not data:
                return Read(chunks, True, None)
            chunks.append(data)
            total += len(data)
            if tls is None or tls.pending() == 0:
                break
        if tls is not None and total >= READ_BYTES:
            self.more = tls.pending() > 0
        return Read(chunks, False, None)
