"""Replay: send a chosen part of the buffer now and stop, beside a running agent or alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from forwarder.health import SendHealth
from forwarder.loop import Forwarder
from forwarder.registrar import AgentInfo, Registrar
from forwarder.retry import RetryPolicy
from forwarder.senders import make_executor
from forwarder.sink import Sink
from forwarder.transport import Transport
from ila_core.clock import Clock
from queue_store.store import QueueStore, Selection

log = structlog.get_logger("replay")

DEFAULT_MAX_FAILURES = 5


@dataclass(frozen=True)
class ReplayResult:
    accepted: int
    dead_lettered: int
    left: int  # entries it tried but could not get accepted (back in the buffer)
    error: str | None

    @property
    def ok(self) -> bool:
        return self.dead_lettered == 0 and self.left == 0 and self.error is None


def replay(
    store: QueueStore,
    sink: Sink,
    transport: Transport | None,
    info: AgentInfo,
    *,
    selection: Selection,
    batch_size: int,
    retry_cap: float,
    clock: Clock,
    total: int,
    max_failures: int = DEFAULT_MAX_FAILURES,
    progress: Callable[[int], None] | None = None,
    max_in_flight: int = 1,
    batch_max_bytes: int | None = None,
) -> ReplayResult:
    """Send the selected items the way the agent does (batches in flight, the same answer
    table) through ``sink``; registers over ``transport`` first (None: a broker output, no
    registration). Gives up after ``max_failures`` failed attempts in a row."""
    registrar = Registrar(info)
    if transport is None:
        registrar.registered.set()
    reg_retry = RetryPolicy(retry_cap, clock=clock.monotonic)
    health = SendHealth(lambda _v: None, clock.wall)  # the agent's last_error is not ours
    executor = make_executor(max_in_flight) if max_in_flight > 1 else None
    fwd = Forwarder(
        store,
        sink,
        registrar,
        batch_size=batch_size,
        batch_interval=0.0,
        retry=RetryPolicy(retry_cap, clock=clock.monotonic),
        clock=clock,
        health=health,
        selection=selection,
        max_in_flight=max_in_flight,
        batch_max_bytes=batch_max_bytes,
        executor=executor,
    )
    error: str | None = None
    while not clock.stopped:
        if transport is not None and not registrar.registered.is_set():
            result = registrar.register(transport)
            if not result.ok:
                error = f"register: {result.reason}"
                if reg_retry.failures + 1 >= max_failures:
                    break
                clock.wait(reg_retry.next_delay())
                continue
            reg_retry.reset()
        wait = fwd.step(flush=True)
        if progress:
            progress(fwd.sent_lines + fwd.dead_lines)
        if fwd.retry.failures >= max_failures:
            error = health.error
            break
        if fwd.exhausted and fwd.idle:
            error = None
            break
        if wait > 0:
            fwd.wake.wait(wait)  # an answer from a sending thread wakes it early
            fwd.wake.clear()
    fwd.wind_down(0.0 if error else 5.0)
    if executor is not None:
        executor.shutdown(wait=False)
    if clock.stopped and error is None and not fwd.exhausted:
        error = "interrupted"
    left = max(0, total - fwd.sent_lines - fwd.dead_lines) if error else 0
    return ReplayResult(fwd.sent_lines, fwd.dead_lines, left, error)
