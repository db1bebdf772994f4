"""The systemd journal through the real journalctl, on journal files the test builds."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.procs import PY, AgentProc, ReceiverProc, wait_until

JOURNAL_REMOTE = next(
    (p for p in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
     if os.path.exists(p)),
    None,
)  # fmt: skip
pytestmark = pytest.mark.skipif(
    JOURNAL_REMOTE is None or shutil.which("journalctl") is None,
    reason="needs journalctl and systemd-journal-remote (ops/test.sh installs them)",
)
BOOT = "0123456789abcdef0123456789abcdef"


def write_journal(path: Path, records: list[dict[str, str | bytes]]) -> None:
    """A real journal file, from the journal export format, via systemd-journal-remote."""
    out = bytearray()
    t0 = int(time.time() * 1e6)
    for i, rec in enumerate(records):
        fields: dict[str, str | bytes] = {
            "__REALTIME_TIMESTAMP": str(t0 + i),
            "__MONOTONIC_TIMESTAMP": str(t0 + i),
            "_BOOT_ID": BOOT,
            "_HOSTNAME": "journal-host",
            **rec,
        }
        for k, v in fields.items():
            if isinstance(v, bytes):
                out += k.encode() + b"\n" + struct.pack("<Q", len(v)) + v + b"\n"
            else:
                out += f"{k}={v}\n".encode()
        out += b"\n"
    assert JOURNAL_REMOTE is not None
    subprocess.run(
        [JOURNAL_REMOTE, f"--output={path}", "--split-mode=none", "-"],
        input=bytes(out), check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def sshd(n: int, start: int = 0) -> list[dict[str, str | bytes]]:
    return [
        {"MESSAGE": f"Failed password for root from 203.0.113.{i % 250} seq={i}",
         "_SYSTEMD_UNIT": "sshd.service", "SYSLOG_IDENTIFIER": "sshd", "PRIORITY": "4"}
        for i in range(start, start + n)
    ]  # fmt: skip


def _agent(tmp: Path, receiver: ReceiverProc, journal_dir: Path, agents, **cfg) -> AgentProc:
    agent = AgentProc(
        tmp,
        server_url=receiver.url,
        log_sources=[
            {
                "type": "journald",
                "directory": str(journal_dir),
                "matches": ["_SYSTEMD_UNIT=sshd.service"],
            },
        ],
        **cfg,
    )
    agents.append(agent)
    return agent


class TestJournald:
    def test_all_entries_then_restart_resumes_after_the_cursor(
        self, tmp_path, receiver, agents
    ) -> None:
        """Every matching entry arrives once, with the journal's unit, host and time; after
        a restart, new entries continue after the cursor: no gap, no repeat."""
        jdir = tmp_path / "journal"
        jdir.mkdir()
        records = sshd(2000)
        records += [{"MESSAGE": f"cron {i}", "_SYSTEMD_UNIT": "cron.service"} for i in range(300)]
        records.append({"MESSAGE": b"bad \xff\xfe bytes", "_SYSTEMD_UNIT": "sshd.service"})
        write_journal(jdir / "one.journal", records)
        # One batch in flight: the order promise checked below (protocol.md, "Batches in flight").
        agent = _agent(tmp_path, receiver, jdir, agents, max_in_flight=1)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 2001, 30, what="2001 entries")
        events = receiver.events()
        texts = [e["log_text"] for e in events]
        assert texts[:2000] == [r["MESSAGE"] for r in sshd(2000)]
        bad = events[2000]["entry"]
        assert bad["log_text"] == "bad \ufffd\ufffd bytes" and bad["raw_b64"] == "YmFkIP/+IGJ5dGVz"
        e0 = events[0]["entry"]
        assert e0["source"] == "sshd.service" and e0["hostname"] == "journal-host"
        assert e0["event_time"].endswith("Z") and e0["priority"] == "4"
        assert agent.terminate() == 0
        write_journal(jdir / "two.journal", sshd(300, start=5000))
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 2301, 30, what="2301 entries")
        time.sleep(0.5)
        stats = receiver.stats()
        assert (stats["events_received"], stats["events_unique"]) == (2301, 2301)
        assert [e["log_text"] for e in receiver.events()][2001:] == [
            r["MESSAGE"] for r in sshd(300, start=5000)
        ]

    def test_kill9_while_reading_loses_nothing(self, tmp_path, receiver, agents) -> None:
        """kill -9 in the middle of a large journal: after restart every entry arrives."""
        jdir = tmp_path / "journal"
        jdir.mkdir()
        write_journal(jdir / "big.journal", sshd(20000))
        agent = _agent(tmp_path, receiver, jdir, agents, batch_size=100)
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] >= 3000, 30, what="some entries")
        agent.kill9()
        got = receiver.stats()["events_unique"]
        assert got < 20000, "the kill must land while entries are still being read"
        agent.start()
        wait_until(lambda: receiver.stats()["events_unique"] == 20000, 60, what="20000")
        stats = receiver.stats()
        # At most what was in flight at the kill: max_in_flight (8) batches of 100.
        assert stats["events_received"] - stats["events_unique"] <= 8 * 100
        assert sorted(e["log_text"] for e in receiver.events()) == sorted(
            r["MESSAGE"] for r in sshd(20000)
        )

    def test_missing_journalctl_is_reported_and_retried(self, tmp_path, receiver, agents):
        """No journalctl on PATH: one clear error, the agent keeps running."""
        jdir = tmp_path / "journal"
        jdir.mkdir()
        agent = _agent(tmp_path, receiver, jdir, agents)
        agent.proc = subprocess.Popen(
            [PY, "-m", "ila_agent", "run", "--config", str(agent.config_path)],
            env={"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: "journal_problem" in agent.log_text(), 20, what="the error")
        time.sleep(2.5)  # a couple of retries: still said once
        problems = [
            json.loads(x) for x in agent.log_text().splitlines() if '"journal_problem"' in x
        ]
        assert len(problems) == 1 and "journalctl not found" in problems[0]["problem"]
        assert agent.alive()
