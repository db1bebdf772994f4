"""The adaptive concurrency controller (``forwarder.concurrency``), behaviour by behaviour.

Time is a fake callable and the jitter a constant (``rand=0.5`` makes the x0.5-1.5 jitter
exactly 1), so every test is deterministic and nothing sleeps. The closed loops below keep as
many requests in flight as the controller allows, as the forwarder does with a backlog.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from forwarder.concurrency import (
    DEFAULT_MAX_GAP_S,
    ConcurrencyController,
    ConcurrencySnapshot,
    Ticket,
)
from forwarder.signals import Signal, signal_for_status

RttOf = Callable[[int, float], float]  # (in flight at start, time) -> seconds


class FakeTime:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(max_limit: int = 8, **kw: Any) -> tuple[ConcurrencyController, FakeTime]:
    """A controller on fake time whose jitter factor is exactly 1."""
    clock = FakeTime()
    return ConcurrencyController(max_limit, clock=clock, rand=lambda: 0.5, **kw), clock


def start(ctrl: ConcurrencyController) -> Ticket:
    ticket = ctrl.try_start()
    assert ticket is not None
    return ticket


def answer(ctrl: ConcurrencyController, clock: FakeTime, rtt: float, signal: Signal) -> None:
    """One request from start to answer, ``rtt`` seconds long."""
    ticket = start(ctrl)
    clock.now += rtt
    ctrl.finished(ticket, signal)


def closed_loop(
    ctrl: ConcurrencyController,
    clock: FakeTime,
    rtt_of: RttOf,
    until: float,
    *,
    size: Callable[[float], int] = lambda now: 1,
) -> list[tuple[float, int]]:
    """Keep ``ctrl.limit`` requests in flight until ``until``; (time, limit) after each answer.

    A request's RTT is ``rtt_of(in flight when it started, counting itself, start time)``.
    """
    heap: list[tuple[float, int, Ticket, int]] = []
    trace: list[tuple[float, int]] = []

    def fill() -> None:
        while (ticket := ctrl.try_start()) is not None:
            rtt = rtt_of(ctrl.in_flight, clock.now)
            heapq.heappush(heap, (clock.now + rtt, ticket.seq, ticket, size(clock.now)))

    fill()
    while clock.now < until:
        wait = ctrl.wait_s()
        if wait < math.inf and (not heap or clock.now + wait < heap[0][0]):
            clock.now += wait  # paced: the next start is due before the next answer
            fill()
            continue
        clock.now, _, ticket, n = heapq.heappop(heap)
        ctrl.finished(ticket, Signal.OK, size=n)
        trace.append((clock.now, ctrl.limit))
        fill()
    while heap:  # the requests still out are answered; no new ones
        clock.now, _, ticket, n = heapq.heappop(heap)
        ctrl.finished(ticket, Signal.OK, size=n)
    return trace


def limits_after(trace: list[tuple[float, int]], t: float) -> list[int]:
    return [limit for when, limit in trace if when >= t]


def flat(seconds: float) -> RttOf:
    return lambda n, now: seconds


def saturating(base: float, k: float, capacity: int) -> RttOf:
    """A server that answers in ``base`` up to ``capacity`` at once, ``k`` more per extra."""
    return lambda n, now: base + k * max(0, n - capacity)


class TestSignals:
    """What an HTTP status says about load (``signal_for_status``)."""

    @pytest.mark.parametrize("status", [200, 201, 204, 299])
    def test_2xx_is_ok(self, status: int) -> None:
        """Any 2xx is a success whose RTT is a sample."""
        assert signal_for_status(status) is Signal.OK

    @pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
    def test_overload_answers_are_backpressure(self, status: int) -> None:
        """408, 429, 502 (upstream down), 503 and 504 say the server is overloaded."""
        assert signal_for_status(status) is Signal.BACKPRESSURE

    @pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 413, 422, 500, 501])
    def test_other_answers_are_errors(self, status: int) -> None:
        """Redirects, rejections, auth failures and application errors say nothing about load."""
        assert signal_for_status(status) is Signal.ERROR


class TestStart:
    """A new controller: one request at a time, tickets counted, settings checked."""

    def test_starts_at_one(self) -> None:
        """The first limit is 1, whatever the cap."""
        ctrl, _ = make(8)
        assert (ctrl.limit, ctrl.window, ctrl.in_flight) == (1, 1.0, 0)

    def test_a_second_request_waits_for_an_answer(self) -> None:
        """At the limit there is no ticket, and the wait is 'until an answer comes'."""
        ctrl, _ = make(8)
        start(ctrl)
        assert ctrl.try_start() is None
        assert ctrl.wait_s() == math.inf

    def test_in_flight_counts_the_open_tickets(self) -> None:
        """in_flight goes up with each ticket and down with each finished one."""
        ctrl, _ = make(8, initial_limit=3)
        tickets = [start(ctrl) for _ in range(3)]
        assert ctrl.in_flight == 3
        for ticket in tickets:
            ctrl.finished(ticket, Signal.ERROR)
        assert ctrl.in_flight == 0

    def test_a_ticket_is_finished_once(self) -> None:
        """Finishing a ticket a second time is a bug and raises."""
        ctrl, _ = make(8)
        ticket = start(ctrl)
        ctrl.finished(ticket, Signal.OK)
        with pytest.raises(ValueError, match="twice"):
            ctrl.finished(ticket, Signal.OK)

    @pytest.mark.parametrize(
        "kw",
        [
            {"max_limit": 0},
            {"initial_limit": 9},
            {"backpressure_ratio": 1.0},
            {"rtt_ratio": 0.0},
            {"grow_tolerance": 2.0, "cut_tolerance": 1.5},
            {"min_window": 0.0},
            {"max_gap_s": 0.0},
        ],
    )
    def test_impossible_settings_are_refused(self, kw: dict[str, Any]) -> None:
        """Settings that would break an invariant raise ValueError."""
        args: dict[str, Any] = {"max_limit": 8, **kw}
        with pytest.raises(ValueError):
            ConcurrencyController(args.pop("max_limit"), **args)


class TestGrowsWhileFlat:
    """With answer times near the best seen, the limit grows to the cap, fast or slow."""

    @pytest.mark.parametrize("rtt", [0.005, 0.3])
    def test_a_flat_server_lets_the_limit_reach_the_cap(self, rtt: float) -> None:
        """A 5 ms server and a slow but steady 300 ms one both get the full cap."""
        ctrl, clock = make(8)
        trace = closed_loop(ctrl, clock, flat(rtt), until=clock.now + 60)
        assert ctrl.limit == 8
        assert ctrl.snapshot().cuts == 0
        assert limits_after(trace, clock.now - 30) == [8] * len(limits_after(trace, clock.now - 30))

    def test_slow_start_doubles_up_to_the_cap(self) -> None:
        """Before any cut the limit doubles per window: 1, 2, 4, 8 within a few RTTs."""
        ctrl, clock = make(8)
        t0 = clock.now
        trace = closed_loop(ctrl, clock, flat(0.1), until=t0 + 2)
        seen = sorted({limit for _, limit in trace})
        assert seen == [1, 2, 4, 8]
        reached = next(when for when, limit in trace if limit == 8)
        assert reached - t0 <= 1.0  # ten RTTs; +1 per window (ARC) needs more

    def test_growth_stops_where_the_demand_does(self) -> None:
        """One request at a time fills a limit of 1, never one of 2: the limit stops at 2."""
        ctrl, clock = make(8)
        for _ in range(100):
            answer(ctrl, clock, 0.05, Signal.OK)
            clock.now += 1.0
        assert ctrl.limit == 2

    def test_bigger_batches_are_not_read_as_congestion(self) -> None:
        """Full batches after small ones take longer but are no reason to cut."""
        ctrl, clock = make(8)
        for _ in range(50):  # the best RTT of 50-entry batches: 50 ms
            answer(ctrl, clock, 0.05, Signal.OK)
        sizes = lambda now: 500  # noqa: E731
        closed_loop(ctrl, clock, flat(0.3), until=clock.now + 60, size=sizes)
        assert ctrl.limit == 8
        assert ctrl.snapshot().cuts == 0


class TestBackpressure:
    """429/503/timeouts cut multiplicatively, once per congestion event, never below 1."""

    def at_cap(self) -> tuple[ConcurrencyController, FakeTime]:
        ctrl, clock = make(8, initial_limit=8)
        answer(ctrl, clock, 0.1, Signal.OK)
        return ctrl, clock

    @pytest.mark.parametrize("status", [503, 429, 504])
    def test_an_overload_answer_halves_the_limit(self, status: int) -> None:
        """One 503 (or 429, or 504) at a limit of 8 leaves 4."""
        ctrl, clock = self.at_cap()
        ticket = start(ctrl)
        clock.now += 0.01
        ctrl.finished(ticket, signal_for_status(status))
        assert ctrl.limit == 4

    def test_a_timeout_cuts_like_a_503(self) -> None:
        """A request that timed out is back-pressure: the limit halves."""
        ctrl, clock = self.at_cap()
        ticket = start(ctrl)
        clock.now += 60.0
        ctrl.finished(ticket, Signal.BACKPRESSURE)
        assert ctrl.limit == 4

    def test_a_burst_of_rejections_cuts_once(self) -> None:
        """Eight 503s to eight requests started together halve the limit once, not 8 times."""
        ctrl, clock = self.at_cap()
        tickets = [start(ctrl) for _ in range(8)]
        clock.now += 0.01
        for ticket in tickets:
            ctrl.finished(ticket, Signal.BACKPRESSURE)
        assert ctrl.limit == 4
        assert ctrl.snapshot().cuts == 1

    def test_new_rejections_after_the_cut_cut_again(self) -> None:
        """A request started after a cut that is rejected again cuts again."""
        ctrl, clock = make(8, initial_limit=8)
        answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        assert ctrl.limit == 2

    def test_never_below_one(self) -> None:
        """However many rejections, one request may still be in flight."""
        ctrl, clock = make(8, initial_limit=8)
        for _ in range(50):
            ticket = ctrl.try_start()
            if ticket is None:
                clock.now += ctrl.wait_s()
                ticket = start(ctrl)
            clock.now += 0.01
            ctrl.finished(ticket, Signal.BACKPRESSURE)
            assert ctrl.limit >= 1
        assert ctrl.limit == 1
        assert ctrl.window > 0

    def test_errors_neither_cut_nor_count_as_samples(self) -> None:
        """A 400 or a DNS failure changes neither the limit nor the RTTs."""
        ctrl, clock = self.at_cap()
        before = ctrl.snapshot()
        for _ in range(20):
            answer(ctrl, clock, 5.0, Signal.ERROR)
        after = ctrl.snapshot()
        assert (after.limit, after.rtt_min_s, after.rtt_ewma_s, after.cuts) == (
            before.limit,
            before.rtt_min_s,
            before.rtt_ewma_s,
            before.cuts,
        )


class TestRisingRtt:
    """Answer times that rise above the best seen cut the limit; it settles, it does not swing."""

    @pytest.mark.parametrize("capacity", [2, 4, 6])
    def test_settles_near_the_servers_best_concurrency(self, capacity: int) -> None:
        """RTT = 100 ms + 100 ms per request beyond capacity: the limit stays within one of it."""
        ctrl, clock = make(8)
        t0 = clock.now
        trace = closed_loop(ctrl, clock, saturating(0.1, 0.1, capacity), until=t0 + 120)
        settled = limits_after(trace, t0 + 30)
        assert ctrl.snapshot().cuts > 0
        assert capacity - 1 <= min(settled)
        assert max(settled) <= capacity + 1

    def test_a_rise_cuts_by_a_quarter_after_two_windows(self) -> None:
        """At 8 with 100 ms answers, answers of 400 ms cut the limit to 6 (x0.75), not to 4."""
        ctrl, clock = make(8)
        t0 = clock.now
        closed_loop(ctrl, clock, flat(0.1), until=t0 + 10)
        trace = closed_loop(ctrl, clock, flat(0.4), until=t0 + 12)
        when, limit = next((when, limit) for when, limit in trace if limit != 8)
        assert limit == 6
        assert when >= t0 + 10 + 2 * 0.4  # two congested windows first

    def test_sustained_queueing_does_not_become_the_baseline(self) -> None:
        """RTT tripled for two minutes by others' load: the limit stays down, the best stays."""
        ctrl, clock = make(8)
        t0 = clock.now
        closed_loop(ctrl, clock, flat(0.1), until=t0 + 10)
        assert ctrl.limit == 8
        trace = closed_loop(ctrl, clock, flat(0.3), until=t0 + 130)
        assert max(limits_after(trace, t0 + 20)) == 1
        assert ctrl.snapshot().rtt_min_s == pytest.approx(0.1)

    def test_a_server_that_became_slower_is_relearned(self) -> None:
        """When RTT stays 3x higher for longer than the horizon, it is the new best."""
        ctrl, clock = make(8, rtt_min_horizon_s=300)
        t0 = clock.now
        closed_loop(ctrl, clock, flat(0.1), until=t0 + 10)
        closed_loop(ctrl, clock, flat(0.3), until=t0 + 700)
        assert ctrl.snapshot().rtt_min_s == pytest.approx(0.3)
        assert ctrl.limit == 8


