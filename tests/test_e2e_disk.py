"""The buffer's disk under real faults: full, read-only, files deleted under the running agent.

A size-limited tmpfs is mounted for the buffer (CI runs as root); where mounting is refused the
tests that need it are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Disk
from tests.procs import AgentProc, ReceiverProc, Writer, wait_until


def _events(agent: AgentProc, name: str) -> list[dict]:
    return [r for r in map(json.loads, agent.log_text().splitlines()) if r.get("event") == name]


def _delivered(receiver: ReceiverProc) -> list[str]:
    return sorted(e["log_text"] for e in receiver.events())


def _agent_on(tmp: Path, buffer_dir: Path, receiver: ReceiverProc, log: Path, **cfg) -> AgentProc:
    return AgentProc(
        tmp, server_url=receiver.url, log_sources=[str(log)],
        buffer_db=str(buffer_dir / "agent.db"), **cfg,
    )  # fmt: skip


class TestFullDisk:
    def test_filling_the_disk_pauses_collection_and_loses_nothing(
        self, tmp_path: Path, disk: Disk, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """The disk fills while lines are written: the collector pauses and says why (log,
        status); once space is freed every line arrives, none lost."""
        log = tmp_path / "app.log"
        log.write_text("")
        agent = _agent_on(tmp_path, disk.path, receiver, log)
        agents.append(agent)
        agent.start()
        writer = Writer(log, "full", per_tick=10, tick=0.01)
        writer.start()
        try:
            wait_until(lambda: receiver.stats()["events_unique"] > 500, 30, what="flowing")
            disk.fill()
            wait_until(lambda: _events(agent, "buffer_write_failed"), 30, what="write failure")
            wait_until(
                lambda: any("disk full" in p for p in agent.status()["problems"]), 10,
                what="status says disk full",
            )  # fmt: skip
            assert agent.alive()
        finally:
            disk.free()
            written = writer.finish()
        wait_until(lambda: agent.status()["problems"] == [], 20, what="problem cleared")
        wait_until(lambda: receiver.stats()["events_unique"] == len(written), 60, what="all")
        assert _delivered(receiver) == sorted(written)
        assert _events(agent, "buffer_room_again")
        assert agent.terminate() == 0

    def test_acks_that_cannot_be_written_are_sent_again_never_lost(
        self, tmp_path: Path, disk: Disk, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """Batches answered 200 while the disk is full cannot be acked: they stay pending
        and are sent again once there is room; the server ends with every line once."""
        log = tmp_path / "app.log"
        lines = [f"ack {i:05d}" for i in range(3000)]
        log.write_text("".join(x + "\n" for x in lines))
        receiver.configure(delay=1.0)  # answers come back after the disk is full
        agent = _agent_on(tmp_path, disk.path, receiver, log, batch_size=100)
        agents.append(agent)
        agent.start()
        wait_until(
            lambda: [s["lag_bytes"] for s in agent.status()["sources"]] == [0], 30,
            what="all committed",
        )  # fmt: skip
        wait_until(lambda: receiver.stats()["requests"] >= 2, 30, what="batches in flight")
        disk.fill()
        receiver.configure(delay=0.0)
        wait_until(lambda: _events(agent, "buffer_write_failed"), 30, what="an ack failed")
        assert agent.status()["pending"] > 0
        disk.free()
        wait_until(lambda: agent.status()["pending"] == 0, 60, what="all acked")
        assert _delivered(receiver) == lines
        assert agent.terminate() == 0

    def test_start_up_on_a_full_disk_is_a_clear_error_and_leaves_no_corrupt_buffer(
        self, tmp_path: Path, disk: Disk, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """No room at start-up: exit 1 with a message that says the disk is full; after room
        is made the same buffer opens cleanly (not quarantined) and the lines arrive."""
        log = tmp_path / "app.log"
        log.write_text("".join(f"boot {i}\n" for i in range(50)))
        agent = _agent_on(tmp_path, disk.path, receiver, log, agent_id="fixed-agent-id")
        agents.append(agent)
        disk.fill()
        out = agent.cli("run", timeout=30)
        assert out.returncode == 1, out.stderr
        message = out.stderr.lower()
        assert ("disk" in message and "full" in message) or "no space" in message, out.stderr
        disk.free()
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 50, 30, what="50 lines")
        assert not list(disk.path.glob("*.corrupt-*"))
        assert agent.status()["quarantined"] is None
        assert agent.terminate() == 0


def _immutable(paths: list[Path], on: bool) -> None:
    """chattr ±i: writes through already open files fail too, even for root (ext4, xfs)."""
    for p in paths:
        if p.exists():
            subprocess.run(["chattr", "+i" if on else "-i", str(p)], check=True)


class TestReadOnly:
    def test_a_read_only_buffer_is_said_loudly_and_collection_resumes(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """The buffer files turn read-only under the running agent (immutable: even root's
        open files cannot be written): the agent reports it (log, status) and keeps the
        lines in the log file; writable again, everything arrives."""
        probe = tmp_path / "probe"
        probe.write_text("")
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this filesystem (or not root)")
        _immutable([probe], False)
        log = tmp_path / "app.log"
        log.write_text("")
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
        agents.append(agent)
        agent.start()
        files = [tmp_path / "buffer" / f"agent.db{s}" for s in ("", "-wal")]
        writer = Writer(log, "ro", per_tick=10, tick=0.01)
        writer.start()
        try:
            wait_until(lambda: receiver.stats()["events_unique"] > 300, 30, what="flowing")
            _immutable(files, True)
            wait_until(lambda: _events(agent, "buffer_write_failed"), 30, what="write failure")
            wait_until(lambda: agent.status()["problems"], 10, what="status says why")
        finally:
            _immutable(files, False)
            written = writer.finish()
        wait_until(lambda: receiver.stats()["events_unique"] == len(written), 60, what="all")
        assert _delivered(receiver) == sorted(written)
        assert agent.terminate() == 0


class TestTampered:
    @pytest.mark.parametrize("victim", ["agent.db", "agent.db-wal"])
    def test_a_deleted_buffer_file_is_restored_and_nothing_is_lost(
        self, tmp_path: Path, agents: list[AgentProc], victim: str
    ) -> None:
        """The buffer (or its WAL) is deleted while lines wait for a server that is down: the
        agent says so and puts the file back; killed with -9 and restarted, it still has
        every line (they were not collected into a deleted file)."""
        receiver = ReceiverProc(tmp_path)
        log = tmp_path / "app.log"
        log.write_text("".join(f"keep {i:04d}\n" for i in range(800)))
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
        agents.append(agent)
        agent.start()
        wait_until(lambda: agent.status()["pending"] == 800, 30, what="800 pending")
        buffer_dir = tmp_path / "buffer"
        os.unlink(buffer_dir / victim)
        wait_until(lambda: _events(agent, "buffer_file_restored"), 10, what="restored")
        tampered = _events(agent, "buffer_file_tampered")
        assert tampered and tampered[0]["level"] == "error"
        with open(log, "a") as f:
            f.write("".join(f"later {i:04d}\n" for i in range(200)))
        wait_until(lambda: agent.status()["pending"] == 1000, 30, what="1000 pending")
        agent.kill9()
        agent.start()
        receiver.start()
        try:
            wait_until(lambda: receiver.stats()["events_unique"] == 1000, 30, what="all lines")
            expected = [f"keep {i:04d}" for i in range(800)] + [
                f"later {i:04d}" for i in range(200)
            ]
            assert _delivered(receiver) == sorted(expected)
        finally:
            receiver.stop()
