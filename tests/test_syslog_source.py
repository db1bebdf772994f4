"""collector.syslog_source: the syslog listeners, in-process, with real sockets and a real buffer.

Each invariant of the module's docstring has a test here; the real agent process with real
senders (logger, syslog-ng) is in tests/test_e2e_syslog.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from collector.processing import Redaction, Redactor
from collector.sources import SOURCE_TYPES, parse_source
from collector.spec import ReaderContext
from collector.syslog_conn import READ_BYTES
from collector.syslog_entries import UidMinter
from collector.syslog_reader import SyslogReader
from collector.syslog_sockets import kernel_udp_drops
from collector.syslog_source import SyslogSource
from ila_core.clock import Clock
from ila_core.counters import Counts
from ila_core.errors import ConfigError
from ila_core.health import HealthBoard
from ila_core.settings import SettingsReader
from ila_core.throttle import LOG_BURST, Throttle
from queue_store.schema import STATE_NAMES, STATES
from queue_store.store import QueueStore
from queue_store.view import BufferView
from tests.procs import free_port, make_pki, wait_until

RFC5424 = b'<165>1 2026-11-27T10:00:01.517Z web-01 sshd 4711 ID47 [x@1 a="b"] Accepted key'
RFC3164 = b"<38>Nov 27 10:00:01 web-02 sshd[99]: Failed password for root"


def spec_of(raw: dict[str, Any], base: Path = Path("/")) -> SyslogSource:
    spec = parse_source(SettingsReader("config.json", {}, base), "log_sources[0]", raw)
    assert isinstance(spec, SyslogSource)
    return spec


class Harness:
    """Readers on 127.0.0.1 (ephemeral ports) over one real buffer, each on its own thread."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = Clock()
        self.health = HealthBoard()
        self.store = self.open_store()
        self.running: list[tuple[SyslogReader, threading.Thread]] = []
        self.delivered: list[dict[str, Any]] = []

    def open_store(self, **options: Any) -> QueueStore:
        return QueueStore(str(self.tmp / "buffer.db"), **options)

    def reader(self, scheme: str = "tcp", *, port: int = 0, **spec: Any) -> SyslogReader:
        ctx = ReaderContext(
            store=self.store, batch_size=50, start_position="end", first_start=True,
            clock=self.clock, poll_interval=0.2, health=self.health,
        )  # fmt: skip
        return SyslogSource(scheme=scheme, host="127.0.0.1", port=port, **spec).reader(ctx)

    def run(self, reader: SyslogReader, *, wait: bool = True) -> SyslogReader:
        t = threading.Thread(target=reader.run, name=reader.name, daemon=True)
        t.start()
        self.running.append((reader, t))
        if wait:
            wait_until(lambda: reader.address is not None, 10, what="listening")
        return reader

    def start(self, scheme: str = "tcp", **spec: Any) -> SyslogReader:
        return self.run(self.reader(scheme, **spec))

    def stop(self) -> None:
        self.clock.stop_event.set()
        for reader, t in self.running:
            reader.stop()
            t.join(10)
            assert not t.is_alive(), f"{reader.name} did not stop"
        self.running.clear()

    def entries(self) -> list[dict[str, Any]]:
        """Every entry committed so far, in commit order, as the protocol carries it."""
        with BufferView(self.store.path) as view:
            return [s.entry.to_wire("agent-host") for s in view.entries(list(STATE_NAMES))]

    def wait_entries(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.entries()) >= n, timeout, what=f"{n} entries")
        return self.entries()

    def drain(self) -> int:
        """Lease and ack what is pending, as a forwarder would (acks make room in the buffer);
        what was drained is kept in ``delivered``."""
        lease = self.store.lease(100_000)
        if lease is None:
            return 0
        self.delivered += [e.to_wire("agent-host") for e in lease.entries]
        lease.settle(lease.entries, ())
        return len(lease.entries)

    def seen(self) -> list[dict[str, Any]]:
        """Drained entries, then those still pending: acked history may have been forgotten
        by the store to make room, so ``entries()`` alone would miss some."""
        with BufferView(self.store.path) as view:
            pending = [s.entry.to_wire("agent-host") for s in view.entries(STATES["pending"])]
        return self.delivered + pending


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.stop()
        harness.store.close()


