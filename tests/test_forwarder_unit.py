"""The forwarder's batch loop and heartbeat, step by step, in fake time and without a socket.

Every test drives ``Forwarder.step()`` / ``Heartbeat.step()`` with a FakeClock, a real
``Transport`` whose ``requests.Session`` has a ScriptedAdapter mounted on ``http://``, a real
Registrar and a real QueueStore in ``tmp_path``; it then asserts exactly what the store holds
(``store.stats()``) and what the adapter was sent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from forwarder.concurrency import ConcurrencyController
from forwarder.encode import batch_id_of, encode_batch
from forwarder.heartbeat import Heartbeat
from forwarder.http_sink import HttpSink
from forwarder.loop import IDLE_WAIT, UNREGISTERED_WAIT, Forwarder
from forwarder.outcome import Decision, Outcome
from forwarder.registrar import Registrar
from forwarder.retry import RetryPolicy
from forwarder.signals import Signal
from forwarder.sink import Delivery
from forwarder.transport import Transport, TransportSettings
from ila_agent.version import USER_AGENT
from ila_core.clock import rfc3339_ms
from ila_core.errors import BufferWriteError
from queue_store.batch import Batch, BatchSettledTwice, Lease
from queue_store.leases import Selection
from queue_store.records import Entry, event_uid
from queue_store.schema import DEAD, TABLE, UNACK
from queue_store.store import QueueStore
from tests.fakes import (
    FakeClock,
    LogFeed,
    RecordedRequest,
    RecordingFinisher,
    ScriptedAdapter,
    entries,
    lines,
    make_registrar,
    make_store,
)

SERVER = "http://soc.test:5000"
KEY = "k-7Hq2-very-secret-api-key"
REGISTER = "/api/agent/register"
HEARTBEAT = "/api/agent/heartbeat"
INGEST = "/api/agent/ingest-batch"
RETRY_INTERVAL = 30.0
BATCH_SIZE = 8
BATCH_INTERVAL = 5.0
HEARTBEAT_INTERVAL = 60.0
T0 = 1000.0  # the FakeClock's monotonic start


def identity(delay: float) -> float:
    return delay


@dataclass
class Rig:
    """Everything a forwarder test needs, wired like ``ila_agent.agent`` wires it."""

    clock: FakeClock
    adapter: ScriptedAdapter
    transport: Transport
    registrar: Registrar
    store: QueueStore
    feed: LogFeed
    forwarder: Forwarder
    heartbeat: Heartbeat

    def ingests(self) -> list[RecordedRequest]:
        return self.adapter.to(INGEST)

    def drive(self, until: Callable[[], bool], max_steps: int = 300) -> None:
        """Step the forwarder, advancing fake time by each wait it asks for, until ``until()``."""
        for _ in range(max_steps):
            if until():
                return
            wait = self.forwarder.step()
            if until():
                return  # time stops where the condition was met
            self.clock.advance(wait)
        raise AssertionError("the forwarder did not get there")

    def drive_until_sent(self, n_ingests: int) -> None:
        self.drive(lambda: len(self.ingests()) >= n_ingests)

    def drive_until_empty(self) -> None:
        self.drive(lambda: self.store.stats().pending == 0)

    def beat_until(self, n_requests: int) -> None:
        """Step the heartbeat in fake time until the adapter has seen ``n_requests``."""
        for _ in range(300):
            wait = self.heartbeat.step()
            if len(self.adapter.requests) >= n_requests:
                return  # time stops where the last request was sent
            self.clock.advance(wait)
        raise AssertionError("the heartbeat did not get there")


def build_rig(
    tmp_path: Path,
    *,
    registered: bool = True,
    batch_size: int = BATCH_SIZE,
    batch_interval: float = BATCH_INTERVAL,
    max_in_flight: int = 1,
    executor: Executor | None = None,
    batch_max_bytes: int | None = None,
) -> Rig:
    # The store stamps commits with the real time.time() and the forwarder ages them with
    # clock.wall(): the fake wall clock starts at real now, so a fresh commit is about 0 s old.
    clock = FakeClock(start=T0, wall_start=time.time())
    adapter = ScriptedAdapter(clock=clock)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = Transport(
        TransportSettings(server_url=SERVER + "/", api_key=KEY, user_agent=USER_AGENT), session
    )
    registrar = make_registrar(registered=registered)
    store, feed = make_store(tmp_path)
    forwarder = Forwarder(
        store,
        HttpSink(transport, registrar.info, max_body_bytes=batch_max_bytes),
        registrar,
        batch_size=batch_size,
        batch_interval=batch_interval,
        retry=RetryPolicy(RETRY_INTERVAL, jitter=identity, clock=clock.monotonic),
        clock=clock,
        max_in_flight=max_in_flight,
        batch_max_bytes=batch_max_bytes,
        # Every slot usable from the start: these tests are about settling, not ramp-up.
        controller=ConcurrencyController(
            max_in_flight, clock=clock.monotonic, initial_limit=max_in_flight
        ),
        executor=executor,
    )
    heartbeat = Heartbeat(
        transport,
        registrar,
        interval=HEARTBEAT_INTERVAL,
        buffer_figures=lambda: store.stats().heartbeat_json(),
        retry=RetryPolicy(RETRY_INTERVAL, jitter=identity, clock=clock.monotonic),
        clock=clock,
    )
    return Rig(clock, adapter, transport, registrar, store, feed, forwarder, heartbeat)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A registered agent with an empty store."""
    r = build_rig(tmp_path)
    yield r
    r.store.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Rig]:
    """An agent that has not registered yet, with an empty store."""
    r = build_rig(tmp_path, registered=False)
    yield r
    r.store.close()


def gaps(requests_: list[RecordedRequest]) -> list[float]:
    """Fake seconds between consecutive requests."""
    times = [r.at for r in requests_]
    return [b - a for a, b in itertools.pairwise(times)]  # type: ignore[operator]


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


# -- the answer table ---------------------------------------------------------------------


class TestDelivered:
    """Any 2xx: every entry of the batch is acked, and only then."""

    @pytest.mark.parametrize("status", [200, 201, 202, 204])
    def test_2xx_acks_every_entry(self, rig: Rig, status: int) -> None:
        """A 2xx answer acks all 8 entries of the batch in the store."""
        rig.feed.commit(lines(8))
        rig.adapter.queue(status)
        rig.forwarder.step()
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept, stats.dead_letter) == (0, 8, 0)
        assert rig.ingests()[0].uids == rig.feed.uids
        assert rig.forwarder.sent_lines == 8
        assert stats.last_send_ok_at is not None

    def test_entries_are_not_acked_before_the_answer(self, rig: Rig) -> None:
        """While the request is in flight the entries are still pending, none acked."""
        rig.feed.commit(lines(8))
        seen = []

        def answer(_: RecordedRequest) -> int:
            seen.append(rig.store.stats())
            return 200

        rig.adapter.queue(answer)
        rig.forwarder.step()
        assert (seen[0].pending, seen[0].acked_kept) == (8, 0)
        assert (rig.store.stats().pending, rig.store.stats().acked_kept) == (0, 8)

    def test_a_success_resets_the_backoff(self, rig: Rig) -> None:
        """After a 2xx the next failure waits 1 s again, not the next step (the first batch's
        503s wait 1, 1 and 2 s: its steps cut to how long it has been failing)."""
        rig.feed.commit(lines(8))
        rig.feed.commit(lines(8, "second"))
        rig.adapter.queue(503, 503, 503, 200, 503, 200)
        rig.drive_until_empty()
        assert gaps(rig.ingests()) == [1.0, 1.0, 2.0, 0.0, 1.0]


