"""Demo: why a durable agent. The reference receiver and the agent on 127.0.0.1, a sample auth
log being written, and part-way through two bad things at once: the server goes down for a few
seconds, and while it is down the agent is killed with SIGKILL and started again. The backlog
waits on disk and drains when the server is back; at the end every line written has arrived
exactly once (the receiver removes resent entries by their ``event_uid``), and the demo checks it.

Run through ops/demo.sh (which sets up .venv). ``--short`` is the 12-second version CI runs.
Ctrl-C stops it early.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ila_agent.buffer_tools import status_report
from ila_agent.config import load_config

ROOT = Path(__file__).resolve().parent.parent
KEY = "demo-key-change-me"
EXE = [sys.executable, "-m", "ila_agent"]
SHORT_SECONDS = 12.0
MIN_SECONDS = 8.0  # room for: lines flowing, an outage with a kill in it, the drain
DRAIN_LIMIT_S = 60.0  # after the writing stops: the agent paces itself after an outage
SHOWN_PER_POLL = 6
BURST = 120  # failed logins written while the server is down


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def burst_line(i: int) -> str:
    """A brute-force attempt: the lines you least want to lose while the server is down."""
    ts = time.strftime("%b %d %H:%M:%S")
    return f"{ts} web-01 sshd[{800 + i}]: Failed password for invalid user admin from 198.51.100.7"


def sample_line(i: int) -> str:
    """An auth.log line; ``i`` makes every line unique, so the final check can match them."""
    ts = time.strftime("%b %d %H:%M:%S")
    ip = f"203.0.113.{random.randint(1, 254)}"
    kind = random.choice(
        [
            f"sshd[{800 + i}]: Failed password for root from {ip} port 22 ssh2",
            f"sshd[{800 + i}]: Accepted publickey for deploy from {ip} port 22 ssh2",
            f"sudo:   deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/bin/ls #{i}",
        ]
    )
    return f"{ts} web-01 {kind}"


class Receiver:
    """`ila-agent receiver` on a fixed port and SQLite file, so it can die and come back."""

    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.db = work / "received.db"
        self.proc: subprocess.Popen[bytes] | None = None
        self.after = 0  # the last event id shown

    def start(self) -> None:
        ready = self.work / "receiver.ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [*EXE, "receiver", "--port", str(self.port), "--api-key", KEY,
             "--db", str(self.db), "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / "receiver.console", "ab"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not ready.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the receiver did not start (see {self.work}/receiver.console)")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def show_new(self, say: Callable[[str], None]) -> None:
        """Print the events stored since the last call."""
        if not self.up:
            return
        try:
            events = get(f"{self.url}/api/receiver/events?after={self.after}&limit=1000")["events"]
        except OSError:
            return
        for e in events[:SHOWN_PER_POLL]:
            say(f"  received  {e['log_text']}")
        if len(events) > SHOWN_PER_POLL:  # a backlog arriving at once: its size is the point
            say(f"  received  … and {len(events) - SHOWN_PER_POLL} more")
        if events:
            self.after = events[-1]["id"]

    def stats(self) -> dict[str, int]:
        return dict(get(f"{self.url}/api/receiver/stats"))

    def all_texts(self) -> list[str]:
        texts: list[str] = []
        after = 0
        while True:
            page = get(f"{self.url}/api/receiver/events?after={after}&limit=10000")["events"]
            if not page:
                return texts
            texts += [e["log_text"] for e in page]
            after = page[-1]["id"]


class Agent:
    """`ila-agent run` as a subprocess that can be SIGKILLed and started again."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.config = work / "config.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        self.proc = subprocess.Popen(
            [*EXE, "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / "agent.console", "ab"),  # noqa: SIM115
            cwd=self.work,
        )
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def pending_text(config: Path) -> str:
    """The buffer as `ila-agent status` sees it (read-only, beside the running agent)."""
    r = status_report(load_config(str(config)))
    age = r["oldest_pending_age_s"]
    text = f"pending {r['pending']}"
    if age is not None:
        text += f" (oldest {age:.1f} s)"
    if r.get("last_error"):
        text += f", last error: {r['last_error'].split(' ', 1)[-1]}"  # without its timestamp
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to write (default 30)")
    ap.add_argument("--short", action="store_true", help=f"{SHORT_SECONDS:g} seconds (for CI)")
    ap.add_argument("--dir", default=str(ROOT / "demo"), help="working folder (default ./demo)")
    args = ap.parse_args()
    seconds = SHORT_SECONDS if args.short else args.seconds
    if seconds < MIN_SECONDS:
        ap.error(f"--seconds must be at least {MIN_SECONDS:g}")
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Each demo starts from nothing: no buffer, no received events, a new auth.log.
    shutil.rmtree(work / "buffer", ignore_errors=True)
    for old in work.glob("received.db*"):
        old.unlink()
    log = work / "auth.log"
    log.write_text("".join(sample_line(i) + "\n" for i in range(5)))
    written = log.read_text().splitlines()
    port = free_port()
    (work / "config.json").write_text(
        json.dumps(
            {
                "server_url": f"http://127.0.0.1:{port}",
                "api_key": KEY,
                "batch_interval": 1,
                "heartbeat_interval": 5,
                "retry_interval": 2,  # the backoff cap: notice the server is back soon
                "connect_timeout": 2,
                "log_sources": [str(log)],
                "start_position": "beginning",
                "buffer_db": "buffer/log_buffer.db",
                "agent_log_file": "agent.log",
            },
            indent=2,
        )
    )
    receiver = Receiver(work, port)
    agent = Agent(work)
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {text}", flush=True)

    try:
        receiver.start()
        print(f"receiver: {receiver.url}  (events stored in {receiver.db})")
        pid = agent.start()
        print(f"agent:    ila-agent run --config {agent.config}  (pid {pid})")
        print(f"watch it live in another terminal: .venv/bin/ila-agent status --watch 0.5"
              f" --config {agent.config}")  # fmt: skip
        print(f"writing sample lines to {log} for {seconds:g} s; lines arriving at the receiver:\n")
        i = len(written)
        next_write = next_status = time.monotonic()

        def tell_buffer(stage: str, now: float) -> str:
            """From the outage on, pending once a second; returns the stage after it."""
            nonlocal next_status
            if stage not in ("down", "dead", "restarted", "draining") or now < next_status:
                return stage
            text = pending_text(agent.config)
            next_status = now + 1.0
            if stage == "draining" and text.startswith("pending 0"):
                say("  buffer: pending 0: the backlog has drained")
                return "drained"
            say(f"  buffer: {text}")
            return stage

        stage = "starting"
        # The story starts once the first lines have arrived (the agent takes a moment to
        # start and register); its steps are then spread over --seconds.
        start = down_at = kill_at = restart_at = back_at = end = float("inf")
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_write:
                with open(log, "a") as f:
                    for _ in range(random.randint(1, 3)):
                        line = sample_line(i)
                        f.write(line + "\n")
                        written.append(line)
                        i += 1
                next_write = now + 0.7
            if stage == "starting" and receiver.after > 0:
                start = now
                down_at, kill_at = start + 0.25 * seconds, start + 0.4 * seconds
                restart_at = kill_at + 1.0  # dead for a second: lines written then are read later
                back_at, end = start + 0.6 * seconds, start + seconds
                stage = "up"
            elif stage == "up" and now >= down_at:
                receiver.kill()
                say("RECEIVER DOWN (killed): the agent keeps reading; lines wait in its buffer")
                with open(log, "a") as f:
                    for _ in range(BURST):
                        written.append(burst_line(i))
                        f.write(written[-1] + "\n")
                        i += 1
                say(f"meanwhile a brute-force attempt: {BURST} failed logins written to auth.log")
                stage, next_status = "down", now + 1.0
            elif stage == "down" and now >= kill_at:
                agent.kill9()
                say(f"AGENT KILLED with SIGKILL (no shutdown, nothing flushed); on disk: "
                    f"{pending_text(agent.config)}")  # fmt: skip
                stage = "dead"
            elif stage == "dead" and now >= restart_at:
                pid = agent.start()
                say(f"agent restarted (pid {pid}): it resumes from the position it had committed")
                stage, next_status = "restarted", now + 0.5
            elif stage == "restarted" and now >= back_at:
                receiver.start()
                say("RECEIVER UP again: the backlog drains")
                stage, next_status = "draining", now + 0.5
            stage = tell_buffer(stage, now)
            if stage == "starting" and now - t0 > DRAIN_LIMIT_S:
                say("no line arrived: see agent.console and agent.log in " + str(work))
                return 1
            receiver.show_new(say)
            time.sleep(0.2)

        say(f"writing stopped after {len(written)} lines; waiting for the last ones")
        deadline = time.monotonic() + DRAIN_LIMIT_S
        while stage == "draining" or receiver.stats().get("events_unique", 0) < len(written):
            if time.monotonic() > deadline:
                break
            stage = tell_buffer(stage, time.monotonic())
            receiver.show_new(say)
            time.sleep(0.3)
        receiver.show_new(say)

        stats = receiver.stats()
        texts = receiver.all_texts()
        resent = stats.get("events_received", 0) - stats.get("events_unique", 0)
        exact = sorted(texts) == sorted(written)
        print()
        if exact:
            print(
                f"RESULT: {len(texts)} of {len(written)} lines written arrived, each exactly"
                f" once (the receiver got {stats.get('events_received', 0)} entries;"
                f" {resent} were resends it de-duplicated by event_uid)"
            )
        else:
            missing = len(set(written) - set(texts))
            extra = len(texts) - len(set(texts))
            print(
                f"MISMATCH: {len(set(texts) & set(written))} of {len(written)} lines written"
                f" arrived; {missing} missing, {extra} stored twice"
            )
        print(
            "Through a server outage and a SIGKILL of the agent, nothing was lost: every line"
            " was committed to the on-disk buffer with its file position before it was sent."
            if exact
            else "See the agent's log in " + str(work / "agent.log")
        )
        print("\n$ ila-agent status")
        subprocess.run([*EXE, "status", "--config", str(agent.config)], check=False)
        return 0 if exact else 1
    except KeyboardInterrupt:
        return 0
    finally:
        agent.stop()
        receiver.kill(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
