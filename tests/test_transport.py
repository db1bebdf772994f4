"""The HTTP transport against a real server on 127.0.0.1: what each request carries when
requests are built from a prepared template, and cookies the server sets."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from forwarder.transport import Transport, TransportSettings

KEY = "k3y-" + "x" * 28


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, dict[str, str], bytes]]
    set_cookie: str | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, dict(self.headers.items()), body))
        answer = b'{"status":"success"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if self.server.set_cookie:
            self.send_header("Set-Cookie", self.server.set_cookie)
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Recorder]:
    srv = _Recorder(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def transport(srv: _Recorder, **kw: Any) -> Transport:
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    settings = TransportSettings(
        server_url=url, api_key=KEY, user_agent="ua/1", connect_timeout=5, request_timeout=5, **kw
    )
    return Transport(settings)


def test_each_request_carries_its_own_body_and_key(server: _Recorder) -> None:
    """Requests built from one template: each has its body, its length and its
    Idempotency-Key (or none), never the previous request's."""
    t = transport(server)
    assert t.post("/api/agent/ingest-batch", b'{"a":1}', "id-1").status == 200
    assert t.post("/api/agent/ingest-batch", b'{"bb":22}', None).status == 200
    assert t.post("/api/agent/heartbeat", b"{}", "id-3").status == 200
    got = [(p, h.get("Idempotency-Key"), h["Content-Length"], b) for p, h, b in server.seen]
    assert got == [
        ("/api/agent/ingest-batch", "id-1", "7", b'{"a":1}'),
        ("/api/agent/ingest-batch", None, "9", b'{"bb":22}'),
        ("/api/agent/heartbeat", "id-3", "2", b"{}"),
    ]
    for _, headers, _ in server.seen:
        assert headers["X-API-Key"] == KEY
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == "ua/1"
        assert "Content-Encoding" not in headers
    t.close()


def test_gzip_body_and_length(server: _Recorder) -> None:
    """With compression, the body on the wire is the gzip of the JSON, and its length."""
    t = transport(server, compression="gzip")
    t.post("/api/agent/ingest-batch", b'{"logs":[]}' * 50, "id-1")
    ((_, headers, body),) = server.seen
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Length"] == str(len(body))
    assert gzip.decompress(body) == b'{"logs":[]}' * 50
    t.close()


def test_cookies_the_server_sets_are_sent_back(server: _Recorder) -> None:
    """A load balancer's sticky-session cookie comes back on the next requests."""
    t = transport(server)
    t.post("/api/agent/ingest-batch", b"{}", "id-1")
    server.set_cookie = "lb=node-2; Path=/"
    t.post("/api/agent/ingest-batch", b"{}", "id-2")
    t.post("/api/agent/ingest-batch", b"{}", "id-3")
    assert [h.get("Cookie") for _, h, _ in server.seen] == [None, None, "lb=node-2"]
    t.close()
