"""Reference ILA-SOC receiver: the server side of the agent wire protocol, standard library only.

Used by tests, benchmarks and the demo. Everything is stored in SQLite (in memory by default).

Agent endpoints (POST, JSON object body, header ``X-API-Key`` unless the key is ``None``):

- ``/api/agent/register``      store or update the agent → 200 ``{"status": "success"}``
- ``/api/agent/heartbeat``     store the heartbeat; 404 when the agent is not registered
- ``/api/agent/ingest-batch``  store the entries, de-duplicated by ``event_uid``; 404 when the
  agent is not registered → 200 ``{"status", "total", "inserted", "duplicates"}``

Missing or wrong key → 401; unusable body or missing ``agent_id``/``logs`` → 400. Every request to
a non-admin path is recorded, in arrival order, in a request log.

Admin endpoints (no key; meant for loopback — do not expose them):

- GET ``/api/receiver/stats``                  counters
- GET ``/api/receiver/events?after=&limit=``   stored events, by id
- GET ``/api/receiver/requests?after=&limit=`` the request log
- GET ``/api/receiver/heartbeats?after=``, ``/batches?after=``, ``/agents``, ``/config``
- POST ``/api/receiver/script``  ``{"endpoint", "responses": [{"status", "headers", "delay",
  "body", "drop"}]}``: the next requests to that endpoint get these answers, nothing is stored
- POST ``/api/receiver/config``  any of ``reject_substring``, ``max_batch``, ``delay``,
  ``accept_gzip``, ``forget_agents``, ``reset``

Run it: ``python -m ila_agent.receiver --port 8787 --api-key KEY --db receiver.db``.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import signal
import socket
import socketserver
import sqlite3
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ENDPOINTS",
    "Receiver",
    "ReceiverConfig",
    "ReceiverHandler",
    "ReceiverServer",
    "ScriptedResponse",
    "main",
    "make_server",
    "serve",
]

ENDPOINTS = ("register", "heartbeat", "ingest-batch")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_API_KEY = "change-me"
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_DELAY_S = 3600.0
EVENTS_LIMIT = (1000, 10000)  # (default, maximum) for GET .../events
LOG_LIMIT = (10000, 100000)  # (default, maximum) for the other GET lists

_AGENT_PATHS = {f"/api/agent/{name}": name for name in ENDPOINTS}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_INVALID_KEY = {"status": "error", "message": "invalid api key"}
_NOT_REGISTERED = {"status": "error", "message": "agent not registered"}
_SUCCESS = {"status": "success"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY, hostname TEXT, os_type TEXT, os_version TEXT,
    agent_version TEXT, sources TEXT, body TEXT, registered_at REAL,
    registrations INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS heartbeats (
    id INTEGER PRIMARY KEY, agent_id TEXT, received_at REAL, body TEXT);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY, agent_id TEXT, batch_id TEXT, idempotency_key TEXT,
    n_logs INTEGER, inserted INTEGER, duplicates INTEGER, received_at REAL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, event_uid TEXT UNIQUE, agent_id TEXT, batch_id TEXT, source TEXT,
    log_text TEXT, timestamp TEXT, hostname TEXT, entry TEXT, received_at REAL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, endpoint TEXT, status INTEGER, agent_id TEXT, n_logs INTEGER,
    batch_id TEXT, idempotency_key TEXT, scripted INTEGER NOT NULL DEFAULT 0,
    at REAL, mono REAL);
"""
_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (event_uid, agent_id, batch_id, source, log_text, timestamp,"
    " hostname, entry, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_AGENT = (
    "INSERT INTO agents (agent_id, hostname, os_type, os_version, agent_version, sources, body,"
    " registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent_id) DO UPDATE SET"
    " hostname = excluded.hostname, os_type = excluded.os_type,"
    " os_version = excluded.os_version, agent_version = excluded.agent_version,"
    " sources = excluded.sources, body = excluded.body, registered_at = excluded.registered_at,"
    " registrations = registrations + 1"
)


