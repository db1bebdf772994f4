"""Demo: reference receiver + agent on 127.0.0.1, a sample auth log written, lines shown arriving.

Run through ops/demo.sh. Ctrl-C stops it early; it also stops by itself after --seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "demo-key-change-me"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def show_new(port: int, after: int, shown: int) -> tuple[int, int]:
    """Print the events the receiver got since ``after``."""
    try:
        events = get(f"http://127.0.0.1:{port}/api/receiver/events?after={after}")["events"]
    except OSError:
        events = []
    for e in events:
        after = e["id"]
        shown += 1
        print(f"  [{e['timestamp']}] {e['source']}: {e['log_text']}")
    return after, shown


def sample_line(i: int) -> str:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    ap.add_argument("--dir", default=str(ROOT / "demo"), help="working folder (default ./demo)")
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / "auth.log"
    log.write_text("".join(sample_line(i) + "\n" for i in range(5)))
    for old in work.glob("received.db*"):  # each demo starts with an empty receiver
        old.unlink()
    config = {
        "server_url": f"http://127.0.0.1:{port}",
        "api_key": KEY,
        "batch_interval": 1,
        "heartbeat_interval": 5,
        "log_sources": [str(log)],
        "start_position": "beginning",
        "buffer_db": "log_buffer.db",
        "agent_log_file": "agent.log",
    }
    (work / "config.json").write_text(json.dumps(config, indent=2))
    exe = [sys.executable, "-m", "ila_agent"]
    ready = work / "receiver.ready"
    ready.unlink(missing_ok=True)
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    *exe,
                    "receiver",
                    "--port",
                    str(port),
                    "--api-key",
                    KEY,
                    "--db",
                    str(work / "received.db"),
                    "--ready-file",
                    str(ready),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 15
        while not ready.exists():
            if time.monotonic() > deadline:
                print("receiver did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"receiver: http://127.0.0.1:{port}  (events stored in {work / 'received.db'})")
        agent_err = open(work / "agent.console", "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [*exe, "run", "--config", str(work / "config.json")],
                stdout=subprocess.DEVNULL,
                stderr=agent_err,
                cwd=work,
            )
        )
        print(f"agent:    ila-agent run --config {work / 'config.json'}")
        print(f"writing sample lines to {log}; lines arriving at the receiver:\n")
        after, i, shown = 0, 5, 0
        end = time.monotonic() + args.seconds
        next_write = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_write:
                with open(log, "a") as f:
                    for _ in range(random.randint(1, 3)):
                        f.write(sample_line(i) + "\n")
                        i += 1
                next_write = time.monotonic() + 0.7
            after, shown = show_new(port, after, shown)
            time.sleep(0.2)
        drain_until = time.monotonic() + 5  # the last lines: batch_interval is 1 s
        while shown < i and time.monotonic() < drain_until:
            after, shown = show_new(port, after, shown)
            time.sleep(0.2)
        print(f"\n{shown} of {i} lines written arrived. Status of the agent's buffer:")
        subprocess.run([*exe, "status", "--config", str(work / "config.json")], check=False)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
