"""Buffer tools with real processes: status, inspect, replay, and air-gapped export/import."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tests.procs import AgentProc, ReceiverProc, wait_until, write_lines


def _texts(receiver: ReceiverProc) -> list[str]:
    return [e["log_text"] for e in receiver.events()]


class TestStatus:
    def test_pending_is_exact_while_server_down_then_zero(self, tmp_path: Path, agents) -> None:
        """status --json while the agent runs and the server is down: pending == lines
        written, exactly; after the server comes back it drops to 0."""
        receiver = ReceiverProc(tmp_path)
        log = tmp_path / "app.log"
        log.write_text("")
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
        agents.append(agent)
        agent.start()
        try:
            for k in range(5):
                write_lines(log, [f"s{k}-{i}" for i in range(777)])
            wait_until(lambda: agent.status()["pending"] == 3885, 20, what="3885 pending")
            st = agent.status()
            assert st["pending_bytes"] > 0 and st["oldest_pending_age_s"] is not None
            assert st["sources"] == [
                {"source": str(log), "path": str(log), "position": log.stat().st_size,
                 "size": log.stat().st_size, "lag_bytes": 0},
            ]  # fmt: skip
            keys = {"dead_letter", "dropped", "exported", "last_send_ok_at", "last_error"}
            assert keys <= set(st)
            text = agent.cli("status")
            assert text.returncode == 0 and "pending:         3885 entries" in text.stdout
            receiver.start()
            wait_until(lambda: agent.status()["pending"] == 0, 30, what="drained")
            st = agent.status()
            assert st["oldest_pending_age_s"] is None and st["last_send_ok_at"]
            assert receiver.stats()["events_unique"] == 3885
        finally:
            receiver.stop()


class TestInspect:
    def test_inspect_filters_and_prints_json_lines(self, tmp_path: Path, agents) -> None:
        """inspect prints one JSON object per entry, filtered by state, source and limit."""
        a, b = tmp_path / "a.log", tmp_path / "b.log"
        write_lines(a, [f"a{i}" for i in range(5)])
        write_lines(b, [f"b{i}" for i in range(3)])
        agent = AgentProc(tmp_path, log_sources=[str(a), {"path": str(b), "source": "bee"}])
        agents.append(agent)
        agent.start()
        wait_until(lambda: agent.status()["pending"] == 8, 20, what="8 pending")
        out = agent.cli("inspect", "--state", "pending")
        rows = [json.loads(x) for x in out.stdout.splitlines()]
        assert sorted(r["log_text"] for r in rows) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(3)]
        )
        assert all(r["state"] == "pending" and r["event_uid"] for r in rows)
        bee = [json.loads(x) for x in agent.cli("inspect", "--source", "bee").stdout.splitlines()]
        assert [r["log_text"] for r in bee] == ["b0", "b1", "b2"]
        two = agent.cli("inspect", "--limit", "2").stdout.splitlines()
        assert len(two) == 2
        assert agent.cli("inspect", "--state", "dead").stdout == ""


class TestReplay:
    def test_replay_dead_letter_once_the_server_accepts(
        self, tmp_path, receiver, start_agent
    ) -> None:
        """An entry dead-lettered earlier is delivered by replay --dead-letter; exit 0."""
        receiver.configure(reject_substring="POISON")
        agent, log = start_agent(["fine 1", "POISON pill", "fine 2"])
        wait_until(lambda: agent.status()["dead_letter"] == 1, 20, what="a dead letter")
        dead = [json.loads(x) for x in agent.cli("inspect", "--state", "dead").stdout.splitlines()]
        assert [d["log_text"] for d in dead] == ["POISON pill"]
        out = agent.cli("replay")  # pending only: the dead letter stays dead
        assert out.returncode == 0 and agent.status()["dead_letter"] == 1
        receiver.configure(reset=True)
        out = agent.cli("replay", "--dead-letter")
        assert out.returncode == 0, out.stderr
        assert "1 accepted" in out.stdout
        assert sorted(_texts(receiver)) == ["POISON pill", "fine 1", "fine 2"]
        assert agent.status()["dead_letter"] == 0

    def test_replay_acked_since_resends_history(self, tmp_path, receiver, start_agent) -> None:
        """replay --acked --since re-sends acked history, here to another server too."""
        lines = [f"h{i}" for i in range(120)]
        agent, log = start_agent(lines)
        wait_until(lambda: receiver.stats()["events_unique"] == 120, 20, what="120 lines")
        wait_until(lambda: agent.status()["pending"] == 0, 10, what="acked")
        out = agent.cli("replay", "--acked", "--since", "1h")
        assert out.returncode == 0, out.stderr
        stats = receiver.stats()
        assert (stats["events_received"], stats["events_unique"]) == (240, 120)
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        other = ReceiverProc(other_dir).start()
        try:
            out = agent.cli("replay", "--acked", "--since", "1h", "--server-url", other.url)
            assert out.returncode == 0, out.stderr
            assert sorted(_texts(other)) == sorted(lines)
        finally:
            other.stop()
        future = agent.cli("replay", "--acked", "--since", "2099-01-01T00:00:00Z")
        assert future.returncode == 0 and "0 selected" in future.stdout

    def test_replay_with_server_down_exits_nonzero_and_keeps_entries(
        self, tmp_path, agents
    ) -> None:
        """replay that cannot deliver exits 1 with a summary; nothing leaves the buffer."""
        log = tmp_path / "app.log"
        write_lines(log, [f"k{i}" for i in range(10)])
        down = ReceiverProc(tmp_path)
        agent = AgentProc(tmp_path, log_sources=[str(log)])
        agents.append(agent)
        agent.start()
        wait_until(lambda: agent.status()["pending"] == 10, 20, what="10 pending")
        agent.terminate()
        out = agent.cli("replay", "--server-url", down.url, "--max-failures", "2")
        assert out.returncode == 1
        assert "10 selected, 0 accepted" in out.stderr and "connection" in out.stderr
        assert agent.status()["pending"] == 10


class TestAirGap:
    def _collect(self, tmp: Path, agents, **cfg) -> AgentProc:
        f1, f2 = tmp / "auth.log", tmp / "syslog"
        write_lines(f1, [f"auth {i}" for i in range(2500)])
        write_lines(f2, [f"sys {i}" for i in range(2500)])
        a = AgentProc(tmp, log_sources=[str(f1), str(f2)], **cfg)  # no server_url: collect-only
        agents.append(a)
        a.start()
        wait_until(lambda: a.status()["pending"] == 5000, 30, what="5000 collected")
        return a

    def test_round_trip_once_and_tampering_rejected(self, tmp_path, receiver, agents) -> None:
        """A (air-gapped) exports 5,000 lines; B imports and sends them once, with A's
        source names; a second import adds none; a cut or altered bundle is rejected whole."""
        host_a, host_b = tmp_path / "a", tmp_path / "b"
        host_a.mkdir()
        host_b.mkdir()
        a = self._collect(host_a, agents)
        bundle = tmp_path / "a.bundle"
        out = a.cli("export", str(bundle))
        assert out.returncode == 0, out.stderr
        st = a.status()
        assert (st["pending"], st["exported"]) == (0, 5000)
        again = a.cli("export", str(tmp_path / "again.bundle"))
        assert "nothing to export" in again.stdout
        assert a.cli("export", "--all", str(tmp_path / "all.bundle")).returncode == 0

        cut = tmp_path / "cut.bundle"
        cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size * 2 // 3])
        flipped = tmp_path / "flipped.bundle"
        data = bytearray(bundle.read_bytes())
        data[len(data) // 2] ^= 0x01
        flipped.write_bytes(bytes(data))

        b = AgentProc(host_b, server_url=receiver.url, log_sources=[])
        agents.append(b)
        for bad in (cut, flipped):
            out = b.cli("import", str(bad))
            assert out.returncode == 1 and "Traceback" not in out.stderr
            assert str(bad) in out.stderr
            assert b.status()["pending"] == 0
        out = b.cli("import", str(bundle))
        assert out.returncode == 0, out.stderr
        assert "5000 entries added" in out.stdout
        assert b.status()["pending"] == 5000
        b.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 5000, 30, what="5000 arrive")
        events = receiver.events()
        assert len(events) == 5000 and receiver.stats()["events_received"] == 5000
        assert {e["source"] for e in events} == {str(host_a / "auth.log"), str(host_a / "syslog")}
        a_id = (host_a / "buffer" / "agent.db.agent-id").read_text().strip()
        assert {e["entry"]["agent_id"] for e in events} == {a_id}
        out = b.cli("import", str(bundle))
        assert out.returncode == 0 and "0 entries added" in out.stdout
        out = b.cli("import", str(tmp_path / "all.bundle"))
        assert "0 entries added" in out.stdout and "5000 already imported" in out.stdout
        assert b.status()["pending"] == 0
        assert receiver.stats()["events_received"] == 5000

    def test_signed_bundles(self, tmp_path, agents) -> None:
        """With bundle_hmac_key_file, bundles are signed; a wrong key or no signature fails."""
        host_a, host_b = tmp_path / "a", tmp_path / "b"
        host_a.mkdir()
        host_b.mkdir()
        (tmp_path / "k1").write_text("a-shared-secret-of-32-bytes-long\n")
        (tmp_path / "k2").write_text("another-secret-of-32-bytes-long!\n")
        a = self._collect(host_a, agents, bundle_hmac_key_file=str(tmp_path / "k1"))
        bundle = tmp_path / "signed.bundle"
        assert a.cli("export", str(bundle)).returncode == 0
        with gzip.open(bundle, "rt") as f:
            manifest = json.loads(f.readline())
        assert manifest["signature"]["alg"] == "hmac-sha256"
        assert manifest["count"] == 5000
        wrong = AgentProc(host_b, log_sources=[], bundle_hmac_key_file=str(tmp_path / "k2"))
        out = wrong.cli("import", str(bundle))
        assert out.returncode == 1 and "signature does not match" in out.stderr
        right_dir = tmp_path / "c"
        right_dir.mkdir()
        right = AgentProc(right_dir, log_sources=[], bundle_hmac_key_file=str(tmp_path / "k1"))
        assert right.cli("import", str(bundle)).returncode == 0
        assert right.status()["pending"] == 5000
        unsigned_dir = tmp_path / "d"
        unsigned_dir.mkdir()
        plain = AgentProc(unsigned_dir, log_sources=[])
        plain_bundle = tmp_path / "plain.bundle"
        write_lines(unsigned_dir / "x.log", ["x"])
        assert right.cli("export", str(plain_bundle)).returncode == 0  # signed by k1
        assert plain.cli("import", str(plain_bundle)).returncode == 0  # no key: not checked


class TestProgress:
    def test_progress_bar_on_a_terminal_only(self, tmp_path: Path, agents) -> None:
        """export shows a progress bar on a terminal; piped, its output has no bar."""
        import os
        import pty
        import subprocess
        import sys

        log = tmp_path / "app.log"
        write_lines(log, [f"p{i}" for i in range(12000)])
        agent = AgentProc(tmp_path, log_sources=[str(log)])
        agents.append(agent)
        agent.start()
        wait_until(lambda: agent.status()["pending"] == 12000, 30, what="12000 pending")
        agent.terminate()
        piped = agent.cli("export", str(tmp_path / "piped.bundle"))
        assert "exporting [" not in piped.stdout + piped.stderr
        agent.cli("export", "--all", str(tmp_path / "again.bundle"))  # make them exportable
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ila_agent", "export", "--all", "--config",
             str(agent.config_path), str(tmp_path / "tty.bundle")],
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(60)
        os.close(master)
        shown = b"".join(chunks).decode("utf-8", "replace")
        assert proc.returncode == 0
        assert "exporting [" in shown and "12000/12000 (100%)" in shown
