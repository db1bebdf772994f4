"""The output seam: where the forwarder sends a batch, and what the output said about it.

A sink turns a batch's entries into a ``Delivery``: a ``Decision`` from the answer table for
the whole batch (HTTP), or per-entry confirmations and failures (brokers). The forwarder
settles the batch from it — ack, retry, split, dead-letter — the same way for every sink, and
feeds the ``Signal`` to the concurrency controller.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from forwarder.outcome import Decision, Outcome
from forwarder.signals import Signal
from queue_store.records import Entry


@dataclass(frozen=True)
class Delivery:
    """What one send of a batch came to."""

    decision: Decision  # for the batch as a whole (every entry, unless ``partial`` says)
    signal: Signal  # what it says about the output's load
    retry_after: float | None = None  # seconds the output asked us to wait (Retry-After)
    sent: bool = True  # False: nothing went out (too large as one request: split first)
    answered: bool = True  # False: no answer came back (refused, reset, timeout, TLS, DNS)
    # An output that answers entry by entry (a broker) says which entries (indices into the
    # batch) it refused for good and which failed for now; every other entry is confirmed.
    # Empty: ``decision`` is about the whole batch.
    refused: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()

    @property
    def per_entry(self) -> bool:
        return bool(self.refused or self.failed)


class Sink(Protocol):
    """An output: sends entries, says what became of them; never raises for an answer."""

    name: str

    def send(self, entries: Sequence[Entry]) -> Delivery: ...

    def close(self) -> None: ...


# -- outputs that confirm message by message (brokers) ----------------------------------------


class Verdict(enum.Enum):
    """What became of one message sent to a broker."""

    CONFIRMED = "confirmed"  # stored (or already stored: a duplicate)
    REFUSED = "refused"  # refused for good (too large, invalid): dead letter
    FAILED = "failed"  # an error the broker reported (e.g. the stream is full): send again
    MISSING = "missing"  # no stream or topic takes it: send again once it exists
    DOWN = "down"  # no connection, or lost before the answer: nothing said about load
    LATE = "late"  # sent, but not confirmed in time: a sign of congestion


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    reason: str = ""


CONFIRMED = Result(Verdict.CONFIRMED)


def per_message(results: Sequence[Result]) -> Delivery:
    """Per-message results → what the forwarder settles: confirmed entries are acked, refused
    ones dead-lettered, the others sent again after a backoff."""
    refused = tuple(i for i, r in enumerate(results) if r.verdict is Verdict.REFUSED)
    failed = tuple(
        i for i, r in enumerate(results) if r.verdict not in (Verdict.CONFIRMED, Verdict.REFUSED)
    )
    if not failed and not refused:
        return Delivery(Decision(Outcome.DELIVERED, "accepted"), Signal.OK)
    reasons = [results[failed[0]].reason] if failed else []
    if refused:
        reasons.append(results[refused[0]].reason)
    decision = Decision(Outcome.RETRY if failed else Outcome.DEAD_LETTER, "; ".join(reasons))
    # Only a message that went out and was not confirmed in time says the broker is
    # overloaded (the controller sends less); with no connection nothing was sent at all.
    slow = any(results[i].verdict is Verdict.LATE for i in failed)
    signal = Signal.BACKPRESSURE if slow else Signal.ERROR if failed else Signal.OK
    # A broker's failures are about the broker (down, no stream, full), not about the entry:
    # the whole sender backs off (answered=False) rather than each batch on its own.
    if len(failed) == len(results):
        return Delivery(decision, signal, answered=False)
    return Delivery(decision, signal, answered=not failed, refused=refused, failed=failed)
