"""What a server answer means: the protocol's answer table, in one place."""

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


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    auth: bool = False  # 401/403: said once per streak


def classify(status: int, n_entries: int) -> Decision:
    """The decision for an HTTP ``status`` answering a batch of ``n_entries``."""
    if 200 <= status < 300:
        return Decision(Outcome.DELIVERED, "accepted")
    if 300 <= status < 400:
        return Decision(Outcome.RETRY, f"redirect {status} not followed")
    if status == 404:
        return Decision(Outcome.REREGISTER, "agent unknown to the server")
    if status in (400, 413, 422):
        if n_entries > 1:
            return Decision(Outcome.SPLIT, f"server answered {status}: splitting")
        return Decision(Outcome.DEAD_LETTER, f"server rejected the entry ({status})")
    if status in (401, 403):
        return Decision(Outcome.RETRY, f"API key rejected ({status})", auth=True)
    # 408, 429, 5xx and anything unexpected: keep everything, back off, try again.
    return Decision(Outcome.RETRY, f"server answered {status}")
