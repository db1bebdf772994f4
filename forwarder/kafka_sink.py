"""The Kafka output: one message per entry, confirmed only by its delivery report.

An idempotent producer with ``acks=all`` (librdkafka, through confluent-kafka). A message is
keyed ``<agent_id>:<source>`` (one source stays in one partition, so in order) and carries
the header ``event_uid``. ``send`` returns when every message of the batch has its delivery
report; a message still queued inside librdkafka is never counted as delivered.

What librdkafka does, and what this module does about it (each seen against tansu and
librdkafka's mock cluster):

- ``message.timeout.ms`` is bounded (``delivery_timeout``): with 0 (wait forever) a batch
  produced while the broker is down never reports. A timed-out message (``_MSG_TIMED_OUT``)
  is not dropped: its entry stays in the buffer and is sent again.
- A delivery report's error is never ``retriable()`` (librdkafka retried what it could), so
  errors are judged by code: too large / invalid record → refused for good (dead letter);
  everything else → sent again.
- A broker that lost the producer's state (tansu restarts empty) makes an idempotent producer
  retry forever, and a fatal idempotence error poisons it: after any failed batch the next
  one starts on a fresh producer (the old one purged, so nothing of it is delivered late).
- Before a batch after a failure (and at start) a metadata request checks the brokers and
  the topic, so an outage or a missing topic fails a batch in about a second instead of
  ``delivery_timeout``. ``allow.auto.create.topics`` is off: the agent never creates topics.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from forwarder.encode import message_body
from forwarder.kafka_reports import NO_TOPIC, Reports, judge, no_topic_text, steady_text
from forwarder.sink import CONFIRMED, Delivery, Result, Verdict, per_message
from ila_core.settings import SettingsReader
from queue_store.records import Entry

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer

log = structlog.get_logger("forwarder")

EXTRA = "pip install 'ila-soc-agent[kafka]'"
DEFAULT_TOPIC = "ila-logs"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = (None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_DELIVERY_TIMEOUT = 30.0  # seconds: librdkafka's message.timeout.ms
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default, just under the broker's
PROBE_TIMEOUT = 2.0  # seconds for the metadata request that checks brokers and topic
POLL_S = 0.1  # the reports thread's poll; reports are served as soon as they come
REPORT_MARGIN = 5.0  # a batch waits this long past delivery_timeout for its last report
LINGER_MS = 5  # batches from several sending threads share a request


@dataclass(frozen=True)
class KafkaOutput:
    """``{"type": "kafka", "bootstrap_servers", "topic", "security_protocol",
    "sasl_mechanism", "sasl_username", "sasl_password_file", "tls_ca_file",
    "delivery_timeout", "message_max_bytes"}``. The password is read from its file when the
    sink is made; the spec holds only the path."""

    type_name: ClassVar[str] = "kafka"

    bootstrap_servers: str
    topic: str = DEFAULT_TOPIC
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_file: str | None = None
    tls_ca_file: str | None = None
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
    message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES

    @classmethod
    def from_json(cls, r: SettingsReader) -> KafkaOutput:
        r.warn_unknown(
            {"type", "bootstrap_servers", "topic", "security_protocol", "sasl_mechanism",
             "sasl_username", "sasl_password_file", "tls_ca_file", "delivery_timeout",
             "message_max_bytes"}
        )  # fmt: skip
        servers = r.text("bootstrap_servers")
        for one in servers.split(","):
            host, _, port = one.strip().rpartition(":")
            if not host or not port.isdigit():
                raise r.error("bootstrap_servers", f"must be HOST:PORT[,HOST:PORT…], got {one!r}")
        topic = r.string("topic", DEFAULT_TOPIC) or DEFAULT_TOPIC
        if len(topic) > 249 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in topic):
            raise r.error("topic", f"is not a valid Kafka topic name: {topic!r}")
        protocol = r.choice("security_protocol", "PLAINTEXT", SECURITY_PROTOCOLS)
        mechanism = r.choice("sasl_mechanism", None, SASL_MECHANISMS)
        username = r.string("sasl_username", None)
        password_file = r.path("sasl_password_file", None)
        sasl = protocol.startswith("SASL_")
        if sasl and mechanism is None:
            raise r.error("sasl_mechanism", f"is needed with security_protocol {protocol}")
        if not sasl and (mechanism or username or password_file):
            raise r.error("security_protocol", "must be SASL_SSL or SASL_PLAINTEXT to use SASL")
        if sasl and not username:
            raise r.error("sasl_username", f"is needed with sasl_mechanism {mechanism}")
        if sasl and password_file is None:
            raise r.error("sasl_password_file", f"is needed with sasl_mechanism {mechanism}")
        if password_file is not None:
            try:
                if not read_secret(password_file):
                    raise r.error("sasl_password_file", f"{password_file} is empty")
            except OSError as exc:
                raise r.error("sasl_password_file", f"cannot read {password_file}: "
                              f"{exc.strerror or exc}") from None  # fmt: skip
        tls_ca_file = r.path("tls_ca_file", None)
        if tls_ca_file is not None:
            if protocol not in ("SSL", "SASL_SSL"):
                raise r.error("tls_ca_file", f"needs security_protocol SSL or SASL_SSL, not "
                              f"{protocol} (nothing would be encrypted)")  # fmt: skip
            try:
                ssl.create_default_context(cafile=tls_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise r.error("tls_ca_file", f"not a readable PEM CA file: {tls_ca_file}: "
                              f"{exc}") from None  # fmt: skip
        spec = cls(
            bootstrap_servers=servers,
            topic=topic,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=username,
            sasl_password_file=password_file,
            tls_ca_file=tls_ca_file,
            delivery_timeout=r.number("delivery_timeout", DEFAULT_DELIVERY_TIMEOUT),
            message_max_bytes=r.integer(
                "message_max_bytes", DEFAULT_MESSAGE_MAX_BYTES, minimum=1000, maximum=10**9
            ),
        )
        # The client is an extra: say which one at config load, not at the first send.
        if importlib.util.find_spec("confluent_kafka") is None:
            raise r.error("type", f"the kafka output needs the confluent-kafka client: {EXTRA}")
        return spec

    def to_json(self) -> dict[str, Any]:
        """The settings; the password file's path, never its content."""
        return {
            "type": self.type_name,
            "bootstrap_servers": self.bootstrap_servers,
            "topic": self.topic,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_username": self.sasl_username,
            "sasl_password_file": self.sasl_password_file,
            "tls_ca_file": self.tls_ca_file,
            "delivery_timeout": self.delivery_timeout,
            "message_max_bytes": self.message_max_bytes,
        }

    def label(self) -> str:
        return f"kafka {self.bootstrap_servers} topic {self.topic}"

    def producer_config(self) -> dict[str, Any]:
        """librdkafka's settings, without the password (added by the sink, never logged)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": "ila-agent",
            "enable.idempotence": True,  # no duplicates from librdkafka's own retries
            "acks": "all",
            "message.timeout.ms": max(1, round(self.delivery_timeout * 1000)),
            "message.max.bytes": self.message_max_bytes,
            "allow.auto.create.topics": False,  # the agent never creates topics
            # A missing topic is reported after this long, not after message.timeout.ms.
            "topic.metadata.propagation.max.ms": 2000,
            "linger.ms": LINGER_MS,
            # Back within 2 s of a broker's return (librdkafka's default cap is 10 s).
            "reconnect.backoff.max.ms": 2000,
            "security.protocol": self.security_protocol,
            # Problems come through error_cb (logged when they change); librdkafka's own log
            # would repeat every failed connection attempt.
            "log_level": 2,
        }
        if self.sasl_mechanism is not None:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
        if self.tls_ca_file is not None:
            conf["ssl.ca.location"] = self.tls_ca_file
        return conf

    def make_sink(self, *, agent_id: str, hostname: str) -> KafkaSink:
        return KafkaSink(self, agent_id=agent_id, hostname=hostname)


def read_secret(path: str) -> str:
    """A secret from its file, surrounding whitespace (a trailing newline) stripped."""
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class KafkaSink:
    """Produces each entry as one message; ``send`` blocks until every message of the batch
    has its delivery report (at most ``delivery_timeout`` plus a margin)."""

    name = "kafka"

    def __init__(self, spec: KafkaOutput, *, agent_id: str, hostname: str) -> None:
        self.spec = spec
        self.agent_id = agent_id
        self._agent_json = json.dumps(agent_id, ensure_ascii=False)
        self._host_json = json.dumps(hostname, ensure_ascii=False)
        self._conf = spec.producer_config()
        if spec.sasl_password_file is not None:
            self._conf["sasl.password"] = read_secret(spec.sasl_password_file)
        self._lock = threading.Lock()  # producing, and replacing the producer
        self._producer: Producer | None = None
        self._broken: str | None = None  # why no producer could be made
        self._needs_probe = True  # check brokers and topic before the next batch
        self._stale = False  # a failure happened: the next batch starts on a fresh producer
        self._problem: str | None = None  # the last error librdkafka reported
        self._said: set[str] = set()  # error codes logged since the last confirmed batch
        self._closed = threading.Event()
        self._wait_s = spec.delivery_timeout + REPORT_MARGIN
        with self._lock:
            self._producer = self._new_producer()
        # Reports and errors are served by one thread, also while no batch is being sent.
        self._thread = threading.Thread(target=self._serve, name="kafka-output", daemon=True)
        self._thread.start()

    # -- the producer ---------------------------------------------------------------------

    def _new_producer(self) -> Producer | None:
        from confluent_kafka import KafkaException, Producer

        conf = dict(self._conf, error_cb=self._on_error,
                    logger=logging.getLogger("librdkafka"))  # fmt: skip
        try:
            producer = Producer(conf)
        except KafkaException as exc:
            # A setting librdkafka refuses (never the password's value: it is not echoed).
            self._broken = f"the Kafka client refused its configuration: {exc.args[0].str()}"
            log.error("kafka_client_failed", error=self._broken)
            return None
        self._broken = None
        return producer

    def _replace(self, old: Producer | None) -> None:
        """A fresh producer instead of ``old`` (unless another thread already replaced it);
        what ``old`` still holds is purged, so it is never delivered after its batch failed."""
        with self._lock:
            if self._producer is not old:
                return
            self._producer = self._new_producer()
            self._stale = False
        if old is not None:
            try:
                old.purge(in_queue=True, in_flight=True)
                old.flush(1.0)  # serves the purged messages' reports to their batches
            except Exception as exc:  # a fatal producer may refuse even this
                log.debug("kafka_purge_failed", error=str(exc))
        log.info("kafka_producer_renewed", bootstrap=self.spec.bootstrap_servers)

    def _serve(self) -> None:
        while not self._closed.is_set():
            producer = self._producer
            if producer is None:
                self._closed.wait(POLL_S)
                continue
            try:
                producer.poll(POLL_S)
            except Exception as exc:  # a fatal error surfaces here too
                self._note_problem("_FATAL", f"Kafka producer failed: {exc}")
                self._stale = self._needs_probe = True
                self._closed.wait(POLL_S)

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (on the reports thread)."""
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            # After an outage the brokers may have lost the producer's state (tansu does):
            # check them before the next batch and send it through a fresh producer.
            self._stale = self._needs_probe = True
        self._note_problem(err.name(), f"{err.name()}: {err.str()}")

    def _note_problem(self, code: str, text: str) -> None:
        # librdkafka repeats its errors (every connection attempt, alternating codes): each
        # kind is said once until a batch gets through again.
        text = steady_text(text)
        if code not in self._said:
            self._said.add(code)
            log.warning("kafka_error", bootstrap=self.spec.bootstrap_servers, error=text)
        self._problem = text

    # -- sending --------------------------------------------------------------------------

    def send(self, entries: Sequence[Entry]) -> Delivery:
        n = len(entries)
        if self._closed.is_set():
            return per_message([Result(Verdict.DOWN, "Kafka output closed")] * n)
        if self._needs_probe or self._producer is None:
            problem = self._probe()
            if problem is not None:
                self._stale = True
                return per_message([problem] * n)
        reports = Reports(n)
        with self._lock:  # never on a producer being replaced (its messages would be lost)
            producer = self._producer
            if producer is None:
                return per_message(
                    [Result(Verdict.FAILED, self._broken or "no Kafka producer")] * n
                )
            deadline = time.monotonic() + self._wait_s
            for i, entry in enumerate(entries):
                now = self._produce(producer, entry, functools.partial(self._report, reports, i),
                                    deadline)  # fmt: skip
                if now is not None:
                    reports.put(i, now)
        reports.done.wait(max(0.0, deadline - time.monotonic()))
        late = Result(Verdict.LATE, f"no delivery report from Kafka within {self._wait_s:g} s")
        results = reports.close(late)
        if any(r.verdict not in (Verdict.CONFIRMED, Verdict.REFUSED) for r in results):
            # Check the brokers before the next batch, and start it on a fresh producer.
            self._needs_probe = self._stale = True
        elif self._said:
            log.info("kafka_ok_again", bootstrap=self.spec.bootstrap_servers)
            self._said.clear()
        return per_message(results)

    def _produce(
        self, producer: Producer, entry: Entry, on_delivery: Any, deadline: float
    ) -> Result | None:
        """Hands one message to librdkafka; a Result when it was refused at once."""
        from confluent_kafka import KafkaException

        body = message_body(entry, self._host_json, self._agent_json)
        source = (entry.extra or {}).get("agent_id", self.agent_id)
        key = f"{source}:{entry.source}"
        while True:
            try:
                producer.produce(self.spec.topic, value=body, key=key,
                                 headers=[("event_uid", entry.event_uid.encode())],
                                 on_delivery=on_delivery)  # fmt: skip
                return None
            except BufferError:
                # librdkafka's queue is full: the reports thread empties it.
                if time.monotonic() >= deadline:
                    return Result(Verdict.DOWN, "Kafka producer queue full")
                time.sleep(0.01)
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    self._stale = True
                return self._judge(err)

    def _report(self, reports: Reports, i: int, err: KafkaError | None, _msg: Message) -> None:
        """librdkafka's delivery callback; must not raise (it would surface in poll)."""
        reports.put(i, CONFIRMED if err is None else self._judge(err))

    def _judge(self, err: KafkaError) -> Result:
        return judge(err.name(), err.str(), topic=self.spec.topic, problem=self._problem,
                     delivery_timeout=self.spec.delivery_timeout)  # fmt: skip

    def _probe(self) -> Result | None:
        """Brokers reachable and the topic there: None; else why not (for the whole batch)."""
        from confluent_kafka import KafkaException

        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    self._producer = self._new_producer()
            if self._producer is None:
                return Result(Verdict.FAILED, self._broken or "no Kafka producer")
        producer = self._producer
        try:
            meta = producer.list_topics(self.spec.topic, timeout=PROBE_TIMEOUT)
        except KafkaException as exc:
            why = self._problem or exc.args[0].str()
            return Result(Verdict.DOWN, f"Kafka brokers {self.spec.bootstrap_servers} "
                          f"unreachable: {why}")  # fmt: skip
        topic = meta.topics.get(self.spec.topic)
        error = None if topic is None else topic.error
        if topic is None or (error is not None and error.name() in NO_TOPIC):
            return Result(Verdict.FAILED, no_topic_text(self.spec.topic))
        if error is not None:
            return Result(Verdict.FAILED, f"Kafka topic {self.spec.topic}: {error.name()}: "
                          f"{error.str()}")  # fmt: skip
        self._needs_probe = False
        if self._stale:
            # State the broker may have lost (tansu restarts empty) or a fatal error: the
            # next batch goes through a producer that starts clean.
            self._replace(producer)
        return None

    def close(self) -> None:
        """Waits briefly for reports of what is in flight, then stops; twice is fine.
        Whatever is not confirmed stays in the agent's buffer."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(POLL_S * 10)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.purge(in_queue=True, in_flight=False)
                producer.flush(2.0)
            except Exception as exc:
                log.debug("kafka_close_failed", error=str(exc))
