"""Lifecycle and security of the running agent: shutdown, ownership, file modes, TLS."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwarder.transport import warn_plain_http
from tests.procs import AgentProc, ReceiverProc, make_pki, wait_until, write_lines


def _ingests(receiver: ReceiverProc) -> list[dict]:
    return [r for r in receiver.requests_log() if r["endpoint"] == "ingest-batch"]


class TestShutdown:
    def test_sigterm_with_a_batch_in_flight_exits_quickly_and_loses_nothing(
        self, tmp_path, receiver, start_agent
    ) -> None:
        """SIGTERM while the server sits on a batch: exit 0 within 10 s; sent after restart."""
        receiver.script("ingest-batch", [{"status": 200, "delay": 30}])
        agent, log = start_agent([f"slow {i}" for i in range(10)], request_timeout=60)
        wait_until(lambda: len(_ingests(receiver)) == 1, 20, what="batch in flight")
        t0 = time.monotonic()
        assert agent.terminate(timeout=10) == 0
        assert time.monotonic() - t0 < 10
        assert agent.status()["pending"] == 10
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 10, 20, what="10 lines")

    def test_second_agent_on_the_same_buffer_is_refused(self, tmp_path, receiver, agents) -> None:
        """A second process on the same buffer exits 1 with a clear message."""
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[])
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="first agent")
        out = agent.cli("run", timeout=30)
        assert out.returncode == 1
        assert "already owns the buffer" in out.stderr and "Traceback" not in out.stderr
        assert agent.alive()

    def test_files_created_are_not_world_readable(self, tmp_path, receiver, agents) -> None:
        """Buffer, lock, agent id and the agent's log are private to the agent's user."""
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[])
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="registration")
        made = [
            tmp_path / "buffer" / "agent.db",
            tmp_path / "buffer" / "agent.db.lock",
            tmp_path / "buffer" / "agent.db.agent-id",
            tmp_path / "agent.log",
        ]
        for p in made:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o077 == 0, f"{p} has mode {oct(mode)}"

    def test_missing_file_is_waited_for_and_read_from_its_beginning(
        self, tmp_path, receiver, agents
    ) -> None:
        """A configured file that does not exist yet is logged once, then read when it appears."""
        log = tmp_path / "later.log"
        agent = AgentProc(
            tmp_path, server_url=receiver.url, log_sources=[str(log)], start_position="end"
        )
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="registration")
        time.sleep(0.6)  # a few discovery passes, to show the message is said once
        write_lines(log, ["appeared 1", "appeared 2"])
        wait_until(lambda: receiver.stats()["events_unique"] == 2, 20, what="2 lines")
        problems = [json.loads(x) for x in agent.log_text().splitlines() if '"source_problem"' in x]
        assert len(problems) == 1 and "missing" in problems[0]["problem"]


class TestPlainHttpWarning:
    def test_warns_for_plain_http_to_a_remote_host_only(self) -> None:
        """http:// to a non-loopback host logs a warning; loopback and https do not."""
        with capture_logs() as logs:
            warn_plain_http("http://soc.example.com:5000")
            warn_plain_http("http://127.0.0.1:5000")
            warn_plain_http("https://soc.example.com")
        assert [e["event"] for e in logs] == ["plain_http_to_remote_host"]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_pki(tmp_path / "pki")


class TestTls:
    def test_private_ca_and_mutual_tls(self, tmp_path: Path, pki: Path, agents) -> None:
        """HTTPS with a private CA and a client certificate: delivered."""
        receiver = ReceiverProc(
            tmp_path,
            tls=["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                 "--tls-client-ca", str(pki / "ca.pem")],
        )  # fmt: skip
        receiver.admin_cert = (str(pki / "client.pem"), str(pki / "client.key"))
        receiver.start()
        try:
            log = tmp_path / "app.log"
            write_lines(log, ["over tls 1", "over tls 2"])
            agent = AgentProc(
                tmp_path, server_url=receiver.url, log_sources=[str(log)],
                tls_ca_file=str(pki / "ca.pem"), tls_client_cert=str(pki / "client.pem"),
                tls_client_key=str(pki / "client.key"),
            )  # fmt: skip
            agents.append(agent)
            agent.start()
            wait_until(lambda: receiver.stats()["events_unique"] == 2, 20, what="2 lines")
        finally:
            receiver.stop()

    def test_unknown_ca_is_a_tls_failure_and_nothing_is_lost(
        self, tmp_path: Path, pki: Path, agents
    ) -> None:
        """Verification is on by default: a certificate from an unknown CA is refused."""
        receiver = ReceiverProc(
            tmp_path,
            tls=["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")],
        ).start()
        try:
            log = tmp_path / "app.log"
            write_lines(log, ["kept"])
            agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
            agents.append(agent)
            agent.start()
            wait_until(lambda: "TLS" in (agent.status()["last_error"] or ""), 20, what="TLS error")
            assert receiver.stats()["agents"] == 0
            assert agent.status()["pending"] == 1
            assert agent.alive()
        finally:
            receiver.stop()


class TestOperatorView:
    def test_last_error_of_an_earlier_run_is_cleared_by_a_success(
        self, tmp_path, receiver, start_agent
    ) -> None:
        """A 401 in one run, fixed before the next: status shows no stale error."""
        receiver.script("register", [{"status": 401}] * 50)
        agent, log = start_agent(["x"])
        wait_until(
            lambda: "API key rejected" in (agent.status()["last_error"] or ""), 20, what="401"
        )
        assert agent.terminate() == 0
        receiver.configure(reset=True)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 20, what="delivered")
        wait_until(lambda: agent.status()["last_error"] is None, 10, what="error cleared")

    def test_a_directory_configured_as_a_log_file_is_said_clearly(
        self, tmp_path, receiver, agents
    ) -> None:
        """A directory where a file belongs: one clear error; the other sources go on."""
        (tmp_path / "adir").mkdir()
        good = tmp_path / "good.log"
        write_lines(good, ["fine"])
        agent = AgentProc(
            tmp_path, server_url=receiver.url, log_sources=[str(tmp_path / "adir"), str(good)]
        )
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 20, what="good line")
        time.sleep(0.6)
        problems = [json.loads(x) for x in agent.log_text().splitlines() if '"source_problem"' in x]
        assert len(problems) == 1 and "not a regular file" in problems[0]["problem"]