class TestReregister:
    """404: the server forgot the agent; register again, then resend the batch."""

    def test_404_invalidates_and_resends_after_registration(self, rig: Rig) -> None:
        """The batch is kept, registration is redone, and the same batch is sent again."""
        uids = rig.feed.commit(lines(8))
        rig.adapter.queue(404)
        rig.forwarder.step()
        assert not rig.registrar.registered.is_set()
        assert rig.registrar.needed.is_set()
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept, stats.dead_letter) == (8, 0, 0)

        assert rig.forwarder.step() == 1.0  # a short backoff: no register/send spin
        rig.clock.advance(1.0)
        assert rig.forwarder.step() == UNREGISTERED_WAIT  # no batch while unregistered
        assert rig.adapter.paths() == [INGEST]

        rig.adapter.queue(200)  # register
        rig.heartbeat.step()
        assert rig.registrar.registered.is_set()
        rig.adapter.queue(200)  # the batch, again
        rig.forwarder.step()
        assert rig.adapter.paths() == [INGEST, REGISTER, INGEST]
        first, again = rig.ingests()
        assert first.uids == again.uids == uids
        assert first.body["batch_id"] == again.body["batch_id"]
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept, stats.dead_letter) == (0, 8, 0)


class TestSplit:
    """413: the batch is too large; split it in halves and send each."""

    def test_413_splits_in_halves_in_order(self, rig: Rig) -> None:
        """A 413 on 4 entries sends the first 2, then the last 2; all 4 are acked."""
        uids = rig.feed.commit(lines(4))
        rig.adapter.queue(413, 200, 200)
        rig.forwarder.step(flush=True)
        rig.drive_until_empty()
        assert [r.uids for r in rig.ingests()] == [uids, uids[:2], uids[2:]]
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept, stats.dead_letter) == (0, 4, 0)
        assert rig.forwarder.sent_lines == 4

    def test_413_splits_again_until_it_fits(self, rig: Rig) -> None:
        """Halves answered 413 are split again: 8 → 4 → 2 + 2 → 4."""
        uids = rig.feed.commit(lines(8))
        rig.adapter.queue(413, 413, 200, 200, 200)
        rig.drive_until_empty()
        assert [r.uids for r in rig.ingests()] == [uids, uids[:4], uids[:2], uids[2:4], uids[4:]]
        assert rig.store.stats().acked_kept == 8

    def test_413_on_a_single_entry_dead_letters_it(self, rig: Rig) -> None:
        """A single entry too large for the server is kept as a dead letter, not dropped."""
        uids = rig.feed.commit(lines(1))
        rig.adapter.queue(413)
        rig.forwarder.step(flush=True)
        stats = rig.store.stats()
        assert (stats.pending, stats.dead_letter) == (0, 1)
        dead = rig.store.lease(10, Selection(statuses=(DEAD,)))
        assert dead is not None
        assert [e.event_uid for e in dead.entries] == uids


class TestRejected:
    """400/422: split to isolate the rejected entry; dead-letter it, deliver the others."""

    @pytest.mark.parametrize("status", [400, 422])
    def test_one_bad_entry_among_eight_is_isolated(self, rig: Rig, status: int) -> None:
        """Exactly the rejected entry ends in the dead-letter set; the 7 others are delivered."""
        uids = rig.feed.commit(lines(8))
        bad = uids[5]
        rig.adapter.fallback = lambda req: status if bad in req.uids else 200
        with capture_logs() as logs:
            rig.drive_until_empty()

        sent = rig.ingests()
        assert [len(r.uids) for r in sent] == [8, 4, 4, 2, 1, 1, 2]
        accepted = [uid for r in sent if bad not in r.uids for uid in r.uids]
        assert sorted(accepted) == sorted(set(uids) - {bad})  # each of the 7 exactly once
        assert [uid for uid in uids if uid in accepted] == accepted  # and in order

        stats = rig.store.stats()
        assert (stats.pending, stats.dead_letter) == (0, 1)
        dead = rig.store.lease(10, Selection(statuses=(DEAD,)))
        assert dead is not None
        assert [(e.event_uid, e.log_text) for e in dead.entries] == [(bad, rig.feed.texts[5])]
        assert (rig.forwarder.sent_lines, rig.forwarder.dead_lines) == (7, 1)
        lettered = events(logs, "entry_dead_lettered")
        assert [(e["event_uid"], e["log_level"]) for e in lettered] == [(bad, "error")]

    def test_rejection_never_waits(self, rig: Rig) -> None:
        """Splitting and dead-lettering are not failures: no backoff, no fake time passes."""
        uids = rig.feed.commit(lines(8))
        rig.adapter.fallback = lambda req: 400 if uids[0] in req.uids else 200
        rig.drive_until_empty()
        assert rig.clock.monotonic() == T0
        assert rig.forwarder.retry.failures == 0


class TestKeyRejected:
    """401/403: keep everything, say it once per streak, back off up to retry_interval."""

    @pytest.mark.parametrize("status", [401, 403])
    def test_nothing_is_lost_and_backoff_is_capped(self, rig: Rig, status: int) -> None:
        """Seven rejections keep all entries pending, waiting 1, 1, 2, 4, 8, 16, 30 s (each
        wait at most the streak's age so far, and at most retry_interval)."""
        rig.feed.commit(lines(8))
        rig.adapter.queue(*[status] * 7)
        with capture_logs() as logs:
            rig.drive_until_sent(7)
            stats = rig.store.stats()
            assert (stats.pending, stats.acked_kept, stats.dead_letter) == (8, 0, 0)
            rig.adapter.queue(200)
            rig.drive_until_empty()
        assert gaps(rig.ingests()) == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
        assert rig.store.stats().acked_kept == 8
        rejected = events(logs, "api_key_rejected")
        assert [(e["log_level"], e["reason"]) for e in rejected] == [
            ("error", f"API key rejected ({status})")
        ]
        assert events(logs, "send_failed") == []
        assert len(events(logs, "send_ok_again")) == 1

    def test_logged_again_after_a_success(self, rig: Rig) -> None:
        """A new streak of rejections after a success is logged once more."""
        rig.feed.commit(lines(8))
        rig.feed.commit(lines(8, "later"))
        rig.adapter.queue(401, 401, 401, 200, 403, 403, 200)
        with capture_logs() as logs:
            rig.drive_until_empty()
        reasons = [e["reason"] for e in events(logs, "api_key_rejected")]
        assert reasons == ["API key rejected (401)", "API key rejected (403)"]
        assert rig.store.stats().acked_kept == 16

    def test_the_error_is_kept_for_status(self, rig: Rig) -> None:
        """During the streak the buffer's last_error names the rejected key."""
        rig.feed.commit(lines(8))
        rig.adapter.queue(401)
        rig.forwarder.step()
        expected = f"{rfc3339_ms(rig.clock.wall())} API key rejected (401)"
        assert rig.store.stats().last_error == expected


