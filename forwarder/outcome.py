"""What a server answer means: the protocol's answer table, in one place, for every request.

The agent makes three requests (register, heartbeat, ingest-batch); one ``classify`` decides
what each answer means, and ``unanswered`` what it means when no answer came at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.IntEnum):
    """Ordered by how much the batch must change before it is sent again."""

    DELIVERED = 0
    RETRY = 1
    REREGISTER = 2
    SPLIT = 3
    DEAD_LETTER = 4


class Request(enum.Enum):
    """The requests the agent makes (protocol.md, "Endpoints")."""

    REGISTER = "register"
    HEARTBEAT = "heartbeat"
    BATCH = "ingest-batch"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str  # key-free, for last_error and the log
    auth: bool = False  # 401/403: the key was rejected (said once per streak, at error level)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DELIVERED


def classify(status: int, n_entries: int = 1, request: Request = Request.BATCH) -> Decision:
    """The decision for an HTTP ``status`` answering ``request`` (a batch of ``n_entries``)."""
    if 200 <= status < 300:
        return Decision(Outcome.DELIVERED, "accepted")
    if 300 <= status < 400:
        return Decision(Outcome.RETRY, f"redirect {status} not followed")
    if status in (401, 403):
        return Decision(Outcome.RETRY, f"API key rejected ({status})", auth=True)
    if status == 404 and request is not Request.REGISTER:
        return Decision(Outcome.REREGISTER, "agent unknown to the server")
    if status in (400, 413, 422) and request is Request.BATCH:
        if n_entries > 1:
            return Decision(Outcome.SPLIT, f"server answered {status}: splitting")
        return Decision(Outcome.DEAD_LETTER, f"server rejected the entry ({status})")
    # 408, 429, 5xx and anything unexpected: keep everything, back off, try again.
    return Decision(Outcome.RETRY, f"server answered {status}")


def unanswered(reason: str) -> Decision:
    """No HTTP answer (refused, reset, timeout, DNS, TLS): transient, retry."""
    return Decision(Outcome.RETRY, reason)


FAILURE_KINDS = ("http_503", "http_429", "http_500", "connection", "timeout", "tls", "auth")


def failure_kind(reason: str) -> str:
    """A short, bounded label for a failure reason (the metrics' ``reason``)."""
    if reason.startswith("server answered "):
        return "http_" + reason.split()[2].rstrip(":")
    for prefix, kind in (
        ("API key rejected", "auth"),
        ("redirect", "redirect"),
        ("TLS failure", "tls"),
        ("connect timeout", "timeout"),
        ("read timeout", "timeout"),
        ("connection", "connection"),
        ("send crashed", "bug"),
    ):
        if reason.startswith(prefix):
            return kind
    return "other"
