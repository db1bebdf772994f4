"""``ila-agent status --watch``: a live view on a terminal (redrawn in place), one key=value line
per refresh otherwise.

The end-to-end tests drive the real command under a real terminal (tmux, read back with
``capture-pane``; and a bare pty) against a real agent and the reference receiver, which is
stopped for a while so that pending grows, then started again so that it drains.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ila_agent.config import AgentConfig, load_config
from ila_agent.watch import ENTER, HOME, LEAVE, PLAIN_KEYS, Tracker, sparkline, watch
from ila_core.errors import AgentError
from tests.fakes import FakeClock
from tests.procs import PY, AgentProc, ReceiverProc, Writer, wait_until, write_lines

# -- helpers ----------------------------------------------------------------------------------


def no_buffer_config(tmp_path: Path) -> AgentConfig:
    """A valid configuration whose agent has never run: no buffer, no state file."""
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "server_url": "http://127.0.0.1:9",
                "api_key": "k",
                "log_sources": [str(tmp_path / "app.log")],
                "buffer_db": "buffer/agent.db",
                "agent_log_file": "agent.log",
            }
        )
    )
    return load_config(str(path))


def report(pending: int, *, agent: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A status report as ``status_report`` makes it, with only what the watch reads."""
    base: dict[str, Any] = {
        "mode": "forwarding", "server_url": "http://x", "buffer_exists": True,
        "pending": pending, "pending_bytes": pending * 10, "oldest_pending_age_s": None,
        "dead_letter": 0, "dropped": 0, "exported": 0, "last_send_ok_at": None,
        "last_error": None, "sources": [], "agent": agent, "problems": [],
    }  # fmt: skip
    base.update(extra)
    return base


def running(pid: int, updated_at: float, sent: int, **extra: Any) -> dict[str, Any]:
    return {
        "running": True, "pid": pid, "updated_at": updated_at, "sent_lines": sent,
        "in_flight": 2, "waiting_retry": 0, "concurrency_limit": 3, "max_in_flight": 8,
        "files": {"open": 1, "draining": 0}, "problems": [], **extra,
    }  # fmt: skip


def parse_plain(line: str) -> dict[str, str]:
    """key=value pairs; a quoted value is JSON (logfmt style)."""
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


class TtyBuffer(io.StringIO):
    """Collects the output and says it is a terminal (of the default size: no fileno)."""

    def isatty(self) -> bool:
        return True


# -- the loop and what it derives, with a fake clock --------------------------------------------


class TestTracker:
    def test_trend_is_the_change_per_second_since_the_last_refresh(self) -> None:
        t = Tracker()
        assert t.update(report(100), mono=10.0, wall=0).trend_per_s is None  # nothing before
        assert t.update(report(160), mono=12.0, wall=0).trend_per_s == pytest.approx(30.0)
        assert t.update(report(40), mono=14.0, wall=0).trend_per_s == pytest.approx(-60.0)
        assert t.update(report(40), mono=14.0, wall=0).history == [100, 160, 40, 40]

    def test_send_rate_comes_from_the_agents_own_reports(self) -> None:
        """The agent rewrites its state about once a second: the rate is measured between two
        of its reports, and a refresh that sees the same report keeps the rate."""
        t = Tracker()
        assert t.update(report(0, agent=running(7, 100.0, 500)), 1.0, 0).send_per_s is None
        assert t.update(report(0, agent=running(7, 101.0, 700)), 1.5, 0).send_per_s == 200.0
        assert t.update(report(0, agent=running(7, 101.0, 700)), 2.0, 0).send_per_s == 200.0
        assert t.update(report(0, agent=running(7, 103.0, 800)), 2.5, 0).send_per_s == 50.0
        # A restarted agent counts from 0 again: no rate until its second report.
        assert t.update(report(0, agent=running(8, 104.0, 10)), 3.0, 0).send_per_s is None
        assert t.update(report(0, agent=running(8, 105.0, 30)), 3.5, 0).send_per_s == 20.0
        # Not running: nothing is sent.
        assert t.update(report(0, agent={"running": False}), 4.0, 0).send_per_s is None

    def test_a_cleared_error_stays_visible_as_over(self) -> None:
        t = Tracker()
        down = t.update(report(5, last_error="T connection failed: refused"), 1.0, 0)
        assert (down.last_error, down.last_error_now) == ("T connection failed: refused", True)
        up = t.update(report(0), 2.0, 0)
        assert (up.last_error, up.last_error_now) == ("T connection failed: refused", False)


