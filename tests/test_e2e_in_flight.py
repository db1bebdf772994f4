"""Batches in flight, end to end: the real agent against the reference receiver (protocol.md,
"Batches in flight")."""

from __future__ import annotations

from tests.conftest import StartAgent
from tests.procs import ReceiverProc, wait_until, write_lines


def _ingests(receiver: ReceiverProc) -> list[dict]:
    return [r for r in receiver.requests_log() if r["endpoint"] == "ingest-batch"]


class TestConcurrency:
    def test_no_more_than_max_in_flight_at_once(
        self, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """A slow server (0.2 s per answer) with a backlog sees several requests at once, and
        never more than max_in_flight."""
        receiver.configure(delay=0.2)
        lines = [f"c {i:05d}" for i in range(3000)]
        agent, _ = start_agent(lines, max_in_flight=4, batch_size=50)
        wait_until(lambda: receiver.stats()["events_unique"] == 3000, 60, what="3000 lines")
        peak = receiver.stats()["ingest_in_flight_max"]
        assert 2 <= peak <= 4, peak
        assert sorted(e["log_text"] for e in receiver.events()) == lines
        assert agent.terminate() == 0

    def test_max_in_flight_one_keeps_file_order(
        self, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """With max_in_flight 1 the server stores a source's entries in file order, also
        when some answers fail and are retried."""
        receiver.script("ingest-batch", [{"status": 503}] * 3)  # scripted answers store nothing
        lines = [f"o {i:05d}" for i in range(1500)]
        agent, log = start_agent(lines[:700], max_in_flight=1, batch_size=50, retry_interval=0.3)
        wait_until(lambda: receiver.stats()["events_unique"] >= 100, 30, what="first lines")
        write_lines(log, lines[700:])
        wait_until(lambda: receiver.stats()["events_unique"] == 1500, 60, what="1500 lines")
        assert [e["log_text"] for e in receiver.events()] == lines
        assert receiver.stats()["ingest_in_flight_max"] == 1
        assert agent.terminate() == 0

    def test_a_server_that_sheds_load_gets_everything_with_few_rejections(
        self, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """A server that answers 503 above 2 requests at once: every line arrives, and fewer
        than 30 % of its answers are 503s (the agent learns to stay at 2)."""
        receiver.configure(delay=0.1, max_concurrent=2)
        lines = [f"s {i:05d}" for i in range(4000)]
        agent, _ = start_agent(lines, max_in_flight=8, batch_size=50, retry_interval=1)
        wait_until(lambda: receiver.stats()["events_unique"] == 4000, 80, what="4000 lines")
        statuses = [r["status"] for r in _ingests(receiver)]
        shed = statuses.count(503) / len(statuses)
        assert shed < 0.30, (statuses.count(503), len(statuses))
        assert sorted(e["log_text"] for e in receiver.events()) == lines
        assert agent.terminate() == 0


class TestBodySize:
    def test_no_request_body_exceeds_batch_max_bytes(
        self, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """Long lines and a small batch_max_bytes: every body fits, and the limit is used
        (batches end early rather than grow past it)."""
        limit = 16_384
        lines = [f"b {i:04d} " + "x" * (300 + (i * 37) % 900) for i in range(600)]
        agent, _ = start_agent(lines, batch_size=200, batch_max_bytes=limit, max_in_flight=2)
        wait_until(lambda: receiver.stats()["events_unique"] == 600, 60, what="600 lines")
        sizes = [r["body_bytes"] for r in _ingests(receiver) if r["status"] == 200]
        assert max(sizes) <= limit
        assert max(sizes) > limit // 2  # batches were not cut needlessly small
        assert sorted(e["log_text"] for e in receiver.events()) == sorted(lines)
        assert agent.terminate() == 0


class TestCrashInFlight:
    def test_kill9_with_eight_batches_in_flight_loses_nothing(
        self, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """kill -9 while 8 batches wait for their answers: after a restart every line is
        stored, each once (the receiver de-duplicates by event_uid)."""
        receiver.configure(delay=1.5)
        lines = [f"k {i:05d}" for i in range(2000)]
        agent, _ = start_agent(lines, max_in_flight=8, batch_size=50)
        wait_until(lambda: receiver.stats()["ingest_in_flight_max"] >= 8, 40, what="8 in flight")
        agent.kill9()
        # The 8 requests the dead agent never read the answers of are stored meanwhile.
        wait_until(
            lambda: all(r["status"] is not None for r in _ingests(receiver)), 20, what="answered"
        )
        receiver.configure(delay=0.0)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 2000, 60, what="2000 lines")
        assert sorted(e["log_text"] for e in receiver.events()) == lines
        assert agent.terminate() == 0
