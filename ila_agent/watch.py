"""``ila-agent status --watch``: the status, refreshed like ``top``.

On a terminal the view is redrawn in place (plain ANSI escapes: alternate screen, cursor home,
erase to end of line), so it needs no curses; on Ctrl-C the cursor and the screen are given
back and the exit code is 0. When stdout is a pipe or a file, each refresh is one line of
``key=value`` pairs with a fixed set of keys (:data:`PLAIN_KEYS`), for ``grep`` and ``awk``.

What a single ``status`` cannot say, a watch can: how pending moves (per second since the last
refresh, and a sparkline of the last refreshes) and how fast the agent sends (its own
``sent_lines`` counter, per second). A last error the agent has since cleared stays on screen,
marked as over, so a short outage between two refreshes is not missed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from ila_agent.config import AgentConfig
from ila_core.clock import Clock
from ila_core.errors import AgentError

HISTORY = 30  # refreshes the sparkline shows
TOP_SOURCES = 5  # sources shown, by lag, when the terminal is tall enough
SPARK = "▁▂▃▄▅▆▇█"

# The plain form's keys, always all of them and in this order ("-" when unknown), so a
# script can rely on the column it reads.
PLAIN_KEYS = (
    "time", "agent", "pid", "pending", "pending_bytes", "trend_per_s", "oldest_pending_age_s",
    "send_per_s", "in_flight", "limit", "max_in_flight", "waiting_retry", "dead_letter",
    "dropped", "lag_bytes", "files_open", "sources", "last_error", "problems",
)  # fmt: skip

# Alternate screen + hidden cursor while watching; the reverse when done.
ENTER = "\x1b[?1049h\x1b[?25l"
LEAVE = "\x1b[?1049l\x1b[?25h"  # cursor shown after leaving: the screen swap may restore modes
HOME = "\x1b[H"
ERASE_LINE = "\x1b[K"
ERASE_BELOW = "\x1b[J"

ReadStatus = Callable[[AgentConfig, float], dict[str, Any]]


def _read_status(cfg: AgentConfig, now: float) -> dict[str, Any]:
    from ila_agent.buffer_tools import status_report

    return status_report(cfg, now)


@dataclass
class Frame:
    """One refresh: the status report and what the watch derived from the ones before."""

    wall: float
    report: dict[str, Any] | None  # None: the buffer could not be read (``read_error``)
    read_error: str | None = None
    trend_per_s: float | None = None  # pending's change per second since the last refresh
    send_per_s: float | None = None  # entries the agent confirmed sent, per second
    history: list[int] = field(default_factory=list)
    last_error: str | None = None  # the latest error seen, even when the agent cleared it
    last_error_now: bool = False  # True while the agent still reports it


class Tracker:
    """Turns successive status reports into rates: what changed since the previous refresh."""

    def __init__(self, history: int = HISTORY) -> None:
        self.history: deque[int] = deque(maxlen=history)
        self._pending_at: tuple[float, int] | None = None  # (monotonic, pending)
        # The agent rewrites its state about once a second, whatever our interval: its send
        # rate is measured between two of its own reports (pid, updated_at, sent_lines).
        self._sent_at: tuple[Any, float, int] | None = None
        self._send_rate: float | None = None
        self.last_error: str | None = None

    def update(self, report: dict[str, Any], mono: float, wall: float) -> Frame:
        pending = int(report.get("pending") or 0)
        trend = None
        if self._pending_at is not None and mono > self._pending_at[0]:
            trend = (pending - self._pending_at[1]) / (mono - self._pending_at[0])
        self._pending_at = (mono, pending)
        self.history.append(pending)
        self._update_send_rate(_running_agent(report))
        current = report.get("last_error")
        if current:
            self.last_error = current
        return Frame(
            wall=wall, report=report, trend_per_s=trend, send_per_s=self._send_rate,
            history=list(self.history), last_error=self.last_error,
            last_error_now=bool(current),
        )  # fmt: skip

    def _update_send_rate(self, agent: dict[str, Any] | None) -> None:
        sent, updated = (agent or {}).get("sent_lines"), (agent or {}).get("updated_at")
        if agent is None or not isinstance(sent, int) or not isinstance(updated, int | float):
            self._sent_at = None
            self._send_rate = None
            return
        pid = agent.get("pid")
        prev = self._sent_at
        if prev is None or prev[0] != pid or sent < prev[2]:
            # A first look, or a restarted agent (its counter starts again from 0).
            self._sent_at = (pid, float(updated), sent)
            self._send_rate = None
        elif updated > prev[1]:
            self._send_rate = (sent - prev[2]) / (updated - prev[1])
            self._sent_at = (pid, float(updated), sent)
        # else: the same report as last time; the rate stands


def watch(
    cfg: AgentConfig,
    *,
    interval: float,
    out: TextIO,
    iterations: int | None = None,
    clock: Clock | None = None,
    read: ReadStatus = _read_status,
) -> int:
    """Refresh every ``interval`` seconds until Ctrl-C (or ``iterations`` refreshes); 0."""
    clock = clock or Clock()
    terminal = _is_terminal(out)
    tracker = Tracker()
    done = 0
    with _screen(out) if terminal else contextlib.nullcontext():
        try:
            next_due = clock.monotonic()
            while iterations is None or done < iterations:
                frame = _sample(cfg, tracker, clock, read)
                if terminal:
                    width, height = _size(out)
                    lines = render_screen(frame, cfg, interval, width=width, height=height)
                    out.write(HOME + "".join(line + ERASE_LINE + "\n" for line in lines))
                    out.write(ERASE_BELOW)
                else:
                    out.write(render_line(frame) + "\n")
                out.flush()
                done += 1
                if iterations is not None and done >= iterations:
                    break
                # Keep a steady beat: a slow read shortens the wait instead of adding to it.
                next_due += interval
                now = clock.monotonic()
                if next_due < now:
                    next_due = now
                if clock.wait(next_due - now):
                    break
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends: not a failure
        except BrokenPipeError:
            # `status --watch | head`: the reader has what it wanted; keep the interpreter's
            # last flush from complaining about the closed pipe.
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return 0


def _sample(cfg: AgentConfig, tracker: Tracker, clock: Clock, read: ReadStatus) -> Frame:
    wall = clock.wall()
    try:
        report = read(cfg, wall)
    except (AgentError, OSError, sqlite3.Error) as exc:
        # A buffer being replaced or a disk in trouble: say so and keep watching.
        return Frame(wall=wall, report=None, read_error=str(exc), history=list(tracker.history))
    return tracker.update(report, clock.monotonic(), wall)


def _is_terminal(out: TextIO) -> bool:
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM") != "dumb"


def _size(out: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(out.fileno())
    except (AttributeError, ValueError, OSError):
        return 80, 24
    if size.columns <= 0 or size.lines <= 0:
        return 80, 24  # a pty nobody sized (0x0): the classic default, not a 0-wide view
    return max(20, size.columns), max(5, size.lines)


@contextlib.contextmanager
def _screen(out: TextIO) -> Iterator[None]:
    """The alternate screen with a hidden cursor; both given back however the watch ends
    (Ctrl-C, SIGTERM, an error)."""
    previous: Any = None
    if threading.current_thread() is threading.main_thread():

        def on_term(_sig: int, _frame: Any) -> None:
            raise KeyboardInterrupt  # the same clean exit as Ctrl-C

        previous = signal.signal(signal.SIGTERM, on_term)
    out.write(ENTER)
    out.flush()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            out.write(LEAVE)
            out.flush()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# -- rendering --------------------------------------------------------------------------------


def _running_agent(report: dict[str, Any]) -> dict[str, Any] | None:
    agent = report.get("agent")
    return agent if isinstance(agent, dict) and agent.get("running") else None


def sparkline(values: list[int]) -> str:
    """Bars scaled from 0 to the largest value: a backlog draining to 0 reads as such."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, v * len(SPARK) // (top + 1))] for v in values)


