"""End to end under faults: kill -9, server outages, graceful restart, log rotation."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

from tests.conftest import StartAgent
from tests.procs import AgentProc, ReceiverProc, Writer, wait_until, write_lines


def _texts(receiver: ReceiverProc) -> list[str]:
    return [e["log_text"] for e in receiver.events()]


class TestCrash:
    def test_kill9_ten_times_while_writing_loses_nothing(
        self, tmp_path: Path, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """kill -9 at 10 random moments: every line arrives; duplicates ≤ one batch per kill."""
        agent, log = start_agent(start=False)
        writer = Writer(log, "crash")
        writer.start()
        rng = random.Random(1234)
        for _ in range(10):
            agent.start()
            time.sleep(rng.uniform(0.2, 1.2))  # a random moment, not a synchronisation
            agent.kill9()
        agent.start()
        written = writer.finish()
        n = len(written)
        wait_until(lambda: receiver.stats()["events_unique"] >= n, 45, what=f"{n} events")
        texts = _texts(receiver)
        assert sorted(texts) == sorted(written)
        stats = receiver.stats()
        assert stats["events_unique"] == n
        duplicates = stats["events_received"] - stats["events_unique"]
        # At most what was in flight at each kill: max_in_flight batches (protocol.md).
        in_flight = agent.config.get("max_in_flight", 8) * agent.config["batch_size"]
        assert duplicates <= 10 * in_flight, duplicates
        assert agent.terminate() == 0


class TestOutage:
    def test_server_down_at_start_and_for_ten_seconds(
        self, tmp_path: Path, agents: list[AgentProc]
    ) -> None:
        """Server down at start-up and for 10 s later: all lines arrive; the agent stays up."""
        receiver = ReceiverProc(tmp_path)
        log = tmp_path / "app.log"
        log.write_text("")
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
        agents.append(agent)
        try:
            agent.start()
            first = [f"early {i}" for i in range(2000)]
            write_lines(log, first)
            wait_until(lambda: agent.status()["pending"] == 2000, 20, what="2000 buffered")
            assert agent.alive()
            receiver.start()
            wait_until(lambda: receiver.stats()["events_unique"] == 2000, 30, what="early lines")
            receiver.stop()
            t0 = time.monotonic()
            second = [f"during {i}" for i in range(3000)]
            for k in range(0, 3000, 300):
                write_lines(log, second[k : k + 300])
                time.sleep(0.9)  # spread over the 10 s outage
            wait_until(lambda: agent.status()["pending"] == 3000, 20, what="3000 buffered")
            while time.monotonic() - t0 < 10:
                time.sleep(0.2)
            assert agent.alive(), "the agent must never exit on its own"
            status = agent.status()
            assert status["last_error"] and "connection" in status["last_error"]
            receiver.start()
            wait_until(lambda: receiver.stats()["events_unique"] == 5000, 30, what="all lines")
            assert sorted(_texts(receiver)) == sorted(first + second)
            wait_until(lambda: agent.status()["pending"] == 0, 10, what="buffer drained")
            assert agent.terminate() == 0
        finally:
            receiver.stop()


class TestRestart:
    def test_sigterm_then_lines_written_while_stopped_are_delivered(
        self, tmp_path: Path, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """Stop, write 1,000 lines, start: they arrive; earlier lines are not sent again."""
        agent, log = start_agent()
        before = [f"before {i}" for i in range(700)]
        write_lines(log, before)
        wait_until(lambda: receiver.stats()["events_unique"] == 700, 20, what="700 events")
        t0 = time.monotonic()
        assert agent.terminate() == 0
        assert time.monotonic() - t0 < 10
        after = [f"after {i}" for i in range(1000)]
        write_lines(log, after)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 1700, 20, what="1700 events")
        assert sorted(_texts(receiver)) == sorted(before + after)
        stats = receiver.stats()
        assert stats["events_received"] - stats["events_unique"] <= agent.config["batch_size"]
        assert agent.terminate() == 0


class TestRotation:
    def test_rename_and_create_while_writing(
        self, tmp_path: Path, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """rename+create rotation three times while writing: nothing lost, nothing doubled."""
        agent, log = start_agent()
        wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="registration")
        writer = Writer(log, "rot")
        writer.start()
        for k in range(1, 4):
            time.sleep(0.5)
            with writer.lock:
                os.rename(log, tmp_path / f"app.log.{k}")
                # Like a daemon before its HUP: a few lines still go to the renamed file.
                writer.f.write("".join(f"rot late{k} {i}\n" for i in range(30)))
                writer.f.flush()
                writer.written.extend(f"rot late{k} {i}" for i in range(30))
                writer.reopen()
        time.sleep(0.5)
        written = writer.finish()
        n = len(written)
        wait_until(lambda: receiver.stats()["events_unique"] >= n, 30, what=f"{n} events")
        texts = _texts(receiver)
        assert sorted(texts) == sorted(written)
        assert receiver.stats()["events_received"] == n  # no duplicate from re-reading
        assert agent.terminate() == 0

    def test_copytruncate_while_writing(
        self, tmp_path: Path, receiver: ReceiverProc, start_agent: StartAgent
    ) -> None:
        """copytruncate while writing: only an unread tail of each copy may be missing."""
        agent, log = start_agent()
        wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="registration")
        writer = Writer(log, "ct")
        writer.start()
        copies: list[list[str]] = []
        for k in range(1, 4):
            time.sleep(0.5)
            with writer.lock:  # logrotate's copy→truncate window, made empty here
                shutil.copyfile(log, tmp_path / f"app.log.{k}")
                with open(log, "r+") as f:
                    f.truncate(0)
            copies.append((tmp_path / f"app.log.{k}").read_text().splitlines())
        time.sleep(0.5)
        written = writer.finish()
        after_last = written[sum(len(c) for c in copies) :]
        wait_until(
            lambda: set(after_last) <= set(_texts(receiver)), 30, what="lines after truncation"
        )
        delivered = set(_texts(receiver))
        for copy in copies:
            missing = [i for i, line in enumerate(copy) if line not in delivered]
            # What is missing can only be the tail the agent had not read at truncation.
            assert missing == list(range(len(copy) - len(missing), len(copy))), missing[:5]
        lost = len(written) - len(delivered)
        assert lost < len(written) // 4
        assert receiver.stats()["events_received"] == len(delivered)
        assert agent.terminate() == 0
