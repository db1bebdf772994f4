"""The syslog source end to end: the real agent process, real senders (util-linux `logger`,
syslog-ng), the reference receiver, and kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bench.vs_syslogng import find_syslog_ng, install_syslog_ng, syslog_ng_versions
from tests.procs import AgentProc, ReceiverProc, free_port, make_pki, wait_until

pytestmark = pytest.mark.slow

LOGGER = shutil.which("logger")


# -- helpers -----------------------------------------------------------------------------------


def syslog_agent(
    tmp: Path, receiver: ReceiverProc, agents: list[AgentProc], sources: list[dict[str, Any]],
    **cfg: Any,
) -> AgentProc:  # fmt: skip
    agent = AgentProc(tmp, server_url=receiver.url, log_sources=sources, **cfg)
    agents.append(agent)
    return agent


def agent_events(agent: AgentProc, name: str) -> list[dict[str, Any]]:
    """The agent's own log (JSON lines) events named ``name``."""
    out = []
    for line in agent.log_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


def wait_listening(agent: AgentProc, n: int, *, said_before: int = 0) -> None:
    """Until ``n`` more listeners said ``syslog_listening`` than ``said_before``."""
    wait_until(
        lambda: len(agent_events(agent, "syslog_listening")) >= said_before + n,
        20,
        what=f"{n} syslog listeners",
    )


def entries_by(receiver: ReceiverProc, source: str) -> list[dict[str, Any]]:
    return [e["entry"] for e in receiver.events() if e["source"] == source]


# -- util-linux logger ---------------------------------------------------------------------------