def test_sparkline_is_scaled_from_zero() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([0, 50, 100]) == "▁▄█"
    assert sparkline([100, 100]) == "██"  # a flat backlog is still a backlog


def test_plain_lines_without_buffer_or_agent(tmp_path: Path) -> None:
    """Not a terminal: one line per refresh, every key, on a steady beat of the interval."""
    clock = FakeClock()
    out = io.StringIO()
    assert watch(no_buffer_config(tmp_path), interval=2, out=out, iterations=3, clock=clock) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "\x1b" not in out.getvalue()
    for line in lines:
        fields = parse_plain(line)
        assert list(fields) == list(PLAIN_KEYS)
        assert fields["agent"] == "not-running"
        assert (fields["pending"], fields["in_flight"], fields["last_error"]) == ("0", "-", "-")
    assert parse_plain(lines[0])["trend_per_s"] == "-"
    assert parse_plain(lines[1])["trend_per_s"] == "0"
    assert clock.waits == [2, 2]


def test_plain_line_values(tmp_path: Path) -> None:
    reports = iter(
        [
            report(10, agent=running(42, 100.0, 0)),
            report(
                30, agent=running(42, 101.0, 50), last_error="2026 connection failed: x y",
                problems=["disk full"],
                sources=[{"source": "a", "lag_bytes": 5}, {"source": "b", "lag_bytes": 7}],
            ),
        ]
    )  # fmt: skip
    out = io.StringIO()
    watch(
        no_buffer_config(tmp_path), interval=1, out=out, iterations=2, clock=FakeClock(),
        read=lambda cfg, now: next(reports),
    )  # fmt: skip
    fields = parse_plain(out.getvalue().splitlines()[1])
    assert fields["agent"] == "running" and fields["pid"] == "42"
    assert (fields["pending"], fields["trend_per_s"], fields["send_per_s"]) == (
        "30",
        "+20.0",
        "50.0",
    )
    assert (fields["in_flight"], fields["limit"], fields["max_in_flight"]) == ("2", "3", "8")
    assert (fields["lag_bytes"], fields["sources"], fields["files_open"]) == ("12", "2", "1")
    assert fields["last_error"] == "2026 connection failed: x y"
    assert fields["problems"] == "disk full"


def test_terminal_redraws_in_place_and_gives_the_screen_back_on_ctrl_c(tmp_path: Path) -> None:
    calls = 0

    def read(cfg: AgentConfig, now: float) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # Ctrl-C while reading
        return report(7 * calls, agent=running(42, 100.0 + calls, 10 * calls))

    out = TtyBuffer()
    code = watch(no_buffer_config(tmp_path), interval=1, out=out, clock=FakeClock(), read=read)
    text = out.getvalue()
    assert code == 0
    assert text.startswith(ENTER) and text.endswith(LEAVE)
    assert text.count(HOME) == 2  # two frames, each drawn from the top-left corner
    last = text.split(HOME)[-1]
    assert "pending     14 entries" in last and "trend +7.0/s" in last
    assert "in flight 2, limit 3 of 8" in last and "10.0 entries/s" in last


def test_a_buffer_that_cannot_be_read_is_shown_and_the_watch_goes_on(tmp_path: Path) -> None:
    answers: list[Any] = [AgentError("cannot read the buffer b.db: disk I/O error"), report(3)]

    def read(cfg: AgentConfig, now: float) -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    out = TtyBuffer()
    cfg = no_buffer_config(tmp_path)
    assert watch(cfg, interval=1, out=out, iterations=2, clock=FakeClock(), read=read) == 0
    first, second = out.getvalue().split(HOME)[1:]
    assert "CANNOT READ cannot read the buffer b.db: disk I/O error" in first
    assert "pending     3 entries" in second


