"""The answer table (``classify``) row by row, and the backoff policy (``RetryPolicy``)."""

from __future__ import annotations

import random

import pytest

from forwarder.outcome import Decision, Outcome, classify
from forwarder.retry import RETRY_AFTER_MAX, RetryPolicy, parse_retry_after
from tests.fakes import StepClock

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
HTTP_DATE_EPOCH = 1_445_412_480.0


def identity(delay: float) -> float:
    return delay


def apart() -> StepClock:
    """Failures far apart: only the exponential steps and the cap bound a delay."""
    return StepClock(1000.0)


class TestClassify:
    """protocol.md, "What each answer means to the agent", one row at a time."""

    @pytest.mark.parametrize("status", [200, 201, 202, 204, 206, 299])
    @pytest.mark.parametrize("n", [1, 500])
    def test_any_2xx_delivers_the_whole_batch(self, status: int, n: int) -> None:
        """Any 2xx means the whole batch is accepted."""
        assert classify(status, n) == Decision(Outcome.DELIVERED, "accepted")

    @pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
    def test_3xx_is_a_failed_attempt(self, status: int) -> None:
        """A redirect is not followed: it is a failed attempt, retried later."""
        decision = classify(status, 10)
        assert decision.outcome is Outcome.RETRY
        assert decision.auth is False
        assert decision.reason == f"redirect {status} not followed"

    @pytest.mark.parametrize("n", [1, 2, 500])
    def test_404_registers_again(self, n: int) -> None:
        """404 means the server forgot the agent, whatever the batch size."""
        assert classify(404, n).outcome is Outcome.REREGISTER

    @pytest.mark.parametrize("n", [2, 3, 500])
    def test_413_with_several_entries_splits(self, n: int) -> None:
        """413 on a batch of several entries splits it in halves."""
        assert classify(413, n).outcome is Outcome.SPLIT

    def test_413_on_one_entry_dead_letters_it(self) -> None:
        """413 on a single entry cannot be split further: the entry is kept as a dead letter."""
        assert classify(413, 1).outcome is Outcome.DEAD_LETTER

    @pytest.mark.parametrize("status", [400, 422])
    @pytest.mark.parametrize("n", [2, 8, 500])
    def test_rejection_of_several_entries_splits(self, status: int, n: int) -> None:
        """400/422 on several entries splits the batch to isolate what is rejected."""
        decision = classify(status, n)
        assert decision.outcome is Outcome.SPLIT
        assert decision.auth is False

    @pytest.mark.parametrize("status", [400, 422])
    def test_rejection_of_one_entry_dead_letters_it(self, status: int) -> None:
        """400/422 on an entry sent on its own sends it to the dead-letter set."""
        assert classify(status, 1).outcome is Outcome.DEAD_LETTER

    @pytest.mark.parametrize("status", [401, 403])
    @pytest.mark.parametrize("n", [1, 8])
    def test_rejected_key_keeps_everything_and_retries(self, status: int, n: int) -> None:
        """401/403 keep the batch, retry it, and flag the answer as an auth problem."""
        decision = classify(status, n)
        assert decision.outcome is Outcome.RETRY
        assert decision.auth is True

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    @pytest.mark.parametrize("n", [1, 8])
    def test_transient_answers_retry(self, status: int, n: int) -> None:
        """408, 429 and 5xx are transient: retry, not an auth problem."""
        assert classify(status, n) == Decision(Outcome.RETRY, f"server answered {status}")

    def test_outcomes_are_ordered_by_how_much_the_batch_changes(self) -> None:
        """DELIVERED < RETRY < REREGISTER < SPLIT < DEAD_LETTER."""
        assert sorted(Outcome, key=int) == [
            Outcome.DELIVERED,
            Outcome.RETRY,
            Outcome.REREGISTER,
            Outcome.SPLIT,
            Outcome.DEAD_LETTER,
        ]


