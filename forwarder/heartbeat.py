"""Heartbeat and registration, on their own thread and schedule: a batch retry never delays them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from forwarder.health import SendHealth
from forwarder.outcome import Outcome, Request, classify, unanswered
from forwarder.registrar import Registrar
from forwarder.retry import RetryPolicy
from forwarder.transport import Transport
from ila_core.clock import Clock, rfc3339_ms
from ila_core.errors import TransientSendError

log = structlog.get_logger("forwarder")


class Heartbeat:
    """Registers (with backoff) until it succeeds, then beats every ``interval`` seconds."""

    def __init__(
        self,
        transport: Transport,
        registrar: Registrar,
        *,
        interval: float,
        buffer_figures: Callable[[], dict[str, Any]],
        retry: RetryPolicy,
        clock: Clock,
        health: SendHealth | None = None,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.transport = transport
        self.registrar = registrar
        self.interval = interval
        self.buffer_figures = buffer_figures
        self.retry = retry
        self.clock = clock
        self.health = health
        self.extra = extra  # additive fields for the server (the agent's problems)
        self.next_register = 0.0
        self.next_beat: float | None = None
        self._failing = False
        self._register_reason: str | None = None

    def run(self) -> None:
        while not self.clock.stopped:
            wait = self.step()
            if self.registrar.registered.is_set():
                # Sleep until the next beat, but wake at once when a 404 elsewhere (or
                # shutdown) sets ``needed``.
                self.registrar.needed.wait(wait)
            else:
                self.clock.wait(wait)

    def step(self) -> float:
        """Do what is due; return the seconds until the next thing is."""
        now = self.clock.monotonic()
        if not self.registrar.registered.is_set():
            if now < self.next_register:
                return min(self.next_register - now, 0.5)
            result = self.registrar.register(self.transport)
            if result.ok:
                self.retry.reset()
                if self.health is not None:
                    self.health.ok()
                self.next_beat = self.clock.monotonic() + self.interval
                return 0.0
            reason = result.reason or "unknown"
            delay = self.retry.next_delay(result.retry_after)
            self.next_register = now + delay
            new = self.health.failed(f"register: {reason}") if self.health else True
            if new or reason != self._register_reason:
                # Said when the reason changes, so a long outage does not flood the log.
                level = log.error if result.auth else log.warning
                level("register_failed", reason=reason, retry_in_s=round(delay, 2))
            self._register_reason = reason
            return delay
        if self.next_beat is None:
            self.next_beat = now + self.interval
        if now >= self.next_beat:
            self.beat()
            if not self.registrar.registered.is_set():
                return 0.0  # the beat got a 404: register again now, not in an interval
            # Keep the cadence; after a long stall, start again from now.
            self.next_beat += self.interval
            if self.next_beat <= now:
                self.next_beat = now + self.interval
        return max(0.0, self.next_beat - self.clock.monotonic())

    def beat(self) -> None:
        payload = {
            "agent_id": self.registrar.info.agent_id,
            "timestamp": rfc3339_ms(self.clock.wall()),
            "status": "online",
            "agent_version": self.registrar.info.agent_version,
            "buffer": self.buffer_figures(),
        }
        if self.extra is not None:
            payload.update(self.extra())
        try:
            reply = self.transport.post_json("/api/agent/heartbeat", payload)
        except TransientSendError as exc:
            decision = unanswered(str(exc))
        else:
            decision = classify(reply.status, request=Request.HEARTBEAT)
        if decision.outcome is Outcome.REREGISTER:
            self.registrar.invalidate()
            self.next_register = 0.0
        elif decision.ok:
            if self._failing:
                log.info("heartbeat_ok_again")
            self._failing = False
        elif not self._failing:
            # Once per streak; the next beat comes at the usual interval.
            level = log.error if decision.auth else log.warning
            level("heartbeat_failed", reason=decision.reason)
            self._failing = True
