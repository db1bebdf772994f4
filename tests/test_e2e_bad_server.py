"""A server that misbehaves at the socket level, and an agent that is stopped and resumed.

Each case runs the real agent against a real socket (tests/bad_server.py): nothing is lost,
and what went wrong is named in ``last_error``.
"""

from __future__ import annotations

import os
import signal
import ssl
import time
from pathlib import Path

import pytest

from tests.bad_server import BadServer
from tests.procs import AgentProc, ReceiverProc, Writer, make_pki, wait_until, write_lines

LINES = [f"bad-server line {i:04d}" for i in range(300)]


def _run(tmp_path: Path, agents: list[AgentProc], server: BadServer, **cfg) -> AgentProc:
    log = tmp_path / "app.log"
    write_lines(log, LINES)
    agent = AgentProc(tmp_path, server_url=server.url, log_sources=[str(log)], **cfg)
    agents.append(agent)
    agent.start()
    return agent


def _errors_seen(agent: AgentProc) -> str:
    return agent.log_text()


@pytest.fixture
def serve(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    made: list[BadServer] = []

    def start(mode: str, **kw) -> BadServer:  # type: ignore[no-untyped-def]
        s = BadServer(mode, **kw)
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


class TestMisbehavingServer:
    def test_200_with_a_body_that_is_not_json_is_accepted_and_said(
        self, tmp_path: Path, agents: list[AgentProc], serve
    ) -> None:
        """A 2xx is acceptance (protocol.md) whatever its body; an HTML body is logged once."""
        server = serve("not_json", bad_answers=3)
        agent = _run(tmp_path, agents, server)
        wait_until(lambda: sorted(server.accepted) == LINES, 30, what="all lines")
        wait_until(lambda: agent.status()["pending"] == 0, 10, what="acked")
        assert agent.log_text().count('"answer_not_json"') == 1
        assert agent.terminate() == 0

    def test_connection_closed_mid_answer_is_retried_and_named(
        self, tmp_path: Path, agents: list[AgentProc], serve
    ) -> None:
        """The answer stops half-way: no ack, the batch is sent again, the reason is clear."""
        server = serve("close_mid_answer", bad_answers=2)
        agent = _run(tmp_path, agents, server, retry_interval=0.5)
        wait_until(lambda: sorted(server.accepted) == LINES, 30, what="all lines")
        assert "connection closed mid-answer" in agent.log_text()
        assert agent.terminate() == 0

    def test_headers_trickled_a_byte_a_second_still_time_out(
        self, tmp_path: Path, agents: list[AgentProc], serve
    ) -> None:
        """Headers at one byte a second never leave a read silent for long, but the whole
        answer must come within connect + request timeout: then the batch is sent again."""
        server = serve("trickle_headers", bad_answers=1)
        started = time.monotonic()
        agent = _run(tmp_path, agents, server, request_timeout=2, connect_timeout=1,
                     retry_interval=0.5)  # fmt: skip
        # The log, not status: the resend may succeed (and clear last_error) between polls.
        wait_until(lambda: "no complete answer within 3 s" in agent.log_text(), 20,
                   what="timeout named")  # fmt: skip
        wait_until(lambda: sorted(server.accepted) == LINES, 30, what="all lines")
        assert time.monotonic() - started < 20  # not the 50+ s the trickle would take
        assert agent.terminate() == 0

    def test_a_100_mb_answer_is_not_read_and_memory_stays_bounded(
        self, tmp_path: Path, agents: list[AgentProc], serve
    ) -> None:
        """A 200 with a 100 MB body: accepted, but the agent reads at most 64 KiB of it and
        drops the connection; its memory stays small."""
        server = serve("huge_body", bad_answers=1)
        agent = _run(tmp_path, agents, server)
        wait_until(lambda: sorted(server.accepted) == LINES, 30, what="all lines")
        wait_until(lambda: agent.status()["pending"] == 0, 10, what="acked")
        assert agent.proc is not None
        rss_kb = int(
            next(x for x in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines()
                 if x.startswith("VmHWM:")).split()[1]
        )  # fmt: skip
        assert rss_kb < 120 * 1024, rss_kb
        assert server.huge_bytes_sent < 50 * 1024 * 1024  # it stopped reading early
        assert "answer_too_large" in agent.log_text()
        assert agent.terminate() == 0

    def test_a_certificate_for_another_host_name_is_refused_and_named(
        self, tmp_path: Path, agents: list[AgentProc], serve
    ) -> None:
        """TLS with a certificate valid for another name: nothing is sent, nothing is lost,
        and last_error says which check failed."""
        pki = make_pki(tmp_path / "pki", server_names="DNS:other.example")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
        server = serve("not_json", bad_answers=0, tls=ctx)
        agent = _run(tmp_path, agents, server, tls_ca_file=str(pki / "ca.pem"))
        wait_until(lambda: "not for this host name" in (agent.status()["last_error"] or ""),
                   20, what="TLS error named")  # fmt: skip
        assert server.accepted == []
        assert agent.status()["pending"] == len(LINES)
        assert agent.terminate() == 0

    def test_an_http_1_0_server_closing_after_every_answer(
        self, tmp_path: Path, agents: list[AgentProc], serve
    ) -> None:
        """HTTP/1.0 with Connection: close on every answer: a new connection each time,
        everything delivered, no error."""
        server = serve("http10_close", bad_answers=0)
        agent = _run(tmp_path, agents, server, batch_size=20)
        wait_until(lambda: sorted(server.accepted) == LINES, 30, what="all lines")
        wait_until(lambda: agent.status()["pending"] == 0, 10, what="acked")
        assert agent.status()["last_error"] is None
        assert agent.terminate() == 0


class TestStoppedAndResumed:
    def test_sigstop_for_30_s_then_sigcont(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """SIGSTOP while a batch waits for its answer and lines keep being written; 30 s
        later SIGCONT: the answer that came meanwhile settles its batch, every line arrives
        once, and heartbeats go on."""
        log = tmp_path / "app.log"
        log.write_text("")
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)],
                          heartbeat_interval=1)  # fmt: skip
        agents.append(agent)
        agent.start()
        writer = Writer(log, "stop", per_tick=5, tick=0.05)
        writer.start()
        wait_until(lambda: receiver.stats()["events_unique"] > 100, 30, what="flowing")
        receiver.configure(delay=2.0)
        wait_until(
            lambda: any(r["status"] is None for r in receiver.requests_log()
                        if r["endpoint"] == "ingest-batch"), 20, what="a batch in flight",
        )  # fmt: skip
        assert agent.proc is not None
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            beats_before = len(receiver.heartbeats())
            while time.monotonic() - stopped_at < 30:  # the fault itself: 30 s stopped
                time.sleep(0.5)
            answered = [r for r in receiver.requests_log() if r["endpoint"] == "ingest-batch"]
            assert all(r["status"] is not None for r in answered)  # answered while stopped
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        receiver.configure(delay=0.0)
        written = writer.finish()
        wait_until(lambda: receiver.stats()["events_unique"] == len(written), 60, what="all")
        assert sorted(e["log_text"] for e in receiver.events()) == sorted(written)
        wait_until(lambda: len(receiver.heartbeats()) >= beats_before + 3, 15, what="beats")
        wait_until(lambda: agent.status()["pending"] == 0, 15, what="all acked")
        assert agent.terminate() == 0