class TestTransient:
    """408, 429, 5xx, timeouts, connection and TLS failures: back off and retry."""

    def test_retry_after_wins_beyond_retry_interval(self, rig: Rig) -> None:
        """429 with Retry-After: 120 (retry_interval 30) is not retried before 120 s."""
        rig.feed.commit(lines(8))
        rig.adapter.queue((429, {"Retry-After": "120"}), 200)
        rig.forwarder.step()
        rig.forwarder.step()
        rig.clock.advance(119.0)
        assert rig.forwarder.step() == 1.0
        assert len(rig.ingests()) == 1
        rig.clock.advance(1.0)
        rig.forwarder.step()
        assert [r.at for r in rig.ingests()] == [T0, T0 + 120.0]
        assert rig.store.stats().acked_kept == 8

    def test_5xx_backs_off_exponentially_up_to_the_cap(self, rig: Rig) -> None:
        """500, 502, 503, 504, 500, 503, 502 are retried after 1, 1, 2, 4, 8, 16 and 30 s: the
        steps 1, 2, 4 … 30 s, each cut to how long the batch has been failing (at least 1 s)."""
        rig.feed.commit(lines(8))
        rig.adapter.queue(500, 502, 503, 504, 500, 503, 502, 200)
        rig.drive_until_empty()
        assert gaps(rig.ingests()) == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
        assert rig.store.stats().acked_kept == 8

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    def test_transient_status_keeps_everything(self, rig: Rig, status: int) -> None:
        """Three transient answers ack nothing; the fourth attempt delivers."""
        rig.feed.commit(lines(8))
        rig.adapter.queue(status, status, status)
        rig.drive_until_sent(3)
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept, stats.dead_letter) == (8, 0, 0)
        rig.adapter.queue(200)
        rig.drive_until_empty()
        assert gaps(rig.ingests()) == [1.0, 1.0, 2.0]
        assert len({r.body["batch_id"] for r in rig.ingests()}) == 1

    @pytest.mark.parametrize(
        ("exc", "reason"),
        [
            (requests.exceptions.ReadTimeout("Read timed out."), "read timeout: timed out"),
            (
                requests.exceptions.ConnectionError("[Errno 111] Connection refused"),
                "connection failed: Connection refused",
            ),
            (
                requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"),
                "TLS failure: CERTIFICATE_VERIFY_FAILED",
            ),
        ],
        ids=["read-timeout", "connection-refused", "tls"],
    )
    def test_no_answer_is_retried(self, rig: Rig, exc: Exception, reason: str) -> None:
        """A request that got no answer acks nothing and is retried with backoff (the second
        wait is bounded by the streak's age, 1 s)."""
        rig.feed.commit(lines(8))
        rig.adapter.queue(exc, exc)
        with capture_logs() as logs:
            rig.drive_until_sent(2)
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept, stats.dead_letter) == (8, 0, 0)
        assert [e["reason"] for e in events(logs, "send_failed")] == [reason]
        rig.adapter.queue(200)
        rig.drive_until_empty()
        assert gaps(rig.ingests()) == [1.0, 1.0]
        assert rig.store.stats().acked_kept == 8

    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    def test_redirect_is_not_followed(self, rig: Rig, status: int) -> None:
        """A 3xx with a Location is one failed attempt to the original URL, then retried."""
        rig.feed.commit(lines(8))
        rig.adapter.queue((status, {"Location": "http://evil.test/steal"}))
        rig.forwarder.step()
        assert [r.url for r in rig.adapter.requests] == [SERVER + INGEST]
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept) == (8, 0)
        assert rig.forwarder.next_attempt == T0 + 1.0
        rig.adapter.queue(200)
        rig.drive_until_empty()
        assert [r.url for r in rig.adapter.requests] == [SERVER + INGEST] * 2
        assert rig.store.stats().acked_kept == 8

    def test_redirect_is_reported_as_a_redirect(self, rig: Rig) -> None:
        """The failed attempt is logged as the redirect it was, not as a transport error."""
        rig.feed.commit(lines(8))
        rig.adapter.queue((302, {"Location": "http://evil.test/steal"}))
        with capture_logs() as logs:
            rig.forwarder.step()
        assert [e["reason"] for e in events(logs, "send_failed")] == ["redirect 302 not followed"]

    def test_step_returns_the_backoff_after_a_failure(self, rig: Rig) -> None:
        """Right after a failed attempt, step() returns the seconds until the retry is due."""
        rig.feed.commit(lines(8))
        rig.adapter.queue(503)
        assert rig.forwarder.step() == 1.0


# -- around the answers -------------------------------------------------------------------


class TestRegistrationGate:
    """No batch is sent before registration succeeded."""

    def test_no_batch_before_registration(self, fresh: Rig) -> None:
        """Register answered 503, then 200: the batch goes only after the 200."""
        fresh.feed.commit(lines(8))
        assert fresh.forwarder.step() == UNREGISTERED_WAIT
        assert fresh.adapter.requests == []
        assert fresh.registrar.needed.is_set()

        fresh.adapter.queue(503)
        assert fresh.heartbeat.step() == 1.0
        assert fresh.forwarder.step() == UNREGISTERED_WAIT
        assert fresh.adapter.paths() == [REGISTER]

        fresh.clock.advance(1.0)
        fresh.adapter.queue(200, 200)
        assert fresh.heartbeat.step() == 0.0
        fresh.forwarder.step()
        assert fresh.adapter.paths() == [REGISTER, REGISTER, INGEST]
        assert [r.at for r in fresh.adapter.requests] == [T0, T0 + 1.0, T0 + 1.0]
        assert fresh.store.stats().acked_kept == 8

    def test_register_body(self, fresh: Rig) -> None:
        """The register body names the agent, its host, OS, version and sources."""
        fresh.adapter.queue(200)
        fresh.heartbeat.step()
        (req,) = fresh.adapter.requests
        info = fresh.registrar.info
        assert req.body == {
            "agent_id": info.agent_id,
            "hostname": "web-01",
            "os_type": "Linux",
            "os_version": "6.1.0",
            "agent_version": info.agent_version,
            "sources": ["/var/log/auth.log"],
        }


