#!/usr/bin/env python3
"""Entries/s through each output: NATS JetStream, Kafka (tansu) and HTTP (the reference receiver).

    .venv/bin/python bench/broker_bench.py [--lines 100000] [--runs 3] [--batch-size 500]

The same pre-written file of N syslog-like lines goes through a fresh agent process into a fresh
destination per run; runs are interleaved (nats, kafka, http, nats, …) so that a noisy machine
hits all alike. A run's rate is N / (the moment the destination holds all N − the agent's start),
so it includes the agent's start-up and, for Kafka, the producer's first connection. The
destination is counted from outside: the NATS server's monitoring port (``/jsz``), the topic's
high watermarks, the receiver's ``/api/receiver/stats``. Prints progress on stderr and a Markdown
table (median, min–max) with the command on stdout. Needs the test extra (brokers and clients).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sample_input import write_lines  # noqa: E402
from tests.brokers import NatsServer, TansuServer, running_nats, running_tansu  # noqa: E402
from tests.procs import AgentProc, ReceiverProc  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
RUN_DEADLINE_S = 300.0  # a run that has not delivered everything by then is a TIMEOUT


def say(msg: str) -> None:
    print(f"[broker-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


@dataclass
class Target:
    """One output: how to set up its destination and count what arrived."""

    name: str
    setup: Callable[[Path, ExitStack], tuple[dict[str, Any], Callable[[], int]]]


def nats_target(tmp: Path, stack: ExitStack) -> tuple[dict[str, Any], Callable[[], int]]:
    server: NatsServer = stack.enter_context(running_nats(tmp))
    server.add_stream()  # file storage, the server's default sync_interval (2 min)
    jsz = f"http://127.0.0.1:{server.http_port}/jsz"

    def count() -> int:
        with urllib.request.urlopen(jsz, timeout=2) as answer:
            return int(json.load(answer)["messages"])

    output = {"type": "nats", "url": server.url, "subject": "ila.logs", "stream": "ILA_LOGS"}
    return {"output": output}, count


def kafka_target(tmp: Path, stack: ExitStack) -> tuple[dict[str, Any], Callable[[], int]]:
    from confluent_kafka import Consumer, TopicPartition

    server: TansuServer = stack.enter_context(running_tansu(tmp))
    server.create_topic(partitions=3)
    # Counted by reading the records from offset 0 as they come: tansu's high watermark lags
    # behind what it serves (9,518 for 10,000 records), so it cannot say when all are there.
    consumer = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "bench"})
    stack.callback(consumer.close)
    consumer.assign([TopicPartition("ila-logs", p, 0) for p in range(3)])
    seen = [0]

    def count() -> int:
        while records := consumer.consume(10_000, timeout=0.01):
            seen[0] += sum(1 for m in records if m.error() is None)
        return seen[0]

    output = {"type": "kafka", "bootstrap_servers": server.bootstrap, "topic": "ila-logs"}
    return {"output": output}, count


def http_target(tmp: Path, stack: ExitStack) -> tuple[dict[str, Any], Callable[[], int]]:
    receiver = ReceiverProc(tmp).start()
    stack.callback(receiver.stop)
    return {"server_url": receiver.url}, lambda: int(receiver.stats()["events_unique"])


TARGETS = {
    "nats": Target("NATS JetStream (nats-server, file store)", nats_target),
    "kafka": Target("Kafka (tansu, memory)", kafka_target),
    "http": Target("HTTP (reference receiver)", http_target),
}


@dataclass
class Runs:
    rates: list[float] = field(default_factory=list)
    cpu_per_100k: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def one_run(key: str, source: Path, n: int, batch_size: int, base: Path) -> tuple[float, float]:
    """(entries/s, agent CPU seconds per 100k entries) of one run into a fresh destination."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=base))
    with ExitStack() as stack:
        settings, count = TARGETS[key].setup(tmp, stack)
        agent = AgentProc(tmp, log_sources=[str(source)], batch_size=batch_size,
                          batch_interval=0.2, heartbeat_interval=5, agent_id=f"bench-{key}",
                          **settings)  # fmt: skip
        stack.callback(agent.cleanup)
        start = time.monotonic()
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        while (got := count()) < n:
            if time.monotonic() - start > RUN_DEADLINE_S:
                raise TimeoutError(f"{got} of {n} after {RUN_DEADLINE_S:g} s")
            if not agent.alive():
                raise RuntimeError(f"agent exited: {(tmp / 'agent.err').read_text()[-1000:]}")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(pid)
        if got != n:
            raise AssertionError(f"{got} entries at the destination, expected {n}")
    return n / elapsed, cpu * 100_000 / n


def cell(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    return f"**{med:{fmt}}** ({min(values):{fmt}}–{max(values):{fmt}}, n={len(values)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--targets", default="nats,kafka,http", help="comma-separated: nats,kafka,http")
    args = ap.parse_args()
    keys = [k.strip() for k in args.targets.split(",") if k.strip()]
    unknown = set(keys) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    load_before = os.getloadavg()
    began = time.monotonic()
    results = {k: Runs() for k in keys}
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as base_dir:
        base = Path(base_dir)
        source = base / "input.log"
        mean = write_lines(str(source), args.lines)
        say(f"{args.lines:,} lines, mean {mean:.1f} bytes, in {source}")
        for run in range(args.runs):
            for key in keys:
                try:
                    rate, cpu = one_run(key, source, args.lines, args.batch_size, base)
                except Exception as exc:
                    results[key].failures.append(f"{type(exc).__name__}: {exc}")
                    say(f"run {run + 1} {key}: FAILED {exc}")
                    continue
                results[key].rates.append(rate)
                results[key].cpu_per_100k.append(cpu)
                say(f"run {run + 1} {key}: {rate:,.0f} entries/s, agent CPU {cpu:.2f} s/100k")
    wall = time.monotonic() - began
    cmd = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    print(f"Command: `{cmd}` (from the repository root)\n")
    print(
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}; "
        f"Python {platform.python_version()}; load average before: "
        f"{' '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; wall time {wall:.0f} s."
    )
    print(
        f"Input: {args.lines:,} lines (mean {mean:.1f} bytes with the newline), the same file "
        f"for every run; batch_size {args.batch_size}, max_in_flight 8 (the default); runs "
        f"interleaved. Cells: **median** (min–max, n=runs).\n"
    )
    print("| output | entries/s, file → destination | agent CPU s per 100k entries |")
    print("|---|---|---|")
    for key in keys:
        r = results[key]
        note = f" ({len(r.failures)} failed: {r.failures[0]})" if r.failures else ""
        print(f"| {TARGETS[key].name} | {cell(r.rates, ',.0f')}{note} | "
              f"{cell(r.cpu_per_100k, '.2f')} |")  # fmt: skip
    return 1 if any(r.failures for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
