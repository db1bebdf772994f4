"""The running agent's own view, for ``status``: ``<buffer>.state``, rewritten every second.

What only the running process knows (its problems right now, batches in flight, the
concurrency level, files open) is written here as one JSON object. The file is allocated once
and then overwritten in place, so it can still be written when the disk is full, which is
exactly when ``status`` must be able to say "disk full".
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

SIZE = 16_384  # bytes allocated once; a report that would not fit drops its detail lists


def state_path(buffer_db: str) -> str:
    return buffer_db + ".state"


class StateFile:
    """Written by the agent; ``write`` never raises (a failed write is only a stale view)."""

    def __init__(self, buffer_db: str) -> None:
        self.path = state_path(buffer_db)
        self.fd: int | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size < SIZE:
                os.pwrite(fd, b" " * SIZE, 0)
                os.fsync(fd)
        except OSError:  # no room to allocate it (a full disk at start-up): no state file
            os.close(fd)
            return
        self.fd = fd

    def write(self, report: dict[str, Any]) -> bool:
        if self.fd is None:
            return False
        data = _encode(report)
        try:
            os.pwrite(self.fd, data.ljust(SIZE), 0)
        except OSError:
            return False
        return True

    def close(self, report: dict[str, Any]) -> None:
        """The last word: what the agent looked like when it stopped."""
        if self.fd is not None:
            self.write(report)
            os.close(self.fd)
            self.fd = None


def _encode(report: dict[str, Any]) -> bytes:
    data = json.dumps(report, separators=(",", ":")).encode("utf-8")
    if len(data) > SIZE:
        slim = {k: v for k, v in report.items() if not isinstance(v, list | dict)}
        slim["truncated"] = True
        data = json.dumps(slim, separators=(",", ":")).encode("utf-8")[:SIZE]
    return data


def read_state(buffer_db: str, *, stale_after_s: float = 5.0) -> dict[str, Any] | None:
    """The last report, with ``running``: True when it is fresh and its process is alive."""
    try:
        with open(state_path(buffer_db), "rb") as f:
            text = f.read(SIZE).strip()
    except OSError:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    # Fresh: rewritten every second by a live agent (a killed one leaves a stale report).
    fresh = time.time() - float(report.get("updated_at") or 0) < stale_after_s
    report["running"] = bool(report.get("running")) and fresh
    return report