class TestBatchInterval:
    """A partial batch waits for batch_interval after its oldest entry; a full one does not.

    The store stamps each commit with the real ``time.time()``; these tests read that stamp
    back and anchor the FakeClock's wall clock on it, so the entry's age is
    exactly the fake time advanced — no dependence on how fast the test runs.
    """

    def anchor(self, rig: Rig) -> None:
        con = sqlite3.connect(rig.store.path)
        (oldest,) = con.execute(f"SELECT MIN(timestamp) FROM {TABLE}").fetchone()
        con.close()
        assert oldest is not None
        rig.clock.set_wall(oldest)

    def test_partial_batch_waits_for_batch_interval(self, rig: Rig) -> None:
        """3 lines (batch_size 8) are not sent before 5 s of age, and are sent at 5 s."""
        uids = rig.feed.commit(lines(3))
        self.anchor(rig)
        assert rig.forwarder.step() == BATCH_INTERVAL
        rig.clock.advance(4.5)
        assert rig.forwarder.step() == 0.5
        assert rig.adapter.requests == []
        rig.clock.advance(0.5)
        rig.adapter.queue(200)
        rig.forwarder.step()
        assert [r.uids for r in rig.ingests()] == [uids]
        assert rig.store.stats().acked_kept == 3

    def test_full_batch_goes_at_once(self, rig: Rig) -> None:
        """batch_size lines are sent without waiting for batch_interval."""
        rig.feed.commit(lines(BATCH_SIZE))
        self.anchor(rig)
        rig.adapter.queue(200)
        rig.forwarder.step()
        assert len(rig.ingests()) == 1

    def test_a_batch_the_next_item_cannot_join_goes_at_once(self, rig: Rig) -> None:
        """3 lines, then an item of 8 (batch_size 8): the 3 cannot grow into a full batch, so
        they go without waiting for batch_interval, and the 8 right after them."""
        first = rig.feed.commit(lines(3))
        second = rig.feed.commit(lines(8, "second"))
        self.anchor(rig)
        rig.adapter.queue(200, 200)
        for _ in range(3):
            rig.forwarder.step()
        assert [r.uids for r in rig.ingests()] == [first, second]

    def test_a_batch_at_batch_max_bytes_goes_at_once(self, tmp_path: Path) -> None:
        """Two lines that together pass batch_max_bytes: the first goes alone, at once."""
        rig = build_rig(tmp_path, batch_max_bytes=1000)
        first = rig.feed.commit(["a" * 600])
        second = rig.feed.commit(["b" * 300])
        self.anchor(rig)
        rig.adapter.queue(200, 200)
        rig.forwarder.step()
        assert [r.uids for r in rig.ingests()] == [first]
        assert rig.forwarder.step() > 0  # alone now, the second waits for batch_interval
        rig.clock.advance(BATCH_INTERVAL + 60)  # (committed a little after the first)
        rig.forwarder.step()
        assert [r.uids for r in rig.ingests()] == [first, second]
        rig.store.close()

    def test_an_entry_over_batch_max_bytes_goes_at_once(self, tmp_path: Path) -> None:
        """A line larger than batch_max_bytes on its own: nothing could join it, so it goes
        (alone) without waiting for batch_interval."""
        rig = build_rig(tmp_path, batch_max_bytes=1000)
        big = rig.feed.commit(["c" * 1200])
        self.anchor(rig)
        rig.adapter.queue(200)
        rig.forwarder.step()
        assert [r.uids for r in rig.ingests()] == [big]
        rig.store.close()

    def test_flush_sends_a_partial_batch_at_once(self, rig: Rig) -> None:
        """step(flush=True) sends a partial batch without waiting."""
        rig.feed.commit(lines(3))
        self.anchor(rig)
        rig.adapter.queue(200)
        rig.forwarder.step(flush=True)
        assert [len(r.uids) for r in rig.ingests()] == [3]

    def test_empty_store_idles(self, rig: Rig) -> None:
        """With nothing pending step() sends nothing and asks to be called after IDLE_WAIT."""
        assert rig.forwarder.step() == IDLE_WAIT
        assert rig.adapter.requests == []


class TestWireFormat:
    """What goes on the wire: batch_id, Idempotency-Key, the key, the order of entries."""

    def test_batch_id_is_stable_and_sent_as_idempotency_key(self, rig: Rig) -> None:
        """A retried batch carries the same batch_id, also in the Idempotency-Key header."""
        uids = rig.feed.commit(lines(4))
        rig.adapter.queue(503, 200)
        rig.forwarder.step(flush=True)
        rig.drive_until_empty()
        expected = batch_id_of([Entry(0, "", "", "", uid) for uid in uids])
        assert [r.body["batch_id"] for r in rig.ingests()] == [expected, expected]
        assert [r.headers["Idempotency-Key"] for r in rig.ingests()] == [expected, expected]

    def test_different_sets_have_different_batch_ids(self, rig: Rig) -> None:
        """The halves of a split batch have their own batch_ids."""
        rig.feed.commit(lines(4))
        rig.adapter.queue(413, 200, 200)
        rig.forwarder.step(flush=True)
        rig.drive_until_empty()
        ids = [r.body["batch_id"] for r in rig.ingests()]
        assert len(set(ids)) == 3
        assert [r.headers["Idempotency-Key"] for r in rig.ingests()] == ids

    def test_the_key_is_only_in_the_header(self, rig: Rig) -> None:
        """Every request carries X-API-Key; no body and no URL contains the key."""
        rig.registrar.registered.clear()
        rig.feed.commit(lines(8))
        rig.adapter.fallback = 200
        rig.heartbeat.step()  # register
        rig.forwarder.step()  # batch
        rig.clock.advance(HEARTBEAT_INTERVAL)
        rig.heartbeat.step()  # beat
        assert rig.adapter.paths() == [REGISTER, INGEST, HEARTBEAT]
        for req in rig.adapter.requests:
            assert req.method == "POST"
            assert req.headers["X-API-Key"] == KEY
            assert req.headers["Content-Type"] == "application/json"
            assert req.headers["User-Agent"] == USER_AGENT
            assert KEY.encode() not in req.raw
            assert KEY not in req.url

    def test_ingest_body(self, rig: Rig) -> None:
        """Each log carries log_text, source, timestamp, hostname and event_uid."""
        uids = rig.feed.commit(["Failed password for root from 203.0.113.7"])
        rig.adapter.queue(200)
        rig.forwarder.step(flush=True)
        (req,) = rig.ingests()
        assert req.body["agent_id"] == rig.registrar.info.agent_id
        assert req.body["logs"] == [
            {
                "log_text": "Failed password for root from 203.0.113.7",
                "source": "/var/log/auth.log",
                "timestamp": rfc3339_ms(rig.feed.read_at),
                "hostname": "web-01",
                "event_uid": uids[0],
            }
        ]

    def test_body_bytes_are_the_protocol_json(self) -> None:
        """The encoder's JSON fragments give exactly ``json.dumps`` of the protocol objects:
        entries sharing source, timestamp and hostname, changes of each, an entry's own
        hostname, extra fields, and text that needs escaping."""
        t1, t2 = "2026-12-01T00:00:00.000Z", "2026-12-01T00:00:01.000Z"
        entries = [
            Entry(1, 'quote " and \\ back', "/var/log/a", t1, "u1"),
            Entry(1, "tab\t nul\x00 é ✓ \U0001f600", "/var/log/a", t1, "u2"),
            Entry(2, "other source", "/var/log/b", t1, "u3"),
            Entry(2, "other time", "/var/log/b", t2, "u4"),
            Entry(3, "own host", "/var/log/b", t2, "u5", "db-01"),
            Entry(3, "after own host", "/var/log/b", t2, "u6"),
            Entry(4, "event", "Security", t2, "u7", None, {"event_id": 4625, "level": "x"}),
            Entry(4, "plain again", "/var/log/b", t2, 'u"8'),
        ]
        body = encode_batch(entries, agent_id="agent-é", hostname="web-01").body
        logs = [e.to_wire("web-01") for e in entries]
        expected = {"agent_id": "agent-é", "batch_id": batch_id_of(entries), "logs": logs}
        assert body == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
        # batch_id: each uid followed by a newline, hashed (what earlier agents sent too)
        joined = "".join(f"{e.event_uid}\n" for e in entries)
        assert batch_id_of(entries) == hashlib.sha256(joined.encode()).hexdigest()[:32]

    def test_equal_but_distinct_shared_fields(self) -> None:
        """Equal strings that are different objects (entries decoded from different items)
        and a hostname set after one with none: each entry still gets its own fields."""
        src_a, src_b = "".join(["/var/log/", "a"]), "".join(["/var/log/", "a"])
        assert src_a == src_b and src_a is not src_b
        entries = [
            Entry(1, "one", src_a, "t", "u1"),
            Entry(2, "two", src_b, "t", "u2"),
            Entry(2, "three", src_b, "t", "u3", "db-01"),
            Entry(2, "four", src_b, "t", "u4", None),
            Entry(2, "five", "/var/log/c", "t", "u5", None),
        ]
        body = json.loads(encode_batch(entries, agent_id="a", hostname="web-01").body)
        assert body["logs"] == [e.to_wire("web-01") for e in entries]

    def test_order_is_commit_order(self, rig: Rig) -> None:
        """Across batches and a retry, entries reach the server in the order committed."""
        for i in range(5):
            rig.feed.commit(lines(4, f"chunk{i}"))
        rig.adapter.queue(200, 503)
        rig.adapter.fallback = 200
        rig.drive_until_empty()
        delivered = [r for i, r in enumerate(rig.ingests()) if i != 1]  # the 503 is resent
        assert [len(r.texts) for r in rig.ingests()] == [8, 8, 8, 4]
        assert [t for r in delivered for t in r.texts] == rig.feed.texts