def _signed(rate: float | None, unit: str = "/s") -> str:
    if rate is None:
        return "-"
    if abs(rate) < 0.05:
        return f"0{unit}"
    return f"{rate:+.1f}{unit}"


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _flight(agent: dict[str, Any] | None) -> str:
    if agent is None or "in_flight" not in agent:
        return "-"
    text = (
        f"in flight {agent.get('in_flight')}, limit {agent.get('concurrency_limit')}"
        f" of {agent.get('max_in_flight')}"
    )
    window = agent.get("concurrency_window")
    if isinstance(window, int | float) and window < 1:
        # Below one request in flight the agent paces itself (after an outage, an overload).
        text += f" (paced: in flight {window:.0%} of the time)"
    waiting = agent.get("waiting_retry")
    if waiting:
        text += f", {waiting} waiting to retry"
    return text


def _agent_line(report: dict[str, Any], wall: float) -> str:
    agent = report.get("agent")
    mode = report.get("mode") or "-"
    target = f" → {report['server_url']}" if report.get("server_url") else ""
    if isinstance(agent, dict) and agent.get("running"):
        return f"running, pid {agent.get('pid')} · {mode}{target}"
    if isinstance(agent, dict) and agent.get("updated_at"):
        ago = max(0.0, wall - float(agent["updated_at"]))
        return f"NOT RUNNING (pid {agent.get('pid')} last seen {_age(ago)} ago) · {mode}{target}"
    return f"NOT RUNNING · {mode}{target}"


