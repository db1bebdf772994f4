"""Against a stand-in of the existing ILA-SOC server (Flask, tests/compat_server.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.procs import API_KEY, AgentProc, free_port, wait_until, write_lines

pytest.importorskip("flask")
SERVER = Path(__file__).with_name("compat_server.py")


class CompatServer:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.out = tmp / "accepted.jsonl"
        self.out.touch()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(self.port), API_KEY, str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            try:
                requests.post(self.url + "/api/agent/heartbeat", json={}, timeout=1)
            except requests.ConnectionError:
                return False
            return True

        wait_until(up, 20, what="the stand-in server")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def texts(self) -> list[str]:
        """``log_text`` of every line the stand-in has written in full: it appends through a
        buffered file, so a read can end in the middle of a line."""
        data = self.out.read_text()
        complete = data[: data.rfind("\n") + 1]
        return [json.loads(x)["log_text"] for x in complete.splitlines()]


class TestExistingServer:
    def test_delivery_and_reregistration_after_the_server_forgets(
        self, tmp_path: Path, agents
    ) -> None:
        """Lines arrive at the stand-in; after it restarts (forgetting the agent), the
        agent registers again on the heartbeat's 404 and goes on; nothing is lost."""
        server = CompatServer(tmp_path)
        server.start()
        try:
            log = tmp_path / "auth.log"
            log.write_text("")
            agent = AgentProc(tmp_path, server_url=server.url, log_sources=[str(log)])
            agents.append(agent)
            agent.start()
            first = [f"Nov 27 10:00:{i % 60:02d} web-01 sshd[1]: attempt {i}" for i in range(1500)]
            write_lines(log, first)
            wait_until(lambda: set(server.texts()) >= set(first), 40, what="first lines")
            server.stop()
            second = [f"after restart {i}" for i in range(500)]
            write_lines(log, second)
            server.start()
            wait_until(lambda: set(server.texts()) >= set(second), 40, what="second lines")
            assert sorted(set(server.texts())) == sorted(first + second)
            assert agent.alive()
            wait_until(
                lambda: agent.log_text().count('"registered"') >= 2, 10, what="a re-registration"
            )
        finally:
            server.stop()
