"""Leased entries and the verbs that settle them: ack, retry, split, dead_letter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from queue_store.records import Entry


class _Acker(Protocol):
    def ack(self, lease: Lease) -> None: ...


class Lease:
    """Queue items in flight and the ledger of their entries: delivered, dead or outstanding.

    The items are acked (in one transaction with the dead letters) only when every entry
    has been settled; until then a crash leaves them unacked and they are sent again.
    """

    def __init__(self, store: _Acker, item_ids: list[int], entries: list[Entry]) -> None:
        self.store = store
        self.item_ids = item_ids
        self.entries = entries
        self.outstanding = len(entries)
        self.delivered = 0
        self.dead: list[Entry] = []
        self.finished = False

    def settled(self, entries: Sequence[Entry], *, dead: bool) -> None:
        """Count ``entries`` delivered (or dead)."""
        self.settle(() if dead else entries, entries if dead else ())

    def settle(self, delivered: Sequence[Entry], dead: Sequence[Entry]) -> None:
        """Count entries delivered and dead; the last ones of the lease write the ack. If that
        write fails, nothing of this call is counted: the caller sends the entries again."""
        n = len(delivered) + len(dead)
        self.dead.extend(dead)
        self.delivered += len(delivered)
        if self.outstanding == n and not self.finished:
            try:
                self.store.ack(self)
            except BaseException:
                del self.dead[len(self.dead) - len(dead) :]
                self.delivered -= len(delivered)
                raise
            self.finished = True
        self.outstanding -= n


class BatchSettledTwice(RuntimeError):
    """A batch was given a second verb: a bug in the caller."""


@dataclass(eq=False)
class Batch:
    """Leased entries. Exactly one of ack / retry / split / dead_letter / partition is called."""

    lease: Lease
    entries: Sequence[Entry]
    attempt: int = 0
    failing_since: float | None = None  # its first counted failure (monotonic seconds)
    _verb: str | None = field(default=None, repr=False)

    def _check_open(self, verb: str) -> None:
        if self._verb is not None:
            raise BatchSettledTwice(f"batch already settled by {self._verb}, then {verb}")

    def _settle(self, verb: str) -> None:
        self._check_open(verb)
        self._verb = verb

    def ack(self) -> None:
        """The server accepted every entry."""
        self._settle("ack")
        self.lease.settled(self.entries, dead=False)

    def retry(self, failed_at: float | None) -> Batch:
        """Send the same entries again later; returns the batch to send. ``failed_at``: when
        this attempt failed, kept as ``failing_since`` unless an earlier failure already is."""
        self._settle("retry")
        return Batch(self.lease, self.entries, self.attempt + 1, self._since(failed_at))

    def _since(self, failed_at: float | None) -> float | None:
        return self.failing_since if self.failing_since is not None else failed_at

    def split(self) -> tuple[Batch, Batch]:
        """Halves, in order, to isolate what the server rejects."""
        self._check_open("split")
        if len(self.entries) < 2:
            raise ValueError("a batch of one entry cannot be split")
        self._settle("split")
        mid = len(self.entries) // 2
        return Batch(self.lease, self.entries[:mid]), Batch(self.lease, self.entries[mid:])

    def dead_letter(self) -> None:
        """Rejected on its own: kept in the buffer's dead-letter set."""
        self._check_open("dead_letter")
        if len(self.entries) != 1:
            raise ValueError("only a single rejected entry is dead-lettered")
        self._settle("dead_letter")
        self.lease.settled(self.entries, dead=True)

    def partition(
        self, confirmed: Sequence[int], refused: Sequence[int], failed_at: float | None
    ) -> Batch | None:
        """An output that answers entry by entry (a broker): the ``confirmed`` (indices) are
        delivered, the ``refused`` kept as dead letters, and the rest returned as a batch to
        send again (None when nothing is left; ``failed_at`` as for ``retry``)."""
        self._check_open("partition")
        done = set(confirmed) | set(refused)
        if len(done) != len(confirmed) + len(refused) or not done <= set(range(len(self.entries))):
            raise ValueError("confirmed and refused must be distinct indices of the batch")
        rest = [e for i, e in enumerate(self.entries) if i not in done]
        self._settle("partition")
        self.lease.settle([self.entries[i] for i in confirmed], [self.entries[i] for i in refused])
        return Batch(self.lease, rest, self.attempt + 1, self._since(failed_at)) if rest else None
