"""Soak: N cycles of random faults against the real agent and the real reference receiver.

A writer appends numbered, unique lines at a steady rate to ``logs/app.log`` while the agent
(``python -m ila_agent run``) ships them to the reference receiver (``python -m ila_agent
receiver --db``). Each cycle applies one fault, drawn with a seeded generator: kill -9 of the
agent, rename+create rotation, copytruncate rotation, a server outage (the receiver killed and
restarted on the same port and database), a burst of 503s, or 413 answers (the agent splits).
At the end the script waits (polling, with a deadline) for the agent to deliver everything, then
accounts for every line: written, delivered, lost (real, or inside copytruncate's documented
window), duplicated (same event_uid resent, or a line re-read under a new event_uid), each per
cause. Method and definitions: bench/SOAK.md.

    /work/main/.venv/bin/python bench/soak.py                      # 100 cycles, seed 1
    /work/main/.venv/bin/python bench/soak.py --cycles 20 --seed 7 --quick
    /work/main/.venv/bin/python bench/soak.py --cycles 10 --workdir /tmp --keep

The Markdown summary and one JSON line go to stdout, progress to stderr. Exit status 0 only
when no line was lost outside the copytruncate window, no unexpected entry arrived, nothing was
dead-lettered and the duplicates are within the bound.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.procs import AgentProc, ReceiverProc, Writer, wait_until  # noqa: E402

KILL9 = "kill9"
RENAME = "rotate-rename"
COPYTRUNCATE = "rotate-copytruncate"
OUTAGE = "outage"
BURST_503 = "503-burst"
SPLIT_413 = "413-split"
FAULT_KINDS = (KILL9, RENAME, COPYTRUNCATE, OUTAGE, BURST_503, SPLIT_413)
BEFORE_FAULTS = "before-first-fault"
KILL_KINDS = (KILL9, OUTAGE)  # faults that kill a process holding batches in flight

BATCH_SIZE = 50
MAX_IN_FLIGHT = 8
IN_FLIGHT_WINDOW = BATCH_SIZE * MAX_IN_FLIGHT
TAG = "soak"
LOG_NAME = "app.log"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- options and timings -------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """How long things last (seconds, uniform ranges); none of these is a synchronisation."""

    settle: tuple[float, float]  # normal running between two faults
    kill_after: tuple[float, float]  # the random moment of the kill -9
    kill_down: tuple[float, float]  # the agent stays dead this long
    outage: tuple[float, float]  # the receiver stays down this long
    split_hold: tuple[float, float]  # 413s keep coming this long after the first one
    ct_gap: tuple[float, float]  # logrotate's copy → truncate gap
    burst_503: tuple[int, int]  # how many 503s in a burst
    idle: float  # the final wait ends when nothing arrived for this long and nothing is pending
    drain_deadline: float  # the final wait never lasts longer
    step_deadline: float  # deadline of each wait inside a fault


NORMAL = Timing(
    settle=(0.5, 2.5),
    kill_after=(0.0, 1.5),
    kill_down=(0.0, 1.5),
    outage=(1.0, 5.0),
    split_hold=(0.2, 1.5),
    ct_gap=(0.0, 0.3),
    burst_503=(2, 8),
    idle=6.0,
    drain_deadline=120.0,
    step_deadline=30.0,
)
QUICK = Timing(
    settle=(0.3, 1.0),
    kill_after=(0.0, 0.8),
    kill_down=(0.0, 0.6),
    outage=(0.5, 2.0),
    split_hold=(0.1, 0.5),
    ct_gap=(0.0, 0.2),
    burst_503=(2, 4),
    idle=4.0,
    drain_deadline=45.0,
    step_deadline=20.0,
)


@dataclass(frozen=True)
class SoakOptions:
    cycles: int = 100
    seed: int = 1
    rate: float = 200.0
    workdir: Path | None = None  # the temp dir is created inside it
    keep: bool = False
    quick: bool = False

    @property
    def timing(self) -> Timing:
        return QUICK if self.quick else NORMAL

    def command(self) -> str:
        """The command line that runs exactly this soak."""
        args = [sys.executable, "bench/soak.py", "--cycles", str(self.cycles)]
        args += ["--seed", str(self.seed), "--rate", f"{self.rate:g}"]
        if self.workdir is not None:
            args += ["--workdir", str(self.workdir)]
        args += ["--keep"] * self.keep + ["--quick"] * self.quick
        return shlex.join(args)


def agent_config(server_url: str, log_glob: str) -> dict[str, Any]:
    """The agent's configuration; every key the soak depends on is explicit."""
    return {
        "server_url": server_url,
        "log_sources": [log_glob],
        "batch_size": BATCH_SIZE,
        "batch_interval": 0.2,
        "heartbeat_interval": 1,
        "retry_interval": 1,
        "poll_interval": 0.2,
        "partial_line_timeout": 1,
        "connect_timeout": 2,
        "request_timeout": 5,
        "start_position": "beginning",
        "rotate_grace": 3,
        "max_in_flight": MAX_IN_FLIGHT,
    }


