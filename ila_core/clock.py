"""Time, handed in: loops ask a Clock, so tests can run them with a FakeClock."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone


class Clock:
    """Real time: a monotonic clock for intervals, a wall clock for timestamps."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop_event = stop or threading.Event()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the stop event was set meanwhile."""
        return self.stop_event.wait(max(0.0, seconds))

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()


def rfc3339_ms(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-27T10:00:01.517Z``."""
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
