"""A minimal, faithful re-creation of the FIRST agent's data path, for benchmark baselines only.

Design being reproduced (not the current agent):

- a reader thread per file: ``readline()`` → one dict per line → an unbounded in-memory
  ``queue.Queue`` (nothing is durable while a line sits in the queue);
- a sender thread: take up to ``batch_size`` entries from the queue (waiting at most
  ``batch_interval``), ``requests.post`` them (a new connection per batch, no Session) to
  ``/api/agent/ingest-batch`` as ``{"agent_id", "logs": [{log_text, source, timestamp,
  hostname}]}`` with ``X-API-Key``;
- only when a send fails: INSERT each line into the SQLite ``log_buffer`` table one by one,
  then commit; buffered rows are re-sent (oldest first) after the next successful send.

Run: ``python bench/baseline_first_agent.py --server-url URL --api-key K --file F
[--batch-size 50] [--batch-interval 5] [--db log_buffer.db] [--start-position beginning]``.
With ``--no-sender`` the queue is only filled (models a server slower than the input);
``--status-file`` gets ``{"queued": n}`` every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

POLL_SLEEP = 1.0  # the reader's sleep at end of file (same as the new agent's poll_interval)


class FirstAgent:
    def __init__(
        self,
        *,
        server_url: str | None,
        api_key: str,
        files: list[str],
        batch_size: int = 50,
        batch_interval: float = 5.0,
        db_path: str = "log_buffer.db",
        start_position: str = "beginning",
        agent_id: str | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/") if server_url else None
        self.api_key = api_key
        self.files = files
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.start_position = start_position
        self.agent_id = agent_id or str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stop = threading.Event()
        self.db_path = db_path
        self._db: sqlite3.Connection | None = None
        self.sent = 0

    # -- the SQLite fallback (used only when a send fails) -----------------------------------

    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.db_path, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS log_buffer (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " log_text TEXT, source TEXT, timestamp TEXT)"
            )
            self._db.commit()
        return self._db

    def buffer_failed(self, batch: list[dict[str, Any]]) -> None:
        db = self.db()
        for e in batch:
            db.execute(
                "INSERT INTO log_buffer (log_text, source, timestamp) VALUES (?, ?, ?)",
                (e["log_text"], e["source"], e["timestamp"]),
            )
        db.commit()

    def resend_buffered(self) -> None:
        if self._db is None:
            return
        db = self._db
        while not self.stop.is_set():
            rows = db.execute(
                "SELECT id, log_text, source, timestamp FROM log_buffer ORDER BY id LIMIT ?",
                (self.batch_size,),
            ).fetchall()
            if not rows:
                return
            batch = [
                {"log_text": t, "source": s, "timestamp": ts, "hostname": self.hostname}
                for _, t, s, ts in rows
            ]
            if not self.post(batch):
                return
            db.executemany("DELETE FROM log_buffer WHERE id = ?", [(r[0],) for r in rows])
            db.commit()

    # -- reading -------------------------------------------------------------------------

    def tail(self, path: str) -> None:
        with open(path, encoding="utf-8", errors="replace") as f:
            if self.start_position == "end":
                f.seek(0, os.SEEK_END)
            while not self.stop.is_set():
                line = f.readline()
                if not line:
                    time.sleep(POLL_SLEEP)
                    continue
                self.q.put(
                    {
                        "log_text": line.rstrip("\r\n"),
                        "source": path,
                        "timestamp": datetime.now(timezone.utc).isoformat(),
                        "hostname": self.hostname,
                    }
                )

    # -- sending ---------------------------------------------------------------------------

    def register(self) -> None:
        import requests

        body = {
            "agent_id": self.agent_id,
            "hostname": self.hostname,
            "os_type": platform.system(),
            "os_version": platform.release(),
            "agent_version": "first-agent-baseline",
            "sources": self.files,
        }
        while not self.stop.is_set():
            try:
                r = requests.post(
                    f"{self.server_url}/api/agent/register",
                    json=body,
                    headers={"X-API-Key": self.api_key},
                    timeout=10,
                )
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            self.stop.wait(1.0)

    def post(self, batch: list[dict[str, Any]]) -> bool:
        import requests

        try:
            r = requests.post(
                f"{self.server_url}/api/agent/ingest-batch",
                json={"agent_id": self.agent_id, "logs": batch},
                headers={"X-API-Key": self.api_key},
                timeout=10,
            )
            return r.status_code == 200
        except requests.RequestException:
            return False

    def send_loop(self) -> None:
        self.register()
        while not self.stop.is_set():
            batch: list[dict[str, Any]] = []
            deadline = time.monotonic() + self.batch_interval
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    break
                try:
                    batch.append(self.q.get(timeout=min(left, 0.5)))
                except queue.Empty:
                    continue
            if not batch:
                continue
            if self.post(batch):
                self.sent += len(batch)
                self.resend_buffered()
            else:
                self.buffer_failed(batch)

    # -- running -------------------------------------------------------------------------

    def start_readers(self) -> list[threading.Thread]:
        threads = []
        for path in self.files:
            t = threading.Thread(target=self.tail, args=(path,), name=f"tail:{path}", daemon=True)
            t.start()
            threads.append(t)
        return threads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server-url", default=None)
    p.add_argument("--api-key", default="change-me")
    p.add_argument("--file", action="append", required=True)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--batch-interval", type=float, default=5.0)
    p.add_argument("--db", default="log_buffer.db")
    p.add_argument("--start-position", choices=("beginning", "end"), default="beginning")
    p.add_argument("--no-sender", action="store_true", help="only fill the in-memory queue")
    p.add_argument("--status-file", default=None)
    args = p.parse_args(argv)
    agent = FirstAgent(
        server_url=args.server_url,
        api_key=args.api_key,
        files=[os.path.abspath(f) for f in args.file],
        batch_size=args.batch_size,
        batch_interval=args.batch_interval,
        db_path=args.db,
        start_position=args.start_position,
    )
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    agent.start_readers()
    if args.server_url and not args.no_sender:
        threading.Thread(target=agent.send_loop, name="sender", daemon=True).start()
    while not agent.stop.wait(0.2):
        if args.status_file:
            tmp = args.status_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"queued": agent.q.qsize(), "sent": agent.sent}, f)
            os.replace(tmp, args.status_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
