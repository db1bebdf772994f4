"""Adaptive request concurrency: how many ingest-batch requests one agent keeps in flight.

Vector's adaptive request concurrency (ARC) is the model; the design, what this does
differently and why, is in docs/concurrency.md. In short (each point has a test):

- the baseline is the *lowest* RTT over ``rtt_min_horizon_s`` (5 min), per batch-size class,
  not an EWMA that drifts up with a slowly building queue;
- the limit grows while a window's low-median RTT stays within ``grow_tolerance`` (1.25x) of
  it, doubling until the first cut (slow start), then by 1; a window judges only requests
  started at its own limit;
- 429/503/504/408/502 and timeouts halve it (``backpressure_ratio``), an RTT above
  ``cut_tolerance`` for ``rtt_patience`` windows cuts by ``rtt_ratio``; one cut per
  congestion event (requests carry the epoch they started in);
- refused connections cut at most once per ``down_period_s`` (30 s), the first cut of an
  outage stopping at one request in flight: a restart costs one halving;
- below one request in flight the *window* paces the agent (idle ``(1/w - 1)`` x the best RTT
  between requests, at most ``max_gap_s``, jittered after the cap), steering towards a small
  standing queue (``paced_delay_s``) so that 10,000 agents do not swamp a server; there,
  back-pressure cuts only when half of the last 40 answers (20 at least) were busy, so random
  refusals are retried rather than idled on.

Using it: ``try_start()`` hands out a ``Ticket`` or None; when None, ``wait_s()`` says how
long until one may be free (``math.inf``: when an answer comes). ``finished(ticket, signal,
size=entries)`` settles it (``forwarder/signals.py``: what an answer says about load).
Invariants (tests/test_concurrency.py): ``1 <= limit <= max_limit``; ``window <= max_limit``
and ``window > 0``; ``in_flight`` counts tickets handed out and not finished; a ticket is
finished exactly once. The object is pure (no sleeping, no threads, no I/O; time and
randomness are handed in) and each public method holds one lock for a few arithmetic steps,
so the sending threads can share it.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median_low

from forwarder.signals import Signal

DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_INITIAL_LIMIT = 1
DEFAULT_BACKPRESSURE_RATIO = 0.5
DEFAULT_RTT_RATIO = 0.75
DEFAULT_GROW_TOLERANCE = 1.25  # grow while the window's RTT is at most 1.25 x the best
DEFAULT_CUT_TOLERANCE = 1.5  # congested when the window's RTT is above 1.5 x the best
DEFAULT_RTT_SLACK_S = 0.005  # added to the best RTT: a few ms of jitter on a fast server
DEFAULT_RTT_PATIENCE = 2  # congested windows in a row before an RTT cut
DEFAULT_RTT_MIN_HORIZON_S = 300.0  # the best RTT is remembered for 150-300 s
DEFAULT_MAX_GAP_S = 30.0  # pacing floor: one request per 30 s (pass retry_interval)
DEFAULT_DOWN_PERIOD_S = 30.0  # refused/reset connections cut at most once per 30 s
DEFAULT_MIN_WINDOW = 1 / 256  # pacing floor while no RTT is known yet
DEFAULT_PACED_DELAY_S = 2.0  # below 1: the queueing delay (RTT - best) aimed at
DEFAULT_PACED_GAIN = 0.25  # below 1: at most +25 % per horizon (less near the aim)
DEFAULT_PACED_HORIZON_S = 20.0  # below 1: the time the gain is spread over
DEFAULT_PACED_STEP = 0.25  # below 1: at most -25 % per answer
DEFAULT_EWMA_ALPHA = 0.2  # the smoothed RTT reported in snapshots (not used to decide)
DEFAULT_PACE_SHARE = 0.5  # at 1 in flight, pace only when this share of answers says busy
_SHARE_MEMORY = 40  # answers the share is taken over: 8 of 40 expected at 20 % random 503s,
_SHARE_MIN = 20  # and 20 of 40 a chance of 1e-4 (10 of 20: 3e-3, met once in a long run)
_MAX_WINDOW_SAMPLES = 256


@dataclass(frozen=True)
class Ticket:
    """One started request; hand it back to ``finished`` exactly once."""

    seq: int
    started_at: float
    epoch: int  # the number of cuts when it started
    generation: int  # the number of window changes when it started


@dataclass(frozen=True)
class ConcurrencySnapshot:
    """The controller's state for status output and metrics."""

    limit: int
    max_limit: int
    window: float  # the limit; below 1 the share of time one request is in flight
    in_flight: int
    rtt_min_s: float | None  # the baseline for the last answered batch size
    rtt_ewma_s: float | None
    slow_start: bool
    cuts: int