class TestOutliers:
    """One slow answer is not a trend."""

    def test_one_slow_answer_does_not_cut(self) -> None:
        """At the cap with 100 ms answers, one 5 s answer leaves the limit at 8."""
        ctrl, clock = make(8)
        t0 = clock.now
        slow_at = t0 + 20

        def rtt_of(n: int, now: float) -> float:
            return 5.0 if slow_at <= now < slow_at + 0.1 else 0.1

        trace = closed_loop(ctrl, clock, rtt_of, until=t0 + 40)
        assert set(limits_after(trace, t0 + 5)) == {8}
        assert ctrl.snapshot().cuts == 0


class TestPacing:
    """Below one request in flight the controller paces: a gap after each answer."""

    def test_backpressure_at_one_paces(self) -> None:
        """Half of 20 answers 503 at a limit of 1 halve the window: one request per two RTTs.
        (Not before 20 answers: one busy answer of two is no share.)"""
        ctrl, clock = make(8)
        for _ in range(10):
            answer(ctrl, clock, 0.1, Signal.OK)
            clock.now += 10.0  # (spaced: the limit does not grow meanwhile)
        for _ in range(9):
            answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        assert (ctrl.limit, ctrl.window) == (1, 1.0)
        answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        assert (ctrl.limit, ctrl.window) == (1, pytest.approx(0.5))
        assert ctrl.try_start() is None
        clock.now += ctrl.wait_s()
        answer(ctrl, clock, 0.1, Signal.OK)
        assert ctrl.try_start() is None
        assert ctrl.wait_s() == pytest.approx(0.1, rel=0.05)  # (1/w - 1) x best RTT

    def test_the_floor_is_one_request_per_max_gap(self) -> None:
        """After many rejections the agent sends once per max_gap_s, never less often."""
        ctrl, clock = make(8, max_size=500)
        ticket = start(ctrl)
        clock.now += 0.3
        ctrl.finished(ticket, Signal.OK, size=500)
        for _ in range(30):
            clock.now += ctrl.wait_s()
            answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
            assert ctrl.wait_s() <= DEFAULT_MAX_GAP_S
        assert ctrl.wait_s() == pytest.approx(DEFAULT_MAX_GAP_S)

    @pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.5), (0.999, 1.5)])
    def test_the_jitter_is_applied_after_the_cap(self, rand: float, factor: float) -> None:
        """On the floor the gap is spread over 0.5-1.5 x max_gap_s, so agents never line up."""
        clock = FakeTime()
        ctrl = ConcurrencyController(8, clock=clock, rand=lambda: rand, max_gap_s=30.0)
        answer(ctrl, clock, 0.3, Signal.OK)
        for _ in range(30):
            clock.now += ctrl.wait_s()
            answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        assert ctrl.wait_s() == pytest.approx(30.0 * factor, rel=0.01)

    def test_short_queues_let_the_window_grow_back_to_one(self) -> None:
        """Paced down to the floor, answers without queueing bring it back to a limit of 1."""
        ctrl, clock = make(8)
        answer(ctrl, clock, 0.3, Signal.OK)
        for _ in range(30):
            clock.now += ctrl.wait_s()
            answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        assert ctrl.window < 0.02
        t0 = clock.now
        closed_loop(ctrl, clock, flat(0.3), until=t0 + 900)
        assert ctrl.window >= 1
        assert ctrl.limit >= 1

    def test_long_queues_shrink_the_window(self) -> None:
        """Paced, answers 6 s slower than the best (a long shared queue) shrink the window."""
        ctrl, clock = make(8)
        answer(ctrl, clock, 0.3, Signal.OK)
        answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        w0 = ctrl.window
        closed_loop(ctrl, clock, flat(6.3), until=clock.now + 120)
        assert ctrl.window < w0 / 2

    def test_random_rejections_at_a_flat_rtt_do_not_pace(self) -> None:
        """A server that answers every fifth request 503 at a flat RTT: the agent never idles
        between requests (its rejected batches are retried on their own)."""
        ctrl, clock = make(8)
        for i in range(500):
            clock.now += ctrl.wait_s()
            answer(ctrl, clock, 0.02, Signal.BACKPRESSURE if i % 5 == 4 else Signal.OK)
            assert ctrl.window >= 1 and ctrl.wait_s() == 0.0

    def test_random_rejections_after_a_burst_do_not_sink_the_window(self) -> None:
        """A burst of busy answers paces the agent; then every fifth answer 503 at a flat
        RTT: no further cut (the window grows back to 1), never down to the floor."""
        ctrl, clock = make(8, max_gap_s=30.0, max_size=500)
        answer(ctrl, clock, 0.02, Signal.OK)
        for _ in range(20):
            clock.now += ctrl.wait_s()
            answer(ctrl, clock, 0.02, Signal.BACKPRESSURE)
        assert ctrl.window < 1
        low = ctrl.window
        for i in range(400):
            clock.now += ctrl.wait_s() + 0.5
            answer(ctrl, clock, 0.02, Signal.BACKPRESSURE if i % 5 == 4 else Signal.OK)
            low = min(low, ctrl.window)
        assert ctrl.window == 1.0 and low >= 0.1

    def test_a_server_that_mostly_rejects_is_paced(self) -> None:
        """Three answers in four are 503: the window goes below one request in flight."""
        ctrl, clock = make(8)
        for i in range(40):
            clock.now += ctrl.wait_s()
            answer(ctrl, clock, 0.02, Signal.OK if i % 4 == 0 else Signal.BACKPRESSURE)
        assert ctrl.window < 0.5

    def test_an_outage_cuts_once_per_down_period(self) -> None:
        """Refused connections for 10 s halve the limit once; for 10 minutes, they bring the
        agent down near the floor."""
        ctrl, clock = make(8, initial_limit=8, max_gap_s=30.0, max_size=500)
        ticket = start(ctrl)
        clock.now += 0.1
        ctrl.finished(ticket, Signal.OK, size=500)
        for _ in range(10):
            answer(ctrl, clock, 0.001, Signal.UNREACHABLE)
            clock.now += 1.0
        assert (ctrl.limit, ctrl.window) == (4, 4.0)
        for _ in range(20):
            clock.now += 30.0
            answer(ctrl, clock, 0.001, Signal.UNREACHABLE)
        assert ctrl.window < 0.01

    def test_a_short_retry_interval_does_not_multiply_the_cuts(self) -> None:
        """retry_interval 1: ten refusals in 10 s are still one outage, one halving."""
        ctrl, clock = make(8, initial_limit=2, max_gap_s=1.0, max_size=50)
        ticket = start(ctrl)
        clock.now += 0.005
        ctrl.finished(ticket, Signal.OK, size=50)
        for _ in range(10):
            answer(ctrl, clock, 0.001, Signal.UNREACHABLE)
            clock.now += 1.0
        assert (ctrl.limit, ctrl.window) == (1, 1.0)

    def test_a_short_outage_never_paces(self) -> None:
        """Refused for 20 s at one request in flight (a server restart): no pacing after it."""
        ctrl, clock = make(8, max_gap_s=1.0, max_size=50)
        for _ in range(20):
            answer(ctrl, clock, 0.001, Signal.UNREACHABLE)
            clock.now += 1.0
        assert (ctrl.limit, ctrl.window, ctrl.wait_s()) == (1, 1.0, 0.0)

    def test_down_at_start_keeps_its_window_when_the_first_rtt_arrives(self) -> None:
        """Paced by a long outage before any answer: the first RTT does not turn the
        halving into the floor; the backlog is followed after one RTT, not after seconds."""
        ctrl, clock = make(8, max_gap_s=30.0, max_size=50)
        for _ in range(31):
            answer(ctrl, clock, 0.001, Signal.UNREACHABLE)
            clock.now += 1.0
        assert ctrl.window == 0.5
        clock.now += ctrl.wait_s()
        ticket = start(ctrl)
        clock.now += 0.005
        ctrl.finished(ticket, Signal.OK, size=50)
        assert ctrl.window == pytest.approx(0.5, rel=0.05)  # (paced growth: +1.3 %)
        assert ctrl.wait_s() == pytest.approx(0.005, rel=0.05)

    def test_min_window_one_turns_pacing_off(self) -> None:
        """With min_window=1 the window stays at 1 and there is never a gap."""
        ctrl, clock = make(8, min_window=1.0)
        for _ in range(10):
            answer(ctrl, clock, 0.01, Signal.BACKPRESSURE)
        answer(ctrl, clock, 0.1, Signal.OK)
        assert (ctrl.window, ctrl.wait_s()) == (1.0, 0.0)


