#!/usr/bin/env python3
"""Syslog over TCP into a durable buffer: ila-agent vs syslog-ng, same stream, same run.

    /work/main/.venv/bin/python bench/syslog_bench.py [--lines 200000] [--runs 3]
        [--format 3164|5424] [--agent-config KEY=JSON ...] [--keep] [--no-install]

One Python sender writes N distinct syslog messages over one TCP connection to 127.0.0.1, as
fast as the receiver takes them (TCP back-pressure). The receivers, each in turn (ila-agent,
syslog-ng, ila-agent, ...), N runs each:

- ila-agent: ``python -m ila_agent run`` in collect-only mode (no server_url) with one
  ``{"type": "syslog", "listen": "tcp://127.0.0.1:PORT"}`` source: messages are parsed and
  committed to its SQLite buffer (WAL, synchronous=FULL: an fsync per commit). Counted by
  reading the buffer file (read-only) until it holds N entries.
- syslog-ng: a ``network()`` (3164, newline framing) or ``syslog()`` (5424, octet counting)
  TCP source, ``flags(flow-control)``, into a ``network()`` destination whose server is down
  (a closed port) with ``disk-buffer(reliable(yes))``: every message goes to its disk buffer.
  Counted with ``syslog-ng-ctl stats`` (the destination's ``queued``) until it is N.

lines/s = N / (time the last message was stored − the sender's connect). Also: the time the
sender finished writing (the rest was in socket buffers), CPU (utime+stime of the receiver's
process) per line, and peak RSS. Markdown on stdout, with the command; progress on stderr.
Standard library only (plus this checkout, for the buffer's table name); syslog-ng-core is
installed with apt-get when missing (root; the service is kept from starting).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.vs_syslogng import ensure_syslog_ng, syslog_ng_versions  # noqa: E402
from queue_store.schema import TABLE  # noqa: E402  the buffer's table, from this checkout

DEFAULT_LINES = 200_000
DEFAULT_RUNS = 3
RUN_TIMEOUT_S = 180.0
POLL_S = 0.02
SNG_POLL_S = 0.05  # syslog-ng-ctl is a process per poll: a little less often
READY_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"[syslog-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- input ---------------------------------------------------------------------------------------


def make_stream(n: int, fmt: str) -> bytes:
    """N distinct sshd-like messages, framed as the chosen format's usual TCP framing."""
    out = []
    for i in range(n):
        body = (
            f"Accepted publickey for user{i % 997:03d} from 10.{i % 256}.{(i >> 8) % 256}."
            f"{(i >> 16) % 256} port {20000 + i % 40000} ssh2 seq={i:09d}"
        )
        if fmt == "3164":
            out.append(f"<38>Nov 27 10:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d} "
                       f"web-{i % 16:02d} sshd[{1000 + i % 9000}]: {body}\n".encode())  # fmt: skip
        else:
            msg = (f"<38>1 2026-11-27T10:00:{(i // 1000) % 60:02d}.{i % 1000:03d}Z "
                   f"web-{i % 16:02d} sshd {1000 + i % 9000} - - {body}").encode()  # fmt: skip
            out.append(b"%d %s" % (len(msg), msg))
    return b"".join(out)


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- syslog-ng -----------------------------------------------------------------------------------


def sng_config(conf_version: str, fmt: str, port: int, dead_port: int, rundir: Path) -> str:
    source = (
        f'network(ip("127.0.0.1") port({port}) transport("tcp")'
        if fmt == "3164"
        else f'syslog(ip("127.0.0.1") port({port}) transport("tcp")'
    )
    return f"""@version: {conf_version}
# bench/syslog_bench.py: TCP syslog in, everything into a reliable disk-buffer (server down)
options {{ stats-freq(0); use-dns(no); dns-cache(no); keep-hostname(yes); chain-hostnames(no); }};
source s_net {{ {source} log-iw-size(100000) log-fetch-limit(1000)); }};
destination d_buf {{
  network("127.0.0.1" port({dead_port}) transport("tcp") time-reopen(600)
    disk-buffer(reliable(yes) disk-buf-size(4294967296) mem-buf-size(33554432)
                dir("{rundir / "disk-buffer"}")));
}};
log {{ source(s_net); destination(d_buf); flags(flow-control); }};
"""


def sng_queued(ctl: str, ctl_socket: Path) -> int:
    out = subprocess.run([ctl, "stats", "-c", str(ctl_socket)], capture_output=True, text=True,
                         timeout=10, check=False)  # fmt: skip
    for line in out.stdout.splitlines():
        parts = line.split(";")
        if len(parts) == 6 and parts[0] == "dst.network" and parts[4] == "queued":
            return int(parts[5])
    return 0


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    ok: bool
    rate: float = 0.0  # lines/s
    stored_s: float = 0.0  # connect → last message stored
    sent_s: float = 0.0  # connect → the sender's last write returned
    cpu_us_per_line: float = 0.0
    hwm_mib: float = 0.0
    stored: int = 0
    note: str = ""


