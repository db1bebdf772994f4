"""Fault injection for the reference receiver: scripted answers and its settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_DELAY_S = 3600.0


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
        if not drop and not (is_int(status) and 200 <= status <= 599):
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
            status=status if is_int(status) else 0,
            headers=clean,
            delay=seconds(item.get("delay", 0.0), "delay"),
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
    max_concurrent: int | None = None  # more ingest-batch requests at once → 503


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds")
    if not 0 <= value <= MAX_DELAY_S:
        raise ValueError(f"{name} must be between 0 and {MAX_DELAY_S:g} seconds")
    return float(value)