def port_of(reader: SyslogReader) -> int:
    assert reader.address is not None
    return reader.address[1]


def send_tcp(reader: SyslogReader, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port_of(reader)), timeout=10) as s:
        s.sendall(data)


def send_udp(reader: SyslogReader, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port_of(reader)))


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True once the other end closed (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


# -- the spec ----------------------------------------------------------------------------------


class TestSpec:
    def test_listen_forms_and_defaults(self) -> None:
        """listen is udp://, tcp:// or tls://HOST:PORT; the limits and the source name default."""
        spec = spec_of({"type": "syslog", "listen": "tcp://0.0.0.0:5514"})
        assert (spec.scheme, spec.host, spec.port) == ("tcp", "0.0.0.0", 5514)
        assert spec.name == "syslog:tcp:5514" and spec.label() == "syslog:tcp://0.0.0.0:5514"
        assert (spec.max_message_bytes, spec.max_connections, spec.idle_timeout) == (
            65536, 1000, 600.0,
        )  # fmt: skip
        v6 = spec_of({"type": "syslog", "listen": "udp://[::1]:514", "source": "fw"})
        assert (v6.host, v6.port, v6.name, v6.listen) == ("::1", 514, "fw", "udp://[::1]:514")
        assert SOURCE_TYPES["syslog"] is SyslogSource
        assert v6.to_json()["source"] == "fw" and v6.runs_on("win32") and v6.runs_on("linux")

    @pytest.mark.parametrize(
        ("raw", "key", "words"),
        [
            ({"listen": "http://1.2.3.4:80"}, "listen", "udp://HOST:PORT"),
            ({"listen": "tcp://1.2.3.4"}, "listen", "needs a host and a port"),
            ({"listen": "tcp://:514"}, "listen", "needs a host and a port"),
            ({"listen": "tcp://h:99999"}, "listen", "bad port"),
            ({"listen": "tcp://h:514/x"}, "listen", "only tcp://HOST:PORT"),
            ({}, "listen", "non-empty string"),
            ({"listen": "tls://h:6514"}, "tls_cert_file", "required"),
            ({"listen": "tcp://h:514", "tls_cert_file": "c.pem"}, "tls_cert_file", "only to a"),
            ({"listen": "udp://h:514", "max_message_bytes": 100}, "max_message_bytes", "480"),
            ({"listen": "tcp://h:514", "max_connections": 0}, "max_connections", "at least 1"),
            ({"listen": "tcp://h:514", "idle_timeout": 0}, "idle_timeout", "greater than 0"),
            ({"listen": "tcp://h:514", "source": " "}, "source", "must not be empty"),
        ],
    )
    def test_invalid_values_name_the_key(self, raw: dict[str, Any], key: str, words: str) -> None:
        """Every invalid value is a ConfigError naming log_sources[0].<key>."""
        with pytest.raises(ConfigError) as err:
            spec_of({"type": "syslog", **raw})
        assert err.value.key == f"log_sources[0].{key}"
        assert words in err.value.problem

    def test_tls_files_are_resolved_and_must_exist(self, tmp_path: Path) -> None:
        """tls:// needs a certificate and key; paths are relative to the config's folder."""
        for name in ("c.pem", "k.pem"):
            (tmp_path / name).write_text("x")
        raw = {"type": "syslog", "listen": "tls://127.0.0.1:6514"}
        spec = spec_of({**raw, "tls_cert_file": "c.pem", "tls_key_file": "k.pem"}, tmp_path)
        assert spec.tls_cert_file == str(tmp_path / "c.pem")
        with pytest.raises(ConfigError, match=r"tls_client_ca_file: .*is not a file"):
            spec_of({**raw, "tls_cert_file": "c.pem", "tls_key_file": "k.pem",
                     "tls_client_ca_file": "missing.pem"}, tmp_path)  # fmt: skip


class TestUids:
    def test_unique_within_a_run_and_never_repeated_by_a_later_run(self) -> None:
        """sha256(listener, random epoch, counter): a new start has a new epoch."""
        first, second = UidMinter("syslog:tcp://x:1"), UidMinter("syslog:tcp://x:1")
        a = [first.next() for _ in range(50_000)]
        b = [second.next() for _ in range(50_000)]
        assert len(set(a)) == len(a) and not set(a) & set(b)
        assert all(len(u) == 32 for u in a[:10]) and first.epoch != second.epoch
        assert first.cursor == f"{first.epoch}:50000"

    def test_restart_on_the_same_buffer_gives_new_uids(self, h: Harness) -> None:
        """Two runs of the same listener on one buffer: no uid of the second is one of the first."""
        r1 = h.start("udp")
        send_udp(r1, *[b"<13>first %d" % i for i in range(100)])
        h.wait_entries(100)
        h.stop()
        h.clock = Clock()
        r2 = h.start("udp")
        send_udp(r2, *[b"<13>second %d" % i for i in range(100)])
        uids = [e["event_uid"] for e in h.wait_entries(200)]
        assert len(set(uids)) == 200


# -- entries -----------------------------------------------------------------------------------


class TestEntries:
    def test_framing_detected_per_message_and_removed(self, h: Harness) -> None:
        """Newline and octet-counted frames mixed on one connection; log_text is the message
        with PRI and header, without the count, the LF or a CR before it."""
        r = h.start("tcp")
        send_tcp(r, RFC5424 + b"\n" + b"%d " % len(RFC3164) + RFC3164 + b"<13>third\r\n")
        got = h.wait_entries(3)
        assert [e["log_text"] for e in got] == [
            RFC5424.decode(), RFC3164.decode(), "<13>third",
        ]  # fmt: skip
        first = got[0]
        assert first["syslog"] == {
            "facility": 20, "severity": 5, "hostname": "web-01", "app_name": "sshd",
            "procid": "4711", "msgid": "ID47", "time": "2026-11-27T10:00:01.517Z",
        }  # fmt: skip
        assert first["hostname"] == "web-01" and first["source"] == "syslog:tcp:0"
        assert first["peer"].startswith("127.0.0.1:") and first["timestamp"].endswith("Z")
        assert got[1]["syslog"]["app_name"] == "sshd" and got[1]["syslog"]["procid"] == "99"
        assert got[1]["hostname"] == "web-02" and got[1]["syslog"]["facility"] == 4
        assert "raw_b64" not in first

    def test_include_exclude_and_redaction_apply_before_the_commit(self, h: Harness) -> None:
        """The source's include/exclude and the config's redaction, as for files: the kept
        set is exact, ``filtered`` counts the rest, the secret never reaches the buffer."""
        listen = {"type": "syslog", "listen": "tcp://127.0.0.1:514"}
        spec = dataclasses.replace(
            spec_of({**listen, "include": ["sshd"], "exclude": ["ignore-me"]}), port=0
        )
        redactor = Redactor((Redaction(re.compile(r"password=\S+"), "password=[REDACTED]"),))
        counts = Counts()
        ctx = ReaderContext(
            store=h.store, batch_size=50, start_position="end", first_start=True,
            clock=h.clock, poll_interval=0.2, health=h.health, redactor=redactor, counts=counts,
        )  # fmt: skip
        r = h.run(spec.reader(ctx))
        send_tcp(r, b"<13>sshd: login password=hunter2\n<13>cron: job\n"
                    b"<13>sshd: ignore-me\n<13>sshd: ok\n")  # fmt: skip
        wait_until(lambda: h.store.stats().filtered == 2, 15, what="2 filtered")
        got = [e["log_text"] for e in h.wait_entries(2)]
        assert got == ["<13>sshd: login password=[REDACTED]", "<13>sshd: ok"]
        assert counts.snapshot()["committed"] == {spec.name: 2}
        h.stop()
        for name in os.listdir(h.tmp):
            if name.startswith("buffer.db"):
                assert b"hunter2" not in (h.tmp / name).read_bytes(), name

    def test_unparseable_kept_raw_hostname_is_the_peer(self, h: Harness) -> None:
        """No <PRI>: kept, without `syslog`, its host the peer's address; invalid UTF-8 is
        replaced and the exact bytes are in raw_b64."""
        r = h.start("udp", source="edge")
        send_udp(r, b"no pri here\n", b"<13>caf\xe9 bytes")
        got = h.wait_entries(2)
        plain, latin = got
        assert plain["log_text"] == "no pri here" and "syslog" not in plain
        assert plain["hostname"] == "127.0.0.1" and plain["source"] == "edge"
        assert (
            latin["log_text"] == "<13>caf\ufffd bytes"
            and latin["raw_b64"] == "PDEzPmNhZukgYnl0ZXM="
        )
        assert latin["syslog"]["severity"] == 5 and latin["hostname"] == "127.0.0.1"

    def test_last_line_without_lf_is_kept_at_close(self, h: Harness) -> None:
        """A sender that closes right after its last message, with no LF: still a message."""
        r = h.start("tcp")
        send_tcp(r, b"<13>one\n<13>two")
        assert [e["log_text"] for e in h.wait_entries(2)] == ["<13>one", "<13>two"]


# -- committing --------------------------------------------------------------------------------


class TestCommits:
    def test_a_connection_is_not_read_again_before_what_it_gave_is_committed(
        self, h: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Per connection: read (≤ 64 KiB) → commit → read; never two reads with messages
        between them and no commit."""
        r = h.reader("tcp")
        trace: list[tuple[str, int, int]] = []
        assert r.tcp is not None
        take = r.tcp._take

        def traced_take(conn: Any, chunks: list[bytes], batch: Any, *a: Any, **k: Any) -> None:
            before = len(batch.entries)
            take(conn, chunks, batch, *a, **k)
            if chunks:
                trace.append(("read", id(conn), sum(map(len, chunks))))
                if len(batch.entries) > before:
                    trace.append(("messages", id(conn), 0))

        commit = h.store.commit_records

        def traced_commit(entries: Any, **kw: Any) -> None:
            commit(entries, **kw)
            trace.append(("commit", 0, len(entries)))

        monkeypatch.setattr(r.tcp, "_take", traced_take)
        monkeypatch.setattr(h.store, "commit_records", traced_commit)
        h.run(r)
        lines = [b"<13>conn%d seq=%06d " % (c, i) + b"x" * 80 + b"\n" for c in range(3)
                 for i in range(5000)]  # fmt: skip
        senders = [
            threading.Thread(target=send_tcp, args=(r, b"".join(lines[c * 5000 : (c + 1) * 5000])))
            for c in range(3)
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)
        h.wait_entries(15_000, 30)
        dirty: set[int] = set()
        reads = 0
        for kind, conn, n in trace:
            if kind == "read":
                assert conn not in dirty, "read again before its messages were committed"
                assert n <= READ_BYTES
                reads += 1
            elif kind == "messages":
                dirty.add(conn)
            else:
                dirty.clear()
        assert reads >= 3 * (5000 * 100 // READ_BYTES)  # many passes, not one big read

    def test_one_commit_gathers_the_messages_of_every_ready_connection(
        self, h: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Messages from many connections ready in the same pass go in one transaction."""
        r = h.reader("tcp")
        gate = threading.Event()
        sizes: list[set[str]] = []
        commit = h.store.commit_records

        def slow_commit(entries: Any, **kw: Any) -> None:
            gate.wait(10)  # the first commit waits, so the others' data piles up meanwhile
            commit(entries, **kw)
            sizes.append({e["peer"] for e in entries})

        monkeypatch.setattr(h.store, "commit_records", slow_commit)
        h.run(r)
        first = socket.create_connection(("127.0.0.1", port_of(r)))
        first.sendall(b"<13>first\n")
        wait_until(lambda: r.connections == 1)
        time.sleep(0.3)  # the reader is now inside the first commit
        clients = [socket.create_connection(("127.0.0.1", port_of(r))) for _ in range(10)]
        for i, c in enumerate(clients):
            c.sendall(b"<13>client %d\n" % i)
        time.sleep(0.5)
        gate.set()
        h.wait_entries(11)
        for c in [first, *clients]:
            c.close()
        assert len(sizes[0]) == 1 and len(sizes[1]) == 10


class TestBackPressure:
    def test_full_buffer_stops_reading_tcp_then_resumes_without_loss(self, h: Harness) -> None:
        """Policy block, buffer full: the connection is not read (the sender blocks in send,
        once the kernel's buffers are full); after acks make room, every message arrives, in
        order."""
        h.store.close()
        h.store = h.open_store(max_bytes=1 << 20, full_policy="block")
        r = h.start("tcp")
        # More than the socket buffers can hold (Linux autotunes a receive buffer up to
        # tcp_rmem's maximum, 32 MB here, but only while the application reads).
        n = 40_000
        payload = b"".join(b"<13>seq=%06d " % i + b"y" * 1000 + b"\n" for i in range(n))
        sent = [0]

        def sender() -> None:
            with socket.create_connection(("127.0.0.1", port_of(r))) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
                for i in range(0, len(payload), 65536):
                    s.sendall(payload[i : i + 65536])
                    sent[0] = min(len(payload), i + 65536)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        wait_until(lambda: f"buffer:{r.name}" in h.health.problems(), 15, what="blocked")
        wait_until(lambda: _stalled(sent), 15, what="the sender to stall")
        assert t.is_alive() and sent[0] < len(payload)  # back-pressure reached the sender
        committed = len(h.entries())
        time.sleep(0.5)
        assert len(h.entries()) == committed  # nothing read while full
        deadline = time.monotonic() + 45
        while len(h.delivered) < n and time.monotonic() < deadline:
            if not h.drain():
                time.sleep(0.02)
        got = h.delivered
        assert [e["log_text"][4:14] for e in got] == [f"seq={i:06d}" for i in range(n)]
        t.join(10)
        wait_until(lambda: f"buffer:{r.name}" not in h.health.problems(), 5)
        assert r.dropped() == 0

    def test_udp_while_full_is_dropped_and_counted(self, h: Harness) -> None:
        """UDP cannot push back: datagrams that arrive while the buffer is full are dropped
        and counted; committed + dropped = sent."""
        h.store.close()
        h.store = h.open_store(max_bytes=20_000, full_policy="block")
        r = h.start("udp")
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while f"buffer:{r.name}" not in h.health.problems() and sent < 5000:
                s.sendto(b"<13>fill %06d " % sent + b"z" * 200, ("127.0.0.1", port_of(r)))
                sent += 1
                time.sleep(0.001)
            assert f"buffer:{r.name}" in h.health.problems()
            for i in range(200):
                s.sendto(b"<13>while full %d" % i, ("127.0.0.1", port_of(r)))
                sent += 1
        wait_until(lambda: r.drops_by_reason().get("buffer_full", 0) >= 150, 10)
        with capture_logs() as logs:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                h.drain()
                if len(h.seen()) + r.dropped() == sent and r._held is None:
                    break
                time.sleep(0.1)
            wait_until(lambda: events(logs, "syslog_input_dropped"), 15, what="drop log")
        assert len(h.seen()) + r.dropped() == sent
        assert events(logs, "syslog_input_dropped")[0]["by_reason"]["buffer_full"] >= 150


def _stalled(sent: list[int]) -> bool:
    before = sent[0]
    time.sleep(0.5)
    return sent[0] == before


# -- UDP ---------------------------------------------------------------------------------------


class TestUdp:
    def test_oversized_datagram_dropped_counted_and_logged(self, h: Harness) -> None:
        """Over max_message_bytes: dropped, counted as too_large, said (rate-limited)."""
        r = h.start("udp", max_message_bytes=1000)
        with capture_logs() as logs:
            send_udp(r, b"<13>" + b"a" * 996, b"<13>" + b"b" * 997, b"<13>ok\n")
            got = h.wait_entries(2)
            wait_until(lambda: r.dropped() == 1, 5)
        assert [len(e["log_text"]) for e in got] == [1000, 6]
        assert r.drops_by_reason() == {"too_large": 1}
        assert events(logs, "syslog_message_too_large")[0]["max_message_bytes"] == 1000

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/udp is Linux")
    def test_kernel_receive_buffer_drops_are_counted(
        self, h: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While the thread is busy, the kernel's buffer overflows: /proc/net/udp's drops
        column is read and counted, so received + dropped = sent."""
        r = h.reader("udp")
        gate = threading.Event()
        commit = h.store.commit_records

        def stuck_commit(entries: Any, **kw: Any) -> None:
            gate.wait(30)
            commit(entries, **kw)

        monkeypatch.setattr(h.store, "commit_records", stuck_commit)
        h.run(r)
        send_udp(r, b"<13>first")
        time.sleep(0.3)  # the thread is in the first commit now
        n = 30_000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(n):
                s.sendto(b"<13>flood %06d " % i + b"f" * 1000, ("127.0.0.1", port_of(r)))
        gate.set()
        wait_until(lambda: r.received + r.dropped() == n + 1, 20, what="all accounted for")
        assert r.drops_by_reason()["kernel"] > 0
        assert len(h.entries()) == r.received

    def test_kernel_drops_reader_finds_our_socket(self) -> None:
        """The drops column of our socket's /proc/net/udp line (0 for a fresh socket)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            found = kernel_udp_drops(os.fstat(s.fileno()).st_ino, s.family)
        assert found == (0 if sys.platform.startswith("linux") else None)


# -- hostile input -----------------------------------------------------------------------------


class TestHostileInput:
    def test_binary_garbage_closes_the_connection_and_the_listener_carries_on(
        self, h: Harness
    ) -> None:
        """1 MB of random bytes: its first "message" is kept raw, the connection is closed
        with a log line, and the next sender is served."""
        r = h.start("tcp")
        garbage = random.Random(7).randbytes(1 << 20)
        with capture_logs() as logs, socket.create_connection(("127.0.0.1", port_of(r))) as s:
            with contextlib.suppress(OSError):
                s.sendall(garbage)
            assert closed_by_peer(s)
        assert events(logs, "syslog_not_syslog") or events(logs, "syslog_framing_error")
        send_tcp(r, b"<13>after the garbage\n")
        # (the pass that closed the connection commits its raw message at its end, which may
        # come after the close is seen here: look once the next sender's message is in)
        after = "<13>after the garbage"
        wait_until(lambda: any(e["log_text"] == after for e in h.entries()), 10, what="after")
        *kept, last = h.entries()
        assert last["log_text"] == after
        assert len(kept) <= 1 and all("raw_b64" in e for e in kept)
        wait_until(lambda: r.connections == 0, 5, what="connections closed")

    @pytest.mark.parametrize("framing", ["newline", "octet-count"])
    def test_ten_megabyte_frame_is_refused_without_buffering_it(
        self, h: Harness, framing: str
    ) -> None:
        """A 10 MB message: framing error at max_message_bytes (or at once for its count),
        counted, logged, connection closed; nothing of it is stored."""
        r = h.start("tcp")
        body = b"<13>" + b"A" * (10 << 20)
        data = body if framing == "newline" else b"%d " % len(body) + body
        with capture_logs() as logs, socket.create_connection(("127.0.0.1", port_of(r))) as s:
            with contextlib.suppress(OSError):
                s.sendall(data)
            assert closed_by_peer(s)
        wait_until(lambda: r.drops_by_reason().get("too_large") == 1, 5)
        err = events(logs, "syslog_framing_error")
        assert err and "exceeds max_message_bytes 65536" in err[0]["problem"]
        assert h.entries() == []

    def test_octet_count_longer_than_the_data_then_close(self, h: Harness) -> None:
        """A count that claims more than is sent before the close: the partial frame is not a
        message; counted as incomplete and logged."""
        r = h.start("tcp")
        with capture_logs() as logs:
            send_tcp(r, b"<13>good\n500 <13>short")
            h.wait_entries(1)
            wait_until(lambda: r.drops_by_reason().get("incomplete") == 1, 5)
        assert "mid-frame" in events(logs, "syslog_framing_error")[0]["problem"]
        assert [e["log_text"] for e in h.entries()] == ["<13>good"]

    def test_octet_count_longer_than_the_data_then_silence(self, h: Harness) -> None:
        """The same lie on a connection kept open: idle_timeout closes it, with a log line."""
        r = h.start("tcp", idle_timeout=1)
        with capture_logs() as logs, socket.create_connection(("127.0.0.1", port_of(r))) as s:
            s.sendall(b"500 <13>short")
            assert closed_by_peer(s, 10)
        idle = events(logs, "syslog_connection_idle_closed")
        assert idle and idle[0]["buffered_bytes"] == 9
        assert r.drops_by_reason() == {"incomplete": 1} and h.entries() == []

    def test_octet_count_shorter_than_the_message(self, h: Harness) -> None:
        """A count that is too short cannot be detected: the rest is read as a newline-framed
        message (kept raw), and framing recovers at the next LF."""
        r = h.start("tcp")
        send_tcp(r, b"5 <13>hello world\n<14>next\n")
        assert [e["log_text"] for e in h.wait_entries(3)] == ["<13>h", "ello world", "<14>next"]

    def test_max_connections_refused_at_once_idle_ones_closed(self, h: Harness) -> None:
        """10,000 idle connections (fewer if the open-files limit is low) against
        max_connections 1000: the extra ones are reset at once (log lines rate-limited), the
        idle ones closed after idle_timeout, and the listener then serves again."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        n = min(10_000, soft - 300)
        if n < 200:
            pytest.skip(f"open-files limit {soft} too low for the idle-connection flood")
        limit = max(20, min(1000, n // 10))  # the default 1000 when the fd limit allows
        r = h.start("tcp", max_connections=limit, idle_timeout=3)
        clients: list[socket.socket] = []
        with capture_logs() as logs:
            try:
                for _ in range(n):
                    try:
                        c = socket.create_connection(("127.0.0.1", port_of(r)), timeout=10)
                    except ConnectionResetError:
                        continue  # refused so fast that the reset came before connect returned
                    clients.append(c)
                wait_until(lambda: r.refused == n - limit, 30, what="refusals")
                assert r.connections == limit
                assert all(closed_by_peer(c, 5) for c in clients[limit:][:100])
                wait_until(lambda: r.connections == 0, 15, what="idle connections closed")
            finally:
                for c in clients:
                    c.close()
        assert len(events(logs, "syslog_connection_refused")) <= LOG_BURST
        assert len(events(logs, "syslog_connection_idle_closed")) <= LOG_BURST
        send_tcp(r, b"<13>served again\n")
        assert h.wait_entries(1)[0]["log_text"] == "<13>served again"


class TestThrottle:
    def test_burst_then_counted_then_summarised(self) -> None:
        """At most LOG_BURST lines per event and window; the rest are said in one line."""
        now = [0.0]
        t = Throttle(lambda: now[0], window=10, burst=3)
        with capture_logs() as logs:
            for _ in range(100):
                t.warning("peer_event", peer="x")
            now[0] = 11
            t.flush()
        assert len(events(logs, "peer_event")) == 3
        assert events(logs, "log_lines_suppressed")[0]["lines"] == 97


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pki")
    return make_pki(root / "ours"), make_pki(root / "other")


def tls_client(pki_dir: Path, cert_dir: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    if cert_dir is not None:
        ctx.load_cert_chain(str(cert_dir / "client.pem"), str(cert_dir / "client.key"))
    return ctx


class TestTls:
    def start_tls(self, h: Harness, pki_dir: Path) -> SyslogReader:
        return h.start(
            "tls", tls_cert_file=str(pki_dir / "server.pem"),
            tls_key_file=str(pki_dir / "server.key"), tls_client_ca_file=str(pki_dir / "ca.pem"),
        )  # fmt: skip

    def test_mutual_tls_delivers(self, h: Harness, pki: tuple[Path, Path]) -> None:
        """A client with a certificate from the configured CA: every message arrives,
        octet-counted and newline-framed, across many TLS records."""
        ours, _ = pki
        r = self.start_tls(h, ours)
        msgs = [b"<13>1 - tls-host app - - - message %05d " % i + b"t" * 300 for i in range(2000)]
        stream = b"".join(
            b"%d %s" % (len(m), m) if i % 2 else m + b"\n" for i, m in enumerate(msgs)
        )
        raw = socket.create_connection(("127.0.0.1", port_of(r)))
        with tls_client(ours, ours).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(stream)
        got = h.wait_entries(2000)
        assert [e["log_text"].encode() for e in got] == msgs
        assert got[0]["hostname"] == "tls-host"

    @pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
    def test_clients_without_a_trusted_certificate_are_refused(
        self, h: Harness, pki: tuple[Path, Path], who: str
    ) -> None:
        """Only the configured CA counts (not the system's): others fail the handshake,
        logged, nothing stored."""
        ours, other = pki
        r = self.start_tls(h, ours)
        cert = None if who == "no certificate" else other
        with capture_logs() as logs:
            raw = socket.create_connection(("127.0.0.1", port_of(r)), timeout=10)
            client = tls_client(ours, cert)
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                client.wrap_socket(raw, server_hostname="localhost") as s,
            ):
                s.sendall(b"<13>should not be stored\n")
                s.recv(10)  # TLS 1.3: the server's verdict on our certificate comes here
            raw.close()
            wait_until(lambda: events(logs, "syslog_tls_handshake_failed"), 10)
        assert h.entries() == []
        wait_until(lambda: r.connections == 0, 5, what="the refused connection closed")

    def test_plain_text_to_a_tls_port_is_closed(self, h: Harness, pki: tuple[Path, Path]) -> None:
        """A sender speaking plain syslog to the TLS port: handshake failure, closed."""
        r = self.start_tls(h, pki[0])
        with capture_logs() as logs, socket.create_connection(("127.0.0.1", port_of(r))) as s:
            s.sendall(b"<13>Nov 27 10:00:01 host app: plain text\n")
            assert closed_by_peer(s)
        assert events(logs, "syslog_tls_handshake_failed") and h.entries() == []


# -- life cycle --------------------------------------------------------------------------------


class TestLifecycle:
    def test_stop_closes_every_socket_and_run_returns(self, h: Harness) -> None:
        """stop(): the thread wakes, closes the listener and its connections, and returns."""
        r = h.start("tcp")
        port = port_of(r)
        idle = socket.create_connection(("127.0.0.1", port))
        wait_until(lambda: r.connections == 1)
        started = time.monotonic()
        h.stop()
        assert time.monotonic() - started < 2
        assert closed_by_peer(idle, 2)
        idle.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)

    def test_port_in_use_is_retried_and_reported(self, h: Harness) -> None:
        """A busy port is a health problem and an error line, retried until it is free."""
        port = free_port()
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with capture_logs() as logs:
            r = h.run(h.reader("tcp", port=port), wait=False)
            wait_until(lambda: r.name in h.health.problems(), 5, what="health problem")
            assert "cannot listen" in h.health.problems()[r.name]
            squatter.close()
            wait_until(lambda: r.address is not None, 10, what="listening after retry")
        assert "Address already in use" in events(logs, "syslog_listen_failed")[0]["problem"]
        assert r.name not in h.health.problems()
        send_tcp(r, b"<13>finally\n")
        assert h.wait_entries(1)[0]["log_text"] == "<13>finally"
