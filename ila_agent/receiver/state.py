"""The reference receiver's state and logic, independent of HTTP: SQLite, config, scripts."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

from ila_agent.receiver.faults import ReceiverConfig, ScriptedResponse, is_int, seconds

ENDPOINTS = ("register", "heartbeat", "ingest-batch")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_API_KEY = "change-me"
MAX_BODY_BYTES = 64 * 1024 * 1024
EVENTS_LIMIT = (1000, 10000)  # (default, maximum) for GET .../events
LOG_LIMIT = (10000, 100000)  # (default, maximum) for the other GET lists

AGENT_PATHS = {f"/api/agent/{name}": name for name in ENDPOINTS}
ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_INVALID_KEY = {"status": "error", "message": "invalid api key"}
_NOT_REGISTERED = {"status": "error", "message": "agent not registered"}
SUCCESS = {"status": "success"}

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
    at REAL, mono REAL, body_bytes INTEGER);
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
        self._ingest_now = 0
        self._ingest_peak = 0

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
        keys |= {"max_concurrent"}
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
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError("max_batch must be a positive integer or null")
            updates["max_batch"] = value
        if "delay" in changes:
            updates["delay"] = seconds(changes["delay"], "delay")
        if "max_concurrent" in changes:
            value = changes["max_concurrent"]
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError("max_concurrent must be a positive integer or null")
            updates["max_concurrent"] = value
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
            return 400, error_body("invalid json")
        agent_id = payload.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            return 400, error_body("agent_id is required")
        if endpoint == "register":
            return self._register(agent_id, payload)
        if endpoint == "heartbeat":
            return self._heartbeat(agent_id, payload)
        if endpoint == "ingest-batch":
            return self._ingest(agent_id, payload, idempotency_key)
        return 404, error_body("not found")

    def _register(self, agent_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        sources = payload.get("sources")
        row = (
            agent_id,
            as_text(payload.get("hostname")),
            as_text(payload.get("os_type")),
            as_text(payload.get("os_version")),
            as_text(payload.get("agent_version")),
            None if sources is None else ENCODER.encode(sources),
            ENCODER.encode(payload),
            time.time(),
        )
        with self._db_lock:
            db = self._db()
            known = self._is_registered(db, agent_id)
            with db:
                db.execute(_UPSERT_AGENT, row)
            if not known:
                self._counts["agents"] += 1
        return 200, SUCCESS

    def _heartbeat(self, agent_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = ENCODER.encode(payload)
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
        return 200, SUCCESS

    def _ingest(
        self, agent_id: str, payload: dict[str, Any], idempotency_key: str | None
    ) -> tuple[int, dict[str, Any]]:
        logs = payload.get("logs")
        if not isinstance(logs, list) or not logs:
            return 400, error_body("logs must be a non-empty list")
        config = self.config
        total = len(logs)
        if config.max_batch is not None and total > config.max_batch:
            return 413, error_body(f"batch too large: {total} logs, at most {config.max_batch}")
        batch_id = as_text(payload.get("batch_id"))
        now = time.time()
        rows, rejected = _event_rows(logs, agent_id, batch_id, now, config.reject_substring)
        with self._db_lock:
            db = self._db()
            if not self._is_registered(db, agent_id):
                return 404, _NOT_REGISTERED
            if rejected is not None:
                return 400, error_body(f"entry {rejected} rejected")
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
        body_bytes: int | None = None,
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
            body_bytes,
        )
        with self._db_lock:
            db = self._db()
            with db:
                cursor = db.execute(
                    "INSERT INTO requests (endpoint, status, agent_id, n_logs, batch_id,"
                    " idempotency_key, at, mono, body_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        """Counters: agents, heartbeats, batches, events_received, events_unique, requests,
        and ingest_in_flight_max (the most ingest-batch requests handled at once)."""
        with self._db_lock:
            counts = dict(self._counts)
        with self._state_lock:
            counts["ingest_in_flight_max"] = self._ingest_peak
        return counts

    @contextlib.contextmanager
    def ingest_slot(self) -> Iterator[bool]:
        """Count an ingest-batch request while it is handled; False when it is one more than
        ``max_concurrent`` allows (answered 503, like an overloaded server)."""
        with self._state_lock:
            self._ingest_now += 1
            self._ingest_peak = max(self._ingest_peak, self._ingest_now)
            limit = self.config.max_concurrent
            admitted = limit is None or self._ingest_now <= limit
        try:
            yield admitted
        finally:
            with self._state_lock:
                self._ingest_now -= 1

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
        keys += ("idempotency_key", "scripted", "at", "mono", "body_bytes")
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


def error_body(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def as_text(value: Any) -> str | None:
    """A value as stored in a TEXT column: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return ENCODER.encode(value)


def _event_rows(
    logs: list[Any], agent_id: str, batch_id: str | None, now: float, reject: str | None
) -> tuple[list[tuple[Any, ...]], int | None]:
    """Rows for the events table, and the index of the first rejected entry (or None)."""
    rows = []
    rejected = None
    for index, entry in enumerate(logs):
        entry_json = ENCODER.encode(entry)
        if isinstance(entry, dict):
            log_text = entry.get("log_text")
            log_text = entry_json if log_text is None else as_text(log_text)
            uid = entry.get("event_uid")
            uid = as_text(uid) if uid not in (None, "") else None
            source = as_text(entry.get("source"))
            timestamp = as_text(entry.get("timestamp"))
            hostname = as_text(entry.get("hostname"))
        else:
            log_text = entry if isinstance(entry, str) else entry_json
            uid = source = timestamp = hostname = None
        if reject is not None and rejected is None and reject in (log_text or ""):
            rejected = index
        row = (uid, agent_id, batch_id, source, log_text, timestamp, hostname, entry_json, now)
        rows.append(row)
    return rows, rejected


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
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "body_bytes" not in columns:  # a receiver database from before body sizes were kept
        conn.execute("ALTER TABLE requests ADD COLUMN body_bytes INTEGER")
    if path is not None:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(path + suffix, 0o600)
    return conn
