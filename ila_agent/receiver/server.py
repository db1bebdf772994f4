"""The reference receiver's HTTP front: the server, the handler, and ``serve``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ila_agent.receiver.faults import ScriptedResponse
from ila_agent.receiver.state import (
    AGENT_PATHS,
    DEFAULT_API_KEY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENCODER,
    EVENTS_LIMIT,
    LOG_LIMIT,
    MAX_BODY_BYTES,
    SUCCESS,
    Receiver,
    as_text,
    error_body,
)


class _HttpError(Exception):
    """An answer decided before the request reaches the receiver logic."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ReceiverServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer bound to a :class:`Receiver`; closing it drops open connections."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        receiver: Receiver,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.receiver = receiver
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ReceiverHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, wrap the socket (the handshake runs in the handler thread)."""
        conn, addr = super().get_request()
        if self.ssl_context is not None:
            conn = self.ssl_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
        return conn, addr

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS look-up of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of this receiver."""
        host = str(self.server_address[0])
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def track(self, conn: socket.socket, *, add: bool) -> None:
        """Remember (or forget) an open client connection."""
        with self._connections_lock:
            if not add:
                self._connections.discard(conn)
            elif not self.receiver.stopping.is_set():
                self._connections.add(conn)
                return
        if add:  # accepted while closing: drop it at once
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        """Close the listening socket, every open connection and the receiver; idempotent."""
        super().server_close()
        self.receiver.stopping.set()
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.receiver.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients going away and errors while closing; report anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or self.receiver.stopping.is_set():
            return
        super().handle_error(request, client_address)


class ReceiverHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) front of the receiver."""

    protocol_version = "HTTP/1.1"
    server_version = "ila-soc-receiver"
    sys_version = ""
    disable_nagle_algorithm = True
    server: ReceiverServer

    def setup(self) -> None:
        """Track the connection so that closing the server can drop it."""
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        """Forget the connection."""
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep http.server's per-request stderr logging off."""

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        """Admin GET endpoints."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        rec = self.server.receiver
        prefix = "/api/receiver/"
        name = parts.path[len(prefix) :] if parts.path.startswith(prefix) else ""
        try:
            if name == "stats":
                self._send_json(200, rec.stats())
            elif name in ("events", "requests", "heartbeats", "batches"):
                default, maximum = EVENTS_LIMIT if name == "events" else LOG_LIMIT
                after = _int_param(query, "after", 0, minimum=0)
                limit = min(_int_param(query, "limit", default, minimum=1), maximum)
                lister = {
                    "events": rec.events,
                    "requests": rec.request_log,
                    "heartbeats": rec.heartbeats,
                    "batches": rec.batches,
                }[name]
                self._send_json(200, {name: lister(after, limit)})
            elif name == "agents":
                self._send_json(200, {"agents": rec.agents()})
            elif name == "config":
                config = asdict(rec.config)
                self._send_json(200, {"config": config, "scripts": rec.pending_scripts()})
            else:
                self._send_json(404, error_body("not found"))
        except _HttpError as exc:
            self._send_json(exc.status, error_body(exc.message))
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            self._internal_error()

    def do_POST(self) -> None:
        """Agent endpoints, and the admin POST endpoints."""
        path = urlsplit(self.path).path
        try:
            if path.startswith("/api/receiver/"):
                self._admin_post(path)
            else:
                self._agent_post(path)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away
        except Exception:
            self._internal_error()

    def _admin_post(self, path: str) -> None:
        rec = self.server.receiver
        try:
            raw = self._read_body()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise _HttpError(400, "body must be a JSON object")
            if path == "/api/receiver/script":
                pending = rec.add_script(body.get("endpoint"), body.get("responses"))
                self._send_json(200, {"status": "success", "pending": pending})
            elif path == "/api/receiver/config":
                self._send_json(200, {"status": "success", "config": rec.configure(body)})
            else:
                self._send_json(404, error_body("not found"))
        except _HttpError as exc:
            self._send_json(exc.status, error_body(exc.message))
        except ValueError as exc:  # invalid JSON or an invalid script/config
            self._send_json(400, error_body(str(exc) or "invalid request"))

    def _agent_post(self, path: str) -> None:
        rec = self.server.receiver
        at, mono = time.time(), time.monotonic()
        endpoint = AGENT_PATHS.get(path)
        name = endpoint or path
        try:
            raw = self._read_body()
            payload = self._agent_payload(raw)
        except _HttpError as exc:
            rec.log_request(name, status=exc.status, at=at, mono=mono)
            self._send_json(exc.status, error_body(exc.message))
            return
        payload = payload if endpoint is not None else None
        info = payload or {}
        logs = info.get("logs")
        idempotency_key = self.headers.get("Idempotency-Key")
        request_id = rec.log_request(
            name,
            agent_id=as_text(info.get("agent_id")),
            n_logs=len(logs) if isinstance(logs, list) else None,
            batch_id=as_text(info.get("batch_id")),
            idempotency_key=idempotency_key,
            at=at,
            mono=mono,
            body_bytes=len(raw),
        )
        scripted = rec.pop_script(endpoint) if endpoint is not None else None
        if scripted is not None:
            rec.wait(scripted.delay)
            rec.finish_request(request_id, 0 if scripted.drop else scripted.status, scripted=True)
            if scripted.drop:
                self._drop_connection()
            else:
                self._send_scripted(scripted)
            return
        if endpoint is None:
            status, answer = 404, error_body("not found")
        else:
            with rec.ingest_slot() if endpoint == "ingest-batch" else _admitted() as admitted:
                status, answer = (
                    rec.handle(
                        endpoint,
                        payload,
                        api_key=self.headers.get("X-API-Key"),
                        idempotency_key=idempotency_key,
                    )
                    if admitted
                    else (503, error_body("too many requests at once"))
                )
        rec.finish_request(request_id, status)
        self._send_json(status, answer)

    # -- request bodies ---------------------------------------------------------------------

    def _read_body(self) -> bytes:
        """The request body (Content-Length or chunked), at most MAX_BODY_BYTES."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _HttpError(400, "invalid content-length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _HttpError(413, "body too large")
        data = self.rfile.read(length)
        if len(data) < length:
            raise ConnectionResetError("client closed the connection mid-body")
        return data

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _HttpError(400, "invalid chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise _HttpError(413, "body too large")
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ConnectionResetError("client closed the connection mid-body")
            chunks.append(chunk)
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _agent_payload(self, raw: bytes) -> dict[str, Any] | None:
        """Parse like Flask's ``get_json(silent=True)``: None unless a JSON object."""
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        is_json = content_type == "application/json" or (
            content_type.startswith("application/") and content_type.endswith("+json")
        )
        if not is_json:
            return None
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            if not self.server.receiver.config.accept_gzip:
                return None
            decompressor = zlib.decompressobj(wbits=31)
            try:
                raw = decompressor.decompress(raw, MAX_BODY_BYTES)
            except zlib.error:
                return None
            if decompressor.unconsumed_tail:
                raise _HttpError(413, "body too large")
        elif encoding not in ("", "identity"):
            return None
        try:
            payload = json.loads(raw)
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None

    # -- answers ----------------------------------------------------------------------------

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, ENCODER.encode(obj).encode(), "application/json", headers or {})

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        names = {name.lower() for name in headers}
        no_body = status in (204, 304)
        if not no_body:
            if "content-type" not in names:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        if self.close_connection and "connection" not in names:
            self.send_header("Connection", "close")
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    def _send_scripted(self, scripted: ScriptedResponse) -> None:
        body = scripted.body
        if body is None:
            ok = 200 <= scripted.status < 300
            body = SUCCESS if ok else error_body(f"scripted {scripted.status}")
        if isinstance(body, str):
            text_type = "text/plain; charset=utf-8"
            self._send(scripted.status, body.encode(), text_type, scripted.headers)
        else:
            self._send_json(scripted.status, body, scripted.headers)

    def _drop_connection(self) -> None:
        """Close the connection with a TCP reset instead of answering."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # really closed (reset) once rfile is closed in finish()

    def _internal_error(self) -> None:
        self.close_connection = True
        if self.server.receiver.stopping.is_set():
            return
        traceback.print_exc(file=sys.stderr)
        with contextlib.suppress(OSError):
            self._send_json(500, error_body("internal error"))


def _int_param(query: dict[str, list[str]], name: str, default: int, *, minimum: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _HttpError(400, f"{name} must be an integer") from None
    if value < minimum:
        raise _HttpError(400, f"{name} must be at least {minimum}")
    return value


@contextlib.contextmanager
def _admitted() -> Iterator[bool]:
    yield True


def make_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = DEFAULT_API_KEY,
    db_path: str | None = None,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
) -> ReceiverServer:
    """A bound, listening receiver; call ``serve_forever()`` (port 0 picks a free port).

    With ``tls_cert`` it speaks HTTPS; with ``tls_client_ca`` it also requires a client
    certificate signed by that CA (mutual TLS).
    """
    context = None
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
        if tls_client_ca:
            context.load_verify_locations(tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    receiver = Receiver(api_key=api_key, db_path=db_path)
    try:
        return ReceiverServer((host, port), receiver, context)
    except BaseException:
        receiver.close()
        raise


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a temporary file and os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".receiver-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = DEFAULT_API_KEY,
    db_path: str | None = None,
    ready_file: str | None = None,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (then return 0); 1 when the address cannot be bound."""
    try:
        server = make_server(
            host, port, api_key, db_path,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
        )  # fmt: skip
    except OSError as exc:
        print(f"receiver: cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: no signal handling
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="receiver", daemon=True)
    try:
        thread.start()
        db = server.receiver.db_path or ":memory:"
        print(f"receiver listening on {server.url} db={db}", flush=True)
        if ready_file:
            _write_atomically(ready_file, f"{server.port}\n")
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
