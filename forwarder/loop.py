"""The batch loop: lease → send (several in flight) → settle each by its own answer.

One thread (``run``) owns every decision: it leases, hands batches to the sending threads,
and settles each when its answer is in. The sending threads only encode and send. The number
in flight adapts between 1 and ``max_in_flight`` (``ConcurrencyController``). A batch waiting
to be retried keeps its place in flight, so an outage is probed by as many requests as the
controller allows (one, after its cuts), each after its backoff.

With ``max_in_flight`` 1 a source's entries are sent strictly in order; with more, batches may
be accepted out of order, each still in order inside.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace

import structlog

from forwarder.concurrency import ConcurrencyController, Ticket
from forwarder.health import SendHealth
from forwarder.outcome import FAILURE_KINDS, Outcome, failure_kind
from forwarder.registrar import Registrar
from forwarder.retry import RetryPolicy
from forwarder.senders import InlineExecutor
from forwarder.signals import Signal
from forwarder.sink import Delivery, Sink
from ila_core.clock import Clock
from ila_core.counters import Counts, Histogram
from ila_core.errors import BufferWriteError
from ila_core.health import HealthBoard, describe_write_failure
from queue_store.batch import Batch
from queue_store.store import QueueStore, Selection

log = structlog.get_logger("forwarder")

IDLE_WAIT = 1.0
UNREGISTERED_WAIT = 0.2  # how often the batch loop looks again while registration is pending
SHUTDOWN_GRACE = 5.0  # seconds batches in flight may take to settle at shutdown
LEASE_AHEAD = 4  # batches leased in one transaction at most, when as many may be sent
ACK_RETRY_S = 1.0  # a batch whose ack could not be written is sent again after this
BUFFER_PART = "buffer:forwarder"


@dataclass(eq=False)
class _Flight:
    """A batch being sent."""

    batch: Batch
    ticket: Ticket
    future: Future[Delivery]


@dataclass(eq=False)
class _Waiting:
    """A batch whose send failed, due again at ``due`` (it keeps its place in flight)."""

    batch: Batch
    due: float


class Forwarder:
    """Sends what the store holds; acks only after the output confirmed it."""

    def __init__(
        self,
        store: QueueStore,
        sink: Sink,
        registrar: Registrar,
        *,
        batch_size: int,
        batch_interval: float,
        retry: RetryPolicy,
        clock: Clock,
        health: SendHealth | None = None,
        wake: threading.Event | None = None,
        selection: Selection | None = None,
        max_in_flight: int = 1,
        batch_max_bytes: int | None = None,
        controller: ConcurrencyController | None = None,
        executor: Executor | None = None,
        health_board: HealthBoard | None = None,
        counts: Counts | None = None,
        durations: Histogram | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.registrar = registrar
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.batch_max_bytes = batch_max_bytes
        self.retry = retry
        self.clock = clock
        self.wake = wake or threading.Event()
        self.controller = controller or ConcurrencyController(
            max_in_flight, clock=clock.monotonic, max_gap_s=retry.cap, max_size=batch_size
        )
        self.executor = executor or InlineExecutor()
        self.sending: list[_Flight] = []
        self.waiting: list[_Waiting] = []  # in the order they were first sent
        self.ready: deque[Batch] = deque()  # split halves, batches to send again at once
        self.paused_until = 0.0  # Retry-After or re-registration: the whole sender waits
        self.sent_lines = 0
        self.dead_lines = 0
        self.health = health or SendHealth(lambda v: store.set_meta("last_error", v), clock.wall)
        self.health_board = health_board or HealthBoard()
        self.counts = counts or Counts()  # delivered, send failures by kind
        for kind in FAILURE_KINDS:  # every kind has its count, 0 until it happens
            self.counts.add("send_failures", 0, kind)
        self.durations = durations or Histogram()  # each request's answer time
        self._buffer_problem = False
        self._auth_streak = False
        self.selection = selection  # replay: exactly these items, no batch_interval wait
        self.exhausted = False

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        """Until the clock stops; then settle what is in flight (up to SHUTDOWN_GRACE) and
        give back the rest."""
        while not self.clock.stopped:
            try:
                wait = self.step()
            except BufferWriteError as exc:
                # A lease could not be written (disk full, I/O error): nothing was taken;
                # what is in flight stays in flight. Try again later.
                self._buffer_failed(exc)
                wait = IDLE_WAIT
            if wait > 0:
                self.wake.wait(wait)
                self.wake.clear()
        self.wind_down(SHUTDOWN_GRACE)

    def wind_down(self, grace: float) -> None:
        """Shutdown: wait up to ``grace`` seconds for the answers in flight, settle them,
        and put everything else back in the buffer (sent again after the restart)."""
        deadline = self.clock.monotonic() + grace
        while True:
            with contextlib.suppress(BufferWriteError):
                self._settle_done()
            left = deadline - self.clock.monotonic()
            if not self.sending or left <= 0:
                break
            self.wake.wait(min(0.05, left))
            self.wake.clear()
        if self.sending:
            log.warning("batch_abandoned_at_shutdown", batches=len(self.sending),
                        note="resent after restart")  # fmt: skip
        with contextlib.suppress(BufferWriteError):
            self.abandon()

    # -- one step -------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing in flight, waiting or queued."""
        return not (self.sending or self.waiting or self.ready)

    @property
    def next_attempt(self) -> float:
        """The earliest monotonic time a send may go out (a backoff or Retry-After)."""
        if not self.waiting:
            return self.paused_until
        return max(self.paused_until, self.waiting[0].due)

    def step(self, *, flush: bool = False) -> float:
        """Settle what was answered, send what may go; the seconds until something is due.

        ``flush`` sends a partial batch without waiting for batch_interval (replay, tests).
        """
        self._settle_done()
        now = self.clock.monotonic()
        if now < self.paused_until:
            return self.paused_until - now
        if not self.registrar.registered.is_set():
            self.registrar.needed.set()
            return UNREGISTERED_WAIT
        for _ in range(self.controller.max_limit):  # a step sends at most a full window
            batch, wait = self._next(now, flush)
            if batch is None:
                return self._wake_in(wait)
            ticket = self.controller.try_start()
            if ticket is None:  # at the limit, or paced: keep it for later
                self.ready.appendleft(batch)
                return self._wake_in(min(IDLE_WAIT, self.controller.wait_s()))
            self._launch(batch, ticket)
            now = self.clock.monotonic()
            if now < self.paused_until or not self.registrar.registered.is_set():
                break
        return self._wake_in(0.0)

    def _next(self, now: float, flush: bool) -> tuple[Batch | None, float]:
        """The next batch to send and, when there is none, the seconds until one is due."""
        if len(self.sending) >= self.controller.limit:
            return None, IDLE_WAIT  # woken by an answer
        if self.waiting and self.waiting[0].due <= now:
            return self.waiting.pop(0).batch, 0.0
        if self.ready:
            return self.ready.popleft(), 0.0
        if self.waiting and self.controller.max_limit == 1:
            return None, IDLE_WAIT  # strict order: nothing overtakes a batch waiting to retry
        return self._lease(flush)

    def _lease(self, flush: bool) -> tuple[Batch | None, float]:
        """Take the next batch from the store; the wait instead when none is due yet."""
        if self.selection is not None:
            lease = self.store.lease(
                self.batch_size, self.selection, max_bytes=self.batch_max_bytes
            )
            if lease is None:
                self.exhausted = True
                return None, IDLE_WAIT
            # Each item once per replay, even when settling puts it back in a selected state.
            self.selection = replace(self.selection, after_id=max(lease.item_ids))
            return Batch(lease, lease.entries), 0.0
        # A partial batch waits until its oldest line is batch_interval old. With room for
        # several requests, as many batches are leased at once (the extra ones wait in
        # ``ready``, in order).
        wall = self.clock.wall()
        room = min(LEASE_AHEAD, self.controller.limit - len(self.sending))
        leased, head = self.store.lease_several(
            self.batch_size,
            room,
            max_bytes=self.batch_max_bytes,
            committed_by=math.inf if flush else wall - self.batch_interval,
        )
        if leased:
            self.ready.extend(Batch(lease, lease.entries) for lease in leased[1:])
            return Batch(leased[0], leased[0].entries), 0.0
        if head.oldest is None or head.full:  # nothing ready, or another process won it
            return None, IDLE_WAIT
        return None, max(0.0, head.oldest + self.batch_interval - wall) or IDLE_WAIT

    def _launch(self, batch: Batch, ticket: Ticket) -> None:
        future = self.executor.submit(self.sink.send, batch.entries)
        flight = _Flight(batch, ticket, future)
        self.sending.append(flight)
        if future.done():
            self._settle(flight)
        else:
            future.add_done_callback(lambda _f: self.wake.set())

    def _wake_in(self, wait: float) -> float:
        """Seconds until the next step has something to do (answers wake it earlier)."""
        now = self.clock.monotonic()
        if now < self.paused_until:
            return self.paused_until - now
        if len(self.sending) >= self.controller.limit:
            return IDLE_WAIT  # until an answer comes in
        if self.ready:
            wait = 0.0
        elif self.waiting:
            due = max(0.0, self.waiting[0].due - now)
            # Strict order: nothing else may go before it. Otherwise leasing goes on meanwhile.
            wait = due if self.controller.max_limit == 1 else min(wait, due)
        # Below one request in flight the controller paces the starts: not before its gap.
        return max(wait, min(IDLE_WAIT, self.controller.wait_s()))

    # -- settling -------------------------------------------------------------------------

    def _settle_done(self) -> None:
        for flight in [f for f in self.sending if f.future.done()]:
            self._settle(flight)

    def _settle(self, flight: _Flight) -> None:
        """The answer table, applied to one batch."""
        self.sending.remove(flight)
        batch = flight.batch
        try:
            delivery = flight.future.result()
        except Exception as exc:  # a bug in a sink: keep the batch, say so loudly
            log.exception("send_crashed", error=str(exc))
            self.controller.finished(flight.ticket, Signal.ERROR, size=len(batch.entries))
            self._retry(batch, None, f"send crashed: {type(exc).__name__}", auth=False, pause=True)
            return
        # Nothing sent (split before sending) says nothing about the output's load.
        signal = delivery.signal if delivery.sent else Signal.ERROR
        self.controller.finished(flight.ticket, signal, size=len(batch.entries))
        if delivery.sent:
            self.durations.observe(self.clock.monotonic() - flight.ticket.started_at)
        decision = delivery.decision
        outcome = decision.outcome
        n = len(batch.entries)
        if delivery.per_entry:
            self._settle_each(batch, delivery)
        elif outcome is Outcome.DELIVERED:
            if not self._write_settlement(batch.ack, batch):
                return
            self.sent_lines += n
            self.counts.add("delivered", n)
            self.retry.reset()
            self._recovered()
        elif outcome is Outcome.RETRY:
            # The server said so (Retry-After), or is out of reach, or refuses the key: every
            # batch would fail alike, so the whole sender waits. Otherwise (a 503, a 500) only
            # this batch waits, and the controller sends less.
            everyone = delivery.retry_after is not None or not delivery.answered or decision.auth
            self._retry(batch, delivery.retry_after, decision.reason, auth=decision.auth,
                        pause=everyone)  # fmt: skip
        elif outcome is Outcome.REREGISTER:
            self.ready.appendleft(batch.retry(None))  # the sender's failure, not the batch's
            self.registrar.invalidate()
            # A server that keeps forgetting us must not turn into a register/send spin.
            due = self.clock.monotonic() + self.retry.next_delay()
            self.paused_until = max(self.paused_until, due)
        elif outcome is Outcome.SPLIT:
            first, second = batch.split()
            self.ready.appendleft(second)
            self.ready.appendleft(first)
            log.info("batch_split", lines=n, reason=decision.reason)
        else:
            entry = batch.entries[0]
            if not self._write_settlement(batch.dead_letter, batch):
                return
            self.dead_lines += 1
            log.error(
                "entry_dead_lettered",
                source=entry.source,
                event_uid=entry.event_uid,
                reason=decision.reason,
            )

    def _settle_each(self, batch: Batch, delivery: Delivery) -> None:
        """A broker's answer, entry by entry: confirmed acked, refused dead-lettered, failed
        sent again after a backoff."""
        refused, failed = set(delivery.refused), set(delivery.failed)
        confirmed = [i for i in range(len(batch.entries)) if i not in refused and i not in failed]
        rest: list[Batch | None] = []
        now = self.clock.monotonic()
        settle = lambda: rest.append(batch.partition(confirmed, sorted(refused), now))  # noqa: E731
        if not self._write_settlement(settle, batch):
            return
        self.sent_lines += len(confirmed)
        self.counts.add("delivered", len(confirmed))
        self.dead_lines += len(refused)
        for i in sorted(refused):
            entry = batch.entries[i]
            log.error("entry_dead_lettered", source=entry.source, event_uid=entry.event_uid,
                      reason=delivery.decision.reason)  # fmt: skip
        if confirmed:
            self.retry.reset()
            self._recovered()
        again = rest[0] if rest else None
        if again is not None:
            self._retry(again, delivery.retry_after, delivery.decision.reason,
                        auth=delivery.decision.auth, pause=not delivery.answered,
                        fresh=True)  # fmt: skip

    def _write_settlement(self, verb: Callable[[], None], batch: Batch) -> bool:
        """Write an ack or a dead letter; when the buffer cannot be written (disk full) the
        batch is sent again later (a duplicate the server drops by event_uid, never a loss)."""
        try:
            verb()
        except BufferWriteError as exc:
            self._buffer_failed(exc)
            # Not a failure of the batch: its attempts and age go on as they were.
            again = Batch(batch.lease, batch.entries, batch.attempt + 1, batch.failing_since)
            self.waiting.append(_Waiting(again, self.clock.monotonic() + ACK_RETRY_S))
            self.waiting.sort(key=lambda w: w.due)
            return False
        if self._buffer_problem:
            log.info("buffer_writable_again", part="forwarder")
            self.health_board.set(BUFFER_PART, None)
            self._buffer_problem = False
        return True

    def _buffer_failed(self, exc: BufferWriteError) -> None:
        self.health_board.set(BUFFER_PART, describe_write_failure(str(exc)))
        if not self._buffer_problem:
            log.error("buffer_write_failed", error=str(exc), note="batches sent again later")
            self._buffer_problem = True

    def _retry(
        self,
        batch: Batch,
        retry_after: float | None,
        reason: str,
        *,
        auth: bool,
        pause: bool,
        fresh: bool = False,
    ) -> None:
        """Send ``batch`` again after a backoff (``fresh``: it is already a new batch). When
        the whole sender waits, the backoff follows the streak of failures; when only this
        batch does, its own attempts."""
        now = self.clock.monotonic()
        again = batch if fresh else batch.retry(now)
        if pause:
            delay = self.retry.next_delay(retry_after)
        else:
            # (a fresh batch already counts this failure in its attempts)
            since = again.failing_since if again.failing_since is not None else now
            delay = self.retry.batch_delay(
                batch.attempt - (1 if fresh else 0), retry_after, age=now - since
            )
        due = now + delay
        if pause:
            self.paused_until = max(self.paused_until, due)
        self.waiting.append(_Waiting(again, due))
        self.waiting.sort(key=lambda w: w.due)
        self._failed(reason, delay, auth=auth)

    def _failed(self, reason: str, delay: float, *, auth: bool) -> None:
        self.counts.add("send_failures", 1, failure_kind(reason))
        new = self.health.failed(reason)
        if auth:
            if not self._auth_streak:
                log.error("api_key_rejected", reason=reason, retry_in_s=round(delay, 2))
            self._auth_streak = True
        elif new or self.retry.failures == 1:
            log.warning("send_failed", reason=reason, retry_in_s=round(delay, 2))

    def _recovered(self) -> None:
        ended = self.health.ok()
        if ended is not None:
            log.info("send_ok_again", after=ended)
        self._auth_streak = False

    def abandon(self) -> None:
        """Batches not confirmed go back to the buffer (sent again next start)."""
        batches = [f.batch for f in self.sending] + [w.batch for w in self.waiting]
        batches += list(self.ready)
        self.sending.clear()
        self.waiting.clear()
        self.ready.clear()
        leases = {id(b.lease): b.lease for b in batches}
        for lease in leases.values():
            if not lease.finished:
                self.store.release(lease)
