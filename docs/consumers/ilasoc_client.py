"""What both example bridges share: posting to the ILA-SOC server, and the uids already posted.

Imported by ``nats_to_ilasoc.py`` and ``kafka_to_ilasoc.py`` (run them from this folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
import sys
import time
from typing import Any

import requests

REJECTED = {400, 413, 422}


class Server:
    """The ILA-SOC server's agent API (protocol.md), with registration on demand."""

    def __init__(self, url: str, api_key: str, tls_ca_file: str | None, bridge: str) -> None:
        self.url = url.rstrip("/")
        self.bridge = bridge  # sent as agent_version: which bridge registered the agent
        self.http = requests.Session()
        self.http.headers["X-API-Key"] = api_key
        self.http.verify = tls_ca_file or True
        self.registered: set[str] = set()

    def post(self, path: str, body: dict[str, Any]) -> int:
        r = self.http.post(self.url + path, json=body, timeout=60, allow_redirects=False)
        return r.status_code

    def register(self, agent_id: str, hostname: str) -> None:
        status = self.post("/api/agent/register", {
            "agent_id": agent_id, "hostname": hostname, "os_type": "broker-bridge",
            "os_version": platform.platform(), "agent_version": self.bridge,
            "sources": [],
        })  # fmt: skip
        if not 200 <= status < 300:
            raise RuntimeError(f"register {agent_id}: HTTP {status}")
        self.registered.add(agent_id)

    def ingest(self, agent_id: str, logs: list[dict[str, Any]]) -> int:
        """The HTTP status of one ingest-batch (registering first when needed)."""
        if agent_id not in self.registered:
            self.register(agent_id, logs[0].get("hostname") or "unknown")
        uids = "".join(f"{e['event_uid']}\n" for e in logs)
        body = {"agent_id": agent_id, "batch_id": hashlib.sha256(uids.encode()).hexdigest()[:32],
                "logs": logs}  # fmt: skip
        status = self.post("/api/agent/ingest-batch", body)
        if status == 404:  # the server forgot the agent
            self.registered.discard(agent_id)
            self.register(agent_id, logs[0].get("hostname") or "unknown")
            status = self.post("/api/agent/ingest-batch", body)
        return status


class Seen:
    """event_uids already posted, kept across restarts (prune by ``at`` if it grows)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (uid TEXT PRIMARY KEY, at REAL)")

    def new(self, uids: list[str]) -> set[str]:
        marks = ",".join("?" * len(uids))
        old = {u for (u,) in self.db.execute(f"SELECT uid FROM seen WHERE uid IN ({marks})", uids)}
        return set(uids) - old

    def add(self, uids: list[str]) -> None:
        now = time.time()
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(u, now) for u in uids])
        self.db.commit()


def post_group(server: Server, agent_id: str, logs: list[dict[str, Any]]) -> bool:
    """True when every entry is accepted (or rejected for good); False: retry later."""
    status = server.ingest(agent_id, logs)
    if 200 <= status < 300:
        return True
    if status in REJECTED and len(logs) > 1:
        return all(post_group(server, agent_id, [e]) for e in logs)
    if status in REJECTED:
        print(f"rejected for good ({status}): {json.dumps(logs[0])[:300]}", file=sys.stderr)
        return True
    print(f"ingest-batch answered {status}: will retry", file=sys.stderr)
    return False


def add_server_args(ap: argparse.ArgumentParser, bridge: str) -> None:
    """The options every bridge shares: where the ILA-SOC server is, its key, the batching."""
    ap.add_argument("--server-url", required=True)
    ap.add_argument("--api-key-file", help="else the environment variable ILA_SOC_API_KEY")
    ap.add_argument("--server-ca-file", help="CA of the ILA-SOC server's certificate")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seen-db", default=f"{bridge}.seen.db")


def server_from_args(ap: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> Server:
    """The server of ``add_server_args``' options; exits with a usage error without a key."""
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as f:
            api_key = f.read().strip()
    else:
        api_key = os.environ.get("ILA_SOC_API_KEY", "")
    if not api_key:
        ap.error("no API key: --api-key-file or ILA_SOC_API_KEY")
    return Server(args.server_url, api_key, args.server_ca_file, name)