class TestRetryPolicy:
    """Exponential backoff capped at retry_interval and at the streak's age, full jitter,
    Retry-After honoured."""

    def test_delays_double_from_one_second_up_to_the_cap(self) -> None:
        """Without jitter, failures far apart wait 1, 2, 4, … and then the cap."""
        policy = RetryPolicy(30.0, jitter=identity, clock=apart())
        delays = [policy.next_delay() for _ in range(8)]
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
        assert policy.failures == 8

    def test_a_cap_that_is_not_a_power_of_two_is_reached_exactly(self) -> None:
        """The last doubling is cut to the cap itself."""
        policy = RetryPolicy(10.0, jitter=identity, clock=apart())
        assert [policy.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]

    def test_full_jitter_is_applied_after_the_cap(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The default jitter draws uniformly from [0, capped delay] (here: its midpoint)."""
        monkeypatch.setattr(random, "uniform", lambda low, high: low + (high - low) / 2)
        policy = RetryPolicy(30.0, clock=apart())
        delays = [policy.next_delay() for _ in range(7)]
        assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]

    def test_full_jitter_stays_within_zero_and_the_capped_delay(self) -> None:
        """With real randomness every delay lies in [0, capped delay]."""
        policy = RetryPolicy(30.0, clock=apart())
        capped = [1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 195
        delays = [policy.next_delay() for _ in capped]
        assert all(0.0 <= d <= c for d, c in zip(delays, capped, strict=True))
        assert len(set(delays)) > 1  # it is jittered, not constant

    def test_retry_after_wins_even_beyond_the_cap(self) -> None:
        """A Retry-After of 120 s is honoured although retry_interval is 30 s."""
        policy = RetryPolicy(30.0, jitter=identity, clock=apart())
        assert policy.next_delay(120.0) == 120.0

    def test_retry_after_wins_when_shorter_than_the_backoff(self) -> None:
        """A Retry-After shorter than the current backoff is honoured as given."""
        policy = RetryPolicy(30.0, jitter=identity, clock=apart())
        for _ in range(5):
            policy.next_delay()
        assert policy.next_delay(0.5) == 0.5

    @pytest.mark.parametrize(
        ("retry_after", "expected"),
        [(3600.0, 3600.0), (3601.0, RETRY_AFTER_MAX), (86_400.0, 3600.0), (-5.0, 0.5), (0, 0.5)],
    )
    def test_retry_after_is_clamped_to_one_hour(self, retry_after: float, expected: float) -> None:
        """Retry-After is clamped to [0.5, 3600] seconds: never a tight loop, never > 1 h."""
        assert RetryPolicy(30.0, jitter=identity, clock=apart()).next_delay(retry_after) == expected

    def test_retry_after_still_counts_as_a_failure(self) -> None:
        """A failure answered with Retry-After moves the exponential sequence on."""
        policy = RetryPolicy(30.0, jitter=identity, clock=apart())
        assert policy.next_delay(120.0) == 120.0
        assert policy.next_delay() == 2.0
        assert policy.failures == 2

    def test_reset_starts_the_sequence_again(self) -> None:
        """After ``reset`` (a success) the next delay is 1 s again and failures is 0."""
        policy = RetryPolicy(30.0, jitter=identity, clock=apart())
        for _ in range(4):
            policy.next_delay()
        policy.reset()
        assert policy.failures == 0
        assert [policy.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]

    def test_a_wait_is_never_longer_than_the_failures_so_far(self) -> None:
        """An agent that waits each delay and fails again: the step of 2 s is cut to the
        streak's age (1 s); from there the age keeps pace with the steps, up to the cap."""
        clock = StepClock()
        policy = RetryPolicy(30.0, jitter=identity, clock=clock)
        delays = []
        for _ in range(8):
            delays.append(policy.next_delay())
            clock.now += delays[-1]
        assert delays == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]

    def test_after_a_ten_second_outage_the_wait_is_at_most_ten_seconds(self) -> None:
        """Early failures that came fast (small draws) brought the step to 16 s by the time
        the failures are 9.5 s old: the wait is drawn from [0, 9.5], not [0, 16]."""
        for jitter in (identity, None):
            clock = StepClock()
            policy = RetryPolicy(30.0, clock=clock, **({"jitter": jitter} if jitter else {}))
            for at in (0.0, 0.2, 0.5, 1.0):  # steps 1, 2, 4, 8 s
                clock.now = at
                policy.next_delay()
            clock.now = 9.5
            if jitter is identity:
                assert policy.next_delay() == 9.5
            else:
                draws = []
                for _ in range(200):  # the step is 30 s from here on; the age stays 9.5 s
                    draws.append(policy.next_delay())
                assert all(0.0 <= d <= 9.5 for d in draws)
                assert max(draws) > 5.0  # drawn over the whole range, not pinned low

    def test_reset_forgets_the_streaks_age(self) -> None:
        """After a success at t = 100 s, a new failure at 100.5 s is 0.5 s old: 1 s, not 2."""
        clock = StepClock()
        policy = RetryPolicy(30.0, jitter=identity, clock=clock)
        for at in (0.0, 40.0, 80.0):
            clock.now = at
            policy.next_delay()
        policy.reset()
        clock.now = 100.0
        assert policy.next_delay() == 1.0
        clock.now = 100.5
        assert policy.next_delay() == 1.0
        clock.now = 102.0
        assert policy.next_delay() == 2.0  # step 4 s, age 2 s

    def test_one_batch_waits_at_most_its_own_age(self) -> None:
        """batch_delay with ``age`` (seconds since that batch first failed): the step cut to
        the age, at least the first step; without ``age`` the step alone."""
        policy = RetryPolicy(30.0, jitter=identity, clock=StepClock())
        assert policy.batch_delay(4, age=9.5) == 9.5  # step 16 s
        assert policy.batch_delay(4) == 16.0
        assert policy.batch_delay(1, age=0.3) == 1.0  # step 2 s, at least 1 s
        assert policy.batch_delay(6, age=100.0) == 30.0  # the cap
        assert policy.batch_delay(4, 7.0, age=1.0) == 7.0  # Retry-After still wins

    def test_retry_after_is_not_cut_to_the_streaks_age(self) -> None:
        """The server's Retry-After wins over both bounds, also at the streak's first failure."""
        policy = RetryPolicy(30.0, jitter=identity, clock=StepClock())
        assert policy.next_delay(20.0) == 20.0

    def test_one_batch_backs_off_from_its_own_attempts(self) -> None:
        """batch_delay follows the batch's attempts (1, 2, 4 … 30 s), not the streak; a
        Retry-After still wins; each call counts as a failure."""
        policy = RetryPolicy(30.0, jitter=identity, clock=apart())
        policy.next_delay()
        policy.next_delay()  # a streak of two elsewhere
        assert [policy.batch_delay(a) for a in range(7)] == [1, 2, 4, 8, 16, 30, 30]
        assert policy.batch_delay(0, retry_after=7.0) == 7.0
        assert policy.failures == 10


class TestParseRetryAfter:
    """Retry-After as delta-seconds or an HTTP date; anything else is ignored."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("1.5", 1.5), ("-3", 0.0)],
    )
    def test_seconds(self, value: str, expected: float) -> None:
        """Delta-seconds are read as a float, never negative."""
        assert parse_retry_after(value) == expected

    def test_http_date_in_the_future(self) -> None:
        """An HTTP date gives the seconds from ``now`` until then."""
        assert parse_retry_after(HTTP_DATE, now=HTTP_DATE_EPOCH - 90.0) == 90.0

    def test_http_date_in_the_past_means_now(self) -> None:
        """An HTTP date already past gives 0 seconds."""
        assert parse_retry_after(HTTP_DATE, now=HTTP_DATE_EPOCH + 500.0) == 0.0

    @pytest.mark.parametrize(
        "value",
        [None, "", "soon", "12 parsecs", "Wed, 99 Foo 2015", "Mon, 32 Oct 2015 07:28:00 GMT"],
    )
    def test_absent_or_garbage_is_none(self, value: str | None) -> None:
        """A missing or unreadable header gives None (ordinary backoff applies)."""
        assert parse_retry_after(value, now=HTTP_DATE_EPOCH) is None
