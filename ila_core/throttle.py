"""Log lines about what others do (peers, senders), rate-limited per event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("collector")

LOG_WINDOW_S, LOG_BURST = 10.0, 5  # per event: at most 5 lines per 10 s


class Throttle:
    """Log lines about peers, at most ``burst`` per event per ``window`` seconds; the lines
    held back are counted and said in one summary line when the window ends."""

    def __init__(
        self, now: Callable[[], float], window: float = LOG_WINDOW_S, burst: int = LOG_BURST
    ) -> None:
        self.now = now
        self.window = window
        self.burst = burst
        self._seen: dict[str, list[float]] = {}  # event → [window start, lines, held back]

    def warning(self, event: str, **fields: Any) -> None:
        now = self.now()
        seen = self._seen.get(event)
        if seen is None or now - seen[0] >= self.window:
            self._summarise(event, seen)
            seen = self._seen[event] = [now, 0, 0]
        if seen[1] < self.burst:
            seen[1] += 1
            log.warning(event, **fields)
        else:
            seen[2] += 1

    def flush(self) -> None:
        """Say what was held back in windows that are over."""
        now = self.now()
        for event, seen in list(self._seen.items()):
            if now - seen[0] >= self.window:
                self._summarise(event, seen)
                del self._seen[event]

    @staticmethod
    def _summarise(event: str, seen: list[float] | None) -> None:
        if seen is not None and seen[2]:
            log.warning("log_lines_suppressed", event_name=event, lines=int(seen[2]))