def test_terminal_view_without_buffer_or_agent(tmp_path: Path) -> None:
    out = TtyBuffer()
    watch(no_buffer_config(tmp_path), interval=1, out=out, iterations=1, clock=FakeClock())
    screen = out.getvalue()
    assert "NOT RUNNING" in screen
    assert "no buffer yet" in screen
    assert "the agent is not running" in screen
    assert screen.endswith(LEAVE)


# -- the real command under a real terminal -----------------------------------------------------


@pytest.fixture(scope="module")
def tmux() -> str:
    """The tmux binary, installed with apt when it is missing and we can."""
    found = shutil.which("tmux")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "tmux"],
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip
        found = shutil.which("tmux")
    if found is None:
        pytest.skip("tmux is not installed and could not be installed with apt-get")
    return found


class Pane:
    """One tmux pane on a private server socket, running a command; read with capture-pane."""

    def __init__(self, tmux: str, sock: Path, command: str) -> None:
        self.base = [tmux, "-u", "-S", str(sock)]  # -u: UTF-8 whatever the locale
        # bash: when Ctrl-C reaches a child that handles it and exits normally, bash goes on
        # (so the pane lives on to show the exit code and the restored screen modes).
        wrapped = f"bash -c {_quote(command + '; echo watch-exit=$?; sleep 60')}"
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", "w", "-x", "120", "-y", "40", wrapped],
            check=True, timeout=10,
        )  # fmt: skip
        self.screens: list[str] = []

    def screen(self) -> str:
        out = subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "w"], capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
        self.screens.append(out.stdout)
        return out.stdout

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        try:
            found: re.Match[str] = wait_until(
                lambda: re.search(pattern, self.screen(), re.MULTILINE), timeout, 0.1,
                what=f"{pattern!r} on the screen",
            )  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast screen:\n{self.screens[-1]}") from None
        return found

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "w", *keys], check=True, timeout=10)

    def display(self, fmt: str) -> str:
        out = subprocess.run(
            [*self.base, "display", "-p", "-t", "w", fmt], capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
        return out.stdout.strip()

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture
def pane_factory(tmux: str, tmp_path: Path) -> Iterator[Any]:
    made: list[Pane] = []

    def make(command: str) -> Pane:
        pane = Pane(tmux, tmp_path / "tmux.sock", command)
        made.append(pane)
        return pane

    try:
        yield make
    finally:
        for pane in made:
            (tmp_path / "screens.txt").write_text("\n-----\n".join(pane.screens[-5:]))
            pane.kill()


def pending_on(screen: str) -> int:
    m = re.search(r"^pending\s+(\d+) entries", screen, re.MULTILINE)
    assert m, screen
    return int(m.group(1))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_watch_on_a_terminal_through_an_outage(
    tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc], pane_factory: Any
) -> None:
    log = tmp_path / "app.log"
    write_lines(log, [f"before {i}" for i in range(20)])
    agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
    agents.append(agent)
    agent.start()
    assert agent.proc is not None
    wait_until(lambda: receiver.stats().get("events_unique") == 20, 30, what="first lines")
    pane = pane_factory(f"{PY} -m ila_agent status --watch 0.5 --config {agent.config_path}")

    # Up: the agent's own report, nothing pending.
    pane.wait_for(rf"^agent\s+running, pid {agent.proc.pid}")
    screen = pane.wait_for(r"^pending\s+0 entries").string  # once the last ack is written
    assert re.search(r"in flight \d+, limit \d+ of 8", screen), screen

    # Down: pending grows (trend +), the connection failure is the error of the moment.
    receiver.stop()
    writer = Writer(log, "during", per_tick=20, tick=0.05)
    writer.start()
    try:
        pane.wait_for(r"^last error\s+\S+ connection failed: .*refused.* \(now\)$")
        screen = pane.wait_for(r"trend \+\d+(\.\d)?/s").string
        down = pending_on(screen)
        assert 0 < down <= writer.n
        assert re.search(r"^sending .*in flight \d+, limit \d+ of 8", screen, re.MULTILINE)
        assert re.search(r"oldest \d+\.\d s", screen), screen
        # Still growing while the receiver is down; the sparkline draws the last refreshes.
        later = pane.wait_for(r"trend \+\S+ [▁▂▃▄▅▆▇█]{4,} ").string
        assert pending_on(later) >= down
        # A backlog worth draining over a few refreshes.
        later = pane.wait_for(r"^pending\s+(\d{4,}|[89]\d\d) entries.* trend \+").string
        shown = {"receiver down": later}
    finally:
        written = writer.finish()

    # Up again: it drains (trend -) to 0, and the error is shown as over.
    receiver.start()
    screen = pane.wait_for(r"trend -\d+(\.\d)?/s", timeout=60).string
    assert pending_on(screen) < len(written)
    shown["receiver back, draining"] = screen
    # After an outage the agent paces itself back up (forwarder/concurrency.py): give it time.
    screen = pane.wait_for(r"^pending\s+0 entries", timeout=90).string
    assert re.search(r"^last error\s+.*connection failed.*\(over: sending works again\)$",
                     screen, re.MULTILINE), screen  # fmt: skip
    assert agent.status()["pending"] == 0
    shown["drained"] = screen

    # Ctrl-C: exit 0, the normal screen and the cursor given back.
    assert pane.display("#{alternate_on} #{cursor_flag}") == "1 0"
    pane.keys("C-c")
    pane.wait_for(r"^watch-exit=0$", timeout=10)
    assert pane.display("#{alternate_on} #{cursor_flag}") == "0 1"
    for title, text in shown.items():  # with pytest -s: what a user saw
        print(f"--- {title} ---\n" + "\n".join(ln for ln in text.splitlines() if ln.strip()))


