"""Counts the agent keeps for its metrics: plain integers, no metrics library on the hot path.

Parts add to named counts (by label) where they already do the work, once per commit or per
answer, never per line; ``ila_agent.metrics`` turns a snapshot into the Prometheus format
when it is scraped.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Request duration buckets, seconds: from a fast local server to a slow classifying one.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Counts:
    """Monotonic counts by name and label, shared by every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, name: str, n: int, label: str = "") -> None:
        with self._lock:
            self._counts[name][label] += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(by_label) for name, by_label in self._counts.items()}


class Histogram:
    """Observations in fixed buckets (cumulative on export), with their sum."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self._counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (upper bound, count) pairs ending with "+Inf", and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], counts, strict=True):
            running += n
            out.append((bound, running))
        return out, total