class _MinFilter:
    """The minimum over the last ``horizon`` seconds, approximated with two half buckets."""

    __slots__ = ("_cur", "_half", "_prev", "_start", "value")

    def __init__(self, horizon: float, now: float) -> None:
        self._half = horizon / 2
        self._start = now
        self._cur = math.inf
        self._prev = math.inf
        self.value = math.inf

    def add(self, now: float, value: float) -> None:
        if now - self._start >= self._half:
            # A bucket that began more than a horizon ago may hold anything: forget it.
            self._prev = self._cur if now - self._start < 2 * self._half else math.inf
            self._cur = math.inf
            self._start = now
        if value < self._cur:
            self._cur = value
        self.value = min(self._cur, self._prev)


class ConcurrencyController:
    """AIMD on the requests in flight (paced below one), from answer times and back-pressure.

    ``try_start`` hands out a ticket while fewer than ``limit`` requests are in flight and
    the pacing allows; ``finished`` takes it back with the answer's ``Signal`` and the batch
    ``size``. Pass ``max_gap_s=retry_interval`` and ``max_size=batch_size``; every other
    tunable defaults to its ``DEFAULT_*`` constant. ``min_window=1`` turns pacing off.
    """

    def __init__(
        self,
        max_limit: int = DEFAULT_MAX_IN_FLIGHT,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        max_size: int | None = None,
        initial_limit: int = DEFAULT_INITIAL_LIMIT,
        backpressure_ratio: float = DEFAULT_BACKPRESSURE_RATIO,
        rtt_ratio: float = DEFAULT_RTT_RATIO,
        grow_tolerance: float = DEFAULT_GROW_TOLERANCE,
        cut_tolerance: float = DEFAULT_CUT_TOLERANCE,
        rtt_slack_s: float = DEFAULT_RTT_SLACK_S,
        rtt_patience: int = DEFAULT_RTT_PATIENCE,
        rtt_min_horizon_s: float = DEFAULT_RTT_MIN_HORIZON_S,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
        down_period_s: float = DEFAULT_DOWN_PERIOD_S,
        min_window: float = DEFAULT_MIN_WINDOW,
        paced_delay_s: float = DEFAULT_PACED_DELAY_S,
        paced_gain: float = DEFAULT_PACED_GAIN,
        paced_horizon_s: float = DEFAULT_PACED_HORIZON_S,
        paced_step: float = DEFAULT_PACED_STEP,
        pace_share: float = DEFAULT_PACE_SHARE,
    ) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        if not 1 <= initial_limit <= max_limit:
            raise ValueError("initial_limit must lie in [1, max_limit]")
        if not (0 < backpressure_ratio < 1 and 0 < rtt_ratio < 1 and 0 < paced_step < 1):
            raise ValueError("decrease ratios and paced_step must lie in (0, 1)")
        if not 1 <= grow_tolerance <= cut_tolerance:
            raise ValueError("need 1 <= grow_tolerance <= cut_tolerance")
        if rtt_patience < 1 or rtt_slack_s < 0 or not 0 < min_window <= 1:
            raise ValueError("need rtt_patience >= 1, rtt_slack_s >= 0, 0 < min_window <= 1")
        if min(rtt_min_horizon_s, max_gap_s, paced_delay_s, paced_gain, paced_horizon_s) <= 0:
            raise ValueError("horizons, gaps, delays and gains must be positive")
        if down_period_s < 0:
            raise ValueError("down_period_s must not be negative")
        self.max_limit = max_limit
        self._clock = clock
        self._rand = rand
        self._max_class = None if max_size is None else max(1, max_size).bit_length()
        self._bp_ratio = backpressure_ratio
        self._rtt_ratio = rtt_ratio
        self._grow_tol = grow_tolerance
        self._cut_tol = cut_tolerance
        self._slack = rtt_slack_s
        self._patience = rtt_patience
        self._horizon = rtt_min_horizon_s
        self._max_gap = max_gap_s
        self._down_period = max(down_period_s, max_gap_s)
        self._min_window = min_window
        self._paced_delay = paced_delay_s
        self._paced_gain = paced_gain
        self._paced_horizon = paced_horizon_s
        self._paced_step = paced_step
        self._pace_share = pace_share
        self._busy: deque[bool] = deque(maxlen=_SHARE_MEMORY)  # answers: back-pressure?
        self._down_cut_at = -math.inf
        self._down_since: float | None = None  # the first refusal since the last answer
        self._lock = threading.Lock()
        self._window = float(initial_limit)  # whole numbers from 1 up; a fraction below 1
        self._limit = initial_limit
        self._ssthresh = float(max_limit)  # slow start until the first cut
        self._paced_m = 1.0  # below 1: the window as a multiple of the floor
        self._paced_at = -math.inf  # when the last answer below 1 was judged
        self._next_start = -math.inf  # pacing: no start before this
        self._in_flight = 0
        self._seq = 0
        self._open: set[int] = set()
        self._epoch = 0
        self._generation = 0
        self._mins: dict[int, _MinFilter] = {}
        self._best: float | None = None  # the baseline for the last answered size class
        self._heavy: float | None = None  # ... for the heaviest batch (max_size)
        self._ewma: float | None = None
        # the current judging window (at a limit of 1 or more)
        self._window_end: float | None = None
        self._ratios: list[float] = []
        self._rtts: list[float] = []
        self._reached = False  # all slots were in use, or a request was held back
        self._peak = 0  # the most in flight during the window
        self._congested = 0

    # -- the forwarder's side -------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Requests allowed in flight at once: 1 to ``max_limit``."""
        return self._limit

    @property
    def window(self) -> float:
        """The limit, or below 1 the share of time one request may be in flight."""
        return self._window

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_start(self) -> Ticket | None:
        """A ticket for one more request, or None (limit reached or paced: see ``wait_s``)."""
        with self._lock:
            now = self._clock()
            if self._in_flight >= self._limit or now < self._next_start:
                self._reached = True
                return None
            self._in_flight += 1
            if self._in_flight >= self._limit:
                self._reached = True
            if self._in_flight > self._peak:
                self._peak = self._in_flight
            self._seq += 1
            self._open.add(self._seq)
            return Ticket(self._seq, now, self._epoch, self._generation)

    def wait_s(self) -> float:
        """Seconds until ``try_start`` can succeed: 0, the pacing gap, or inf (await answers)."""
        with self._lock:
            if self._in_flight >= self._limit:
                return math.inf
            return max(0.0, self._next_start - self._clock())

    def finished(self, ticket: Ticket, signal: Signal, *, size: int = 1) -> None:
        """Settle ``ticket`` with what its answer said; ``size``: the batch's entries."""
        with self._lock:
            try:
                self._open.remove(ticket.seq)
            except KeyError:
                raise ValueError(f"ticket {ticket.seq} finished twice or never started") from None
            self._in_flight -= 1
            now = self._clock()
            duration = max(0.0, now - ticket.started_at)
            if signal is Signal.BACKPRESSURE:
                self._busy.append(True)
                if ticket.epoch == self._epoch and self._may_pace():
                    self._cut(self._bp_ratio)  # (older requests saw the load we already cut)
            elif signal is Signal.UNREACHABLE:
                if self._down_since is None:
                    self._down_since = now
                # One cut per down period: a short outage (a restart) costs one halving that
                # stops at 1; a long one brings the agent back paced, as a fleet must.
                if ticket.epoch == self._epoch and now - self._down_cut_at >= self._down_period:
                    self._down_cut_at = now
                    if now - self._down_since >= self._down_period or self._window > 1:
                        self._cut(self._bp_ratio)
            elif signal is Signal.OK:
                self._down_since = None
                self._busy.append(False)
                self._sample(now, duration, max(1, size), ticket.generation)
            if self._window < 1:
                self._set_paced()  # the floor follows the baselines
            self._next_start = now + self._gap(duration) if self._window < 1 else -math.inf

    def snapshot(self) -> ConcurrencySnapshot:
        with self._lock:
            return ConcurrencySnapshot(
                limit=self._limit,
                max_limit=self.max_limit,
                window=self._window,
                in_flight=self._in_flight,
                rtt_min_s=self._best,
                rtt_ewma_s=self._ewma,
                slow_start=1 <= self._window < self._ssthresh,
                cuts=self._epoch,
            )

    # -- the rule (called with the lock held) -----------------------------------------------

    def _sample(self, now: float, rtt: float, size: int, generation: int) -> None:
        cls = size.bit_length()
        mins = self._mins.get(cls)
        if mins is None:
            mins = self._mins[cls] = _MinFilter(self._horizon, now)
        mins.add(now, rtt)
        best = self._best = self._baseline(cls)
        heavy = self._max_class
        placeholder = self._heavy is None
        self._heavy = best if heavy is None or heavy == cls else self._baseline(heavy)
        if placeholder and self._window < 1:
            # Paced before any RTT was known (down at start): the multiple was of the
            # placeholder floor; keep the window, not the multiple, or the first answer
            # would turn one halving into a gap of max_gap_s / 128.
            self._paced_m = max(1.0, self._window / self._floor())
        if self._ewma is None:
            self._ewma = rtt
        else:
            self._ewma += DEFAULT_EWMA_ALPHA * (rtt - self._ewma)
        if generation != self._generation:
            return  # started before the window last changed: it measured the old one
        if self._window < 1:
            self._pace(now, rtt - best)
            return
        if len(self._ratios) < _MAX_WINDOW_SAMPLES:
            self._ratios.append(rtt / (best + self._slack))
            self._rtts.append(rtt)
        if self._window_end is None:
            self._window_end = now + rtt
        elif now >= self._window_end and len(self._ratios) >= min(self._limit, self._peak):
            self._decide(now)  # at least one RTT and one round of requests at this limit

    def _may_pace(self) -> bool:
        """Whether back-pressure may cut now: always above one request in flight; at one and
        below, only when busy answers are a large share of the recent ones. A server that
        turns away a fixed share of requests at random (a flat RTT) is not helped by idling
        between requests: its batches are retried on their own. (Below one, a cut per busy
        answer against a growth of 25 % per 20 s took a 20 %-503 server to the floor: one
        request per retry_interval, for good.)"""
        if self._window > 1:
            return True
        n = len(self._busy)
        return n >= _SHARE_MIN and sum(self._busy) >= self._pace_share * n

    def _baseline(self, cls: int) -> float:
        """The best RTT for size class ``cls``, bounded by what the other classes imply."""
        best = math.inf
        for k, f in self._mins.items():
            v = f.value
            if k < cls:
                v *= 2 ** (cls - k)  # k times the entries take at most k times as long
            best = min(best, v)  # and a bigger batch is never faster than this one
        return best

    def _decide(self, now: float) -> None:
        """End of a window at a limit of 1 or more: cut, grow or hold."""
        ratio = median_low(self._ratios)
        if ratio > self._cut_tol:
            self._congested += 1
            if self._congested >= self._patience:
                self._cut(self._rtt_ratio)
                return
        else:
            self._congested = 0
            if ratio <= self._grow_tol and self._reached and self._window < self.max_limit:
                w = self._window
                w = min(w * 2, self._ssthresh) if w < self._ssthresh else w + 1
                self._set_window(min(w, float(self.max_limit)))
                return
        self._new_window(now + median_low(self._rtts))

    def _pace(self, now: float, delay: float) -> None:
        """Below 1: move the window so that the queueing delay tends to ``paced_delay_s``."""
        dt = now - self._paced_at
        self._paced_at = now
        error = (self._paced_delay - delay) / self._paced_delay
        factor = 1 + self._paced_gain * error * min(1.0, dt / self._paced_horizon)
        factor = min(1 + self._paced_gain, max(1 - self._paced_step, factor))
        if factor > 1 and not self._reached:
            return  # no evidence that more would be used
        self._paced_m = max(1.0, self._paced_m * factor)
        self._set_paced()
        self._generation += 1
        self._new_window(None)

    def _floor(self) -> float:
        """The lowest window: one request per ``max_gap_s`` for the heaviest batch."""
        best = self._heavy
        if best is None:
            return self._min_window
        return max(self._min_window, best / (best + self._max_gap))

    def _set_paced(self) -> None:
        """Below 1 the window is ``paced_m`` floors; from 1 on, limits again."""
        w = min(1.0, self._paced_m * self._floor())
        self._window = w
        self._limit = 1
        if w >= 1:
            self._paced_m = 1.0

    def _gap(self, duration: float) -> float:
        """Idle time after an answer at a window below 1, jittered after the cap.

        (1/w - 1) x the best RTT of the batch's size (a small batch is followed sooner than a
        big one); on the floor, the heaviest batch's, so: one request per ``max_gap_s``. The
        best RTT, not this answer's: gaps that grew with each slow answer would send all the
        agents slowed by one queue back at one moment.
        """
        best = self._heavy if self._paced_m <= 1.0 else self._best
        if best is None:
            best = duration
        gap = min(best * (1 / self._window - 1), self._max_gap)
        return gap * (0.5 + self._rand())

    def _cut(self, ratio: float) -> None:
        w = self._window
        self._epoch += 1
        self._congested = 0
        if w > 1:
            self._set_window(max(1.0, math.floor(w * ratio)))
            self._ssthresh = self._window
            return
        # From 1 down: paced, never under the floor, where a cut changes nothing any more.
        self._ssthresh = 1.0
        if w >= 1:
            self._paced_at = self._clock()  # paced growth counts from here
        self._paced_m = max(1.0, w * ratio / self._floor())
        self._set_paced()
        self._generation += 1
        self._new_window(None)

    def _set_window(self, w: float) -> None:
        self._window = w
        self._limit = max(1, int(w))
        self._generation += 1
        # judged after one more RTT, on requests started from now on
        self._new_window(None if self._ewma is None else self._clock() + self._ewma)

    def _new_window(self, end: float | None) -> None:
        self._ratios.clear()
        self._rtts.clear()
        self._reached = self._in_flight >= self._limit
        self._peak = self._in_flight
        self._window_end = end