@pytest.mark.skipif(LOGGER is None, reason="needs util-linux logger (apt-get install bsdutils)")
class TestLogger:
    def test_500_messages_each_over_udp_tcp_and_octet_counting_in_both_formats(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """logger sends 500 messages per transport and format; every one arrives once with
        the right `syslog` fields, `peer`, `hostname`, and log_text as sent."""
        udp, tcp = free_port(), free_port()
        agent = syslog_agent(
            tmp_path, receiver, agents,
            [{"type": "syslog", "listen": f"udp://127.0.0.1:{udp}", "source": "sys-udp"},
             {"type": "syslog", "listen": f"tcp://127.0.0.1:{tcp}", "source": "sys-tcp"}],
        )  # fmt: skip
        agent.start()
        wait_listening(agent, 2)
        cases = [
            (proto, fmt, octet)
            for proto in ("udp", "tcp")
            for fmt in ("rfc3164", "rfc5424")
            for octet in ((False, True) if proto == "tcp" else (False,))
        ]
        started = datetime.now(timezone.utc)
        for proto, fmt, octet in cases:
            tag = f"{proto}-{fmt[3:]}{'-octet' if octet else ''}"
            cmd = [
                LOGGER, f"--{proto}", "--server", "127.0.0.1",
                "--port", str(udp if proto == "udp" else tcp), f"--{fmt}",
                "--tag", tag, "--id=4242", "--priority", "local3.warning",
                *(["--msgid", "MID7"] if fmt == "rfc5424" else []),
                *(["--octet-count"] if octet else []),
                "--file", "/dev/stdin",
            ]  # fmt: skip
            lines = "".join(f"{tag} message {i:03d} é\n" for i in range(500))
            subprocess.run(
                cmd, input=lines.encode(), check=True, timeout=60, env={**os.environ, "TZ": "UTC"}
            )
        wait_until(
            lambda: receiver.stats()["events_unique"] >= 500 * len(cases), 45, what="3000 events"
        )
        time.sleep(0.5)
        assert receiver.stats()["events_unique"] == 500 * len(cases)
        by_tag: dict[str, list[dict[str, Any]]] = {}
        for entry in entries_by(receiver, "sys-udp") + entries_by(receiver, "sys-tcp"):
            by_tag.setdefault(entry["syslog"]["app_name"], []).append(entry)
        assert sorted(by_tag) == sorted(f"{p}-{f[3:]}{'-octet' if o else ''}" for p, f, o in cases)
        host = by_tag["udp-3164"][0]["syslog"]["hostname"]
        assert host and host in (socket.gethostname(), socket.gethostname().split(".")[0])
        for tag, got in by_tag.items():
            texts = sorted(e["log_text"] for e in got)
            numbers = sorted(int(t.rsplit(" ", 2)[1]) for t in texts)
            assert numbers == list(range(500)), tag
            assert all(t.endswith(f"] {tag} message {t.rsplit(' ', 2)[1]} é")
                       or t.endswith(f": {tag} message {t.rsplit(' ', 2)[1]} é")
                       for t in texts), texts[0]  # fmt: skip
            for e in got:
                s = e["syslog"]
                assert e["log_text"].startswith("<156>")  # local3 (19) * 8 + warning (4)
                assert (s["facility"], s["severity"], s["procid"]) == (19, 4, "4242"), tag
                assert s["hostname"] == host == e["hostname"]
                assert e["peer"].startswith("127.0.0.1:") and "raw_b64" not in e
                assert e["source"] == ("sys-udp" if tag.startswith("udp") else "sys-tcp")
                stamp = datetime.fromisoformat(s["time"].replace("Z", "+00:00"))
                assert abs((stamp - started).total_seconds()) < 120, s["time"]
                if "5424" in tag:
                    assert s["msgid"] == "MID7" and e["log_text"].startswith("<156>1 ")
                else:
                    assert s["msgid"] is None
        uids = [e["event_uid"] for got in by_tag.values() for e in got]
        assert len(set(uids)) == len(uids)


# -- syslog-ng ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def syslog_ng() -> str:
    """The syslog-ng binary, installed from the distribution (service never started) if
    missing: the benchmark's own installer."""
    found = find_syslog_ng()
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("syslog-ng is missing and apt-get (as root) is unavailable to install it")
    try:
        install_syslog_ng()
    except SystemExit as exc:
        pytest.fail(f"installing syslog-ng failed: {exc}")
    found = find_syslog_ng()
    assert found, "syslog-ng installed but no syslog-ng binary found"
    return found


def config_version(binary: str) -> str:
    return syslog_ng_versions(binary)[1]


class SyslogNg:
    """syslog-ng in the foreground, with its own config, persist, control and pid files."""

    def __init__(self, binary: str, workdir: Path, body: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        conf = workdir / "syslog-ng.conf"
        conf.write_text(f"@version: {config_version(binary)}\n{body}")
        self.cmd = [
            binary, "-F", "-e", "--no-caps", "-f", str(conf),
            "-R", str(workdir / "persist"), "-c", str(workdir / "ctl"),
            "-p", str(workdir / "pid"),
        ]  # fmt: skip
        check = subprocess.run([binary, "--syntax-only", "-f", str(conf)],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SyslogNg:
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "syslog-ng.err", "wb"),
        )  # fmt: skip
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def output(self) -> str:
        return (self.workdir / "syslog-ng.err").read_text(errors="replace")[-3000:]


class TestSyslogNg:
    def test_forwards_over_tcp_both_framings_and_over_mutual_tls(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc], syslog_ng: str
    ) -> None:
        """A real syslog-ng reads 1000 lines from a file and forwards each over TCP as BSD
        syslog (newline framing) and as RFC 5424 (octet counting), and over TLS with a client
        certificate from a private CA: all 3000 arrive, once each."""
        pki = make_pki(tmp_path / "pki")
        tcp, tls = free_port(), free_port()
        agent = syslog_agent(
            tmp_path, receiver, agents,
            [{"type": "syslog", "listen": f"tcp://127.0.0.1:{tcp}", "source": "sng-tcp"},
             {"type": "syslog", "listen": f"tls://127.0.0.1:{tls}", "source": "sng-tls",
              "tls_cert_file": str(pki / "server.pem"), "tls_key_file": str(pki / "server.key"),
              "tls_client_ca_file": str(pki / "ca.pem")}],
        )  # fmt: skip
        agent.start()
        wait_listening(agent, 2)
        n = 1000
        source = tmp_path / "input.log"
        source.write_text("".join(f"forwarded line {i:05d}\n" for i in range(n)))
        body = f"""
options {{ stats-freq(0); use-dns(no); use-fqdn(no); keep-hostname(yes); }};
source s_in {{ file("{source}" follow-freq(0.2) flags(no-parse)); }};
destination d_bsd {{ network("127.0.0.1" port({tcp}) transport("tcp") persist-name("bsd")); }};
destination d_5424 {{ syslog("127.0.0.1" port({tcp}) transport("tcp") persist-name("rfc5424")); }};
destination d_tls {{
  syslog("127.0.0.1" port({tls}) transport("tls")
    tls(ca-file("{pki / "ca.pem"}") cert-file("{pki / "client.pem"}")
        key-file("{pki / "client.key"}") peer-verify(required-trusted)));
}};
log {{ source(s_in); destination(d_bsd); destination(d_5424); destination(d_tls); }};
"""
        with SyslogNg(syslog_ng, tmp_path / "sng", body) as sng:
            try:
                wait_until(
                    lambda: sng.exited() or receiver.stats()["events_unique"] >= 3 * n,
                    45,
                    what="3000 events",
                )
                assert not sng.exited()
            except AssertionError:
                raise AssertionError(f"syslog-ng said:\n{sng.output()}") from None
        time.sleep(0.5)
        assert receiver.stats()["events_unique"] == 3 * n
        over_tcp = entries_by(receiver, "sng-tcp")
        over_tls = entries_by(receiver, "sng-tls")
        rfc5424 = [e for e in over_tcp if e["log_text"].startswith("<13>1 ")]
        bsd = [e for e in over_tcp if not e["log_text"].startswith("<13>1 ")]
        for name, got in (("bsd", bsd), ("rfc5424", rfc5424), ("tls", over_tls)):
            numbers = sorted(int(e["log_text"].rsplit(" ", 1)[1]) for e in got)
            assert numbers == list(range(n)), name
            assert all(e["syslog"]["facility"] == 1 for e in got), name  # user.notice: <13>
            assert all(e["syslog"]["hostname"] == e["hostname"] for e in got), name
        assert all(re.fullmatch(r"<13>\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ forwarded line \d{5}",
                                e["log_text"]) for e in bsd), bsd[0]["log_text"]  # fmt: skip
        assert len(agent_events(agent, "syslog_tls_handshake_failed")) == 0