class QueueServer:
    """``workers`` workers behind one FIFO queue; each request takes ``service_s`` of work.

    Answers arrive ``net_s`` after the work is done. Nothing is rejected: the queue is where
    too much concurrency shows, as longer answer times.
    """

    def __init__(self, workers: int, service_s: float, net_s: float) -> None:
        self.workers = workers
        self.service_s = service_s
        self.net_s = net_s
        self.free_at = [0.0] * workers  # when each worker is next free (FIFO = earliest)

    def answer_at(self, now: float) -> float:
        i = min(range(self.workers), key=self.free_at.__getitem__)
        begins = max(now, self.free_at[i])
        self.free_at[i] = begins + self.service_s
        return self.free_at[i] + self.net_s


class TestClosedLoopWithAQueueingServer:
    """A small simulation: an agent with a backlog against a server with a rate and a queue."""

    def test_the_limit_converges_and_the_server_stays_busy(self) -> None:
        """4 workers x 100 ms, 20 ms away: the limit settles at 4-7, throughput >= 90 %."""
        ctrl, clock = make(8)
        server = QueueServer(workers=4, service_s=0.1, net_s=0.02)
        t0 = clock.now
        # FIFO: a request's answer time is fixed when it is sent.
        trace = closed_loop(ctrl, clock, lambda n, now: server.answer_at(now) - now, t0 + 120)
        settled = limits_after(trace, t0 + 30)
        assert min(settled) >= 4 and max(settled) <= 7
        answers = sum(1 for when, _ in trace if when >= t0 + 30)
        assert answers >= 0.9 * (4 / 0.1) * 90