# -- what happened ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultRecord:
    """One cycle: its fault, when it ran (wall clock, the receiver's clock) and what it did."""

    cycle: int
    kind: str
    started: float  # time.time() when the fault began
    ended: float  # when the fault was over (the system back to normal)
    seq_start: int  # the writer's next sequence number when the fault began
    detail: str


@dataclass(frozen=True)
class CopyTruncate:
    """What the soak did in one copytruncate, so the loss window is computed, not guessed."""

    cycle: int
    copy_name: str
    first_seq: int  # the first line of the file content that was copied
    copy_last_seq: int  # the last complete line in the copy (first_seq - 1: empty copy)
    truncate_seq: int  # the writer's next sequence number at the truncate
    size_at_copy: int
    size_at_truncate: int

    def in_window(self, seq: int) -> bool:
        return self.first_seq <= seq < self.truncate_seq

    def in_copy(self, seq: int) -> bool:
        return self.first_seq <= seq <= self.copy_last_seq


@dataclass(frozen=True)
class WindowFigures:
    """One copytruncate's loss window, as the receiver saw it."""

    cycle: int
    in_copy: int  # lines of the copied content that are in the copy
    between: int  # lines written between the copy and the truncate (in no file afterwards)
    read_to: int | None  # the last line of that content that was delivered, if any
    lost_unread: int  # lost, in the copy, after read_to: the allowed window
    lost_between: int  # lost, written between copy and truncate: the allowed window
    lost_gap: int  # lost before read_to: the agent read past them, so a real loss

    @property
    def allowed(self) -> int:
        return self.lost_unread + self.lost_between


def window_figures(ct: CopyTruncate, read: set[int]) -> tuple[WindowFigures, list[int]]:
    """The figures of one window and its unread lines that the window does not explain.
    ``read``: the lines the agent is known to have read (delivered, or in its buffer)."""
    seqs = range(ct.first_seq, ct.truncate_seq)
    read_to = max((s for s in seqs if s in read), default=None)
    tail_from = ct.first_seq if read_to is None else read_to + 1
    gap = [s for s in seqs if s < tail_from and s not in read]
    lost_tail = [s for s in seqs if s >= tail_from]
    figures = WindowFigures(
        cycle=ct.cycle,
        in_copy=ct.copy_last_seq - ct.first_seq + 1,
        between=ct.truncate_seq - ct.copy_last_seq - 1,
        read_to=read_to,
        lost_unread=sum(ct.in_copy(s) for s in lost_tail),
        lost_between=sum(not ct.in_copy(s) for s in lost_tail),
        lost_gap=len(gap),
    )
    return figures, gap


@dataclass(frozen=True)
class CauseFigures:
    """One row of the per-cause table."""

    cause: str
    cycles: int
    lost_real: int
    lost_window: int
    duplicated: int
    bound: int  # the duplicates this cause may bring (0 for causes that should bring none)


@dataclass(frozen=True)
class Accounting:
    """Every written line, accounted for. Counts are lines (entries) unless said otherwise."""

    written: int
    delivered: int  # distinct written lines stored by the receiver
    received: int  # entries in accepted batches, duplicates included (events_received)
    lost_real: int  # written, never delivered, outside every copytruncate window
    lost_window_unread: int  # in a copy, not yet read by the agent at the truncate
    lost_window_between: int  # written between a copy and its truncate: in no file
    dup_same_uid: int  # resent with the same event_uid (receiver: received - unique)
    dup_new_uid: int  # the same line stored again under another event_uid (a re-read)
    unexpected: int  # stored entries that are not a line the writer wrote
    still_pending: int  # not delivered, still in the agent's buffer at the end (deadline)
    dead_letter: int  # not delivered, in the agent's dead-letter set
    kills: int  # agent kill -9s + receiver kills: events that may lose answers in flight
    bound: int  # IN_FLIGHT_WINDOW per kill
    by_cause: tuple[CauseFigures, ...]
    windows: tuple[WindowFigures, ...]
    lost_real_sample: tuple[int, ...]  # the first lost sequence numbers, for diagnosis

    @property
    def lost_window(self) -> int:
        return self.lost_window_unread + self.lost_window_between

    @property
    def duplicated(self) -> int:
        return self.dup_same_uid + self.dup_new_uid

    @property
    def failures(self) -> tuple[str, ...]:
        """Why the run fails; empty when it passes."""
        checks = (
            (self.lost_real == 0, f"{self.lost_real} lines lost outside a copytruncate window"),
            (self.duplicated <= self.bound, f"{self.duplicated} duplicates > bound {self.bound}"),
            (self.unexpected == 0, f"{self.unexpected} unexpected entries"),
            (self.dead_letter == 0, f"{self.dead_letter} lines dead-lettered"),
            (self.still_pending == 0, f"{self.still_pending} lines still pending at the end"),
            (self.closed, "the accounting does not close (a harness bug)"),
        )
        return tuple(why for ok, why in checks if not ok)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def closed(self) -> bool:
        """Every written line is in exactly one row, every received entry too."""
        lines = self.delivered + self.lost_window + self.lost_real
        entries = self.delivered + self.duplicated + self.unexpected
        return (
            lines + self.still_pending + self.dead_letter == self.written
            and entries == self.received
        )


