"""One test per row of the protocol's answer table, with the real agent and receiver."""

from __future__ import annotations

import json

import pytest

from tests.conftest import LogAgent, StartAgent
from tests.procs import API_KEY, AgentProc, ReceiverProc, wait_until, write_lines


def _start(start_agent: StartAgent, receiver: ReceiverProc, **cfg: object) -> LogAgent:
    started = start_agent(**cfg)
    wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="registration")
    return started


def _ingests(receiver: ReceiverProc) -> list[dict]:
    return [r for r in receiver.requests_log() if r["endpoint"] == "ingest-batch"]


def _events(agent: AgentProc, name: str) -> list[dict]:
    out = []
    for line in agent.log_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == name:
            out.append(rec)
    return out


class TestAnswers:
    def test_2xx_acks_the_whole_batch(self, receiver, start_agent) -> None:
        """Any 2xx (here 202) acks every entry: nothing pending, nothing sent again."""
        receiver.script("ingest-batch", [{"status": 202}])
        agent, log = _start(start_agent, receiver)
        write_lines(log, [f"l{i}" for i in range(10)])
        wait_until(lambda: len(_ingests(receiver)) == 1, 10, what="one batch")
        wait_until(lambda: agent.status()["pending"] == 0, 10, what="acked")
        assert len(_ingests(receiver)) == 1
        assert agent.status()["last_send_ok_at"]

    def test_404_registers_again_then_retries(self, receiver, start_agent) -> None:
        """404 to a batch: the agent registers again and the batch is delivered."""
        # No heartbeat during the test: its 404 would re-register before the batch is sent.
        agent, log = _start(start_agent, receiver, heartbeat_interval=60)
        write_lines(log, ["first"])
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 10, what="first line")
        receiver.configure(forget_agents=True)
        write_lines(log, [f"second {i}" for i in range(5)])
        wait_until(lambda: receiver.stats()["events_unique"] == 6, 15, what="after 404")
        reqs = receiver.requests_log()
        statuses = [(r["endpoint"], r["status"]) for r in reqs]
        i404 = statuses.index(("ingest-batch", 404))
        assert ("register", 200) in statuses[i404:]
        assert [s for s in statuses if s[0] == "register"] == [("register", 200)] * 2

    def test_413_splits_in_halves(self, receiver, start_agent) -> None:
        """413: the batch is split until it fits; every line arrives once."""
        receiver.configure(max_batch=7)
        agent, log = _start(start_agent, receiver, batch_interval=1)
        lines = [f"big {i}" for i in range(50)]
        write_lines(log, lines)
        wait_until(lambda: receiver.stats()["events_unique"] == 50, 15, what="50 lines")
        ok = [r for r in _ingests(receiver) if r["status"] == 200]
        assert all(r["n_logs"] <= 7 for r in ok)
        assert sum(r["n_logs"] for r in ok) == 50
        assert any(r["status"] == 413 for r in _ingests(receiver))

    def test_400_isolates_the_rejected_entry_into_dead_letters(
        self, tmp_path, receiver, start_agent
    ) -> None:
        """400: split until the bad entry is alone; it is dead-lettered, the rest delivered."""
        receiver.configure(reject_substring="POISON")
        agent, log = _start(start_agent, receiver, batch_interval=1)
        lines = [f"ok {i}" if i != 13 else "POISON 13" for i in range(20)]
        write_lines(log, lines)
        wait_until(lambda: receiver.stats()["events_unique"] == 19, 15, what="19 lines")
        wait_until(lambda: agent.status()["dead_letter"] == 1, 10, what="one dead letter")
        got = {e["log_text"] for e in receiver.events()}
        assert got == set(lines) - {"POISON 13"}
        assert agent.status()["pending"] == 0
        assert len(_events(agent, "entry_dead_lettered")) == 1

    def test_422_splits_too(self, receiver, start_agent) -> None:
        """422 is handled like 400: split, and the halves are delivered."""
        receiver.script("ingest-batch", [{"status": 422}])
        agent, log = _start(start_agent, receiver, batch_interval=1)
        write_lines(log, [f"x {i}" for i in range(10)])
        wait_until(lambda: receiver.stats()["events_unique"] == 10, 15, what="10 lines")
        ok = [r["n_logs"] for r in _ingests(receiver) if r["status"] == 200]
        assert ok == [5, 5]
        assert agent.status()["dead_letter"] == 0

    @pytest.mark.parametrize("status", [401, 403])
    def test_401_403_keeps_everything_logs_once(
        self, tmp_path, receiver, start_agent, status
    ) -> None:
        """401/403: nothing lost, one clear error per streak, the key never logged."""
        receiver.script("ingest-batch", [{"status": status}] * 3)
        agent, log = _start(start_agent, receiver, retry_interval=0.3)
        write_lines(log, [f"a {i}" for i in range(10)])
        wait_until(lambda: receiver.stats()["events_unique"] == 10, 20, what="10 lines")
        assert len(_events(agent, "api_key_rejected")) == 1
        assert API_KEY not in agent.log_text()
        assert API_KEY not in (tmp_path / "agent.err").read_text()

    def test_429_retry_after_honoured_beyond_retry_interval(
        self, tmp_path, receiver, start_agent
    ) -> None:
        """429 with Retry-After: 3 and retry_interval 0.5: the retry waits the 3 s."""
        receiver.script("ingest-batch", [{"status": 429, "headers": {"Retry-After": "3"}}])
        agent, log = _start(start_agent, receiver, retry_interval=0.5)
        write_lines(log, ["one"])
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 15, what="the line")
        first, second = _ingests(receiver)[:2]
        assert first["status"] == 429 and second["status"] == 200
        assert 3.0 <= second["mono"] - first["mono"] < 5.0

    def test_5xx_retried_with_backoff(self, receiver, start_agent) -> None:
        """500/502/503: kept and retried until accepted."""
        receiver.script("ingest-batch", [{"status": s} for s in (500, 502, 503)])
        agent, log = _start(start_agent, receiver, retry_interval=0.5)
        write_lines(log, [f"s {i}" for i in range(10)])
        wait_until(lambda: receiver.stats()["events_unique"] == 10, 15, what="10 lines")
        assert [r["status"] for r in _ingests(receiver)] == [500, 502, 503, 200]
        assert receiver.stats()["events_received"] == 10

    def test_timeout_is_retried(self, receiver, start_agent) -> None:
        """A server slower than request_timeout: the batch is retried, nothing is lost."""
        receiver.script("ingest-batch", [{"status": 200, "delay": 3}])
        agent, log = _start(start_agent, receiver, request_timeout=1, retry_interval=0.5)
        write_lines(log, [f"t {i}" for i in range(10)])
        wait_until(lambda: receiver.stats()["events_unique"] == 10, 20, what="10 lines")
        assert len(_ingests(receiver)) == 2
        assert "read timeout" in (agent.log_text())

    def test_connection_reset_is_retried(self, receiver, start_agent) -> None:
        """A connection reset mid-request: retried, delivered."""
        receiver.script("ingest-batch", [{"drop": True}])
        agent, log = _start(start_agent, receiver, retry_interval=0.5)
        write_lines(log, ["r"])
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 15, what="the line")

    def test_connection_refused_is_retried(self, tmp_path, agents) -> None:
        """Nobody listening: the agent buffers, keeps trying, and delivers once the port opens."""
        receiver = ReceiverProc(tmp_path)
        log = tmp_path / "app.log"
        write_lines(log, [f"c {i}" for i in range(5)])
        agent = AgentProc(
            tmp_path, server_url=receiver.url, log_sources=[str(log)], retry_interval=0.5
        )
        agents.append(agent)
        agent.start()
        wait_until(lambda: agent.status()["pending"] == 5, 15, what="buffered")
        wait_until(lambda: "connection" in (agent.status()["last_error"] or ""), 10, what="err")
        receiver.start()
        try:
            wait_until(lambda: receiver.stats()["events_unique"] == 5, 15, what="delivered")
        finally:
            receiver.stop()

    def test_3xx_is_not_followed(self, tmp_path, receiver, start_agent) -> None:
        """A redirect is a failed attempt: the other host never sees the key or the batch."""
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        other = ReceiverProc(other_dir, api_key=API_KEY).start()
        try:
            receiver.script(
                "ingest-batch",
                [{"status": 302, "headers": {"Location": other.url + "/api/agent/ingest-batch"}}],
            )
            agent, log = _start(start_agent, receiver, retry_interval=0.5)
            write_lines(log, ["r1", "r2"])
            wait_until(lambda: receiver.stats()["events_unique"] == 2, 15, what="2 lines")
            assert other.requests_log() == []
            assert [r["status"] for r in _ingests(receiver)] == [302, 200]
        finally:
            other.stop()