def send(port: int, stream: bytes, done: list[float], t0: list[float]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        t0.append(time.monotonic())
        view = memoryview(stream)
        for i in range(0, len(stream), 1 << 20):
            s.sendall(view[i : i + (1 << 20)])
        done.append(time.monotonic())
        s.shutdown(socket.SHUT_WR)
        s.settimeout(RUN_TIMEOUT_S)
        with contextlib.suppress(OSError):
            while s.recv(4096):  # until the receiver closes (or the run ends)
                pass


def measure(
    proc: subprocess.Popen[bytes], port: int, stream: bytes, n: int, count: Any, poll: float
) -> Run:
    """Send the stream; poll ``count()`` until it is n; the figures of the run."""
    cpu0 = proc_cpu_s(proc.pid)
    done: list[float] = []
    t0: list[float] = []
    sender = threading.Thread(target=send, args=(port, stream, done, t0), daemon=True)
    sender.start()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    stored = 0
    end = None
    while time.monotonic() < deadline and proc.poll() is None:
        stored = count()
        if stored >= n:
            end = time.monotonic()
            break
        time.sleep(poll)
    cpu = proc_cpu_s(proc.pid) - cpu0
    hwm = proc_hwm_mib(proc.pid)
    if end is None or not t0:
        why = "exited" if proc.poll() is not None else "TIMEOUT"
        return Run(False, stored=stored, note=f"{why}: {stored:,}/{n:,} stored")
    elapsed = end - t0[0]
    return Run(
        True,
        rate=n / elapsed,
        stored_s=elapsed,
        sent_s=(done[0] - t0[0]) if done else elapsed,
        cpu_us_per_line=cpu / n * 1e6,
        hwm_mib=hwm,
        stored=stored,
    )


def agent_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            row = conn.execute(f"SELECT COALESCE(SUM(n_lines), 0) FROM {TABLE}").fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0  # being created, or busy for a moment


def run_agent(args: argparse.Namespace, top: Path, k: int, stream: bytes) -> Run:
    rundir = top / f"agent-{k}"
    rundir.mkdir()
    port = free_port()
    cfg = {
        "api_key": "bench-key",  # unused: collect-only (no server_url)
        "log_sources": [{"type": "syslog", "listen": f"tcp://127.0.0.1:{port}", "source": "bench"}],
        "buffer_db": str(rundir / "buffer.db"),
        "agent_log_file": str(rundir / "agent.log"),
        "buffer_max_bytes": 1 << 34,
        **args.agent_overrides,
    }
    (rundir / "config.json").write_text(json.dumps(cfg, indent=2))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ILA_AGENT_API_KEY", None)
    with open(rundir / "agent.err", "wb") as err:
        proc = subprocess.Popen(
            [args.python, "-m", "ila_agent", "run", "--config", str(rundir / "config.json")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=rundir,
        )  # fmt: skip
    try:
        wait_for(
            lambda: "syslog_listening" in _text(rundir / "agent.log") or proc.poll() is not None,
            READY_TIMEOUT_S, "the agent to listen",
        )  # fmt: skip
        if proc.poll() is not None:
            return Run(False, note=f"agent exited: {_text(rundir / 'agent.err')[-300:]}")
        return measure(proc, port, stream, args.lines, lambda: agent_count(rundir / "buffer.db"),
                       POLL_S)  # fmt: skip
    finally:
        stop(proc)


def run_sng(args: argparse.Namespace, top: Path, k: int, stream: bytes) -> Run:
    rundir = top / f"sng-{k}"
    (rundir / "disk-buffer").mkdir(parents=True)
    port, dead = free_port(), free_port()
    conf = rundir / "syslog-ng.conf"
    conf.write_text(sng_config(args.sng_conf_version, args.format, port, dead, rundir))
    ctl = rundir / "ctl"
    cmd = [args.sng, "-F", "-e", "--no-caps", "-f", str(conf), "-R", str(rundir / "persist"),
           "-c", str(ctl), "-p", str(rundir / "pid")]  # fmt: skip
    with open(rundir / "syslog-ng.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        wait_for(lambda: can_connect(port) or proc.poll() is not None, READY_TIMEOUT_S,
                 "syslog-ng to listen")  # fmt: skip
        if proc.poll() is not None:
            return Run(False, note=f"syslog-ng exited: {_text(rundir / 'syslog-ng.err')[-300:]}")
        wait_for(lambda: sng_queued(args.sng_ctl, ctl) == 0, 5, "syslog-ng stats")
        return measure(proc, port, stream, args.lines, lambda: sng_queued(args.sng_ctl, ctl),
                       SNG_POLL_S)  # fmt: skip
    finally:
        stop(proc)


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# -- report --------------------------------------------------------------------------------------


def cell(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"**{med:{fmt}}**"
    return f"**{med:{fmt}}** ({min(values):{fmt}}–{max(values):{fmt}})"


def report(args: argparse.Namespace, results: dict[str, list[Run]], mean_bytes: float) -> str:
    framing = "newline framing" if args.format == "3164" else "octet counting"
    lines = [
        f"# Syslog over TCP into the buffer: ila-agent vs syslog-ng (RFC {args.format})",
        "",
        f"Command: `{args.command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Machine: nproc {os.cpu_count()}, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}; syslog-ng {args.sng_version}  ",
        f"Input: {args.lines:,} distinct RFC {args.format} messages ({framing}), mean "
        f"{mean_bytes:.0f} bytes framed, one TCP connection from a Python sender on 127.0.0.1; "
        f"{args.runs} runs each, interleaved.  ",
        f"Load average before: {' '.join(f'{x:.2f}' for x in args.load_before)}; after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| receiver → its disk buffer | lines/s | all stored (s) | sender done (s) "
        "| CPU µs/line | peak RSS (MiB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        "ours": "ila-agent: syslog tcp → SQLite buffer (fsync per commit)",
        "sng": f"syslog-ng {args.sng_version}: "
        f"{'network()' if args.format == '3164' else 'syslog()'} tcp → "
        "disk-buffer(reliable(yes)), flow-control",
    }
    for key in ("ours", "sng"):
        runs = [r for r in results[key] if r.ok]
        failed = [r.note for r in results[key] if not r.ok]
        lines.append(
            f"| {labels[key]} | {cell([r.rate for r in runs], ',.0f')} "
            f"| {cell([r.stored_s for r in runs], '.2f')} "
            f"| {cell([r.sent_s for r in runs], '.2f')} "
            f"| {cell([r.cpu_us_per_line for r in runs], '.1f')} "
            f"| {cell([r.hwm_mib for r in runs], '.0f')} |"
        )
        if failed:
            lines.append(f"| ↳ failed runs | {'; '.join(failed)} | | | | |")
    ours = [r.rate for r in results["ours"] if r.ok]
    sng = [r.rate for r in results["sng"] if r.ok]
    if ours and sng:
        ratio = statistics.median(ours) / statistics.median(sng)
        lines += ["", f"Ratio ila-agent / syslog-ng (median lines/s): **{ratio:.2f}**"]
    lines += [
        "",
        "Cells: **median** (min–max). lines/s = messages / (last one stored − sender's "
        'connect). "sender done": its last write returned (the rest sat in socket buffers). '
        "CPU: utime+stime of the receiver's process during the run, per message. syslog-ng's "
        "reliable disk-buffer writes every message to its file but does not fsync it; "
        "ila-agent commits each loop pass (up to 64 KiB per connection) with an fsync.",
    ]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=DEFAULT_LINES)
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    ap.add_argument("--format", choices=("3164", "5424"), default="3164")
    ap.add_argument("--agent-config", action="append", default=[], metavar="KEY=JSON",
                    help="add or override an ila-agent config key (repeatable)")  # fmt: skip
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                    help="the agent's interpreter (default: .venv/bin/python)")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--no-install", action="store_true", help="never install syslog-ng")
    args = ap.parse_args(argv)
    if args.lines < 10 or args.runs < 1:
        ap.error("--lines ≥ 10, --runs ≥ 1")
    args.agent_overrides = {}
    for item in args.agent_config:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--agent-config: expected KEY=JSON, got {item!r}")
        args.agent_overrides[key] = json.loads(value)
    args.command = shlex.join([sys.executable, *sys.argv])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.sng = ensure_syslog_ng(not args.no_install)
    args.sng_ctl = str(Path(args.sng).with_name("syslog-ng-ctl"))
    args.sng_version, args.sng_conf_version = syslog_ng_versions(args.sng)
    stream = make_stream(args.lines, args.format)
    args.load_before = os.getloadavg()
    top = Path(tempfile.mkdtemp(prefix="syslog-bench-"))
    results: dict[str, list[Run]] = {"ours": [], "sng": []}
    try:
        for k in range(args.runs):
            for key, fn in (("ours", run_agent), ("sng", run_sng)):
                say(f"run {k + 1}/{args.runs}: {key} ...")
                r = fn(args, top, k, stream)
                results[key].append(r)
                verdict = "OK" if r.ok else "FAILED"
                say(f"  {verdict}: {r.rate:,.0f} lines/s, stored in {r.stored_s:.2f} s, "
                    f"cpu {r.cpu_us_per_line:.1f} µs/line {r.note}")  # fmt: skip
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        if args.keep:
            say(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    print(report(args, results, len(stream) / args.lines))
    return 0 if all(r.ok for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