def render_screen(
    frame: Frame, cfg: AgentConfig, interval: float, *, width: int = 80, height: int = 24
) -> list[str]:
    """The terminal view: at most ``height - 1`` lines, each cut to ``width``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(frame.wall))
    lines = [f"ila-agent status --watch · every {interval:g} s · {stamp} · Ctrl-C to quit", ""]
    report = frame.report
    if report is None:
        lines += [
            f"buffer      {cfg.buffer_db}",
            f"CANNOT READ {frame.read_error}",
        ]
        return _fit(lines, width, height)
    agent = _running_agent(report)
    trend = _signed(frame.trend_per_s)
    lines.append(f"agent       {_agent_line(report, frame.wall)}")
    pending = (
        f"pending     {report.get('pending', 0)} entries ({_bytes(report.get('pending_bytes'))})"
    )
    if report.get("buffer_exists", True):
        pending += f" · trend {trend} {sparkline(frame.history)}"
        pending += f" · oldest {_age(report.get('oldest_pending_age_s'))}"
    else:
        pending += " · no buffer yet: the agent has not run with this config"
    lines.append(pending)
    if agent is None:
        lines.append("sending     - (the agent is not running)")
    elif report.get("mode") == "collect-only":
        lines.append("sending     none: collect-only mode (export carries the lines)")
    else:
        send = "-" if frame.send_per_s is None else f"{frame.send_per_s:.1f} entries/s"
        lines.append(f"sending     {send} · {_flight(agent)}")
    lines.append(f"last ok     {report.get('last_send_ok_at') or '-'}")
    counts = (
        f"dead letters {report.get('dead_letter', 0)} · dropped {report.get('dropped', 0)}"
        f" · exported {report.get('exported', 0)}"
    )
    if "filtered" in report:
        counts += f" · filtered {report['filtered']}"
    lines.append(f"counts      {counts}")
    files = agent.get("files") if agent else None
    sources = report.get("sources") or []
    if isinstance(files, dict) and "open" in files:
        draining = (
            f", {files['draining']} finishing after rotation" if files.get("draining") else ""
        )
        lines.append(f"files       {files['open']} open{draining} · {len(sources)} tracked")
    else:
        lines.append(f"files       {len(sources)} tracked")
    if frame.last_error is None:
        lines.append("last error  -")
    else:
        when = "now" if frame.last_error_now else "over: sending works again"
        lines.append(f"last error  {frame.last_error} ({when})")
    problems = list(report.get("problems") or [])
    if report.get("quarantined"):
        problems.append(f"buffer was corrupt, moved to {report['quarantined']}")
    lines.append(f"problems    {'none' if not problems else problems[0]}")
    lines += [f"            {p}" for p in problems[1:]]
    room = height - 1 - len(lines) - 2  # a blank line and the heading
    if sources and room > 0:
        by_lag = sorted(sources, key=lambda s: -(s.get("lag_bytes") or 0))
        shown = by_lag[: min(TOP_SOURCES, room)]
        name_w = max(10, width - 40)
        title = f"SOURCE (top {len(shown)} of {len(sources)} by lag)"
        lines += ["", f"{title:<{name_w}} {'POSITION':>12} {'SIZE':>12} {'LAG':>12}"]
        for s in shown:
            name = str(s.get("source") or s.get("path") or "?")
            if len(name) > name_w:
                name = "…" + name[-(name_w - 1) :]
            size = "-" if s.get("size") is None else str(s["size"])
            lag = "-" if s.get("lag_bytes") is None else str(s["lag_bytes"])
            lines.append(f"{name:<{name_w}} {s.get('position', 0):>12} {size:>12} {lag:>12}")
    return _fit(lines, width, height)


def _fit(lines: list[str], width: int, height: int) -> list[str]:
    # A line wider than the terminal would wrap and push the frame off its place.
    return [line[:width] for line in lines[: max(1, height - 1)]]


def _plain_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = str(value)
    if not text or any(c in text for c in ' "=\\\n\t'):
        return json.dumps(text, ensure_ascii=False)  # logfmt-style quoting
    return text


def plain_fields(frame: Frame) -> dict[str, Any]:
    """The values of one plain line, keyed by :data:`PLAIN_KEYS`."""
    values: dict[str, Any] = dict.fromkeys(PLAIN_KEYS)
    values["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(frame.wall))
    report = frame.report
    if report is None:
        values["agent"] = "unreadable"
        values["last_error"] = frame.read_error
        return values
    agent = _running_agent(report)
    values["agent"] = "running" if agent else "not-running"
    if agent:
        values["pid"] = agent.get("pid")
        values["in_flight"] = agent.get("in_flight")
        values["limit"] = agent.get("concurrency_limit")
        values["max_in_flight"] = agent.get("max_in_flight")
        values["waiting_retry"] = agent.get("waiting_retry")
        files = agent.get("files")
        if isinstance(files, dict):
            values["files_open"] = files.get("open")
    sources = report.get("sources") or []
    values.update(
        pending=report.get("pending", 0),
        pending_bytes=report.get("pending_bytes", 0),
        trend_per_s=None if frame.trend_per_s is None else _signed(frame.trend_per_s, ""),
        oldest_pending_age_s=report.get("oldest_pending_age_s"),
        send_per_s=frame.send_per_s,
        dead_letter=report.get("dead_letter", 0),
        dropped=report.get("dropped", 0),
        lag_bytes=sum(int(s.get("lag_bytes") or 0) for s in sources),
        sources=len(sources),
        last_error=report.get("last_error"),  # the current one: a line is a snapshot
        # Texts, not a count: "problems=-" is the healthy case to grep for.
        problems="; ".join(str(p) for p in report.get("problems") or []) or None,
    )
    return values


def render_line(frame: Frame) -> str:
    """One refresh as ``key=value`` pairs, every key of :data:`PLAIN_KEYS` in order."""
    values = plain_fields(frame)
    return " ".join(f"{k}={_plain_value(values[k])}" for k in PLAIN_KEYS)