class _HttpError(Exception):
    """An answer decided before the request reaches the receiver logic."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ScriptedResponse:
    """One scripted answer: sent instead of processing the request (nothing is stored)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: Any = None
    drop: bool = False  # close the connection with a TCP reset instead of answering

    @classmethod
    def from_json(cls, item: Any) -> ScriptedResponse:
        """Validate one item of a script's ``responses`` list."""
        if not isinstance(item, dict):
            raise ValueError("each scripted response must be an object")
        unknown = sorted(set(item) - {"status", "headers", "delay", "body", "drop"})
        if unknown:
            raise ValueError(f"unknown scripted response keys: {', '.join(unknown)}")
        drop = item.get("drop", False)
        if not isinstance(drop, bool):
            raise ValueError("drop must be a boolean")
        status: Any = item.get("status")
        if not drop and not (_is_int(status) and 200 <= status <= 599):
            raise ValueError("status must be an integer from 200 to 599")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError("headers must be an object")
        clean: dict[str, str] = {}
        for name, value in headers.items():
            text = str(value)
            if not name or any(c in f"{name}{text}" for c in "\r\n") or ":" in name:
                raise ValueError(f"invalid header {name!r}")
            clean[name] = text
        return cls(
            status=status if _is_int(status) else 0,
            headers=clean,
            delay=_delay(item.get("delay", 0.0), "delay"),
            body=item.get("body"),
            drop=drop,
        )


@dataclass(frozen=True)
class ReceiverConfig:
    """Fault-injection settings, changed with POST /api/receiver/config."""

    reject_substring: str | None = None  # a batch with an entry containing it → 400
    max_batch: int | None = None  # a batch with more logs → 413
    delay: float = 0.0  # seconds to wait before handling every ingest-batch
    accept_gzip: bool = True  # False: a gzip body is a 400, like the existing Flask server


