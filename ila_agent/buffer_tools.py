"""The buffer tools behind the CLI: status, inspect, replay, export and import.

They work beside a running agent: status and inspect read through a read-only connection;
replay and export lease items as their own process, so the agent and the tool never send or
export the same entry at the same time.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from ila_agent.config import AgentConfig
from ila_agent.errors import AgentError, ConfigError, UsageError
from queue_store.store import (
    EFFECTIVE_STATE,
    STATES,
    TABLE,
    QueueStore,
    decode_item,
    open_readonly,
    read_stats,
)

STATE_NAMES = {s: name for name, group in STATES.items() for s in group}


def parse_since(text: str) -> float:
    """``2026-11-27T10:00:00Z``, ``2026-11-27``, epoch seconds, or an age: ``90s 15m 2h 3d``."""
    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {text!r}: use an RFC 3339 time, epoch seconds, or an age like 2h"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def status_report(cfg: AgentConfig) -> dict[str, Any]:
    """The status object (read-only: never blocks the running agent)."""
    report: dict[str, Any] = {
        "buffer_db": cfg.buffer_db,
        "mode": "collect-only" if cfg.collect_only else "forwarding",
        "server_url": cfg.server_url,
    }
    try:
        con = open_readonly(cfg.buffer_db)
    except FileNotFoundError:
        con = None
    if con is not None and not _has_queue(con):
        con.close()  # the agent is creating it right now: nothing in it yet
        con = None
    checkpoints: list[tuple[str, str, int]] = []
    report["buffer_exists"] = con is not None
    if con is None:
        report.update(
            pending=0, pending_bytes=0, oldest_pending_age_s=None, dead_letter=0, dropped=0,
            exported=0, last_send_ok_at=None, last_error=None, quarantined=None,
        )  # fmt: skip
    else:
        try:
            stats = read_stats(con)
            checkpoints = con.execute(
                "SELECT source, path, offset FROM checkpoints ORDER BY updated_at"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise AgentError(f"cannot read the buffer {cfg.buffer_db}: {exc}") from exc
        finally:
            con.close()
        report.update(
            pending=stats.pending,
            pending_bytes=stats.pending_bytes,
            oldest_pending_age_s=stats.oldest_pending_age_s,
            dead_letter=stats.dead_letter,
            dropped=stats.dropped,
            exported=stats.exported,
            acked_kept=stats.acked_kept,
            last_send_ok_at=stats.last_send_ok_at,
            last_error=stats.last_error,
            quarantined=stats.quarantined,
        )
    sources = []
    for source, path, offset in checkpoints:
        try:
            size: int | None = os.stat(path).st_size
        except OSError:
            size = None
        lag = None if size is None else max(0, size - offset)
        sources.append(
            {"source": source, "path": path, "position": offset, "size": size, "lag_bytes": lag}
        )
    report["sources"] = sources
    return report


def _has_queue(con: sqlite3.Connection) -> bool:
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        return True  # let the real query report what is wrong
    return {TABLE, "checkpoints", "meta"} <= names


def format_status(report: dict[str, Any]) -> str:
    age = report["oldest_pending_age_s"]
    server = f" → {report['server_url']}" if report["server_url"] else ""
    lines = [
        f"mode:            {report['mode']}{server}",
        f"buffer:          {report['buffer_db']}",
        f"pending:         {report['pending']} entries ({report['pending_bytes']} bytes)",
        f"oldest pending:  {'-' if age is None else f'{age:.1f} s'}",
        f"dead letters:    {report['dead_letter']}",
        f"dropped:         {report['dropped']}",
        f"exported:        {report['exported']} (kept until acked history expires)",
        f"last send ok:    {report['last_send_ok_at'] or '-'}",
        f"last error:      {report['last_error'] or '-'}",
    ]
    if report.get("quarantined"):
        lines.append(f"QUARANTINED:     {report['quarantined']}")
    if not report.get("buffer_exists", True):
        lines.append("note:            no buffer yet: the agent has not run with this config")
    lines.append("")
    lines.append(f"{'SOURCE':<40} {'POSITION':>12} {'SIZE':>12} {'LAG':>10}")
    for s in report["sources"]:
        size = "-" if s["size"] is None else str(s["size"])
        lag = "-" if s["lag_bytes"] is None else str(s["lag_bytes"])
        lines.append(f"{s['source'][-40:]:<40} {s['position']:>12} {size:>12} {lag:>10}")
    return "\n".join(lines)


def inspect(
    cfg: AgentConfig,
    *,
    state: str,
    source: str | None,
    since: float | None,
    limit: int | None,
    out: TextIO,
    hostname: str,
) -> int:
    """Entries as JSON lines; returns how many were written."""
    states = (
        [s for name, group in STATES.items() for s in group]
        if state == "all"
        else list(STATES[state])
    )
    try:
        con = open_readonly(cfg.buffer_db)
    except FileNotFoundError:
        return 0
    if not _has_queue(con):
        con.close()
        return 0
    marks = ",".join("?" * len(states))
    sql = f"SELECT _id, data, timestamp, {EFFECTIVE_STATE} AS st FROM {TABLE} WHERE st IN ({marks})"
    params: list[Any] = list(states)
    if since is not None:
        sql += " AND timestamp >= ?"
        params.append(since)
    if source is not None:
        sql += " AND (source = ? OR source IS NULL)"
        params.append(source)
    written = 0
    try:
        for rid, data, _ts, st in con.execute(sql + " ORDER BY _id", params):
            try:
                entries = list(decode_item(rid, data))
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
                entries = []
            for e in entries:
                if source is not None and e.source != source:
                    continue
                row = {"state": STATE_NAMES.get(st, str(st)), "item": rid, **e.to_wire(hostname)}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
                if limit is not None and written >= limit:
                    return written
    except BrokenPipeError:
        # `inspect | head`: the reader has what it wanted.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    finally:
        con.close()
    return written


def read_hmac_key(cfg: AgentConfig) -> bytes | None:
    if cfg.bundle_hmac_key_file is None:
        return None
    try:
        key = Path(cfg.bundle_hmac_key_file).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            cfg.config_path, "bundle_hmac_key_file", f"cannot read: {exc.strerror}"
        ) from None
    if len(key) < 16:
        raise ConfigError(cfg.config_path, "bundle_hmac_key_file", "key shorter than 16 bytes")
    return key


def open_tool_store(cfg: AgentConfig) -> QueueStore:
    """The buffer for a tool: no ownership lock, so it works while the agent runs."""
    from ila_agent.agent import open_store

    return open_store(cfg, lock=False)
