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
from ila_agent.state_file import read_state
from ila_agent.wiring import open_store
from ila_core.errors import AgentError, ConfigError, UsageError
from queue_store.schema import STATES
from queue_store.store import QueueStore
from queue_store.view import BufferView


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


def status_report(cfg: AgentConfig, now: float | None = None) -> dict[str, Any]:
    """The status object (read-only: never blocks the running agent)."""
    report: dict[str, Any] = {
        "buffer_db": cfg.buffer_db,
        "mode": "collect-only" if cfg.collect_only else "forwarding",
        "server_url": cfg.server_url,
    }
    try:
        with BufferView(cfg.buffer_db) as view:
            stats = view.stats(time.time() if now is None else now)
            checkpoints = view.checkpoints()
    except sqlite3.DatabaseError as exc:
        raise AgentError(f"cannot read the buffer {cfg.buffer_db}: {exc}") from exc
    report["buffer_exists"] = stats is not None
    if stats is None:
        report.update(
            pending=0, pending_bytes=0, oldest_pending_age_s=None, dead_letter=0, dropped=0,
            filtered=0, exported=0, last_send_ok_at=None, last_error=None, quarantined=None,
        )  # fmt: skip
    else:
        report.update(
            pending=stats.pending,
            pending_bytes=stats.pending_bytes,
            oldest_pending_age_s=stats.oldest_pending_age_s,
            dead_letter=stats.dead_letter,
            dropped=stats.dropped,
            filtered=stats.filtered,
            exported=stats.exported,
            acked_kept=stats.acked_kept,
            last_send_ok_at=stats.last_send_ok_at,
            last_error=stats.last_error,
            quarantined=stats.quarantined,
        )
    sources = []
    for cp in checkpoints:
        try:
            size: int | None = os.stat(cp.path).st_size
        except OSError:
            size = None
        lag = None if size is None else max(0, size - cp.offset)
        sources.append(
            {"source": cp.source, "path": cp.path, "position": cp.offset, "size": size,
             "lag_bytes": lag}
        )  # fmt: skip
    report["sources"] = sources
    agent = read_state(cfg.buffer_db)
    report["agent"] = agent
    # What is wrong now, said by the running agent (a full disk, a thread that died).
    report["problems"] = list(agent.get("problems") or []) if agent and agent["running"] else []
    return report


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
        f"filtered:        {report['filtered']}",
        f"exported:        {report['exported']} (kept until acked history expires)",
        f"last send ok:    {report['last_send_ok_at'] or '-'}",
        f"last error:      {report['last_error'] or '-'}",
    ]
    if report.get("quarantined"):
        lines.append(f"QUARANTINED:     {report['quarantined']}")
    agent = report.get("agent")
    if agent and agent.get("running"):
        flight = ""
        if "in_flight" in agent:
            flight = (
                f", {agent['in_flight']} batches in flight (limit {agent['concurrency_limit']}"
                f" of {agent['max_in_flight']})"
            )
        lines.append(f"agent:           running, pid {agent.get('pid')}{flight}")
    else:
        lines.append("agent:           not running")
    for problem in report.get("problems", []):
        lines.append(f"PROBLEM:         {problem}")
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
    states = [s for name, group in STATES.items() for s in group if state in ("all", name)]
    written = 0
    with BufferView(cfg.buffer_db) as view:
        try:
            for stored in view.entries(states, since=since, source=source):
                row = {"state": stored.state, "item": stored.item, **stored.entry.to_wire(hostname)}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
                if limit is not None and written >= limit:
                    break
        except BrokenPipeError:
            # `inspect | head`: the reader has what it wanted.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
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
    return open_store(cfg, lock=False)