class TestThreads:
    """The sending threads can share one controller."""

    def test_concurrent_use_keeps_the_invariants(self) -> None:
        """Eight threads starting and finishing 2,000 requests leave in_flight at 0."""
        ctrl = ConcurrencyController(8, rand=lambda: 0.5)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for i in range(2_000):
                    ticket = ctrl.try_start()
                    if ticket is None:
                        continue
                    assert 1 <= ctrl.limit <= 8
                    signal = Signal.BACKPRESSURE if i % 97 == 0 else Signal.OK
                    ctrl.finished(ticket, signal, size=1 + i % 500)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert ctrl.in_flight == 0
        assert 1 <= ctrl.limit <= 8


class TestSnapshot:
    """The snapshot is a frozen value for status output and metrics."""

    def test_snapshot_reports_the_state(self) -> None:
        """limit, window, in flight, best and smoothed RTT, slow start, cuts."""
        ctrl, clock = make(8)
        answer(ctrl, clock, 0.2, Signal.OK)
        start(ctrl)
        snap = ctrl.snapshot()
        assert snap == ConcurrencySnapshot(
            limit=1,
            max_limit=8,
            window=1.0,
            in_flight=1,
            rtt_min_s=pytest.approx(0.2),  # type: ignore[arg-type]
            rtt_ewma_s=pytest.approx(0.2),  # type: ignore[arg-type]
            slow_start=True,
            cuts=0,
        )
        with pytest.raises(AttributeError):
            snap.limit = 2  # type: ignore[misc]