@dataclass(frozen=True)
class SoakResult:
    options: SoakOptions
    command: str
    started_at: str  # UTC
    duration_s: float
    cycles_s: float
    drain_s: float
    drain_end: str  # "all lines arrived", "agent idle", or "deadline"
    faults: tuple[FaultRecord, ...]
    copytruncates: tuple[CopyTruncate, ...]
    accounting: Accounting
    counters: tuple[tuple[str, int], ...]  # receiver and process counters, for the record
    stalls: tuple[str, ...]  # faults the system did not recover from within the deadline
    agent_exits: int  # agent exits the soak did not cause

    @property
    def failures(self) -> tuple[str, ...]:
        """Why the run fails: the accounting's reasons, stalls, exits; empty when it passes."""
        exits = (f"the agent exited on its own {self.agent_exits} times",) * (self.agent_exits > 0)
        return self.accounting.failures + tuple(f"stall: {s}" for s in self.stalls) + exits

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        acc = self.accounting
        return {
            "command": self.command,
            "seed": self.options.seed,
            "cycles": self.options.cycles,
            "rate": self.options.rate,
            "quick": self.options.quick,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 1),
            "cycles_s": round(self.cycles_s, 1),
            "drain_s": round(self.drain_s, 1),
            "drain_end": self.drain_end,
            "written": acc.written,
            "delivered": acc.delivered,
            "received": acc.received,
            "lost_real": acc.lost_real,
            "lost_window": acc.lost_window,
            "lost_window_unread": acc.lost_window_unread,
            "lost_window_between": acc.lost_window_between,
            "duplicated": acc.duplicated,
            "dup_same_uid": acc.dup_same_uid,
            "dup_new_uid": acc.dup_new_uid,
            "unexpected": acc.unexpected,
            "dead_letter": acc.dead_letter,
            "still_pending": acc.still_pending,
            "closed": acc.closed,
            "kills": acc.kills,
            "duplicate_bound": acc.bound,
            "lost_real_in_window_gap": sum(w.lost_gap for w in acc.windows),
            "by_cause": [asdict(c) for c in acc.by_cause],
            "copytruncate_windows": [asdict(w) for w in acc.windows],
            "lost_real_sample": list(acc.lost_real_sample),
            "counters": dict(self.counters),
            "stalls": list(self.stalls),
            "passed": self.passed,
            "failures": list(self.failures),
        }


# -- the writer ------------------------------------------------------------------------------


class RateWriter(Writer):
    """tests.procs.Writer at a steady rate: lines ``soak 00000042`` are due at ``n / rate``
    seconds after the start (a late tick catches up). ``lock`` pauses it, as in Writer."""

    def __init__(self, path: Path, rate: float) -> None:
        super().__init__(path, TAG, per_tick=1, tick=min(0.01, 1.0 / rate))
        self.rate = rate

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            with self.lock:
                due = int((time.monotonic() - t0) * self.rate) - self.n
                if due > 0:
                    batch = [f"{self.tag} {self.n + i:08d}" for i in range(due)]
                    self.f.write("".join(x + "\n" for x in batch))
                    self.f.flush()
                    self.written.extend(batch)
                    self.n += due
            time.sleep(self.tick)


def parse_seq(text: str) -> int | None:
    """The sequence number of a line the writer wrote, else None."""
    head, _, num = text.partition(" ")
    if head != TAG or len(num) != 8 or not num.isdigit():
        return None
    return int(num)


# -- what the receiver has ---------------------------------------------------------------------


class EventTail:
    """Reads the receiver's stored events incrementally (they survive its restarts: --db)."""

    def __init__(self, receiver: ReceiverProc) -> None:
        self.receiver = receiver
        self.after = 0
        self.stored: Counter[int] = Counter()  # seq -> events stored (distinct event_uids)
        self.reread_at: list[tuple[int, float]] = []  # (seq, agent read time) of extra uids
        self.unexpected: list[str] = []

    def update(self) -> int:
        """Fetch what is new; return how many events that was."""
        new = 0
        while True:
            page = self.receiver.get("/api/receiver/events", after=self.after, limit=10000)
            events = page["events"]
            if not events:
                return new
            for ev in events:
                self._add(ev)
            new += len(events)
            self.after = events[-1]["id"]

    def _add(self, ev: dict[str, Any]) -> None:
        seq = parse_seq(ev["log_text"] or "")
        if seq is None:
            self.unexpected.append(str(ev["log_text"])[:80])
            return
        self.stored[seq] += 1
        if self.stored[seq] > 1:
            self.reread_at.append((seq, rfc3339_to_epoch(ev["timestamp"])))