class TestHeartbeat:
    """Heartbeat and registration on their own schedule."""

    def test_beats_at_exactly_the_interval(self, fresh: Rig) -> None:
        """After registering at t0, beats go at t0 + 60, + 120, + 180 of fake time."""
        fresh.adapter.fallback = 200
        fresh.beat_until(4)
        assert fresh.adapter.paths() == [REGISTER, HEARTBEAT, HEARTBEAT, HEARTBEAT]
        assert [r.at for r in fresh.adapter.requests] == [T0, T0 + 60.0, T0 + 120.0, T0 + 180.0]

    def test_no_beat_before_the_interval(self, fresh: Rig) -> None:
        """One fake second before the interval, step() sends nothing and returns 1 s."""
        fresh.adapter.fallback = 200
        fresh.heartbeat.step()
        fresh.clock.advance(HEARTBEAT_INTERVAL - 1.0)
        assert fresh.heartbeat.step() == 1.0
        assert fresh.adapter.paths() == [REGISTER]

    def test_register_failures_back_off(self, fresh: Rig) -> None:
        """Register answered 503 twice is retried after 1 s, then 1 s again (the step is 2 s,
        but the failures are only 1 s old)."""
        fresh.adapter.queue(503, 503, 200)
        fresh.beat_until(3)
        assert [r.at for r in fresh.adapter.requests] == [T0, T0 + 1.0, T0 + 2.0]
        assert fresh.registrar.registered.is_set()

    def test_404_heartbeat_reregisters(self, fresh: Rig) -> None:
        """A 404 beat invalidates the registration; the next step registers again."""
        fresh.adapter.queue(200, 404)
        fresh.beat_until(2)
        assert not fresh.registrar.registered.is_set()
        assert fresh.registrar.needed.is_set()
        fresh.adapter.queue(200)
        assert fresh.heartbeat.step() == 0.0
        assert fresh.registrar.registered.is_set()
        assert fresh.adapter.paths() == [REGISTER, HEARTBEAT, REGISTER]
        assert [r.at for r in fresh.adapter.requests] == [T0, T0 + 60.0, T0 + 60.0]
        assert fresh.heartbeat.step() == HEARTBEAT_INTERVAL

    def test_404_heartbeat_asks_to_register_at_once(self, fresh: Rig) -> None:
        """After a 404 beat, step() returns 0 so that run() registers again without waiting."""
        fresh.adapter.queue(200, 404)
        fresh.beat_until(1)
        fresh.clock.advance(HEARTBEAT_INTERVAL)
        assert fresh.heartbeat.step() == 0.0
        assert fresh.adapter.paths() == [REGISTER, HEARTBEAT]

    def test_body_reports_the_pending_count(self, fresh: Rig) -> None:
        """buffer.pending in the heartbeat is the store's pending line count."""
        fresh.feed.commit(lines(5))
        fresh.feed.commit(lines(3, "more"))
        fresh.adapter.fallback = 200
        fresh.beat_until(2)
        beat = fresh.adapter.to(HEARTBEAT)[0].body
        assert beat["buffer"]["pending"] == fresh.store.stats().pending == 8
        assert (beat["buffer"]["dead_letter"], beat["buffer"]["dropped"]) == (0, 0)
        assert beat["agent_id"] == fresh.registrar.info.agent_id
        assert beat["status"] == "online"
        assert beat["timestamp"] == rfc3339_ms(fresh.clock.wall())

    def test_a_failing_beat_is_logged_once(self, fresh: Rig) -> None:
        """Consecutive failed beats log one warning, and recovery logs once."""
        fresh.adapter.queue(200, 500, 503, requests.exceptions.ConnectionError("reset"), 200)
        with capture_logs() as logs:
            fresh.beat_until(5)
        assert [e["reason"] for e in events(logs, "heartbeat_failed")] == ["server answered 500"]
        assert len(events(logs, "heartbeat_ok_again")) == 1
        assert [r.at for r in fresh.adapter.to(HEARTBEAT)] == [T0 + 60.0 * i for i in range(1, 5)]


# -- the batch verbs ----------------------------------------------------------------------