@pytest.mark.slow
def test_watch_in_a_pty_with_no_agent_and_no_buffer(tmp_path: Path) -> None:
    """The bare pty path (no tmux): it says what is missing and restores the screen."""
    cfg = no_buffer_config(tmp_path)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # rows, cols
    env = {**os.environ, "TERM": "xterm"}
    proc = subprocess.Popen(
        [PY, "-m", "ila_agent", "status", "--watch", "0.2", "--config", cfg.config_path],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while seen.count(HOME.encode()) < 3 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode("utf-8", "replace")
    assert text.startswith(ENTER)
    assert "NOT RUNNING" in text and "no buffer yet" in text
    assert text.rstrip("\r\n").endswith(LEAVE)


@pytest.mark.slow
def test_watch_when_not_a_terminal(
    tmp_path: Path, receiver: ReceiverProc, agents: list[AgentProc]
) -> None:
    """Piped: plain lines with exactly the documented keys, one per refresh; SIGINT → 0."""
    log = tmp_path / "app.log"
    write_lines(log, [f"line {i}" for i in range(30)])
    agent = AgentProc(tmp_path, server_url=receiver.url, log_sources=[str(log)])
    agents.append(agent)
    agent.start()
    assert agent.proc is not None
    wait_until(lambda: agent.status()["agent"], 30, what="the agent's state file")
    proc = subprocess.Popen(
        [PY, "-m", "ila_agent", "status", "--watch", "0.2", "--config", str(agent.config_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    for line in lines:
        assert line.endswith("\n") and "\x1b" not in line
        fields = parse_plain(line)
        assert list(fields) == list(PLAIN_KEYS), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["time"])
        assert fields["agent"] == "running" and fields["pid"] == str(agent.proc.pid)
        assert fields["in_flight"].isdigit() and fields["limit"].isdigit()
        assert fields["max_in_flight"] == "8"
        assert fields["files_open"] == "1" and fields["sources"] == "1"
    assert re.fullmatch(r"[+-]?\d+(\.\d)?", parse_plain(lines[-1])["trend_per_s"])