class Receiver:
    """The receiver's state and logic, independent of HTTP: SQLite store, config and scripts."""

    def __init__(self, api_key: str | None = DEFAULT_API_KEY, db_path: str | None = None) -> None:
        self.api_key = api_key
        self.db_path = None if db_path in (None, ":memory:") else _abspath(db_path)
        self.config = ReceiverConfig()
        self.stopping = threading.Event()
        self._scripts: dict[str, deque[ScriptedResponse]] = {name: deque() for name in ENDPOINTS}
        self._state_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = _open_db(self.db_path)
        self._counts = self._load_counts()

    # -- life cycle -------------------------------------------------------------------------

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, returning early when the receiver is closing."""
        if seconds > 0:
            self.stopping.wait(seconds)

    def close(self) -> None:
        """Stop waiting requests and close the database; closing twice is fine."""
        self.stopping.set()
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("receiver is closed")
        return self._conn

    def _load_counts(self) -> dict[str, int]:
        db = self._db()

        def one(sql: str) -> int:
            return int(db.execute(sql).fetchone()[0] or 0)

        return {
            "agents": one("SELECT COUNT(*) FROM agents"),
            "heartbeats": one("SELECT COUNT(*) FROM heartbeats"),
            "batches": one("SELECT COUNT(*) FROM batches"),
            "events_received": one("SELECT SUM(n_logs) FROM batches"),
            "events_unique": one("SELECT COUNT(*) FROM events"),
            "requests": one("SELECT COUNT(*) FROM requests"),
        }

    # -- scripts and config -----------------------------------------------------------------

    def add_script(self, endpoint: Any, responses: Any) -> int:
        """Append scripted answers for ``endpoint``; return how many are now pending for it."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of: {', '.join(ENDPOINTS)}")
        if not isinstance(responses, list):
            raise ValueError("responses must be a list")
        parsed = [ScriptedResponse.from_json(item) for item in responses]
        with self._state_lock:
            self._scripts[endpoint].extend(parsed)
            return len(self._scripts[endpoint])

    def pop_script(self, endpoint: str) -> ScriptedResponse | None:
        """Take the next scripted answer for ``endpoint``, if any."""
        with self._state_lock:
            queue = self._scripts.get(endpoint)
            return queue.popleft() if queue else None

    def pending_scripts(self) -> dict[str, int]:
        """How many scripted answers are left, per endpoint."""
        with self._state_lock:
            return {name: len(queue) for name, queue in self._scripts.items()}

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply a POST /api/receiver/config body (all or nothing); return the new config."""
        keys = {"reject_substring", "max_batch", "delay", "accept_gzip", "forget_agents", "reset"}
        unknown = sorted(set(changes) - keys)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        updates: dict[str, Any] = {}
        if "reject_substring" in changes:
            value = changes["reject_substring"]
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError("reject_substring must be a non-empty string or null")
            updates["reject_substring"] = value
        if "max_batch" in changes:
            value = changes["max_batch"]
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError("max_batch must be a positive integer or null")
            updates["max_batch"] = value
        if "delay" in changes:
            updates["delay"] = _delay(changes["delay"], "delay")
        for flag in ("accept_gzip", "forget_agents", "reset"):
            if flag in changes and not isinstance(changes[flag], bool):
                raise ValueError(f"{flag} must be a boolean")
        if "accept_gzip" in changes:
            updates["accept_gzip"] = changes["accept_gzip"]
        with self._state_lock:
            base = self.config
            if changes.get("reset"):
                base = ReceiverConfig()
                for queue in self._scripts.values():
                    queue.clear()
            self.config = replace(base, **updates)
            config = asdict(self.config)
        if changes.get("forget_agents"):
            with self._db_lock, self._db() as db:
                db.execute("DELETE FROM agents")
                self._counts["agents"] = 0
        return config

    # -- the agent endpoints ----------------------------------------------------------------

    def check_key(self, presented: str | None) -> bool:
        """Whether ``presented`` (the X-API-Key header) is accepted."""
        if self.api_key is None:
            return True
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self.api_key.encode())

    def handle(
        self,
        endpoint: str,
        payload: dict[str, Any] | None,
        *,
        api_key: str | None,
        idempotency_key: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Answer one agent request; ``payload`` is None when the body was not a JSON object."""
        if endpoint == "ingest-batch":
            self.wait(self.config.delay)
        if not self.check_key(api_key):
            return 401, _INVALID_KEY
        if payload is None:
            return 400, _error("invalid json")
        agent_id = payload.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            return 400, _error("agent_id is required")
        if endpoint == "register":
            return self._register(agent_id, payload)
        if endpoint == "heartbeat":
            return self._heartbeat(agent_id, payload)
        if endpoint == "ingest-batch":
            return self._ingest(agent_id, payload, idempotency_key)
        return 404, _error("not found")

    def _register(self, agent_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        sources = payload.get("sources")
        row = (
            agent_id,
            _text(payload.get("hostname")),
            _text(payload.get("os_type")),
            _text(payload.get("os_version")),
            _text(payload.get("agent_version")),
            None if sources is None else _ENCODER.encode(sources),
            _ENCODER.encode(payload),
            time.time(),
        )
        with self._db_lock:
            db = self._db()
            known = self._is_registered(db, agent_id)
            with db:
                db.execute(_UPSERT_AGENT, row)
            if not known:
                self._counts["agents"] += 1
        return 200, _SUCCESS

    def _heartbeat(self, agent_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = _ENCODER.encode(payload)
        with self._db_lock:
            db = self._db()
            if not self._is_registered(db, agent_id):
                return 404, _NOT_REGISTERED
            with db:
                db.execute(
                    "INSERT INTO heartbeats (agent_id, received_at, body) VALUES (?, ?, ?)",
                    (agent_id, time.time(), body),
                )
            self._counts["heartbeats"] += 1
        return 200, _SUCCESS

    def _ingest(
        self, agent_id: str, payload: dict[str, Any], idempotency_key: str | None
    ) -> tuple[int, dict[str, Any]]:
        logs = payload.get("logs")
        if not isinstance(logs, list) or not logs:
            return 400, _error("logs must be a non-empty list")
        config = self.config
        total = len(logs)
        if config.max_batch is not None and total > config.max_batch:
            return 413, _error(f"batch too large: {total} logs, at most {config.max_batch}")
        batch_id = _text(payload.get("batch_id"))
        now = time.time()
        rows, rejected = _event_rows(logs, agent_id, batch_id, now, config.reject_substring)
        with self._db_lock:
            db = self._db()
            if not self._is_registered(db, agent_id):
                return 404, _NOT_REGISTERED
            if rejected is not None:
                return 400, _error(f"entry {rejected} rejected")
            with db:
                before = db.total_changes
                db.executemany(_INSERT_EVENT, rows)
                inserted = db.total_changes - before
                db.execute(
                    "INSERT INTO batches (agent_id, batch_id, idempotency_key, n_logs, inserted,"
                    " duplicates, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (agent_id, batch_id, idempotency_key, total, inserted, total - inserted, now),
                )
            self._counts["batches"] += 1
            self._counts["events_received"] += total
            self._counts["events_unique"] += inserted
        return 200, {
            "status": "success",
            "total": total,
            "inserted": inserted,
            "duplicates": total - inserted,
        }

    @staticmethod
    def _is_registered(db: sqlite3.Connection, agent_id: str) -> bool:
        sql = "SELECT 1 FROM agents WHERE agent_id = ?"
        return db.execute(sql, (agent_id,)).fetchone() is not None

    # -- the request log --------------------------------------------------------------------

    def log_request(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        agent_id: str | None = None,
        n_logs: int | None = None,
        batch_id: str | None = None,
        idempotency_key: str | None = None,
        at: float | None = None,
        mono: float | None = None,
    ) -> int:
        """Record a request on arrival (``status`` None until answered); return its id."""
        row = (
            endpoint,
            status,
            agent_id,
            n_logs,
            batch_id,
            idempotency_key,
            time.time() if at is None else at,
            time.monotonic() if mono is None else mono,
        )
        with self._db_lock:
            db = self._db()
            with db:
                cursor = db.execute(
                    "INSERT INTO requests (endpoint, status, agent_id, n_logs, batch_id,"
                    " idempotency_key, at, mono) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            self._counts["requests"] += 1
            return int(cursor.lastrowid or 0)

    def finish_request(self, request_id: int, status: int, *, scripted: bool = False) -> None:
        """Record the status answered to a logged request (0: connection dropped, no answer)."""
        with self._db_lock:
            db = self._db()
            with db:
                db.execute(
                    "UPDATE requests SET status = ?, scripted = ? WHERE id = ?",
                    (status, int(scripted), request_id),
                )

    # -- inspection -------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters: agents, heartbeats, batches, events_received, events_unique, requests."""
        with self._db_lock:
            return dict(self._counts)

    def events(self, after: int = 0, limit: int = EVENTS_LIMIT[0]) -> list[dict[str, Any]]:
        """Stored events with id > ``after``, by id."""
        rows = self._select(
            "SELECT id, event_uid, source, log_text, timestamp, hostname, agent_id, batch_id,"
            " entry FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        keys: tuple[str, ...] = (
            "id",
            "event_uid",
            "source",
            "log_text",
            "timestamp",
            "hostname",
            "agent_id",
        )
        keys += ("batch_id", "entry")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for item in out:
            item["entry"] = json.loads(item["entry"])
        return out

    def request_log(self, after: int = 0, limit: int = LOG_LIMIT[0]) -> list[dict[str, Any]]:
        """Logged agent requests with id > ``after``, in arrival order."""
        keys: tuple[str, ...] = ("id", "endpoint", "status", "agent_id", "n_logs", "batch_id")
        keys += ("idempotency_key", "scripted", "at", "mono")
        rows = self._select(
            f"SELECT {', '.join(keys)} FROM requests WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for item in out:
            item["scripted"] = bool(item["scripted"])
        return out

    def heartbeats(self, after: int = 0, limit: int = LOG_LIMIT[0]) -> list[dict[str, Any]]:
        """Stored heartbeats with id > ``after``: id, agent_id, received_at and the body."""
        rows = self._select(
            "SELECT id, agent_id, received_at, body FROM heartbeats WHERE id > ? ORDER BY id"
            " LIMIT ?",
            (after, limit),
        )
        return [
            {"id": r[0], "agent_id": r[1], "received_at": r[2], "body": json.loads(r[3])}
            for r in rows
        ]

    def batches(self, after: int = 0, limit: int = LOG_LIMIT[0]) -> list[dict[str, Any]]:
        """Accepted batches with id > ``after``, with their Idempotency-Key."""
        keys: tuple[str, ...] = (
            "id",
            "agent_id",
            "batch_id",
            "idempotency_key",
            "n_logs",
            "inserted",
        )
        keys += ("duplicates", "received_at")
        rows = self._select(
            f"SELECT {', '.join(keys)} FROM batches WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def agents(self) -> list[dict[str, Any]]:
        """Registered agents, by agent_id."""
        keys: tuple[str, ...] = (
            "agent_id",
            "hostname",
            "os_type",
            "os_version",
            "agent_version",
            "sources",
        )
        keys += ("registered_at", "registrations")
        rows = self._select(f"SELECT {', '.join(keys)} FROM agents ORDER BY agent_id", ())
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for item in out:
            item["sources"] = None if item["sources"] is None else json.loads(item["sources"])
        return out

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._db_lock:
            return self._db().execute(sql, params).fetchall()


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
                self._send_json(404, _error("not found"))
        except _HttpError as exc:
            self._send_json(exc.status, _error(exc.message))
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
                self._send_json(404, _error("not found"))
        except _HttpError as exc:
            self._send_json(exc.status, _error(exc.message))
        except ValueError as exc:  # invalid JSON or an invalid script/config
            self._send_json(400, _error(str(exc) or "invalid request"))

    def _agent_post(self, path: str) -> None:
        rec = self.server.receiver
        at, mono = time.time(), time.monotonic()
        endpoint = _AGENT_PATHS.get(path)
        name = endpoint or path
        try:
            payload = self._agent_payload(self._read_body())
        except _HttpError as exc:
            rec.log_request(name, status=exc.status, at=at, mono=mono)
            self._send_json(exc.status, _error(exc.message))
            return
        payload = payload if endpoint is not None else None
        info = payload or {}
        logs = info.get("logs")
        idempotency_key = self.headers.get("Idempotency-Key")
        request_id = rec.log_request(
            name,
            agent_id=_text(info.get("agent_id")),
            n_logs=len(logs) if isinstance(logs, list) else None,
            batch_id=_text(info.get("batch_id")),
            idempotency_key=idempotency_key,
            at=at,
            mono=mono,
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
            status, answer = 404, _error("not found")
        else:
            status, answer = rec.handle(
                endpoint,
                payload,
                api_key=self.headers.get("X-API-Key"),
                idempotency_key=idempotency_key,
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
        self._send(status, _ENCODER.encode(obj).encode(), "application/json", headers or {})

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
            body = _SUCCESS if ok else _error(f"scripted {scripted.status}")
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
            self._send_json(500, _error("internal error"))


# -- helpers ----------------------------------------------------------------------------------


def _error(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _delay(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds")
    if not 0 <= value <= MAX_DELAY_S:
        raise ValueError(f"{name} must be between 0 and {MAX_DELAY_S:g} seconds")
    return float(value)


def _text(value: Any) -> str | None:
    """A value as stored in a TEXT column: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return _ENCODER.encode(value)


def _event_rows(
    logs: list[Any], agent_id: str, batch_id: str | None, now: float, reject: str | None
) -> tuple[list[tuple[Any, ...]], int | None]:
    """Rows for the events table, and the index of the first rejected entry (or None)."""
    rows = []
    rejected = None
    for index, entry in enumerate(logs):
        entry_json = _ENCODER.encode(entry)
        if isinstance(entry, dict):
            log_text = entry.get("log_text")
            log_text = entry_json if log_text is None else _text(log_text)
            uid = entry.get("event_uid")
            uid = _text(uid) if uid not in (None, "") else None
            source = _text(entry.get("source"))
            timestamp = _text(entry.get("timestamp"))
            hostname = _text(entry.get("hostname"))
        else:
            log_text = entry if isinstance(entry, str) else entry_json
            uid = source = timestamp = hostname = None
        if reject is not None and rejected is None and reject in (log_text or ""):
            rejected = index
        row = (uid, agent_id, batch_id, source, log_text, timestamp, hostname, entry_json, now)
        rows.append(row)
    return rows, rejected


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


def _abspath(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _open_db(path: str | None) -> sqlite3.Connection:
    """One connection shared by all threads (callers hold the lock); files are mode 0600."""
    if path is None:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
    else:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    if path is not None:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(path + suffix, 0o600)
    return conn


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


def main(argv: list[str] | None = None) -> int:
    """``python -m ila_agent.receiver``: parse the command line and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m ila_agent.receiver", description="Reference ILA-SOC receiver."
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ILA_RECEIVER_API_KEY", DEFAULT_API_KEY),
        help=f"expected X-API-Key (default: $ILA_RECEIVER_API_KEY, else {DEFAULT_API_KEY!r})",
    )
    parser.add_argument("--no-auth", action="store_true", help="accept any or no X-API-Key")
    parser.add_argument("--db", default=None, help="SQLite file (default: in memory)")
    parser.add_argument("--ready-file", default=None, help="write the bound port here")
    args = parser.parse_args(argv)
    api_key = None if args.no_auth else args.api_key
    return serve(args.host, args.port, api_key, args.db, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
