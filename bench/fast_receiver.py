#!/usr/bin/env python3
"""A fast, threaded, standard-library ILA-SOC receiver for ``bench/vs_syslogng.py``.

It does no storage and no de-duplication: it answers, and it counts. For every accepted
``POST /api/agent/ingest-batch`` it parses the JSON body, takes each ``logs[i].log_text``, pulls
the input line's ``seq=NNNNNNNNN`` out of it and records how often each sequence number arrived
(unique, duplicated, the time the last new one arrived). ``register`` and ``heartbeat`` answer
200 ``{"status":"success"}``. Faults for the benchmark's scenarios: a delay before every answer,
a seeded random share of 503 answers to ingest-batch (with or without ``Retry-After``), and an
outage (the listening socket is closed, so connections are refused; it comes back on the same
port).

Used in process by ``vs_syslogng.py``. Run as a script it is the capacity load client:

    python bench/fast_receiver.py load --port PORT [--threads 4] [--seconds 2]

which POSTs pre-encoded 500-line bodies over keep-alive connections and prints one JSON object
(lines accepted, seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
INGEST_PATH = "/api/agent/ingest-batch"
CONTROL_PATHS = frozenset({"/api/agent/register", "/api/agent/heartbeat"})
SEQ_TAG = "seq="
SEQ_DIGITS = 9
COUNT_CAP = 255  # per-seq arrival counter is one byte
SERVE_POLL_S = 0.05
LISTEN_BACKLOG = 128
OK_BODY = b'{"status":"success"}'
UNAVAILABLE_BODY = b'{"status":"error","message":"unavailable"}'
BAD_BODY = b'{"status":"error","message":"bad batch"}'
NOT_FOUND_BODY = b'{"status":"error","message":"not found"}'
LOAD_LINES_PER_BODY = 500
LOAD_BODIES = 16
LOAD_TIMEOUT_S = 10.0


def seq_of(text: str) -> int | None:
    """The sequence number in a line (``seq=`` + 9 digits), or None."""
    at = text.rfind(SEQ_TAG)
    if at < 0:
        return None
    digits = text[at + len(SEQ_TAG) : at + len(SEQ_TAG) + SEQ_DIGITS]
    return int(digits) if len(digits) == SEQ_DIGITS and digits.isdigit() else None


@dataclass
class Faults:
    """What the receiver does wrong, per scenario."""

    delay_s: float = 0.0
    fail_ratio: float = 0.0
    retry_after: str | None = None
    seed: int = 1


@dataclass(frozen=True)
class LedgerSnapshot:
    expected: int
    unique: int
    dup_lines: int  # distinct seq numbers received more than once
    dup_copies: int  # extra copies received in all
    foreign: int  # log_text without a seq in range
    accepted_requests: int
    rejected_requests: int  # 503 answers
    bad_requests: int
    first_at: float | None  # time.monotonic() of the first accepted line
    last_new_at: float | None  # time.monotonic() of the last line seen for the first time
    last_request_at: float | None  # time.monotonic() of the last ingest request (any answer)


@dataclass
class SeqLedger:
    """How often each sequence number 0..expected-1 arrived."""

    expected: int
    counts: bytearray = field(init=False)
    unique: int = 0
    dup_lines: int = 0
    dup_copies: int = 0
    foreign: int = 0
    accepted_requests: int = 0
    rejected_requests: int = 0
    bad_requests: int = 0
    connection_errors: int = 0
    first_at: float | None = None
    last_new_at: float | None = None
    last_request_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.counts = bytearray(self.expected)

    def record(self, texts: list[str]) -> None:
        seqs = [seq_of(t) for t in texts]
        now = time.monotonic()
        with self.lock:
            self.accepted_requests += 1
            self.last_request_at = now
            if self.first_at is None:
                self.first_at = now
            counts, fresh = self.counts, 0
            for s in seqs:
                if s is None or not 0 <= s < self.expected:
                    self.foreign += 1
                    continue
                c = counts[s]
                if c == 0:
                    fresh += 1
                else:
                    self.dup_copies += 1
                    if c == 1:
                        self.dup_lines += 1
                if c < COUNT_CAP:
                    counts[s] = c + 1
            if fresh:
                self.unique += fresh
                self.last_new_at = now

    def count_rejected(self) -> None:
        with self.lock:
            self.rejected_requests += 1
            self.last_request_at = time.monotonic()

    def count_connection_error(self) -> None:
        with self.lock:
            self.connection_errors += 1

    def count_bad(self) -> None:
        with self.lock:
            self.bad_requests += 1
            self.last_request_at = time.monotonic()

    def snapshot(self) -> LedgerSnapshot:
        with self.lock:
            return LedgerSnapshot(
                self.expected,
                self.unique,
                self.dup_lines,
                self.dup_copies,
                self.foreign,
                self.accepted_requests,
                self.rejected_requests,
                self.bad_requests,
                self.first_at,
                self.last_new_at,
                self.last_request_at,
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    receiver: FastReceiver

    def handle_error(self, request: object, client_address: object) -> None:
        """A client killed mid-request (kill -9, outage) is expected: count it, say nothing."""
        if isinstance(sys.exc_info()[1], OSError):
            self.receiver.ledger.count_connection_error()
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as both shippers use it
    server: _Server

    def setup(self) -> None:
        super().setup()
        # The answer's headers and body are two writes: without this, Nagle's algorithm and
        # the client's delayed ACK hold the second one back ~40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.receiver.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.receiver.untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        body = self._read_body()
        rcv = self.server.receiver
        faults = rcv.faults
        if faults.delay_s > 0:
            time.sleep(faults.delay_s)
        path = self.path.split("?", 1)[0]
        if path in CONTROL_PATHS:
            self._reply(200, OK_BODY)
        elif path != INGEST_PATH:
            self._reply(404, NOT_FOUND_BODY)
        elif rcv.should_fail():
            rcv.ledger.count_rejected()
            extra = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            self._reply(503, UNAVAILABLE_BODY, extra)
        else:
            texts = _log_texts(body)
            if texts is None:
                rcv.ledger.count_bad()
                self._reply(400, BAD_BODY)
                return
            rcv.ledger.record(texts)
            self._reply(200, b'{"status":"success","total":%d}' % len(texts))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def _log_texts(body: bytes) -> list[str] | None:
    try:
        doc = json.loads(body)
        return [str(entry["log_text"]) for entry in doc["logs"]]
    except (ValueError, KeyError, TypeError):
        return None


class FastReceiver:
    """The receiver: start(), down() / up() for an outage, reset() per run, stop()."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self.faults = Faults()
        self.ledger = SeqLedger(0)
        self._rng = random.Random(self.faults.seed)
        self._rng_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        self.up()

    def up(self) -> None:
        """Listen again (on the same port once one was chosen)."""
        if self._server is not None:
            return
        server = _Server((HOST, self._port), _Handler)
        server.receiver = self
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(SERVE_POLL_S,), name="fast-receiver", daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Close the listening socket and every open connection: new connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def stop(self) -> None:
        self.down()

    def configure(self, faults: Faults) -> None:
        self.faults = faults
        with self._rng_lock:
            self._rng = random.Random(faults.seed)

    def reset(self, expected: int) -> None:
        self.ledger = SeqLedger(expected)

    def should_fail(self) -> bool:
        ratio = self.faults.fail_ratio
        if ratio <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < ratio

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)