def rfc3339_to_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# -- the soak ----------------------------------------------------------------------------------


def pick_port() -> int:
    """A free port below the ephemeral range. The receiver is restarted on the same port;
    inside that range, any outgoing connection on the machine may take the port as its local
    port while the receiver is down, and the restart could not bind it."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()  # not the soak's generator: the faults stay reproducible
    for _ in range(500):
        port = rng.randrange(max(1024, low - 12000), low)
        if port_free(port):
            return port
    raise RuntimeError("no free port below the ephemeral range")


def port_free(port: int) -> bool:
    """Whether the receiver could bind 127.0.0.1:port now (with SO_REUSEADDR, as it does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Soak:
    """Mutable state of one soak run; ``run_soak`` drives it."""

    def __init__(self, options: SoakOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.rng = random.Random(options.seed)
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.live = self.logs / LOG_NAME
        self.live.touch()
        self.receiver = ReceiverProc(workdir, port=pick_port())
        self.agent = AgentProc(workdir, **agent_config(self.receiver.url, str(self.logs / "*.log")))
        self.agent.config_path.chmod(0o600)  # it holds the API key
        self.tail = EventTail(self.receiver)
        self.writer = RateWriter(self.live, options.rate)  # opens the file; started later
        self.faults: list[FaultRecord] = []
        self.copytruncates: list[CopyTruncate] = []
        self.live_first_seq = 0  # first line of the live file's current content
        self.receiver_starts = 0
        self.agent_exits = 0  # exits the soak did not cause (an agent bug)
        self.stalls: list[str] = []  # faults the system did not recover from in time

    @property
    def timing(self) -> Timing:
        return self.options.timing

    def uniform(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)

    # -- processes --

    def start(self) -> None:
        self.start_receiver()
        self.agent.start()
        self.wait_registrations(1)
        self.writer.start()

    def start_receiver(self) -> None:
        port = self.receiver.port
        wait_until(lambda: port_free(port), self.timing.step_deadline, 0.1, f"port {port} free")
        self.receiver.start()
        self.receiver_starts += 1

    def registrations(self) -> int:
        return sum(a["registrations"] for a in self.receiver.get("/api/receiver/agents")["agents"])

    def wait_registrations(self, n: int) -> None:
        wait_until(
            lambda: self.registrations() >= n, self.timing.step_deadline, 0.1, f"registration {n}"
        )

    def recovered(self, cycle: int, what: str, cond: Callable[[], Any]) -> bool:
        """Wait for the system to recover from a fault. At the deadline the soak goes on (the
        accounting decides about the lines) but the stall is recorded and fails the run."""
        try:
            wait_until(cond, self.timing.step_deadline, 0.1, what)
            return True
        except AssertionError:
            self.stalls.append(f"cycle {cycle}: no {what} within {self.timing.step_deadline:g}s")
            log(f"STALL in cycle {cycle}: no {what} within {self.timing.step_deadline:g}s")
            self.diagnose()
            return False

    def accepted_batch(self, cycle: int, after: int) -> bool:
        """Until the receiver accepts a batch (the system is delivering again)."""
        return self.recovered(
            cycle, "batch accepted", lambda: self.receiver.stats()["batches"] > after
        )

    def diagnose(self) -> None:
        """The tails of the children's logs, to stderr (the temp dir may be removed)."""
        for name in ("agent.err", "receiver.err"):
            path = self.workdir / name
            lines = path.read_text(errors="replace").splitlines()[-25:] if path.exists() else []
            log(f"--- last lines of {name} ---\n" + "\n".join(lines))

    def stop_all(self) -> None:
        """Kill every child this soak started; safe to call in any state."""
        if self.writer.is_alive():
            self.writer.finish()
        self.writer.f.close()
        self.agent.cleanup()
        self.receiver.stop()

    # -- the cycles --

    def fault_order(self) -> list[str]:
        """Random, seeded; each kind equally often (shuffled rounds of every kind)."""
        order: list[str] = []
        while len(order) < self.options.cycles:
            kinds = list(FAULT_KINDS)
            self.rng.shuffle(kinds)
            order += kinds
        return order[: self.options.cycles]

    def run_cycles(self) -> None:
        faults: dict[str, Callable[[int], str]] = {
            KILL9: self.fault_kill9,
            RENAME: self.fault_rename,
            COPYTRUNCATE: self.fault_copytruncate,
            OUTAGE: self.fault_outage,
            BURST_503: self.fault_503,
            SPLIT_413: self.fault_413,
        }
        for cycle, kind in enumerate(self.fault_order(), 1):
            started, seq_start = time.time(), self.writer.n
            detail = faults[kind](cycle)
            self.faults.append(FaultRecord(cycle, kind, started, time.time(), seq_start, detail))
            log(f"cycle {cycle}/{self.options.cycles} {kind}: {detail}")
            time.sleep(self.uniform(self.timing.settle))  # normal running, not a sync
            self.check_alive(cycle)

    def check_alive(self, cycle: int) -> None:
        """The agent must never exit on its own: count it, say it, start it again."""
        if not self.agent.alive():
            self.agent_exits += 1
            log(f"cycle {cycle}: the agent EXITED ON ITS OWN; see agent.err; starting it again")
            self.agent.start()

    def fault_kill9(self, cycle: int) -> str:
        after = self.uniform(self.timing.kill_after)
        down = self.uniform(self.timing.kill_down)
        time.sleep(after)  # the random moment
        self.agent.kill9()
        time.sleep(down)  # lines written while the agent is dead
        regs, batches = self.registrations(), self.receiver.stats()["batches"]
        t0 = time.monotonic()
        self.agent.start()
        ok = self.recovered(cycle, "registration", lambda: self.registrations() > regs)
        ok = ok and self.accepted_batch(cycle, batches)
        back = f"after {time.monotonic() - t0:.2f}s" if ok else "NOT in time (stall)"
        return f"kill -9 at +{after:.2f}s, down {down:.2f}s, delivering again {back}"

    def fault_rename(self, cycle: int) -> str:
        rotated = self.logs / f"{LOG_NAME}.{cycle}"
        late = self.rng.randint(1, 30)
        with self.writer.lock:
            os.rename(self.live, rotated)
            n_at_rename = self.writer.n
        # Like a daemon before its HUP: a few lines still go to the renamed file.
        wait_until(
            lambda: self.writer.n >= n_at_rename + late,
            self.timing.step_deadline,
            0.005,
            "late lines into the renamed file",
        )
        with self.writer.lock:
            self.writer.reopen()
            self.live_first_seq = self.writer.n
        return (
            f"{LOG_NAME} -> {rotated.name} at line {n_at_rename}, "
            f"{self.live_first_seq - n_at_rename} lines after the rename, reopened"
        )

    def fault_copytruncate(self, cycle: int) -> str:
        copy = self.logs / f"{LOG_NAME}.{cycle}"
        first = self.live_first_seq
        shutil.copyfile(self.live, copy)  # the writer keeps appending meanwhile
        size_at_copy = copy.stat().st_size
        time.sleep(self.uniform(self.timing.ct_gap))  # logrotate's copy → truncate gap
        with self.writer.lock:
            size_at_truncate = self.live.stat().st_size
            truncate_seq = self.writer.n
            os.truncate(self.live, 0)
            self.live_first_seq = truncate_seq
        ct = CopyTruncate(
            cycle, copy.name, first, copy_last_seq(copy, first), truncate_seq,
            size_at_copy, size_at_truncate,
        )  # fmt: skip
        self.copytruncates.append(ct)
        between = ct.truncate_seq - ct.copy_last_seq - 1
        return (
            f"copy {copy.name} holds lines {ct.first_seq}..{ct.copy_last_seq} ({size_at_copy} B);"
            f" {between} lines written before the truncate at {size_at_truncate} B"
        )

    def fault_outage(self, cycle: int) -> str:
        down = self.uniform(self.timing.outage)
        batches = self.receiver.stats()["batches"]
        self.receiver.stop()  # SIGKILL: answers in flight are lost
        time.sleep(down)  # the outage itself
        t0 = time.monotonic()
        self.start_receiver()
        ok = self.accepted_batch(cycle, batches)
        back = f"after {time.monotonic() - t0:.2f}s" if ok else "NOT in time (stall)"
        return f"receiver killed, down {down:.2f}s, delivering again {back}"

    def fault_503(self, cycle: int) -> str:
        n = self.rng.randint(*self.timing.burst_503)
        answers: list[dict[str, Any]] = [
            {"status": 503, "headers": {"Retry-After": "1"}}
            if self.rng.random() < 0.25
            else {"status": 503}
            for _ in range(n)
        ]
        self.receiver.script("ingest-batch", answers)
        used = self.recovered(
            cycle,
            "use of every scripted 503",
            lambda: self.receiver.get("/api/receiver/config")["scripts"]["ingest-batch"] == 0,
        )
        if not used:
            self.receiver.configure(reset=True)  # no 503 left over for a later cycle
        n_ra = sum("headers" in a for a in answers)
        return f"{n} scripted 503s ({n_ra} with Retry-After) " + ("answered" if used else "STALL")

    def fault_413(self, cycle: int) -> str:
        """413 for every batch larger than a random max_batch, until one was split."""
        limit = self.rng.randint(5, 25)
        last_request = self.last_request_id()
        self.receiver.configure(max_batch=limit)
        try:
            if self.recovered(cycle, "413", lambda: self.count_status(413, last_request)):
                time.sleep(self.uniform(self.timing.split_hold))  # the fault lasts a while
        finally:
            self.receiver.configure(max_batch=None)
        return f"max_batch {limit}: {self.count_status(413, last_request)} batches answered 413"

    def last_request_id(self) -> int:
        page = self.receiver.get("/api/receiver/requests", limit=100000)["requests"]
        return int(page[-1]["id"]) if page else 0

    def count_status(self, status: int, after: int) -> int:
        page = self.receiver.get("/api/receiver/requests", after=after, limit=100000)
        return sum(r["status"] == status for r in page["requests"])

    # -- the end --

    def drain(self, written: int) -> tuple[str, float]:
        """Wait until every line outside the copytruncate windows has arrived and nothing is
        pending, or the agent has been idle (nothing new, nothing pending) long enough."""
        t0 = time.monotonic()
        missing = {s for s in range(written) if not self.in_any_window(s)}
        waiter = DrainWaiter(self, missing, self.timing.idle)
        try:
            wait_until(waiter, self.timing.drain_deadline, 0.25, "the agent to deliver")
        except AssertionError:
            waiter.outcome = "deadline"
        return waiter.outcome, time.monotonic() - t0

    def in_any_window(self, seq: int) -> bool:
        return any(ct.in_window(seq) for ct in self.copytruncates)


def copy_last_seq(copy: Path, first_seq: int) -> int:
    """The last complete line in the copy; checks the copy holds exactly first_seq.. in order."""
    data = copy.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines()
    seqs = [parse_seq(line) for line in complete]
    expected = list(range(first_seq, first_seq + len(seqs)))
    if seqs != expected:
        raise RuntimeError(f"harness: {copy.name} does not hold lines {first_seq}.. in order")
    return first_seq + len(seqs) - 1


class DrainWaiter:
    """The condition of the final wait (for wait_until): truthy when done."""

    def __init__(self, soak: Soak, missing: set[int], idle: float) -> None:
        self.soak = soak
        self.missing = missing
        self.idle = idle
        self.last_progress = time.monotonic()
        self.next_status = 0.0
        self.outcome = "deadline"

    def __call__(self) -> bool:
        if self.soak.tail.update():
            self.last_progress = time.monotonic()
        self.missing.difference_update(self.soak.tail.stored)
        now = time.monotonic()
        idle = now - self.last_progress >= self.idle
        if (self.missing and not idle) or now < self.next_status:
            return False
        self.next_status = now + 1.0  # `status` is a process start: at most once a second
        if self.soak.agent.status()["pending"] != 0:
            return False
        self.soak.tail.update()
        self.missing.difference_update(self.soak.tail.stored)
        self.outcome = "agent idle" if self.missing else "all lines arrived"
        return True


# -- accounting --------------------------------------------------------------------------------


def cause_at(faults: Sequence[FaultRecord], when: float) -> str:
    """The kind of the latest fault that began at or before ``when`` (wall clock)."""
    starts = [f.started for f in faults]
    i = bisect.bisect_right(starts, when)
    return faults[i - 1].kind if i else BEFORE_FAULTS


def cause_of_seq(faults: Sequence[FaultRecord], seq: int) -> str:
    """The kind of the cycle during which line ``seq`` was written."""
    i = bisect.bisect_right([f.seq_start for f in faults], seq)
    return faults[i - 1].kind if i else BEFORE_FAULTS


def account(
    written: int,
    tail: EventTail,
    batches: Iterable[dict[str, Any]],
    stats: dict[str, int],
    faults: Sequence[FaultRecord],
    copytruncates: Sequence[CopyTruncate],
    buffered: Buffered,
) -> Accounting:
    """The exact accounting from what the writer wrote, what the receiver stored and what
    the agent's buffer still holds (after the agent stopped: nothing moves any more)."""
    delivered = {s for s in tail.stored if 0 <= s < written}
    pending = buffered.pending - delivered
    dead = buffered.dead - delivered
    read = delivered | pending | dead
    lost = [s for s in range(written) if s not in read]
    windows: list[WindowFigures] = []
    gaps: set[int] = set()
    for ct in copytruncates:
        figures, gap = window_figures(ct, read)
        windows.append(figures)
        gaps.update(gap)
    window = {s for s in lost if s not in gaps and any(ct.in_window(s) for ct in copytruncates)}
    real = [s for s in lost if s not in window]
    dup_causes: Counter[str] = Counter()
    for b in batches:
        if b["duplicates"]:
            dup_causes[cause_at(faults, b["received_at"])] += b["duplicates"]
    for _seq, read_at in tail.reread_at:
        dup_causes[cause_at(faults, read_at)] += 1
    kills = sum(f.kind in KILL_KINDS for f in faults)
    return Accounting(
        written=written,
        delivered=len(delivered),
        received=stats["events_received"],
        lost_real=len(real),
        lost_window_unread=sum(w.lost_unread for w in windows),
        lost_window_between=sum(w.lost_between for w in windows),
        dup_same_uid=stats["events_received"] - stats["events_unique"],
        dup_new_uid=len(tail.reread_at),
        unexpected=len(tail.unexpected) + sum(1 for s in tail.stored if s >= written),
        still_pending=len(pending),
        dead_letter=len(dead),
        kills=kills,
        bound=kills * IN_FLIGHT_WINDOW,
        by_cause=by_cause(faults, real, len(window), dup_causes),
        windows=tuple(windows),
        lost_real_sample=tuple(real[:20]),
    )


def by_cause(
    faults: Sequence[FaultRecord],
    real: Sequence[int],
    n_window: int,
    dups: Counter[str],
) -> tuple[CauseFigures, ...]:
    """Real losses by the cycle that wrote them; window losses to copytruncate (whichever
    cycle wrote the lines); duplicates as attributed by ``account``."""
    cycles = Counter(f.kind for f in faults)
    lost_real = Counter(cause_of_seq(faults, s) for s in real)
    lost_window = Counter({COPYTRUNCATE: n_window})
    rows = []
    for cause in (BEFORE_FAULTS, *FAULT_KINDS):
        figures = (cycles[cause], lost_real[cause], lost_window[cause], dups[cause])
        if cause == BEFORE_FAULTS and not any(figures):
            continue
        bound = cycles[cause] * IN_FLIGHT_WINDOW if cause in KILL_KINDS else 0
        rows.append(CauseFigures(cause, *figures, bound))
    return tuple(rows)


# -- the report --------------------------------------------------------------------------------


def render_markdown(result: SoakResult) -> str:
    acc = result.accounting
    opts = result.options
    n_agent_kills = sum(f.kind == KILL9 for f in result.faults)
    n_outages = acc.kills - n_agent_kills
    verdict = "**PASS**" if result.passed else "**FAIL**: " + "; ".join(result.failures)
    rows = [
        ("written", acc.written),
        ("delivered (distinct written lines stored by the receiver)", acc.delivered),
        ("received (entries in accepted batches, duplicates included)", acc.received),
        ("**lost, real** (not explained by a copytruncate window)", f"**{acc.lost_real}**"),
        (
            "… of which inside a window but before a delivered line (the agent read past them)",
            sum(w.lost_gap for w in acc.windows),
        ),
        ("lost, copytruncate window: in the copy, unread at the truncate", acc.lost_window_unread),
        ("lost, copytruncate window: written between copy and truncate", acc.lost_window_between),
        ("duplicated: resent with the same event_uid", acc.dup_same_uid),
        ("duplicated: stored again under a new event_uid (re-read)", acc.dup_new_uid),
        ("**duplicated, total**", f"**{acc.duplicated}**"),
        (
            f"duplicate bound: {MAX_IN_FLIGHT} in flight × {BATCH_SIZE} × "
            f"({n_agent_kills} agent kills + {n_outages} receiver kills)",
            acc.bound,
        ),
        ("unexpected entries (not a line the writer wrote)", acc.unexpected),
        ("not delivered: still pending in the agent's buffer at the end", acc.still_pending),
        ("not delivered: in the agent's dead-letter set", acc.dead_letter),
        ("accounting closed (every line and entry in exactly one row)", acc.closed),
        ("verdict", verdict),
    ]
    out = [
        f"## Soak: {opts.cycles} cycles, seed {opts.seed}, {opts.rate:g} lines/s"
        + (" (--quick)" if opts.quick else ""),
        "",
        f"Command: `{result.command}`  ",
        f"Started {result.started_at}; duration {result.duration_s:.1f} s (cycles "
        f"{result.cycles_s:.1f} s, final wait {result.drain_s:.1f} s: {result.drain_end}).",
        "",
        "| figure | lines |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "| cause | cycles | lost, real | lost, copytruncate window | duplicated | dup. bound |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {c.cause} | {c.cycles} | {c.lost_real} | {c.lost_window} | {c.duplicated} "
            f"| {c.bound} |"
            for c in acc.by_cause
        ),
        "",
        *render_windows(acc.windows),
        "Counters: " + ", ".join(f"{k} {v}" for k, v in result.counters),
    ]
    if acc.lost_real_sample:
        out.append(f"First lines lost outside a window: {list(acc.lost_real_sample)}")
    return "\n".join(out)


def render_windows(windows: Sequence[WindowFigures]) -> list[str]:
    """One row per copytruncate: its window and what of it was lost."""
    if not windows:
        return []
    rows = [
        f"| {w.cycle} | {w.in_copy} | {w.between} | "
        f"{'-' if w.read_to is None else w.read_to} | {w.lost_unread} | {w.lost_between} "
        f"| {w.lost_gap} |"
        for w in windows
    ]
    return [
        "| copytruncate in cycle | lines in the copy | written between copy and truncate "
        "| last line delivered | lost: unread part of the copy | lost: between | "
        "lost before a delivered line (real) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


# -- driver ------------------------------------------------------------------------------------


def run_soak(options: SoakOptions) -> SoakResult:
    """Run the soak; every child is killed and the temp dir removed (unless keep) however it
    ends."""
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"soak-{options.seed}-", dir=options.workdir))
    log(f"workdir {workdir}")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.monotonic()
    soak = Soak(options, workdir)
    try:
        soak.start()
        soak.run_cycles()
        cycles_s = time.monotonic() - t0
        written = len(soak.writer.finish())
        log(f"writer stopped at {written} lines; waiting for the agent")
        drain_end, drain_s = soak.drain(written)
        return collect(soak, options, written, started_at, t0, cycles_s, drain_end, drain_s)
    except BaseException:
        soak.diagnose()
        raise
    finally:
        soak.stop_all()
        if options.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class Buffered:
    """Written lines the agent's buffer holds at the end, by state."""

    pending: set[int]
    dead: set[int]


