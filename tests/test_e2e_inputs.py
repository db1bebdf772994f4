"""Awkward input through the real agent: bytes, line endings, huge lines, bad files."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.procs import AgentProc, ReceiverProc, wait_until


def _start(tmp: Path, receiver: ReceiverProc, agents: list[AgentProc], sources, **cfg):
    agent = AgentProc(tmp, server_url=receiver.url, log_sources=sources, **cfg)
    agents.append(agent)
    agent.start()
    return agent


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


class TestBytes:
    def test_invalid_utf8_and_crlf(self, tmp_path, receiver, agents) -> None:
        """Invalid UTF-8 is replaced and kept exactly in raw_b64; CRLF and LF are stripped."""
        log = tmp_path / "bytes.log"
        bad = b"caf\xe9 \xff\xfe end"
        log.write_bytes(b"plain\r\n" + bad + b"\n" + "ünïcødé ✓\r\n".encode() + b"\r\n")
        _start(tmp_path, receiver, agents, [str(log)])
        wait_until(lambda: receiver.stats()["events_unique"] == 4, 20, what="4 lines")
        ev = receiver.events()
        assert [e["log_text"] for e in ev] == [
            "plain", bad.decode("utf-8", "replace"), "ünïcødé ✓", "",
        ]  # fmt: skip
        assert base64.b64decode(ev[1]["entry"]["raw_b64"]) == bad
        assert "raw_b64" not in ev[0]["entry"] and "raw_b64" not in ev[2]["entry"]

    def test_5mb_line_is_cut_and_flagged(self, tmp_path, receiver, agents) -> None:
        """A 5 MB line is cut at max_line_bytes, flagged, and the lines around it are intact."""
        log = tmp_path / "big.log"
        big = b"A" * (5 * 1024 * 1024)
        log.write_bytes(b"before\n" + big + b"\nafter\n")
        agent = _start(tmp_path, receiver, agents, [str(log)], max_line_bytes=65536)
        wait_until(lambda: receiver.stats()["events_unique"] == 3, 30, what="3 lines")
        ev = receiver.events()
        assert [e["log_text"][:6] for e in ev] == ["before", "AAAAAA", "after"]
        cut = ev[1]
        assert len(cut["log_text"]) == 65536
        assert cut["entry"]["truncated"] is True
        assert cut["entry"]["original_bytes"] == len(big)
        assert agent.alive()

    def test_100mb_line_without_newline_keeps_memory_bounded(
        self, tmp_path, receiver, agents
    ) -> None:
        """100 MB with no newline: memory stays bounded; emitted cut after partial_line_timeout."""
        log = tmp_path / "huge.log"
        with open(log, "wb") as f:
            chunk = b"B" * (1 << 20)
            for _ in range(100):
                f.write(chunk)
        agent = _start(tmp_path, receiver, agents, [str(log)], partial_line_timeout=1)
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 60, what="the cut line")
        e = receiver.events()[0]
        assert e["entry"]["truncated"] is True and e["entry"]["original_bytes"] == 100 << 20
        assert agent.proc is not None
        assert _rss_kb(agent.proc.pid) < 120_000  # peak, KiB: far below the 100 MB line

    def test_partial_last_line_emitted_after_timeout_and_joined_within(
        self, tmp_path, receiver, agents
    ) -> None:
        """A line written in two parts within the timeout is one entry; a last line without a
        newline is emitted once the file has been quiet for partial_line_timeout."""
        log = tmp_path / "part.log"
        log.write_bytes(b"")
        _start(tmp_path, receiver, agents, [str(log)], partial_line_timeout=1.5)
        wait_until(lambda: receiver.stats()["agents"] == 1, 20, what="registration")
        with open(log, "ab") as f:
            f.write(b"first half ")
            f.flush()
            time.sleep(0.5)
            f.write(b"second half\nno newline at end")
            f.flush()
        wait_until(lambda: receiver.stats()["events_unique"] == 1, 10, what="joined line")
        assert receiver.events()[0]["log_text"] == "first half second half"
        t0 = time.monotonic()
        wait_until(lambda: receiver.stats()["events_unique"] == 2, 10, what="partial line")
        assert time.monotonic() - t0 >= 0.5
        assert receiver.events()[1]["log_text"] == "no newline at end"


def _can_run_as_nobody() -> bool:
    if os.geteuid() != 0:
        return False
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "import ila_agent"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    return probe.returncode == 0


class TestBadFiles:
    def test_unreadable_file_reported_once_others_go_on(self, receiver, agents) -> None:
        """An unreadable file is reported once, clearly; the readable one is delivered."""
        as_root = os.geteuid() == 0
        if as_root and not _can_run_as_nobody():
            pytest.skip("running as root and cannot drop privileges: root reads every file")
        base = Path(tempfile.mkdtemp(prefix="ila-unreadable-"))
        try:
            os.chmod(base, 0o755)
            good, secret = base / "good.log", base / "secret.log"
            good.write_text("visible 1\nvisible 2\n")
            secret.write_text("hidden\n")
            os.chmod(good, 0o644)
            os.chmod(secret, 0o000)
            state = base / "state"
            state.mkdir()
            agent = AgentProc(
                state, server_url=receiver.url, log_sources=[str(secret), str(good)],
                buffer_db=str(state / "b.db"), agent_log_file=str(state / "agent.log"),
            )  # fmt: skip
            agents.append(agent)
            if as_root:
                os.chown(state, 65534, 65534)
                os.chown(agent.config_path, 65534, 65534)
                agent.proc = subprocess.Popen(
                    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     sys.executable, "-m", "ila_agent", "run", "--config", str(agent.config_path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            else:
                agent.start()
            wait_until(lambda: receiver.stats()["events_unique"] == 2, 20, what="good lines")
            time.sleep(1.0)  # several poll passes: the problem must still be said only once
            assert {e["log_text"] for e in receiver.events()} == {"visible 1", "visible 2"}
            problems = [
                json.loads(x) for x in agent.log_text().splitlines()
                if '"source_problem"' in x
            ]  # fmt: skip
            assert len(problems) == 1
            assert problems[0]["path"] == str(secret)
            assert "unreadable" in problems[0]["problem"]
            assert agent.alive()
        finally:
            for a in agents:
                a.cleanup()
            shutil.rmtree(base, ignore_errors=True)

    @pytest.mark.parametrize("damage", ["garbage", "truncated"])
    def test_corrupt_buffer_is_quarantined_and_collection_goes_on(
        self, tmp_path, receiver, agents, damage
    ) -> None:
        """A corrupt buffer file at start-up is moved aside, reported, and a fresh one used."""
        log = tmp_path / "app.log"
        log.write_text("")
        agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
        agents.append(agent)
        db = tmp_path / "buffer" / "agent.db"
        db.parent.mkdir()
        if damage == "garbage":
            db.write_bytes(os.urandom(64 * 1024))
        else:
            # A real buffer, cut in the middle.
            agent.start()
            (log).write_text("".join(f"x{i}\n" for i in range(3000)))
            wait_until(lambda: receiver.stats()["events_unique"] == 3000, 20, what="3000")
            agent.terminate()
            data = db.read_bytes()
            db.write_bytes(data[: len(data) // 2] + os.urandom(4096))
            for suffix in ("-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
        agent.start()
        with open(log, "a") as f:
            f.write("after corruption\n")
        wait_until(
            lambda: "after corruption" in {e["log_text"] for e in receiver.events()},
            20, what="line after corruption",
        )  # fmt: skip
        moved = list(db.parent.glob("agent.db.corrupt-*"))
        assert len([m for m in moved if not str(m).endswith(("-wal", "-shm"))]) == 1
        status = agent.status()
        assert status["quarantined"] and "corrupt" in status["quarantined"]
        assert '"buffer_corrupt_quarantined"' in agent.log_text()
        wait_until(
            lambda: any("quarantined" in h["body"]["buffer"] for h in receiver.heartbeats()),
            10, what="heartbeat reporting the quarantine",
        )  # fmt: skip
