"""Backoff: exponential, capped at retry_interval and at the failures' age, full jitter
applied after the caps."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Generator

import backoff

RETRY_AFTER_MAX = 3600.0
RETRY_AFTER_MIN = 0.5


class RetryPolicy:
    """Delays for consecutive failures; ``reset`` after a success.

    A delay is drawn (full jitter) from [0, the smallest of: the exponential step, ``cap``,
    and how long the failures have lasted (at least the first step)]. The last bound is why a
    10 s outage is not answered by a silence of up to 30 s once the steps got there (the
    side-by-side benchmark saw one, bench/VS_SYSLOGNG.md run E). It keeps what the jitter is
    for: agents that failed together still spread their return over about as long as the
    outage lasted, which holds a returning fleet's backlog near the rate it was written at
    (bench/FLEET_SIM.md); after a long outage the cap is the smaller bound and nothing changes.
    ``clock`` is required so that a caller on fake time cannot fall back on real time."""

    def __init__(
        self,
        cap: float,
        *,
        clock: Callable[[], float],
        jitter: Callable[[float], float] = backoff.full_jitter,
        base: float = 2.0,
        factor: float = 1.0,
    ) -> None:
        self.cap = cap
        self.jitter = jitter
        self.base = base
        self.factor = factor
        self.clock = clock
        self.failures = 0
        self._gen: Generator[float, None, None] | None = None
        self._since: float | None = None  # the streak's first next_delay (batch_delay: own age)

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait before the next attempt; a Retry-After wins, even beyond the cap."""
        self.failures += 1
        now = self.clock()
        if self._since is None:
            self._since = now
        if self._gen is None:
            self._gen = backoff.expo(base=self.base, factor=self.factor, max_value=self.cap)
            next(self._gen)  # backoff's generators are primed with a first send(None)
        step = float(next(self._gen))
        if retry_after is not None:
            # "Retry-After: 0" again and again must not become a tight loop.
            return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, retry_after))
        return self._draw(step, now - self._since)

    def batch_delay(
        self, attempt: int, retry_after: float | None = None, *, age: float | None = None
    ) -> float:
        """The wait before one batch's next attempt, from its own failures (``attempt``: how
        many it had before this one; ``age``: seconds since its first failure), for a failure
        that concerns that batch alone (a 503 without Retry-After while other batches go
        through). The shared streak of ``next_delay`` would make each such batch wait for the
        others' failures: with 20 % of answers 503 the last batches of a run waited up to the
        cap, 30 s. The same bounds as ``next_delay``, on the batch's own failures. Counted in
        ``failures`` too (for the log)."""
        self.failures += 1
        if retry_after is not None:
            return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, retry_after))
        return self._draw(self.factor * self.base ** max(0, attempt), age)

    def _draw(self, step: float, age: float | None) -> float:
        """The jittered wait under the three bounds: the step, the cap, the failures' age
        (at least the first step; no age, no such bound)."""
        bound = min(step, self.cap)
        if age is not None:
            bound = min(bound, max(self.factor, age))
        return max(0.0, float(self.jitter(bound)))

    def reset(self) -> None:
        self.failures = 0
        self._gen = None
        self._since = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