# -- the capacity load client ------------------------------------------------------------------


def encode_bodies(lines_per_body: int, bodies: int) -> list[bytes]:
    """Pre-encoded ingest-batch bodies with the shippers' line shape; seq 0..lines*bodies-1."""
    out: list[bytes] = []
    for b in range(bodies):
        logs = [
            {
                "log_text": f"2026-11-27T10:00:00.000Z web-01 sshd[1000]: Accepted publickey for"
                f" user001 from 10.0.0.1 port 20000 ssh2 seq={b * lines_per_body + i:09d}",
                "source": "/tmp/input.log",
                "timestamp": "2026-11-27T10:00:00.000Z",
            }
            for i in range(lines_per_body)
        ]
        out.append(json.dumps({"agent_id": "load", "logs": logs}).encode())
    return out


def _load_worker(
    port: int, bodies: list[bytes], lines: int, until: float, result: list[int]
) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=LOAD_TIMEOUT_S)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers, body: 2 writes
    headers = {"Content-Type": "application/json", "X-API-Key": "load"}
    sent = i = 0
    try:
        while time.monotonic() < until:
            conn.request("POST", INGEST_PATH, bodies[i % len(bodies)], headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                sent += lines
            i += 1
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
        result.append(sent)


def load(port: int, threads: int, seconds: float, lines_per_body: int) -> dict[str, float]:
    """POST pre-encoded bodies from ``threads`` keep-alive clients for ``seconds``."""
    bodies = encode_bodies(lines_per_body, LOAD_BODIES)
    result: list[int] = []
    start = time.monotonic()
    until = start + seconds
    workers = [
        threading.Thread(target=_load_worker, args=(port, bodies, lines_per_body, until, result))
        for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + LOAD_TIMEOUT_S + 5)
    elapsed = time.monotonic() - start
    lines = sum(result)
    return {"lines": lines, "seconds": elapsed, "lines_per_s": lines / elapsed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="capacity load client for the fast receiver")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("--port", type=int, required=True)
    lp.add_argument("--threads", type=int, default=4)
    lp.add_argument("--seconds", type=float, default=2.0)
    lp.add_argument("--lines-per-body", type=int, default=LOAD_LINES_PER_BODY)
    args = ap.parse_args(argv)
    print(json.dumps(load(args.port, args.threads, args.seconds, args.lines_per_body)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