def buffered_lines(agent: AgentProc, state: str) -> set[int]:
    """Sequence numbers of the buffer's entries in ``state`` (``ila-agent inspect``)."""
    out = agent.cli("inspect", "--state", state, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"ila-agent inspect failed: {out.stderr.strip()}")
    seqs = (parse_seq(json.loads(line).get("log_text") or "") for line in out.stdout.splitlines())
    return {s for s in seqs if s is not None}


def read_buffer(agent: AgentProc) -> Buffered:
    status = agent.status()
    pending = buffered_lines(agent, "pending") if status["pending"] else set()
    dead = buffered_lines(agent, "dead") if status["dead_letter"] else set()
    return Buffered(pending, dead)


def collect(
    soak: Soak,
    options: SoakOptions,
    written: int,
    started_at: str,
    t0: float,
    cycles_s: float,
    drain_end: str,
    drain_s: float,
) -> SoakResult:
    """Stop the agent, then read its buffer and the receiver (a still picture), account."""
    try:
        exit_code = soak.agent.terminate(15)
    except subprocess.TimeoutExpired:
        soak.agent.cleanup()
        exit_code = -1
    buffered = read_buffer(soak.agent)
    soak.tail.update()
    stats = soak.receiver.stats()
    batches = soak.receiver.get("/api/receiver/batches", limit=100000)["batches"]
    requests = soak.receiver.get("/api/receiver/requests", limit=100000)["requests"]
    accounting = account(
        written, soak.tail, batches, stats, soak.faults, soak.copytruncates, buffered
    )
    registrations = soak.registrations()
    counters = (
        ("agent starts", soak.agent.starts),
        ("agent exit code at SIGTERM", exit_code),
        ("agent exits the soak did not cause", soak.agent_exits),
        ("receiver starts", soak.receiver_starts),
        ("registrations", registrations),
        ("batches accepted", stats["batches"]),
        ("answered 503", sum(r["status"] == 503 for r in requests)),
        ("answered 413", sum(r["status"] == 413 for r in requests)),
        ("copytruncates", len(soak.copytruncates)),
    )
    return SoakResult(
        options=options,
        command=options.command(),
        started_at=started_at,
        duration_s=time.monotonic() - t0,
        cycles_s=cycles_s,
        drain_s=drain_s,
        drain_end=drain_end,
        faults=tuple(soak.faults),
        copytruncates=tuple(soak.copytruncates),
        accounting=accounting,
        counters=counters,
        stalls=tuple(soak.stalls),
        agent_exits=soak.agent_exits,
    )


def parse_args(argv: Sequence[str] | None) -> SoakOptions:
    p = argparse.ArgumentParser(description="Soak the agent with random faults (bench/SOAK.md)")
    p.add_argument("--cycles", type=int, default=100, help="fault cycles (default 100)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--rate", type=float, default=200.0, help="lines/s written (default 200)")
    p.add_argument("--workdir", type=Path, help="create the temp dir inside DIR")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--quick", action="store_true", help="shorter waits and outages")
    a = p.parse_args(argv)
    if a.cycles < 1 or a.rate <= 0:
        p.error("--cycles must be ≥ 1 and --rate > 0")
    return SoakOptions(a.cycles, a.seed, a.rate, a.workdir, a.keep, a.quick)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # run the finally blocks: no orphans


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    result = run_soak(options)
    print(render_markdown(result))
    print(json.dumps(result.to_json(), sort_keys=True))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