VERBS: dict[str, Callable[[Batch], Any]] = {
    "ack": Batch.ack,
    "retry": lambda b: b.retry(None),
    "split": Batch.split,
    "dead_letter": Batch.dead_letter,
    "partition": lambda b: b.partition([0], [], None),
}


def verb_pairs() -> list[Any]:
    return [
        pytest.param(first, second, id=f"{first}-then-{second}")
        for first in VERBS
        for second in VERBS
    ]


class TestBatchVerbs:
    """Every leased batch ends in exactly one verb; a second one raises."""

    @pytest.mark.parametrize(("first", "second"), verb_pairs())
    def test_second_verb_raises(self, first: str, second: str) -> None:
        """After any verb, any second verb raises BatchSettledTwice."""
        n = 1 if first == "dead_letter" else 2
        finisher = RecordingFinisher()
        items = entries(n)
        batch = Batch(Lease(finisher, [1], items), items)
        VERBS[first](batch)
        with pytest.raises(BatchSettledTwice):
            VERBS[second](batch)

    def test_a_refused_second_ack_settles_nothing(self) -> None:
        """The refused second ack leaves the lease as the first one left it."""
        finisher = RecordingFinisher()
        items = entries(2)
        lease = Lease(finisher, [1], items)
        batch = Batch(lease, items)
        batch.ack()
        with pytest.raises(BatchSettledTwice):
            batch.ack()
        assert (lease.outstanding, lease.delivered, len(finisher.finished)) == (0, 2, 1)

    def test_retry_and_split_hand_out_fresh_batches(self) -> None:
        """The batch a retry returns, and each half of a split, take their own verb."""
        finisher = RecordingFinisher()
        items = entries(2)
        lease = Lease(finisher, [1], items)
        again = Batch(lease, items).retry(None)
        assert again.attempt == 1
        first, second = again.split()
        assert (list(first.entries), list(second.entries)) == ([items[0]], [items[1]])
        first.ack()
        second.dead_letter()
        assert (lease.delivered, lease.dead, finisher.finished) == (1, [items[1]], [lease])


# -- several batches in flight ------------------------------------------------------------


class HeldExecutor(Executor):
    """Holds every send until the test lets it go, in any order: answers out of order."""

    def __init__(self) -> None:
        self.held: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        future: Future[Any] = Future()
        self.held.append((future, lambda: fn(*args, **kwargs)))
        return future

    def release(self, index: int) -> None:
        """Send the ``index``-th held request now (the adapter answers it)."""
        future, call = self.held.pop(index)
        future.set_result(call())


@pytest.fixture
def flying(tmp_path: Path) -> Iterator[tuple[Rig, HeldExecutor]]:
    """A registered agent with 4 batches allowed in flight, whose sends the test releases."""
    held = HeldExecutor()
    r = build_rig(tmp_path, max_in_flight=4, executor=held)
    yield r, held
    r.store.close()


@pytest.fixture
def rig_in_flight4(tmp_path: Path) -> Iterator[Rig]:
    """A registered agent with 4 batches allowed in flight, each answered at once."""
    r = build_rig(tmp_path, max_in_flight=4)
    yield r
    r.store.close()


class TestInFlight:
    """Several batches outstanding at once, each settled by its own answer."""

    def test_four_go_out_before_any_answer(self, flying: tuple[Rig, HeldExecutor]) -> None:
        """With a backlog, one step hands out max_in_flight batches, and no more."""
        rig, held = flying
        for k in range(6):
            rig.feed.commit(lines(8, f"b{k}"))
        rig.forwarder.step()
        assert len(held.held) == 4
        assert rig.store.stats().pending == 48  # nothing acked before an answer

    def test_a_backlog_is_leased_in_one_transaction(self, flying: tuple[Rig, HeldExecutor]) -> None:
        """The four batches a step sends are leased in one write (one COMMIT in SQLite's own
        trace), and go out in commit order."""
        rig, held = flying
        uids = [rig.feed.commit(lines(8, f"b{k}")) for k in range(6)]
        statements: list[str] = []
        rig.store._db.set_trace_callback(statements.append)
        try:
            rig.forwarder.step()
        finally:
            rig.store._db.set_trace_callback(None)
        assert [s for s in statements if s.strip().upper() == "COMMIT"] == ["COMMIT"]
        rig.adapter.fallback = 200
        while held.held:
            held.release(0)
        assert [r.uids for r in rig.ingests()] == uids[:4]

    def test_batches_leased_ahead_go_back_at_shutdown(self, rig_in_flight4: Rig) -> None:
        """A Retry-After on the first of four batches leased together: the other three wait,
        still leased; shutting down gives them back to the buffer, as it does in flight."""
        rig = rig_in_flight4
        uids = [rig.feed.commit(lines(8, f"b{k}")) for k in range(4)]
        rig.adapter.queue((429, {"Retry-After": "10"}))
        rig.forwarder.step()
        assert len(rig.forwarder.ready) == 3
        rig.forwarder.abandon()
        with sqlite3.connect(rig.store.path) as con:
            leased = con.execute(
                f"SELECT COUNT(*) FROM {TABLE} WHERE status = ?", (UNACK,)
            ).fetchone()
        assert leased == (0,)
        rig.adapter.fallback = 200
        rig.drive_until_empty()
        assert sorted(u for r in rig.ingests()[1:] for u in r.uids) == sorted(
            u for g in uids for u in g
        )

    def test_answers_out_of_order_ack_exactly_their_batches(
        self, flying: tuple[Rig, HeldExecutor]
    ) -> None:
        """The last batch answered first is acked alone; each ack matches its own answer."""
        rig, held = flying
        uids = [rig.feed.commit(lines(8, f"b{k}")) for k in range(3)]
        rig.adapter.fallback = 200
        rig.forwarder.step()
        held.release(2)
        rig.forwarder.step()
        assert rig.store.stats().pending == 16
        assert rig.ingests()[0].uids == uids[2]
        held.release(0)
        held.release(0)
        rig.forwarder.step()
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept) == (0, 24)
        assert sorted(r.uids for r in rig.ingests()) == sorted(uids)

    def test_retry_after_pauses_the_whole_sender(self, flying: tuple[Rig, HeldExecutor]) -> None:
        """A 429 with Retry-After on one batch: no new request goes out until it has passed,
        even with free slots and more batches waiting."""
        rig, held = flying
        for k in range(6):
            rig.feed.commit(lines(8, f"b{k}"))
        rig.adapter.queue((429, {"Retry-After": "10"}), 200, 200, 200)
        rig.forwarder.step()
        for _ in range(4):
            held.release(0)
        assert rig.forwarder.step() == 10.0
        assert held.held == []
        rig.clock.advance(9.5)
        rig.forwarder.step()
        assert held.held == []
        rig.clock.advance(0.5)
        rig.adapter.fallback = 200
        rig.forwarder.step()
        assert rig.forwarder.controller.limit == 2  # the 429 halved it
        assert len(held.held) == 2
        held.release(0)
        assert rig.ingests()[-1].uids == rig.ingests()[0].uids  # the 429'd batch goes first

    def test_an_unreachable_server_pauses_every_slot(
        self, flying: tuple[Rig, HeldExecutor]
    ) -> None:
        """No answer at all (connection refused): every batch would fail alike, so nothing
        new goes out until the backoff has passed; then the failed ones go first."""
        rig, held = flying
        for k in range(6):
            rig.feed.commit(lines(8, f"b{k}"))
        refused = requests.exceptions.ConnectionError("[Errno 111] Connection refused")
        rig.adapter.queue(refused, refused, refused, refused)
        rig.forwarder.step()
        for _ in range(4):
            held.release(0)
        assert rig.forwarder.step() > 0
        assert held.held == []
        assert len(rig.forwarder.waiting) == 4

    def test_a_503_on_one_batch_lets_the_others_go_on(
        self, flying: tuple[Rig, HeldExecutor]
    ) -> None:
        """A 503 answer: that batch waits its backoff, the next batches are sent meanwhile."""
        rig, held = flying
        for k in range(6):
            rig.feed.commit(lines(8, f"b{k}"))
        rig.adapter.queue(503)
        rig.adapter.fallback = 200
        rig.forwarder.step()
        held.release(0)  # the 503
        rig.forwarder.step()
        assert len(rig.forwarder.waiting) == 1
        assert held.held  # others went out while it waits
        for _ in range(50):
            while held.held:
                held.release(0)
            rig.clock.advance(rig.forwarder.step())
            if rig.store.stats().pending == 0:
                break
        assert rig.store.stats().acked_kept == 48

    def test_each_refused_batch_waits_for_its_own_failures(
        self, flying: tuple[Rig, HeldExecutor]
    ) -> None:
        """Two batches answered 503 without Retry-After, one after the other: each waits its
        own first backoff, 1 s, not 1 s and then 2 s (a streak is for what every batch meets)."""
        rig, held = flying
        for k in range(6):
            rig.feed.commit(lines(8, f"b{k}"))
        rig.adapter.queue(503, 503)
        rig.adapter.fallback = 200
        rig.forwarder.step()
        t = rig.clock.monotonic()
        held.release(0)
        held.release(0)
        rig.forwarder.step()
        assert [w.due - t for w in rig.forwarder.waiting] == [1.0, 1.0]

    def test_shutdown_gives_back_what_is_unanswered(self, flying: tuple[Rig, HeldExecutor]) -> None:
        """At shutdown the answered batch is acked and the three unanswered are pending again."""
        rig, held = flying
        for k in range(4):
            rig.feed.commit(lines(8, f"b{k}"))
        rig.adapter.queue(200)
        rig.forwarder.step()
        held.release(0)
        rig.forwarder.wind_down(0.0)
        stats = rig.store.stats()
        assert (stats.pending, stats.acked_kept) == (24, 8)
        again = rig.store.lease(100)
        assert again is not None and len(again.entries) == 24


