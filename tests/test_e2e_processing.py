"""Multiline entries, filters and redaction with the real agent and the reference receiver."""

from __future__ import annotations

import gzip
from pathlib import Path

from tests.procs import AgentProc, ReceiverProc, wait_until, write_lines

SECRET = "hunter2-Tr0ub4dor"
START = r"^\d{4}-\d\d-\d\d "


def _texts(receiver: ReceiverProc) -> list[str]:
    return [e["log_text"] for e in receiver.events()]


class TestMultiline:
    def test_kill9_while_an_entry_is_half_assembled_loses_nothing(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """kill -9 while the first lines of a stack trace wait for the rest: after the
        restart the whole trace arrives as one entry, once."""
        log = tmp_path / "app.log"
        write_lines(log, ["2026-11-30 10:00:00 INFO one", "2026-11-30 10:00:01 ERROR two",
                          "java.lang.Error: x", "    at A.b(A.java:1)"])  # fmt: skip
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[
            {"path": str(log), "multiline": {"start_pattern": START, "max_wait": 30}}])  # fmt: skip
        agents.append(agent)
        agent.start()
        wait_until(lambda: _texts(receiver) == ["2026-11-30 10:00:00 INFO one"], 20, what="one")
        agent.kill9()
        write_lines(log, ["    at C.d(C.java:2)", "2026-11-30 10:00:02 INFO three"])
        agent.config["log_sources"][0]["multiline"]["max_wait"] = 1
        agent.config_path.write_text(__import__("json").dumps(agent.config))
        agent.start()
        wait_until(lambda: len(_texts(receiver)) == 3, 20, what="3 entries")
        assert _texts(receiver) == [
            "2026-11-30 10:00:00 INFO one",
            "2026-11-30 10:00:01 ERROR two\njava.lang.Error: x\n    at A.b(A.java:1)\n"
            "    at C.d(C.java:2)",
            "2026-11-30 10:00:02 INFO three",
        ]
        assert receiver.stats()["events_received"] == 3
        assert agent.terminate() == 0


class TestFilters:
    def test_exactly_the_kept_set_arrives_and_filtered_counts_the_rest(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """include sshd, exclude Accepted: exactly the other sshd lines arrive, and
        ``filtered`` equals the number dropped."""
        log = tmp_path / "auth.log"
        lines = [f"host {'sshd' if i % 2 else 'cron'}[{i}]: "
                 f"{'Accepted' if i % 4 == 1 else 'Failed'} {i}" for i in range(200)]  # fmt: skip
        write_lines(log, lines)
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[
            {"path": str(log), "include": ["sshd"], "exclude": ["Accepted"]}])  # fmt: skip
        agents.append(agent)
        agent.start()
        kept = [x for x in lines if "sshd" in x and "Accepted" not in x]
        wait_until(lambda: len(_texts(receiver)) == len(kept), 20, what="kept lines")
        assert sorted(_texts(receiver)) == sorted(kept)
        wait_until(lambda: agent.status()["filtered"] == len(lines) - len(kept), 10, what="count")
        assert agent.terminate() == 0


class TestRedaction:
    def test_a_secret_reaches_neither_buffer_wal_bundle_log_nor_wire(
        self, tmp_path: Path, agents: list[AgentProc]
    ) -> None:
        """password=… is replaced before the commit: not in the buffer file or its WAL, not
        in an exported bundle, not in the agent's log, not in what the server receives."""
        receiver = ReceiverProc(tmp_path)
        log = tmp_path / "app.log"
        lines = [f"login user{i} password={SECRET}{i} from 10.0.0.{i}" for i in range(100)]
        lines.append("bad bytes password=" + SECRET)  # a line whose raw bytes are kept...
        write_lines(log, lines)
        with open(log, "ab") as f:
            f.write(b"\xff\xfe password=" + SECRET.encode() + b" end\n")  # ...invalid UTF-8
        rule = {"pattern": r"password=\S+", "replacement": "password=***"}
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)],
                          redact=[rule])  # fmt: skip
        agents.append(agent)
        agent.start()
        wait_until(lambda: agent.status()["pending"] == 102, 20, what="committed")
        bundle = tmp_path / "out.bundle"
        assert agent.cli("export", str(bundle)).returncode == 0
        with open(log, "a") as f:
            f.write(f"later password={SECRET}x\n")
        receiver.start()
        try:
            wait_until(lambda: len(_texts(receiver)) == 1, 20, what="the later line")
            assert _texts(receiver) == ["later password=***"]
            assert agent.terminate() == 0
        finally:
            receiver.stop()
        secret = SECRET.encode()
        buffer_dir = tmp_path / "buffer"
        for f in buffer_dir.iterdir():
            assert secret not in f.read_bytes(), f
        assert secret not in gzip.decompress(bundle.read_bytes())
        assert secret not in (tmp_path / "agent.log").read_bytes()
        assert secret not in (tmp_path / "received.db").read_bytes()
