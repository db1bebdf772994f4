"""A server that misbehaves at the socket level, for the agent's tests: raw sockets, no
http.server, so every byte it sends (or does not send) is chosen here.

It answers register and heartbeat with 200. An ingest-batch gets the misbehaviour of the
current ``mode`` for the first ``bad_answers`` requests, then a proper 200; only batches
answered with a proper 200 are recorded as accepted (``accepted``: every log_text).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field

MODES = (
    "not_json",  # 200 with an HTML body
    "close_mid_answer",  # headers and part of the body, then the connection closes
    "trickle_headers",  # the status line and headers one byte a second
    "huge_body",  # 200 with a 100 MB body
    "http10_close",  # HTTP/1.0, the connection closed after every answer
)
HUGE_BODY = 100 * 1024 * 1024
OK_BODY = b'{"status":"success"}'


@dataclass
class BadServer:
    """One listening socket on 127.0.0.1; ``stop`` closes it and every connection."""

    mode: str
    bad_answers: int = 1
    tls: ssl.SSLContext | None = None
    accepted: list[str] = field(default_factory=list)
    bad_sent: int = 0
    huge_bytes_sent: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stopping = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        for c in list(self._conns):
            with contextlib.suppress(OSError):
                c.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            reader = conn.makefile("rb")
            while not self._stopping.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                path, body = request
                if not self._answer(conn, path, body):
                    return
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: socket.socket, path: str, body: bytes) -> bool:
        """Answer one request; False when the connection is to be closed."""
        http10 = self.mode == "http10_close"
        if not path.endswith("/ingest-batch"):
            _send(conn, 200, OK_BODY, http10=http10)
            return not http10
        with self._lock:
            self.requests += 1
            misbehave = self.bad_sent < self.bad_answers
            if misbehave:
                self.bad_sent += 1
        if misbehave and self.mode == "not_json":
            self._record(body)  # a 2xx is acceptance, whatever its body says
            _send(conn, 200, b"<html><body>Service OK</body></html>", ctype="text/html")
            return True
        if misbehave and self.mode == "close_mid_answer":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
                b'\r\n{"status":'
            )
            return False
        if misbehave and self.mode == "trickle_headers":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
                if self._stopping.wait(1.0):
                    return False
                conn.sendall(bytes([byte]))
            return False  # never finishes the answer: the agent must give up on its own
        if misbehave and self.mode == "huge_body":
            self._record(body)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {HUGE_BODY}\r\n\r\n".encode()
            )
            block = b" " * 65536
            sent = 0
            with contextlib.suppress(OSError):
                while sent < HUGE_BODY:
                    conn.sendall(block)
                    sent += len(block)
            with self._lock:
                self.huge_bytes_sent += sent
            return False
        self._record(body)
        _send(conn, 200, OK_BODY, http10=http10)
        return not http10

    def _record(self, body: bytes) -> None:
        logs = json.loads(body)["logs"]
        with self._lock:
            self.accepted.extend(e["log_text"] for e in logs)


def _read_request(reader) -> tuple[str, bytes] | None:  # type: ignore[no-untyped-def]
    line = reader.readline(65536)
    if not line:
        return None
    _method, path, _version = line.decode("latin-1").split(" ", 2)
    length = 0
    while True:
        header = reader.readline(65536)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return path, reader.read(length)


def _send(
    conn: socket.socket, status: int, body: bytes, *, ctype: str = "application/json",
    http10: bool = False,
) -> None:  # fmt: skip
    version = "HTTP/1.0" if http10 else "HTTP/1.1"
    head = f"{version} {status} OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
    if http10:
        head += "Connection: close\r\n"
    conn.sendall(head.encode() + b"\r\n" + body)