class TestBodyLimit:
    """No request body is larger than batch_max_bytes."""

    def test_a_body_over_the_limit_is_split_before_it_is_sent(self, tmp_path: Path) -> None:
        """Lines that make a 2-entry body too large go one per request; none is refused."""
        rig = build_rig(tmp_path, batch_max_bytes=1500)
        try:
            uids = rig.feed.commit(["x" * 900, "y" * 900, "z" * 100])
            rig.adapter.fallback = 200
            rig.drive_until_empty()
            assert all(len(r.raw) <= 1500 for r in rig.ingests())
            assert [u for r in rig.ingests() for u in r.uids] == uids
            assert rig.forwarder.retry.failures == 0  # a split is not a failure: no backoff
            assert [len(r.uids) for r in rig.ingests()] == [1, 2]  # no needless split
        finally:
            rig.store.close()


class TestPartition:
    """An output that confirms entry by entry: confirmed acked, refused dead, rest resent."""

    def test_partition_settles_each_entry_and_returns_the_rest(self) -> None:
        """Of 4 entries, 0 and 2 confirmed, 3 refused: entry 1 comes back as a new batch;
        the lease is acked once the rest is settled."""
        finisher = RecordingFinisher()
        items = entries(4)
        lease = Lease(finisher, [1], items)
        rest = Batch(lease, items).partition([0, 2], [3], None)
        assert rest is not None and list(rest.entries) == [items[1]] and rest.attempt == 1
        assert (lease.delivered, lease.dead, finisher.finished) == (2, [items[3]], [])
        rest.ack()
        assert finisher.finished == [lease]

    def test_a_batch_keeps_the_time_of_its_first_failure(self) -> None:
        """retry and partition carry ``failing_since`` from the first failure on; a split
        starts afresh (its halves have not failed yet)."""
        items = entries(4)
        batch = Batch(Lease(RecordingFinisher(), [1], items), items)
        assert batch.failing_since is None
        again = batch.retry(10.0)
        assert (again.attempt, again.failing_since) == (1, 10.0)
        third = again.retry(12.5)
        assert (third.attempt, third.failing_since) == (2, 10.0)
        rest = third.partition([0], [], 20.0)
        assert rest is not None and (rest.attempt, rest.failing_since) == (3, 10.0)
        fresh = Batch(Lease(RecordingFinisher(), [2], items), items).partition([0], [], 30.0)
        assert fresh is not None and fresh.failing_since == 30.0
        first, second = rest.split()
        assert (first.failing_since, second.failing_since) == (None, None)

    def test_partition_rejects_overlapping_indices(self) -> None:
        """An index both confirmed and refused is a bug in the sink: ValueError."""
        items = entries(2)
        with pytest.raises(ValueError):
            Batch(Lease(RecordingFinisher(), [1], items), items).partition([0], [0], None)


class EntrySink:
    """A sink that answers entry by entry from a script (as a broker output does)."""

    name = "entries"

    def __init__(self, script: list[Delivery]) -> None:
        self.script = script
        self.sent: list[list[str]] = []

    def send(self, batch_entries: Any) -> Delivery:
        self.sent.append([e.event_uid for e in batch_entries])
        return self.script.pop(0) if self.script else Delivery(ACCEPTED, Signal.OK)

    def close(self) -> None:
        pass


ACCEPTED = Decision(Outcome.DELIVERED, "accepted")


def entry_forwarder(store: QueueStore, sink: EntrySink, clock: FakeClock) -> Forwarder:
    """A forwarder over an entry-by-entry sink, on fake time, backoff without jitter."""
    return Forwarder(
        store, sink, make_registrar(registered=True), batch_size=10, batch_interval=0,
        retry=RetryPolicy(RETRY_INTERVAL, jitter=identity, clock=clock.monotonic), clock=clock,
    )  # fmt: skip


def step_waits(fwd: Forwarder, clock: FakeClock, n: int) -> list[float]:
    """What ``n`` steps return, the fake time moved on by each (the forwarder's own wait)."""
    waits = []
    for _ in range(n):
        waits.append(fwd.step(flush=True))
        clock.advance(waits[-1])
    return waits


