#!/usr/bin/env python3
"""Many files: what 10,000 tailed files cost the agent (issue: descriptors are a budget).

    .venv/bin/python bench/many_files.py [--files 10000] [--lines 100] [--runs 3] [--quick]

Measures, with the real agent and the reference receiver on 127.0.0.1, all in one run:
1. delivery of FILES files × LINES lines written before the start: wall time and agent CPU;
2. idle: the same agent once everything is delivered, CPU over 30 s: first 5 s after delivery
   (files read last may still be open), then once close_inactive (60 s) has closed them all
   (10,000 quiet files);
3. steady state: 1,000 files each written at 5 lines/s for 20 s (5,000 lines/s): CPU per line,
   RSS and descriptors open; against 1 file written at the same 5,000 lines/s (the single-file
   cost), same run;
4. memory per tracked file: RSS with FILES files tracked minus RSS with 1, divided.
Medians of --runs; progress on stderr; a Markdown table and the command on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
API_KEY = "bench-key-0123456789"
TICK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"[many_files {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


class Rig:
    """A receiver and an agent on one folder of log files."""

    def __init__(self, work: Path, pattern: str) -> None:
        self.work = work
        port_file = work / "port"
        self.receiver = subprocess.Popen(
            [PY, "-m", "ila_agent", "receiver", "--port", "0", "--api-key", API_KEY,
             "--db", str(work / "received.db"), "--ready-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        wait(port_file.exists, 20, "receiver")
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        config = {
            "server_url": self.url, "api_key": API_KEY, "log_sources": [pattern],
            "start_position": "beginning", "batch_size": 500, "batch_interval": 1,
            "heartbeat_interval": 30, "buffer_db": str(work / "buffer.db"),
            "agent_log_file": str(work / "agent.log"), "log_level": "warning",
        }  # fmt: skip
        (work / "config.json").write_text(json.dumps(config))
        self.agent = subprocess.Popen(
            [PY, "-m", "ila_agent", "run", "--config", str(work / "config.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip

    def unique(self) -> int:
        with urllib.request.urlopen(self.url + "/api/receiver/stats", timeout=10) as r:
            return int(json.load(r)["events_unique"])

    def stop(self) -> None:
        for p in (self.agent, self.receiver):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def write_files(folder: Path, files: int, lines: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with open(folder / f"dev{f:05d}.log", "w") as out:
            out.writelines(f"2026-11-30T10:00:00Z dev{f:05d} sshd: line {i:04d}\n"
                           for i in range(lines))  # fmt: skip


def delivery_and_idle(work: Path, files: int, lines: int, idle_s: float) -> dict[str, float]:
    folder = work / "logs"
    write_files(folder, files, lines)
    total = files * lines
    rig = Rig(work, str(folder / "*.log"))
    try:
        t0 = time.monotonic()
        wait(lambda: rig.unique() >= total, 900, "delivery")
        wall = time.monotonic() - t0
        delivered_cpu = cpu_s(rig.agent.pid)
        time.sleep(5)  # settle: the last acks
        idle_open = idle_pct(rig.agent.pid, idle_s)
        fds_open = fds(rig.agent.pid)
        if files > 1:  # then quiet: every file closed after close_inactive (60 s)
            wait(lambda: fds(rig.agent.pid) < 100, 300, "quiet files closed")
            time.sleep(5)
        return {
            "delivery_s": wall,
            "delivery_cpu_us_per_line": delivered_cpu / total * 1e6,
            "idle_open_pct": idle_open,
            "fds_open": fds_open,
            "idle_pct": idle_pct(rig.agent.pid, idle_s),
            "rss_kb": status_kb(rig.agent.pid, "VmRSS"),
            "fds_idle": fds(rig.agent.pid),
        }
    finally:
        rig.stop()


def idle_pct(pid: int, seconds: float) -> float:
    """The agent's CPU over ``seconds``, in % of one core."""
    c0 = cpu_s(pid)
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / seconds * 100


