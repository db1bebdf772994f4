"""Operating the agent: /metrics and /healthz, reload on SIGHUP — real processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Disk
from tests.procs import AgentProc, ReceiverProc, free_port, wait_until, write_lines

NAMES = {
    "ila_agent_pending_entries",
    "ila_agent_pending_bytes",
    "ila_agent_oldest_pending_age_seconds",
    "ila_agent_entries_committed",
    "ila_agent_entries_delivered",
    "ila_agent_dropped",
    "ila_agent_filtered",
    "ila_agent_dead_letter_entries",
    "ila_agent_send_failures",
    "ila_agent_requests_in_flight",
    "ila_agent_request_duration_seconds",
    "ila_agent_source_lag_bytes",
    "ila_agent_input_dropped",
}  # fmt: skip  (counters: the parser drops "_total"; the text holds it)


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(family.name, {})[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def value(metrics: dict[str, dict[tuple, float]], name: str, sample: str | None = None) -> float:
    return sum(v for k, v in metrics.get(name, {}).items() if sample is None or k[0] == sample)


class TestMetrics:
    def test_every_name_parses_and_the_figures_follow_the_run(
        self, tmp_path: Path, agents: list[AgentProc]
    ) -> None:
        """A scrape parses with prometheus_client's parser and has every listed name; the
        pending gauge rises while the server is down and returns to 0; delivered equals what
        the server accepted."""
        port = free_port()
        receiver = ReceiverProc(tmp_path)
        log = tmp_path / "app.log"
        log.write_text("")
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)],
                          metrics_listen=f"127.0.0.1:{port}")  # fmt: skip
        agents.append(agent)
        agent.start()
        wait_until(lambda: _up(port), 20, what="metrics endpoint")
        first = scrape(port)
        assert set(first) >= NAMES, NAMES - set(first)
        write_lines(log, [f"m {i}" for i in range(300)])
        wait_until(lambda: value(scrape(port), "ila_agent_pending_entries") == 300, 20,
                   what="pending 300 while down")  # fmt: skip
        receiver.start()
        try:
            wait_until(lambda: value(scrape(port), "ila_agent_pending_entries") == 0, 30,
                       what="pending back to 0")  # fmt: skip
            m = scrape(port)
            accepted = receiver.stats()["events_received"]
            assert value(m, "ila_agent_entries_delivered") == accepted == 300
            assert value(m, "ila_agent_entries_committed") == 300
            kinds = {dict(k[1:]).get("reason") for k in m["ila_agent_send_failures"]}
            assert {"http_503", "connection", "timeout"} <= kinds  # by reason, 0 until seen
            assert value(m, "ila_agent_request_duration_seconds",
                         "ila_agent_request_duration_seconds_count") >= 1  # fmt: skip
            assert agent.terminate() == 0
        finally:
            receiver.stop()

    def test_healthz_says_disk_full(
        self,
        tmp_path: Path,
        disk: Disk,
        receiver: ReceiverProc,
        agents: list[AgentProc],
    ) -> None:
        """/healthz is 200 while collecting and 503 with "disk full" when the buffer's
        filesystem is full; 200 again once there is room."""
        port = free_port()
        log = tmp_path / "app.log"
        log.write_text("")
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)],
                          buffer_db=str(disk.path / "agent.db"),
                          metrics_listen=f"127.0.0.1:{port}")  # fmt: skip
        agents.append(agent)
        agent.start()
        wait_until(lambda: _up(port), 20, what="metrics endpoint")
        ok = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        disk.fill()
        try:
            n = 0

            def failing() -> bool:
                nonlocal n
                write_lines(log, [f"h {n + i}" for i in range(200)])
                n += 200
                r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                return r.status_code == 503 and any("disk full" in x for x in r.json()["reasons"])

            wait_until(failing, 30, what="healthz 503 disk full")
        finally:
            disk.free()
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                   .status_code == 200, 20, what="healthy again")  # fmt: skip
        assert agent.terminate() == 0


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


class TestReload:
    def test_sighup_adds_a_file_without_a_restart(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """A file added to log_sources and SIGHUP: its lines arrive, the pid stays, and the
        file read before loses and repeats nothing."""
        a, b = tmp_path / "a.log", tmp_path / "b.log"
        write_lines(a, [f"a {i}" for i in range(100)])
        write_lines(b, [f"b {i}" for i in range(50)])
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(a)])
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 100, 20, what="a's lines")
        assert agent.proc is not None
        pid = agent.proc.pid
        agent.config["log_sources"] = [str(a), str(b)]
        agent.config_path.write_text(json.dumps(agent.config))
        agent.proc.send_signal(signal.SIGHUP)
        write_lines(a, [f"a {i}" for i in range(100, 150)])
        wait_until(lambda: receiver.stats()["events_unique"] == 200, 20, what="all 200 lines")
        assert agent.alive() and agent.proc.pid == pid
        texts = sorted(e["log_text"] for e in receiver.events())
        assert texts == sorted([f"a {i}" for i in range(150)] + [f"b {i}" for i in range(50)])
        assert receiver.stats()["events_received"] == 200  # nothing sent twice
        assert '"config_reloaded"' in agent.log_text()
        assert agent.terminate() == 0

    def test_an_invalid_file_on_sighup_keeps_the_running_config(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """A broken config file and SIGHUP: an error in the log, the agent goes on as it was."""
        log = tmp_path / "app.log"
        write_lines(log, ["before"])
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 20, what="first line")
        agent.config_path.write_text('{"log_sources": [,]}')
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: '"config_reload_failed"' in agent.log_text(), 10, what="the error")
        failed = [json.loads(x) for x in agent.log_text().splitlines() if "reload_failed" in x]
        assert failed[0]["level"] == "error" and "invalid JSON" in failed[0]["error"]
        write_lines(log, ["after"])
        wait_until(lambda: receiver.stats()["events_unique"] == 2, 20, what="still collecting")
        assert agent.alive()
        assert agent.terminate() == 0