class TestEntryByEntry:
    def test_confirmed_acked_refused_dead_failed_sent_again(self, tmp_path: Path) -> None:
        """Of 4 entries the output refuses #1 for good and fails #2 for now: #0 and #3 are
        acked, #1 is a dead letter, #2 alone is sent again after the backoff."""
        store, feed = make_store(tmp_path, lines(4))
        clock = FakeClock()
        partial = Delivery(
            Decision(Outcome.RETRY, "broker: 1 failed"), Signal.OK, refused=(1,), failed=(2,)
        )
        sink = EntrySink([partial])
        fwd = entry_forwarder(store, sink, clock)
        try:
            assert fwd.step(flush=True) == 1.0  # #2 waits its backoff
            stats = store.stats()
            # The item is acked (with its dead letter) only once every entry is settled.
            assert (stats.pending, stats.dead_letter) == (4, 0)
            clock.advance(1.0)
            fwd.step(flush=True)
            assert sink.sent == [feed.uids, [feed.uids[2]]]
            stats = store.stats()
            assert (stats.pending, stats.acked_kept, stats.dead_letter) == (0, 4, 1)
            assert (fwd.sent_lines, fwd.dead_lines) == (3, 1)
        finally:
            store.close()

    def test_an_ack_that_could_not_be_written_keeps_the_batchs_age(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """503 at T (waits 1 s), 200 at T+1 whose ack write fails (sent again 1 s later), 503
        at T+2: the step is 4 s and the batch has been failing for 2 s, so it waits 2 s (the
        age was not lost with the ack)."""
        store, feed = make_store(tmp_path, lines(2))
        clock = FakeClock()
        busy = Delivery(Decision(Outcome.RETRY, "server answered 503"), Signal.BACKPRESSURE)
        sink = EntrySink([busy, Delivery(ACCEPTED, Signal.OK), busy])
        fwd = entry_forwarder(store, sink, clock)
        real_ack = store.ack
        fails = [BufferWriteError("database or disk is full")]

        def ack_once_failing(lease: Any) -> None:
            if fails:
                raise fails.pop()
            real_ack(lease)

        monkeypatch.setattr(store, "ack", ack_once_failing)
        try:
            assert step_waits(fwd, clock, 3) == [1.0, 1.0, 2.0]
            fwd.step(flush=True)
            assert sink.sent == [feed.uids] * 4
            assert store.stats().acked_kept == 2
        finally:
            store.close()

    def test_an_entry_failing_again_waits_at_most_its_age(self, tmp_path: Path) -> None:
        """#1 fails three times: its waits are the steps 1, 2, 4 s cut to how long it has
        been failing (1, 1, 2 s), counted from the first failure across partitions."""
        store, feed = make_store(tmp_path, lines(2))
        clock = FakeClock()
        failed = Delivery(Decision(Outcome.RETRY, "broker: 1 failed"), Signal.OK, failed=(1,))
        again = Delivery(Decision(Outcome.RETRY, "broker: 1 failed"), Signal.OK, failed=(0,))
        sink = EntrySink([failed, again, again])
        fwd = entry_forwarder(store, sink, clock)
        try:
            assert step_waits(fwd, clock, 3) == [1.0, 1.0, 2.0]
            fwd.step(flush=True)
            assert sink.sent == [feed.uids] + [[feed.uids[1]]] * 3
            assert store.stats().acked_kept == 2
        finally:
            store.close()


# -- undecodable items ----------------------------------------------------------------------


def plant(store: QueueStore, data: bytes) -> None:
    """A ready row no agent wrote (tampered or damaged), after what is already there."""
    with sqlite3.connect(store.path) as con:
        con.execute(
            f"INSERT INTO {TABLE} (data, timestamp, status, n_lines, n_bytes) VALUES (?,?,1,1,9)",
            (data, time.time()),
        )


class TestUndecodable:
    """A tampered or damaged item in the buffer is set aside; the lines around it go."""

    def test_a_bad_item_is_set_aside_and_its_batch_sent(self, rig: Rig) -> None:
        """A tampered item between good ones: the good lines go in one request, the bad
        item becomes a dead letter, and nothing waits (no crash, no pause)."""
        first = rig.feed.commit(lines(3))
        plant(rig.store, b"\x80not json")
        second = rig.feed.commit(lines(2, "second"))
        rig.adapter.fallback = 200
        with capture_logs() as logs:
            rig.forwarder.step(flush=True)
        assert [r.uids for r in rig.ingests()] == [first + second]
        stats = rig.store.stats()
        assert (stats.pending, stats.dead_letter, stats.acked_kept) == (0, 1, 5)
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["item_undecodable"]
        assert rig.forwarder.paused_until == 0.0 and not rig.forwarder.waiting

    def test_odd_formats_and_offsets_are_set_aside(self, rig: Rig) -> None:
        """Collector items whose format or offsets were tampered with (a format that is not
        1 or 2, 1e999, an offset that is a bool, negative, past 2**63 or a float) are dead
        letters: none of them may decode to uids that collide or are not hex, and none may
        stop the forwarder. The same item with format 2 and offset 0 is delivered."""

        def item(v: str, offs: str) -> bytes:
            return (
                f'{{"v": {v}, "src": "s", "path": "/p", "fid": "k", "ts": 1.0,'
                f' "lines": ["x"], "offs": {offs}}}'
            ).encode()

        bad = [
            ("1e999", "[0]"),
            ('"2"', "[0]"),
            ("true", "[0]"),
            ("3", "[0]"),
            ("null", "[0]"),
            ("2", "[true]"),
            ("2", "[-1]"),
            ("2", f"[{2**64}]"),
            ("2", "[1.5]"),
        ]
        for v, offs in bad:
            plant(rig.store, item(v, offs))
        plant(rig.store, item("2", "[0]"))
        rig.adapter.fallback = 200
        for _ in range(3):  # a lease (8 items here) that was all bad sends nothing
            rig.forwarder.step(flush=True)
        assert [r.uids for r in rig.ingests()] == [[event_uid("k", 0)]]
        stats = rig.store.stats()
        assert (stats.pending, stats.dead_letter) == (0, len(bad))

    def test_a_lease_of_bad_items_only_sends_nothing(self, rig: Rig) -> None:
        """Only undecodable items (one of them half decodable: none of it goes): no request,
        all set aside, and the next lines go at once."""
        plant(rig.store, b"{}")
        plant(rig.store, b'{"v": 1, "entries": 5}')
        plant(rig.store, b'{"v": 1, "entries": [{"log_text": "half"}, 5]}')
        rig.adapter.fallback = 200
        rig.forwarder.step(flush=True)
        assert rig.ingests() == []
        assert (rig.store.stats().pending, rig.store.stats().dead_letter) == (0, 3)
        assert not rig.forwarder.sending and not rig.forwarder.waiting
        uids = rig.feed.commit(lines(8))
        rig.forwarder.step()
        assert [r.uids for r in rig.ingests()] == [uids]
