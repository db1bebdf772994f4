"""Many files under the usual 1,024-descriptor limit: descriptors are a budget."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from tests.procs import AgentProc, ReceiverProc, wait_until, write_lines

LIMIT = 1024  # the default soft limit of a shell and of a systemd service


class FdSampler(threading.Thread):
    """Counts the agent's descriptors (all, and those on log files) until stopped."""

    def __init__(self, agent: AgentProc, logs: Path) -> None:
        super().__init__(daemon=True)
        self.agent, self.logs = agent, str(logs)
        self.max_all = self.max_logs = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            targets = self.agent.open_files()
            self.max_all = max(self.max_all, len(targets))
            self.max_logs = max(self.max_logs, sum(t.startswith(self.logs) for t in targets))


class TestManyFiles:
    def test_3000_files_under_1024_descriptors(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """3,000 files of 50 lines under ulimit -n 1024: every line arrives once; then 10
        lines appended to 100 random files arrive too; the agent never holds more
        descriptors than the limit leaves room for."""
        logs = tmp_path / "logs"
        logs.mkdir()
        expected: list[str] = []
        for f in range(3000):
            lines = [f"f{f:04d} line {i:02d}" for i in range(50)]
            write_lines(logs / f"dev{f:04d}.log", lines)
            expected += lines
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(logs / "*.log")],
                          batch_size=500, max_in_flight=4)  # fmt: skip
        agents.append(agent)
        agent.start(nofile=LIMIT)
        sampler = FdSampler(agent, logs)
        sampler.start()
        try:
            wait_until(lambda: receiver.stats()["events_unique"] == 150_000, 80, what="150,000")
            rng = random.Random(3)
            for f in rng.sample(range(3000), 100):
                more = [f"f{f:04d} more {i:02d}" for i in range(10)]
                write_lines(logs / f"dev{f:04d}.log", more)
                expected += more
            wait_until(lambda: receiver.stats()["events_unique"] == 151_000, 60, what="151,000")
        finally:
            sampler.stop_event.set()
            sampler.join()
        texts = sorted(e["log_text"] for e in receiver.events())
        assert texts == sorted(expected)
        assert receiver.stats()["events_received"] == 151_000  # none twice
        assert sampler.max_all < LIMIT, sampler.max_all
        assert 0 < sampler.max_logs <= LIMIT - 96, sampler.max_logs
        assert agent.terminate() == 0

    def test_a_file_rotated_while_closed_for_inactivity_is_finished(
        self, tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
    ) -> None:
        """A quiet file is closed; lines are added and it is renamed and replaced before the
        agent looks again: the renamed file is found by its inode and finished, and the new
        file is read from its beginning."""
        log = tmp_path / "app.log"
        write_lines(log, ["first"])
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)],
                          close_inactive=0.5, poll_interval=0.5)  # fmt: skip
        agents.append(agent)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 20, what="first line")
        wait_until(lambda: str(log) not in agent.open_files(), 20, what="closed while quiet")
        with open(log, "a") as f:  # a daemon writes just before logrotate renames
            f.write("late 1\nlate 2\n")
        os.rename(log, tmp_path / "app.log.1")
        write_lines(log, ["new 1", "new 2"])
        wait_until(lambda: receiver.stats()["events_unique"] == 5, 20, what="5 lines")
        texts = sorted(e["log_text"] for e in receiver.events())
        assert texts == ["first", "late 1", "late 2", "new 1", "new 2"]
        assert agent.terminate() == 0