# -- kill -9 -----------------------------------------------------------------------------------


class Streamer(threading.Thread):
    """Writes numbered RFC 5424 messages to one TCP connection as fast as it can, until the
    connection fails (the agent was killed) or ``stop`` is set."""

    def __init__(self, port: int, first: int = 0, limit: int | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent = first  # messages handed to the kernel so far
        self.end = None if limit is None else first + limit
        self.stop_event = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                while not self.stop_event.is_set() and self.sent != self.end:
                    chunk = b"".join(
                        b"<14>1 - stream-host app - - - seq=%07d\n" % i
                        for i in range(self.sent, self.sent + 100)
                    )
                    s.sendall(chunk)
                    self.sent += 100
        except OSError as exc:
            self.error = repr(exc)


def seqs(entries: list[dict[str, Any]]) -> list[int]:
    return [int(e["log_text"].rsplit("seq=", 1)[1]) for e in entries]


class TestKill9:
    def test_everything_committed_before_the_kill_is_delivered_after_restart(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """kill -9 during a TCP stream. What the agent had committed (in its buffer, or
        already delivered) is a prefix of the stream, and after the restart exactly that
        prefix is delivered: nothing committed is lost. What the sender had written past
        it (in socket buffers, or read but not yet committed) is lost: TCP syslog has no
        application-level acknowledgement, so no receiver can promise more."""
        port = free_port()
        agent = syslog_agent(
            tmp_path, receiver, agents,
            [{"type": "syslog", "listen": f"tcp://127.0.0.1:{port}", "source": "stream"}],
            batch_size=250,
        )  # fmt: skip
        agent.start()
        wait_listening(agent, 1)
        streamer = Streamer(port)
        streamer.start()
        wait_until(lambda: receiver.stats()["events_unique"] >= 3000, 30, what="3000 delivered")
        agent.kill9()
        streamer.join(30)
        assert streamer.error is not None, "the stream must still be running at the kill"
        out = agent.cli("inspect", "--state", "all")
        assert out.returncode == 0, out.stderr
        buffered = {e["event_uid"]: e for e in map(json.loads, out.stdout.splitlines())}
        delivered = {e["event_uid"]: e["entry"] for e in receiver.events()}
        committed = {**delivered, **buffered}
        k = len(committed)
        # One connection, committed in order, read after commit: a prefix, no gap, no repeat.
        assert sorted(seqs(list(committed.values()))) == list(range(k))
        assert k < streamer.sent  # the kill landed mid-stream
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] >= k, 30, what=f"{k} delivered")
        time.sleep(1.0)
        after = {e["event_uid"]: e["entry"] for e in receiver.events()}
        assert set(after) == set(committed)
        assert sorted(seqs(list(after.values()))) == list(range(k))
        # A new stream after the restart: new uids, never one of the first run's.
        wait_listening(agent, 1, said_before=1)
        more = Streamer(port, first=10_000_000, limit=2000)
        more.start()
        more.join(30)
        assert more.error is None and more.sent == 10_002_000
        wait_until(lambda: receiver.stats()["events_unique"] == k + 2000, 30, what="new stream")
        final = receiver.events()
        assert len({e["event_uid"] for e in final}) == len(final) == k + 2000
        assert sorted(seqs([e["entry"] for e in final]))[k:] == list(range(10**7, 10**7 + 2000))
        print(
            f"sent {streamer.sent} before the kill, {k} committed and delivered, "
            f"{streamer.sent - k} in socket buffers or read-not-committed (lost by TCP syslog)",
            file=sys.stderr,
        )
