"""The batch loop: lease → encode → send → settle by the answer, one batch in flight."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from dataclasses import replace

import structlog

from forwarder.encode import encode_batch
from forwarder.health import SendHealth
from forwarder.outcome import Decision, Outcome, classify, unanswered
from forwarder.registrar import Registrar
from forwarder.retry import RetryPolicy
from forwarder.transport import Transport
from ila_core.clock import Clock
from ila_core.errors import BufferWriteError, TransientSendError
from queue_store.batch import Batch
from queue_store.store import QueueStore, Selection

log = structlog.get_logger("forwarder")

IDLE_WAIT = 1.0
UNREGISTERED_WAIT = 0.2  # how often the batch loop looks again while registration is pending


class Forwarder:
    """Sends what the store holds, in order; acks only after the server confirmed it."""

    def __init__(
        self,
        store: QueueStore,
        transport: Transport,
        registrar: Registrar,
        *,
        hostname: str,
        batch_size: int,
        batch_interval: float,
        retry: RetryPolicy,
        clock: Clock,
        health: SendHealth | None = None,
        wake: threading.Event | None = None,
        selection: Selection | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.registrar = registrar
        self.hostname = hostname
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.retry = retry
        self.clock = clock
        self.wake = wake or threading.Event()
        self.work: deque[Batch] = deque()
        self.next_attempt = 0.0
        self.sent_lines = 0
        self.dead_lines = 0
        self.health = health or SendHealth(lambda v: store.set_meta("last_error", v), clock.wall)
        self._auth_streak = False
        self.selection = selection  # replay: exactly these items, no batch_interval wait
        self.exhausted = False

    def run(self) -> None:
        while not self.clock.stopped:
            try:
                wait = self.step()
            except BufferWriteError as exc:
                # The buffer could not be written (disk full, I/O error): give the batches
                # back (they are sent again: a duplicate, never a loss) and try later.
                log.error("buffer_write_failed", error=str(exc), note="batches sent again")
                with contextlib.suppress(BufferWriteError):
                    self.abandon()
                self.work.clear()
                wait = IDLE_WAIT
            if wait > 0:
                self.wake.wait(wait)
                self.wake.clear()

    # -- one step -------------------------------------------------------------------------

    def step(self, *, flush: bool = False) -> float:
        """Send one batch if one is due; return seconds until the next thing is due.

        ``flush`` sends a partial batch without waiting for batch_interval (replay, tests).
        """
        now = self.clock.monotonic()
        if now < self.next_attempt:
            return self.next_attempt - now
        if not self.registrar.registered.is_set():
            self.registrar.needed.set()
            return UNREGISTERED_WAIT
        if not self.work:
            due = self._lease(flush)
            if due is not None:
                return due
        batch = self.work.popleft()
        self._send(batch)
        return max(0.0, self.next_attempt - self.clock.monotonic())

    def _lease(self, flush: bool) -> float | None:
        """Take the next batch from the store; the wait instead when none is due yet."""
        if self.selection is not None:
            lease = self.store.lease(self.batch_size, self.selection)
            if lease is None:
                self.exhausted = True
                return IDLE_WAIT
            # Each item once per replay, even when settling puts it back in a selected state.
            self.selection = replace(self.selection, after_id=max(lease.item_ids))
            self.work.append(Batch(lease, lease.entries))
            return None
        lines, oldest = self.store.ready_head(self.batch_size)
        if lines == 0 or oldest is None:
            return IDLE_WAIT
        age = self.clock.wall() - oldest
        if not flush and lines < self.batch_size and age < self.batch_interval:
            return self.batch_interval - age
        lease = self.store.lease(self.batch_size)
        if lease is None:
            return IDLE_WAIT
        self.work.append(Batch(lease, lease.entries))
        return None

    def _send(self, batch: Batch) -> None:
        info = self.registrar.info
        encoded = encode_batch(batch.entries, agent_id=info.agent_id, hostname=self.hostname)
        retry_after = None
        try:
            reply = self.transport.post("/api/agent/ingest-batch", encoded.body, encoded.batch_id)
        except TransientSendError as exc:
            decision = unanswered(str(exc))
        else:
            decision = classify(reply.status, encoded.n)
            retry_after = reply.retry_after
        outcome = decision.outcome
        if outcome is Outcome.DELIVERED:
            batch.ack()
            self.sent_lines += encoded.n
            self.retry.reset()
            self._recovered()
            log.debug("batch_sent", lines=encoded.n, ms=reply.ms)
        elif outcome is Outcome.RETRY:
            self.work.appendleft(batch.retry())
            delay = self.retry.next_delay(retry_after)
            self.next_attempt = self.clock.monotonic() + delay
            self._failed(decision, delay)
        elif outcome is Outcome.REREGISTER:
            self.work.appendleft(batch.retry())
            self.registrar.invalidate()
            # A server that keeps forgetting us must not turn into a register/send spin.
            self.next_attempt = self.clock.monotonic() + self.retry.next_delay()
        elif outcome is Outcome.SPLIT:
            first, second = batch.split()
            self.work.appendleft(second)
            self.work.appendleft(first)
            log.info("batch_split", lines=encoded.n, reason=decision.reason)
        else:
            entry = batch.entries[0]
            batch.dead_letter()
            self.dead_lines += 1
            log.error(
                "entry_dead_lettered",
                source=entry.source,
                event_uid=entry.event_uid,
                reason=decision.reason,
            )

    def _failed(self, decision: Decision, delay: float) -> None:
        new = self.health.failed(decision.reason)
        if decision.auth:
            if not self._auth_streak:
                log.error("api_key_rejected", reason=decision.reason, retry_in_s=round(delay, 2))
            self._auth_streak = True
        elif new or self.retry.failures == 1:
            log.warning("send_failed", reason=decision.reason, retry_in_s=round(delay, 2))

    def _recovered(self) -> None:
        ended = self.health.ok()
        if ended is not None:
            log.info("send_ok_again", after=ended)
        self._auth_streak = False

    def abandon(self) -> None:
        """Shutdown: batches not confirmed go back to the buffer (sent again next start)."""
        leases = {id(b.lease): b.lease for b in self.work}
        self.work.clear()
        for lease in leases.values():
            if not lease.finished:
                self.store.release(lease)