def steady(work: Path, files: int, rate_per_file: float, seconds: float) -> dict[str, float]:
    """``files`` files each written at ``rate_per_file`` lines/s for ``seconds``."""
    folder = work / "logs"
    folder.mkdir(parents=True)
    handles = [open(folder / f"s{f:05d}.log", "a") for f in range(files)]  # noqa: SIM115
    rig = Rig(work, str(folder / "*.log"))
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        interval = 1.0 / rate_per_file
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            for f, h in enumerate(handles):
                h.write(f"2026-11-30T10:00:00Z s{f:05d} app: steady {n:06d}\n")
                h.flush()
            written[0] += len(handles)
            n += 1
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))

    try:
        wait(lambda: rig.unique() >= 0, 30, "agent up")
        time.sleep(3)
        th = threading.Thread(target=writer, daemon=True)
        th.start()
        time.sleep(3)  # warm up
        c0, w0 = cpu_s(rig.agent.pid), written[0]
        peak_fds = 0
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            peak_fds = max(peak_fds, fds(rig.agent.pid))
            time.sleep(0.5)
        c1, w1, d1 = cpu_s(rig.agent.pid), written[0], rig.unique()
        stop.set()
        th.join()
        wait(lambda: rig.unique() >= written[0], 120, "steady delivery")
        return {
            "cpu_us_per_line": (c1 - c0) / max(1, w1 - w0) * 1e6,
            "rss_kb": status_kb(rig.agent.pid, "VmRSS"),
            "fds_peak": peak_fds,
            "lines_per_s": (w1 - w0) / seconds,
            "lag_lines": w1 - d1,  # written but not yet delivered at the window's end
        }
    finally:
        for h in handles:
            h.close()
        rig.stop()


def med(values: list[float]) -> str:
    m = statistics.median(values)
    return (
        f"**{m:,.2f}** ({min(values):,.2f}–{max(values):,.2f})"
        if len(values) > 1
        else f"**{m:,.2f}**"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--lines", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--steady-seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="2,000 files, 1 run, 10 s windows")
    args = ap.parse_args()
    if args.quick:
        args.files, args.runs, args.idle_seconds, args.steady_seconds = 2000, 1, 10.0, 10.0
    results: dict[str, list[float]] = {}
    load_before = os.getloadavg()
    started = time.monotonic()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="many-files-") as tmp:
            base = Path(tmp)
            say(f"run {run + 1}: delivery of {args.files} × {args.lines} lines, then idle")
            d = delivery_and_idle(base / "a", args.files, args.lines, args.idle_seconds)
            say(f"  {d}")
            say(f"run {run + 1}: one tracked file (memory baseline)")
            one = delivery_and_idle(base / "b", 1, args.lines, 3.0)
            say(f"run {run + 1}: steady, 1,000 files × 5 lines/s")
            many = steady(base / "c", 1000, 5.0, args.steady_seconds)
            say(f"  {many}")
            say(f"run {run + 1}: steady, 1 file × 5,000 lines/s")
            single = steady(base / "d", 1, 5000.0, args.steady_seconds)
            say(f"  {single}")
            shutil.rmtree(base, ignore_errors=True)
        for k, v in d.items():
            results.setdefault(k, []).append(v)
        results.setdefault("kb_per_file", []).append((d["rss_kb"] - one["rss_kb"]) / args.files)
        for k, v in many.items():
            results.setdefault(f"many_{k}", []).append(v)
        for k, v in single.items():
            results.setdefault(f"single_{k}", []).append(v)
        results.setdefault("ratio", []).append(many["cpu_us_per_line"] / single["cpu_us_per_line"])
    cmd = " ".join([Path(sys.executable).name, *sys.argv])
    print(f"Command: `{cmd}`  \nMachine: {os.cpu_count()} CPUs, load before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; runs {args.runs}; "
          f"wall {time.monotonic() - started:.0f} s. Cells: median (min–max).\n")  # fmt: skip
    n = args.files
    rows = [
        (f"Deliver {n:,} files × {args.lines} lines: wall s", "delivery_s", "–"),
        ("… agent CPU µs per line", "delivery_cpu_us_per_line", "–"),
        (
            "Idle, 5 to 35 s after delivery: % of one core",
            "idle_open_pct",
            "–",
        ),
        ("… descriptors open then", "fds_open", "–"),
        (
            f"Idle with {n:,} quiet files (closed after close_inactive): % of one core",
            "idle_pct",
            "≤ 0.5",
        ),
        (f"Descriptors open when idle ({n:,} files tracked)", "fds_idle", "< 1,024"),
        ("Memory per tracked file, KiB", "kb_per_file", "–"),
        ("Steady, 1,000 files × 5 lines/s: agent CPU µs per line", "many_cpu_us_per_line", "–"),
        ("Steady, 1 file × 5,000 lines/s: agent CPU µs per line", "single_cpu_us_per_line", "–"),
        ("… ratio many/single", "ratio", "≤ 1.5"),
        ("Steady, 1,000 files: RSS KiB", "many_rss_kb", "–"),
        ("Steady, 1,000 files: descriptors open (peak)", "many_fds_peak", "–"),
    ]
    print("| measurement | value | target |\n|---|---|---|")
    for label, key, target in rows:
        print(f"| {label} | {med(results[key])} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
