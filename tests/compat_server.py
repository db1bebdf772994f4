"""A stand-in of the existing ILA-SOC server (Flask), as protocol.md describes it.

Run: python tests/compat_server.py PORT KEY OUT_FILE. It keeps registrations in memory (a
restart forgets them: heartbeats then get 404), checks X-API-Key, answers 400 to a batch
without logs, reads log_text/source/timestamp of each entry, takes a moment per batch (the
real server classifies synchronously), does not decode gzip, and appends what it accepted to
OUT_FILE as JSON lines (no de-duplication: the real server has none either).
"""

from __future__ import annotations

import json
import sys
import threading
import time

from flask import Flask, jsonify, request

app = Flask(__name__)
KEY = sys.argv[2] if len(sys.argv) > 2 else "key"
OUT = sys.argv[3] if len(sys.argv) > 3 else "/dev/null"
agents: set[str] = set()
lock = threading.Lock()


def _key_ok() -> bool:
    return request.headers.get("X-API-Key") == KEY


@app.post("/api/agent/register")
def register():  # type: ignore[no-untyped-def]
    if not _key_ok():
        return jsonify({"status": "error"}), 401
    data = request.get_json(silent=True) or {}
    if not data.get("agent_id"):
        return jsonify({"status": "error", "message": "agent_id required"}), 400
    agents.add(data["agent_id"])
    return jsonify({"status": "success"}), 200


@app.post("/api/agent/heartbeat")
def heartbeat():  # type: ignore[no-untyped-def]
    if not _key_ok():
        return jsonify({"status": "error"}), 401
    data = request.get_json(silent=True) or {}
    if not data.get("agent_id"):
        return jsonify({"status": "error"}), 400
    if data["agent_id"] not in agents:
        return jsonify({"status": "error", "message": "unknown agent"}), 404
    return jsonify({"status": "success"}), 200


@app.post("/api/agent/ingest-batch")
def ingest():  # type: ignore[no-untyped-def]
    if not _key_ok():
        return jsonify({"status": "error"}), 401
    data = request.get_json(silent=True) or {}
    logs = data.get("logs")
    if not logs:
        return jsonify({"status": "error", "message": "no logs"}), 400
    time.sleep(0.05)  # classification
    rows = []
    for entry in logs:
        try:
            rows.append(
                {"log_text": entry.get("log_text", json.dumps(entry)),
                 "source": entry.get("source"), "timestamp": entry.get("timestamp")}
            )  # fmt: skip
        except AttributeError:
            continue  # an error on one entry is skipped
    with lock, open(OUT, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return jsonify({"status": "success", "total": len(rows)}), 200


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
